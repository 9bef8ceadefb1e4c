"""001#15 password reset limits (issue 10 #11): `/auth/password/forgot` is limited per e-mail
address (no mail bombing of one inbox) and per client IP (no spraying of many), with the same
answers for addresses that have an account and addresses that do not.

A refused request must send no mail and leave the last token valid (the SMTP fake's log, a
reset with that token). The limits are the service's settings, set small here. L2/L3 only.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from apex_testkit import Mail, Mailbox, Platform, eventually
from auth_tests.client import AuthAdmin, error_of
from auth_tests.flows import create_password_user, password_login

BVJ = pytest.mark.bvj(
    segment="mid", goal="Self-service account recovery without support tickets", mrr=5000,
    scenario="001#15",
)  # fmt: skip
pytestmark = [BVJ, pytest.mark.L2, pytest.mark.L3]

NEW_PASSWORD = "a brand new passphrase 42"


@pytest.fixture
async def limited(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """apex.auth that takes two requests per address and six per client IP in 10 minutes."""
    async with clean_platform.client(
        "auth", APEX_PASSWORD_FORGOT_PER_EMAIL="2/600", APEX_PASSWORD_FORGOT_PER_IP="6/600"
    ) as client:
        yield client


async def _forgot(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post("/auth/password/forgot", json={"email": email})


def _mails_to(mailbox: Mailbox, email: str) -> list[Mail]:
    return [m for m in mailbox.messages if email.lower() in (r.lower() for r in m.rcpt_tos)]


async def _mails_arrived(mailbox: Mailbox, email: str, count: int) -> list[Mail]:
    async def arrived() -> list[Mail]:
        mails = _mails_to(mailbox, email)
        return mails if len(mails) >= count else []

    return await eventually(arrived, timeout=10, message=f"{count} reset mails to {email}")


def _token_of(mail: Mail) -> str:
    found = re.findall(r"^Token: (\S+)\s*$", mail.text, re.MULTILINE)
    assert len(found) == 1, mail.text
    return str(found[0])


def _limited(response: httpx.Response) -> None:
    assert response.status_code == 429, f"{response.status_code} {response.text}"
    assert error_of(response) == "rate_limited", response.text
    assert int(response.headers["Retry-After"]) >= 1


async def test_forgot_is_limited_per_address_alike_for_known_and_unknown_ones(
    limited: httpx.AsyncClient,
    admin_token: str,
    mailbox: Mailbox,
) -> None:
    """Mail bombing one inbox: two mails, then 429; an address without an account gets the
    very same answers, so the limit tells nothing about who has an account."""
    person = await create_password_user(AuthAdmin(limited, admin_token))
    stranger = f"{uuid.uuid4().hex}@tests.apex.invalid"
    known = [await _forgot(limited, person.email) for _ in range(3)]
    unknown = [await _forgot(limited, stranger) for _ in range(3)]

    for answers in (known, unknown):
        assert [r.status_code for r in answers[:2]] == [202, 202], [r.text for r in answers]
        _limited(answers[2])
    assert [r.json() for r in known] == [r.json() for r in unknown]
    mails = await _mails_arrived(mailbox, person.email, 2)
    assert len(mails) == 2, "the refused request sent a mail"
    assert _mails_to(mailbox, stranger) == []
    # The refused request made no token: of the two mailed ones, the newer still resets and
    # the older was invalidated by it. Which mail carries the newer is not known here: each
    # request's token and mail come after its answer, so at L3 the two can overlap.
    resets = [
        await limited.post(
            "/auth/password/reset", json={"token": _token_of(mail), "new_password": NEW_PASSWORD}
        )
        for mail in mails
    ]
    assert sorted(r.status_code for r in resets) == [204, 400], [r.text for r in resets]
    assert (await password_login(limited, person.email, NEW_PASSWORD)).status_code == 200


async def test_forgot_is_limited_per_client_ip(
    limited: httpx.AsyncClient,
    admin_token: str,
    mailbox: Mailbox,
) -> None:
    """One client asking for many addresses: six requests, then 429, and no mail for the
    seventh address."""
    admin = AuthAdmin(limited, admin_token)
    people = [await create_password_user(admin) for _ in range(7)]
    for person in people[:6]:
        accepted = await _forgot(limited, person.email)
        assert accepted.status_code == 202, accepted.text

    _limited(await _forgot(limited, people[6].email))

    for person in people[:6]:
        assert len(await _mails_arrived(mailbox, person.email, 1)) == 1
    assert _mails_to(mailbox, people[6].email) == [], "the refused request sent a mail"
