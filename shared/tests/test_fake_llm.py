"""The LLM fake, held to the official `openai` SDKs: Python (sync and async) and Node.

What each scripted fault reaches the Python SDK as, checked against the SDK itself:
429 -> RateLimitError (retried after `retry-after-ms` when max_retries > 0), 500 and 503
-> InternalServerError, a hang -> APITimeoutError, a cut connection -> APIConnectionError
(streaming or not), malformed JSON -> json.JSONDecodeError (the SDK does not wrap it).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from conftest import finish, inner_env

from apex import topology
from apex_testkit import (
    FakeLlm,
    LlmReply,
    LlmRequest,
    ToolCall,
    completion_tokens,
    count_tokens,
    embedding_tokens,
    prompt_tokens,
    wait_for,
)
from apex_testkit._fakes import attach, start
from apex_testkit._fakes.llm import embedding
from apex_testkit._level import Level
from apex_testkit._sandboxes import fake_of
from apex_testkit._sut.wiring import party_env
from apex_testkit._target import load_target

MODEL = "gpt-4o-mini"
USER = [{"role": "user", "content": "Hello, world! How are you?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _client(fake: FakeLlm, **options) -> openai.OpenAI:
    options.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=fake.base_url, api_key=fake.api_key, **options)


def _async_client(fake: FakeLlm, **options) -> openai.AsyncOpenAI:
    options.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, **options)


def test_the_estimator_is_the_documented_rule():
    assert count_tokens("Hello, world!") == 4
    assert count_tokens("  ") == 0
    # 3 + role + content per message, + 3 priming the reply.
    assert prompt_tokens(USER) == 3 + 1 + count_tokens(USER[0]["content"]) + 3
    named = [{"role": "user", "name": "ada", "content": "hi"}]
    assert prompt_tokens(named) == 3 + 1 + 1 + (1 + 1) + 3
    call = {"function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    assert completion_tokens(None, [call]) == 1 + count_tokens('{"city":"Paris"}')
    assert embedding_tokens(["a b", [1, 2, 3]]) == 5


# -- chat completions ---------------------------------------------------------------------


def test_the_sdk_gets_an_answer_with_exact_usage_and_the_log_has_the_request(fake_llm):
    fake_llm.reply("Fine, thanks.")
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    raw = _client(fake_llm).chat.completions.with_raw_response.create(
        model=MODEL, messages=USER, extra_headers={"traceparent": traceparent}
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content) == ("assistant", "Fine, thanks.")
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens == prompt_tokens(USER)
    assert completion.usage.completion_tokens == count_tokens("Fine, thanks.") == 4
    assert completion.usage.total_tokens == prompt_tokens(USER) + 4
    assert raw.headers["x-ratelimit-remaining-requests"].isdigit()
    assert raw.headers["x-request-id"].startswith("req_")

    [call] = fake_llm.calls
    assert (call.path, call.model, call.messages, call.stream) == (
        "/v1/chat/completions",
        MODEL,
        USER,
        False,
    )
    assert call.traceparent == traceparent
    assert call.headers["authorization"] == f"Bearer {fake_llm.api_key}"
    assert call.status == 200

    # Unscripted: a default answer naming the question.
    default = _client(fake_llm).chat.completions.create(model=MODEL, messages=USER)
    assert default.choices[0].message.content == "Fake answer to: " + USER[0]["content"]


def test_the_fallback_fake_is_a_second_llm_fake_of_its_own(fake_llm, fake_llm_fallback):
    """`fake_llm_fallback` (apex.agents' `llm_fallback`) is another server, with its own
    script and request log, wired into the agents service's fallback settings."""
    assert fake_llm_fallback.base_url != fake_llm.base_url
    assert fake_llm_fallback.api_key != fake_llm.api_key
    fake_llm.reply("from the primary")
    fake_llm_fallback.reply("from the fallback")
    answer = _client(fake_llm_fallback).chat.completions.create(model=MODEL, messages=USER)
    assert answer.choices[0].message.content == "from the fallback"
    assert [c.status for c in fake_llm_fallback.calls] == [200]
    assert fake_llm.calls == []
    party = topology.service("agents").third_party("llm_fallback")
    assert party_env("agents", party, fake_llm_fallback) == {
        "APEX_LLM_FALLBACK_BASE_URL": fake_llm_fallback.base_url,
        "APEX_LLM_FALLBACK_API_KEY": fake_llm_fallback.api_key,
    }


def test_the_sdk_streams_chunks_a_usage_chunk_and_done(fake_llm):
    fake_llm.reply("One two three.")
    stream = _client(fake_llm).chat.completions.create(
        model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "One two three."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens(USER), 4)
    assert all(c.usage is None for c in chunks[:-1])

    # On the wire: `data: {json}` events, the last `data: [DONE]`; no usage unasked.
    wire = httpx.post(
        f"{fake_llm.base_url}/chat/completions",
        json={"model": MODEL, "messages": USER, "stream": True},
        headers={"Authorization": f"Bearer {fake_llm.api_key}"},
    )
    assert wire.headers["content-type"].startswith("text/event-stream")
    events = [e for e in wire.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in last


def test_tool_calls_streamed_and_not(fake_llm):
    call = ToolCall("get_weather", {"city": "Paris"})
    fake_llm.reply(LlmReply(tool_calls=[call]), LlmReply(tool_calls=[call]), "It is sunny.")
    client = _client(fake_llm)
    first = client.chat.completions.create(model=MODEL, messages=USER, tools=[WEATHER_TOOL])
    [made] = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    assert first.choices[0].message.content is None
    assert (made.type, made.function.name) == ("function", "get_weather")
    assert json.loads(made.function.arguments) == {"city": "Paris"}
    assert made.id.startswith("call_")
    assert first.usage.prompt_tokens == prompt_tokens(USER, [WEATHER_TOOL])
    assert first.usage.completion_tokens == completion_tokens(None, [made.model_dump()])

    # The SDK's stream helper puts the tool call's delta chunks back together.
    with client.chat.completions.stream(model=MODEL, messages=USER, tools=[WEATHER_TOOL]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    [streamed] = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert (streamed.function.name, json.loads(streamed.function.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )

    # The tool's result goes back; the next answer reads it.
    history = [
        *USER,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": made.id, "content": '{"sky": "clear"}'},
    ]
    answer = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == "It is sunny."
    assert fake_llm.calls[-1].messages[2]["tool_call_id"] == made.id


def test_scripted_latency_delays_answers_and_chunks(fake_llm):
    fake_llm.set_latency(0.2, chunk_delay=0.05)
    fake_llm.reply(LlmReply("a b c", delay=0.1))
    stream = _client(fake_llm).chat.completions.create(model=MODEL, messages=USER, stream=True)
    chunks = list(stream)
    ended = time.time()
    # A lower bound only: the fake waited at least what it was told (0.1 + 0.2 before
    # the first chunk, 0.05 before each next event, `[DONE]` included).
    assert ended - fake_llm.calls[0].time >= 0.3 + 0.05 * len(chunks)
    with pytest.raises(ValueError, match=">= 0"):
        fake_llm.set_latency(-1)


def test_max_tokens_cuts_the_answer_with_finish_reason_length(fake_llm):
    fake_llm.reply("a b c d e f")
    answer = _client(fake_llm).chat.completions.create(
        model=MODEL, messages=USER, max_completion_tokens=3
    )
    assert answer.choices[0].message.content == "a b c"
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 3


def test_a_responder_answers_from_the_request_and_its_failure_is_a_500(fake_llm):
    seen: list[LlmRequest] = []

    def respond(request: LlmRequest) -> LlmReply | str:
        seen.append(request)
        if request.last_user_text == "weather?":
            return LlmReply(tool_calls=[ToolCall("get_weather", '{"city": "Oslo"}')])
        if request.last_user_text == "boom":
            raise RuntimeError("the responder broke")
        return request.last_user_text.upper()

    fake_llm.reply("queued first")
    fake_llm.respond_with(respond)
    client = _client(fake_llm)

    def ask(text: str):
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}]
        )

    assert ask("x").choices[0].message.content == "queued first"
    assert ask("shout").choices[0].message.content == "SHOUT"
    tool = ask("weather?").choices[0].message.tool_calls[0]
    assert tool.function.arguments == '{"city": "Oslo"}', "a string is sent as is"
    with pytest.raises(openai.InternalServerError, match="the responder broke"):
        ask("boom")
    assert [r.last_user_text for r in seen] == ["shout", "weather?", "boom"]
    fake_llm.respond_with(None)
    assert ask("again").choices[0].message.content == "Fake answer to: again"


async def test_the_async_sdk_answers_streams_and_embeds(fake_llm):
    fake_llm.reply("async answer", "streamed answer")
    client = _async_client(fake_llm)
    answer = await client.chat.completions.create(model=MODEL, messages=USER)
    assert answer.choices[0].message.content == "async answer"
    stream = await client.chat.completions.create(
        model=MODEL, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "streamed answer"
    )
    assert chunks[-1].usage.completion_tokens == 2
    vectors = await client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert vectors.data[0].embedding == embedding("text-embedding-3-small", "hello", 1536)
    models = [m.id async for m in client.models.list()]
    assert MODEL in models
    fake_llm.fail_next(503)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=MODEL, messages=USER)
    assert caught.value.status_code == 503
    await client.close()


# -- embeddings and models ----------------------------------------------------------------


def test_embeddings_are_deterministic_unit_vectors_in_both_encodings(fake_llm):
    client = _client(fake_llm)
    model = "text-embedding-3-small"
    # No encoding_format: the SDK asks for base64 and decodes it.
    default = client.embeddings.create(model=model, input=["the cat", "the dog"])
    assert [d.index for d in default.data] == [0, 1]
    cat, dog = (d.embedding for d in default.data)
    assert len(cat) == 1536
    assert cat != dog
    assert abs(sum(v * v for v in cat) - 1) < 1e-5
    floats = client.embeddings.create(model=model, input="the cat", encoding_format="float")
    assert floats.data[0].embedding == cat
    assert default.usage.prompt_tokens == default.usage.total_tokens == 4
    short = client.embeddings.create(model=model, input="the cat", dimensions=8)
    assert len(short.data[0].embedding) == 8
    raw = client.embeddings.create(model=model, input="the cat", encoding_format="base64")
    packed = base64.b64decode(raw.data[0].embedding)
    assert list(struct.unpack("<1536f", packed)) == cat
    tokens = client.embeddings.create(model=model, input=[[1, 2, 3]])
    assert tokens.usage.prompt_tokens == 3
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=model, input="")
    assert bad.value.param == "input"


def test_models_and_the_errors_in_openais_shape(fake_llm):
    client = _client(fake_llm)
    assert {m.id for m in client.models.list()} >= {MODEL, "gpt-4o", "text-embedding-3-small"}
    assert client.models.retrieve("gpt-4o").owned_by == "system"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-0")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-0", messages=USER)
    assert unknown.value.body == {
        "message": "The model `gpt-0` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(
            base_url=fake_llm.base_url, api_key="sk-wrong-key", max_retries=0
        ).chat.completions.create(model=MODEL, messages=USER)
    assert (refused.value.status_code, refused.value.code) == (401, "invalid_api_key")
    assert set(refused.value.body) == {"message", "type", "param", "code"}
    no_key = httpx.get(f"{fake_llm.base_url}/models")
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad_role:
        client.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "x"}])
    assert (bad_role.value.param, bad_role.value.code) == ("messages[0].role", "invalid_value")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    fake_llm.add_model("tiny", context_window=12)
    assert fake_llm.models["tiny"] == ("chat", 12, 0)
    with pytest.raises(openai.BadRequestError) as overflow:
        client.chat.completions.create(model="tiny", messages=USER)
    assert overflow.value.code == "context_length_exceeded"
    assert str(prompt_tokens(USER)) in overflow.value.message
    assert fake_llm.calls[-1].status == 400


# -- scripted faults ----------------------------------------------------------------------


def test_429_is_a_rate_limit_error_and_its_retry_after_is_honoured(fake_llm):
    fake_llm.fail_next(429, retry_after=0.3)
    with pytest.raises(openai.RateLimitError) as limited:
        _client(fake_llm).chat.completions.create(model=MODEL, messages=USER)
    headers = limited.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("1", "300")
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.value.code == "rate_limit_exceeded"

    fake_llm.reset()
    fake_llm.fail_next(429, retry_after=0.3)
    answer = _client(fake_llm, max_retries=1).chat.completions.create(model=MODEL, messages=USER)
    assert answer.choices[0].finish_reason == "stop"
    first, second = fake_llm.calls
    assert (first.status, second.status) == (429, 200)
    assert second.headers["x-stainless-retry-count"] == "1"
    # The SDK waited what the fake asked (retry-after-ms), not its own backoff.
    assert second.time - first.time >= 0.3


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_is_an_internal_server_error(fake_llm, status):
    fake_llm.fail_next(status, times=2)
    client = _client(fake_llm)
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model=MODEL, messages=USER)
    assert failed.value.status_code == status
    assert failed.value.type == "server_error"
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert client.chat.completions.create(model=MODEL, messages=USER).choices


def test_a_hang_times_the_client_out_and_lets_go(fake_llm):
    fake_llm.hang_next()
    with pytest.raises(openai.APITimeoutError):
        _client(fake_llm, timeout=0.3).chat.completions.create(model=MODEL, messages=USER)
    # The fake saw the client go away: nothing is held any more.
    wait_for(lambda: fake_llm.hanging == 0, timeout=10, message="hang released")
    assert _client(fake_llm).chat.completions.create(model=MODEL, messages=USER).choices


@pytest.mark.parametrize("process", [False, True], ids=["thread", "process"])
def test_a_hang_ends_at_reset_and_at_stop(apex_run, process):
    fake = start(apex_run, "llm", process=process)
    threads = threading.active_count()
    outcomes: list[BaseException | None] = []

    def ask() -> None:
        try:
            _client(fake, timeout=60).chat.completions.create(model=MODEL, messages=USER)
            outcomes.append(None)
        except openai.OpenAIError as exc:
            outcomes.append(exc)

    try:
        for end in (fake.reset, fake.close):
            fake.hang_next()
            asker = threading.Thread(target=ask)
            asker.start()
            wait_for(lambda: fake.hanging == 1, timeout=10, message="request held")
            end()
            asker.join(timeout=30)
            assert not asker.is_alive()
    except BaseException:
        fake.close()
        raise
    # Released at reset: a 503; at stop: a 503 as the server closes.
    assert [type(o) for o in outcomes] == [openai.InternalServerError] * 2
    assert threading.active_count() == threads - (0 if process else 1), "no thread left"


def test_a_cut_connection_is_a_connection_error(fake_llm):
    client = _client(fake_llm)
    fake_llm.reply("one two three four five")
    fake_llm.cut_next(after_chunks=2)
    stream = client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        received.extend(c.choices[0].delta.content or "" for c in stream)
    assert received == ["", "one"], "the answer started, then the connection went"
    fake_llm.cut_next()
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=USER)


def test_malformed_json_reaches_the_sdk_as_a_decode_error(fake_llm):
    client = _client(fake_llm)
    fake_llm.malformed_next(times=2)
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model=MODEL, messages=USER)
    with pytest.raises(json.JSONDecodeError):
        list(client.chat.completions.create(model=MODEL, messages=USER, stream=True))


def test_a_reset_forgets_scripts_models_and_requests(apex_worker, fake_llm):
    fake_llm.reply("never heard")
    fake_llm.fail_next(500)
    fake_llm.add_model("extra")
    fake_llm.respond_with(lambda request: "from the responder")
    httpx.get(f"{fake_llm.base_url}/models")
    apex_worker.reset()  # what clean_platform does before each test
    assert fake_llm.calls == []
    assert "extra" not in fake_llm.models
    answer = _client(fake_llm).chat.completions.create(model=MODEL, messages=USER)
    assert answer.choices[0].message.content.startswith("Fake answer to: ")


# -- attach, L4, L3 -----------------------------------------------------------------------


def test_at_l4_fake_llm_is_a_client_of_the_targets_sandbox(apex_run, apex_worker, tmp_path):
    owner = start(apex_run, "llm", process=False)
    try:
        file = tmp_path / "t.toml"
        file.write_text(
            f'[services.auth]\nurl = "http://a"\n[sandboxes.llm]\nurl = "{owner.url}"\n'
        )
        settings = replace(apex_worker.settings, level=Level.L4, target=load_target(file))
        worker = SimpleNamespace(run=apex_worker.run, settings=settings)
        owner.reply("scripted through the owner")
        with fake_of(worker, "llm") as attached:
            assert attached.api_key == owner.api_key
            assert attached.base_url == owner.base_url
            attached.reply("scripted through the sandbox")  # the reset emptied the queue
            answer = _client(owner).chat.completions.create(model=MODEL, messages=USER)
            assert answer.choices[0].message.content == "scripted through the sandbox"
        assert attach("llm", owner.url).calls, "the sandbox keeps serving"
    finally:
        owner.close()


def test_the_node_openai_sdk_accepts_the_fake(fake_llm, tmp_path):
    """A second, independent client: the official Node SDK (its own fetch, SSE parser,
    retry logic and error classes). `nox -s selftest` installs it (NODE_PATH)."""
    node = shutil.which("node")
    found = node and subprocess.run(
        [node, "-e", "require.resolve('openai')"], capture_output=True, check=False
    )
    if not found or found.returncode != 0:
        # A missing second client is a broken setup, not a reason to pass without it.
        pytest.fail(
            "node with the npm package openai on NODE_PATH is needed: run tools/setup.sh "
            "(installs node and npm), then `nox -s selftest` (installs the package)"
        )
    fake_llm.reply(
        "Node says hi.",
        "Streamed to node.",
        LlmReply(tool_calls=[ToolCall("get_weather", {"city": "Lima"})]),
    )
    script = Path(__file__).with_name("node_openai_client.cjs")
    env = {
        **os.environ,
        "FAKE_URL": fake_llm.url,
        "FAKE_BASE_URL": fake_llm.base_url,
        "FAKE_KEY": fake_llm.api_key,
    }
    done = subprocess.run(
        [node, str(script)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["chat"] == {
        "content": "Node says hi.",
        "finish_reason": "stop",
        "usage": [prompt_tokens(USER), 4, prompt_tokens(USER) + 4],
    }
    assert seen["stream"] == {"content": "Streamed to node.", "usage": [prompt_tokens(USER), 4]}
    assert seen["tool"] == {
        "name": "get_weather",
        "arguments": {"city": "Lima"},
        "finish": "tool_calls",
    }
    assert seen["embedding"] == [len(v := embedding("text-embedding-3-small", "hi", 1536)), v[0]]
    assert "gpt-4o" in seen["models"]
    assert seen["errors"] == {
        "429": ["RateLimitError", "1"],
        "500": ["InternalServerError", 500],
        "401": ["AuthenticationError", "invalid_api_key"],
        "404": ["NotFoundError", "model_not_found"],
        "hang": "APIConnectionTimeoutError",
        # Mid-stream, the SDK does not wrap what fetch (undici) throws for a cut body.
        "cut": ["TypeError", "terminated"],
    }
    assert seen["retried"] == [429, 200]


L3_LLM = """
import os, openai, pytest
from pathlib import Path

@pytest.mark.L2
@pytest.mark.L3
@pytest.mark.bvj(segment="platform", goal="x", mrr=0, scenario="001#31")
def test_llm(fake_llm):
    fake_llm.reply("from a process")
    client = openai.OpenAI(base_url=fake_llm.base_url, api_key=fake_llm.api_key, max_retries=0)
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in answer) == "from a process"
    fake_llm.hang_next()
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    Path(os.environ["OUT"]).write_text(f"{fake_llm.running.pid} {fake_llm.url}")
"""


def test_at_l3_the_llm_fake_is_a_process_stopped_with_the_run(test_package, inner_pytest, tmp_path):
    project = test_package("test_llm_l3.py", L3_LLM)
    out = tmp_path / "out.txt"
    run = inner_pytest(str(project), "--level", "L3", env=inner_env(OUT=str(out)))
    code, text = finish(run)
    assert code == 0, text
    pid, url = out.read_text().split()
    assert int(pid) != os.getpid()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/_fake/health", timeout=1)
