"""L3: the platform as OS processes on real sockets.

Each service instance is `python -m <module> --fd N` on a loopback socket the kit binds,
started on first use, one per worker (and per settings); a test may start its own
(`start`), and reach a dependency of an instance through a fault proxy (`via_proxy`,
`proxied`). The default instances live as long as the worker; of the others, the
KEEP_IDLE most recently used are kept between tests and the rest stopped (`reset`) in
the background: the test that begins does not wait for them to drain. Once a service has
an instance, SPARES warm spares of it (`spares`: forked from a template that imported the
service once) wait for its next ones, shared instances and a test's own (`start`) alike;
`cold_start` never takes one.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Final

import httpx

from apex_testkit._faults import FaultProxy
from apex_testkit._level import Level
from apex_testkit._processes import ProcessRef, listening_socket, log_tail, spawn, wait_healthy
from apex_testkit._run import Run, record_process
from apex_testkit._sut import wiring
from apex_testkit._sut.platform import Platform, ProxiedService, RunningService
from apex_testkit._sut.spares import SpareTemplate, WarmSpare
from apex_testkit._tls import tls_context
from apex_testkit._waiting import eventually
from apex_testkit._worker import Worker

# uvicorn closes a connection idle for 5 s, httpx reuses one idle for up to 5 s: a request
# sent on a connection the server is closing at that moment fails with a ReadError. Idle
# connections the kit's clients keep expire well before the server's.
_LIMITS: Final = httpx.Limits(keepalive_expiry=2.0)


# Signals that end a service process: the handle's stop() and kill() send them (and forget
# the process), send_signal() does not.
_ENDINGS: Final = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGINT})


class ServiceProcess:
    """One instance of a platform service as an OS process on a loopback socket:
    `python -m <module> --fd N`, answering GET /healthz."""

    def __init__(self, run: Run, module: str, env: Mapping[str, str], name: str) -> None:
        self.run, self.module, self.env, self.name = run, module, dict(env), name
        self.log = run.path / f"{name}.log"
        self.url = ""
        self._ref: ProcessRef | None = None
        # From spawn (or a warm spare's settings) to the first 200 of /healthz (the run's
        # summary adds them up), and whether a warm spare was it.
        self.ready_seconds = 0.0
        self.warm = False

    def start(self, timeout: float = 60.0, spare: WarmSpare | None = None) -> str:
        """Start it (in `spare`, a forked interpreter of its module, if given and its
        template still runs) and wait until /healthz answers 200; return its base URL."""
        began = time.perf_counter()
        env = {**os.environ, **self.env}
        ref = spare.take(env) if spare is not None else None
        if spare is not None and ref is not None:
            self.name, self.log, self.url = spare.name, spare.log, spare.url
            self._ref = ref

            def ended() -> str | None:
                # A spare's parent is its template, which never reaps it: /proc tells.
                return None if ref.alive() else ref.status()

            self.warm = True
        else:
            sock = listening_socket()
            host, port = sock.getsockname()[:2]
            argv = [sys.executable, "-m", self.module, "--fd", str(sock.fileno())]
            process = spawn(
                argv, log=self.log, env=env, pass_fds=[sock.fileno()], die_with_parent=True
            )
            sock.close()
            self._ref = record_process(self.run, self.name, process.pid, grace=10.0)
            self.url = f"http://{host}:{port}"

            def ended() -> str | None:
                code = process.poll()
                return None if code is None else f"exited with code {code}"

        outcome = wait_healthy(lambda: ended() is not None, f"{self.url}/healthz", timeout=timeout)
        if outcome != "ready":
            what = ended() or "never became healthy"
            self.stop()
            raise RuntimeError(f"{self.module} ({self.name}) {what}:\n{log_tail(self.log)}")
        self.ready_seconds = time.perf_counter() - began
        return self.url

    @property
    def pid(self) -> int | None:
        """Its process id while it runs (None before start and after stop or kill): what
        a benchmark reads the process's CPU time and memory of."""
        return None if self._ref is None else self._ref.pid

    def send_signal(self, sig: signal.Signals) -> None:
        """Send `sig` to this process alone (SIGHUP to reload its config, SIGSTOP and SIGCONT
        to freeze and thaw it), by its PID once checked to be the process this handle
        started; ProcessLookupError when it is not running (never started, stopped, killed,
        exited). Ending it is `stop()` or `kill()`, which also forget it."""
        if sig in _ENDINGS:
            raise ValueError(f"{sig.name} ends the process: use stop() or kill()")
        if self._ref is None or not self._ref.alive():
            raise ProcessLookupError(f"{self.module} ({self.name}) is not running")
        os.kill(self._ref.pid, sig)

    def stop(self) -> None:
        """Graceful: SIGTERM (the service drains and exits), SIGKILL after 10 s."""
        if self._ref is not None:
            self._ref.stop(grace=10.0)
            self.run.forget(self.name)
            self._ref = None

    def kill(self) -> None:
        """A crash: SIGKILL, no goodbye to clients (for failover tests)."""
        if self._ref is not None:
            self._ref.stop(grace=0.0, sig=signal.SIGKILL)
            self.run.forget(self.name)
            self._ref = None


# An instance is one process per (service, number, settings, proxied dependencies).
_Key = tuple[str, int, tuple[tuple[str, str], ...], tuple[str, ...]]
# Instances other than the defaults (instance 0, no settings, no proxy) that a worker keeps
# between tests once no test uses them. Settings often differ per test (a fault proxy's
# URL, a Redis prefix of the test's own), so kept for the worker's life they piled up: 90
# processes and 7 GB after five minutes of `nox -s l3`, each still running its loops.
KEEP_IDLE: Final = 8
# Warm spares a worker keeps per service module once it has started one. Tests that start
# instances of their own often start two in a row (one to crash, one that takes over). An
# idle spare shares most of its memory with its template (copy-on-write).
SPARES: Final = 2


class ProcessPlatform(Platform):
    """L3: each service runs as its own process, started on first use, one per worker."""

    level = Level.L3

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._instances: dict[_Key, ServiceProcess] = {}
        self._proxies: dict[tuple[str, int, str], FaultProxy] = {}
        self._all_proxies: list[FaultProxy] = []
        # Tests begun (resets), and the one in which each instance was last used.
        self._epoch = 0
        self._used: dict[_Key, int] = {}
        self._own_proxies: dict[_Key, list[FaultProxy]] = {}
        # Stops of evicted instances (`_stop_idle`); close() waits and raises a failed one.
        self._evicting = _evictor()
        self._evictions: list[Future[None]] = []
        # What the worker's processes cost: module -> seconds until healthy, one per start,
        # and how many of those starts were warm spares'.
        self._started: dict[str, list[float]] = {}
        self._warm: dict[str, int] = {}
        self._evicted = 0
        # Module -> the processes forked for its next instances (`spares`), the oldest
        # first, and the template that forks them; how many the worker forked (their names).
        self._spares: dict[str, list[WarmSpare]] = {}
        self._templates: dict[str, SpareTemplate] = {}
        self._spawned = 0

    @property
    def admin_token(self) -> str:
        return wiring.run_secrets(self.worker.run)["admin_token"]

    def _instance(
        self, service: str, instance: int, via_proxy: tuple[str, ...], settings: Mapping[str, str]
    ) -> ServiceProcess:
        key = (service, instance, tuple(sorted(settings.items())), via_proxy)
        if key not in self._instances:
            env = {**wiring.service_env(self.worker, service), **settings}
            for dependency in via_proxy:
                env |= self._proxy_to(service, instance, dependency, env)
            self._own_proxies[key] = [self._proxies[(service, instance, d)] for d in via_proxy]
            name = f"{service}-w{self.worker.slot}-{len(self._instances)}"
            process = self._process(service, env, name)
            process.start(spare=self._spare(process.module))
            self._started_one(service, process)
            self._instances[key] = process
        self._used[key] = self._epoch
        return self._instances[key]

    def _spare(self, module: str) -> WarmSpare | None:
        """The oldest warm spare of `module` (the likeliest to have finished its imports), if
        the worker has one."""
        spares = self._spares.get(module)
        return spares.pop(0) if spares else None

    def _started_one(self, service: str, process: ServiceProcess) -> None:
        """Count a started process, and spawn the spares of its module's next instances:
        more are likely to come, and their imports start now, while the tests run."""
        self._count(process)
        module = process.module
        if module not in self._templates:
            name = f"{service}-w{self.worker.slot}-template"
            self._templates[module] = SpareTemplate(self.worker.run, module, name)
        spares = self._spares.setdefault(module, [])
        while len(spares) < SPARES:
            self._spawned += 1
            name = f"{service}-w{self.worker.slot}-spare-{self._spawned}"
            spares.append(self._templates[module].fork(name))

    def _count(self, process: ServiceProcess) -> None:
        """Add a started process's time until healthy to the worker's tally."""
        self._started.setdefault(process.module, []).append(process.ready_seconds)
        if process.warm:
            self._warm[process.module] = self._warm.get(process.module, 0) + 1

    def _store_tally(self) -> None:
        """Add this platform's tally to its worker's in the run directory (a worker may close
        more than one platform: the selftests do), and start a new one."""
        name = f"{TALLY}{self.worker.slot}"
        stored = self.worker.run.read(name) or {"started": {}, "warm": {}, "evicted": 0}
        for module, seconds in self._started.items():
            stored["started"].setdefault(module, []).extend(seconds)
        for module, count in self._warm.items():
            stored["warm"][module] = stored["warm"].get(module, 0) + count
        stored["evicted"] += self._evicted
        self.worker.run.store(name, stored)
        self._started, self._warm, self._evicted = {}, {}, 0

    def _proxy_to(
        self, service: str, instance: int, dependency: str, env: Mapping[str, str]
    ) -> dict[str, str]:
        """Start a FaultProxy to `dependency`; the setting that now points through it."""
        known = wiring.proxiable(service)
        setting = known.get(dependency)
        if setting is None or not env.get(setting):
            raise ValueError(f"{service} has no {dependency!r} to proxy; known: {', '.join(known)}")
        proxy = FaultProxy(env[setting], name=f"{service}-{instance}-{dependency}")
        self._all_proxies.append(proxy.start())
        self._proxies[(service, instance, dependency)] = proxy
        return {setting: proxy.url_for(env[setting])}

    def _process(self, service: str, env: dict[str, str], name: str) -> ServiceProcess:
        """A process of `service` with `env`, plus where the services it calls are
        (started first; unless the test set the setting itself: a proxy)."""
        for called, setting in wiring.calls(service).items():
            env.setdefault(setting, self.instance(called).url)
        return ServiceProcess(self.worker.run, wiring.module(service), env, name)

    @asynccontextmanager
    async def _client(
        self, service: str, instance: int, settings: Mapping[str, str]
    ) -> AsyncIterator[httpx.AsyncClient]:
        url = self.instance(service, instance, **settings).url
        async with httpx.AsyncClient(
            base_url=url, timeout=30, verify=tls_context(), limits=_LIMITS
        ) as client:
            yield client

    @asynccontextmanager
    async def _serve(
        self, service: str, instance: int, settings: Mapping[str, str]
    ) -> AsyncIterator[str]:
        yield wiring.service_url(service, self.instance(service, instance, **settings).url)

    @asynccontextmanager
    async def _start(
        self, service: str, settings: Mapping[str, str], *, cold: bool
    ) -> AsyncIterator[RunningService]:
        env = {**wiring.service_env(self.worker, service), **settings}
        name = f"{service}-w{self.worker.slot}-own-{secrets.token_hex(4)}"
        process = self._process(service, env, name)
        spare = None if cold else self._spare(process.module)
        await asyncio.to_thread(process.start, spare=spare)
        self._started_one(service, process)

        async def stop() -> None:
            await asyncio.to_thread(process.stop)

        async def kill() -> None:
            await asyncio.to_thread(process.kill)

        try:
            yield RunningService(wiring.service_url(service, process.url), Level.L3, stop, kill)
        finally:
            await stop()

    def _proxy(self, service: str, instance: int, name: str) -> FaultProxy:
        try:
            return self._proxies[(service, instance, name)]
        except KeyError:
            raise LookupError(
                f"no proxy to {name} for {service} instance {instance}: start it with "
                f"platform.instance({service!r}, {instance}, via_proxy=({name!r},))"
            ) from None

    @asynccontextmanager
    async def _proxied(
        self, service: str, instance: int, via: str, settings: Mapping[str, str]
    ) -> AsyncIterator[ProxiedService]:
        process = self.instance(service, instance, via_proxy=(via,), **settings)
        proxy = self._proxy(service, instance, via)
        proxy.clear()
        tls = tls_context()
        async with httpx.AsyncClient(
            base_url=process.url, timeout=30, verify=tls, limits=_LIMITS
        ) as client:

            async def healthy() -> bool:
                return (await client.get("/healthz")).status_code == 200

            what = f"the proxied {service} instance to be healthy"
            await eventually(healthy, timeout=15, message=what)
            try:
                yield ProxiedService(client, proxy, process)
            except BaseException:
                # The instance's side of a failure, in the test's report.
                log = process.log.read_text(errors="replace") if process.log.exists() else ""
                print(f"--- tail of {process.log}:\n{log[-4000:]}")
                raise
            finally:
                proxy.clear()

    def reset(self) -> None:
        """The worker's namespaces and fakes, no fault left in any proxy, and no more than
        KEEP_IDLE idle instances besides the defaults."""
        self._stop_idle()
        self._epoch += 1
        self.worker.reset()
        for proxy in self._all_proxies:
            proxy.clear()
            proxy.reset_stats()

    def _stop_idle(self) -> None:
        """Stop the least recently used instances beyond KEEP_IDLE (and their proxies).

        Only instances that no one used since the last reset: neither the previous test
        nor a fixture of the test beginning now holds one of them. They stop in the
        background (a graceful stop drains the service's loops: 0.8-1.2 s for apex.agents,
        which the beginning test waited for); close() waits for every stop."""
        idle = [key for key, used in self._used.items() if used < self._epoch and not _default(key)]
        idle.sort(key=self._used.__getitem__, reverse=True)
        victims = idle[KEEP_IDLE:]
        if not victims:
            return
        processes = [self._instances.pop(key) for key in victims]
        self._evicted += len(processes)
        proxies = []
        for key in victims:
            del self._used[key]
            proxies += self._own_proxies.pop(key, [])
        for name, proxy in list(self._proxies.items()):
            if proxy in proxies:
                del self._proxies[name]
        for proxy in proxies:
            self._all_proxies.remove(proxy)
        self._evictions.append(self._evicting.submit(_stop_evicted, processes, proxies))

    def close(self) -> None:
        for spares in self._spares.values():
            for spare in spares:
                spare.discard()
        self._spares.clear()
        self._evicting.shutdown()  # waits for the evicted instances' stops
        self._evicting = _evictor()  # no thread until it is used
        failed = [e for e in (f.exception() for f in self._evictions) if e is not None]
        self._evictions.clear()
        # Dependents first: a gateway stops before the auth service it calls; the others
        # all at once (one by one, a worker's last teardown took 70-80 s).
        defaults = [key for key in self._instances if _default(key)]
        _stop_all([p for key, p in self._instances.items() if key not in defaults])
        for key in reversed(defaults):
            self._instances[key].stop()
        self._instances.clear()
        # Last: a template's end ends the processes it forked.
        for template in self._templates.values():
            template.close()
        self._templates.clear()
        for proxy in self._all_proxies:
            proxy.stop()
        self._all_proxies.clear()
        self._proxies.clear()
        self._own_proxies.clear()
        self._used.clear()
        self._store_tally()
        if failed:
            raise failed[0]  # a stop that failed fails the worker's teardown


# The run-directory files (`Run.store`) of each worker's tally of processes.
TALLY: Final = "l3-processes-w"


def process_summary(run: Run) -> list[str]:
    """Lines for the run's summary: per service, the processes its workers started and how
    long they took to become healthy, and how many idle ones were stopped (KEEP_IDLE).
    Empty unless an L3 worker ran."""
    started: dict[str, list[float]] = {}
    warm: dict[str, int] = {}
    evicted = 0
    for path in sorted(run.path.glob(f"{TALLY}*.json")):
        tally = run.read(path.stem) or {}
        for module, seconds in tally.get("started", {}).items():
            started.setdefault(module, []).extend(seconds)
        for module, count in tally.get("warm", {}).items():
            warm[module] = warm.get(module, 0) + int(count)
        evicted += int(tally.get("evicted", 0))
    if not started:
        return []
    lines = [
        f"{module}: {len(seconds)} started ({warm.get(module, 0)} warm), "
        f"{sum(seconds):.1f} s until healthy (median {statistics.median(seconds):.2f} s)"
        for module, seconds in sorted(started.items())
    ]
    every = [s for seconds in started.values() for s in seconds]
    lines.append(
        f"all: {len(every)} processes started ({sum(warm.values())} warm), {sum(every):.1f} s "
        f"until healthy; {evicted} stopped as idle (more than {KEEP_IDLE} per worker)"
    )
    return lines


def _default(key: _Key) -> bool:
    """Whether `key` is a service's default instance: number 0, no settings, no proxy."""
    return key[1:] == (0, (), ())


def _evictor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="apex-evict")


def _stop_evicted(processes: list[ServiceProcess], proxies: list[FaultProxy]) -> None:
    """Stop evicted instances, then the fault proxies that stood in front of them."""
    _stop_all(processes)
    for proxy in proxies:
        proxy.stop()


def _stop_all(processes: list[ServiceProcess]) -> None:
    """Stop `processes` at once: each stop waits for its process to exit."""
    if processes:
        with ThreadPoolExecutor(max_workers=min(len(processes), 16)) as pool:
            list(pool.map(ServiceProcess.stop, processes))
