"""Reading apex.agents' job queue in tests: `GET /admin/queues` (`queue_report`), a
counter of `/metrics` (`counter`), the raw job streams (`job_stream`, for messages a test
writes itself), and a run whose stored row makes its handler fail (`break_run`,
`mend_run`): notes-agents.md § Job queue.
"""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agent_tests.client import admin_headers

__all__ = ["break_run", "counter", "job_stream", "mend_run", "queue_report"]


async def queue_report(client: httpx.AsyncClient, admin_token: str) -> dict[str, Any]:
    """`GET /admin/queues` of this instance (200 asserted)."""
    response = await client.get("/admin/queues", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


async def counter(client: httpx.AsyncClient, admin_token: str, name: str) -> float:
    """The value of counter `name` (e.g. "apex_agents_job_retries") in `/metrics`."""
    response = await client.get("/metrics", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        if family.name == name:
            return sum(s.value for s in family.samples if s.name == f"{name}_total")
    raise AssertionError(f"no counter {name} in /metrics")


def job_stream(prefix: str, priority: str) -> str:
    """The Redis stream of one priority's jobs under a Redis prefix (contract)."""
    return f"{prefix}agents:jobs:{priority}"


async def break_run(db: Any, run_id: str) -> None:
    """Make the stored run one its worker cannot handle: a workflow with no steps (which
    the submit checks never let in), so each attempt fails with an unexpected error."""
    status = await db.execute(
        "UPDATE agent_runs SET agent = NULL, workflow = '{}'::jsonb WHERE id = $1::uuid", run_id
    )
    assert status == "UPDATE 1"


async def mend_run(db: Any, run_id: str) -> None:
    """Undo `break_run`: the run of the `assistant` agent it was."""
    status = await db.execute(
        "UPDATE agent_runs SET agent = 'assistant', workflow = NULL WHERE id = $1::uuid", run_id
    )
    assert status == "UPDATE 1"
