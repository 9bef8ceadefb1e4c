"""The effective-permission calculation: roles, inherited grants, user overrides, cycles."""

from __future__ import annotations

from apex.auth.permissions import (
    ROLE_PERMISSIONS,
    Membership,
    creates_cycle,
    effective_permissions,
    is_permission,
)

# root <- eng <- backend <- api ;  root <- sales
PARENTS: dict[str, str | None] = {
    "root": None,
    "eng": "root",
    "backend": "eng",
    "api": "backend",
    "sales": "root",
}


def test_roles_build_on_each_other() -> None:
    assert ROLE_PERMISSIONS["viewer"] == {"agents:read", "billing:read"}
    assert ROLE_PERMISSIONS["member"] == ROLE_PERMISSIONS["viewer"] | {"agents:run", "teams:read"}
    assert ROLE_PERMISSIONS["admin"] == ROLE_PERMISSIONS["member"] | {
        "billing:write",
        "teams:manage",
    }


def test_no_teams_no_grants_no_permissions() -> None:
    assert effective_permissions([], PARENTS, {}, {}) == []


def test_role_permissions_are_sorted() -> None:
    assert effective_permissions([Membership("api", "viewer")], PARENTS, {}, {}) == [
        "agents:read",
        "billing:read",
    ]


def test_an_ancestors_grants_are_inherited() -> None:
    grants = {"root": {"reports:read": "allow"}, "eng": {"deploy:run": "allow"}}
    result = effective_permissions([Membership("api", "viewer")], PARENTS, grants, {})
    assert result == ["agents:read", "billing:read", "deploy:run", "reports:read"]


def test_deny_at_parent_is_overridden_by_allow_at_child() -> None:
    grants = {"eng": {"deploy:run": "deny"}, "backend": {"deploy:run": "allow"}}
    assert "deploy:run" in effective_permissions([Membership("api", "viewer")], PARENTS, grants, {})


def test_allow_at_parent_is_overridden_by_deny_at_child() -> None:
    grants = {"root": {"deploy:run": "allow"}, "api": {"deploy:run": "deny"}}
    assert "deploy:run" not in effective_permissions(
        [Membership("api", "viewer")], PARENTS, grants, {}
    )


def test_the_closest_grant_wins_across_several_levels() -> None:
    grants = {
        "root": {"deploy:run": "allow"},
        "eng": {"deploy:run": "deny"},
        "backend": {"deploy:run": "allow"},
    }
    assert "deploy:run" in effective_permissions([Membership("api", "viewer")], PARENTS, grants, {})
    # A member of eng itself only sees eng's deny and root's allow: eng is closer.
    assert "deploy:run" not in effective_permissions(
        [Membership("eng", "viewer")], PARENTS, grants, {}
    )


def test_a_deny_removes_a_role_permission() -> None:
    grants = {"root": {"billing:read": "deny"}}
    assert effective_permissions([Membership("api", "viewer")], PARENTS, grants, {}) == [
        "agents:read"
    ]


def test_a_child_allow_restores_a_role_permission_denied_above() -> None:
    grants = {"root": {"billing:read": "deny"}, "api": {"billing:read": "allow"}}
    assert "billing:read" in effective_permissions(
        [Membership("api", "viewer")], PARENTS, grants, {}
    )


def test_grants_of_a_descendant_do_not_flow_up() -> None:
    grants = {"api": {"deploy:run": "allow"}}
    assert "deploy:run" not in effective_permissions(
        [Membership("eng", "admin")], PARENTS, grants, {}
    )


def test_grants_of_a_sibling_do_not_apply() -> None:
    grants = {"sales": {"deploy:run": "allow"}}
    assert "deploy:run" not in effective_permissions(
        [Membership("api", "admin")], PARENTS, grants, {}
    )


def test_teams_are_united_a_deny_in_one_does_not_cancel_another() -> None:
    grants = {"sales": {"billing:write": "deny", "agents:read": "deny"}}
    memberships = [Membership("sales", "admin"), Membership("api", "viewer")]
    result = effective_permissions(memberships, PARENTS, grants, {})
    # billing:write only came through sales (denied there); agents:read comes through api.
    assert "billing:write" not in result
    assert "agents:read" in result
    assert "teams:manage" in result


def test_user_grants_win_over_everything() -> None:
    grants = {"api": {"deploy:run": "allow"}, "root": {"secrets:read": "deny"}}
    user = {"deploy:run": "deny", "secrets:read": "allow", "agents:read": "deny"}
    result = effective_permissions(
        [Membership("api", "admin"), Membership("sales", "member")], PARENTS, grants, user
    )
    assert "deploy:run" not in result
    assert "secrets:read" in result
    assert "agents:read" not in result


def test_user_grants_apply_without_any_team() -> None:
    assert effective_permissions([], PARENTS, {}, {"x:y": "allow", "z:w": "deny"}) == ["x:y"]


def test_an_unknown_role_gives_only_grants() -> None:
    grants = {"api": {"deploy:run": "allow"}}
    assert effective_permissions([Membership("api", "owner")], PARENTS, grants, {}) == [
        "deploy:run"
    ]


def test_a_cycle_in_the_data_ends_the_walk() -> None:
    parents: dict[str, str | None] = {"a": "b", "b": "a"}
    grants = {"b": {"x:y": "allow"}}
    assert effective_permissions([Membership("a", "viewer")], parents, grants, {}) == [
        "agents:read",
        "billing:read",
        "x:y",
    ]


def test_cycles_are_detected() -> None:
    assert creates_cycle("eng", "eng", PARENTS)
    assert creates_cycle("eng", "api", PARENTS)  # api descends from eng
    assert creates_cycle("root", "backend", PARENTS)
    assert not creates_cycle("api", "sales", PARENTS)
    assert not creates_cycle("sales", "api", PARENTS)
    assert not creates_cycle("api", None, PARENTS)
    assert not creates_cycle("new", "api", PARENTS)


def test_permission_names() -> None:
    assert is_permission("agents:run")
    assert is_permission("billing.v2:read-all")
    for bad in ("", "agents", ":run", "agents:", "Agents:run", "a:b:c", "a b:c", "a:" + "x" * 65):
        assert not is_permission(bad), bad
