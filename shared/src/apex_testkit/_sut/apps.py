"""L2: the apps of a worker, made once per service and settings and reused by later tests.

Making an app is the dear part of an L2 client: FastAPI builds every route's validation
models on the app's first request (0.4 s for apex.auth on this project's 2-core machine).
What a test can change lives in the app's lifespan (pools, Redis clients, caches, the
identity services), and each use of an app from this pool runs its lifespan afresh in the
test's own event loop, so a reused app keeps no state of an earlier test: only its routes,
its middleware and what its settings made (the signing key). An app is used by one client
or server at a time; a second one at once (two instances in one test) gets an app of its
own. (Apps kept running with their lifespan, for services that can reset their memory,
are `apex_testkit._sut.live`'s.)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Generic, TypeVar

# Distinct settings a worker keeps apps for: far more than the suite uses today; past
# it the least recently used settings' apps are dropped (an app holds no connections
# between tests, only memory).
MAX_SETTINGS = 64

T = TypeVar("T")


def make_app(module_name: str, env: Mapping[str, str]) -> Any:
    """A new app of `module_name`: `create_app(load_settings(env))` (the service contract)."""
    module = importlib.import_module(module_name)
    return module.create_app(module.load_settings(dict(env)))


class IdlePool(Generic[T]):
    """Idle things of one worker (apps, listening sockets), by module and settings, for
    one user at a time; past MAX_SETTINGS settings the least recently used ones' are
    dropped (`discard`)."""

    def __init__(self, discard: Callable[[T], None] = lambda _: None) -> None:
        self._idle: dict[tuple[str, tuple[tuple[str, str], ...]], list[T]] = {}
        self._discard = discard

    @contextmanager
    def take(self, module_name: str, env: Mapping[str, str], make: Callable[[], T]) -> Iterator[T]:
        """An idle one of `module_name` with `env` (else `make()`) for this block alone;
        idle again after it unless the block failed (then discarded)."""
        key = (module_name, tuple(sorted(env.items())))
        idle = self._idle.pop(key, [])
        self._idle[key] = idle  # most recently used last
        thing = idle.pop() if idle else make()
        try:
            yield thing
        except BaseException:
            self._discard(thing)
            raise
        self._idle.setdefault(key, []).append(thing)
        while len(self._idle) > MAX_SETTINGS:
            for stale in self._idle.pop(next(iter(self._idle))):
                self._discard(stale)

    def clear(self) -> None:
        """Discard every idle one."""
        idle, self._idle = self._idle, {}
        for things in idle.values():
            for thing in things:
                self._discard(thing)


class AppPool(IdlePool[Any]):
    """Idle apps of one worker, by module and settings."""

    def app(self, module_name: str, env: Mapping[str, str]) -> AbstractContextManager[Any]:
        """An app of `module_name` (`create_app(load_settings(env))`) for this block alone;
        idle again after it unless the block failed (its lifespan may not have ended)."""
        return self.take(module_name, env, lambda: make_app(module_name, env))
