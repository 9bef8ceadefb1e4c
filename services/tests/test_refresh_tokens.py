"""Refresh token and session id formats."""

from __future__ import annotations

import pytest

from apex.auth.sessions import format_refresh_token, is_session_id, parse_refresh_token

SID = "0123456789abcdef0123456789abcdef"
SECRET = "A" * 43


def test_round_trip() -> None:
    token = format_refresh_token(SID, SECRET)
    assert token == f"apr_{SID}_{SECRET}"
    assert parse_refresh_token(token) == (SID, SECRET)


@pytest.mark.parametrize(
    "token",
    [
        "",
        f"apx_{SID}_{SECRET}",
        f"apr_{SID.upper()}_{SECRET}",
        f"apr_{SID[:-1]}_{SECRET}",
        f"apr_{SID}_{SECRET[:-1]}",
        f"apr_{SID}_{SECRET}A",
        f"apr_{SID}_{SECRET[:-1]}-",
        f"apr_{SID}_{SECRET}\n",
    ],
)
def test_malformed_refresh_tokens(token: str) -> None:
    assert parse_refresh_token(token) is None


def test_session_ids() -> None:
    assert is_session_id(SID)
    assert not is_session_id(SID[:-1])
    assert not is_session_id("../" + SID[3:])
