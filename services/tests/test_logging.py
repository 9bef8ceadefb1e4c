"""The service processes' log setup: access lines without query-string values."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from apex.common.logging import RedactQueryStrings, configure_logging, redact_query


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("/auth/oidc/callback?code=abc&state=xyz", "/auth/oidc/callback?code=***&state=***"),
        ("/me", "/me"),
        ("/search?q", "/search?q=***"),
        ("/x?a=1&&b=2=3", "/x?a=***&b=***"),
    ],
)
def test_redact_query(target: str, shown: str) -> None:
    assert redact_query(target) == shown


def test_an_access_record_loses_its_query_values() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/auth/oidc/callback?code=c0de&state=st4te", "1.1", 200),
        None,
    )

    assert RedactQueryStrings().filter(record) is True
    assert record.getMessage() == (
        '127.0.0.1:5000 - "GET /auth/oidc/callback?code=***&state=*** HTTP/1.1" 200'
    )


@pytest.fixture
def restored_logging() -> Iterator[logging.Logger]:
    """uvicorn's access logger; the root logger and its filters as they were, afterwards."""
    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    handlers, level, filters = list(root.handlers), root.level, list(access.filters)
    try:
        yield access
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        access.filters[:] = filters


def test_configure_logging_installs_the_filter_once(restored_logging: logging.Logger) -> None:
    configure_logging("INFO")
    configure_logging("INFO")

    assert sum(isinstance(f, RedactQueryStrings) for f in restored_logging.filters) == 1
