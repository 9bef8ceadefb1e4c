"""Workers: tasks that take jobs from the queue and run them to a final state.

:class:`WorkerPool` runs ``APEX_AGENTS_WORKERS`` consumer tasks (in the API process's
lifespan, or alone with ``python -m apex.agents worker``) and one listener of the cancel
channel. A job's work runs in a task of its own, registered under the run's id before it
starts, so a cancel (published after the run is marked ``cancelled`` in PostgreSQL)
either finds the task and cancels it (closing the provider's connection) or comes before
it, and the task then finds the run final and does nothing. A job is acknowledged only
once its run is final: a worker that dies mid-job leaves it pending, and another worker
claims it after ``APEX_JOB_CLAIM_IDLE`` seconds. A run of a workflow is handed to
:class:`apex.agents.supervisor.Supervisor`, one LLM call per step.

A run captures the config current when a worker starts it (``apex.agents.config``) and
keeps it to its end. Its state is persisted as a new version after every change of a step
record and at its end (``apex.agents.state``), and its end is in its audit trail. Stopping
the pool (SIGTERM, ``POST /admin/shutdown``) is an emergency shutdown: the consumers take
no more jobs, each run in flight here is cancelled and marked ``interrupted`` with its
state, and its job queued again, so a worker (after a restart) resumes it from its last
state: the steps that succeeded are not called again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any, Final

import asyncpg
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis
from redis.exceptions import RedisError

from apex.agents.audit import AuditLog
from apex.agents.calls import MAIN_STEP, AgentCaller, CallContext
from apex.agents.config import AgentConfig, ConfigHolder
from apex.agents.graph import Workflow
from apex.agents.jobs import Job, JobQueue
from apex.agents.llm import LlmError
from apex.agents.metrics import Metrics
from apex.agents.quality import QualityRejected
from apex.agents.retries import NotStarted, Retries
from apex.agents.runs import Run, RunStore, Usage
from apex.agents.settings import AgentSettings
from apex.agents.state import StateStore, step_record, usage_of
from apex.agents.supervisor import Supervisor
from apex.agents.tracing import Tracing
from apex.common.tasks import stop_tasks

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)
# How long a consumer blocks on an empty queue before it looks for abandoned jobs again.
_BLOCK_SECONDS: Final = 1.0
# After a Redis or PostgreSQL error, a consumer waits this long before it tries again.
_ERROR_PAUSE: Final = 0.5


class WorkerPool:
    """Consumer tasks of the job queue, and the cancel listener."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        store: RunStore,
        queue: JobQueue,
        caller: AgentCaller,
        redis: Redis,
        metrics: Metrics,
        states: StateStore,
        audit: AuditLog,
        config: ConfigHolder,
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._states = states
        self._audit = audit
        self._config = config
        self._jobs: dict[uuid.UUID, Job] = {}
        self._tracing = tracing if tracing is not None else Tracing(None)
        self._store = store
        self._queue = queue
        self._caller = caller
        self._redis = redis
        self._metrics = metrics
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._inflight: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._retries = Retries(settings, store=store, queue=queue, metrics=metrics)

    async def start(self, count: int) -> None:
        """Start ``count`` consumers (and the cancel listener when count > 0)."""
        if count == 0:
            return
        await self._queue.ensure_groups()
        self._tasks.append(asyncio.create_task(self._listen(), name="agents-cancel-listener"))
        for index in range(count):
            consumer = f"{self._name}-{index}"
            self._tasks.append(asyncio.create_task(self._consume(consumer), name=consumer))

    async def stop(self) -> list[uuid.UUID]:
        """Stop every consumer and the work in flight: each run in flight is marked
        ``interrupted`` with its state and its job queued again (its old delivery
        acknowledged); the runs interrupted. A second call does nothing."""
        self._stopping = True
        held = dict(self._jobs)
        tasks = {*self._tasks, *self._inflight.values()}
        # Cancelled again until done, every 50 ms (`stop_tasks`): on Python 3.11 a
        # cancellation can be lost (redis-py sends each command under `asyncio.wait_for`:
        # a consumer whose cancel lands as a command is sent carries on into its blocking
        # XREADGROUP; about one stop in fifteen waited 0.5 s for the next cancel), or come
        # out as a TimeoutError (an OSError) the loops survive; the flag ends them on
        # their next turn.
        while tasks:
            tasks = await stop_tasks(tasks, _ERROR_PAUSE)
        self._tasks.clear()
        self._inflight.clear()
        self._jobs.clear()
        return [run_id for run_id, job in held.items() if await self._interrupt(run_id, job)]

    async def _interrupt(self, run_id: uuid.UUID, job: Job) -> bool:
        """Persist the job's run as interrupted and queue it again; False when it was not
        running (then its job stays pending: whoever claims it finds it final or runs it)."""
        errors = (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
        try:
            if not await self._store.interrupt(run_id):
                return False
        except errors as exc:
            log.warning("run %s: interrupt: %s: %s", run_id, type(exc).__name__, exc)
            return False  # still running: its job is claimed after APEX_JOB_CLAIM_IDLE
        try:
            await self._states.snapshot(run_id)
            run = await self._store.get(run_id)
            if run is not None:
                await self._audit.record(run, "run.interrupted")
                await self._queue.enqueue(run.id, run.priority)
            await self._queue.ack(job)
        except errors as exc:
            # Its job stays pending: a worker claims it after APEX_JOB_CLAIM_IDLE.
            log.warning("run %s: requeue: %s: %s", run_id, type(exc).__name__, exc)
        return True

    async def _consume(self, consumer: str) -> None:
        idle = self._settings.job_claim_idle
        last_claim = -idle
        while not self._stopping:
            try:
                due = await self._queue.promote()
                if time.monotonic() - last_claim >= idle / 2:
                    last_claim = time.monotonic()
                    for job in await self._queue.claim(consumer, idle):
                        if job.run_id in self._inflight:
                            continue  # this process is still working on it
                        self._metrics.jobs_claimed.inc()
                        await self._handle(job, consumer)
                block = min(_BLOCK_SECONDS, idle / 2, _BLOCK_SECONDS if due is None else due)
                fresh = await self._queue.next(consumer, block=block)
                if fresh is not None:
                    await self._handle(fresh, consumer)
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("worker %s: %s: %s", consumer, type(exc).__name__, exc)
                await asyncio.sleep(_ERROR_PAUSE)

    async def _handle(self, job: Job, consumer: str) -> None:
        """Run the job's run to a final state (unless it is final already), then XACK; a
        failing attempt is retried, the last one dead-lettered (:mod:`apex.agents.retries`)."""
        if job.run_id is None:
            await self._retries.bury(job, "invalid_message", "the message names no valid run")
            return
        if job.attempt > self._settings.job_retries:
            await self._retries.bury(
                job, "worker_lost", f"delivered {job.attempt} times, never acknowledged"
            )
            return
        task = asyncio.create_task(self._traced_work(job, job.run_id))
        self._inflight[job.run_id] = task
        self._jobs[job.run_id] = job
        heartbeat = asyncio.create_task(self._heartbeat(job, consumer))
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the pool is stopping: the job stays pending for another worker
            self._metrics.runs.labels("cancelled").inc()
        except NotStarted as exc:
            await self._retries.not_started(job, exc.why)
            await self._audit.flush(job.run_id)  # a dead-lettered run's run.finished
            return
        except Exception as exc:  # noqa: BLE001 - any failure of an attempt is retried
            await self._retries.failed(job, exc)
            await self._audit.flush(job.run_id)  # a dead-lettered run's run.finished
            return
        finally:
            heartbeat.cancel()
            if self._inflight.get(job.run_id) is task:
                del self._inflight[job.run_id]
                self._jobs.pop(job.run_id, None)
        await self._queue.ack(job)

    async def _traced_work(self, job: Job, run_id: uuid.UUID) -> None:
        """The work on ``job``'s run in a span continuing the submitting request's trace,
        timed (apex_agents_run_seconds)."""
        started = time.perf_counter()
        await self._tracing.traced(
            self._work(run_id),
            "agents.job",
            traceparent=job.traceparent,
            kind=SpanKind.CONSUMER,
            attributes={"apex.run_id": str(run_id), "apex.worker": self._name},
        )
        self._metrics.run_seconds.observe(time.perf_counter() - started)
        # The run's run.finished (a trigger writes it) to the user's connections, once
        # the run is counted and timed.
        await self._audit.flush(run_id)

    async def _heartbeat(self, job: Job, consumer: str) -> None:
        """Keep the job ours while its work runs (its idle time reset every third of
        APEX_JOB_CLAIM_IDLE)."""
        while not self._stopping:
            await asyncio.sleep(self._settings.job_claim_idle / 3)
            try:
                await self._queue.touch(job, consumer)
            except (RedisError, OSError) as exc:
                log.warning("job %s: heartbeat: %s: %s", job.message_id, type(exc).__name__, exc)

    async def _work(self, run_id: uuid.UUID) -> None:
        run = await self._store.start_within(run_id, self._settings.tenant_max_running)
        if run == "final":
            return  # cancelled, or finished by another delivery
        if isinstance(run, str):
            raise NotStarted(run)  # its tenant is at APEX_TENANT_MAX_RUNNING, or no run
        # The run keeps the config it started with, whatever a reload does meanwhile.
        config = self._config.current
        if run.workflow is not None:
            await self._work_workflow(run, config)
            return
        await self._work_agent(run, config)

    async def _work_agent(self, run: Run, config: AgentConfig) -> None:
        """Run a single-agent run's one step (``main``), unless a restored state holds its
        answer already."""
        agent = run.agent or ""
        done = [s for s in run.steps if s.get("id") == MAIN_STEP and s["status"] == "succeeded"]
        if done:
            record = done[0]
        else:
            await self._save(run, [step_record(MAIN_STEP, agent, status="running")])
            try:
                content, usage = await asyncio.wait_for(
                    self._caller.call(CallContext(run, MAIN_STEP, config), agent, run.input),
                    self._settings.run_timeout,
                )
            except TimeoutError:
                timed_out = step_record(MAIN_STEP, agent, status="failed", error="run_timeout")
                await self._save(run, [timed_out])
                fail = self._store.fail(run.id, "run_timeout", status="timed_out")
                await self._finish(run, fail, "timed_out")
                return
            except QualityRejected as exc:
                rejected = step_record(
                    MAIN_STEP, agent, status="failed", error=exc.reason, usage=exc.usage
                )
                rejected["quality_reasons"] = list(exc.reasons)
                await self._save(run, [rejected])
                reject = self._store.reject(run.id, exc.reasons, exc.usage)
                await self._finish(run, reject, "rejected")
                return
            except LlmError as exc:
                failed = step_record(MAIN_STEP, agent, status="failed", error=exc.reason)
                await self._save(run, [failed])
                await self._finish(run, self._store.fail(run.id, exc.reason), "failed")
                return
            record = step_record(MAIN_STEP, agent, status="succeeded", result=content, usage=usage)
            await self._save(run, [record])
        succeed = self._store.succeed(run.id, record["result"], usage_of(record))
        await self._finish(run, succeed, "succeeded")

    async def _work_workflow(self, run: Run, config: AgentConfig) -> None:
        """Run a workflow's steps through the supervisor within APEX_RUN_TIMEOUT."""
        workflow = Workflow.of(run.workflow or {})

        async def call_step(step: str, agent_name: str, text: str) -> tuple[str, Usage]:
            return await self._caller.call(CallContext(run, step, config), agent_name, text)

        async def save(steps: list[dict[str, Any]]) -> None:
            await self._save(run, steps)

        supervisor = Supervisor(call_step, save)
        try:
            outcome = await asyncio.wait_for(
                supervisor.run(workflow, run.input, run.steps), self._settings.run_timeout
            )
        except TimeoutError:
            fail = self._store.fail(run.id, "run_timeout", status="timed_out")
            await self._finish(run, fail, "timed_out")
            return
        finish = self._store.finish_workflow(run.id, outcome)
        await self._finish(run, finish, outcome.status)

    async def _save(self, run: Run, steps: Sequence[dict[str, Any]]) -> None:
        """Save the running run's step records, and its state as a new version."""
        if await self._store.save_steps(run.id, list(steps)):
            await self._states.snapshot(run.id)

    async def _finish(self, run: Run, transition: Awaitable[bool], status: str) -> None:
        """Make the run final by ``transition``; if it did (not final before), count it and
        persist its final state (its ``run.finished`` audit event is written by the
        transition itself: migration 0021)."""
        if not await transition:
            return
        self._metrics.runs.labels(status).inc()
        await self._states.snapshot(run.id)

    async def _listen(self) -> None:
        """Cancel the work of each run named on the cancel channel, if it is here."""
        while not self._stopping:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._queue.cancel_channel)
                while not self._stopping:
                    message = await pubsub.get_message(timeout=_BLOCK_SECONDS)
                    if message is None or message.get("type") != "message":
                        continue
                    with contextlib.suppress(ValueError):
                        task = self._inflight.get(uuid.UUID(str(message["data"])))
                        if task is not None:
                            task.cancel()
            except (RedisError, OSError) as exc:
                log.warning("cancel listener: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(_ERROR_PAUSE)
            finally:
                await pubsub.aclose()
