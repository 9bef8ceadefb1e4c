"""RSA keys made once per process: generating a 2048-bit key costs 50 ms to half a second
on a loaded 2-core machine, and the fakes and tests need many where the key itself is
not what is tested (a fake IdP's signing key, a foreign signer's key)."""

from __future__ import annotations

import functools

from cryptography.hazmat.primitives.asymmetric import rsa


@functools.cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """This process's RSA key called `name` (2048 bits, e=65537): the same key for the
    same name, distinct keys for distinct names (the fakes' keys are named `fake-...`).
    For tests where the key is not the subject; a test of key generation makes its own."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
