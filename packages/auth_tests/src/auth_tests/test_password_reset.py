"""001#15 Password reset token flow: the mail (through the `mailbox` SMTP fake), single use,
expiry, a new request invalidating older tokens, revocation of every session, lockout cleared,
no account enumeration, and SMTP failures (4xx/5xx) that the caller never sees.

L2/L3 only: the mail goes to the test kit's SMTP fake, which a deployment does not have.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from apex_testkit import Mail, Mailbox, Platform, eventually
from auth_tests.client import AuthAdmin, Tokens, error_of, login, me, me_status
from auth_tests.flows import PasswordUser, create_password_user, password_login

BVJ = pytest.mark.bvj(
    segment="mid", goal="Self-service account recovery without support tickets", mrr=5000,
    scenario="001#15",
)  # fmt: skip
pytestmark = [BVJ, pytest.mark.L2, pytest.mark.L3]

NEW_PASSWORD = "a brand new passphrase 42"


def _token_of(mail: Mail) -> str:
    """The reset token, which the mail carries twice: in the link and on a `Token:` line."""
    text = mail.text
    bare = re.findall(r"^Token: (\S+)\s*$", text, re.MULTILINE)
    linked = re.findall(r"/reset\?token=([A-Za-z0-9_\-]+)", text)
    assert len(bare) == 1, text
    assert linked == bare, "the link and the Token: line carry different tokens"
    return str(bare[0])


async def _forgot(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post("/auth/password/forgot", json={"email": email})


async def _reset(client: httpx.AsyncClient, token: str, password: str) -> httpx.Response:
    return await client.post(
        "/auth/password/reset", json={"token": token, "new_password": password}
    )


async def _request_token(client: httpx.AsyncClient, mailbox: Mailbox, email: str) -> str:
    """Ask for a reset and read the token from the mail that arrives."""
    before = len(_mails_to(mailbox, email))
    response = await _forgot(client, email)
    assert response.status_code == 202, response.text

    async def arrived() -> list[Mail]:
        mails = _mails_to(mailbox, email)
        return mails[before:]

    mails = await eventually(arrived, timeout=10, message=f"a reset mail to {email}")
    assert len(mails) == 1, "one request, one mail"
    return _token_of(mails[0])


def _mails_to(mailbox: Mailbox, email: str) -> list[Mail]:
    return [m for m in mailbox.messages if email.lower() in (r.lower() for r in m.rcpt_tos)]


async def _password_hash(db: asyncpg.Connection, user_id: str) -> str:
    stored: str = await db.fetchval(
        "SELECT password_hash FROM users WHERE id = $1", uuid.UUID(user_id)
    )
    return stored


async def _actions(admin: AuthAdmin, user_id: str) -> list[str]:
    return [e["action"] for e in await admin.audit(user_id)]


@pytest.fixture
async def person(auth_admin: AuthAdmin) -> PasswordUser:
    return await create_password_user(auth_admin)


@pytest.mark.L4
async def test_forgot_mails_a_link_whose_token_resets_the_password_once(
    auth_client: httpx.AsyncClient,
    person: PasswordUser,
    mailbox: Mailbox,
) -> None:
    token = await _request_token(auth_client, mailbox, person.email)

    mail = _mails_to(mailbox, person.email)[0]
    assert "password reset" in mail.subject.lower()
    assert person.email in mail.to.lower()
    assert len(token) >= 43, "32+ random bytes, urlsafe base64"
    assert re.search(r"https?://\S+/reset\?token=", mail.text), "an absolute link"

    done = await _reset(auth_client, token, NEW_PASSWORD)
    assert done.status_code == 204, done.text

    assert (await password_login(auth_client, person.email, NEW_PASSWORD)).status_code == 200
    old = await password_login(auth_client, person.email, person.password)
    assert (old.status_code, error_of(old)) == (401, "invalid_credentials")
    again = await _reset(auth_client, token, "yet another passphrase 7")
    assert (again.status_code, error_of(again)) == (400, "invalid_token")
    assert (await password_login(auth_client, person.email, NEW_PASSWORD)).status_code == 200


async def test_only_a_hash_of_the_token_is_stored(
    auth_client: httpx.AsyncClient,
    person: PasswordUser,
    mailbox: Mailbox,
    auth_db: asyncpg.Connection,
) -> None:
    token = await _request_token(auth_client, mailbox, person.email)

    rows = await auth_db.fetch(
        "SELECT token_sha256::text AS stored FROM password_resets WHERE user_id = $1",
        uuid.UUID(person.user_id),
    )

    assert len(rows) == 1
    stored = rows[0]["stored"]
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert token not in stored
    assert digest in stored.lower().replace("\\x", ""), "stored as the SHA-256 of the token"


@pytest.mark.L4
async def test_unknown_email_gets_the_same_answer_and_no_mail(
    auth_client: httpx.AsyncClient,
    person: PasswordUser,
    mailbox: Mailbox,
) -> None:
    stranger = f"{uuid.uuid4().hex}@tests.apex.invalid"

    known = await _forgot(auth_client, person.email)
    await mailbox.wait_for(to=person.email, timeout=10)
    unknown = await _forgot(auth_client, stranger)
    # A mail sent after the unknown request: had the unknown one produced mail, it would be
    # there by the time this one is. Every mail the test causes has arrived when it ends,
    # so none can land in the next test's emptied mailbox.
    assert await _request_token(auth_client, mailbox, person.email)

    assert unknown.status_code == known.status_code == 202
    assert unknown.content == known.content, "the answer tells whether the account exists"
    assert _mails_to(mailbox, stranger) == []


@pytest.mark.L4
@pytest.mark.parametrize(
    ("body", "status"),
    [({"email": "not-an-email"}, 202), ({"email": ""}, 202), ({}, 422), ({"email": 5}, 422)],
    ids=["not-an-address", "empty", "missing", "number"],
)
async def test_malformed_email_is_not_a_500(
    auth_client: httpx.AsyncClient, mailbox: Mailbox, body: dict[str, object], status: int
) -> None:
    """SUT notes: any string up to 1000 characters is accepted (202, no enumeration), a
    missing or non-string field is a 422; no mail either way."""
    response = await auth_client.post("/auth/password/forgot", json=body)

    assert response.status_code == status, response.text
    if status == 422:
        assert error_of(response) == "invalid_request"
    assert list(mailbox.messages) == []


@pytest.mark.L4
async def test_a_new_request_invalidates_older_tokens(
    auth_client: httpx.AsyncClient,
    person: PasswordUser,
    mailbox: Mailbox,
) -> None:
    first = await _request_token(auth_client, mailbox, person.email)
    second = await _request_token(auth_client, mailbox, person.email)

    assert first != second
    stale = await _reset(auth_client, first, NEW_PASSWORD)
    assert (stale.status_code, error_of(stale)) == (400, "invalid_token")
    unchanged = await password_login(auth_client, person.email, person.password)
    assert unchanged.status_code == 200, "the stale token changed the password"
    assert (await _reset(auth_client, second, NEW_PASSWORD)).status_code == 204
    assert (await password_login(auth_client, person.email, NEW_PASSWORD)).status_code == 200


@pytest.mark.L4
async def test_requests_at_once_leave_one_token_that_resets(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    person: PasswordUser,
    mailbox: Mailbox,
) -> None:
    """A new request invalidates the older tokens even when requests overlap: of three
    sent at once (the default allows three an hour), one mailed token resets, once."""
    answers = await asyncio.gather(*(_forgot(auth_client, person.email) for _ in range(3)))
    assert [a.status_code for a in answers] == [202] * 3, [a.text for a in answers]

    async def all_mailed() -> list[Mail]:
        mails = _mails_to(mailbox, person.email)
        return mails if len(mails) == 3 else []

    mails = await eventually(all_mailed, timeout=10, message="three reset mails")
    resets = [await _reset(auth_client, _token_of(mail), NEW_PASSWORD) for mail in mails]
    assert sorted(r.status_code for r in resets) == [204, 400, 400], [r.text for r in resets]
    assert (await password_login(auth_client, person.email, NEW_PASSWORD)).status_code == 200
    old = await password_login(auth_client, person.email, person.password)
    assert (old.status_code, error_of(old)) == (401, "invalid_credentials")
    assert (await _actions(auth_admin, person.user_id)).count("password.reset") == 1


@pytest.fixture
async def short_ttl_client(clean_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """apex.auth whose reset tokens live 0.2 s (APEX_PASSWORD_RESET_TTL takes fractions):
    nothing in the test needs the token alive, only dead."""
    async with clean_platform.client("auth", APEX_PASSWORD_RESET_TTL="0.2") as client:
        yield client


@pytest.mark.slow
async def test_an_expired_token_is_refused(
    short_ttl_client: httpx.AsyncClient,
    admin_token: str,
    mailbox: Mailbox,
    auth_db: asyncpg.Connection,
) -> None:
    admin = AuthAdmin(short_ttl_client, admin_token)
    person = await create_password_user(admin)
    token = await _request_token(short_ttl_client, mailbox, person.email)
    expires_at = await auth_db.fetchval(
        "SELECT expires_at FROM password_resets WHERE user_id = $1", uuid.UUID(person.user_id)
    )
    hash_before = await _password_hash(auth_db, person.user_id)

    async def expired() -> bool:
        return bool(
            await auth_db.fetchval("SELECT now() > $1::timestamptz + interval '100 ms'", expires_at)
        )

    await eventually(expired, timeout=10, message="the 0.2 s reset token to pass its expiry")

    late = await _reset(short_ttl_client, token, NEW_PASSWORD)
    assert (late.status_code, error_of(late)) == (400, "invalid_token")
    # A refused reset changes nothing: the stored hash, the password that works, the trail.
    assert await _password_hash(auth_db, person.user_id) == hash_before
    refused = await password_login(short_ttl_client, person.email, NEW_PASSWORD)
    assert (refused.status_code, error_of(refused)) == (401, "invalid_credentials")
    signed_in = Tokens.of(await password_login(short_ttl_client, person.email, person.password))
    assert (await me(short_ttl_client, signed_in.access)).json()["user_id"] == person.user_id
    assert "password.reset" not in await _actions(admin, person.user_id)


@pytest.mark.parametrize(
    ("token", "answer"),
    [
        ("", (400, "invalid_token")),
        ("garbage", (400, "invalid_token")),
        ("A" * 43, (400, "invalid_token")),
        # Longer than any token (256 characters): refused as input before any lookup.
        ("x" * 5000, (422, "invalid_request")),
    ],
    ids=["empty", "short", "unknown", "huge"],
)
@pytest.mark.L4
async def test_bad_tokens_are_refused_alike(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    person: PasswordUser,
    token: str,
    answer: tuple[int, str],
) -> None:
    response = await _reset(auth_client, token, NEW_PASSWORD)

    assert (response.status_code, error_of(response)) == answer
    # Nothing changed: the old password works, the new one does not, no reset audited.
    assert (await password_login(auth_client, person.email, person.password)).status_code == 200
    refused = await password_login(auth_client, person.email, NEW_PASSWORD)
    assert (refused.status_code, error_of(refused)) == (401, "invalid_credentials")
    assert "password.reset" not in await _actions(auth_admin, person.user_id)


@pytest.mark.L4
async def test_a_weak_new_password_is_refused(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    person: PasswordUser,
    mailbox: Mailbox,
) -> None:
    token = await _request_token(auth_client, mailbox, person.email)

    weak = await _reset(auth_client, token, "short")

    assert (weak.status_code, error_of(weak)) == (422, "weak_password")
    old = await password_login(auth_client, person.email, person.password)
    assert old.status_code == 200, "the weak password was not set"
    not_set = await password_login(auth_client, person.email, "short")
    assert (not_set.status_code, error_of(not_set)) == (401, "invalid_credentials")
    assert "password.reset" not in await _actions(auth_admin, person.user_id)
    # SUT notes: the password is checked before the token, so the token is not spent.
    assert (await _reset(auth_client, token, NEW_PASSWORD)).status_code == 204
    assert (await password_login(auth_client, person.email, NEW_PASSWORD)).status_code == 200


@pytest.mark.L4
async def test_a_reset_revokes_every_session_of_the_user(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    person: PasswordUser,
    mailbox: Mailbox,
) -> None:
    browser = Tokens.of(await password_login(auth_client, person.email, person.password))
    key = await auth_admin.create_api_key(person.user_id)
    script = await login(auth_client, key["api_key"])
    bystander = await auth_admin.key_user()
    other = await login(auth_client, bystander.api_key)
    token = await _request_token(auth_client, mailbox, person.email)
    # Asking for a reset alone signs nobody out (anyone can ask for anyone).
    assert await me_status(auth_client, browser.access) == (200, None)

    assert (await _reset(auth_client, token, NEW_PASSWORD)).status_code == 204

    assert await me_status(auth_client, browser.access) == (401, "session_revoked")
    assert await me_status(auth_client, script.access) == (401, "session_revoked")
    for tokens in (browser, script):
        refresh = await auth_client.post("/auth/refresh", json={"refresh_token": tokens.refresh})
        assert refresh.status_code == 401
    assert await me_status(auth_client, other.access) == (200, None), "other users untouched"


@pytest.mark.L4
async def test_a_reset_clears_the_lockout(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    person: PasswordUser,
    mailbox: Mailbox,
) -> None:
    for _ in range(5):
        # SUT notes: the failure that fills the budget still answers 401.
        wrong = await password_login(auth_client, person.email, "wrong password, guess")
        assert (wrong.status_code, error_of(wrong)) == (401, "invalid_credentials")
    locked = await password_login(auth_client, person.email, person.password)
    assert (locked.status_code, error_of(locked)) == (423, "account_locked")

    token = await _request_token(auth_client, mailbox, person.email)
    assert (await _reset(auth_client, token, NEW_PASSWORD)).status_code == 204

    # The failure count is gone, not only the lock: four wrong passwords after the reset
    # (nine with the old ones) lock nothing, and then the user signs in.
    for _ in range(4):
        wrong = await password_login(auth_client, person.email, "wrong password, guess")
        assert (wrong.status_code, error_of(wrong)) == (401, "invalid_credentials")
    tokens = Tokens.of(await password_login(auth_client, person.email, NEW_PASSWORD))
    assert (await me(auth_client, tokens.access)).json()["user_id"] == person.user_id
    assert tokens.session_id in await auth_admin.logins(person.user_id)


@pytest.mark.L4
async def test_requests_and_resets_are_audited(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    person: PasswordUser,
    mailbox: Mailbox,
) -> None:
    token = await _request_token(auth_client, mailbox, person.email)
    assert (await _reset(auth_client, token, NEW_PASSWORD)).status_code == 204

    actions = await _actions(auth_admin, person.user_id)

    assert "password.reset_requested" in actions
    assert "password.reset" in actions
    assert actions.index("password.reset_requested") < actions.index("password.reset")
    assert token not in str(await auth_admin.audit(person.user_id)), "the token is a secret"


@pytest.mark.parametrize("code", [451, 550], ids=["smtp-4xx", "smtp-5xx"])
@pytest.mark.L4
async def test_smtp_failure_is_hidden_from_the_caller_audited_and_retryable(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    person: PasswordUser,
    mailbox: Mailbox,
    code: int,
) -> None:
    mailbox.fail_next(code=code)

    response = await _forgot(auth_client, person.email)

    assert response.status_code == 202, "the caller learns nothing about mail delivery"

    async def failure_audited() -> bool:
        return "mail.failed" in await _actions(auth_admin, person.user_id)

    await eventually(failure_audited, timeout=10, message="mail.failed in the audit trail")
    assert _mails_to(mailbox, person.email) == []
    # The user asks again; this time the mail goes through and its token works.
    token = await _request_token(auth_client, mailbox, person.email)
    assert (await _reset(auth_client, token, NEW_PASSWORD)).status_code == 204


@pytest.mark.L4
async def test_the_email_address_is_matched_case_insensitively(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    person: PasswordUser,
    mailbox: Mailbox,
) -> None:
    token = await _request_token(auth_client, mailbox, person.email.upper())
    assert (await _reset(auth_client, token, NEW_PASSWORD)).status_code == 204
    assert (await password_login(auth_client, person.email, NEW_PASSWORD)).status_code == 200
    old = await password_login(auth_client, person.email, person.password)
    assert (old.status_code, error_of(old)) == (401, "invalid_credentials")
    # The reset is the person's own (the upper-cased address found their account).
    assert (await _actions(auth_admin, person.user_id)).count("password.reset") == 1


@pytest.mark.L4
async def test_two_resets_racing_with_one_token_exactly_one_wins(
    auth_client: httpx.AsyncClient,
    person: PasswordUser,
    mailbox: Mailbox,
) -> None:
    token = await _request_token(auth_client, mailbox, person.email)
    passwords = [f"racing passphrase number {i}" for i in range(4)]

    responses = await asyncio.gather(*(_reset(auth_client, token, p) for p in passwords))

    statuses = [r.status_code for r in responses]
    assert sorted(statuses) == [204, 400, 400, 400], statuses
    winner = passwords[statuses.index(204)]
    for password in passwords:
        login_status = (await password_login(auth_client, person.email, password)).status_code
        assert login_status == (200 if password == winner else 401), password
