"""API key format, secret hashing and verification."""

from __future__ import annotations

import hashlib

import pytest

from apex.auth import keys


def test_generated_key_round_trips_through_the_parser() -> None:
    key_id, secret = keys.generate_key_id(), keys.generate_secret()
    plaintext = keys.format_api_key(key_id, secret)
    assert plaintext == f"apx_{key_id}_{secret}"
    assert keys.parse_api_key(plaintext) == (key_id, secret)
    assert len(key_id) == 12
    assert len(secret) >= 32
    assert keys.is_key_id(key_id)


def test_generated_ids_and_secrets_differ() -> None:
    assert len({keys.generate_key_id() for _ in range(200)}) == 200
    assert len({keys.generate_secret() for _ in range(200)}) == 200


@pytest.mark.parametrize(
    "text",
    [
        "",
        "apx_",
        "apx_abcdefghijkl",
        "apx_abcdefghijkl_",
        "apx_abcdefghijkl_short",  # secret under 32 characters
        "apx_ABCDEFGHIJKL_" + "a" * 40,  # upper-case id
        "apx_abcdefghijk_" + "a" * 40,  # 11-character id
        "apk_abcdefghijkl_" + "a" * 40,  # wrong prefix
        "apx_abcdefghijkl_" + "a" * 39 + "!",  # punctuation in the secret
        "apx_abcdefghijkl_" + "a" * 200,  # absurdly long
        " apx_abcdefghijkl_" + "a" * 40,  # surrounding space
        "apx_abcdefghijkl_" + "a" * 40 + "\n",
    ],
)
def test_malformed_keys_do_not_parse(text: str) -> None:
    assert keys.parse_api_key(text) is None


def test_secret_is_stored_as_sha256_hex() -> None:
    assert keys.hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()


def test_verify_secret_accepts_only_the_right_secret() -> None:
    stored = keys.hash_secret("right-secret")
    assert keys.verify_secret("right-secret", stored)
    assert not keys.verify_secret("wrong-secret", stored)
    assert not keys.verify_secret("right-secret", stored.upper())


def test_verify_secret_without_a_stored_hash_is_false() -> None:
    # An unknown key id: the comparison still runs (timing), but never matches.
    assert not keys.verify_secret("anything", None)


@pytest.mark.parametrize("text", ["abcdefghijkl", "0123456789ab"])
def test_key_ids(text: str) -> None:
    assert keys.is_key_id(text)


@pytest.mark.parametrize("text", ["", "abc", "abcdefghijklm", "ABCDEFGHIJKL", "abcdefghijk-"])
def test_not_key_ids(text: str) -> None:
    assert not keys.is_key_id(text)
