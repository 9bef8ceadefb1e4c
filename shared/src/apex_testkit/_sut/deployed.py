"""L4: a running deployment, named by the --target file; nothing is started, reconfigured,
reset or stopped (the level checks of `Platform` refuse what a deployment cannot do)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httpx

from apex_testkit._level import Level
from apex_testkit._sut.platform import Platform
from apex_testkit._target import Target
from apex_testkit._tls import tls_context


class DeployedPlatform(Platform):
    """L4: one URL per service (its load balancer picks the instance)."""

    level = Level.L4

    def __init__(self, target: Target) -> None:
        self.target = target

    @property
    def admin_token(self) -> str:
        return self.target.require_admin_token()

    @asynccontextmanager
    async def _client(
        self, service: str, instance: int, settings: Mapping[str, str]
    ) -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(
            base_url=self.target.url(service), timeout=30, verify=tls_context()
        ) as client:
            yield client

    @asynccontextmanager
    async def _serve(
        self, service: str, instance: int, settings: Mapping[str, str]
    ) -> AsyncIterator[str]:
        yield self.target.url(service)
