"""The provider chain: url -> local -> embedded -> docker, first that works wins; and the
verdict on a server of the run that died or stopped answering mid-run."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apex_testkit._masking import mask_secrets
from apex_testkit._processes import ProcessRef, log_tail
from apex_testkit._run import Run, RunDirError, disk_fix

PROVIDERS = ("url", "local", "embedded", "docker")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Fixes are offered in this order: what installs a server first.
_FIX_ORDER = ("local", "embedded", "url", "docker")
# The kit's own operations on its servers (per-test resets, connects) give up after
# these many seconds; then the server's process is looked at (see `check_server`).
CONNECT_TIMEOUT = 2.0
RESET_TIMEOUT = 5.0


class Unavailable(Exception):
    """A provider cannot supply the service here (not installed, not configured); the
    message says why."""


class Failed(Unavailable):
    """A provider that is there (a URL is set, a binary found) but does not work: the
    message says what the server said, `fix` how to mend it. `final`: no other provider
    can do better (the run's directory is full or read-only), so the chain stops."""

    def __init__(self, message: str, *, fix: str = "", final: bool = False) -> None:
        super().__init__(message)
        self.fix = fix
        self.final = final


class ServiceUnavailable(RuntimeError):
    """No provider could supply a service: names each one tried, why, and the fix.
    `brief` is the one line that says it again to the tests after the first."""

    def __init__(self, message: str, brief: str = "") -> None:
        super().__init__(message)
        self.brief = brief or message.splitlines()[0]


class ServerDown(ServiceUnavailable):
    """A server the run started died or stopped answering mid-run. `summary` is its state
    for the end-of-run list ("DIED: killed by signal 9 (SIGKILL)")."""

    def __init__(self, message: str, brief: str, summary: str) -> None:
        super().__init__(message, brief)
        self.summary = summary


@dataclass(frozen=True)
class Server:
    """A running server this run may use."""

    service: str
    provider: str
    url: str
    version: str = ""
    ready_seconds: float = 0.0
    # True when the run started it (local, embedded, docker): it may flush whole
    # logical databases; False for an external server shared with others (url).
    owned: bool = True
    # For a server process of the run: its "pid", "started" (ProcessRef) and "log".
    extra: Mapping[str, Any] = field(default_factory=dict)


Launcher = Callable[[Run], Server]
# `problem(url, timeout)`: None when the server at url answers, else what went wrong,
# in the server's (or the socket's) own words.
Probe = Callable[[str, float], "str | None"]


@dataclass(frozen=True)
class Service:
    """How to obtain one kind of server from each provider."""

    name: str
    title: str
    url_env: str
    # What makes a provider available that is not there at all, by provider
    # (url and docker have generic ones).
    fixes: Mapping[str, str]
    providers: Mapping[str, Launcher]
    problem: Probe
    # For a server made from another of the run's (a replica from its primary): the name
    # of that one, whose provider is this one's chain (not --services).
    follows: str = ""


def parse_services(spec: str) -> dict[str, tuple[str, ...]]:
    """Parse `redis=docker,postgres=local|embedded` into provider chains per service."""
    chains: dict[str, tuple[str, ...]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        chain = tuple(p.strip() for p in value.split("|") if p.strip())
        unknown = [p for p in chain if p not in PROVIDERS]
        if not sep or not chain or unknown:
            raise ValueError(
                f"bad --services entry {item!r}: expected SERVICE=PROVIDER[|PROVIDER...] "
                f"with providers from {', '.join(PROVIDERS)}"
            )
        chains[name.strip()] = chain
    return chains


def obtain(run: Run, service: Service, chain: tuple[str, ...] = PROVIDERS) -> Server:
    """The run's one server of `service`: started by the first process that needs it.

    A failure is remembered too, so that every worker fails fast with the same message
    instead of trying every provider again.
    """
    key = f"server-{service.name}"
    with run.lock(key):
        stored = run.read(key)
        if stored is None:
            stored = _provide(run, service, chain)
            run.store(key, stored)
    if "error" in stored:
        raise ServiceUnavailable(stored["error"], stored.get("brief", ""))
    return Server(**stored)


def _provide(run: Run, service: Service, chain: tuple[str, ...]) -> dict[str, Any]:
    tried: list[tuple[str, Unavailable]] = []
    for provider in chain:
        started = time.monotonic()
        try:
            server = service.providers[provider](run)
        except Unavailable as exc:
            tried.append((provider, exc))
        except RunDirError as exc:
            tried.append((provider, Failed(str(exc), final=True)))
        except OSError as exc:
            fix = disk_fix(exc)
            tried.append((provider, Failed(str(exc), fix=fix or "", final=fix is not None)))
        else:
            ready = round(time.monotonic() - started, 3)
            return asdict(server) | {"ready_seconds": ready}
        failure = tried[-1][1]
        # A URL the user set is what the user wants: it is used or the run stops with the
        # server's own error, never replaced by a server the kit starts.
        if isinstance(failure, Failed) and (failure.final or provider == "url"):
            break
    full, brief = _explain(service, chain, tried)
    return {"error": mask_secrets(full), "brief": mask_secrets(brief)}


def _explain(
    service: Service, chain: tuple[str, ...], tried: list[tuple[str, Unavailable]]
) -> tuple[str, str]:
    """The whole story (each provider tried, why it failed, the fixes that fit the chain)
    and its one-line brief."""
    head = f"No {service.title} server for this test run"
    lines = [f"{head}. Providers tried, in order:"]
    lines += [f"  - {provider}: {exc}" for provider, exc in tried]
    last, failure = tried[-1]
    stopped = isinstance(failure, Failed) and (failure.final or last == "url")
    if stopped:
        first_line = str(failure).splitlines()[0] if str(failure) else ""
        brief = f"{head}: {last}: {first_line}"
        if last == "url":
            lines.append(
                f"{service.url_env} is set: the kit uses that server or none, "
                "never one of its own in its place."
            )
        fixes = [_fix(service, chain, last, failure)]
    else:
        brief = f"{head}: none of {'|'.join(chain)} could supply one"
        by_provider = dict(tried)
        fixes = [
            _fix(service, chain, provider, by_provider[provider])
            for provider in _FIX_ORDER
            if provider in by_provider
        ]
    fixes = [fix for fix in fixes if fix]
    if fixes:
        first, *others = (fix.removeprefix("Fix: ") for fix in fixes)
        lines += [f"Fix: {first}", *(f"  or {fix}" for fix in others)]
    if service.follows:
        lines.append(f"(the provider of the run's {service.follows} server: {'|'.join(chain)})")
    elif chain != PROVIDERS:
        lines.append(f"(chain restricted to {'|'.join(chain)} by --services/APEX_TEST_SERVICES)")
    return "\n".join(lines), brief


def _fix(service: Service, chain: tuple[str, ...], provider: str, failure: Unavailable) -> str:
    """What would make `provider` work, given how it failed: an install hint only for
    what is not there; for what is there but failed, the failure's own fix."""
    if provider == "url":
        if not isinstance(failure, Failed):
            return f"point {service.url_env} at a running server"
        if failure.fix:
            return failure.fix
        rest = [p for p in chain if p != "url"]
        fix = f"correct {service.url_env} (what the server said is above)"
        if rest:
            fix += f", or unset it to let the kit try {'|'.join(rest)}"
        return fix
    if isinstance(failure, Failed):
        return failure.fix
    if provider == "docker":
        return "start a Docker engine (the docker provider uses testcontainers)"
    return service.fixes.get(provider, "")


def external_url(service: Service) -> str:
    """The url provider's input, or Unavailable naming the variable."""
    url = os.environ.get(service.url_env, "").strip()
    if not url:
        raise Unavailable(f"{service.url_env} is not set")
    return url


def check_external(service: Service, what: str, timeout: float = 5.0) -> str:
    """The url provider: the server at the service's URL, or Failed with its own words."""
    url = external_url(service)
    problem = service.problem(url, timeout)
    if problem is not None:
        raise Failed(f"{mask_secrets(url)} {what}: {problem}")
    return url


# --- a server that died or stopped answering mid-run ------------------------------------


def down_marker(run: Run) -> str:
    """A file that exists once the run has a verdict on any of its servers: a process
    checks that it does not exist before each reset (one stat, a few microseconds)."""
    return str(run.path / "servers-down")


def known_down(run: Run, service: str) -> ServerDown | None:
    """The verdict some process of the run already reached on its server of `service`."""
    verdict = run.read(f"down-{service}")
    if verdict is None:
        return None
    return ServerDown(verdict["message"], verdict["brief"], verdict["summary"])


def check_server(run: Run, service: Service, *, timed_out: bool = False) -> ServerDown | None:
    """After one of the kit's operations on the run's server of `service` failed (or timed
    out): whether that server died or stopped answering. Cheap: it reads the state of
    the server's process; only a timeout against a running process probes the server.
    The verdict is kept in the run, so every process of it fails fast from then on."""
    known = known_down(run, service.name)
    if known is not None:
        return known
    stored = run.read(f"server-{service.name}")
    if not stored or "error" in stored:
        return None
    server = Server(**stored)
    if "pid" not in server.extra:
        return None  # not a process of this run (a URL, a container)
    process = ProcessRef(int(server.extra["pid"]), int(server.extra["started"]))
    status = process.status()
    if status == "running":
        problem = service.problem(server.url, CONNECT_TIMEOUT) if timed_out else None
        if problem is None:
            return None
        state, detail = "not answering", f"running, but {problem}"
    elif status.startswith("stopped"):
        state, detail = "not answering", status
    else:
        state, detail = "died", status
    verb = "died" if state == "died" else "is not answering"
    brief = f"{service.title} ({server.provider}, pid {process.pid}) {verb}: {detail}"
    log = Path(server.extra.get("log", ""))
    message = (
        f"{brief}. The tests that need it fail from here on; its log ({log}) ends:\n"
        f"{log_tail(log, 10)}"
    )
    verdict = {
        "message": mask_secrets(message),
        "brief": mask_secrets(brief),
        "summary": f"{state.upper()}: {detail}",
    }
    run.store(f"down-{service.name}", verdict)
    Path(down_marker(run)).touch()
    return ServerDown(verdict["message"], verdict["brief"], verdict["summary"])


def is_timeout(exc: BaseException) -> bool:
    """Whether `exc` is a client giving up on a server (asyncio, redis-py, the
    ClickHouse driver each have their own timeout error)."""
    return isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__


def safe_identifier(name: str) -> str:
    """`name`, if it can go unquoted into SQL as a database name (the kit makes them)."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a safe database name: {name!r}")
    return name
