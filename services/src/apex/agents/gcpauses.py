"""Garbage-collection pauses of the process, timed with ``gc.callbacks`` (001#85).

:func:`watch_gc` times every collection of the process (from the collector's ``start``
callback to its ``stop``) into a histogram labelled by generation, while its block runs.
A collection holds the GIL and never nests, so one start time is enough. The callbacks
are the process's: an L2 app in a test process counts the test process's collections.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import Histogram

__all__ = ["watch_gc"]


@contextlib.contextmanager
def watch_gc(pauses: Histogram) -> Iterator[None]:
    """Observe each collection's pause into ``pauses`` (label: generation) in the block."""
    started = 0.0

    def callback(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            pauses.labels(str(info["generation"])).observe(time.perf_counter() - started)

    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)
