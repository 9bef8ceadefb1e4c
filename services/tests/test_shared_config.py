"""The shared configuration report of every service and the comparison of several
(apex.common.shared_config): secrets only as fingerprints, each disagreement named with
its setting, its values and the services that see each."""

from __future__ import annotations

import pytest

from apex.common.settings import ServiceSettings
from apex.common.shared_config import (
    ConfigMismatch,
    check_reports,
    config_report,
    fingerprint,
    mismatches,
)
from apex.data.settings import DataSettings

ENV = {
    "APEX_DATABASE_URL": "postgresql://apex:hunter2@db:5432/apex",
    "APEX_REDIS_URL": "redis://:hunter2@cache:6379/0",
    "APEX_AUTH_URL": "http://auth:8000",
    "APEX_ADMIN_TOKEN": "secret-admin-token",
    "APEX_SETTINGS_VERSION": "2026-12-06.1",
}


def test_the_report_shows_secrets_only_as_fingerprints() -> None:
    report = config_report("apex.data", DataSettings.from_env(ENV))
    assert report["service"] == "apex.data"
    shown = report["settings"]
    assert "hunter2" not in repr(report)
    assert "secret-admin-token" not in repr(report)
    assert shown["APEX_DATABASE_URL"] == fingerprint(ENV["APEX_DATABASE_URL"])
    assert shown["APEX_ADMIN_TOKEN"] == fingerprint(ENV["APEX_ADMIN_TOKEN"])
    assert shown["APEX_JWT_ISSUER"] == "apex-auth"
    assert shown["APEX_AUTH_URL"] == "http://auth:8000"
    assert shown["APEX_SETTINGS_VERSION"] == "2026-12-06.1"


def test_a_setting_a_service_does_not_have_is_not_reported() -> None:
    shown = config_report("base", ServiceSettings.from_env({}))["settings"]
    assert "APEX_AUTH_URL" not in shown
    assert "APEX_ADMIN_TOKEN" not in shown
    assert shown["APEX_DATABASE_URL"] is None
    assert shown["APEX_SETTINGS_VERSION"] is None


def test_fingerprints_tell_values_apart() -> None:
    assert fingerprint("a") == fingerprint("a")
    assert fingerprint("a") != fingerprint("b")
    assert fingerprint("a").startswith("sha256:")


def test_services_that_agree_pass() -> None:
    report = config_report("x", DataSettings.from_env(ENV))
    check_reports({"auth": report, "gateway": report, "data": report})


def test_a_mismatch_names_the_setting_the_values_and_the_services() -> None:
    same = config_report("x", DataSettings.from_env(ENV))
    other = config_report("x", DataSettings.from_env({**ENV, "APEX_JWT_ISSUER": "rogue"}))
    with pytest.raises(ConfigMismatch) as raised:
        check_reports({"auth": same, "gateway": same, "data": other})
    message = str(raised.value)
    assert "APEX_JWT_ISSUER differs: auth, gateway see 'apex-auth'; data sees 'rogue'" in message
    assert "APEX_DATABASE_URL" not in message


def test_unset_on_one_side_is_a_mismatch() -> None:
    with_token = config_report("x", DataSettings.from_env(ENV))
    env = {k: v for k, v in ENV.items() if k != "APEX_ADMIN_TOKEN"}
    without = config_report("x", DataSettings.from_env(env))
    lines = mismatches({"auth": with_token, "data": without})
    assert len(lines) == 1
    assert lines[0].startswith("APEX_ADMIN_TOKEN differs: auth sees 'sha256:")
    assert lines[0].endswith("data sees unset")


def test_a_setting_only_one_service_has_is_not_compared() -> None:
    data = config_report("x", DataSettings.from_env(ENV))
    base = config_report("y", ServiceSettings.from_env({k: ENV[k] for k in list(ENV)[:2]}))
    lines = mismatches({"auth": base, "data": data})
    assert not any(line.startswith("APEX_AUTH_URL") for line in lines)
    assert any(line.startswith("APEX_SETTINGS_VERSION") for line in lines)
