"""Per-user API rate limits: 001#11 per-tier limits and quotas, 002#5 sliding window and bursts.

Contract (CONTRACT3): every request with a Bearer access token (/me*, /sessions*, /authz/*,
/auth/context-token) counts against the USER's sliding window for the user's tier
(APEX_API_RATE_LIMITS, Redis Lua, atomic); responses carry X-RateLimit-Limit and
X-RateLimit-Remaining; over the limit 429 `rate_limited` + Retry-After; a tier change takes
effect on the next request; GET /me/quota -> {"tier","limit","window","remaining"}.
The limits are set per test (L2/L3): short windows so that sliding can be watched.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from apex_testkit import Platform, eventually
from auth_tests.client import AuthAdmin, Tokens, error_of, login

TIERS = pytest.mark.bvj(
    segment="mid", goal="Fair usage: tier differentiation of API limits", mrr=10000,
    scenario="001#11",
)  # fmt: skip
WINDOWS = pytest.mark.bvj(
    segment="platform", goal="Platform protection: sliding windows, exact bursts", mrr=75000,
    scenario="002#5",
)  # fmt: skip

LIMITS = {"free": 5, "pro": 20, "enterprise": 60}
LONG = ",".join(f"{tier}={n}/60" for tier, n in LIMITS.items())  # nothing slides in a test
# Windows are precise to the millisecond: short enough to watch one slide in a test.
SHORT_WINDOW = 0.3
SHORT = f"free=5/{SHORT_WINDOW},pro=50/{SHORT_WINDOW},enterprise=500/{SHORT_WINDOW}"


@asynccontextmanager
async def _limited(
    platform: Platform, limits: str, *, instance: int = 0
) -> AsyncIterator[httpx.AsyncClient]:
    async with platform.client("auth", instance=instance, APEX_API_RATE_LIMITS=limits) as client:
        yield client


async def _user(client: httpx.AsyncClient, admin_token: str, tier: str) -> tuple[str, Tokens]:
    owner = await AuthAdmin(client, admin_token).key_user(tier=tier)
    return owner.user_id, await login(client, owner.api_key)


def _remaining(response: httpx.Response) -> int:
    return int(response.headers["X-RateLimit-Remaining"])


def _assert_refused(response: httpx.Response, *, limit: int, window: float) -> None:
    assert response.status_code == 429, response.text
    assert error_of(response) == "rate_limited"
    retry_after = int(response.headers["Retry-After"])
    # Retry-After counts whole seconds (RFC 9110), at least 1, even for a shorter window.
    most = max(1, math.ceil(window))
    assert 1 <= retry_after <= most, f"Retry-After {retry_after} outside 1..{most}"
    assert response.headers["X-RateLimit-Limit"] == str(limit)
    assert response.headers["X-RateLimit-Remaining"] == "0"


@pytest.mark.L2
@pytest.mark.L3
@TIERS
@pytest.mark.parametrize("tier", ["free", "pro", "enterprise"])
async def test_each_tier_gets_exactly_its_limit(
    clean_platform: Platform, admin_token: str, tier: str
) -> None:
    limit = LIMITS[tier]
    async with _limited(clean_platform, LONG) as client:
        _, tokens = await _user(client, admin_token, tier)
        for i in range(limit):
            response = await client.get("/me", headers=tokens.bearer)
            assert response.status_code == 200, f"request {i + 1} of {limit}: {response.text}"
            assert response.headers["X-RateLimit-Limit"] == str(limit)
            assert _remaining(response) == limit - 1 - i

        _assert_refused(await client.get("/me", headers=tokens.bearer), limit=limit, window=60)
        _assert_refused(
            await client.get("/me/permissions", headers=tokens.bearer), limit=limit, window=60
        )


@pytest.mark.L2
@pytest.mark.L3
@TIERS
async def test_quota_reports_tier_limit_window_and_what_is_left(
    clean_platform: Platform, admin_token: str
) -> None:
    async with _limited(clean_platform, LONG) as client:
        _, tokens = await _user(client, admin_token, "free")

        first = await client.get("/me/quota", headers=tokens.bearer)
        assert first.status_code == 200, first.text
        assert first.json() == {"tier": "free", "limit": 5, "window": 60, "remaining": 4}, (
            "the quota request itself is counted"
        )
        assert _remaining(first) == 4

        for _ in range(3):
            assert (await client.get("/me", headers=tokens.bearer)).status_code == 200
        last = await client.get("/me/quota", headers=tokens.bearer)
        assert last.json()["remaining"] == 0 == _remaining(last)
        _assert_refused(await client.get("/me/quota", headers=tokens.bearer), limit=5, window=60)


@pytest.mark.L2
@pytest.mark.L3
@TIERS
async def test_every_authenticated_route_draws_on_the_same_budget(
    clean_platform: Platform, admin_token: str
) -> None:
    async with _limited(clean_platform, LONG) as client:
        _, tokens = await _user(client, admin_token, "free")
        calls = [
            ("GET", "/me", None),
            ("GET", "/me/permissions", None),
            ("GET", "/sessions", None),
            ("POST", "/authz/check", {"permission": "agents:read"}),
            ("POST", "/auth/context-token", {"audience": "agents"}),
        ]
        for n, (method, path, body) in enumerate(calls):
            response = await client.request(method, path, json=body, headers=tokens.bearer)
            assert response.status_code == 200, f"{path}: {response.text}"
            assert response.headers["X-RateLimit-Limit"] == "5", path
            assert _remaining(response) == 4 - n, f"{path} did not count"

        for method, path, body in calls:
            response = await client.request(method, path, json=body, headers=tokens.bearer)
            _assert_refused(response, limit=5, window=60)

        # Requests without a user's token are not the user's: the platform still answers.
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/.well-known/jwks.json")).status_code == 200


@pytest.mark.L2
@pytest.mark.L3
@TIERS
async def test_the_budget_is_the_users_across_sessions_and_instances(
    clean_platform: Platform, admin_token: str
) -> None:
    async with (
        _limited(clean_platform, LONG, instance=0) as first,
        _limited(clean_platform, LONG, instance=1) as second,
    ):
        admin = AuthAdmin(first, admin_token)
        owner = await admin.key_user(tier="free")
        laptop = await login(first, owner.api_key)
        phone = await login(second, owner.api_key)
        _, neighbour = await _user(first, admin_token, "free")

        for client, tokens in ((first, laptop), (second, phone), (first, phone)):
            assert (await client.get("/me", headers=tokens.bearer)).status_code == 200
        for client, tokens in ((second, laptop), (first, laptop)):
            assert (await client.get("/me", headers=tokens.bearer)).status_code == 200

        # Five requests by one user, whatever the session or instance: the sixth is refused.
        for client, tokens in ((first, phone), (second, laptop)):
            _assert_refused(await client.get("/me", headers=tokens.bearer), limit=5, window=60)
        neighbours = await second.get("/me", headers=neighbour.bearer)
        assert neighbours.status_code == 200, "another user's budget was used up"
        assert _remaining(neighbours) == 4


@pytest.mark.L2
@pytest.mark.L3
@TIERS
async def test_a_tier_change_applies_to_the_next_request(
    clean_platform: Platform, admin_token: str
) -> None:
    async with _limited(clean_platform, LONG) as client:
        admin = AuthAdmin(client, admin_token)
        user_id, tokens = await _user(client, admin_token, "free")
        for _ in range(5):
            assert (await client.get("/me", headers=tokens.bearer)).status_code == 200
        _assert_refused(await client.get("/me", headers=tokens.bearer), limit=5, window=60)

        await admin.set_tier(user_id, "pro")
        # Same access token, whose `tier` claim still says free: the limit is looked up.
        upgraded = await client.get("/me", headers=tokens.bearer)
        assert upgraded.status_code == 200, upgraded.text
        assert upgraded.headers["X-RateLimit-Limit"] == "20"
        quota = (await client.get("/me/quota", headers=tokens.bearer)).json()
        assert (quota["tier"], quota["limit"]) == ("pro", 20)

        await admin.set_tier(user_id, "free")
        downgraded = await client.get("/me", headers=tokens.bearer)
        assert downgraded.headers["X-RateLimit-Limit"] == "5", "downgrade not applied"
        statuses = [downgraded.status_code]
        for _ in range(5):
            statuses.append((await client.get("/me", headers=tokens.bearer)).status_code)
        assert statuses[-1] == 429, f"a free user got {statuses.count(200)} of 6 after downgrade"


@pytest.mark.L2
@pytest.mark.L3
@WINDOWS
async def test_a_concurrent_burst_gets_exactly_the_limit(
    clean_platform: Platform, admin_token: str
) -> None:
    """Atomicity: 60 requests at once from one pro user (limit 20), and a free user's 30 at
    the same time (limit 5): exactly the limits get through, each seeing its own count."""
    async with _limited(clean_platform, LONG) as client:
        _, pro = await _user(client, admin_token, "pro")
        _, free = await _user(client, admin_token, "free")

        responses = await asyncio.gather(
            *(client.get("/me", headers=pro.bearer) for _ in range(60)),
            *(client.get("/me", headers=free.bearer) for _ in range(30)),
        )
        for tokens, burst, limit in ((pro, responses[:60], 20), (free, responses[60:], 5)):
            accepted = [r for r in burst if r.status_code == 200]
            refused = [r for r in burst if r.status_code == 429]
            assert (len(accepted), len(refused)) == (limit, len(burst) - limit), (
                f"limit {limit}: {len(accepted)} accepted, {len(refused)} refused"
            )
            assert sorted(_remaining(r) for r in accepted) == list(range(limit)), (
                "two accepted requests saw the same count: the check-and-count is not atomic"
            )
            assert {error_of(r) for r in refused} == {"rate_limited"}
            assert all(r.json()["session_id"] == tokens.session_id for r in accepted)


@pytest.mark.L2
@pytest.mark.L3
@WINDOWS
async def test_requests_are_allowed_again_once_the_window_has_slid(
    clean_platform: Platform, admin_token: str
) -> None:
    async with _limited(clean_platform, SHORT) as client:

        async def refused_inside_a_full_window() -> Tokens | None:
            _, tokens = await _user(client, admin_token, "free")
            for _ in range(5):
                assert (await client.get("/me", headers=tokens.bearer)).status_code == 200
            sixth = await client.get("/me", headers=tokens.bearer)
            if sixth.status_code == 200:
                # Accepted: the first of the five had slid out already (a machine too
                # slow to send six requests in one window), or the limit is not kept.
                # A new user tries again; a limit never kept fails at the deadline.
                return None
            _assert_refused(sixth, limit=5, window=SHORT_WINDOW)
            return tokens

        tokens = await eventually(
            refused_inside_a_full_window, timeout=30, interval=0.001,
            message="a sixth request inside a full window to be refused",
        )  # fmt: skip
        assert tokens is not None

        async def accepted() -> httpx.Response | None:
            response = await client.get("/me", headers=tokens.bearer)
            return response if response.status_code == 200 else None

        # Poll slower than the limit, so the polling itself cannot keep the window full.
        again = await eventually(
            accepted, timeout=30, interval=SHORT_WINDOW / 2, max_interval=SHORT_WINDOW / 2,
            message="a request to be accepted after the window slid",
        )  # fmt: skip
        assert again is not None
        assert again.headers["X-RateLimit-Limit"] == "5"
        # How soon the budget comes back, and that no window ever holds more than the
        # limit, are measured by test_rate_limit_bench.py (marker perf): wall clocks.
