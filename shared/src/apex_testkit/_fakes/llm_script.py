"""What a test scripts the LLM fake with, and what it reads back.

`LlmReply` (an answer: content, tool calls, finish reason, a delay) crosses to the fake as
JSON, so a queue of replies works the same with the fake in a thread (L2), a process (L3)
or a sandbox (L4). A reply that is a function of the request runs in the test process:
`Responder` serves that function on a loopback port of its own, and the fake asks it for
each answer (one mechanism at every level). `LlmRequest` is one request the fake received,
as the request log and the responder see it.
"""

from __future__ import annotations

import json
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter")


@dataclass(frozen=True)
class ToolCall:
    """A function call in an assistant answer; `arguments` a mapping (sent as its JSON
    string) or an exact string (malformed arguments are a scenario too)."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None  # None: the fake makes one ("call_...")

    def to_json(self) -> dict[str, Any]:
        arguments = self.arguments
        if not isinstance(arguments, str):
            arguments = json.dumps(dict(arguments), separators=(",", ":"))
        return {"id": self.id, "name": self.name, "arguments": arguments}


@dataclass(frozen=True)
class LlmReply:
    """One scripted answer of a chat completion.

    `finish_reason` None means what the answer implies: "tool_calls" with tool calls,
    else "stop" (or "length" when the request's max_tokens cut it). `delay`: seconds
    before the answer (before the first chunk of a stream); `chunk_delay`: seconds
    between the chunks of a stream.
    """

    content: str | None = None
    tool_calls: Sequence[ToolCall] = ()
    finish_reason: str | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.finish_reason is not None and self.finish_reason not in FINISH_REASONS:
            raise ValueError(
                f"finish_reason {self.finish_reason!r}: one of {', '.join(FINISH_REASONS)}"
            )
        if self.delay < 0 or self.chunk_delay < 0:
            raise ValueError("delay and chunk_delay are seconds, >= 0")

    @classmethod
    def of(cls, value: LlmReply | str) -> LlmReply:
        """A reply, or a plain string as the reply's content."""
        if isinstance(value, LlmReply):
            return value
        if isinstance(value, str):
            return cls(content=value)
        raise TypeError(f"a reply is a LlmReply or a str, not {type(value).__name__}")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LlmReply:
        calls = [ToolCall(c["name"], c["arguments"], c.get("id")) for c in data["tool_calls"]]
        return cls(
            content=data["content"],
            tool_calls=tuple(calls),
            finish_reason=data["finish_reason"],
            delay=float(data["delay"]),
            chunk_delay=float(data["chunk_delay"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "tool_calls": [call.to_json() for call in self.tool_calls],
            "finish_reason": self.finish_reason,
            "delay": self.delay,
            "chunk_delay": self.chunk_delay,
        }


@dataclass(frozen=True)
class LlmRequest:
    """One request to the fake's API: what the client sent (and the status it got)."""

    method: str
    path: str
    headers: Mapping[str, str]
    json: Mapping[str, Any]  # the body, decoded ({} when it was not a JSON object)
    status: int | None = None
    time: float = 0.0

    @classmethod
    def from_log(
        cls,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: str,
        status: int | None = None,
        time: float = 0.0,
    ) -> LlmRequest:
        try:
            decoded = json.loads(body) if body else {}
        except ValueError:
            decoded = {}
        return cls(
            method=method,
            path=path,
            headers={k.lower(): v for k, v in headers.items()},
            json=decoded if isinstance(decoded, dict) else {},
            status=status,
            time=time,
        )

    @property
    def model(self) -> str | None:
        model = self.json.get("model")
        return model if isinstance(model, str) else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.json.get("messages")
        return list(messages) if isinstance(messages, list) else []

    @property
    def last_user_text(self) -> str:
        """The text of the last user message ("" if none)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    parts = [p.get("text", "") for p in content if isinstance(p, dict)]
                    return "".join(str(p) for p in parts)
        return ""

    @property
    def tools(self) -> list[dict[str, Any]]:
        tools = self.json.get("tools")
        return list(tools) if isinstance(tools, list) else []

    @property
    def stream(self) -> bool:
        return self.json.get("stream") is True

    @property
    def traceparent(self) -> str | None:
        """The W3C trace context the client carried, if any."""
        return self.headers.get("traceparent")


ResponderFunction = Callable[[LlmRequest], "LlmReply | str"]


_POLL_SECONDS: Final = 0.01


class Responder:
    """Serves a function of the request on 127.0.0.1 (a thread of the test process): the
    fake POSTs each chat request here and answers what the function returns."""

    def __init__(self, function: ResponderFunction) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                sent = json.loads(self.rfile.read(length))
                try:
                    request = LlmRequest.from_log(
                        sent["method"], sent["path"], sent["headers"], sent["body"]
                    )
                    answer = json.dumps(LlmReply.of(function(request)).to_json()).encode()
                    status = 200
                except Exception:  # noqa: BLE001 - the fake reports it to the LLM client
                    answer, status = traceback.format_exc().encode(), 500
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the fake's request log is the record."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        # shutdown() waits for serve_forever's next poll: at the default half second a
        # test that scripts a responder paid 0.25 s on average when it ended.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(_POLL_SECONDS,),
            name="apex-fake-llm-responder",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; joins the server's threads (none is left behind)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


__all__ = [
    "FINISH_REASONS",
    "LlmReply",
    "LlmRequest",
    "Responder",
    "ResponderFunction",
    "ToolCall",
]
