"""apex.agents' HTTP routes (JSON; errors ``{"error", "detail"}``).

- ``POST /v1/runs {agent | workflow, agent_version?, input, priority?, idempotency_key,
  cache?, run_at?}`` (``agents:run``): 202 ``{run_id, status: "queued"}`` and a job on the
  queue (at ``run_at``: scheduled); the same key again: 200 with the first run, nothing
  queued. A workflow is checked first (unknown agent or step, a cycle: 422, nothing
  stored); an agent's version is resolved (its latest unless named) with its tools (422
  ``incompatible``), and the user's permissions (the context token's ``perms``) are kept
  with the run for its tool calls. An input that cannot fit its agent's context window is
  422 ``context_too_large``; then ``run_at`` (422), then the tenant's limits (429
  ``token_budget_exceeded``, ``too_many_runs``; with APEX_PLAN_LIMITS on, the plan's:
  ``apex.agents.plan_limits``); nothing stored on a refusal. ``cache:
  false``: the run neither reads nor writes the response cache.
- ``GET /v1/runs/{id}`` (``agents:read``): the run; another tenant's run is 404.
- ``POST /v1/runs/{id}/cancel`` (``agents:run``): the run cancelled, its LLM call in flight
  stopped; a final run is answered as it is.
- ``GET /v1/runs/{id}/state[?version=n]`` (``agents:read``): a version of the run's state
  (default: the latest); ``POST /v1/runs/{id}/restore {version}`` (``agents:run``): the
  run set back to that version and queued again (an active run: 409 ``run_active``).
- ``GET /v1/runs/{id}/audit`` (``agents:read``): the run's audit events in order.
- ``GET /admin/config`` (admin token): the shared settings this instance runs with.
- ``GET /admin/costs`` (admin token): cost records waiting for apex.data, refused ones,
  delivery cycles and records sent by this process (``apex.agents.cost_records``).
- ``GET /admin/dependencies`` (admin token): each failing dependency's errors, warnings
  logged and suppressed (``apex.agents.dependencies``).
- ``POST /admin/config/reload`` (admin token): APEX_AGENTS_CONFIG read again (invalid:
  422 ``invalid_config``, the old config stays); ``POST /admin/shutdown {"mode":
  "emergency"}`` (admin token): the workers stop, their runs in flight ``interrupted``.
- ``GET /admin/queues`` (admin token): the job queue's depths, pending, scheduled, DLQ.
- ``GET /metrics`` (admin token): Prometheus text.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from apex.agents.context import ContextTooLarge, check_input
from apex.agents.definitions import DefinitionError
from apex.agents.graph import Workflow, WorkflowError, check
from apex.agents.jobs import parse_run_at
from apex.agents.limits import LimitExceeded, TenantLimits
from apex.agents.metrics import CONTENT_TYPE
from apex.agents.plan_limits import PlanLimits
from apex.agents.runs import FINAL, Run
from apex.agents.service import AgentService
from apex.agents.settings import SERVICE
from apex.agents.state import RestoreError
from apex.agents.tracing import current_traceparent
from apex.common.http import ApiError, bearer_token, require_admin_token, require_json_body
from apex.common.settings import ConfigError
from apex.common.shared_config import config_report
from apex.data.callers import Caller

__all__ = ["READ_RUNS", "RUN_AGENTS", "router"]

router = APIRouter()

RUN_AGENTS: Final = "agents:run"
READ_RUNS: Final = "agents:read"
MAX_INPUT_CHARS: Final = 100_000
MAX_STEPS: Final = 50


def service_of(request: Request) -> AgentService:
    """The running service (503 while it starts or stops)."""
    service = request.app.state.service
    if not isinstance(service, AgentService):
        raise ApiError(503, "unavailable", "the agents service is starting or stopping")
    return service


Service = Annotated[AgentService, Depends(service_of)]


async def caller_of(request: Request, service: Service) -> Caller:
    """The caller, from its context token (audience apex-agents)."""
    return await service.verifier.caller(bearer_token(request))


CallerDep = Annotated[Caller, Depends(caller_of)]


Name = Annotated[str, Field(min_length=1, max_length=100)]


class WhenIn(BaseModel):
    """A step's condition: the output of ``step`` equals ``equals``."""

    model_config = ConfigDict(extra="forbid")

    step: Name
    equals: Any


class StepIn(BaseModel):
    """One step of a workflow as a client declares it."""

    model_config = ConfigDict(extra="forbid")

    id: Name
    agent: Name
    input: Annotated[str, Field(min_length=1, max_length=MAX_INPUT_CHARS)] | None = None
    depends_on: Annotated[list[Name], Field(max_length=MAX_STEPS)] = []
    when: WhenIn | None = None


class WorkflowIn(BaseModel):
    """A workflow as a client declares it (checked further by apex.agents.graph)."""

    model_config = ConfigDict(extra="forbid")

    # No steps or an unknown rule is refused by apex.agents.graph.check with its own code,
    # `invalid_workflow` (notes-agents.md § Choices: Workflows), not as a malformed body.
    steps: Annotated[list[StepIn], Field(max_length=MAX_STEPS)]
    aggregate: Annotated[str, Field(max_length=50)] = "merge"


class RunIn(BaseModel):
    """A run as a client submits it: of one agent, or of a workflow."""

    model_config = ConfigDict(extra="forbid")

    agent: Name | None = None
    agent_version: Annotated[str, Field(min_length=1, max_length=50)] | None = None
    workflow: WorkflowIn | None = None
    input: Annotated[str, Field(min_length=1, max_length=MAX_INPUT_CHARS)]
    priority: Literal["high", "normal", "low"] = "normal"
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200)]
    cache: bool = True
    run_at: Annotated[str, Field(max_length=64)] | None = None


async def _workflow_of(body: RunIn, service: AgentService) -> tuple[Workflow | None, str | None]:
    """The run's checked workflow (None: a run of one agent) and the agent version the run
    is pinned to (a run of one agent); 422 for a bad one."""
    if (body.agent is None) == (body.workflow is None):
        raise ApiError(422, "invalid_request", "a run names either an agent or a workflow")
    agents = await service.definitions.agent_versions()
    if body.workflow is None:
        if body.agent not in agents:
            known = ", ".join(sorted(agents))
            raise ApiError(422, "unknown_agent", f"no agent {body.agent!r}; known: {known}")
        agent = await service.definitions.agent(body.agent, body.agent_version)
        if agent is None:
            versions = ", ".join(a.version for a in agents[body.agent])
            raise ApiError(
                422,
                "unknown_agent",
                f"agent {body.agent} has no version {body.agent_version}; versions: {versions}",
            )
        try:
            await service.definitions.tools_of(agent)
        except DefinitionError as exc:
            raise ApiError(exc.status, exc.code, exc.detail) from exc
        return None, agent.version
    if body.agent_version is not None:
        raise ApiError(422, "invalid_request", "agent_version is for a run of one agent")
    workflow = Workflow.of(body.workflow.model_dump())
    try:
        check(workflow, agents)
    except WorkflowError as exc:
        raise ApiError(422, exc.code, exc.detail) from exc
    return workflow, None


def _run_at_of(body: RunIn) -> datetime.datetime | None:
    """When a scheduled run is due (None: now); 422 ``invalid_run_at`` unless it is an
    RFC 3339 date-time in the future, at most 30 days ahead."""
    if body.run_at is None:
        return None
    try:
        return parse_run_at(body.run_at, datetime.datetime.now(datetime.UTC))
    except ValueError as exc:
        raise ApiError(422, "invalid_run_at", str(exc)) from exc


@router.post("/v1/runs", dependencies=[Depends(require_json_body)])
async def submit_run(body: RunIn, caller: CallerDep, service: Service) -> JSONResponse:
    """Queue a run of an agent or of a workflow (checked before anything is stored)."""
    caller.require(RUN_AGENTS)
    workflow, agent_version = await _workflow_of(body, service)
    await _check_context(service, body, workflow, agent_version)
    run_at = _run_at_of(body)
    settings = service.settings
    limits = TenantLimits(
        token_budget=settings.tenant_token_budget, max_queued=settings.tenant_max_queued
    )
    admit = limits.admit
    if settings.plan_limits:
        plan = PlanLimits(
            service.redis,
            settings.redis_prefix,
            window=settings.plan_rate_window,
            max_queued=settings.tenant_max_queued,
        )
        admit = plan.admit
    try:
        run, created = await service.store.submit(
            tenant_id=caller.tenant_id,
            user_id=caller.user_id,
            agent=body.agent,
            input_text=body.input,
            priority=body.priority,
            idempotency_key=body.idempotency_key,
            workflow=None if workflow is None else workflow.to_json(),
            agent_version=agent_version,
            permissions=caller.permissions,
            use_cache=body.cache,
            admit=admit,
        )
    except LimitExceeded as exc:
        raise ApiError(429, exc.code, exc.detail) from exc
    if created:
        await service.states.snapshot(run.id)
        await service.audit.record(run, "run.submitted", priority=run.priority)
    if created and run_at is not None:
        await service.queue.schedule(run.id, run.priority, run_at.timestamp())
    elif created:
        await service.queue.enqueue(run.id, run.priority, traceparent=current_traceparent())
        service.metrics.runs.labels("submitted").inc()
    return JSONResponse(
        {"run_id": str(run.id), "status": run.status}, status_code=202 if created else 200
    )


async def _check_context(
    service: AgentService, body: RunIn, workflow: Workflow | None, agent_version: str | None
) -> None:
    """422 ``context_too_large`` when the run's input (each step's own input) with its
    agent's system message cannot fit the agent's model (dependency outputs only add).
    The agent is the version the run will call: the pinned one of a run of one agent,
    each step's agent's latest."""
    versions = await service.definitions.agent_versions()
    asks: list[tuple[str | None, str, str]] = [(None, body.agent or "", body.input)]
    if workflow is not None:
        asks = [(s.id, s.agent, body.input if s.input is None else s.input) for s in workflow.steps]
    for step_id, agent_name, text in asks:
        known = versions[agent_name]
        pinned = [a for a in known if a.version == agent_version] if step_id is None else []
        agent = pinned[0] if pinned else known[-1]
        model = service.settings.models.get(agent.model)
        if model is None:
            continue  # no such model: the run fails unknown_agent at its worker
        try:
            check_input(
                agent.system, text, context_window=model.context_window, max_tokens=agent.max_tokens
            )
        except ContextTooLarge as exc:
            where = "" if step_id is None else f"step {step_id!r}: "
            raise ApiError(422, exc.reason, where + exc.detail) from exc


async def _run_of(run_id: str, caller: Caller, service: AgentService) -> Run:
    """The caller's tenant's run ``run_id``; 404 for any other (or a malformed id)."""
    try:
        key = uuid.UUID(run_id)
    except ValueError:
        key = None
    run = None if key is None else await service.store.get(key, caller.tenant_id)
    if run is None:
        raise ApiError(404, "not_found", "no such run")
    return run


@router.get("/v1/runs/{run_id}")
async def get_run(run_id: str, caller: CallerDep, service: Service) -> dict[str, Any]:
    """The run, if it is the caller's tenant's."""
    caller.require(READ_RUNS)
    return (await _run_of(run_id, caller, service)).view()


@router.post("/v1/runs/{run_id}/cancel")
async def cancel_run(run_id: str, caller: CallerDep, service: Service) -> dict[str, Any]:
    """Cancel the run: marked cancelled first, then every worker told to stop its work."""
    caller.require(RUN_AGENTS)
    run = await _run_of(run_id, caller, service)
    cancelled = await service.store.cancel(run.id, caller.tenant_id)
    if cancelled is None:  # pragma: no cover - runs are never deleted
        raise ApiError(404, "not_found", "no such run")
    if cancelled.status == "cancelled":
        await service.queue.cancel(run.id)
        if run.status not in FINAL:
            await service.states.snapshot(run.id)
            await service.audit.record(run, "run.cancelled")
    return cancelled.view()


@router.get("/v1/runs/{run_id}/state")
async def get_state(
    run_id: str,
    caller: CallerDep,
    service: Service,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    """A version of the run's state (default: the latest); 404 for an unknown version."""
    caller.require(READ_RUNS)
    run = await _run_of(run_id, caller, service)
    state = await service.states.get(run.id, caller.tenant_id, version)
    if state is None:
        raise ApiError(404, "not_found", f"the run has no state version {version}")
    return state.view()


class RestoreIn(BaseModel):
    """The version a run is set back to."""

    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, Field(ge=1, strict=True)]


@router.post("/v1/runs/{run_id}/restore", dependencies=[Depends(require_json_body)])
async def restore_run(
    run_id: str, body: RestoreIn, caller: CallerDep, service: Service
) -> JSONResponse:
    """Set the run back to a state version and queue it again: the steps that had
    succeeded in it are reused, the others run again."""
    caller.require(RUN_AGENTS)
    run = await _run_of(run_id, caller, service)
    try:
        priority = await service.states.restore(run.id, caller.tenant_id, body.version)
    except RestoreError as exc:
        raise ApiError(exc.status, exc.code, exc.detail) from exc
    version = await service.states.snapshot(run.id)
    await service.audit.record(run, "run.restored", version=body.version)
    await service.queue.enqueue(run.id, priority)
    return JSONResponse(
        {
            "run_id": str(run.id),
            "status": "queued",
            "restored_from": body.version,
            "version": version,
        },
        status_code=202,
    )


@router.get("/v1/runs/{run_id}/audit")
async def get_audit(run_id: str, caller: CallerDep, service: Service) -> dict[str, Any]:
    """The run's audit events in the order they were recorded."""
    caller.require(READ_RUNS)
    run = await _run_of(run_id, caller, service)
    return {"run_id": str(run.id), "events": await service.audit.events(run.id, run.tenant_id)}


def require_admin(request: Request, service: Service) -> None:
    """The admin routes (and /metrics) answer the platform's admin token only."""
    require_admin_token(request, service.settings.admin_token)


@router.get("/admin/config", dependencies=[Depends(require_admin)])
async def config(service: Service) -> dict[str, Any]:
    """The shared settings this instance runs with (003: cross-service consistency)."""
    return config_report(SERVICE, service.settings)


@router.get("/admin/costs", dependencies=[Depends(require_admin)])
async def cost_delivery(service: Service) -> dict[str, Any]:
    """``{waiting, dead, cycles, delivered}``; 404 when costs are not sent to apex.data."""
    if service.costs is None:
        raise ApiError(404, "not_found", "costs are not sent: APEX_DATA_URL or APEX_USAGE_TOKEN")
    return await service.costs.status()


@router.get("/admin/dependencies", dependencies=[Depends(require_admin)])
async def dependencies(service: Service) -> dict[str, Any]:
    """Each dependency that failed: state, errors, warnings logged and suppressed."""
    snapshot = {} if service.dependencies is None else service.dependencies.snapshot()
    return {"dependencies": snapshot}


@router.get("/metrics", dependencies=[Depends(require_admin)])
async def metrics(service: Service) -> Response:
    """The Prometheus text exposition of the service's metrics."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)


@router.post("/admin/config/reload", dependencies=[Depends(require_admin)])
async def reload_config(service: Service) -> dict[str, Any]:
    """Read APEX_AGENTS_CONFIG again: runs that start from now on use it, runs in flight
    keep theirs; an invalid file is 422 and the old config stays."""
    if service.config.path is None:
        raise ApiError(409, "not_configured", "APEX_AGENTS_CONFIG is unset: nothing to reload")
    try:
        fresh = service.config.reload()
    except ConfigError as exc:
        raise ApiError(422, "invalid_config", str(exc)) from exc
    return fresh.view()


class ShutdownIn(BaseModel):
    """How to shut down (``emergency``: the only mode)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["emergency"]


@router.post("/admin/shutdown", dependencies=[Depends(require_admin), Depends(require_json_body)])
async def shutdown(body: ShutdownIn, service: Service) -> dict[str, Any]:
    """Emergency shutdown: the workers take no more jobs; each run in flight is persisted
    as ``interrupted`` with its state and queued again for the next worker."""
    interrupted = await service.workers.stop()
    return {"mode": body.mode, "interrupted": [str(run_id) for run_id in interrupted]}


@router.get("/admin/queues", dependencies=[Depends(require_admin)])
async def queues(service: Service) -> dict[str, Any]:
    """The job queue: per priority the jobs waiting and pending (delivered, not
    acknowledged), the jobs scheduled for later, the dead letters (count, newest)."""
    return await service.queue.report()
