"""Permissions: roles, grants and the effective-permission calculation (pure code).

A user's effective permissions are, for each team the user is in, the permissions of
the user's role in that team, changed by the grants of that team and of all its
ancestors: an ``allow`` adds a permission, a ``deny`` removes it, and for one
permission the grant of the team closest to the user wins over its ancestors'. The
sets of the user's teams are united; then the user's own grants (allow/deny)
override everything.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Final, Literal

__all__ = [
    "EFFECTS",
    "ROLES",
    "ROLE_PERMISSIONS",
    "Effect",
    "Membership",
    "Role",
    "creates_cycle",
    "effective_permissions",
    "is_permission",
]

Role = Literal["viewer", "member", "admin"]
Effect = Literal["allow", "deny"]
ROLES: Final = ("viewer", "member", "admin")
EFFECTS: Final = ("allow", "deny")

_VIEWER: Final = frozenset({"agents:read", "billing:read"})
_MEMBER: Final = _VIEWER | {"agents:run", "teams:read"}
_ADMIN: Final = _MEMBER | {"billing:write", "teams:manage"}
ROLE_PERMISSIONS: Final[Mapping[str, frozenset[str]]] = {
    "viewer": _VIEWER,
    "member": _MEMBER,
    "admin": _ADMIN,
}

# "<resource>:<action>", e.g. agents:run, billing:write.
_PERMISSION = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}:[a-z0-9][a-z0-9_.-]{0,63}")


def is_permission(text: str) -> bool:
    """Whether ``text`` is a well-formed permission name (``resource:action``, lower case)."""
    return _PERMISSION.fullmatch(text) is not None


@dataclasses.dataclass(frozen=True)
class Membership:
    """The user is in ``team_id`` with ``role``."""

    team_id: str
    role: str


def _team_permissions(
    membership: Membership,
    parents: Mapping[str, str | None],
    team_grants: Mapping[str, Mapping[str, str]],
) -> set[str]:
    # The chain from the team up to its root; the closest grant of a permission wins.
    decided: dict[str, str] = {}
    seen: set[str] = set()
    team: str | None = membership.team_id
    while team is not None and team not in seen:
        seen.add(team)
        for permission, effect in team_grants.get(team, {}).items():
            decided.setdefault(permission, effect)
        team = parents.get(team)
    permissions = set(ROLE_PERMISSIONS.get(membership.role, frozenset()))
    for permission, effect in decided.items():
        if effect == "allow":
            permissions.add(permission)
        else:
            permissions.discard(permission)
    return permissions


def effective_permissions(
    memberships: Iterable[Membership],
    parents: Mapping[str, str | None],
    team_grants: Mapping[str, Mapping[str, str]],
    user_grants: Mapping[str, str],
) -> list[str]:
    """The sorted effective permissions of a user.

    ``parents`` maps a team id to its parent's (None for a root) and must cover the
    ancestors of every team in ``memberships``; ``team_grants`` maps a team id to its
    ``{permission: effect}``; ``user_grants`` is the user's own ``{permission: effect}``.
    A cycle in ``parents`` (which the API refuses to create) ends the walk instead of
    looping.
    """
    permissions: set[str] = set()
    for membership in memberships:
        permissions |= _team_permissions(membership, parents, team_grants)
    for permission, effect in user_grants.items():
        if effect == "allow":
            permissions.add(permission)
        else:
            permissions.discard(permission)
    return sorted(permissions)


def creates_cycle(
    team_id: str, new_parent_id: str | None, parents: Mapping[str, str | None]
) -> bool:
    """Whether making ``new_parent_id`` the parent of ``team_id`` would close a cycle.

    It would if ``team_id`` is ``new_parent_id`` itself or one of its ancestors.
    """
    seen: set[str] = set()
    node = new_parent_id
    while node is not None and node not in seen:
        if node == team_id:
            return True
        seen.add(node)
        node = parents.get(node)
    return False
