"""The TLS context every outbound HTTP client of a service verifies servers with.

httpx builds a new ``ssl.SSLContext`` for each client and loads the whole CA bundle into
it (a hundred milliseconds or more); an app opens several clients each time it starts.
One context per process, built the way httpx builds its default (certifi's bundle,
``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured), verifies exactly as strictly and is loaded
once. An ``SSLContext`` is safe to share between clients, threads and event loops.
"""

from __future__ import annotations

import functools
import ssl

import httpx

__all__ = ["client_tls_context"]


@functools.cache
def client_tls_context() -> ssl.SSLContext:
    """The process's TLS context for HTTPS clients (pass it as httpx's ``verify``)."""
    return httpx.create_ssl_context()
