"""Secrets in what the kit prints: passwords in URLs become `***`.

Server URLs carry credentials (`postgresql://postgres:secret@host/db`); the kit prints
them in its end-of-run list, its errors and the stack's log, which end up in CI logs.
"""

from __future__ import annotations

import re

# scheme://user:password@ -> scheme://user:***@ (the password stops at '@', '/' or space;
# a password with those characters must be percent-encoded in a URL anyway).
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@/\s]+@")
_QUERY = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|secret)=)[^&\s]+", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""
    return _QUERY.sub(r"\g<head>***", _USERINFO.sub(r"\g<head>***@", text))


__all__ = ["mask_secrets"]
