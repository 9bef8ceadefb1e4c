"""The one TLS context of the test process, for every httpx client the kit and tests make.

httpx builds a new ``ssl.SSLContext`` per client and loads the whole CA bundle into it
(130 ms to 0.5 s on a loaded 2-core machine): per test, that was most of a test's time.
This context is built once per process the way httpx builds its default, so HTTPS is
verified exactly as strictly; plain-http and ASGI clients never use it.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's TLS context: pass it as ``verify=`` to each ``httpx`` client a test
    makes (`httpx.AsyncClient(base_url=url, verify=tls_context())`)."""
    return httpx.create_ssl_context()
