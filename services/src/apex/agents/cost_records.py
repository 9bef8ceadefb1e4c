"""Each answered LLM call's cost, on its way to apex.data (contract-agents.md § Who is asking).

Stage 6 of :class:`apex.agents.calls.AgentCaller` appends a :class:`CostRecord` to the
Redis stream ``<prefix>agents:costs`` (:class:`CostLedger`): a run never waits for
apex.data, so apex.data down or hanging fails no run (001#89, 001#91). A
:class:`CostDelivery` task in every process of the service sends the stream's records,
oldest first, to apex.data (kind ``llm``, quantity the call's tokens, idempotency key
``<run_id>:<step>:<call>``, labels ``{agent, model, provider, run_id}``) with the usage
writers' service credential (``APEX_USAGE_TOKEN``, the run's tenant in
``X-Apex-Tenant``; notes-agents.md says why): the records of a cycle, one tenant's at a
time, in one ``POST /v1/usage/batch`` (one transaction in apex.data: all stored, or
none). It deletes records from the stream only once apex.data answered 201 (``inserted``
counts the new ones; the others were stored before). So a record is never lost (it
stays until apex.data has it) and never doubled (a record sent twice, by two processes
or after a crash between the answer and the delete, is one row in apex.data by its
idempotency key). A batch apex.data refuses (422: a record in it is malformed) is sent
again record by record through ``POST /v1/usage``, so the good ones are stored and the
malformed one, which cannot succeed later, moves to ``<prefix>agents:costs:dead`` with
the reason.

A delivery cycle sends at most ``APEX_COST_BATCH`` records and stops at the first
failure; after a failing cycle the next one starts ``APEX_COST_INTERVAL`` seconds later,
after a full one at once, after the rest on a new record or the interval. So once
apex.data answers again, a backlog of N records is gone within ceil(N / APEX_COST_BATCH)
cycles (plus the one that was failing when it came back: 001#93).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Mapping
from typing import Any, Final

import httpx
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from apex.agents.dependencies import DependencyErrors
from apex.common.tasks import stop_tasks, wait_event
from apex.common.tls import client_tls_context

__all__ = ["KIND", "CostDelivery", "CostLedger", "CostRecord"]

log = logging.getLogger(__name__)

# The usage kind of an LLM call's cost in apex.data.
KIND: Final = "llm"
# The header naming the tenant a usage write with the service credential is for.
TENANT_HEADER: Final = "X-Apex-Tenant"
DATA: Final = "data"
REDIS: Final = "redis"
# How long stop() waits for the task to end (cancelling it again meanwhile).
_STOP_TIMEOUT: Final = 5.0
_FIELDS: Final = (
    "tenant_id", "user_id", "run_id", "step", "call", "agent", "model", "provider",
    "prompt_tokens", "completion_tokens", "cost_micros", "occurred_at",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CostRecord:
    """One answered LLM call of a run's step: who pays, what it used, what it cost."""

    tenant_id: str
    user_id: str
    run_id: str
    step: str
    call: int
    agent: str
    model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    occurred_at: str

    @classmethod
    def now(cls, **fields: Any) -> CostRecord:
        """A record of a call answered now (``occurred_at``: the answer's time, UTC)."""
        moment = datetime.datetime.now(datetime.UTC).isoformat()
        return cls(**fields, occurred_at=moment)

    @property
    def idempotency_key(self) -> str:
        """``<run_id>:<step>:<call>``: the same call recorded twice is one record."""
        return f"{self.run_id}:{self.step}:{self.call}"

    def fields(self) -> dict[str, str]:
        """The record as a stream entry's fields."""
        return {name: str(getattr(self, name)) for name in _FIELDS}

    @classmethod
    def of(cls, fields: Mapping[str, str]) -> CostRecord:
        """The record a stream entry holds; ValueError (or KeyError) when malformed."""
        return cls(
            tenant_id=fields["tenant_id"],
            user_id=fields["user_id"],
            run_id=fields["run_id"],
            step=fields["step"],
            call=int(fields["call"]),
            agent=fields["agent"],
            model=fields["model"],
            provider=fields["provider"],
            prompt_tokens=int(fields["prompt_tokens"]),
            completion_tokens=int(fields["completion_tokens"]),
            cost_micros=int(fields["cost_micros"]),
            occurred_at=fields["occurred_at"],
        )

    def usage_body(self) -> dict[str, Any]:
        """The body of apex.data's ``POST /v1/usage`` for this record."""
        return {
            "user_id": self.user_id,
            "kind": KIND,
            "quantity": self.prompt_tokens + self.completion_tokens,
            "cost_micros": self.cost_micros,
            "idempotency_key": self.idempotency_key,
            "occurred_at": self.occurred_at,
            "labels": {
                "agent": self.agent,
                "model": self.model,
                "provider": self.provider,
                "run_id": self.run_id,
            },
        }


class CostLedger:
    """The stream of cost records waiting for apex.data (``<prefix>agents:costs``)."""

    def __init__(self, redis: Redis, prefix: str, registry: CollectorRegistry) -> None:
        self.redis = redis
        self.stream = f"{prefix}agents:costs"
        self.dead = f"{prefix}agents:costs:dead"
        self.appended = asyncio.Event()
        self.records = Counter(
            "apex_agents_cost_records",
            "Cost records by outcome (queued, delivered, duplicate: apex.data had it, dead)",
            ["outcome"],
            registry=registry,
        )

    async def append(self, record: CostRecord) -> None:
        """Queue ``record`` for apex.data (a Redis error propagates: the step's job is
        not acknowledged, so it runs again)."""
        await self.redis.xadd(self.stream, record.fields())  # type: ignore[arg-type]
        self.records.labels("queued").inc()
        self.appended.set()

    async def backlog(self) -> dict[str, int]:
        """``{waiting, dead}``: records not yet in apex.data, and refused ones."""
        waiting, dead = await asyncio.gather(
            self.redis.xlen(self.stream), self.redis.xlen(self.dead)
        )
        return {"waiting": int(waiting), "dead": int(dead)}


class CostDelivery:
    """The task sending the ledger's records to apex.data (see the module's docstring)."""

    def __init__(
        self,
        ledger: CostLedger,
        errors: DependencyErrors,
        *,
        data_url: str,
        token: str,
        batch: int,
        interval: float,
        timeout: float,
    ) -> None:
        self._ledger = ledger
        self._errors = errors
        self._token = token
        self._batch = batch
        self._interval = interval
        self._http = httpx.AsyncClient(
            base_url=data_url, timeout=timeout, verify=client_tls_context()
        )
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Cycles that sent at least one record (what 001#93 counts), and records sent.
        self.cycles = 0
        self.delivered = 0

    def start(self) -> None:
        """Start the delivery task."""
        self._task = asyncio.create_task(self._run(), name="agents-cost-delivery")

    async def stop(self) -> None:
        """Stop the task (the records not sent stay in the stream) and close the client."""
        # The flag first: a cancellation a library swallows (apex.common.tasks) ends the
        # loop at its next check; stop_tasks cancels again only if it is still running.
        self._stopping = True
        task = self._task
        if await stop_tasks([task], _STOP_TIMEOUT):
            log.error("cost delivery did not stop within %s s", _STOP_TIMEOUT)
        elif task is not None and not task.cancelled() and task.exception() is not None:
            log.warning("cost delivery ended with %r", task.exception())
        await self._http.aclose()

    async def status(self) -> dict[str, Any]:
        """What ``GET /admin/costs`` answers."""
        return {**await self._ledger.backlog(), "cycles": self.cycles, "delivered": self.delivered}

    async def _run(self) -> None:
        while True:
            try:
                sent, more = await self.cycle()
            except (RedisError, OSError) as exc:
                self._errors.failed(REDIS, f"{type(exc).__name__}: {exc}")
                sent, more = None, False
            if self._stopping:
                # stop() came during the cycle, and its cancellation was swallowed (the
                # Redis client finished the command it was cancelled in): no idle wait.
                # The waits below end with a cancellation (wait_event never swallows it).
                return
            if more:
                continue
            if sent is None:
                # apex.data (or Redis) failing: new records must not hurry the next try.
                await asyncio.sleep(self._interval)
                continue
            await wait_event(self._ledger.appended, self._interval)
            self._ledger.appended.clear()

    async def cycle(self) -> tuple[int | None, bool]:
        """Send up to APEX_COST_BATCH records, oldest first, until one fails: (records
        sent, or None when one failed; whether a full batch went out)."""
        ledger = self._ledger
        # decode_responses: ids and fields are str.
        entries: list[tuple[str, dict[str, str]]] = await ledger.redis.xrange(  # type: ignore[assignment]
            ledger.stream, count=self._batch
        )
        if not entries:
            return 0, False
        self.cycles += 1
        sent = 0
        for tenant, group in _by_tenant(entries).items():
            done = await self._send_tenant(tenant, group)
            if done is None:
                return None, False
            sent += done
        return sent, len(entries) == self._batch

    async def _send_tenant(
        self, tenant: str, entries: list[tuple[str, dict[str, str]]]
    ) -> int | None:
        """Deliver one tenant's entries of a cycle: the well-formed ones in one batch
        (record by record if apex.data refuses the batch), the malformed ones to the dead
        stream. The entries handled, or None when apex.data failed (what is left stays)."""
        ledger = self._ledger
        records: list[tuple[str, dict[str, str], CostRecord]] = []
        for entry_id, fields in entries:
            try:
                records.append((entry_id, fields, CostRecord.of(fields)))
            except (KeyError, ValueError, TypeError) as exc:
                why = f"malformed entry: {type(exc).__name__}: {exc}"
                await self._settle(entry_id, fields, "dead", why)
        if not records:
            return len(entries)
        outcome = await self._post_batch(tenant, [record for _, _, record in records])
        if outcome is None:
            return None
        if isinstance(outcome, int):
            await ledger.redis.xdel(ledger.stream, *(entry_id for entry_id, _, _ in records))
            ledger.records.labels("delivered").inc(outcome)
            ledger.records.labels("duplicate").inc(len(records) - outcome)
            self.delivered += len(records)
            return len(entries)
        # Refused whole (422): one by one, so that only the malformed record is dead.
        for entry_id, fields, record in records:
            result, reason = await self._send(record)
            if result is None:
                return None
            await self._settle(entry_id, fields, result, reason)
        return len(entries)

    async def _settle(self, entry_id: str, fields: dict[str, str], outcome: str, why: str) -> None:
        """Take one entry off the stream after its ``outcome`` (to the dead stream first
        when ``dead``), and count it."""
        ledger = self._ledger
        if outcome == "dead":
            dead = {**fields, "reason": why}
            await ledger.redis.xadd(ledger.dead, dead)  # type: ignore[arg-type]
        await ledger.redis.xdel(ledger.stream, entry_id)
        ledger.records.labels(outcome).inc()
        self.delivered += 1

    async def _post_batch(self, tenant: str, records: list[CostRecord]) -> int | str | None:
        """POST one tenant's records as a batch: how many apex.data stored anew (201),
        ``"refused"`` (422: some record is malformed), or None (apex.data failing)."""
        body = {"records": [record.usage_body() for record in records]}
        response = await self._post("/v1/usage/batch", tenant, body)
        if response is None:
            return None
        if response.status_code == 201:
            self._errors.recovered(DATA)
            return int(response.json()["inserted"])
        if response.status_code == 422:
            return "refused"
        self._errors.failed(DATA, f"HTTP {response.status_code}")
        return None

    async def _post(self, path: str, tenant: str, body: dict[str, Any]) -> httpx.Response | None:
        """POST ``body`` to apex.data for ``tenant``; None (counted) when it cannot be reached."""
        try:
            return await self._http.post(
                path,
                json=body,
                headers={"Authorization": f"Bearer {self._token}", TENANT_HEADER: tenant},
            )
        except httpx.HTTPError as exc:
            self._errors.failed(DATA, type(exc).__name__)
            return None

    async def _send(self, record: CostRecord) -> tuple[str | None, str]:
        """POST one record: (``delivered``, 201), (``duplicate``, 200: stored before),
        (``dead``, why: a 422), (None, why: apex.data failing, try again later)."""
        response = await self._post("/v1/usage", record.tenant_id, record.usage_body())
        if response is None:
            return None, "unreachable"
        status = response.status_code
        if status in (200, 201):
            self._errors.recovered(DATA)
            return ("delivered" if status == 201 else "duplicate"), f"HTTP {status}"
        if status == 422:
            reason = f"HTTP 422: {response.text[:500]}"
            log.warning("cost record %s refused: %s", record.idempotency_key, reason)
            return "dead", reason
        # 401/403 (the credential: an operator's fix), 429, 5xx: the record waits.
        self._errors.failed(DATA, f"HTTP {status}")
        return None, f"HTTP {status}"


def _by_tenant(
    entries: list[tuple[str, dict[str, str]]],
) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """The entries by the tenant they name (``""`` for none: malformed), each tenant's in
    stream order, tenants in the order of their oldest entry."""
    groups: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for entry_id, fields in entries:
        groups.setdefault(fields.get("tenant_id", ""), []).append((entry_id, fields))
    return groups
