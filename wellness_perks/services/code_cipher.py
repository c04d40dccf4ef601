"""Codes at rest: each code is stored encrypted (a Fernet token) beside a keyed fingerprint.

``CODE_ENCRYPTION_KEY`` holds one or more Fernet keys, newest first. A code is encrypted under
the newest key and decrypted under whichever key made its token (MultiFernet), so a rotation
(``rotate_code_key``) can re-encrypt codes while every process keeps reading them. Each row
records which key made its token (``key_id``), so a rotation knows what is left to do.

The fingerprint is HMAC-SHA256 of the code under a key of its own, which never changes: it is
what the database compares (one code once per program, a void by value, a code known in another
program) without holding the code. The fingerprint key is ``CODE_FINGERPRINT_KEY`` or, when
that is empty, derived from the *oldest* encryption key: adding newer keys leaves it as it is.

Decrypting is for three readers only: the code's owner (portal), the mail that carries it, and a
manager's audited reveal (``codes.reveal_code``). Allocation and claims never decrypt.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app

from .errors import DomainError

FINGERPRINT_LABEL = b"wellness-perks code fingerprint v1"
KEY_ID_LABEL = b"wellness-perks code key id v1"


class CodeKeyError(DomainError):
    """A stored code cannot be read with the keys configured, or was fingerprinted with another
    fingerprint key: the configuration, not the data, is wrong."""

    status_code = 500
    code = "code_keys_misconfigured"


def key_id(key: str) -> str:
    """A short name of a Fernet key, stored with each token it made (it reveals nothing of the
    key: a hash of 256 random bits)."""
    raw = base64.urlsafe_b64decode(key.encode())
    return hashlib.sha256(KEY_ID_LABEL + raw).hexdigest()[:12]


def derived_fingerprint_key(oldest_key: str) -> str:
    """The fingerprint key when CODE_FINGERPRINT_KEY is empty, in the form that setting takes
    (so it can be set to this value, and the fingerprints stay as they are)."""
    raw = base64.urlsafe_b64decode(oldest_key.encode())
    return base64.urlsafe_b64encode(hmac.digest(raw, FINGERPRINT_LABEL, "sha256")).decode()


class CodeCipher:
    """Encrypts, decrypts and fingerprints codes under one configuration of keys."""

    def __init__(self, encryption_keys: str, fingerprint_key: str = "") -> None:
        keys = [k.strip() for k in encryption_keys.split(",") if k.strip()]
        if not keys:
            raise CodeKeyError("CODE_ENCRYPTION_KEY holds no key")
        self.newest_key_id = key_id(keys[0])
        self.key_ids = [key_id(k) for k in keys]
        # Encrypting uses the newest key's Fernet directly: MultiFernet adds nothing there.
        self._newest = Fernet(keys[0])
        self._all = MultiFernet([Fernet(k) for k in keys])
        self.fingerprint_key_derived = not fingerprint_key
        self.fingerprint_key = fingerprint_key or derived_fingerprint_key(keys[-1])
        # One HMAC keyed once; each fingerprint copies it (cheaper than keying per code).
        self._hmac = hmac.new(self.fingerprint_key.encode(), digestmod="sha256")

    def encrypt(self, value: str) -> bytes:
        return self._newest.encrypt(value.encode())

    def encrypt_many(self, values: Iterable[str]) -> list[bytes]:
        encrypt = self._newest.encrypt
        return [encrypt(value.encode()) for value in values]

    def fingerprint(self, value: str) -> bytes:
        mac = self._hmac.copy()
        mac.update(value.encode())
        return mac.digest()

    def fingerprints(self, values: Iterable[str]) -> list[bytes]:
        copy = self._hmac.copy
        out = []
        for value in values:
            mac = copy()
            mac.update(value.encode())
            out.append(mac.digest())
        return out

    def decrypt(self, token: bytes) -> str:
        try:
            return self._all.decrypt(bytes(token)).decode()
        except InvalidToken:
            raise CodeKeyError(
                "a stored code cannot be decrypted with any key of CODE_ENCRYPTION_KEY: "
                "the key that encrypted it is missing") from None


@functools.lru_cache(maxsize=4)
def _cipher(encryption_keys: str, fingerprint_key: str) -> CodeCipher:
    return CodeCipher(encryption_keys, fingerprint_key)


def cipher() -> CodeCipher:
    """The cipher of the running app's configuration."""
    config = current_app.config
    return _cipher(config["CODE_ENCRYPTION_KEY"], config.get("CODE_FINGERPRINT_KEY", ""))


def check_stored_codes(connection, code_cipher: CodeCipher | None = None) -> None:
    """CodeKeyError unless a stored code (the first) is readable with the keys configured and
    has the fingerprint the fingerprint key gives it.

    A fingerprint key that changed would not fail loudly anywhere else: an import would take a
    code already in stock for a new one (two creators, one code) and a void would find nothing.
    Run before an import writes, it costs one row and one decryption (the value is compared,
    never kept or shown).
    """
    import sqlalchemy as sa

    row = connection.execute(sa.text(
        "SELECT value_encrypted, fingerprint FROM code ORDER BY id LIMIT 1")).first()
    if row is None:
        return
    code_cipher = code_cipher or cipher()
    if code_cipher.fingerprint(code_cipher.decrypt(row[0])) != bytes(row[1]):
        raise CodeKeyError(
            "the stored codes were fingerprinted with another key than the one configured: "
            "set CODE_FINGERPRINT_KEY to the key they were made with (when it is empty, the "
            "key is derived from the oldest key of CODE_ENCRYPTION_KEY)")
