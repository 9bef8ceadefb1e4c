"""What a worker does with a job it could not finish: retry it later, defer it, or
dead-letter it.

- An attempt that failed with an error that is not its run's own outcome (an unexpected
  exception in the handler, a PostgreSQL or Redis error; a provider's error or a timeout
  is the run's outcome, never retried here) is tried again after a full-jitter backoff
  (``APEX_JOB_BACKOFF`` ``base/cap``), the run back to ``queued`` meanwhile, up to
  ``APEX_JOB_RETRIES`` attempts; the last failing attempt fails the run with reason
  ``job_failed`` and puts the job in the dead letters.
- A job whose tenant is at ``APEX_TENANT_MAX_RUNNING`` waits ``APEX_TENANT_WAIT`` seconds
  and is read again (not an attempt).
- A job naming no run (``invalid_message``), a run that is not stored (``unknown_run``)
  and a job delivered more than ``APEX_JOB_RETRIES`` times (``worker_lost``: its workers
  died) go to the dead letters at once.
"""

from __future__ import annotations

import contextlib
import logging

import asyncpg

from apex.agents.jobs import Job, JobQueue, backoff
from apex.agents.metrics import Metrics
from apex.agents.runs import RunStore
from apex.agents.settings import AgentSettings

__all__ = ["NotStarted", "Retries"]

log = logging.getLogger(__name__)


class NotStarted(Exception):
    """The job's run did not start: ``why`` is ``busy`` (its tenant is at its limit) or
    ``missing`` (no such run)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Retries:
    """Retries, deferrals and dead letters of one worker pool's jobs."""

    def __init__(
        self, settings: AgentSettings, *, store: RunStore, queue: JobQueue, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._store = store
        self._queue = queue
        self._metrics = metrics

    async def failed(self, job: Job, exc: Exception) -> None:
        """The job's attempt raised ``exc``: try again after the backoff, or, on the last
        attempt, fail the run ``job_failed`` and dead-letter the job."""
        detail = f"{type(exc).__name__}: {exc}"
        log.warning(
            "job %s (run %s) attempt %d: %s", job.message_id, job.run_id, job.attempt, detail
        )
        if job.attempt >= self._settings.job_retries:
            await self.bury(job, "job_failed", detail)
            return
        # Best effort: with PostgreSQL down the run stays `running` until the retry.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            assert job.run_id is not None  # noqa: S101 - a job of no run is never attempted
            await self._store.requeue(job.run_id)
        base, cap = self._settings.job_backoff
        await self._queue.later(job, backoff(job.attempt, base, cap), attempt=job.attempt + 1)
        self._metrics.job_retries.inc()

    async def not_started(self, job: Job, why: str) -> None:
        """The run did not start: ``busy`` (its tenant is at its limit: read again soon)
        or ``missing`` (dead-lettered ``unknown_run``)."""
        if why == "busy":
            await self._queue.later(job, self._settings.tenant_wait, attempt=job.attempt)
            self._metrics.jobs_deferred.inc()
            return
        await self.bury(job, "unknown_run", "no such run is stored")

    async def bury(self, job: Job, reason: str, detail: str) -> None:
        """Fail the job's run (if any) with ``reason``, then move the job to the dead
        letters. An error failing the run leaves the job pending: it is claimed again."""
        if job.run_id is not None and await self._store.fail(job.run_id, reason):
            self._metrics.runs.labels("failed").inc()
        await self._queue.bury(job, reason, detail)
        self._metrics.dead_letters.inc()
        log.warning(
            "job %s (run %s) dead-lettered: %s: %s", job.message_id, job.run_id, reason, detail
        )
