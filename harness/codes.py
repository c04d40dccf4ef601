"""Reading a stored code as the product stores it: a Fernet token under one of the keys of
CODE_ENCRYPTION_KEY (the harness gives each run a key of its own: ``stack.product_env``)."""

from __future__ import annotations

from cryptography.fernet import Fernet, MultiFernet


def new_code_key() -> str:
    return Fernet.generate_key().decode()


def code_in_clear(keys: str, token: bytes | memoryview) -> str:
    """The code ``token`` (``code.value_encrypted``) holds, with ``keys`` newest first."""
    return MultiFernet([Fernet(k) for k in keys.split(",")]).decrypt(bytes(token)).decode()
