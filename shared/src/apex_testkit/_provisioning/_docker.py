"""The docker provider: testcontainers, when a Docker engine answers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from apex_testkit._provisioning._chain import Unavailable
from apex_testkit._run import Run, register_cleaner

if TYPE_CHECKING:
    import docker


class Container(Protocol):
    """What the kit needs of a testcontainers container."""

    def start(self) -> Any: ...
    def get_container_host_ip(self) -> str: ...
    def get_exposed_port(self, port: int) -> int | str: ...
    def get_wrapped_container(self) -> Any: ...


def engine() -> docker.DockerClient:
    """A client of a Docker engine that answers, or Unavailable (in milliseconds)."""
    try:
        import docker  # noqa: PLC0415 - only needed when the chain reaches docker
    except ImportError:
        raise Unavailable(
            "the 'docker' package is not installed (pip install testcontainers)"
        ) from None
    try:
        client = docker.from_env(timeout=5)
        client.ping()
    except docker.errors.DockerException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Unavailable(f"no Docker engine answers ({first})") from None
    return client


def start(run: Run, name: str, container: Container, port: int) -> tuple[str, int]:
    """Start `container`, record it in the run, return its host and mapped `port`."""
    engine()
    try:
        container.start()
    except Exception as exc:  # noqa: BLE001 - any engine/pull failure means "not here"
        raise Unavailable(f"the container did not start ({exc})") from None
    run.record(name, "container", id=container.get_wrapped_container().id)
    return container.get_container_host_ip(), int(container.get_exposed_port(port))


def _remove(record: dict[str, Any]) -> None:
    import docker  # noqa: PLC0415

    client = docker.from_env(timeout=5)
    try:
        client.containers.get(record["id"]).remove(force=True)
    except docker.errors.NotFound:
        return


register_cleaner("container", _remove)
