"""The admin route that removes a test run's users: `DELETE /admin/users?email_domain=`
deletes every user of a domain under the reserved TLD .invalid (the run's namespace,
which the `email_domain` fixture gives each L4 run) with what hangs off them, and the
teams and settings of the tenants it leaves without users; no user of any other domain
and no tenant someone is left in; a real domain is refused outright."""

from __future__ import annotations

import secrets
import uuid

import httpx
import pytest

from auth_tests.access import AccessAdmin
from auth_tests.client import TEST_DOMAIN, AuthAdmin, Tokens, error_of, login

pytestmark = [
    pytest.mark.bvj(
        segment="platform", goal="L4 runs leave no test users behind on a shared deployment",
        mrr=5000, scenario="001#10",
    ),
    pytest.mark.L2,
    pytest.mark.L3,
    pytest.mark.L4,
]  # fmt: skip


async def test_deleting_a_test_domain_removes_its_users_and_keys_and_no_other(
    auth_client: httpx.AsyncClient, admin_token: str, auth_admin: AuthAdmin
) -> None:
    domain = f"run-{secrets.token_hex(6)}.{TEST_DOMAIN}"
    run_admin = AuthAdmin(auth_client, admin_token, domain)
    doomed = [await run_admin.key_user(), await run_admin.key_user()]
    bystander = await auth_admin.create_user()

    assert await run_admin.delete_domain(domain) == 2

    for user in doomed:
        gone = await auth_client.get(f"/admin/users/{user.user_id}", headers=run_admin.headers)
        assert gone.status_code == 404, gone.text
        key = await auth_client.get(f"/admin/api-keys/{user.key_id}", headers=run_admin.headers)
        assert key.status_code == 404, key.text
    kept = await auth_client.get(f"/admin/users/{bystander['id']}", headers=run_admin.headers)
    assert kept.status_code == 200, kept.text
    assert await run_admin.delete_domain(domain) == 0, "nothing left to delete"


async def _settings(client: httpx.AsyncClient, tokens: Tokens, tenant: str) -> dict[str, str]:
    response = await client.get(f"/tenants/{tenant}/settings", headers=tokens.bearer)
    assert response.status_code == 200, response.text
    settings: dict[str, str] = response.json()["settings"]
    return settings


async def test_tenants_the_deletion_empties_lose_their_teams_and_settings_others_keep_them(
    auth_client: httpx.AsyncClient,
    admin_token: str,
    auth_admin: AuthAdmin,
    access_admin: AccessAdmin,
) -> None:
    domain = f"run-{secrets.token_hex(6)}.{TEST_DOMAIN}"
    run_admin = AuthAdmin(auth_client, admin_token, domain)
    emptied, shared = str(uuid.uuid4()), str(uuid.uuid4())
    for tenant in (emptied, shared):
        tokens = await login(auth_client, (await run_admin.key_user(tenant_id=tenant)).api_key)
        put = await auth_client.put(
            f"/tenants/{tenant}/settings/theme", json={"value": "dark"}, headers=tokens.bearer
        )
        assert put.status_code == 200, put.text
    team = await access_admin.create_team(tenant_id=emptied)
    kept_team = await access_admin.create_team(tenant_id=shared)
    survivor = await login(auth_client, (await auth_admin.key_user(tenant_id=shared)).api_key)

    assert await run_admin.delete_domain(domain) == 2

    gone = await auth_client.get(f"/admin/teams/{team['id']}", headers=auth_admin.headers)
    assert gone.status_code == 404, gone.text
    kept = await auth_client.get(f"/admin/teams/{kept_team['id']}", headers=auth_admin.headers)
    assert kept.status_code == 200, kept.text
    assert await _settings(auth_client, survivor, shared) == {"theme": "dark"}
    newcomer = await login(auth_client, (await auth_admin.key_user(tenant_id=emptied)).api_key)
    assert await _settings(auth_client, newcomer, emptied) == {}


@pytest.mark.parametrize(
    "domain", ["example.com", "invalid", "%.invalid", "x.invalid.example.com", "a b.invalid"]
)
async def test_only_a_domain_under_the_reserved_tld_can_be_deleted(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, domain: str
) -> None:
    response = await auth_client.delete(
        "/admin/users", params={"email_domain": domain}, headers=auth_admin.headers
    )
    assert (response.status_code, error_of(response)) == (400, "invalid_domain"), response.text


async def test_deleting_users_needs_the_admin_token(auth_client: httpx.AsyncClient) -> None:
    response = await auth_client.delete("/admin/users", params={"email_domain": "x.invalid"})
    assert response.status_code == 401, response.text
