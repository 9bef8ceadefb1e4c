"""The admin routes that remove a test run's namespace (a domain under the reserved TLD
.invalid, which the `email_domain` fixture gives each L4 run): `DELETE
/admin/users?email_domain=` deletes every user of the domain and of its subdomains (the
run's IdP users) with what hangs off them, and the teams and settings of the tenants it
leaves without users; `DELETE /admin/teams?namespace=` deletes the teams named
`<domain>/...` with their subteams. No user of any other domain, no other team and no
tenant someone is left in; a real domain is refused outright."""

from __future__ import annotations

import secrets
import uuid

import httpx
import pytest

from auth_tests.access import AccessAdmin
from auth_tests.client import TEST_DOMAIN, AuthAdmin, Tokens, error_of, idp_email, login

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


async def test_a_domains_subdomains_go_with_it_a_look_alike_domain_stays(
    auth_client: httpx.AsyncClient, admin_token: str, auth_admin: AuthAdmin
) -> None:
    """The run's IdP users live in `idp.<domain>` and `sso.<domain>`. (Every domain here
    is under the worker's own namespace, so at L4 nothing outlives the run.)"""
    domain = f"t-{secrets.token_hex(6)}.{auth_admin.email_domain}"
    run_admin = AuthAdmin(auth_client, admin_token, domain)
    doomed = []
    for email in (idp_email(domain), idp_email(domain, "sso"), f"x@a.b.{domain}"):
        created = await auth_client.post(
            "/admin/users", json={"email": email, "tier": "free"}, headers=auth_admin.headers
        )
        assert created.status_code == 201, created.text
        doomed.append(created.json()["id"])
    look_alike = await AuthAdmin(auth_client, admin_token, f"x{domain}").create_user()

    assert await run_admin.delete_domain(domain) == 3

    for user_id in doomed:
        gone = await auth_client.get(f"/admin/users/{user_id}", headers=auth_admin.headers)
        assert gone.status_code == 404, gone.text
    kept = await auth_client.get(f"/admin/users/{look_alike['id']}", headers=auth_admin.headers)
    assert kept.status_code == 200, kept.text


async def test_deleting_a_namespaces_teams_removes_them_and_their_subteams_and_no_other(
    auth_client: httpx.AsyncClient, admin_token: str, access_admin: AccessAdmin
) -> None:
    domain = f"t-{secrets.token_hex(6)}.{access_admin.namespace}"
    run_admin = AuthAdmin(auth_client, admin_token, domain)
    run_access = AccessAdmin(run_admin)
    org = await run_access.create_team()
    squad = await run_access.create_team(parent_id=org["id"])
    sub = await AccessAdmin(AuthAdmin(auth_client, admin_token, f"a.{domain}")).create_team()
    member = await run_admin.create_user()
    await run_access.set_member(squad["id"], member["id"], "admin")
    other = await access_admin.create_team()
    look_alike = await AccessAdmin(AuthAdmin(auth_client, admin_token, f"x{domain}")).create_team()
    assert org["name"].startswith(f"{domain}/"), org

    assert await run_admin.delete_teams_of(domain) == 3

    for team in (org, squad, sub):
        gone = await auth_client.get(f"/admin/teams/{team['id']}", headers=run_admin.headers)
        assert gone.status_code == 404, gone.text
    for team in (other, look_alike):
        kept = await auth_client.get(f"/admin/teams/{team['id']}", headers=run_admin.headers)
        assert kept.status_code == 200, kept.text
    permissions = await auth_client.get(
        f"/admin/users/{member['id']}/permissions", headers=run_admin.headers
    )
    assert permissions.json()["permissions"] == [], "the deleted team's role is gone"
    assert await run_admin.delete_namespace(domain) == (0, 1), "then its users"


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


@pytest.mark.parametrize("domain", ["example.com", "invalid", "%.invalid", "x.invalid.com"])
async def test_only_a_domain_under_the_reserved_tld_is_a_team_namespace(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, domain: str
) -> None:
    response = await auth_client.delete(
        "/admin/teams", params={"namespace": domain}, headers=auth_admin.headers
    )
    assert (response.status_code, error_of(response)) == (400, "invalid_namespace"), response.text


@pytest.mark.parametrize(
    ("path", "params"),
    [("/admin/users", {"email_domain": "x.invalid"}), ("/admin/teams", {"namespace": "x.invalid"})],
)
async def test_deleting_a_namespace_needs_the_admin_token(
    auth_client: httpx.AsyncClient, path: str, params: dict[str, str]
) -> None:
    response = await auth_client.delete(path, params=params)
    assert response.status_code == 401, response.text
