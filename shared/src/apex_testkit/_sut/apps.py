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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

# Distinct settings a worker keeps apps for: far more than the suite uses today; past
# it the least recently used settings' apps are dropped (an app holds no connections
# between tests, only memory).
MAX_SETTINGS = 64


def make_app(module_name: str, env: Mapping[str, str]) -> Any:
    """A new app of `module_name`: `create_app(load_settings(env))` (the service contract)."""
    module = importlib.import_module(module_name)
    return module.create_app(module.load_settings(dict(env)))


class AppPool:
    """Idle apps of one worker, by module and settings."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]] = {}

    @contextmanager
    def app(self, module_name: str, env: Mapping[str, str]) -> Iterator[Any]:
        """An app of `module_name` (`create_app(load_settings(env))`) for this block alone;
        idle again after it unless the block failed (its lifespan may not have ended)."""
        key = (module_name, tuple(sorted(env.items())))
        idle = self._idle.pop(key, [])
        self._idle[key] = idle  # most recently used last
        app = idle.pop() if idle else make_app(module_name, env)
        yield app
        self._idle.setdefault(key, []).append(app)
        while len(self._idle) > MAX_SETTINGS:
            del self._idle[next(iter(self._idle))]

    def clear(self) -> None:
        """Forget every idle app."""
        self._idle.clear()
