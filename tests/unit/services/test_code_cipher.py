"""Codes at rest: Fernet tokens under the newest key, readable under any configured key, and a
fingerprint that stays the same while keys are added."""

from __future__ import annotations

import hmac

import pytest
from cryptography.fernet import Fernet

from wellness_perks.services.code_cipher import CodeCipher, CodeKeyError, key_id

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def test_a_code_is_a_fernet_token_of_the_newest_key():
    cipher = CodeCipher(f"{NEW},{OLD}")
    token = cipher.encrypt("HS-AAAA-0001")
    assert b"HS-AAAA-0001" not in token
    assert Fernet(NEW).decrypt(token) == b"HS-AAAA-0001"
    with pytest.raises(Exception):  # noqa: B017 - any refusal: the old key did not make it
        Fernet(OLD).decrypt(token)
    assert cipher.newest_key_id == key_id(NEW) != key_id(OLD)
    assert [Fernet(NEW).decrypt(t) for t in cipher.encrypt_many(["A-1", "B-2"])] == [
        b"A-1", b"B-2"]


def test_a_code_made_under_an_older_key_is_read_after_a_newer_one_is_added():
    token = CodeCipher(OLD).encrypt("HS-AAAA-0001")
    assert CodeCipher(f"{NEW},{OLD}").decrypt(token) == "HS-AAAA-0001"
    with pytest.raises(CodeKeyError, match="the key that encrypted it is missing"):
        CodeCipher(NEW).decrypt(token)


def test_the_fingerprint_is_keyed_and_stays_when_newer_keys_are_added():
    first = CodeCipher(OLD).fingerprint("HS-AAAA-0001")
    assert CodeCipher(f"{NEW},{OLD}").fingerprint("HS-AAAA-0001") == first
    assert CodeCipher(NEW).fingerprint("HS-AAAA-0001") != first  # derived from the oldest
    assert CodeCipher(OLD).fingerprint("hs-aaaa-0001") != first  # codes are case-sensitive
    assert len(first) == 32


def test_a_fingerprint_key_of_its_own_is_hmac_sha256_under_it_whatever_the_encryption_keys():
    own = "a fingerprint key of at least 32 bytes, kept"
    reference = hmac.digest(own.encode(), b"HS-AAAA-0001", "sha256")
    assert CodeCipher(OLD, own).fingerprint("HS-AAAA-0001") == reference
    assert CodeCipher(NEW, own).fingerprints(["HS-AAAA-0001", "X"])[0] == reference


def test_the_derived_fingerprint_key_can_be_set_as_the_fingerprint_key_before_a_retirement():
    derived = CodeCipher(OLD)
    assert derived.fingerprint_key_derived
    kept = CodeCipher(NEW, derived.fingerprint_key)  # the old key retired, its fingerprints kept
    assert not kept.fingerprint_key_derived
    assert kept.fingerprint("HS-AAAA-0001") == derived.fingerprint("HS-AAAA-0001")
