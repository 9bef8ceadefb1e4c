"""The test side of a fake: one client class per fake, talking to its control API over
HTTP, so a test reads the same whether the fake runs in a thread (L2) or a process (L3)."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import httpx

from apex_testkit._fakes._server import CONTROL, RunningFake
from apex_testkit._tls import tls_context
from apex_testkit._waiting import DeadlineExceeded


@dataclass(frozen=True)
class LoggedRequest:
    """One request the fake received (its control API excepted)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: str
    status: int | None
    time: float

    @property
    def params(self) -> dict[str, str]:
        """The query string, decoded (the last value of a repeated name wins)."""
        return dict(parse_qsl(self.query, keep_blank_values=True))

    @property
    def form(self) -> dict[str, str]:
        """The body as an urlencoded form, decoded."""
        return dict(parse_qsl(self.body, keep_blank_values=True))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoggedRequest:
        return cls(
            method=data["method"],
            path=data["path"],
            query=data["query"],
            headers=data["headers"],
            body=data["body"],
            status=data["status"],
            time=data["time"],
        )


class FakeClient(abc.ABC):
    """Base of the fakes' clients: control calls, request log, reset, stop."""

    name: ClassVar[str]

    def __init__(self, running: RunningFake) -> None:
        self.running = running
        self.url = running.url
        self._http = httpx.Client(
            base_url=f"{running.url}{CONTROL}", timeout=10, verify=tls_context()
        )
        # What the fake told about itself (issuer, credentials, ports...).
        self.config: dict[str, Any] = self._call("GET", "config")

    @abc.abstractmethod
    def settings(self) -> dict[str, str]:
        """The value of each role a service's settings name (`issuer`, `base_url`, ...):
        the roles of this third party in apex.topology, which wire a service to it."""

    @property
    def requests(self) -> list[LoggedRequest]:
        """Every request the fake received since the last reset, oldest first."""
        return [LoggedRequest.from_json(r) for r in self._call("GET", "requests")]

    def reset(self) -> None:
        """Forget what earlier tests did (state and request log)."""
        if self.running.reset_in_thread is not None:
            self.running.reset_in_thread()
        else:
            self._call("POST", "reset")

    def close(self) -> None:
        """Stop the fake (its thread or process)."""
        self._http.close()
        self.running.stop()

    def _call(self, method: str, what: str, **body: Any) -> Any:
        response = self._http.request(method, f"/{what}", json=body if body else None)
        if response.status_code >= 400:
            raise FakeError(f"fake {self.name}: {method} {what}: {response.text}")
        return response.json() if response.content else None

    async def _wait(self, what: str, params: dict[str, str], timeout: float) -> Any:
        """Long-poll `what` until the fake has a match (a condition wait on its side)."""
        params = {**params, "wait": str(timeout)}
        async with httpx.AsyncClient(
            base_url=f"{self.url}{CONTROL}", timeout=timeout + 10, verify=tls_context()
        ) as c:
            response = await c.get(f"/{what}", params=params)
        if response.status_code == 408:
            raise DeadlineExceeded(f"fake {self.name}: {response.json()['detail']}")
        if response.status_code >= 400:
            raise FakeError(f"fake {self.name}: GET {what}: {response.text}")
        return response.json()


class FakeError(RuntimeError):
    """The fake refused a control call (a bad argument in the test)."""
