"""003 cross-service config consistency: every service started from one environment
resolves the same shared configuration, and a service given another one is named.

The rules under test (contract-data.md, Cross-service configuration): each service
answers `GET /admin/config` (admin token) with the shared settings it runs with, secrets
as fingerprints only; `apex.stack.consistency.check_services` compares the services'
reports and raises `ConfigMismatch` naming each setting they disagree on, its values
and which services see each. The services run as processes (L3), all of them started by
the test from one environment (`platform_set.started_services`).
"""

from __future__ import annotations

import asyncio

import pytest

from apex import topology
from apex.common.shared_config import fingerprint
from apex.stack.consistency import ConfigMismatch, check_services
from apex_testkit import Platform
from db_tests.platform_set import started_services

CONSISTENCY = pytest.mark.bvj(
    segment="platform", goal="Every service runs with the configuration the operator set",
    mrr=50000, scenario="003:cross-service config consistency",
)  # fmt: skip
pytestmark = [CONSISTENCY, pytest.mark.L3]

VERSION = "003-consistency"


async def test_services_started_from_one_environment_agree(
    clean_platform: Platform, postgres_database: str, admin_token: str
) -> None:
    async with started_services(clean_platform, {"APEX_SETTINGS_VERSION": VERSION}) as services:
        reports = await asyncio.to_thread(check_services, services.http_urls, admin_token)
        auth_url = services.http_urls["auth"]
    assert set(reports) == set(topology.SERVICES)
    for name, report in reports.items():
        shown = report["settings"]
        # What each resolved is the environment's value, not merely the same as the others'.
        assert shown["APEX_SETTINGS_VERSION"] == VERSION, (name, shown)
        assert shown["APEX_DATABASE_URL"] == fingerprint(postgres_database), (name, shown)
        assert shown["APEX_ADMIN_TOKEN"] == fingerprint(admin_token), (name, shown)
        assert postgres_database not in str(report)
        assert admin_token not in str(report)
    # Each caller of auth was told where the set's auth is (the topology's `calls`).
    callers = [name for name, service in topology.SERVICES.items() if "auth" in service.calls]
    assert callers
    for name in callers:
        assert reports[name]["settings"]["APEX_AUTH_URL"] == auth_url


async def test_a_service_given_another_issuer_is_named(
    clean_platform: Platform, admin_token: str
) -> None:
    rogue = {"gateway": {"APEX_JWT_ISSUER": "rogue-issuer"}}
    async with started_services(clean_platform, per_service=rogue) as services:
        with pytest.raises(ConfigMismatch) as raised:
            await asyncio.to_thread(check_services, services.http_urls, admin_token)
    message = str(raised.value)
    agreeing = ", ".join(name for name in services.running if name != "gateway")
    assert f"APEX_JWT_ISSUER differs: {agreeing} see 'apex-auth'; gateway sees 'rogue-issuer'" in (
        message
    )
    # Only the setting that differs is named.
    assert message.count(" differs: ") == 1, message


async def test_a_service_on_another_database_is_named(
    clean_platform: Platform, empty_database: str, admin_token: str
) -> None:
    other = {"data": {"APEX_DATABASE_URL": empty_database}}
    async with started_services(clean_platform, per_service=other) as services:
        with pytest.raises(ConfigMismatch) as raised:
            await asyncio.to_thread(check_services, services.http_urls, admin_token)
    message = str(raised.value)
    agreeing = ", ".join(name for name in services.running if name != "data")
    assert f"APEX_DATABASE_URL differs: {agreeing} see 'sha256:" in message
    assert f"data sees '{fingerprint(empty_database)}'" in message
    assert empty_database not in message
    assert message.count(" differs: ") == 1, message
