"""Which gateway instance a user belongs on: rendezvous (highest random weight) hashing.

Every instance and load balancer computing ``pick_instance`` with the same live set
agrees; when an instance leaves, only the users it owned move, and when one joins it
takes about 1/n of the users from the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["pick_instance"]


def pick_instance(user_id: str, instance_ids: Iterable[str]) -> str:
    """The instance ``user_id`` should connect to; ValueError when there is none."""
    best: tuple[int, str] | None = None
    for instance in instance_ids:
        digest = hashlib.sha256(f"{instance}\x00{user_id}".encode()).digest()
        weight = (int.from_bytes(digest[:8], "big"), instance)
        if best is None or weight > best:
            best = weight
    if best is None:
        raise ValueError("no gateway instance to pick from")
    return best[1]
