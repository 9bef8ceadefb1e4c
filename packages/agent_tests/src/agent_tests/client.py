"""A client of the Apex agents service (apex.agents), for any team's tests.

Public: `AgentUser` (a platform user of one tenant, with a context token for apex.agents
made by apex.auth: `auth_tests.access.ServiceUser`), `run_body` (a valid `POST /v1/runs`
body with a fresh idempotency key), `submit`, `final_run` (waits for a run to reach a final state),
`until` (polls a quick check with a deadline), `cost_micros` (the contract's cost of a
call under a price), `bearer`, `admin_headers`, `error_of`, `agent_definition` (a valid
`POST /v1/agents` body), `chat_calls` (the fake provider's chat completion requests),
`Held` (a `fake_llm` responder that holds chosen answers until released), `run_events`
(a run's `run.event` frames on a user's WebSocket, up to its `run.finished`). `MakeUser`,
`OpenAgents` and `OpenSocket` are the types of the `make_agent_user`, `agents_with` and
`agent_socket` fixtures.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import httpx
from auth_tests.access import ServiceUser, bearer
from ws_tests.client import Frame, WsClient

from apex_testkit import FakeLlm, LlmRequest, eventually

__all__ = [
    "AUDIENCE",
    "FINAL",
    "READ_RUNS",
    "RUN_AGENTS",
    "RUN_EVENT",
    "AgentUser",
    "Held",
    "MakeUser",
    "OpenAgents",
    "OpenSocket",
    "admin_headers",
    "agent_definition",
    "bearer",
    "chat_calls",
    "cost_micros",
    "error_of",
    "final_run",
    "run_body",
    "run_events",
    "submit",
    "until",
]

# The audience apex.agents accepts context tokens for.
AUDIENCE: Final = "apex-agents"
# A user with a context token for apex.agents (`auth_tests.access.service_user`).
AgentUser = ServiceUser
# Submitting and cancelling runs needs the first, reading them the second.
RUN_AGENTS: Final = "agents:run"
READ_RUNS: Final = "agents:read"
# The states a run never leaves.
FINAL: Final = frozenset({"succeeded", "failed", "rejected", "cancelled", "timed_out"})


# `await make_agent_user(tenant=..., permissions=(...))`: what `make_agent_user` hands out.
MakeUser = Callable[..., Awaitable[AgentUser]]
# `await agents_with(APEX_LLM_RETRIES="0", ...)`: what `agents_with` hands out.
OpenAgents = Callable[..., Awaitable[httpx.AsyncClient]]
# `await agent_socket(user, base_url=None, last_seq=None)`: what `agent_socket` hands out.
OpenSocket = Callable[..., Awaitable[WsClient]]
# The run events' frame type on the gateway (contract-agents.md § Routes).
RUN_EVENT: Final = "run.event"


def admin_headers(admin_token: str) -> dict[str, str]:
    """The headers of apex.agents' /admin/* routes and /metrics."""
    return bearer(admin_token)


def run_body(**fields: Any) -> dict[str, Any]:
    """A valid `POST /v1/runs` body (agent `assistant`) with a fresh idempotency key;
    `fields` override (or, set to None, remove) any field. A test that runs at L4 and is
    not about the response cache passes `cache=False`: a deployment's cache outlives
    tests, and the default input is the same for every run."""
    body: dict[str, Any] = {
        "agent": "assistant",
        "input": "What is the capital of France?",
        "idempotency_key": uuid.uuid4().hex,
    }
    for name, value in fields.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return body


async def submit(client: httpx.AsyncClient, user: AgentUser, **fields: Any) -> str:
    """Submit `run_body(**fields)` as `user`; the new run's id (202 asserted)."""
    response = await client.post("/v1/runs", json=run_body(**fields), headers=user.headers)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued", response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def final_run(
    client: httpx.AsyncClient, user: AgentUser, run_id: str, *, timeout: float = 30.0
) -> dict[str, Any]:
    """The run once it is in a final state (polled with a deadline)."""

    async def final() -> dict[str, Any] | None:
        response = await client.get(f"/v1/runs/{run_id}", headers=user.headers)
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        return run if run["status"] in FINAL else None

    run: dict[str, Any] | None = await eventually(
        final, timeout=timeout, message=f"run {run_id} final"
    )
    assert run is not None  # eventually returns a truthy value
    return run


async def until(condition: Callable[[], bool], *, message: str, timeout: float = 30.0) -> None:
    """Poll a quick check (e.g. `fake_llm.hanging == 1`) with a deadline, giving the event
    loop (where an L2 app's workers run) its turn between polls."""

    async def check() -> bool:
        return condition()

    await eventually(check, timeout=timeout, message=message)


def cost_micros(prompt: int, completion: int, input_per_1k: int, output_per_1k: int) -> int:
    """The contract's cost of one call: micros per 1,000 tokens, rounded up once."""
    return -(-(prompt * input_per_1k + completion * output_per_1k) // 1000)


def error_of(response: httpx.Response) -> str:
    """The machine-readable error code of a refused response."""
    code: str = response.json()["error"]
    return code


def agent_definition(
    name: str, *, version: str = "1.0.0", tools: Mapping[str, str] | None = None, **fields: Any
) -> dict[str, Any]:
    """A valid `POST /v1/agents` body (model gpt-4o-mini) naming `tools` (name -> semver
    range); `fields` override any field."""
    return {
        "name": name,
        "version": version,
        "model": "gpt-4o-mini",
        "system": f"You are {name} {version}.",
        "tools": dict(tools or {}),
        "max_tokens": 256,
        **fields,
    }


def chat_calls(fake_llm: FakeLlm) -> list[LlmRequest]:
    """The chat completion requests the fake provider received, oldest first."""
    return [call for call in fake_llm.calls if call.path.endswith("/chat/completions")]


class Held:
    """A responder for `fake_llm.respond_with`: the first `times` requests whose last user
    message contains `marker` get no answer until `release()` (or `timeout` seconds, a
    safety net); every request is answered `answer(text)` (default `"answer: " + text`).
    `held` counts the requests held so far. Release it in a `finally`."""

    def __init__(
        self,
        marker: str,
        *,
        times: int = 1,
        timeout: float = 30.0,
        answer: Callable[[str], str] | None = None,
    ) -> None:
        self.marker, self.times, self.timeout = marker, times, timeout
        self._answer = answer or (lambda text: "answer: " + text[:40])
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.held = 0

    def __call__(self, request: LlmRequest) -> str:
        text = request.last_user_text
        with self._lock:
            hold = self.marker in text and self.held < self.times
            if hold:
                self.held += 1
        if hold:
            self._released.wait(self.timeout)
        return self._answer(text)

    def release(self) -> None:
        self._released.set()


async def run_events(socket: WsClient, *, timeout: float = 30.0) -> list[Frame]:
    """The `run.event` frames `socket` receives, in order, up to and with the first
    `run.finished` (of any run); frames of other types stay in its inbox."""
    frames: list[Frame] = []
    while not frames or frames[-1]["event"]["kind"] != "run.finished":
        frames.append(await socket.expect(RUN_EVENT, timeout=timeout))
    return frames
