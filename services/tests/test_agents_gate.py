"""apex.agents' call-path stages that are pure: the context window's estimator and
trimming (``context``), the quality gate's rules (``quality``) and the response cache's
key (``cache``). Expectations come from the rules in notes-agents.md, computed here by
hand (``ceil(utf8_bytes / 4) + 4`` per message)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessageParam

from apex.agents.cache import key_of
from apex.agents.context import ContextTooLarge, estimate, fit
from apex.agents.definitions import BUILTIN_AGENTS
from apex.agents.quality import check
from apex.agents.settings import AgentSettings
from apex.common.settings import ConfigError

REQUIRED = {
    "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
    "APEX_REDIS_URL": "redis://cache:6379/0",
    "APEX_AUTH_URL": "http://auth:8000/",
    "APEX_LLM_BASE_URL": "http://llm:9000/v1/",
    "APEX_LLM_API_KEY": "sk-secret",
}


def tokens(text: str) -> int:
    """The notes' estimate of a message holding ``text``."""
    return math.ceil(len(text.encode("utf-8")) / 4) + 4


def msg(role: str, content: str) -> ChatCompletionMessageParam:
    message: Any = {"role": role, "content": content}
    return message  # type: ignore[no-any-return]


# --- settings -----------------------------------------------------------------------------


def test_the_settings_default_to_the_contracts() -> None:
    settings = AgentSettings.from_env(REQUIRED)
    assert (settings.llm_cache_ttl, settings.quality_retries) == (3600.0, 1)


def test_the_settings_are_read_and_0_is_allowed() -> None:
    env = {**REQUIRED, "APEX_LLM_CACHE_TTL": "0", "APEX_QUALITY_RETRIES": "0"}
    assert AgentSettings.from_env(env).llm_cache_ttl == 0.0
    assert AgentSettings.from_env(env).quality_retries == 0
    env = {**REQUIRED, "APEX_LLM_CACHE_TTL": "0.25", "APEX_QUALITY_RETRIES": "3"}
    assert (
        AgentSettings.from_env(env).llm_cache_ttl,
        AgentSettings.from_env(env).quality_retries,
    ) == (
        0.25,
        3,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("APEX_LLM_CACHE_TTL", "-1"),
        ("APEX_LLM_CACHE_TTL", "soon"),
        ("APEX_LLM_CACHE_TTL", "inf"),
        ("APEX_LLM_CACHE_TTL", "nan"),
        ("APEX_QUALITY_RETRIES", "-1"),
        ("APEX_QUALITY_RETRIES", "1.5"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_it(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        AgentSettings.from_env({**REQUIRED, variable: value})


# --- context ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "abc", "abcd", "abcde", "é" * 3, "日本語のテキスト", "x" * 4001]
)
def test_the_estimate_is_a_quarter_of_the_utf8_bytes_rounded_up_plus_4(text: str) -> None:
    assert estimate({"role": "user", "content": text}) == tokens(text)


def test_a_tool_calls_name_and_arguments_count() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{}"}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    assert estimate(message) == tokens("calc{}")


def test_a_request_that_fits_is_sent_whole() -> None:
    messages = [msg("system", "s" * 40), msg("user", "u" * 40)]
    room = tokens("s" * 40) + tokens("u" * 40)
    assert fit(messages, context_window=room + 10, max_tokens=10) == messages


def test_the_oldest_non_system_messages_go_first_until_it_fits() -> None:
    system, first, answer, last = (
        msg("system", "s" * 40),
        msg("user", "a" * 400),
        msg("assistant", "b" * 400),
        msg("user", "c" * 40),
    )
    kept_all_but_first = tokens("s" * 40) + tokens("b" * 400) + tokens("c" * 40)
    messages = [system, first, answer, last]
    trimmed = fit(messages, context_window=kept_all_but_first + 7, max_tokens=7)
    assert trimmed == [system, answer, last]
    # One token less: the assistant's answer goes too; the system and last user stay.
    trimmed = fit(messages, context_window=kept_all_but_first + 6, max_tokens=7)
    assert trimmed == [system, last]


def test_an_assistant_tool_call_goes_with_its_results() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    asked: Any = {"role": "assistant", "content": None, "tool_calls": [call]}
    result: Any = {"role": "tool", "tool_call_id": "c1", "content": "r" * 400}
    system, question = msg("system", "s"), msg("user", "q")
    room = tokens("s") + tokens("q")
    assert fit([system, asked, result, question], context_window=room, max_tokens=0) == [
        system,
        question,
    ]


def test_a_system_and_last_user_message_too_large_alone_is_context_too_large() -> None:
    messages = [msg("system", "s" * 40), msg("user", "u" * 400)]
    needed = tokens("s" * 40) + tokens("u" * 400)
    with pytest.raises(ContextTooLarge) as raised:
        fit(messages, context_window=needed + 99, max_tokens=100)
    assert (raised.value.reason, raised.value.needed, raised.value.room) == (
        "context_too_large",
        needed,
        needed - 1,
    )


# --- quality ------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["", "   ", "\n\t"])
def test_an_empty_answer_fails(answer: str) -> None:
    assert check(answer) == ["the answer is empty"]


@pytest.mark.parametrize(
    "answer",
    [
        "I can't help with that.",
        "i cannot do this",
        "Sorry, I can not answer",
        "I\u2019m unable to comply.",  # a typographic apostrophe
        "I am unable to say",
        "I won't.",
        "As an AI language model, I have no opinion.",
    ],
)
def test_a_refusal_fails(answer: str) -> None:
    (reason,) = check(answer)
    assert "refusal" in reason


@pytest.mark.parametrize(
    "answer",
    ["Paris is the capital of France.", "Yes. I cannot stress this enough.", "You can't: 1/0."],
)
def test_an_answer_passes(answer: str) -> None:
    assert check(answer) == []


def test_an_answer_cut_at_max_tokens_fails() -> None:
    (reason,) = check("Paris is", finish_reason="length")
    assert "max_tokens" in reason


def test_the_output_schema_is_checked() -> None:
    schema = BUILTIN_AGENTS["extractor"].output_schema
    assert schema is not None
    assert check('  {"city": "Lyon", "country": "France"}\n', output_schema=schema) == []
    (not_json,) = check("Lyon, France", output_schema=schema)
    assert "not JSON" in not_json
    (missing,) = check('{"city": "Lyon"}', output_schema=schema)
    assert "'country' is a required property" in missing
    (wrong,) = check('{"city": 3, "country": "France"}', output_schema=schema)
    assert "/city" in wrong


# --- cache --------------------------------------------------------------------------------


def _key(**changes: Any) -> str | None:
    request: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [msg("system", "s"), msg("user", "What is 2+2?")],
        "temperature": 0.0,
        "max_tokens": 256,
        "tools": None,
    }
    request.update(changes)
    model, messages = request.pop("model"), request.pop("messages")
    return key_of(model, messages, **request)


def test_the_key_ignores_surrounding_whitespace_of_contents() -> None:
    spaced = [msg("system", "  s\n"), msg("user", "\tWhat is 2+2?  \n")]
    assert _key(messages=spaced) == _key()
    assert _key(messages=[msg("system", "s"), msg("user", "What is 2 + 2?")]) != _key()


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"max_tokens": 255},
        {"tools": [{"type": "function", "function": {"name": "calc", "parameters": {}}}]},
        {"messages": [msg("system", "t"), msg("user", "What is 2+2?")]},
    ],
)
def test_the_key_differs_with_each_part_of_the_request(change: dict[str, Any]) -> None:
    assert _key(**change) != _key()


def test_only_temperature_0_is_cached() -> None:
    assert _key(temperature=0) is not None
    assert _key(temperature=0.7) is None
    assert _key(temperature=1) is None
