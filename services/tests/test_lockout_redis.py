"""apex.auth.lockout against a real Redis: budgets exact under a burst, concurrent successes
admitted, each success resetting only its own budgets, non-locking budgets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import pytest
from redis.asyncio import Redis

from apex.auth.lockout import Attempt, Budget, BudgetSpent, Locked, Lockout
from apex.common.config import RateLimit


class _Users:
    """Stands in for the database connection: records the lock written to ``users``."""

    def __init__(self) -> None:
        self.locks: list[tuple[Any, ...]] = []

    async def execute(self, query: str, *args: Any) -> str:
        assert query.startswith("UPDATE users SET locked_until"), query
        self.locks.append(args)
        return "UPDATE 1"

    @property
    def conn(self) -> asyncpg.Connection:
        return cast(asyncpg.Connection, self)


@pytest.fixture(name="lockout")
async def _lockout(redis_namespace: Any) -> AsyncIterator[Lockout]:
    redis = Redis.from_url(redis_namespace.url, decode_responses=True)
    prefix = f"{redis_namespace.prefix}test-{uuid.uuid4().hex[:8]}:"
    try:
        yield Lockout(redis, prefix=prefix, limit=RateLimit(5, 60), mfa_limit=RateLimit(3, 60))
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def test_a_parallel_burst_evaluates_exactly_the_limit(lockout: Lockout) -> None:
    users = _Users()

    async def guess() -> str:
        try:
            async with lockout.attempt(None, email="nobody@example.com") as attempt:
                await asyncio.sleep(0)  # the evaluation: a yield, the others go on
                await lockout.failed(users.conn, attempt)
        except Locked:
            return "locked"
        return "evaluated"

    outcomes = await asyncio.gather(*(guess() for _ in range(40)))

    assert (outcomes.count("evaluated"), outcomes.count("locked")) == (5, 35)
    assert users.locks == [], "an unknown address has no row to lock"


async def test_parallel_successes_are_all_admitted(lockout: Lockout) -> None:
    user_id = uuid.uuid4()

    async def sign_in() -> None:
        async with lockout.attempt(user_id) as attempt:
            await asyncio.sleep(0)
            await lockout.succeeded(attempt)

    await asyncio.gather(*(sign_in() for _ in range(12)))  # more than the limit of 5


async def test_a_sign_in_success_leaves_the_second_factor_budget_alone(lockout: Lockout) -> None:
    users, user_id = _Users(), uuid.uuid4()

    async def second_factor_fails() -> Budget | None:
        async with lockout.attempt(user_id, second_factor=True) as attempt:
            return await lockout.failed(users.conn, attempt)

    assert [await second_factor_fails(), await second_factor_fails()] == [None, None]
    async with lockout.attempt(user_id) as attempt:  # a right password
        await lockout.succeeded(attempt)

    filled = await second_factor_fails()  # the third of three

    assert filled is not None
    assert (filled.name, filled.limit) == ("second_factor", RateLimit(3, 60))
    assert users.locks == [(user_id, 60.0)]
    with pytest.raises(Locked) as locked:
        await lockout.begin(user_id)
    assert 1 <= locked.value.retry_after <= 60


async def test_a_full_non_locking_budget_refuses_without_locking(lockout: Lockout) -> None:
    users, user_id = _Users(), uuid.uuid4()
    token = Budget("mfa_token", f"tok-{uuid.uuid4().hex}", RateLimit(2, 60), locks=False)
    for _ in range(2):
        attempt: Attempt = await lockout.begin(user_id, extra=[token])
        assert await lockout.failed(users.conn, attempt) is None

    with pytest.raises(BudgetSpent) as spent:
        await lockout.begin(user_id, extra=[token])

    assert spent.value.budget == token
    assert users.locks == []
    await lockout.release(await lockout.begin(user_id))  # the account itself is not locked


async def test_an_attempt_left_undecided_is_taken_back(lockout: Lockout) -> None:
    user_id = uuid.uuid4()
    for _ in range(5):
        with pytest.raises(RuntimeError):
            async with lockout.attempt(user_id):
                raise RuntimeError("the request died before the password was checked")

    async with lockout.attempt(user_id) as attempt:  # not waiting on five ghosts
        await lockout.succeeded(attempt)


async def test_windows_are_kept_to_the_millisecond(redis_namespace: Any) -> None:
    """A 0.25 s lockout is 250 ms in Redis (PEXPIRE / PX), not rounded to whole seconds."""
    redis = Redis.from_url(redis_namespace.url, decode_responses=True)
    prefix = f"{redis_namespace.prefix}test-{uuid.uuid4().hex[:8]}:"
    lockout = Lockout(redis, prefix=prefix, limit=RateLimit(2, 0.25), mfa_limit=RateLimit(3, 60))
    users, user_id = _Users(), uuid.uuid4()
    try:
        async with lockout.attempt(user_id) as attempt:
            await lockout.failed(users.conn, attempt)
        assert 0 < await redis.pttl(lockout.key(str(user_id))) <= 250, "failures expire"
        async with lockout.attempt(user_id) as attempt:
            assert await lockout.failed(users.conn, attempt) is not None, "the 2nd failure locks"
        assert 0 < await redis.pttl(attempt.lock_key) <= 250
        assert users.locks == [(user_id, 0.25)], "users.locked_until: the same 0.25 s"
        with pytest.raises(Locked) as locked:
            async with lockout.attempt(user_id):
                pass
        assert locked.value.retry_after == 1, "Retry-After: whole seconds, at least 1"
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
