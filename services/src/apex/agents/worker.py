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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from typing import Final

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from apex.agents.calls import MAIN_STEP, AgentCaller, CallContext
from apex.agents.graph import Workflow
from apex.agents.jobs import Job, JobQueue
from apex.agents.llm import LlmError
from apex.agents.metrics import Metrics
from apex.agents.quality import QualityRejected
from apex.agents.retries import NotStarted, Retries
from apex.agents.runs import Run, RunStore, Usage
from apex.agents.settings import AgentSettings
from apex.agents.supervisor import Supervisor

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
    ) -> None:
        self._settings = settings
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

    async def stop(self) -> None:
        """Stop every consumer and the work in flight (its jobs stay pending)."""
        self._stopping = True
        tasks = {*self._tasks, *self._inflight.values()}
        # Cancelled again until done: on Python 3.11 a cancellation that lands as a
        # client-side timeout expires can come out as a TimeoutError (an OSError), which
        # the loops survive; the flag ends them on their next turn.
        while tasks:
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=_ERROR_PAUSE)
        self._tasks.clear()
        self._inflight.clear()

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
        task = asyncio.create_task(self._work(job.run_id))
        self._inflight[job.run_id] = task
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
            return
        except Exception as exc:  # noqa: BLE001 - any failure of an attempt is retried
            await self._retries.failed(job, exc)
            return
        finally:
            heartbeat.cancel()
            if self._inflight.get(job.run_id) is task:
                del self._inflight[job.run_id]
        await self._queue.ack(job)

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
        if run.workflow is not None:
            await self._work_workflow(run)
            return
        try:
            content, usage = await asyncio.wait_for(
                self._caller.call(CallContext(run, MAIN_STEP), run.agent or "", run.input),
                self._settings.run_timeout,
            )
        except TimeoutError:
            if await self._store.fail(run.id, "run_timeout", status="timed_out"):
                self._metrics.runs.labels("timed_out").inc()
            return
        except QualityRejected as exc:
            if await self._store.reject(run.id, exc.reasons, exc.usage):
                self._metrics.runs.labels("rejected").inc()
            return
        except LlmError as exc:
            if await self._store.fail(run.id, exc.reason):
                self._metrics.runs.labels("failed").inc()
            return
        if await self._store.succeed(run.id, content, usage):
            self._metrics.runs.labels("succeeded").inc()

    async def _work_workflow(self, run: Run) -> None:
        """Run a workflow's steps through the supervisor within APEX_RUN_TIMEOUT."""
        workflow = Workflow.of(run.workflow or {})

        async def call_step(step: str, agent_name: str, text: str) -> tuple[str, Usage]:
            return await self._caller.call(CallContext(run, step), agent_name, text)

        supervisor = Supervisor(call_step, functools.partial(self._store.save_steps, run.id))
        try:
            outcome = await asyncio.wait_for(
                supervisor.run(workflow, run.input, run.steps), self._settings.run_timeout
            )
        except TimeoutError:
            if await self._store.fail(run.id, "run_timeout", status="timed_out"):
                self._metrics.runs.labels("timed_out").inc()
            return
        if await self._store.finish_workflow(run.id, outcome):
            self._metrics.runs.labels(outcome.status).inc()

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
