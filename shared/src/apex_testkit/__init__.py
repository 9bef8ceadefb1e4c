"""apex-testkit: the shared core of the Apex integration-test packages.

A pytest plugin (entry point `pytest11`, loaded automatically once installed) that wires
the platform for a level (L2 in process, L3 as processes, L4 a deployment), provides real
Redis, PostgreSQL and ClickHouse servers with per-worker isolation, fakes of the
platform's third parties, and fault injection. Test packages build their fixtures on the
kit's fixtures (`platform`, `clean_platform`, `fake_idp`, ...) and import only the names
below; every other module of the kit is private and may change in any release.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Public name -> the private module that defines it. Imported on first use, so that a
# test package importing `eventually` does not pay for the SAML fake's XML stack.
_EXPORTS: dict[str, str] = {
    # levels and the platform as the tests see it
    "Level": "apex_testkit._level",
    "Platform": "apex_testkit._sut.platform",
    "RunningService": "apex_testkit._sut.platform",
    "ProxiedService": "apex_testkit._sut.platform",
    "ServiceProcess": "apex_testkit._sut.processes",
    # waiting on conditions with deadlines
    "DeadlineExceeded": "apex_testkit._waiting",
    "eventually": "apex_testkit._waiting",
    "wait_for": "apex_testkit._waiting",
    # what is costly to make, made once per process
    "tls_context": "apex_testkit._tls",
    "rsa_key": "apex_testkit._keys",
    # benchmark reports (tests marked perf)
    "bench_report": "apex_testkit._bench",
    # servers and faults
    "RedisNamespace": "apex_testkit._provisioning.redis",
    "PostgresReplica": "apex_testkit._provisioning.postgres_replica",
    "PostgresPair": "apex_testkit._provisioning.postgres_replica",
    "RedisReplica": "apex_testkit._provisioning.redis_replica",
    "RedisPair": "apex_testkit._provisioning.redis_replica",
    "FaultProxy": "apex_testkit._faults",
    # fakes of third parties
    "FakeIdp": "apex_testkit._fakes.oidc",
    "FakeSamlIdp": "apex_testkit._fakes.saml",
    "WRAPPING_EMAIL": "apex_testkit._fakes.saml",
    "parse_authn_request": "apex_testkit._fakes.saml",
    "Mail": "apex_testkit._fakes.smtp",
    "Mailbox": "apex_testkit._fakes.smtp",
    "FakeSms": "apex_testkit._fakes.sms",
    "FakeLlm": "apex_testkit._fakes.llm",
    "FakeOtelCollector": "apex_testkit._fakes.otel",
    "CollectedSpan": "apex_testkit._fakes.otel",
    "LlmReply": "apex_testkit._fakes.llm_script",
    "LlmRequest": "apex_testkit._fakes.llm_script",
    "ToolCall": "apex_testkit._fakes.llm_script",
    "count_tokens": "apex_testkit._fakes.llm_tokens",
    "prompt_tokens": "apex_testkit._fakes.llm_tokens",
    "completion_tokens": "apex_testkit._fakes.llm_tokens",
    "embedding_tokens": "apex_testkit._fakes.llm_tokens",
    "FakePayments": "apex_testkit._fakes.payments",
    "WebhookDelivery": "apex_testkit._fakes.payments",
    "stripe_signature": "apex_testkit._fakes.payments",
}

__all__ = [
    "WRAPPING_EMAIL",
    "CollectedSpan",
    "DeadlineExceeded",
    "FakeIdp",
    "FakeLlm",
    "FakeOtelCollector",
    "FakePayments",
    "FakeSamlIdp",
    "FakeSms",
    "FaultProxy",
    "Level",
    "LlmReply",
    "LlmRequest",
    "Mail",
    "Mailbox",
    "Platform",
    "PostgresPair",
    "PostgresReplica",
    "ProxiedService",
    "RedisNamespace",
    "RedisPair",
    "RedisReplica",
    "RunningService",
    "ServiceProcess",
    "ToolCall",
    "WebhookDelivery",
    "__version__",
    "bench_report",
    "completion_tokens",
    "count_tokens",
    "embedding_tokens",
    "eventually",
    "parse_authn_request",
    "prompt_tokens",
    "rsa_key",
    "stripe_signature",
    "tls_context",
    "wait_for",
]

if TYPE_CHECKING:
    from apex_testkit._bench import bench_report
    from apex_testkit._fakes.llm import FakeLlm
    from apex_testkit._fakes.llm_script import LlmReply, LlmRequest, ToolCall
    from apex_testkit._fakes.llm_tokens import (
        completion_tokens,
        count_tokens,
        embedding_tokens,
        prompt_tokens,
    )
    from apex_testkit._fakes.oidc import FakeIdp
    from apex_testkit._fakes.otel import CollectedSpan, FakeOtelCollector
    from apex_testkit._fakes.payments import FakePayments, WebhookDelivery, stripe_signature
    from apex_testkit._fakes.saml import WRAPPING_EMAIL, FakeSamlIdp, parse_authn_request
    from apex_testkit._fakes.sms import FakeSms
    from apex_testkit._fakes.smtp import Mail, Mailbox
    from apex_testkit._faults import FaultProxy
    from apex_testkit._keys import rsa_key
    from apex_testkit._level import Level
    from apex_testkit._provisioning.postgres_replica import PostgresPair, PostgresReplica
    from apex_testkit._provisioning.redis import RedisNamespace
    from apex_testkit._provisioning.redis_replica import RedisPair, RedisReplica
    from apex_testkit._sut.platform import Platform, ProxiedService, RunningService
    from apex_testkit._sut.processes import ServiceProcess
    from apex_testkit._tls import tls_context
    from apex_testkit._waiting import DeadlineExceeded, eventually, wait_for


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'apex_testkit' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
