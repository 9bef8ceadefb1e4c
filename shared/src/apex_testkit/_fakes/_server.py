"""Running a fake: its HTTP app (protocol routes + control API), in a thread or a process.

Every fake is a `FakeServer`: state, the third party's protocol routes and the control
routes under `/_fake/` that the test-side client (`apex_testkit._fakes._control`) calls.
At L2 it is served by uvicorn in a thread of the test process (`start_thread`); at L3 by
`python -m apex_testkit._fakes NAME --fd N` (`start_process`), recorded in the run so it
never outlives it. Either way it listens on 127.0.0.1 and the client talks HTTP to it.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apex_testkit._processes import listening_socket, log_tail, spawn, wait_healthy
from apex_testkit._run import Run, record_process
from apex_testkit._waiting import wait_for

CONTROL = "/_fake"
START_TIMEOUT = 30.0


class FakeServer(abc.ABC):
    """State of one fake and the routes that serve it."""

    name: ClassVar[str]
    # A second listening socket the fake needs besides HTTP (the SMTP port), if any.
    extra_socket: ClassVar[bool] = False

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.requests: list[dict[str, Any]] = []

    @abc.abstractmethod
    def routes(self) -> list[BaseRoute]:
        """The third party's protocol routes and this fake's own control routes."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """What a client needs to know (issuer, credentials, ports...)."""

    def reset(self) -> None:
        """Forget what earlier tests did: state and request log."""
        self.requests.clear()

    async def settle(self) -> None:  # noqa: B027 - optional hook
        """Wait (briefly) until nothing the fake started reaches the platform any more (a
        webhook under way): called on the server's loop just before `reset`."""

    async def start(self, extra: socket.socket | None) -> None:  # noqa: B027 - optional hook
        """Start what the fake serves besides HTTP (on `extra`), on the server's loop."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Stop what `start` started."""

    def release(self) -> None:  # noqa: B027 - optional hook
        """Let requests the fake holds open (a scripted hang) finish: called on the
        server's loop as it begins to stop, before it waits for open requests."""

    def app(self, extra: socket.socket | None = None) -> ASGIApp:
        """The ASGI app: protocol routes, control routes, request log."""

        async def health(request: Request) -> Response:
            return JSONResponse({"status": "ok", "fake": self.name})

        async def reset(request: Request) -> Response:
            await self.settle()
            self.reset()
            return Response(status_code=204)

        async def requests(request: Request) -> Response:
            return JSONResponse(self.requests)

        async def config(request: Request) -> Response:
            return JSONResponse(self.config())

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await self.start(extra)
            try:
                yield
            finally:
                await self.stop()

        control = [
            Route(f"{CONTROL}/health", health),
            Route(f"{CONTROL}/reset", reset, methods=["POST"]),
            Route(f"{CONTROL}/requests", requests),
            Route(f"{CONTROL}/config", config),
        ]
        app = Starlette(routes=[*control, *self.routes()], lifespan=lifespan)
        return RequestLog(app, self.requests)


class RequestLog:
    """ASGI middleware: every request outside the control API, with its body and status."""

    def __init__(self, app: ASGIApp, log: list[dict[str, Any]]) -> None:
        self.app, self.log = app, log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONTROL):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        entry: dict[str, Any] = {
            "time": time.time(),
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode("latin-1"),
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "body": "",
            "status": None,
        }
        self.log.append(entry)

        async def logged_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                entry["body"] = body.decode("utf-8", errors="replace")
            return message

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        await self.app(scope, logged_receive, logged_send)


async def form_of(request: Request) -> dict[str, str]:
    """An urlencoded request body (what OAuth and Twilio clients send), decoded."""
    return dict(parse_qsl((await request.body()).decode("utf-8", errors="replace")))


def base_url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


class _Serving(uvicorn.Server):
    """uvicorn that lets the fake release the requests it holds as it stops (uvicorn
    waits for open requests before the app's lifespan ends: too late for a hang)."""

    def __init__(self, server: FakeServer, extra: socket.socket | None) -> None:
        config = uvicorn.Config(
            server.app(extra), log_level="warning", access_log=False, lifespan="on"
        )
        super().__init__(config)
        self.fake = server

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.fake.release()
        await super().shutdown(sockets)


@dataclass
class RunningFake:
    """A fake being served: where it listens and how to stop it."""

    name: str
    url: str
    extra_port: int | None
    stop: Callable[[], None] = field(repr=False)
    pid: int | None = None  # its process at L3, None when it runs in a thread
    # In a thread (L2): the reset, run on the fake's own loop without an HTTP round trip
    # (before every test, for every fake: 20 ms each over HTTP on a loaded machine).
    reset_in_thread: Callable[[], None] | None = field(default=None, repr=False)


def start_thread(
    server: FakeServer, http: socket.socket, extra: socket.socket | None
) -> tuple[Callable[[], None], Callable[[], None]]:
    """Serve `server` on its own event loop in a daemon thread; return its stop function
    and its reset (run on that loop, as the control API's reset would be)."""
    uv = _Serving(server, extra)
    failure: list[BaseException] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        await uv.serve(sockets=[http])

    def serve() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread below
            failure.append(exc)

    thread = threading.Thread(target=serve, name=f"apex-fake-{server.name}", daemon=True)
    thread.start()

    def state() -> str | None:
        if uv.started:
            return "ready"
        return None if thread.is_alive() else "exited"

    if wait_for(state, timeout=START_TIMEOUT, raise_on_timeout=False) != "ready":
        uv.should_exit = True
        thread.join(timeout=10)
        why = repr(failure[0]) if failure else "not serving in time"
        raise RuntimeError(f"fake {server.name} did not start: {why}")

    def stop() -> None:
        uv.should_exit = True
        thread.join(timeout=10)
        http.close()
        if extra is not None:
            extra.close()
        if thread.is_alive():
            raise RuntimeError(f"fake {server.name} did not stop within 10 s")

    async def reset_here() -> None:
        await server.settle()
        server.reset()

    def reset() -> None:
        asyncio.run_coroutine_threadsafe(reset_here(), loops[0]).result(timeout=10)

    return stop, reset


def start_fake(
    run: Run, name: str, server_class: type[FakeServer], *, process: bool
) -> RunningFake:
    """Start fake `name` on loopback sockets: in a thread, or (process=True) as a process."""
    http = listening_socket()
    extra = listening_socket() if server_class.extra_socket else None
    extra_port = int(extra.getsockname()[1]) if extra is not None else None
    url = base_url_of(http)
    if not process:
        try:
            stop, reset = start_thread(server_class(url), http, extra)
        except BaseException:
            http.close()
            if extra is not None:
                extra.close()
            raise
        return RunningFake(name, url, extra_port, stop, reset_in_thread=reset)
    resource = f"fake-{name}-{http.getsockname()[1]}"
    log = run.path / f"{resource}.log"
    argv = [sys.executable, "-m", "apex_testkit._fakes", name, "--fd", str(http.fileno())]
    fds = [http.fileno()]
    if extra is not None:
        argv += ["--extra-fd", str(extra.fileno())]
        fds.append(extra.fileno())
    child = spawn(argv, log=log, pass_fds=fds, die_with_parent=True)
    http.close()
    if extra is not None:
        extra.close()
    ref = record_process(run, resource, child.pid, grace=5.0)

    def stop_process() -> None:
        ref.stop(grace=5.0)
        child.wait(timeout=5)
        run.forget(resource)

    outcome = wait_healthy(
        lambda: child.poll() is not None,
        f"{url}{CONTROL}/health",
        timeout=START_TIMEOUT,
        interval=0.01,
    )
    if outcome != "ready":
        stop_process()
        raise RuntimeError(f"fake {name} ({resource}) did not start:\n{log_tail(log)}")
    return RunningFake(name, url, extra_port, stop_process, pid=ref.pid)


class _Process(_Serving):
    """_Serving without re-raising SIGTERM after a graceful stop (the process exits 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        originals = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def main(argv: Sequence[str], servers: Callable[[str], type[FakeServer]]) -> int:
    """`python -m apex_testkit._fakes NAME --fd N [--extra-fd M]`: serve one fake."""
    parser = argparse.ArgumentParser(prog="python -m apex_testkit._fakes")
    parser.add_argument("name", help="oidc, saml, smtp, sms, llm, llm_fallback, payments or otel")
    parser.add_argument("--fd", type=int, required=True, help="inherited listening HTTP socket")
    parser.add_argument("--extra-fd", type=int, help="inherited second socket (SMTP)")
    args = parser.parse_args(list(argv))
    http = socket.socket(fileno=args.fd)
    extra = socket.socket(fileno=args.extra_fd) if args.extra_fd is not None else None
    server = servers(args.name)(base_url_of(http))
    asyncio.run(_Process(server, extra).serve(sockets=[http]))
    return 0


__all__ = [
    "CONTROL",
    "FakeServer",
    "RunningFake",
    "main",
    "start_fake",
]
