"""001#50 caching strategy and 002#15 LLM response caching in Redis: an identical request
is answered from Redis without a provider call and costs nothing.

The rules under test (contract-agents.md § Behaviours "Response cache", notes-agents.md §
Context, quality gate and response cache): runs ask at temperature 0 (the built-in
agents' definitions), and only temperature 0 requests are cached; the key is
`<prefix>agents:cache:<sha256>`, the hex SHA-256 of the compact JSON with sorted keys
of `{model, messages (content whitespace-trimmed), tools (null without), temperature,
max_tokens}`; an entry lives APEX_LLM_CACHE_TTL seconds (0: off); only answers that
passed the quality gate are written; `cache: false` on `POST /v1/runs` neither reads nor
writes; a hit makes no provider call, reports usage 0/0 and cost 0, `cached: true` and
`provider_path` `["cache"]`. At L3 the cache is shared by every process on the prefix,
and an emptied Redis is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import httpx
import pytest

from agent_tests.client import (
    READ_RUNS,
    RUN_AGENTS,
    AgentUser,
    MakeUser,
    OpenAgents,
    admin_headers,
    final_run,
    run_body,
    submit,
)
from apex_testkit import FakeLlm, LlmRequest, Platform, RedisNamespace, eventually

CACHING = pytest.mark.bvj(
    segment="enterprise", goal="An identical question is answered again without paying twice",
    mrr=7000, scenario="001#50",
)  # fmt: skip
REDIS_CACHE = pytest.mark.bvj(
    segment="enterprise", goal="LLM answers cached in Redis serve every worker process",
    mrr=100000, scenario="002#15",
)  # fmt: skip
pytestmark = [CACHING]

ANSWER = "Paris is the capital of France."


@pytest.fixture
async def runner(make_agent_user: MakeUser) -> AgentUser:
    return await make_agent_user(permissions=(RUN_AGENTS, READ_RUNS))


@pytest.fixture
def prefix(redis_namespace: RedisNamespace) -> str:
    """A Redis prefix of this test's own (no other instance's jobs or entries)."""
    return f"{redis_namespace.prefix}cache-{uuid.uuid4().hex[:8]}:"


def chat_calls(fake_llm: FakeLlm) -> list[LlmRequest]:
    return [c for c in fake_llm.calls if c.path.endswith("/chat/completions")]


def cache_key(prefix: str, call: LlmRequest) -> str:
    """The notes' key of the request the fake received."""
    sent = call.json
    normal = {
        "model": sent["model"],
        "messages": [{**m, "content": m["content"].strip()} for m in sent["messages"]],
        "tools": sent.get("tools"),
        "temperature": 0,  # the only temperature cached, written as the number 0
        "max_tokens": sent["max_tokens"],
    }
    text = json.dumps(normal, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{prefix}agents:cache:{hashlib.sha256(text.encode()).hexdigest()}"


def cache_keys(redis_namespace: RedisNamespace, prefix: str) -> list[str]:
    redis = redis_namespace.client()
    try:
        return sorted(redis.scan_iter(match=f"{prefix}agents:cache:*"))
    finally:
        redis.close()


def assert_from_cache(run: dict[str, Any], answer: str = ANSWER) -> None:
    assert (run["status"], run["result"], run["cached"]) == ("succeeded", answer, True), run
    assert run["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}
    assert (run["cost_micros"], run["provider_path"]) == (0, ["cache"])


async def metric_lines(client: httpx.AsyncClient, admin_token: str, name: str) -> set[str]:
    """The samples of one counter in `/metrics`."""
    response = await client.get("/metrics", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    return {line for line in response.text.splitlines() if line.startswith(f"{name}{{")}


async def run_of(client: httpx.AsyncClient, user: AgentUser, **fields: Any) -> dict[str, Any]:
    return await final_run(client, user, await submit(client, user, **fields))


@pytest.mark.L2
@pytest.mark.L3
async def test_a_second_identical_run_is_answered_from_the_cache(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    redis_namespace: RedisNamespace,
    prefix: str,
    admin_token: str,
) -> None:
    client = await agents_with(APEX_REDIS_PREFIX=prefix)
    fake_llm.reply(ANSWER)
    first = await run_of(client, runner)
    assert (first["status"], first["cached"], first["provider_path"]) == (
        "succeeded", False, ["llm"],
    )  # fmt: skip
    assert first["cost_micros"] > 0
    (call,) = chat_calls(fake_llm)
    assert call.json["temperature"] == 0
    assert cache_keys(redis_namespace, prefix) == [cache_key(prefix, call)]
    second = await run_of(client, runner)
    assert_from_cache(second)
    assert len(chat_calls(fake_llm)) == 1
    assert await metric_lines(client, admin_token, "apex_agents_cache_total") == {
        'apex_agents_cache_total{result="miss"} 1.0',
        'apex_agents_cache_total{result="hit"} 1.0',
    }


@pytest.mark.L2
async def test_an_input_differing_only_in_surrounding_whitespace_hits(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, prefix: str
) -> None:
    client = await agents_with(APEX_REDIS_PREFIX=prefix)
    fake_llm.reply(ANSWER)
    await run_of(client, runner, input="What is the capital of France?")
    assert_from_cache(await run_of(client, runner, input="\n  What is the capital of France?\t "))
    assert len(chat_calls(fake_llm)) == 1


@pytest.mark.L2
async def test_a_different_request_misses(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, prefix: str
) -> None:
    client = await agents_with(APEX_REDIS_PREFIX=prefix)
    fake_llm.reply(ANSWER, "Berlin.", '{"city": "Paris", "country": "France"}')
    await run_of(client, runner, input="What is the capital of France?")
    other_input = await run_of(client, runner, input="What is the capital of Germany?")
    assert (other_input["result"], other_input["cached"]) == ("Berlin.", False)
    # Another agent (another system message) with the same input: another request.
    other_agent = await run_of(client, runner, agent="extractor",
                               input="What is the capital of France?")  # fmt: skip
    assert other_agent["cached"] is False
    assert len(chat_calls(fake_llm)) == 3


@pytest.mark.L2
async def test_cache_false_neither_reads_nor_writes(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    redis_namespace: RedisNamespace,
    prefix: str,
) -> None:
    client = await agents_with(APEX_REDIS_PREFIX=prefix)
    fake_llm.reply("first", "second", "third")
    bypassed = await run_of(client, runner, cache=False)
    assert (bypassed["result"], bypassed["cached"]) == ("first", False)
    assert cache_keys(redis_namespace, prefix) == []  # not written
    cached = await run_of(client, runner)  # a miss: the bypass wrote nothing
    assert (cached["result"], cached["cached"]) == ("second", False)
    again = await run_of(client, runner, cache=False)  # not read, though an entry exists
    assert (again["result"], again["cached"]) == ("third", False)
    assert len(chat_calls(fake_llm)) == 3
    assert_from_cache(await run_of(client, runner), "second")


@pytest.mark.L2
async def test_an_invalid_cache_flag_is_422(
    agents_client: httpx.AsyncClient, runner: AgentUser, fake_llm: FakeLlm, agents_db: Any
) -> None:
    body = run_body(cache="sometimes")
    response = await agents_client.post("/v1/runs", json=body, headers=runner.headers)
    assert response.status_code == 422, response.text
    assert await agents_db.fetchval("SELECT count(*) FROM agent_runs") == 0


@pytest.mark.L2
async def test_an_entry_expires_after_the_ttl(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    redis_namespace: RedisNamespace,
    prefix: str,
) -> None:
    client = await agents_with(APEX_REDIS_PREFIX=prefix, APEX_LLM_CACHE_TTL="0.5")
    fake_llm.reply("before", "after")
    await run_of(client, runner)
    assert len(cache_keys(redis_namespace, prefix)) == 1

    async def expired() -> bool:
        return cache_keys(redis_namespace, prefix) == []

    await eventually(expired, timeout=10, message="the cache entry expired")
    run = await run_of(client, runner)
    assert (run["result"], run["cached"]) == ("after", False)
    assert len(chat_calls(fake_llm)) == 2


@pytest.mark.L2
async def test_a_ttl_of_0_turns_the_cache_off(
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    redis_namespace: RedisNamespace,
    prefix: str,
) -> None:
    client = await agents_with(APEX_REDIS_PREFIX=prefix, APEX_LLM_CACHE_TTL="0")
    fake_llm.reply("one", "two")
    assert (await run_of(client, runner))["result"] == "one"
    assert (await run_of(client, runner))["result"] == "two"
    assert cache_keys(redis_namespace, prefix) == []


@pytest.mark.L2
async def test_an_answer_the_quality_gate_rejected_is_not_cached(
    agents_with: OpenAgents, runner: AgentUser, fake_llm: FakeLlm, prefix: str, admin_token: str
) -> None:
    client = await agents_with(APEX_REDIS_PREFIX=prefix, APEX_QUALITY_RETRIES="0")
    fake_llm.reply("I cannot answer that.", ANSWER)
    assert (await run_of(client, runner))["status"] == "rejected"
    run = await run_of(client, runner)
    assert (run["status"], run["result"], run["cached"]) == ("succeeded", ANSWER, False)
    assert len(chat_calls(fake_llm)) == 2
    assert await metric_lines(client, admin_token, "apex_agents_quality_total") == {
        'apex_agents_quality_total{verdict="failed"} 1.0',
        'apex_agents_quality_total{verdict="passed"} 1.0',
    }


@REDIS_CACHE
@pytest.mark.L3
async def test_the_cache_is_shared_by_worker_processes_and_a_flush_only_misses(
    clean_platform: Platform,
    agents_with: OpenAgents,
    runner: AgentUser,
    fake_llm: FakeLlm,
    redis_namespace: RedisNamespace,
    prefix: str,
) -> None:
    queue = {"APEX_REDIS_PREFIX": prefix}
    api = await agents_with(APEX_AGENTS_WORKERS="0", **queue)  # takes no jobs itself
    workers = {**queue, "APEX_AGENTS_WORKERS": "1"}
    fake_llm.reply(ANSWER, "after the flush")
    async with clean_platform.start("agents", **workers):
        first = await run_of(api, runner)
    assert (first["result"], first["cached"]) == (ANSWER, False)
    # Another process: its memory never saw the answer; Redis did.
    async with clean_platform.start("agents", **workers):
        assert_from_cache(await run_of(api, runner))
        assert len(chat_calls(fake_llm)) == 1
        redis_namespace.reset()  # every key gone: the jobs' streams and the cache
        after = await run_of(api, runner)
        assert (after["status"], after["result"], after["cached"]) == (
            "succeeded", "after the flush", False,
        )  # fmt: skip
    assert len(chat_calls(fake_llm)) == 2
