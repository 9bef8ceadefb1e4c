"""Level wiring of the platform and the local stack."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from apex import topology
from apex_testkit import Level, wait_for
from apex_testkit._level import WrongLevel
from apex_testkit._processes import ProcessRef, start_time
from apex_testkit._run import Run
from apex_testkit._sut import (
    DeployedPlatform,
    InProcessPlatform,
    ProcessPlatform,
    ServiceProcess,
    process_summary,
    processes,
)
from apex_testkit._sut.spares import SpareTemplate
from apex_testkit._sut.wiring import proxiable, service_env
from apex_testkit._target import load_target


def test_a_service_that_dies_at_start_is_a_clear_error(apex_worker):
    process = ServiceProcess(apex_worker.run, "apex.no_such_service", {}, "selftest-broken")
    with pytest.raises(RuntimeError) as caught:
        process.start(timeout=30)
    message = str(caught.value)
    assert "apex.no_such_service (selftest-broken) exited with code 1" in message
    assert "No module named apex.no_such_service" in message


def test_a_service_with_bad_settings_shows_its_own_error(apex_worker):
    env = service_env(apex_worker, "auth") | {"APEX_JWT_ACCESS_TTL": "soon"}
    process = ServiceProcess(apex_worker.run, "apex.auth", env, "selftest-bad-settings")
    with pytest.raises(RuntimeError, match="APEX_JWT_ACCESS_TTL"):
        process.start(timeout=30)


def test_l3_instances_are_processes_reused_and_stopped(apex_worker):
    platform = ProcessPlatform(apex_worker)
    try:
        first = platform.instance("auth")
        assert platform.instance("auth") is first, "one process per instance and settings"
        second = platform.instance("auth", 1)
        assert second.url != first.url
        assert httpx.get(f"{first.url}/healthz").json()["status"] == "ok"
        assert httpx.get(f"{second.url}/healthz").json()["status"] == "ok"
    finally:
        platform.close()
    for process in (first, second):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{process.url}/healthz", timeout=2)


def test_l3_keeps_the_defaults_and_the_last_used_idle_instances_and_stops_the_rest(
    apex_worker, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(processes, "KEEP_IDLE", 1)
    platform = ProcessPlatform(apex_worker)
    try:
        default = platform.instance("auth")
        oldest = platform.instance("auth", 1, via_proxy=("redis",))
        platform.reset()  # the next test: it uses another
        newer = platform.instance("auth", 2)
        platform.reset()  # the next: the oldest idle one is not stopped yet (one is kept)
        assert httpx.get(f"{oldest.url}/healthz").status_code == 200
        current = platform.instance("auth", 3)
        platform.reset()  # two idle besides the default: the least recently used goes
        wait_for(lambda: oldest.pid is None, timeout=15, message="the evicted one stopped")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{oldest.url}/healthz", timeout=2)
        with pytest.raises(LookupError, match="no proxy to redis for auth instance 1"):
            platform.proxy("auth", 1, "redis")
        for kept in (default, newer, current):
            assert httpx.get(f"{kept.url}/healthz").status_code == 200
        again = platform.instance("auth", 1, via_proxy=("redis",))
        assert again is not oldest, "asked for again: a new process"
        assert httpx.get(f"{again.url}/healthz").status_code == 200
    finally:
        platform.close()


def test_l3_a_worker_tallies_the_processes_it_started_and_stopped_as_idle(
    apex_worker, monkeypatch: pytest.MonkeyPatch
):
    def tally() -> dict:
        stored = apex_worker.run.read(f"{processes.TALLY}{apex_worker.slot}") or {}
        return {"auth": len(stored.get("started", {}).get("apex.auth", [])),
                "evicted": stored.get("evicted", 0)}  # fmt: skip

    before = tally()
    monkeypatch.setattr(processes, "KEEP_IDLE", 0)
    platform = ProcessPlatform(apex_worker)
    try:
        platform.instance("auth", 1)
        platform.reset()
        platform.instance("auth", 2)
        platform.reset()  # instance 1 is idle: stopped
    finally:
        platform.close()
    assert tally() == {"auth": before["auth"] + 2, "evicted": before["evicted"] + 1}


def test_the_run_summary_adds_up_every_workers_tally(tmp_path: Path):
    run = Run(tmp_path / "run-1-abcd", owner=True)
    run.path.mkdir()
    assert process_summary(run) == []  # no L3 worker ran
    run.store(f"{processes.TALLY}0", {"started": {"apex.auth": [1.0, 0.5], "apex.data": [2.0]},
                                      "warm": {"apex.auth": 1}, "evicted": 2})  # fmt: skip
    run.store(f"{processes.TALLY}1", {"started": {"apex.auth": [0.25]}, "warm": {}, "evicted": 1})
    assert process_summary(run) == [
        "apex.auth: 3 started (1 warm), 1.8 s until healthy (median 0.50 s)",
        "apex.data: 1 started (0 warm), 2.0 s until healthy (median 2.00 s)",
        f"all: 4 processes started (1 warm), 3.8 s until healthy; 3 stopped as idle "
        f"(more than {processes.KEEP_IDLE} per worker)",
    ]


def test_l3_a_later_instance_starts_in_a_warm_spare_with_its_own_settings(apex_worker):
    platform = ProcessPlatform(apex_worker)
    admin = {"Authorization": f"Bearer {platform.admin_token}"}
    try:
        first = platform.instance("auth", 1, APEX_SETTINGS_VERSION="first")
        second = platform.instance("auth", 2, APEX_SETTINGS_VERSION="second")
        assert (first.warm, second.warm) == (False, True)
        assert second.pid not in (None, first.pid)
        for process, version in ((first, "first"), (second, "second")):
            report = httpx.get(f"{process.url}/admin/config", headers=admin, timeout=10).json()
            assert report["settings"]["APEX_SETTINGS_VERSION"] == version
        # The next ones', forked by the module's template and waiting.
        spares = list(platform._spares["apex.auth"])
        assert len(spares) == processes.SPARES
        refs = [ProcessRef.of(spare.pid) for spare in spares]
        template = platform._templates["apex.auth"]
        assert {_parent(ref.pid) for ref in refs} == {template.ref.pid}
        assert second.pid not in {ref.pid for ref in refs}
    finally:
        platform.close()
    for ref in (*refs, template.ref):
        wait_for(lambda r=ref: not r.alive(), timeout=15, message="spare or template ended")
    for process in (first, second):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{process.url}/healthz", timeout=2)


def test_a_spare_whose_template_cannot_import_its_service_is_the_same_clear_error(apex_worker):
    template = SpareTemplate(apex_worker.run, "apex.no_such_service", "selftest-broken-template")
    try:
        spare = template.fork("selftest-broken-spare")
        process = ServiceProcess(apex_worker.run, "apex.no_such_service", {}, "selftest-broken")
        with pytest.raises(RuntimeError) as caught:
            process.start(timeout=30, spare=spare)
        # No spare to take: a plain start, which fails as a service that cannot be imported.
        message = str(caught.value)
        assert "apex.no_such_service (selftest-broken) exited with code 1" in message
        assert "No module named apex.no_such_service" in message
        assert spare.pid is None
        assert "No module named 'apex.no_such_service'" in template.log.read_text()
    finally:
        template.close()
    assert template._process.returncode == 1


def test_l3_a_spare_is_a_process_of_its_own_that_ends_with_its_template(apex_worker):
    template = SpareTemplate(apex_worker.run, "apex.auth", "selftest-template")
    try:
        taken, idle = template.fork("selftest-spare-taken"), template.fork("selftest-spare-idle")
        process = ServiceProcess(
            apex_worker.run, "apex.auth", service_env(apex_worker, "auth"), "selftest-forked"
        )
        process.start(timeout=30, spare=taken)
        assert (process.warm, process.url) == (True, taken.url)
        pid = process.pid
        assert pid is not None
        assert pid != template.ref.pid
        # Its own session (stopped by process group like a spawned service).
        assert os.getsid(pid) == pid
        assert _parent(pid) == template.ref.pid
        assert httpx.get(f"{process.url}/healthz", timeout=10).status_code == 200
        # An ended spare's status is read from /proc: its template never reaps it.
        ref = ProcessRef.of(pid)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not ref.alive(), timeout=10, message="the killed spare ended")
        assert ref.status() == "killed by signal 9 (SIGKILL)"
        idle_ref = ProcessRef.of(idle.pid)
        # The template killed (a worker killed, then its template): its spares end too.
        os.kill(template.ref.pid, signal.SIGKILL)
        wait_for(lambda: not idle_ref.alive(), timeout=10, message="the idle spare ended")
    finally:
        template.close()


def test_a_signal_reaches_the_service_process_the_handle_started(apex_worker):
    platform = ProcessPlatform(apex_worker)
    try:
        process = platform.instance("auth")
        process.send_signal(signal.SIGSTOP)
        with pytest.raises(httpx.TimeoutException):  # frozen: accepted by the kernel, unread
            httpx.get(f"{process.url}/healthz", timeout=1)
        process.send_signal(signal.SIGCONT)
        assert httpx.get(f"{process.url}/healthz", timeout=10).status_code == 200
        for ending in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
            with pytest.raises(ValueError, match=r"stop\(\) or kill\(\)"):
                process.send_signal(ending)
        assert httpx.get(f"{process.url}/healthz", timeout=10).status_code == 200
    finally:
        platform.close()
    with pytest.raises(ProcessLookupError, match="not running"):
        process.send_signal(signal.SIGHUP)


def test_a_signal_never_reaches_a_process_that_reused_the_pid(apex_worker):
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: received.append(number))
    try:
        process = ServiceProcess(apex_worker.run, "apex.auth", {}, "selftest-reused-pid")
        # This test's own PID with another start time: a PID the kernel gave to another process.
        started = start_time(os.getpid())
        assert started is not None
        process._ref = ProcessRef(os.getpid(), started + 1)
        with pytest.raises(ProcessLookupError):
            process.send_signal(signal.SIGUSR1)
        assert received == []
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _stack(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apex_testkit._cli", "stack", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_stack_runs_a_command_against_the_platform(tmp_path: Path):
    target = tmp_path / "target.toml"
    check = (
        "import sys, httpx, tomllib; t = tomllib.load(open(sys.argv[1], 'rb'));"
        "r = httpx.get(t['services']['auth']['url'] + '/healthz');"
        "print('HEALTH', r.status_code); sys.exit(3)"
    )
    done = _stack(
        "--target-out", str(target), "--", sys.executable, "-c", check, str(target), cwd=tmp_path
    )
    assert done.returncode == 3, done.stderr  # the command's exit code, passed through
    assert "HEALTH 200" in done.stdout
    assert "platform ready in" in done.stderr
    assert "stopped and cleaned up" in done.stderr
    loaded = load_target(target)
    assert loaded.admin_token
    # The kit's fakes served as the platform's sandboxes (one per third party the
    # topology names), and went with the stack.
    third_parties = {p.name for s in topology.SERVICES for p in topology.service(s).third_parties}
    assert sorted(loaded.sandboxes) == sorted(third_parties)
    assert {"llm", "llm_fallback", "oidc", "payments", "saml", "sms", "smtp"} <= third_parties
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{loaded.sandboxes['oidc']}/_fake/config", timeout=2)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{loaded.url('auth')}/healthz", timeout=2)


# Against the stack's target: writes in two test namespaces, deletes one, leaves the other.
_LEAVES_ROWS = """
import sys, httpx
from apex_testkit._target import load_target
target = load_target(sys.argv[1])
auth = httpx.Client(
    base_url=target.url("auth"), headers={"Authorization": f"Bearer {target.admin_token}"}
)
def user(email):
    made = auth.post("/admin/users", json={"email": email, "tier": "pro"})
    assert made.status_code == 201, made.text
    return made.json()["id"]
kept = user("kept@sub.kept.invalid")
assert auth.post(f"/admin/users/{kept}/api-keys", json={"name": "k", "scopes": []}).is_success
assert auth.post("/admin/teams", json={"name": "kept.invalid/team"}).status_code == 201
user("gone@gone.invalid")
assert auth.delete("/admin/users", params={"email_domain": "gone.invalid"}).is_success
"""


def test_stack_check_leftovers_fails_a_run_that_left_rows_of_a_test_namespace(tmp_path: Path):
    target, script = tmp_path / "target.toml", tmp_path / "leaves_rows.py"
    script.write_text(_LEAVES_ROWS)
    done = _stack(
        f"--target-out={target}", "--check-leftovers", "--",
        sys.executable, str(script), str(target), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr  # the command passed; what it left fails it
    # The deleted namespace counts nothing; a key goes with its user, counted on its own.
    counts = "(api_keys: 1, teams: 1, users: 1)"
    assert f"the run left rows of test namespaces in the database {counts}" in done.stderr


def test_stack_check_leftovers_needs_a_command(tmp_path: Path):
    done = _stack("--check-leftovers", cwd=tmp_path)
    assert done.returncode == 2
    assert "--check-leftovers needs a COMMAND" in done.stderr


def test_stack_with_bad_services_spec_says_so(tmp_path: Path):
    done = _stack("--services", "redis=podman", "--", "true", cwd=tmp_path)
    assert done.returncode == 2
    assert "bad --services entry 'redis=podman'" in done.stderr


async def test_l2_serves_a_service_on_a_real_socket_kept_running_for_the_worker(apex_worker):
    """A service with the reset hook (apex.auth) is served once per worker and settings:
    the same server for the next test, until the platform closes."""
    platform = InProcessPlatform(apex_worker)
    try:
        async with platform.serve("auth") as url:
            assert url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/healthz")).json()["status"] == "ok"
                jwks = (await client.get("/.well-known/jwks.json")).json()
                assert jwks["keys"][0]["kty"] == "RSA"
        async with platform.serve("auth") as again:
            assert again == url
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200  # between tests too
    finally:
        await asyncio.to_thread(platform.close)
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")


async def test_l2_clients_opened_at_once_share_one_kept_running_server(apex_worker):
    """Two blocks of one test that ask for the worker's apex.auth at the same moment get
    the same server, and closing the platform leaves none running."""
    platform = InProcessPlatform(apex_worker)
    try:
        async with contextlib.AsyncExitStack() as stack:
            urls = await asyncio.gather(
                *(stack.enter_async_context(platform.serve("auth")) for _ in range(2))
            )
            assert urls[0] == urls[1]
            assert len(platform.live.running_apps) == 1
    finally:
        await asyncio.to_thread(platform.close)
    async with httpx.AsyncClient(base_url=urls[0]) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")


async def test_started_instances_are_fresh_and_can_be_stopped_or_killed(apex_worker):
    processes = ProcessPlatform(apex_worker)
    try:
        shared = processes.instance("auth").url
        async with processes.start("auth") as mine, httpx.AsyncClient(timeout=5) as http:
            assert mine.url != shared, "a started instance is the test's own, not the cached one"
            assert (await http.get(f"{mine.url}/healthz")).status_code == 200
            await mine.kill()
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{mine.url}/healthz")
            assert (await http.get(f"{shared}/healthz")).status_code == 200
    finally:
        processes.close()

    in_loop = InProcessPlatform(apex_worker)
    try:
        async with in_loop.start("auth") as served:
            async with httpx.AsyncClient(base_url=served.url) as client:
                assert (await client.get("/healthz")).status_code == 200
            await served.stop()
            with pytest.raises(RuntimeError, match="L3 only"):
                await served.kill()
            async with httpx.AsyncClient(base_url=served.url) as client:
                with pytest.raises(httpx.ConnectError):
                    await client.get("/healthz")
    finally:
        await asyncio.to_thread(in_loop.close)


async def test_l3_an_own_instance_takes_a_warm_spare_and_a_cold_start_none(apex_worker):
    platform = ProcessPlatform(apex_worker)
    admin = {"Authorization": f"Bearer {platform.admin_token}"}
    try:
        platform.instance("auth")
        oldest, newest = platform._spares["apex.auth"]
        async with (
            platform.start("auth", APEX_SETTINGS_VERSION="own") as own,
            httpx.AsyncClient(timeout=10, headers=admin) as http,
        ):
            assert own.url == oldest.url, "the oldest spare became the test's instance"
            report = (await http.get(f"{own.url}/admin/config")).json()
            assert report["settings"]["APEX_SETTINGS_VERSION"] == "own"
            waiting = list(platform._spares["apex.auth"])  # a copy: the pool's list changes
            assert waiting[0] is newest
            assert len(waiting) == processes.SPARES
            async with platform.cold_start("auth", APEX_SETTINGS_VERSION="cold") as cold:
                assert cold.url not in {spare.url for spare in waiting}
                assert platform._spares["apex.auth"] == waiting, "no spare taken"
                report = (await http.get(f"{cold.url}/admin/config")).json()
                assert report["settings"]["APEX_SETTINGS_VERSION"] == "cold"
        assert platform._warm == {"apex.auth": 1}
    finally:
        await asyncio.to_thread(platform.close)


def test_what_a_level_lacks_is_one_clear_error(apex_worker, tmp_path: Path):
    in_loop = InProcessPlatform(apex_worker)
    try:
        level_lacks = r"exists at L3 only, and this run is L2: mark the test"
        with pytest.raises(WrongLevel, match=level_lacks):
            in_loop.instance("auth")
        with pytest.raises(WrongLevel, match=r"fault proxy .* L3 only"):
            in_loop.proxy("auth", 0, "redis")
        with pytest.raises(WrongLevel, match=r"platform.proxied\('auth'\) .* L3 only"):
            in_loop.proxied("auth", 0, "redis")
    finally:
        in_loop.close()
    target = tmp_path / "target.toml"
    target.write_text('[services.auth]\nurl = "http://127.0.0.1:9"\n')
    deployed = DeployedPlatform(load_target(target))
    with pytest.raises(WrongLevel, match=r"platform.start\('auth'\) exists at L2/L3 only"):
        deployed.start("auth")
    with pytest.raises(WrongLevel, match=r"platform.cold_start\('auth'\) exists at L2/L3"):
        deployed.cold_start("auth")
    with pytest.raises(WrongLevel, match=r"reconfiguring auth \(APEX_X\) exists at L2/L3 only"):
        deployed.client("auth", APEX_X="1")
    with pytest.raises(WrongLevel, match="L4: mark the test for L3 only"):
        deployed.require(Level.L3, what="Redis faults")


def test_what_a_fault_proxy_can_stand_in_for_comes_from_the_topology():
    assert set(proxiable("auth")) == {
        *("postgres", "redis", "clickhouse"),
        *("oidc", "saml", "smtp", "sms"),
    }
    assert proxiable("auth")["oidc"] == "APEX_IDP_ISSUER"


def _parent(pid: int) -> int:
    """The parent process id of `pid` (from /proc)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
