"""Fakes of the platform's third parties: an OIDC provider, a SAML IdP, an SMTP server,
Twilio's SMS API, an OpenAI-compatible LLM provider and an OpenTelemetry collector
(OTLP/HTTP traces), each a real server on 127.0.0.1 with a request log and a control API.

At L2 a fake runs in a thread of the test process, at L3 as a process of its own
(`python -m apex_testkit._fakes NAME --fd N`); the test-side client is the same object
either way. `start(run, name, process=...)` gives that client; `client.close()` stops it.
At L4 a fake runs as a sandbox of a deployment: `attach(name, url)` is a client of it
(closing that client leaves the fake running).
"""

from __future__ import annotations

import importlib

from apex_testkit._fakes._control import FakeClient, FakeError, LoggedRequest
from apex_testkit._fakes._server import FakeServer, RunningFake, start_fake
from apex_testkit._run import Run

# Fake name -> its module (SERVER: the FakeServer class, CLIENT: the FakeClient class).
FAKES: tuple[str, ...] = ("oidc", "saml", "smtp", "sms", "llm", "llm_fallback", "payments", "otel")
# A fake standing in for a second third party of the same kind: its name -> the module.
# `llm_fallback` is apex.agents' fallback provider, a second LLM fake of its own.
_MODULES: dict[str, str] = {"llm_fallback": "llm"}


def server_class(name: str) -> type[FakeServer]:
    if name not in FAKES:
        raise ValueError(f"no fake named {name!r}; known: {', '.join(FAKES)}")
    cls: type[FakeServer] = importlib.import_module(_module(name)).SERVER
    return cls


def _client_class(name: str) -> type[FakeClient]:
    server_class(name)  # a clear error for an unknown name
    cls: type[FakeClient] = importlib.import_module(_module(name)).CLIENT
    return cls


def _module(name: str) -> str:
    return f"apex_testkit._fakes.{_MODULES.get(name, name)}"


def start(run: Run, name: str, *, process: bool) -> FakeClient:
    """Start fake `name` (in a thread, or as a process recorded in `run`); its client."""
    running = start_fake(run, name, server_class(name), process=process)
    try:
        return _client_class(name)(running)
    except BaseException:
        running.stop()
        raise


def attach(name: str, url: str) -> FakeClient:
    """A client of fake `name` already serving at `url` (a sandbox named by an L4 target);
    its `close()` closes the client only."""
    return _client_class(name)(RunningFake(name, url.rstrip("/"), None, stop=lambda: None))


__all__ = [
    "FAKES",
    "FakeClient",
    "FakeError",
    "LoggedRequest",
    "attach",
    "server_class",
    "start",
]
