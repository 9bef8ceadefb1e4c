"""No state leaks from one test to the next at L2, though a worker keeps its apps running.

An inner run of tests that write everywhere (PostgreSQL through the app, Redis sessions
and lockout counters, the running app's memory: revoked sessions, cached permissions,
the IdPs' metadata; the served gateway's connections and counters; every fake) and tests
that assert they see none of it, in a random order that the failure message repeats.
The apps the inner tests reach are the same running ones (the lifespan kept, and the
served auth and gateway, `apex_testkit._sut.live`), which the run checks too.
"""

from __future__ import annotations

import random

from conftest import finish, inner_env

WRITE_AND_CHECK = """
import json
import smtplib
import asyncpg
import httpx
import pytest
import websockets
from apex_testkit import _loop

pytestmark = [
    pytest.mark.L2,
    pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#10"),
]
PASSWORD = "correct horse battery staple"
# What earlier tests of this process left behind: their tokens.
SEEN: list[str] = []
# The running apps each test reached (one set, if the worker kept them running).
APPS: set[frozenset[int]] = set()
# WebSockets the writing tests leave open: the next test's gateway must have let them go.
LEFT_OPEN: list[object] = []


def _running_apps(platform):
    return frozenset(id(app) for app in platform.live.running_apps)


async def _rows(dsn):
    conn = await asyncpg.connect(dsn)
    try:
        tables = [row[0] for row in await conn.fetch(
            "SELECT format('%I', tablename) FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'apex_schema_migrations'")]
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables}
    finally:
        await conn.close()


@pytest.mark.parametrize("n", range(3))
async def test_write_everywhere(
    n, clean_platform, admin_token, fake_idp, fake_saml_idp, mailbox, fake_sms
):
    admin = {"Authorization": f"Bearer {admin_token}"}
    async with clean_platform.client("auth") as client:
        body = {"email": "leak@tests.apex.invalid", "tier": "pro", "password": PASSWORD}
        user = await client.post("/admin/users", json=body, headers=admin)
        assert user.status_code == 201, user.text
        key = await client.post(
            f"/admin/users/{user.json()['id']}/api-keys",
            json={"name": "leak", "scopes": ["agents:run"]},
            headers=admin,
        )
        assert key.status_code == 201, key.text
        token = await client.post("/auth/token", json={"api_key": key.json()["api_key"]})
        assert token.status_code == 200, token.text
        access = token.json()["access_token"]
        bearer = {"Authorization": f"Bearer {access}"}
        me = await client.get("/me", headers=bearer)
        assert me.status_code == 200, me.text
        SEEN.append(access)
        # The app's memory: cached permissions, a revoked session, the IdPs' metadata.
        assert (await client.get("/me/permissions", headers=bearer)).status_code == 200
        other = await client.post("/auth/token", json={"api_key": key.json()["api_key"]})
        other_bearer = {"Authorization": f"Bearer {other.json()['access_token']}"}
        assert (await client.post("/auth/logout", headers=other_bearer)).status_code == 204
        assert (await client.get("/auth/oidc/login")).status_code == 302
        assert (await client.get("/auth/saml/login")).status_code == 302
        wrong = {"email": "leak@tests.apex.invalid", "password": "not the password!"}
        assert (await client.post("/auth/login", json=wrong)).status_code == 401
        # The served gateway's memory: a connection left open, its counters moved.
        async with clean_platform.serve("gateway") as url:
            ws = await websockets.connect(f"{url}/ws", additional_headers=bearer)
            LEFT_OPEN.append(ws)
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"type": "ping", "id": "leak"}))
            assert json.loads(await ws.recv())["type"] == "pong"
            APPS.add(_running_apps(clean_platform))
    fake_idp.login_as("leak", "leak@tests.apex.invalid")
    fake_saml_idp.login_as("leak", "leak@tests.apex.invalid")
    async with httpx.AsyncClient() as http:
        await http.get(f"{fake_idp.issuer}/.well-known/openid-configuration")
    with smtplib.SMTP(mailbox.host, mailbox.port) as smtp:
        smtp.sendmail("a@tests.apex.invalid", ["b@tests.apex.invalid"], "Subject: leak\\n\\nx")
    assert mailbox.messages and fake_idp.requests


@pytest.mark.parametrize("n", range(4))
async def test_sees_nothing(
    n, clean_platform, admin_token, redis_namespace, postgres_database, fake_idp,
    fake_saml_idp, mailbox, fake_sms
):
    # Nothing but the registrations the worker's served gateways renew (every APEX_WS_
    # INSTANCE_TTL / 3 s, between tests too, as an L3 gateway process does).
    keys = redis_namespace.client().keys(f"{redis_namespace.prefix}*")
    registry = f"{redis_namespace.prefix}gw:instance"
    assert [k for k in keys if not k.startswith(registry)] == [], keys
    rows = _loop.run(_rows(postgres_database))
    assert not {table: count for table, count in rows.items() if count}, rows
    assert fake_idp.requests == [] and fake_saml_idp.requests == []
    assert mailbox.messages == [] and fake_sms.messages == []
    assert fake_saml_idp.authn_requests == []
    admin = {"Authorization": f"Bearer {admin_token}"}
    async with clean_platform.client("auth") as client:
        for access in SEEN:  # sessions, caches: nothing of an earlier test answers
            me = await client.get("/me", headers={"Authorization": f"Bearer {access}"})
            assert me.status_code == 401, me.text
        wrong = {"email": "leak@tests.apex.invalid", "password": "not the password!"}
        assert (await client.post("/auth/login", json=wrong)).status_code == 401
        body = {"email": "leak@tests.apex.invalid", "tier": "pro"}
        again = await client.post("/admin/users", json=body, headers=admin)
        assert again.status_code == 201, again.text  # the address is free again
        health = (await client.get("/healthz")).json()
        assert health["mode"] == "normal", health
        # The IdPs' metadata is fetched afresh: the app kept none of an earlier test's.
        assert (await client.get("/auth/oidc/login")).status_code == 302
        assert (await client.get("/auth/saml/login")).status_code == 302
    assert [r.path for r in fake_idp.requests] == ["/.well-known/openid-configuration"]
    assert [r.path for r in fake_saml_idp.requests] == ["/metadata"]
    async with clean_platform.serve("gateway") as url:
        http_url = url.replace("ws", "http", 1)
        async with httpx.AsyncClient(base_url=http_url, headers=admin) as http:
            health = (await http.get("/healthz")).json()
            assert (health["status"], health["connections"]) == ("ok", 0), health
            metrics = (await http.get("/metrics")).text
            assert "apex_gateway_messages_in_total 0" in metrics, metrics
        for access in SEEN:  # an earlier test's session opens no socket either
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(
                    f"{url}/ws", additional_headers={"Authorization": f"Bearer {access}"}
                )
            assert refused.value.response.status_code == 401
        APPS.add(_running_apps(clean_platform))


def test_the_apps_were_kept_running():
    # auth's app for clients, and the served auth and gateway (the gateway calls auth)
    assert len(APPS) == 1 and len(next(iter(APPS))) == 3, APPS
"""


def test_nothing_leaks_between_tests(test_package, inner_pytest):
    test_package("test_leaks.py", WRITE_AND_CHECK)  # the inner run's project: its cwd
    order = [f"test_write_everywhere[{n}]" for n in range(3)]
    order += [f"test_sees_nothing[{n}]" for n in range(3)]
    random.shuffle(order)
    order.append("test_sees_nothing[3]")  # after every write, whatever the shuffle
    order.append("test_the_apps_were_kept_running")
    ids = [f"pkg_tests/test_leaks.py::{name}" for name in order]
    code, text = finish(inner_pytest(*ids, "-p", "no:xdist", "-v", env=inner_env()), timeout=300)
    assert code == 0, f"order: {order}\n{text}"
    assert "8 passed" in text, text
