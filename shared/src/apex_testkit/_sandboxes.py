"""Third-party sandboxes of an L4 target: the IdP, mail capture, SMS API... a deployment
talks to, named in the target file by third-party name (apex.topology's `ThirdParty`
names: oidc, saml, smtp, sms, llm), each with the URL of its control API:

```toml
[sandboxes.oidc]
url = "http://127.0.0.1:40123"
```

`apex-testkit stack` starts the kit's fakes as these sandboxes (processes of its run),
wires the platform's services to them and writes them into the target. At L4 the fake
fixtures (`fake_idp`, `mailbox`, ...) are clients of the target's sandbox: one sandbox
serves every worker, so a test that uses one holds the run's sandbox lock throughout.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from apex import topology
from apex_testkit._level import Level
from apex_testkit._run import Run
from apex_testkit._target import TargetError

if TYPE_CHECKING:
    from apex_testkit._fakes import FakeClient
    from apex_testkit._worker import Worker

# The run-wide lock a test holds while it drives a shared sandbox.
LOCK = "sandboxes"
# How many fake fixtures of this process hold it: a test using two takes it once (a
# second flock from the same process would wait for itself).
_holders: dict[Path, int] = {}


def parse_sandboxes(file: Path, table: Any) -> dict[str, str]:
    """The `[sandboxes.<name>]` tables of a target file: third-party name -> URL."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise TargetError(f"target file {file}: [sandboxes] must be a table of tables")
    urls: dict[str, str] = {}
    for name, entry in table.items():
        url = entry.get("url") if isinstance(entry, dict) else None
        if not isinstance(url, str):
            raise TargetError(f'target file {file}: [sandboxes.{name}] needs url = "..."')
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TargetError(
                f"target file {file}: [sandboxes.{name}] url {url!r} is not an http(s) URL "
                "with a host (the sandbox's control API)"
            )
        urls[str(name)] = url.rstrip("/")
    return urls


def start_sandboxes(run: Run) -> dict[str, FakeClient]:
    """Start the kit's fake of every third party the platform talks to, as a process of
    `run` (the stack's sandboxes); their clients by third-party name."""
    from apex_testkit._fakes import FAKES, start  # noqa: PLC0415 - servers and XML, on demand

    names = sorted({p.name for s in topology.SERVICES for p in topology.service(s).third_parties})
    unknown = [name for name in names if name not in FAKES]
    if unknown:
        raise LookupError(
            f"the platform talks to {', '.join(unknown)}, of which the test kit has no fake "
            f"(fakes: {', '.join(FAKES)})"
        )
    clients: dict[str, FakeClient] = {}
    try:
        for name in names:
            clients[name] = start(run, name, process=True)
    except BaseException:
        for client in clients.values():
            client.close()
        raise
    return clients


def sandbox_env(service: str, sandboxes: Mapping[str, FakeClient]) -> dict[str, str]:
    """The settings that point `service` at the sandboxes of its third parties."""
    from apex_testkit._sut.wiring import party_env  # noqa: PLC0415 - imports the worker

    env: dict[str, str] = {}
    for party in topology.service(service).third_parties:
        env |= party_env(service, party, sandboxes[party.name])
    return env


def sandbox_tables(sandboxes: Mapping[str, FakeClient]) -> str:
    """The `[sandboxes.<name>]` tables of a target file for these sandboxes."""
    tables = (
        f'\n[sandboxes.{name}]\nurl = "{fake.url}"\n' for name, fake in sorted(sandboxes.items())
    )
    return "".join(tables)


@contextmanager
def _sandbox_lock(run: Run) -> Iterator[None]:
    if _holders.get(run.path):
        _holders[run.path] += 1
        try:
            yield
        finally:
            _holders[run.path] -= 1
        return
    with run.lock(LOCK):
        _holders[run.path] = 1
        try:
            yield
        finally:
            del _holders[run.path]


@contextmanager
def fake_of(worker: Worker, name: str) -> Iterator[FakeClient]:
    """The fake fixtures' client of third party `name`, reset: the worker's own fake at
    L2/L3, at L4 a client of the target's sandbox (with the run's sandbox lock held)."""
    target = worker.settings.target
    if worker.settings.level is not Level.L4 or target is None:
        fake = worker.fake(name)  # L2/L3 only: the worker checks
        fake.reset()
        yield fake
        return
    url = target.sandboxes.get(name)
    if url is None:
        known = ", ".join(sorted(target.sandboxes)) or "none"
        raise TargetError(
            f"target {target.path} names no [sandboxes.{name}] url (it names: {known}); "
            "`apex-testkit stack` writes the kit's fakes into its target"
        )
    from apex_testkit._fakes import attach  # noqa: PLC0415 - servers and XML, on demand

    with _sandbox_lock(worker.run):
        client = attach(name, url)
        try:
            client.reset()
            yield client
        finally:
            client.close()
