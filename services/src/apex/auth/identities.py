"""Just-in-time provisioning of users from an identity provider, and IdP groups -> teams.

A login through an IdP (provider "oidc" or "saml", subject = its ``sub`` / NameID)
finds the user linked to that external identity, else links the user with the same
e-mail address, else creates one (tier free, tenant from the IdP's ``tenant`` if it is
a UUID).

Anyone can put any address in a profile at some IdP, so an address is the IdP's word:
- linking to an existing account needs a verified address (OIDC: ``email_verified`` is
  the JSON ``true``; SAML has no such flag, its signed assertion stands for it) in a
  domain the IdP is trusted for (APEX_IDP_TRUSTED_DOMAINS, APEX_SAML_TRUSTED_DOMAINS;
  none by default). Otherwise the login is refused and the account stays as it is: its
  owner signs in the way they always did.
- creating an account needs a verified address or a trusted domain, so nobody reserves
  someone else's address for a later link (pre-account takeover).

Then the user's memberships in IdP-mapped teams (``teams.idp_group``) follow
the IdP's groups: added as "member" to the mapped teams of the user's own tenant (a user
of no tenant: teams of no tenant) it is in, removed from mapped teams it is no longer in
(teams without idp_group are never touched).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from apex.auth import audit, users
from apex.auth.logins import LoginUser, load_user

__all__ = [
    "ExternalProfile",
    "ProvisioningError",
    "TakeSeat",
    "provision",
    "sync_groups",
]

MAX_GROUPS = 500
# Awaited with the tenant before a user of a tenant is created; raises to refuse.
TakeSeat = Callable[[uuid.UUID], Awaitable[None]]
# permcache keeps permver:<uid> for twice its cache TTL (300 s).


class ProvisioningError(Exception):
    """The IdP's profile cannot be mapped to a user (e.g. no e-mail address)."""


@dataclasses.dataclass(frozen=True)
class ExternalProfile:
    """Who the IdP says the user is."""

    provider: str
    subject: str
    email: str | None
    groups: tuple[str, ...] = ()
    tenant: str | None = None
    email_verified: bool = False


async def provision(
    conn: asyncpg.Connection,
    profile: ExternalProfile,
    *,
    trusted_domains: frozenset[str],
    take_seat: TakeSeat | None = None,
) -> LoginUser:
    """The user of ``profile`` (found, linked or created), in the caller's transaction;
    ``trusted_domains``: the e-mail domains this IdP may vouch for; ``take_seat``, when
    given, is awaited with the tenant before a user of a tenant is created (it raises to
    refuse: ``apex.auth.seats``)."""
    # One provisioning per external identity at a time: two first logins must not
    # create two users.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))", f"{profile.provider}:{profile.subject}"
    )
    user_id = await conn.fetchval(
        "UPDATE external_identities SET last_login_at = now() "
        "WHERE provider = $1 AND subject = $2 RETURNING user_id",
        profile.provider,
        profile.subject,
    )
    if user_id is None:
        user_id = await _link_or_create(conn, profile, trusted_domains, take_seat)
    user = await load_user(conn, user_id=user_id)
    if user is None:  # pragma: no cover - the row was found or written in this transaction
        raise ProvisioningError("the provisioned user vanished")
    return user


async def _link_or_create(
    conn: asyncpg.Connection,
    profile: ExternalProfile,
    trusted_domains: frozenset[str],
    take_seat: TakeSeat | None,
) -> uuid.UUID:
    if not profile.email:
        raise ProvisioningError("the identity provider sent no e-mail address")
    try:
        email = users.normalize_email(profile.email)
    except ValueError:
        raise ProvisioningError("the identity provider sent an invalid e-mail address") from None
    actor = f"idp:{profile.provider}"
    trusted = email.rpartition("@")[2] in trusted_domains
    existing = await load_user(conn, email=email)
    if existing is not None:
        if not profile.email_verified:
            raise ProvisioningError(
                "the identity provider has not verified this e-mail address; "
                "it cannot be linked to the existing account"
            )
        if not trusted:
            raise ProvisioningError(
                "an account with this e-mail address exists and this identity provider is "
                "not trusted for its domain; sign in to it the way you usually do"
            )
        user_id = existing.id
    else:
        if not (profile.email_verified or trusted):
            raise ProvisioningError("the identity provider has not verified this e-mail address")
        tenant_id = _uuid_or_none(profile.tenant)
        if take_seat is not None and tenant_id is not None:
            await take_seat(tenant_id)
        try:
            async with conn.transaction():  # a savepoint: a racing admin may take the address
                created = await users.create_user(conn, email, "free", tenant_id)
        except users.DuplicateEmail:
            raise ProvisioningError(
                "a user with this e-mail address was created meanwhile"
            ) from None
        user_id = created.id
        await audit.record(
            conn,
            "user.created",
            subject=str(user_id),
            actor=actor,
            user_id=user_id,
            detail={
                "tier": "free",
                "tenant_id": str(tenant_id) if tenant_id else None,
                "provider": profile.provider,
                "jit": True,
            },
        )
    await conn.execute(
        "INSERT INTO external_identities (provider, subject, user_id, last_login_at) "
        "VALUES ($1, $2, $3, now())",
        profile.provider,
        profile.subject,
        user_id,
    )
    await audit.record(
        conn,
        "identity.linked",
        subject=str(user_id),
        actor=actor,
        user_id=user_id,
        detail={"provider": profile.provider, "subject": profile.subject[:200]},
    )
    return user_id


async def sync_groups(
    conn: asyncpg.Connection, user_id: uuid.UUID, groups: Sequence[str], *, provider: str
) -> tuple[list[str], list[str]]:
    """Make the user's memberships in IdP-mapped teams match ``groups``.

    Returns the team ids joined and left; when they changed, the caller invalidates the
    user's cached permissions (the guard's PermissionCache) after its transaction commits.
    A database without teams (before migration 0007) has nothing to sync.
    """
    if not await conn.fetchval("SELECT to_regclass('team_members') IS NOT NULL"):
        return [], []
    wanted = sorted({g for g in groups if isinstance(g, str) and g})[:MAX_GROUPS]
    # Only teams of the user's own tenant (none: teams of no tenant): an IdP's group name
    # must never make a user a member of another tenant's team (issue 10, #11).
    added = await conn.fetch(
        "INSERT INTO team_members (team_id, user_id, role) "
        "SELECT t.id, $1, 'member' FROM teams t JOIN users u ON u.id = $1 "
        "WHERE t.idp_group = ANY($2::text[]) AND t.tenant_id IS NOT DISTINCT FROM u.tenant_id "
        "ON CONFLICT (team_id, user_id) DO NOTHING RETURNING team_id",
        user_id,
        wanted,
    )
    removed = await conn.fetch(
        "DELETE FROM team_members m USING teams t "
        "WHERE m.team_id = t.id AND m.user_id = $1 AND t.idp_group IS NOT NULL "
        "AND NOT (t.idp_group = ANY($2::text[])) RETURNING m.team_id",
        user_id,
        wanted,
    )
    joined = sorted(str(row["team_id"]) for row in added)
    left = sorted(str(row["team_id"]) for row in removed)
    if joined or left:
        await audit.record(
            conn,
            "identity.groups_synced",
            subject=str(user_id),
            actor=f"idp:{provider}",
            user_id=user_id,
            detail={"provider": provider, "joined": joined, "left": left},
        )
    return joined, left


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
