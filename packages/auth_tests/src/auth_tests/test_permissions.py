"""Permissions: 001#4 cascade on role change, 001#9 team inheritance, 001#12 cache invalidation.

The rules under test (CONTRACT3): a user's effective permissions are, for each team the user
is in, the role's fixed permissions plus the grants of that team and all its ancestors
(allow adds, deny removes, the team closest to the user wins), united over the user's
teams, then overridden by the user's own grants. They are cached in Redis (`perm:<uid>`)
and in each instance's memory; every change drops both, for every affected user, at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httpx
import pytest

from apex_testkit import Platform, RedisNamespace, eventually
from auth_tests.access import ROLE_PERMISSIONS, AccessAdmin, is_allowed, my_permissions
from auth_tests.client import AuthAdmin, KeyUser, Tokens, error_of, login
from auth_tests.events import AuthEvents

CASCADE = pytest.mark.bvj(
    segment="enterprise", goal="Real-time permission updates prevent security incidents",
    mrr=10000, scenario="001#4",
)  # fmt: skip
INHERITANCE = pytest.mark.bvj(
    segment="enterprise", goal="Enterprise team features: nested teams and override rules",
    mrr=15000, scenario="001#9",
)  # fmt: skip
CACHE = pytest.mark.bvj(
    segment="platform", goal="Security updates reach every cache: breach prevention",
    mrr=12000, scenario="001#12",
)  # fmt: skip

VIEWER, MEMBER, ADMIN = (sorted(ROLE_PERMISSIONS[r]) for r in ("viewer", "member", "admin"))
# A deadline, not a latency bound: a change made through one instance reaches another
# through pub/sub, which a missing invalidation could only imitate after the caches' 300 s
# TTL. How fast it gets there is measured by test_permission_bench (marker perf).
CROSS_INSTANCE_DEADLINE = 30.0


async def _signed_in(
    client: httpx.AsyncClient, auth_admin: AuthAdmin, *, tier: str = "pro"
) -> tuple[KeyUser, Tokens]:
    user = await auth_admin.key_user(tier=tier)
    return user, await login(client, user.api_key)


# --- 001#4 permission cascade on role change --------------------------------------------


@pytest.mark.L2
@pytest.mark.L3
@CASCADE
async def test_role_upgrade_takes_effect_on_the_next_request(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    team = await access_admin.create_team()
    user, tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(team["id"], user.user_id, "viewer")
    assert await my_permissions(auth_client, tokens) == VIEWER  # now cached
    assert not await is_allowed(auth_client, tokens, "billing:write")

    await access_admin.set_member(team["id"], user.user_id, "admin")

    # The same access token: permissions are looked up, never frozen into the token.
    assert await my_permissions(auth_client, tokens) == ADMIN
    assert await is_allowed(auth_client, tokens, "billing:write")
    assert await is_allowed(auth_client, tokens, "teams:manage")


@pytest.mark.L2
@pytest.mark.L3
@CASCADE
async def test_role_downgrade_takes_effect_on_the_next_request(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    team = await access_admin.create_team()
    user, tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(team["id"], user.user_id, "admin")
    assert await is_allowed(auth_client, tokens, "billing:write")  # cached as admin

    await access_admin.set_member(team["id"], user.user_id, "viewer")

    assert not await is_allowed(auth_client, tokens, "billing:write"), "downgrade not applied"
    assert not await is_allowed(auth_client, tokens, "agents:run")
    assert await is_allowed(auth_client, tokens, "agents:read")
    assert await my_permissions(auth_client, tokens) == VIEWER
    assert await access_admin.permissions(user.user_id) == VIEWER


@pytest.mark.L2
@pytest.mark.L3
@CASCADE
async def test_leaving_and_joining_teams_takes_effect_on_the_next_request(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    research = await access_admin.create_team()
    finance = await access_admin.create_team()
    await access_admin.grant_team(research["id"], "models:train")
    await access_admin.grant_team(finance["id"], "invoices:approve")
    user, tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(research["id"], user.user_id, "member")
    assert await my_permissions(auth_client, tokens) == sorted([*MEMBER, "models:train"])

    await access_admin.set_member(finance["id"], user.user_id, "viewer")
    assert await my_permissions(auth_client, tokens) == sorted(
        [*MEMBER, "models:train", "invoices:approve"]
    )

    await access_admin.remove_member(research["id"], user.user_id)
    assert await my_permissions(auth_client, tokens) == sorted([*VIEWER, "invoices:approve"])
    assert not await is_allowed(auth_client, tokens, "models:train")

    await access_admin.remove_member(finance["id"], user.user_id)
    assert await my_permissions(auth_client, tokens) == []


@pytest.mark.L2
@pytest.mark.L3
@CASCADE
async def test_deleting_a_team_takes_its_permissions_from_members_of_its_subteams(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    parent = await access_admin.create_team()
    child = await access_admin.create_team(parent_id=parent["id"])
    await access_admin.grant_team(parent["id"], "reports:export")
    user, tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(child["id"], user.user_id, "member")
    assert "reports:export" in await my_permissions(auth_client, tokens)  # cached

    await access_admin.delete_team(parent["id"])

    # The child goes with its parent (ON DELETE CASCADE), and so does everything it gave.
    assert await my_permissions(auth_client, tokens) == []
    assert not await is_allowed(auth_client, tokens, "agents:run")
    gone = await auth_client.get(f"/admin/teams/{child['id']}", headers=auth_admin.headers)
    assert gone.status_code == 404, gone.text


@pytest.mark.L2
@pytest.mark.L3
@CASCADE
async def test_a_parent_grant_change_cascades_to_members_of_subteams(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    parent = await access_admin.create_team()
    child = await access_admin.create_team(parent_id=parent["id"])
    grandchild = await access_admin.create_team(parent_id=child["id"])
    user, tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(grandchild["id"], user.user_id, "viewer")
    assert not await is_allowed(auth_client, tokens, "audit:read")  # cached: not allowed

    await access_admin.grant_team(parent["id"], "audit:read")
    assert await is_allowed(auth_client, tokens, "audit:read"), "two levels down, at once"

    await access_admin.grant_team(parent["id"], "audit:read", "deny")
    assert not await is_allowed(auth_client, tokens, "audit:read")

    await access_admin.drop_team_grant(parent["id"], "audit:read")
    await access_admin.grant_team(parent["id"], "agents:read", "deny")
    assert await my_permissions(auth_client, tokens) == ["billing:read"]


@pytest.mark.L2
@pytest.mark.L3
@CASCADE
@CACHE
async def test_a_change_through_one_instance_reaches_another_instance(
    clean_platform: Platform, admin_token: str
) -> None:
    """Instance B has the old permissions in memory; a change made through instance A
    must reach it through pub/sub, not after the cache's 300 s TTL."""
    async with (
        clean_platform.client("auth", instance=0) as first,
        clean_platform.client("auth", instance=1) as second,
    ):
        admin_a = AuthAdmin(first, admin_token)
        access_a = AccessAdmin(admin_a)
        team = await access_a.create_team()
        user, tokens = await _signed_in(first, admin_a)
        await access_a.set_member(team["id"], user.user_id, "admin")
        # Both instances have looked it up (memory and Redis caches are warm).
        assert await is_allowed(first, tokens, "billing:write")
        assert await is_allowed(second, tokens, "billing:write")

        await access_a.set_member(team["id"], user.user_id, "viewer")

        async def downgraded() -> bool:
            return not await is_allowed(second, tokens, "billing:write")

        await eventually(
            downgraded, timeout=CROSS_INSTANCE_DEADLINE, message="instance B to see the downgrade"
        )
        assert await my_permissions(second, tokens) == VIEWER

        # And the other way round: a user grant through B reaches A.
        await AccessAdmin(AuthAdmin(second, admin_token)).grant_user(user.user_id, "billing:write")

        async def regranted() -> bool:
            return await is_allowed(first, tokens, "billing:write")

        await eventually(
            regranted, timeout=CROSS_INSTANCE_DEADLINE, message="instance A to see the grant"
        )


# --- 001#9 team permission inheritance ------------------------------------------------


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@INHERITANCE
async def test_a_user_in_no_team_has_no_permissions(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    user, tokens = await _signed_in(auth_client, auth_admin)
    assert await my_permissions(auth_client, tokens) == []
    assert await access_admin.permissions(user.user_id) == []
    for permission in sorted(ROLE_PERMISSIONS["admin"]):
        assert not await is_allowed(auth_client, tokens, permission), permission


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@INHERITANCE
@pytest.mark.parametrize("role", ["viewer", "member", "admin"])
async def test_each_role_gives_exactly_its_fixed_permissions(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin, role: str
) -> None:
    team = await access_admin.create_team()
    user, tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(team["id"], user.user_id, role)

    assert await my_permissions(auth_client, tokens) == sorted(ROLE_PERMISSIONS[role])
    for permission in sorted(ROLE_PERMISSIONS["admin"]):
        expected = permission in ROLE_PERMISSIONS[role]
        assert await is_allowed(auth_client, tokens, permission) is expected, permission


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@INHERITANCE
async def test_grants_of_every_ancestor_are_inherited_and_nothing_else(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    org = await access_admin.create_team()
    division = await access_admin.create_team(parent_id=org["id"])
    squad = await access_admin.create_team(parent_id=division["id"])
    sibling = await access_admin.create_team(parent_id=org["id"])
    await access_admin.grant_team(org["id"], "sso:use")
    await access_admin.grant_team(division["id"], "models:deploy")
    await access_admin.grant_team(squad["id"], "agents:debug")
    await access_admin.grant_team(sibling["id"], "sibling:secret")

    in_squad, squad_tokens = await _signed_in(auth_client, auth_admin)
    in_division, division_tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(squad["id"], in_squad.user_id, "viewer")
    await access_admin.set_member(division["id"], in_division.user_id, "viewer")

    assert await my_permissions(auth_client, squad_tokens) == sorted(
        [*VIEWER, "sso:use", "models:deploy", "agents:debug"]
    )
    # Grants flow down, never up, never sideways.
    assert await my_permissions(auth_client, division_tokens) == sorted(
        [*VIEWER, "sso:use", "models:deploy"]
    )
    assert not await is_allowed(auth_client, squad_tokens, "sibling:secret")


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@INHERITANCE
async def test_the_team_closest_to_the_user_wins_over_its_ancestors(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    org = await access_admin.create_team()
    division = await access_admin.create_team(parent_id=org["id"])
    squad = await access_admin.create_team(parent_id=division["id"])
    await access_admin.grant_team(org["id"], "agents:run", "deny")  # org-wide freeze
    await access_admin.grant_team(division["id"], "agents:run", "allow")  # ...lifted here
    await access_admin.grant_team(org["id"], "exports:create", "allow")
    await access_admin.grant_team(division["id"], "exports:create", "deny")
    await access_admin.grant_team(squad["id"], "billing:read", "deny")  # a role permission

    at_org, org_tokens = await _signed_in(auth_client, auth_admin)
    at_squad, squad_tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(org["id"], at_org.user_id, "member")
    await access_admin.set_member(squad["id"], at_squad.user_id, "member")

    assert await my_permissions(auth_client, org_tokens) == sorted(
        ["agents:read", "billing:read", "teams:read", "exports:create"]
    ), "the org's deny removes a role permission and its allow adds one"
    assert await my_permissions(auth_client, squad_tokens) == sorted(
        ["agents:read", "agents:run", "teams:read"]
    ), "division's allow beats org's deny; division's deny beats org's allow; squad denies"


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@INHERITANCE
async def test_permissions_are_the_union_over_the_users_teams(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    locked = await access_admin.create_team()
    open_team = await access_admin.create_team()
    await access_admin.grant_team(locked["id"], "billing:read", "deny")
    await access_admin.grant_team(locked["id"], "agents:read", "deny")
    await access_admin.grant_team(open_team["id"], "exports:create")
    user, tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(locked["id"], user.user_id, "admin")
    await access_admin.set_member(open_team["id"], user.user_id, "viewer")

    # A deny in one team does not take away what another team gives.
    assert await my_permissions(auth_client, tokens) == sorted([*ADMIN, "exports:create"])


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@INHERITANCE
async def test_user_grants_override_every_team(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    org = await access_admin.create_team()
    squad = await access_admin.create_team(parent_id=org["id"])
    await access_admin.grant_team(squad["id"], "models:deploy", "allow")
    await access_admin.grant_team(org["id"], "exports:create", "deny")
    user, tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(squad["id"], user.user_id, "admin")
    await access_admin.grant_user(user.user_id, "billing:write", "deny")
    await access_admin.grant_user(user.user_id, "models:deploy", "deny")
    await access_admin.grant_user(user.user_id, "exports:create", "allow")

    expected = sorted((set(ADMIN) - {"billing:write"}) | {"exports:create"})
    assert await my_permissions(auth_client, tokens) == expected
    assert await access_admin.permissions(user.user_id) == expected

    await access_admin.drop_user_grant(user.user_id, "models:deploy")
    assert await is_allowed(auth_client, tokens, "models:deploy"), "the team's allow is back"

    # A user grant alone, without any team, is a permission too.
    loner, loner_tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.grant_user(loner.user_id, "agents:read")
    assert await my_permissions(auth_client, loner_tokens) == ["agents:read"]


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@INHERITANCE
async def test_the_admin_view_and_the_users_view_agree(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    org = await access_admin.create_team()
    squad = await access_admin.create_team(parent_id=org["id"])
    await access_admin.grant_team(org["id"], "zeta:read")
    await access_admin.grant_team(org["id"], "alpha:read")
    user, tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(squad["id"], user.user_id, "member")

    mine = await my_permissions(auth_client, tokens)
    assert mine == sorted(mine), "sorted, as the contract says"
    assert len(mine) == len(set(mine)), "no duplicates"
    assert mine == await access_admin.permissions(user.user_id)
    assert mine == sorted([*MEMBER, "alpha:read", "zeta:read"])
    for permission in [*mine, "teams:manage", "nobody:has-this"]:
        assert await is_allowed(auth_client, tokens, permission) is (permission in mine)


@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.L4
@INHERITANCE
async def test_team_admin_api_refuses_bad_input_without_a_500(
    auth_client: httpx.AsyncClient, auth_admin: AuthAdmin, access_admin: AccessAdmin
) -> None:
    team = await access_admin.create_team()
    user = await auth_admin.create_user()
    headers = auth_admin.headers
    ghost = str(uuid.uuid4())

    async def status(method: str, path: str, body: object = None) -> tuple[int, str]:
        response = await auth_client.request(method, path, json=body, headers=headers)
        assert response.status_code < 500, f"{method} {path}: {response.text}"
        return response.status_code, error_of(response) if response.status_code >= 400 else ""

    members = f"/admin/teams/{team['id']}/members"
    assert (await status("PUT", f"{members}/{user['id']}", {"role": "owner"}))[0] == 422
    assert (await status("PUT", f"{members}/{user['id']}", {}))[0] == 422
    grants = f"/admin/teams/{team['id']}/grants/agents:run"
    assert (await status("PUT", grants, {"effect": "maybe"}))[0] == 422
    assert (await status("PUT", f"/admin/users/{user['id']}/grants/x:y", {"effect": 1}))[0] == 422
    assert await status("GET", f"/admin/teams/{ghost}") == (404, "not_found")
    assert await status("GET", "/admin/teams/not-a-uuid") == (404, "not_found")
    assert await status("DELETE", f"/admin/teams/{ghost}") == (404, "not_found")
    assert (await status("PUT", f"{members}/{ghost}", {"role": "member"}))[0] == 404
    assert (await status("PUT", f"/admin/teams/{ghost}/members/{user['id']}", {"role": "member"}))[
        0
    ] == 404
    assert await status("POST", "/admin/teams", {"name": "x", "parent_id": ghost}) == (
        404,
        "not_found",
    )
    assert (await status("GET", f"/admin/users/{ghost}/permissions"))[0] == 404
    assert (await status("POST", "/admin/teams", {}))[0] == 422
    # Nothing of the above changed the user's permissions.
    assert await access_admin.permissions(user["id"]) == []


@pytest.mark.L2
@pytest.mark.L3
@INHERITANCE
@CACHE
async def test_moving_a_team_under_another_parent_changes_what_its_members_inherit(
    auth_client: httpx.AsyncClient,
    other_instance: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    access_admin: AccessAdmin,
    auth_events: AuthEvents,
    redis_namespace: RedisNamespace,
) -> None:
    """CONTRACT3 notes: `PATCH /admin/teams/{id} {parent_id}` re-parents a team (null makes
    it a root); the members of the team and of its subteams inherit from the new ancestors
    only, on the next request through any instance: their caches are dropped and the
    change is announced."""
    org_a, org_b = await access_admin.create_team(), await access_admin.create_team()
    await access_admin.grant_team(org_a["id"], "audit:read")
    await access_admin.grant_team(org_b["id"], "reports:export")
    squad = await access_admin.create_team(parent_id=org_a["id"])
    pod = await access_admin.create_team(parent_id=squad["id"])
    lead, lead_tokens = await _signed_in(auth_client, auth_admin)
    dev, dev_tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(squad["id"], lead.user_id, "member")
    await access_admin.set_member(pod["id"], dev.user_id, "member")
    for client in (auth_client, other_instance):  # both instances' caches are warm
        for tokens in (lead_tokens, dev_tokens):
            assert await is_allowed(client, tokens, "audit:read")
            assert not await is_allowed(client, tokens, "reports:export")
    await auth_events.forget()

    moved = await access_admin.update_team(squad["id"], parent_id=org_b["id"])

    assert moved.status_code == 200, moved.text
    assert moved.json()["parent_id"] == org_b["id"]
    assert squad["id"] in (await access_admin.team(org_b["id"]))["children"]
    assert squad["id"] not in (await access_admin.team(org_a["id"]))["children"]
    redis = redis_namespace.client()
    try:
        for user in (lead, dev):
            assert redis.exists(f"{redis_namespace.prefix}perm:{user.user_id}") == 0, user
    finally:
        redis.close()
    await auth_events.wait_for(
        lambda e: (
            e.get("type") == "permissions.changed"
            and {lead.user_id, dev.user_id} <= set(e.get("user_ids") or [])
        )
    )
    for tokens in (lead_tokens, dev_tokens):
        assert not await is_allowed(auth_client, tokens, "audit:read"), "the old parent's grant"
        assert await is_allowed(auth_client, tokens, "reports:export"), "the new parent's grant"

    async def moved_everywhere() -> bool:
        """The other instance drops its memory when the event reaches it (pub/sub)."""
        for tokens in (lead_tokens, dev_tokens):
            if await is_allowed(other_instance, tokens, "audit:read"):
                return False
            assert await is_allowed(other_instance, tokens, "reports:export")
        return True

    # Far below the caches' 300 s TTL: only the invalidation can make it in time.
    await eventually(
        moved_everywhere,
        timeout=CROSS_INSTANCE_DEADLINE,
        message="the other instance to see the move",
    )

    rooted = await access_admin.update_team(squad["id"], parent_id=None)

    assert (rooted.status_code, rooted.json()["parent_id"]) == (200, None)
    assert await my_permissions(auth_client, dev_tokens) == MEMBER, "nothing inherited at a root"

    async def rooted_everywhere() -> bool:
        return await my_permissions(other_instance, dev_tokens) == MEMBER

    await eventually(
        rooted_everywhere,
        timeout=CROSS_INSTANCE_DEADLINE,
        message="the other instance to see the root",
    )


@pytest.mark.L2
@pytest.mark.L3
@INHERITANCE
async def test_a_move_that_would_make_a_cycle_is_refused_and_changes_nothing(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    access_admin: AccessAdmin,
    auth_events: AuthEvents,
) -> None:
    """CONTRACT3 notes: a team cannot become its own parent or the child of one of its
    descendants (409 `cycle`); an unknown parent is a 404. Refused moves change no team,
    no permission and announce nothing."""
    org = await access_admin.create_team()
    await access_admin.grant_team(org["id"], "audit:read")
    squad = await access_admin.create_team(parent_id=org["id"])
    pod = await access_admin.create_team(parent_id=squad["id"])
    user, tokens = await _signed_in(auth_client, auth_admin)
    await access_admin.set_member(pod["id"], user.user_id, "member")
    before = await my_permissions(auth_client, tokens)
    assert "audit:read" in before
    await auth_events.forget()

    refusals = [
        (await access_admin.update_team(org["id"], parent_id=pod["id"]), (409, "cycle")),
        (await access_admin.update_team(squad["id"], parent_id=squad["id"]), (409, "cycle")),
        (
            await access_admin.update_team(squad["id"], parent_id=str(uuid.uuid4())),
            (404, "not_found"),
        ),
    ]

    for response, answer in refusals:
        assert (response.status_code, error_of(response)) == answer, response.text
    assert (await access_admin.team(org["id"]))["parent_id"] is None
    assert (await access_admin.team(squad["id"]))["parent_id"] == org["id"]
    assert (await access_admin.team(pod["id"]))["parent_id"] == squad["id"]
    assert await my_permissions(auth_client, tokens) == before
    events = await auth_events.drain()
    assert not [e for e in events if e.get("type") == "permissions.changed"], events
    updates = [e for e in await auth_admin.audit(org["id"]) if e["action"] == "team.updated"]
    assert updates == [], "a refused move was audited as an update"


# --- 001#12 auth cache invalidation ---------------------------------------------------


@pytest.mark.L2
@pytest.mark.L3
@CACHE
async def test_a_change_drops_the_redis_cache_of_every_affected_user_and_no_other(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    access_admin: AccessAdmin,
    redis_namespace: RedisNamespace,
) -> None:
    redis = redis_namespace.client()
    parent = await access_admin.create_team()
    child = await access_admin.create_team(parent_id=parent["id"])
    bystanders = await access_admin.create_team()
    users: dict[str, tuple[KeyUser, Tokens]] = {}
    for name, team in (("in_parent", parent), ("in_child", child), ("elsewhere", bystanders)):
        users[name] = await _signed_in(auth_client, auth_admin)
        await access_admin.set_member(team["id"], users[name][0].user_id, "member")
        await my_permissions(auth_client, users[name][1])

    def cache_key(name: str) -> str:
        return f"{redis_namespace.prefix}perm:{users[name][0].user_id}"

    for name in users:
        assert redis.exists(cache_key(name)) == 1, f"no Redis cache entry for {name}"
        assert 0 < redis.ttl(cache_key(name)) <= 300, "perm:<uid> has a TTL of 300 s"

    await access_admin.grant_team(parent["id"], "audit:read")

    assert redis.exists(cache_key("in_parent")) == 0
    assert redis.exists(cache_key("in_child")) == 0, "members of descendants are affected"
    assert redis.exists(cache_key("elsewhere")) == 1, "an unrelated user's cache was dropped"
    assert "audit:read" in await my_permissions(auth_client, users["in_child"][1])
    assert "audit:read" not in await my_permissions(auth_client, users["elsewhere"][1])


@pytest.mark.L2
@pytest.mark.L3
@CACHE
async def test_every_kind_of_change_is_announced_on_pub_sub(
    auth_client: httpx.AsyncClient,
    auth_admin: AuthAdmin,
    access_admin: AccessAdmin,
    auth_events: AuthEvents,
) -> None:
    parent = await access_admin.create_team()
    child = await access_admin.create_team(parent_id=parent["id"])
    top = await auth_admin.create_user()
    low = await auth_admin.create_user()
    await access_admin.set_member(parent["id"], top["id"], "member")
    await access_admin.set_member(child["id"], low["id"], "member")

    changes: list[tuple[str, Callable[[], Awaitable[None]], list[str]]] = [
        ("team grant", partial(access_admin.grant_team, parent["id"], "audit:read"),
         [top["id"], low["id"]]),
        ("role", partial(access_admin.set_member, child["id"], low["id"], "admin"), [low["id"]]),
        ("user grant", partial(access_admin.grant_user, top["id"], "x:y", "deny"), [top["id"]]),
        ("team grant removed", partial(access_admin.drop_team_grant, parent["id"], "audit:read"),
         [top["id"], low["id"]]),
        ("member removed", partial(access_admin.remove_member, child["id"], low["id"]),
         [low["id"]]),
        ("team deleted", partial(access_admin.delete_team, parent["id"]), [top["id"]]),
    ]  # fmt: skip
    for what, change, affected in changes:
        await auth_events.forget()
        await change()

        def announces(event: dict[str, Any], affected: list[str] = affected) -> bool:
            ids = event.get("user_ids")
            return (
                event.get("type") == "permissions.changed"
                and isinstance(ids, list)
                and set(affected) <= set(ids)
            )

        try:
            await auth_events.wait_for(announces, timeout=5)
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from None


@pytest.mark.L2
@pytest.mark.L3
@CACHE
async def test_logout_through_one_instance_is_refused_by_every_instance(
    auth_client: httpx.AsyncClient,
    other_instance: httpx.AsyncClient,
    key_user: KeyUser,
) -> None:
    tokens = await login(auth_client, key_user.api_key)
    assert (await other_instance.get("/me", headers=tokens.bearer)).status_code == 200
    await is_allowed(other_instance, tokens, "agents:read")  # its caches are warm

    logout = await auth_client.post("/auth/logout", headers=tokens.bearer)
    assert logout.status_code == 204

    for path, method in (("/me", "GET"), ("/me/permissions", "GET"), ("/authz/check", "POST")):
        body = {"permission": "agents:read"} if method == "POST" else None
        response = await other_instance.request(method, path, json=body, headers=tokens.bearer)
        assert (response.status_code, error_of(response)) == (401, "session_revoked"), path
