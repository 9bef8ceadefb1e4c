"""001#14 2FA attempt limits (issue 10): the second factor has a failure budget of its own that
a correct password does not reset, an mfa_token dies after its wrong codes, `DELETE /me/2fa`
is limited and refuses a replayed TOTP code, `/auth/mfa/sms` is capped per mfa_token and per
user, and the password lockout is counted atomically under a parallel burst.

Each refusal is checked for what it must not have done: no session opened (the audit trail's
`login.succeeded`), no SMS sent (the SMS fake's log), 2FA not switched off (the database).
The limits are the service's settings, set small here. L2/L3: the SMS fake and the database.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from apex_testkit import FakeSms, Platform
from auth_tests.client import AuthAdmin, Tokens, error_of, me
from auth_tests.flows import (
    Enrolled,
    PasswordUser,
    create_password_user,
    enroll_totp,
    password_login,
)

BVJ = pytest.mark.bvj(
    segment="enterprise", goal="Compliance: a second factor that cannot be replayed or guessed",
    mrr=8000, scenario="001#14",
)  # fmt: skip
pytestmark = [BVJ, pytest.mark.L2, pytest.mark.L3]

PHONE = "+15555550177"


@pytest.fixture
async def limited(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """apex.auth with small 2FA limits, one set for the module (one extra auth process per
    worker at L3): six wrong codes per user, three per mfa_token, two SMS per mfa_token and
    three per user. The password lockout keeps its default (5 failures)."""
    async with clean_platform.client(
        "auth",
        APEX_MFA_LOCKOUT="6/600",
        APEX_MFA_TOKEN_ATTEMPTS="3",
        APEX_MFA_SMS_PER_TOKEN="2",
        APEX_MFA_SMS_PER_USER="3/600",
    ) as client:
        yield client


async def _person(client: httpx.AsyncClient, admin_token: str) -> Enrolled:
    """A password user with a phone and TOTP confirmed, made through `client`."""
    person = await create_password_user(AuthAdmin(client, admin_token), phone=PHONE)
    return await enroll_totp(client, person)


async def _mfa_token(client: httpx.AsyncClient, person: PasswordUser) -> str:
    """A correct password: the mfa_token of the challenge it answers."""
    response = await password_login(client, person.email, person.password)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body.get("mfa_required") is True, body
    token: str = body["mfa_token"]
    return token


async def _verify(client: httpx.AsyncClient, mfa_token: str, code: str) -> httpx.Response:
    return await client.post("/auth/mfa/verify", json={"mfa_token": mfa_token, "code": code})


async def _disable(client: httpx.AsyncClient, tokens: Tokens, code: str) -> httpx.Response:
    return await client.request("DELETE", "/me/2fa", json={"code": code}, headers=tokens.bearer)


async def _send_sms(client: httpx.AsyncClient, mfa_token: str) -> httpx.Response:
    return await client.post("/auth/mfa/sms", json={"mfa_token": mfa_token})


async def _actions(client: httpx.AsyncClient, admin_token: str, user_id: str) -> list[str]:
    return [e["action"] for e in await AuthAdmin(client, admin_token).audit(user_id)]


def _refused(response: httpx.Response, status: int, error: str) -> None:
    """`response` is the refusal `status` with the error code `error` (and nothing else)."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert error_of(response) == error, response.text


async def _totp_enabled(db: asyncpg.Connection, user_id: str) -> bool:
    enabled: bool = await db.fetchval(
        "SELECT totp_enabled FROM users WHERE id = $1", uuid.UUID(user_id)
    )
    return enabled


async def test_a_correct_password_does_not_reset_the_2fa_failure_budget(
    limited: httpx.AsyncClient,
    admin_token: str,
) -> None:
    """Issue 10 #1: "three wrong codes, sign in again" must not go on forever: the sixth
    wrong code of the user locks the account, whatever passwords came in between."""
    enrolled = await _person(limited, admin_token)
    person = enrolled.person
    first = await _mfa_token(limited, person)
    for _ in range(3):
        _refused(await _verify(limited, first, enrolled.wrong_code()), 401, "invalid_code")
    second = await _mfa_token(limited, person)  # the password is right: a new challenge
    for _ in range(3):
        _refused(await _verify(limited, second, enrolled.wrong_code()), 401, "invalid_code")

    _refused(await password_login(limited, person.email, person.password), 423, "account_locked")
    _refused(await _verify(limited, second, enrolled.next_code()), 423, "account_locked")
    actions = await _actions(limited, admin_token, person.user_id)
    assert actions.count("account.locked") == 1, actions
    assert actions.count("login.failed") == 6, actions
    assert actions.count("login.succeeded") == 1, "only the enrolment's password login"


async def test_an_mfa_token_dies_after_its_wrong_codes(
    limited: httpx.AsyncClient,
    admin_token: str,
) -> None:
    """Issue 10 #1: a challenge takes three wrong codes; then even the right code is refused
    on it, while the account (below its own budget) is not locked."""
    enrolled = await _person(limited, admin_token)
    person = enrolled.person
    mfa_token = await _mfa_token(limited, person)
    for _ in range(3):
        _refused(await _verify(limited, mfa_token, enrolled.wrong_code()), 401, "invalid_code")

    code = enrolled.next_code()
    _refused(await _verify(limited, mfa_token, code), 401, "invalid_mfa_token")
    actions = await _actions(limited, admin_token, person.user_id)
    assert actions.count("login.succeeded") == 1, "a dead challenge opened a session"
    assert "account.locked" not in actions
    # A new challenge (a new password login) works, with the same code: on the dead
    # challenge it was refused unread, so its time step is not spent.
    fresh = Tokens.of(await _verify(limited, await _mfa_token(limited, person), code))
    profile = (await me(limited, fresh.access)).json()
    assert (profile["user_id"], profile["mfa"]) == (person.user_id, True)


async def test_disabling_2fa_has_an_attempt_limit(
    limited: httpx.AsyncClient,
    admin_token: str,
    auth_db: asyncpg.Connection,
) -> None:
    """Issue 10 #8: a stolen session guessing codes at DELETE /me/2fa spends the user's 2FA
    budget and locks the account; 2FA stays on even when the right code comes at last."""
    enrolled = await _person(limited, admin_token)
    person = enrolled.person
    session = Tokens.of(
        await _verify(limited, await _mfa_token(limited, person), enrolled.backup_codes[0])
    )
    for _ in range(6):
        _refused(await _disable(limited, session, enrolled.wrong_code()), 400, "invalid_code")

    _refused(await _disable(limited, session, enrolled.backup_codes[1]), 423, "account_locked")
    assert await _totp_enabled(auth_db, person.user_id), "2FA was switched off"
    unused = await auth_db.fetchval(
        "SELECT count(*) FROM mfa_backup_codes WHERE user_id = $1 AND used_at IS NULL",
        uuid.UUID(person.user_id),
    )
    assert unused == 9, "the refused request spent a backup code"
    actions = await _actions(limited, admin_token, person.user_id)
    assert (actions.count("account.locked"), "mfa.disabled" in actions) == (1, False), actions


async def test_a_totp_code_used_to_sign_in_cannot_disable_2fa(
    auth_client: httpx.AsyncClient,
    admin_token: str,
    auth_db: asyncpg.Connection,
) -> None:
    """Issue 10 #8: the code of a time step already accepted is a replay at DELETE /me/2fa
    too (someone who watched the user sign in holds it)."""
    enrolled = await _person(auth_client, admin_token)
    person = enrolled.person
    code = enrolled.next_code()
    session = Tokens.of(await _verify(auth_client, await _mfa_token(auth_client, person), code))

    _refused(await _disable(auth_client, session, code), 400, "code_reused")
    assert await _totp_enabled(auth_db, person.user_id), "a replayed code switched 2FA off"

    done = await _disable(auth_client, session, enrolled.backup_codes[0])
    assert done.status_code == 204, done.text
    assert not await _totp_enabled(auth_db, person.user_id)
    left = await auth_db.fetchval(
        "SELECT count(*) FROM mfa_backup_codes WHERE user_id = $1", uuid.UUID(person.user_id)
    )
    assert left == 0, "disabling 2FA drops the backup codes"


def _codes_sent(fake_sms: FakeSms) -> list[str]:
    """The 6-digit codes of the messages to PHONE, oldest first."""
    codes = []
    for message in fake_sms.messages:
        if message.to == PHONE:
            found = re.findall(r"\b\d{6}\b", message.body)
            assert len(found) == 1, message.body
            codes.append(found[0])
    return codes


async def test_an_mfa_token_sends_a_limited_number_of_sms(
    limited: httpx.AsyncClient,
    admin_token: str,
    fake_sms: FakeSms,
) -> None:
    """Issue 10 #9: toll fraud and harassment through one challenge: two SMS, then 429; the
    refused request sends nothing and leaves the last code valid."""
    enrolled = await _person(limited, admin_token)
    mfa_token = await _mfa_token(limited, enrolled.person)
    for _ in range(2):
        sent = await _send_sms(limited, mfa_token)
        assert sent.status_code == 202, sent.text

    refused = await _send_sms(limited, mfa_token)

    _refused(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    codes = _codes_sent(fake_sms)
    assert len(codes) == 2, codes
    signed_in = Tokens.of(await _verify(limited, mfa_token, codes[-1]))
    assert (await me(limited, signed_in.access)).json()["user_id"] == enrolled.person.user_id


async def test_sms_are_limited_per_user_across_mfa_tokens(
    limited: httpx.AsyncClient,
    admin_token: str,
    fake_sms: FakeSms,
) -> None:
    """Issue 10 #9: new challenges do not buy new SMS: three per user in the window."""
    enrolled = await _person(limited, admin_token)
    first = await _mfa_token(limited, enrolled.person)
    second = await _mfa_token(limited, enrolled.person)
    for mfa_token in (first, first, second):
        sent = await _send_sms(limited, mfa_token)
        assert sent.status_code == 202, sent.text

    refused = await _send_sms(limited, second)

    _refused(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    assert len(_codes_sent(fake_sms)) == 3


async def test_parallel_wrong_passwords_are_evaluated_up_to_the_lockout_limit(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
) -> None:
    """Issue 10 #10: 40 wrong passwords at once against a limit of 5: exactly 5 are checked
    (401), the other 35 are refused as locked (423) without a guess being evaluated."""
    person = await create_password_user(auth_admin)

    responses = await asyncio.gather(
        *(password_login(auth_client, person.email, f"wrong guess number {i}") for i in range(40))
    )

    outcomes = sorted((r.status_code, error_of(r)) for r in responses)
    assert outcomes == [(401, "invalid_credentials")] * 5 + [(423, "account_locked")] * 35
    _refused(
        await password_login(auth_client, person.email, person.password), 423, "account_locked"
    )
    actions = [e["action"] for e in await auth_admin.audit(person.user_id)]
    assert actions.count("login.failed") == 5, actions
    assert actions.count("account.locked") == 1, actions
    assert "login.succeeded" not in actions


async def test_sign_in_attempts_are_limited_per_client_ip_across_accounts(
    clean_platform: Platform, admin_token: str
) -> None:
    """Issue 10 #11 (password spraying): one wrong password on each of ten accounts at
    once from one address never trips a per-account lockout, so the address has a budget
    of its own (APEX_SIGN_IN_PER_IP, here 6): six guesses are evaluated, four refused
    unevaluated (429), and a second factor from the same address shares the budget."""
    async with clean_platform.client("auth", APEX_SIGN_IN_PER_IP="6/600") as client:
        admin = AuthAdmin(client, admin_token)
        people = [await create_password_user(admin) for _ in range(10)]

        responses = await asyncio.gather(
            *(password_login(client, p.email, "Spring2026!spray") for p in people)
        )

        outcomes = sorted((r.status_code, error_of(r)) for r in responses)
        assert outcomes == [(401, "invalid_credentials")] * 6 + [(429, "rate_limited")] * 4
        assert all(int(r.headers["Retry-After"]) >= 1 for r in responses if r.status_code == 429)
        failed = [
            person
            for person in people
            if "login.failed" in await _actions(client, admin_token, person.user_id)
        ]
        assert len(failed) == 6, "a refused guess was evaluated"
        _refused(await _verify(client, "not-an-mfa-token", "123456"), 429, "rate_limited")
        refused = await password_login(client, people[0].email, people[0].password)
        _refused(refused, 429, "rate_limited")
        assert "login.succeeded" not in await _actions(client, admin_token, people[0].user_id)
