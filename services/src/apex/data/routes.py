"""The data service's HTTP routes: usage records (tenant routes, context tokens) and the
operators' routes (admin token).

- ``POST /v1/usage``: one record (201; 200 with the first record for a known
  idempotency key), header ``X-Apex-LSN``.
- ``POST /v1/usage/batch``: many records through COPY (201 ``{"inserted": n}``).
  Both write routes also take the usage writers' service credential
  (``APEX_USAGE_TOKEN``, apex.agents'), naming the tenant in ``X-Apex-Tenant``.
- ``GET /v1/usage/summary``: totals per kind, through the cache (``apex.data.summaries``),
  else from the replica when it may serve (``X-Apex-Min-LSN``: read-your-writes), else
  the primary. The write routes invalidate the tenant's cached summaries.
- ``POST /v1/credits/transfer``: move credit to another tenant (409
  ``insufficient_credit``, or ``conflict_retry_exhausted`` after deadlocks).
- ``GET /admin/pools``: each pool's counts, the replica's state and lag.
- ``GET /admin/isolation``: the role the pools run as and what it sees without a tenant.
- ``POST /admin/tenants/purge``: delete what tenants wrote (an L4 run's, at its end).
- ``GET /admin/plans?tenant_id=``: ``EXPLAIN (FORMAT JSON)`` of the summary and the
  idempotency lookup.
- ``GET /admin/config``: the shared settings this instance resolved (secrets as
  fingerprints), ``apex.common.shared_config``.
- ``GET /metrics``: Prometheus text.
"""

from __future__ import annotations

import datetime
import hmac
import re
import uuid
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from apex.common.http import ApiError, bearer_token, require_admin_token, require_json_body
from apex.common.shared_config import config_report
from apex.data import purge, summaries, transfer, usage
from apex.data.cache import Cache
from apex.data.callers import BILLING_READ, BILLING_WRITE, RUN_AGENTS, Caller
from apex.data.metrics import CONTENT_TYPE
from apex.data.router import parse_lsn
from apex.data.service import DataService
from apex.data.settings import SERVICE

__all__ = ["MAX_BATCH", "router"]

router = APIRouter()

# Records in one batch request (a bigger load is several requests).
MAX_BATCH: Final = 10_000
_KIND = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
_BIGINT_MAX: Final = 2**63 - 1
_EARLIEST: Final = datetime.datetime(1, 1, 1, tzinfo=datetime.UTC)
_LATEST: Final = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
LSN_HEADER: Final = "X-Apex-LSN"
# The tenant a usage writer's service credential writes for.
TENANT_HEADER: Final = "X-Apex-Tenant"
# The caller's user id of a write with the service credential (the record names its user).
USAGE_WRITER: Final = "service:usage-writer"
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_LABELS: Final = 16
MAX_LABEL_VALUE: Final = 200


def service_of(request: Request) -> DataService:
    """The running service (503 while it starts or stops)."""
    service = request.app.state.service
    if not isinstance(service, DataService):
        raise ApiError(503, "unavailable", "the data service is starting or stopping")
    return service


Service = Annotated[DataService, Depends(service_of)]


async def caller_of(request: Request, service: Service) -> Caller:
    """The caller of a tenant route, from its context token."""
    return await service.verifier.caller(bearer_token(request))


CallerDep = Annotated[Caller, Depends(caller_of)]


async def usage_writer_of(
    request: Request,
    service: Service,
    tenant: Annotated[str | None, Header(alias=TENANT_HEADER)] = None,
) -> Caller:
    """The caller of a usage write: a context token, or the usage writers' service
    credential (APEX_USAGE_TOKEN: apex.agents, writing for the tenant it names in
    ``X-Apex-Tenant``; it may write usage and nothing else)."""
    token = bearer_token(request)
    expected = service.settings.usage_token
    if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
        return await service.verifier.caller(token)
    try:
        tenant_id = uuid.UUID(tenant or "")
    except ValueError:
        raise ApiError(
            403, "no_tenant", f"the service credential needs the tenant's id in {TENANT_HEADER}"
        ) from None
    return Caller(tenant_id, USAGE_WRITER, frozenset({RUN_AGENTS}))


UsageWriterDep = Annotated[Caller, Depends(usage_writer_of)]


def _aware(value: datetime.datetime) -> datetime.datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a time zone (e.g. 2026-01-01T00:00:00Z)")
    try:
        # Stored as UTC: 0001-01-01T00:00+14:00 is before year 1 there.
        value.astimezone(datetime.UTC)
    except OverflowError:
        raise ValueError("must be within years 1-9999 in UTC") from None
    return value


def _text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (U+0000): PostgreSQL text cannot hold it")
    return value


def _kind(value: str) -> str:
    if not _KIND.fullmatch(value):
        raise ValueError("1-64 of a-z 0-9 _ . : - starting with a letter or digit")
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    for key, text in value.items():
        if not _LABEL_KEY.fullmatch(key):
            raise ValueError(f"label {key!r}: keys are 1-64 of a-z 0-9 _, starting with a-z")
        if len(text) > MAX_LABEL_VALUE or "\x00" in text:
            raise ValueError(f"label {key!r}: at most {MAX_LABEL_VALUE} characters, no NUL")
    return value


class UsageIn(BaseModel):
    """A usage record as a client sends it."""

    model_config = ConfigDict(extra="forbid", strict=False)

    user_id: uuid.UUID
    kind: Annotated[str, AfterValidator(_kind)]
    quantity: Annotated[int, Field(ge=0, le=_BIGINT_MAX, strict=True)]
    cost_micros: Annotated[int, Field(ge=0, le=_BIGINT_MAX, strict=True)]
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_text)]
    occurred_at: Annotated[datetime.datetime, AfterValidator(_aware)] | None = None
    labels: Annotated[dict[str, Annotated[str, Field(strict=True)]], AfterValidator(_labels)] = {}

    def new_record(self) -> usage.NewRecord:
        return usage.NewRecord(
            self.user_id,
            self.kind,
            self.quantity,
            self.cost_micros,
            self.idempotency_key,
            self.occurred_at,
            self.labels,
        )


class BatchIn(BaseModel):
    """Many usage records."""

    model_config = ConfigDict(extra="forbid")

    records: Annotated[list[UsageIn], Field(min_length=1, max_length=MAX_BATCH)]


@router.post("/v1/usage", dependencies=[Depends(require_json_body)])
async def record_usage(
    body: UsageIn, caller: UsageWriterDep, service: Service, request: Request
) -> JSONResponse:
    """Store one record (and its outbox row) for the caller's tenant."""
    caller.require(RUN_AGENTS)
    record = body.new_record()

    async def work() -> tuple[dict[str, Any], bool, str]:
        async with service.router.primary.connection() as conn:
            stored, created = await usage.insert_record(conn, caller.tenant_id, record)
            return stored, created, await usage.current_lsn(conn)

    stored, created, lsn = await service.run(work)
    if created:
        await _invalidate(request, caller.tenant_id)
    return JSONResponse(stored, status_code=201 if created else 200, headers={LSN_HEADER: lsn})


@router.post("/v1/usage/batch", dependencies=[Depends(require_json_body)])
async def record_batch(
    body: BatchIn, caller: UsageWriterDep, service: Service, request: Request
) -> JSONResponse:
    """Store many records for the caller's tenant in one transaction."""
    caller.require(RUN_AGENTS)
    records = [r.new_record() for r in body.records]

    async def work() -> tuple[int, str]:
        async with service.router.primary.connection() as conn:
            inserted = await usage.insert_batch(conn, caller.tenant_id, records)
            return inserted, await usage.current_lsn(conn)

    inserted, lsn = await service.run(work)
    if inserted:
        await _invalidate(request, caller.tenant_id)
    return JSONResponse({"inserted": inserted}, status_code=201, headers={LSN_HEADER: lsn})


@router.get("/v1/usage/summary")
async def usage_summary(
    caller: CallerDep,
    service: Service,
    request: Request,
    since: Annotated[datetime.datetime | None, Query()] = None,
    until: Annotated[datetime.datetime | None, Query()] = None,
    min_lsn: Annotated[str | None, Header(alias="X-Apex-Min-LSN")] = None,
    cache_control: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Totals per kind of the caller's tenant, through the cache (``Cache-Control:
    no-cache``: from the database); ``source`` says who answered."""
    caller.require(BILLING_READ)
    start, end = _window(since, until)
    lsn = _min_lsn(min_lsn)
    return await summaries.read_summary(
        service,
        _cache_of(request),
        caller.tenant_id,
        start,
        end,
        min_lsn=lsn,
        use_cache=not _no_cache(cache_control),
    )


def _cache_of(request: Request) -> Cache | None:
    """The running flow's cache (None before the flow is installed, or while it stops)."""
    flow = getattr(request.app.state, "flow", None)
    cache = getattr(flow, "cache", None)
    return cache if isinstance(cache, Cache) else None


def _no_cache(value: str | None) -> bool:
    """Whether a Cache-Control header asks for the origin's answer (RFC 9111 no-cache)."""
    directives = (part.strip().split("=")[0].lower() for part in (value or "").split(","))
    return "no-cache" in directives or "no-store" in directives


async def _invalidate(request: Request, tenant_id: uuid.UUID) -> None:
    """Bump ``tenant_id``'s cache generation after a commit that changed its records
    (best effort: the relay bumps it again, durably, once it copies the outbox row)."""
    cache = _cache_of(request)
    if cache is not None:
        await cache.invalidate(str(tenant_id))


class TransferIn(BaseModel):
    """A credit transfer from the caller's tenant."""

    model_config = ConfigDict(extra="forbid")

    to_tenant: uuid.UUID
    amount_micros: Annotated[int, Field(gt=0, le=_BIGINT_MAX, strict=True)]
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_text)]


@router.post("/v1/credits/transfer", dependencies=[Depends(require_json_body)])
async def credit_transfer(
    body: TransferIn, caller: CallerDep, service: Service, request: Request
) -> JSONResponse:
    """Move credit from the caller's tenant to ``to_tenant``."""
    caller.require(BILLING_WRITE)
    if body.to_tenant == caller.tenant_id:
        raise ApiError(422, "invalid_request", "to_tenant: must be another tenant")

    async def work() -> tuple[dict[str, Any], bool]:
        async with service.router.primary.connection() as conn:
            return await transfer.transfer(
                conn, caller.tenant_id, body.to_tenant, body.amount_micros, body.idempotency_key
            )

    try:
        moved, created = await service.run(work)
    except transfer.InsufficientCredit as exc:
        raise ApiError(409, "insufficient_credit", str(exc)) from None
    # -- data-flow: both tenants' cached balances are invalidated at once (the relay
    # does it again once the transfer's outbox row is copied: a Redis fault is caught up).
    flow = getattr(request.app.state, "flow", None)
    if created and flow is not None:
        await flow.invalidate(caller.tenant_id, body.to_tenant)
    return JSONResponse(moved, status_code=201 if created else 200)


def _window(
    since: datetime.datetime | None, until: datetime.datetime | None
) -> tuple[datetime.datetime, datetime.datetime]:
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            try:
                _aware(value)
            except ValueError as exc:
                raise ApiError(422, "invalid_request", f"{name}: {exc}") from None
    start, end = since or _EARLIEST, until or _LATEST
    if start > end:
        raise ApiError(422, "invalid_request", "since: must not be after until")
    return start, end


def _min_lsn(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_lsn(value.strip())
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"X-Apex-Min-LSN: {exc}") from None


def require_admin(request: Request, service: Service) -> None:
    """The admin routes answer the platform's admin token only."""
    require_admin_token(request, service.settings.admin_token)


Admin = Depends(require_admin)


@router.get("/admin/pools", dependencies=[Admin])
async def pools(service: Service) -> dict[str, Any]:
    """Each pool's size, connections in use, idle and requests waiting; the role their
    connections run as; the replica's state and last measured lag."""
    primary = service.router.primary
    replica = service.router.replica
    return {
        "pools": {
            "primary": primary.stats().to_json(),
            "replica": replica.stats().to_json() if replica is not None else None,
        },
        "replica": {
            "state": service.router.state,
            "lag_bytes": service.router.lag_bytes,
            "error": service.router.error,
        },
    }


@router.get("/admin/isolation", dependencies=[Admin])
async def isolation(service: Service) -> dict[str, Any]:
    """The row-level security self-check (002#10): the role the service's connections run
    as, and how many usage records a query outside any tenant transaction sees (what a
    code path that forgot the tenant context would see): 0 unless isolation is broken."""

    async def check() -> dict[str, Any]:
        async with service.router.primary.connection() as conn:
            row = await conn.fetchrow("SELECT current_user, (SELECT count(*) FROM usage_records)")
        return {"role": row[0], "usage_records_visible": row[1]}

    return await service.run(check)


class PurgeIn(BaseModel):
    """The tenants whose rows to delete."""

    model_config = ConfigDict(extra="forbid")

    tenant_ids: Annotated[list[uuid.UUID], Field(min_length=1, max_length=MAX_BATCH)]


@router.post("/admin/tenants/purge", dependencies=[Admin])
async def purge_tenants(body: PurgeIn, service: Service, request: Request) -> dict[str, Any]:
    """Delete what these tenants wrote (``apex.data.purge``): their usage records, the
    outbox rows carrying them, their transfers and balances; counts per table."""
    tenants = list(dict.fromkeys(body.tenant_ids))

    async def work() -> purge.Purged:
        async with service.router.primary.connection() as conn:
            return await purge.purge_tenants(conn, tenants)

    purged = await service.run(work)
    for tenant in tenants:
        await _invalidate(request, tenant)
    return {**purged.as_dict(), "tenants": len(tenants)}


@router.get("/admin/plans", dependencies=[Admin])
async def plans(
    service: Service,
    tenant_id: Annotated[uuid.UUID, Query()],
    since: Annotated[datetime.datetime | None, Query()] = None,
    until: Annotated[datetime.datetime | None, Query()] = None,
) -> dict[str, Any]:
    """The plans of the queries that must use an index (001#78), as the tenant runs them."""
    start, end = _window(since, until)

    async def work() -> dict[str, Any]:
        async with service.router.primary.connection() as conn:
            return await usage.plans(conn, tenant_id, start, end)

    return await service.run(work)


@router.get("/admin/config", dependencies=[Admin])
async def config(service: Service) -> dict[str, Any]:
    """The shared settings this instance runs with (003: cross-service consistency)."""
    return config_report(SERVICE, service.settings)


@router.get("/metrics", dependencies=[Admin])
async def metrics(service: Service) -> Response:
    """The Prometheus text exposition of the service's metrics."""
    service.router.primary.stats()
    if service.router.replica is not None:
        service.router.replica.stats()
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)
