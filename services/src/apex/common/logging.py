"""Log setup for the service processes: one line per record on stderr.

uvicorn's access lines keep the path but not the values of its query string: query
strings carry secrets (an OIDC callback's ``code`` and ``state``, tokens some clients put
in URLs), and logs are read by more people than those secrets are meant for.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["RedactQueryStrings", "configure_logging", "redact_query"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send the platform's and uvicorn's records to stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn installs its own handlers unless told otherwise; route them through ours
    # so a process writes one format the stack can show in its error tails.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv_logger = logging.getLogger(name)
        uv_logger.handlers.clear()
        uv_logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQueryStrings) for f in access.filters):
        access.addFilter(RedactQueryStrings())


def redact_query(target: str) -> str:
    """``target`` (a request path) with the value of each query parameter replaced."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    names = (part.partition("=")[0] for part in query.split("&") if part)
    return f"{path}?" + "&".join(f"{name}=***" for name in names)


class RedactQueryStrings(logging.Filter):
    """Redacts the request target of uvicorn's access records (their third argument:
    ``'%s - "%s %s HTTP/%s" %d'`` with client, method, target, version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True
