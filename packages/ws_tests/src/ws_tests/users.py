"""Users of the gateway: a platform user with a live session, and tokens forged from theirs.

Public: `WsUser` (what a browser tab holds: the user, its API key and its tokens from
apex.auth, made with `auth_tests.client`), `MakeUser` (the type of the `make_ws_user`
fixture) and `forge` (a well-signed token with bad claims, L2/L3).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
from auth_tests.client import KeyUser, Tokens
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["MakeUser", "WsUser", "forge"]


@dataclass(frozen=True)
class WsUser:
    """A platform user with a live session: what a browser tab holds."""

    key_user: KeyUser
    tokens: Tokens

    @property
    def user_id(self) -> str:
        return self.key_user.user_id

    @property
    def token(self) -> str:
        return self.tokens.access


# `await make_ws_user(tier="pro", ttl=None)`: what the `make_ws_user` fixture hands out.
MakeUser = Callable[..., Awaitable[WsUser]]


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.lru_cache(maxsize=8)
def _private_key(pem: str) -> rsa.RSAPrivateKey:
    # Loading a PEM key checks it (about 0.1 s on a loaded 2-core machine): once per key.
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError(f"forge signs RS256: an RSA private key, got {type(key).__name__}")
    return key


def forge(token: str, signing_key: str | rsa.RSAPrivateKey, **claims: Any) -> str:
    """`token` with some claims changed (None removes one), signed again with the
    platform's own key (PEM) and kid, or another RSA key: a well-signed token with bad
    claims (L2/L3), or a token of a foreign signer."""
    header = json.loads(_unb64(token.split(".")[0]))
    payload = json.loads(_unb64(token.split(".")[1]))
    for name, value in claims.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    key = _private_key(signing_key) if isinstance(signing_key, str) else signing_key
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": header["kid"]})
