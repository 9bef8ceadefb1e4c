"""A fake OpenAI-compatible LLM provider, enough for the official `openai` SDKs.

Routes (OpenAI's API reference; `Authorization: Bearer <api_key>` on each):
- `POST /v1/chat/completions`: an answer (content and/or `tool_calls` whose arguments are
  JSON strings, `finish_reason` "stop", "tool_calls" or "length" under `max_tokens` /
  `max_completion_tokens`) with exact `usage` (`llm_tokens` documents the estimator); with
  `stream: true`, server-sent events `data: {chunk}`: a role chunk, content or tool-call
  delta chunks, a final chunk with `finish_reason`, a usage chunk (`choices: []`) when
  `stream_options.include_usage`, then `data: [DONE]`.
- `GET /v1/models`, `GET /v1/models/{id}`; `POST /v1/embeddings` (deterministic unit
  vectors from the text; `encoding_format` "float" or "base64" (little-endian float32,
  what the SDK asks for by default); `dimensions`).

Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 401
`invalid_api_key` (or no key), 400 `invalid_request_error` for a bad body or
`context_length_exceeded`, 404 `model_not_found`. Every model answer carries
`x-request-id` and `x-ratelimit-*` headers.

Answers, in order of precedence: a scripted fault (429 with `retry-after`, `retry-after-ms`
and `x-ratelimit-*`; any status; a hang until the client goes away or the fake is reset
or stopped; a connection cut mid-answer; a malformed JSON body), a queued `LlmReply`, the
test's responder function (`llm_script.Responder`), else a default answer:
"Fake answer to: " + the first 20 tokens of the last user message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import secrets
import struct
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from apex_testkit._fakes import llm_tokens as tokens
from apex_testkit._fakes._control import FakeClient
from apex_testkit._fakes._server import CONTROL, FakeServer
from apex_testkit._fakes.llm_script import (
    LlmReply,
    LlmRequest,
    Responder,
    ResponderFunction,
)
from apex_testkit._tls import tls_context

V1 = "/v1"
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
# Model id -> kind, context window (tokens), embedding dimensions.
MODELS: Mapping[str, tuple[str, int, int]] = {
    "gpt-4o-mini": ("chat", 128_000, 0),
    "gpt-4o": ("chat", 128_000, 0),
    "text-embedding-3-small": ("embedding", 8_191, 1536),
}
CREATED = 1_700_000_000  # the models' `created`: fixed, as a provider's are
REQUESTS_LIMIT, TOKENS_LIMIT = 10_000, 2_000_000
FAULTS = ("status", "hang", "cut", "malformed")
DEFAULT_REPLY_TOKENS = 20


def error_body(
    message: str, kind: str = "invalid_request_error", param: str | None = None, code: Any = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return JSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)


def _rate_headers(remaining: int, reset: str = "6ms") -> dict[str, str]:
    return {
        "x-request-id": f"req_{secrets.token_hex(16)}",
        "x-ratelimit-limit-requests": str(REQUESTS_LIMIT),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": reset,
        "x-ratelimit-limit-tokens": str(TOKENS_LIMIT),
        "x-ratelimit-remaining-tokens": str(TOKENS_LIMIT if remaining else 0),
        "x-ratelimit-reset-tokens": "0s" if remaining else reset,
    }


def embedding(model: str, item: str | list[int], dimensions: int) -> list[float]:
    """The fake's vector of `item`: SHAKE-256 of model and input as float32 values in
    [-1, 1), cut to `dimensions` and scaled to unit length (as `dimensions` does)."""
    seed = f"{model}\0{item if isinstance(item, str) else json.dumps(item)}".encode()
    raw = struct.unpack(f"<{dimensions}I", hashlib.shake_256(seed).digest(4 * dimensions))
    values = [v / 2**31 - 1.0 for v in raw]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Rounded through float32: what base64 carries, so both formats give the same numbers.
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dimensions}f", packed))


def _pieces(text: str) -> list[str]:
    """A stream's content deltas: each word with the whitespace before it."""
    pieces: list[str] = []
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or (text[i].isspace() and not text[i - 1].isspace()):
            pieces.append(text[start:i])
            start = i
    return pieces


class _Sse(Response):
    """A `text/event-stream` answer, sent event by event; `cut_after` chunks into it the
    connection is closed with the body unfinished (the ASGI app returns without its last
    message, and the server drops the connection)."""

    media_type = "text/event-stream; charset=utf-8"

    def __init__(
        self,
        events: list[str],
        headers: Mapping[str, str],
        chunk_delay: float = 0.0,
        cut_after: int | None = None,
    ) -> None:
        super().__init__(headers=dict(headers), media_type=self.media_type)
        # Sent as it comes (chunked): no Content-Length.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.events, self.chunk_delay, self.cut_after = events, chunk_delay, cut_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        for n, event in enumerate(self.events):
            if self.cut_after is not None and n >= self.cut_after:
                return
            if n and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Cut(Response):
    """A JSON answer whose connection is closed halfway through its body."""

    def __init__(self, body: bytes, headers: Mapping[str, str]) -> None:
        super().__init__(content=body, headers=dict(headers), media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})


class LlmServer(FakeServer):
    name = "llm"

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.api_key = "sk-fake-" + secrets.token_urlsafe(24)
        self.hanging = 0
        self.released = asyncio.Event()
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.release()
        self.released = asyncio.Event()
        self.models: dict[str, tuple[str, int, int]] = dict(MODELS)
        self.replies: list[LlmReply] = []
        self.faults: list[dict[str, Any]] = []
        self.responder: str | None = None
        self.latency = (0.0, 0.0)  # added to every answer's delay and chunk delay

    def release(self) -> None:
        self.released.set()

    def config(self) -> dict[str, Any]:
        return {"base_url": f"{self.base_url}{V1}", "api_key": self.api_key}

    # -- checks ---------------------------------------------------------------------------

    def _unauthorized(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        key = header[7:].strip()
        if not secrets.compare_digest(key.encode(), self.api_key.encode()):
            shown = f"{key[:3]}*****{key[-4:]}" if len(key) > 8 else "*****"
            return _error(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        return None

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)",
            )
        return body

    def _model(self, body: Mapping[str, Any], kind: str) -> tuple[str, int, int] | Response:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", param="model")
        if model not in self.models:
            return _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        entry = self.models[model]
        if entry[0] != kind:
            endpoint = "v1/chat/completions" if kind == "chat" else "v1/embeddings"
            return _error(
                404 if kind == "chat" else 400,
                f"This is not a{'' if kind == 'chat' else 'n'} {kind} model and thus not "
                f"supported in the {endpoint} endpoint.",
                param="model",
            )
        return entry

    def _check_messages(self, body: Mapping[str, Any]) -> Response | None:
        messages = body.get("messages")
        if messages is None:
            return _error(
                400,
                "Missing required parameter: 'messages'.",
                param="messages",
                code="missing_required_parameter",
            )
        if not isinstance(messages, list) or not messages:
            return _error(
                400, f"{json.dumps(messages)} is too short - 'messages'", param="messages"
            )
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ROLES:
                supported = ", ".join(f"'{r}'" for r in ROLES)
                return _error(
                    400,
                    f"Invalid value: {json.dumps(role)}. Supported values are: {supported}.",
                    param=f"messages[{i}].role",
                    code="invalid_value",
                )
            if role == "tool" and not message.get("tool_call_id"):
                return _error(
                    400,
                    "Missing parameter 'tool_call_id': messages with role 'tool' must have "
                    "a 'tool_call_id'.",
                    param=f"messages[{i}].tool_call_id",
                    code="missing_required_parameter",
                )
        if body.get("n") not in (None, 1):
            return _error(400, "the fake LLM answers n=1 only", param="n", code="invalid_value")
        if body.get("stream_options") is not None and body.get("stream") is not True:
            return _error(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
                code="invalid_value",
            )
        return None

    # -- faults ---------------------------------------------------------------------------

    async def _hang(self, request: Request) -> Response:
        """Answer nothing until the client goes away or the fake is reset or stopped."""

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        self.hanging += 1
        waits = {
            asyncio.ensure_future(disconnected()),
            asyncio.ensure_future(self.released.wait()),
        }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.hanging -= 1
            for task in waits:
                task.cancel()
        return _error(503, "released from a scripted hang", "server_error")

    def _status_fault(self, fault: Mapping[str, Any]) -> Response:
        status = int(fault["status"])
        retry_after = fault.get("retry_after")
        headers = _rate_headers(0 if status == 429 else REQUESTS_LIMIT - 1)
        if retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(float(retry_after))))
            headers["retry-after-ms"] = str(round(float(retry_after) * 1000))
        if status == 429:
            return _error(
                429,
                fault.get("message")
                or "Rate limit reached for requests. Please try again "
                "after the time in the retry-after header.",
                "requests",
                code="rate_limit_exceeded",
                headers=headers,
            )
        default = {
            500: "The server had an error while processing your request. Sorry about that!",
            503: "The engine is currently overloaded, please try again later.",
        }.get(status, f"Scripted error {status}.")
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return _error(status, fault.get("message") or default, kind, headers=headers)

    # -- answers --------------------------------------------------------------------------

    async def _reply(self, request: Request, body: bytes) -> LlmReply | Response:
        if self.replies:
            return self.replies.pop(0)
        if self.responder is None:
            last = LlmRequest.from_log("POST", request.url.path, {}, body.decode()).last_user_text
            return LlmReply(
                content="Fake answer to: " + tokens.truncate(last, DEFAULT_REPLY_TOKENS)
            )
        sent = {
            "method": request.method,
            "path": request.url.path,
            "headers": dict(request.headers),
            "body": body.decode("utf-8", errors="replace"),
        }
        try:
            # The process's TLS context: a client of its own loaded the CA bundle for every
            # scripted answer (tens of milliseconds holding the GIL, the test's loop too).
            async with httpx.AsyncClient(timeout=60, verify=tls_context()) as client:
                answer = await client.post(self.responder, json=sent)
        except httpx.HTTPError as exc:
            return _error(500, f"the test's LLM responder is unreachable: {exc!r}", "server_error")
        if answer.status_code != 200:
            return _error(500, f"the test's LLM responder failed:\n{answer.text}", "server_error")
        return LlmReply.from_json(answer.json())

    async def chat(self, request: Request) -> Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        entry = self._model(body, "chat")
        if isinstance(entry, Response):
            return entry
        invalid = self._check_messages(body)
        if invalid is not None:
            return invalid
        prompt = tokens.prompt_tokens(body["messages"], body.get("tools"))
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if prompt + (limit if isinstance(limit, int) else 0) > entry[1]:
            return _error(
                400,
                f"This model's maximum context length is {entry[1]} tokens. However, your "
                f"messages resulted in {prompt} tokens. Please reduce the length of the "
                "messages.",
                param="messages",
                code="context_length_exceeded",
            )
        fault = self.faults.pop(0) if self.faults else None
        if fault is not None and fault["kind"] == "status":
            return self._status_fault(fault)
        if fault is not None and fault["kind"] == "hang":
            return await self._hang(request)
        reply = await self._reply(request, await request.body())
        if isinstance(reply, Response):
            return reply
        if reply.delay + self.latency[0]:
            await asyncio.sleep(reply.delay + self.latency[0])
        answer = _Answer(body, reply, prompt, limit if isinstance(limit, int) else None)
        headers = _rate_headers(REQUESTS_LIMIT - 1)
        if body.get("stream") is True:
            cut = fault["after_chunks"] if fault is not None and fault["kind"] == "cut" else None
            events = list(
                answer.events(malformed=fault is not None and fault["kind"] == "malformed")
            )
            return _Sse(events, headers, reply.chunk_delay + self.latency[1], cut)
        document = json.dumps(answer.completion()).encode()
        if fault is not None and fault["kind"] == "cut":
            return _Cut(document, headers)
        if fault is not None and fault["kind"] == "malformed":
            document = document[: len(document) // 2]
        return Response(document, headers=headers, media_type="application/json")

    async def list_models(self, request: Request) -> Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        data = [_model_object(m) for m in self.models]
        return JSONResponse(
            {"object": "list", "data": data}, headers=_rate_headers(REQUESTS_LIMIT - 1)
        )

    async def get_model(self, request: Request) -> Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        model = request.path_params["model"]
        if model not in self.models:
            return _error(
                404, f"The model '{model}' does not exist", param="model", code="model_not_found"
            )
        return JSONResponse(_model_object(model), headers=_rate_headers(REQUESTS_LIMIT - 1))

    async def embeddings(self, request: Request) -> Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        entry = self._model(body, "embedding")
        if isinstance(entry, Response):
            return entry
        inputs = _inputs(body.get("input"))
        if isinstance(inputs, Response):
            return inputs
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return _error(
                400,
                f"Invalid value: {json.dumps(fmt)}. Supported values are: 'float' and 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
        dimensions = body.get("dimensions", entry[2])
        if not isinstance(dimensions, int) or not 1 <= dimensions <= entry[2]:
            return _error(
                400, f"dimensions must be an integer from 1 to {entry[2]}", param="dimensions"
            )
        for item in inputs:
            used = tokens.embedding_tokens([item])
            if used > entry[1]:
                return _error(
                    400,
                    f"This model's maximum context length is {entry[1]} "
                    f"tokens, however you requested {used} tokens in your input. "
                    "Please reduce your prompt.",
                    param="input",
                )
        fault = self.faults.pop(0) if self.faults else None
        if fault is not None and fault["kind"] == "status":
            return self._status_fault(fault)
        if fault is not None and fault["kind"] == "hang":
            return await self._hang(request)
        model = str(body["model"])
        data = []
        for index, item in enumerate(inputs):
            vector: Any = embedding(model, item, dimensions)
            if fmt == "base64":
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        used = tokens.embedding_tokens(inputs)
        document = json.dumps(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": used, "total_tokens": used},
            }
        ).encode()
        headers = _rate_headers(REQUESTS_LIMIT - 1)
        if fault is not None and fault["kind"] == "cut":
            return _Cut(document, headers)
        if fault is not None and fault["kind"] == "malformed":
            document = document[: len(document) // 2]
        return Response(document, headers=headers, media_type="application/json")

    # -- control --------------------------------------------------------------------------

    async def add_replies(self, request: Request) -> Response:
        body = await request.json()
        self.replies.extend(LlmReply.from_json(data) for data in body["replies"])
        return Response(status_code=204)

    async def set_responder(self, request: Request) -> Response:
        self.responder = (await request.json()).get("url")
        return Response(status_code=204)

    async def add_faults(self, request: Request) -> Response:
        body = await request.json()
        fault = body["fault"]
        if fault.get("kind") not in FAULTS:
            return JSONResponse({"detail": f"fault kind: one of {', '.join(FAULTS)}"}, 400)
        self.faults.extend([fault] * int(body.get("times", 1)))
        return Response(status_code=204)

    async def set_latency(self, request: Request) -> Response:
        body = await request.json()
        self.latency = (float(body["delay"]), float(body["chunk_delay"]))
        return Response(status_code=204)

    async def add_model(self, request: Request) -> Response:
        body = await request.json()
        self.models[body["id"]] = (
            body["kind"],
            int(body["context_window"]),
            int(body["dimensions"]),
        )
        return Response(status_code=204)

    async def state(self, request: Request) -> Response:
        return JSONResponse(
            {
                "hanging": self.hanging,
                "replies": len(self.replies),
                "faults": len(self.faults),
                "models": {m: list(v) for m, v in self.models.items()},
            }
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{V1}/chat/completions", self.chat, methods=["POST"]),
            Route(f"{V1}/embeddings", self.embeddings, methods=["POST"]),
            Route(f"{V1}/models", self.list_models),
            Route(f"{V1}/models/{{model:path}}", self.get_model),
            Route(f"{CONTROL}/replies", self.add_replies, methods=["POST"]),
            Route(f"{CONTROL}/responder", self.set_responder, methods=["POST"]),
            Route(f"{CONTROL}/faults", self.add_faults, methods=["POST"]),
            Route(f"{CONTROL}/models", self.add_model, methods=["POST"]),
            Route(f"{CONTROL}/latency", self.set_latency, methods=["POST"]),
            Route(f"{CONTROL}/state", self.state),
        ]


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": CREATED, "owned_by": "system"}


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) for t in value)


def _inputs(value: Any) -> list[str | list[int]] | Response:
    """An embeddings `input`: a string, strings, a token array or token arrays."""
    if isinstance(value, str) or _is_tokens(value):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all((isinstance(v, str) and v) or _is_tokens(v) for v in value)
    ):
        return _error(
            400,
            "'input' must be a non-empty string, an array of non-empty strings, an array of "
            "tokens or an array of token arrays.",
            param="input",
        )
    return list(value)


class _Answer:
    """One chat completion: the reply, cut to the request's token limit, as a document or
    as the chunks of a stream."""

    def __init__(
        self, body: Mapping[str, Any], reply: LlmReply, prompt: int, limit: int | None
    ) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = str(body["model"])
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        content = reply.content
        cut = False
        if content is not None and limit is not None:
            kept = tokens.truncate(content, limit)
            cut, content = kept != content, kept
        self.content = content
        self.tool_calls: list[dict[str, Any]] = [
            {
                "id": call.id or f"call_{secrets.token_hex(12)}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.to_json()["arguments"]},
            }
            for call in reply.tool_calls
        ]
        implied = "tool_calls" if self.tool_calls else "length" if cut else "stop"
        self.finish_reason = reply.finish_reason or implied
        completion = tokens.completion_tokens(content, self.tool_calls)
        self.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.content,
            "refusal": None,
            "annotations": [],
        }
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage,
            "service_tier": "default",
            "system_fingerprint": "fp_apex_fake",
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": "fp_apex_fake",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def chunks(self) -> Iterator[dict[str, Any]]:
        """The stream's chunks, before `[DONE]`."""
        first: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
        if self.content is None:
            first["content"] = None
        yield self._chunk(first)
        for piece in _pieces(self.content or ""):
            yield self._chunk({"content": piece})
        for index, call in enumerate(self.tool_calls):
            head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
            yield self._chunk({"tool_calls": [{"index": index, **head}]})
            arguments = call["function"]["arguments"]
            for start in range(0, len(arguments), 16):
                piece = arguments[start : start + 16]
                yield self._chunk(
                    {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                )
        yield self._chunk({}, self.finish_reason)
        if self.include_usage:
            yield {**self._chunk({}), "choices": [], "usage": self.usage}

    def events(self, *, malformed: bool = False) -> Iterator[str]:
        """The stream as server-sent events; `malformed`: the second chunk's JSON is cut
        in half."""
        for n, chunk in enumerate(self.chunks()):
            data = json.dumps(chunk)
            yield f"data: {data[: len(data) // 2] if malformed and n == 1 else data}\n\n"
        yield "data: [DONE]\n\n"


class FakeLlm(FakeClient):
    """The `fake_llm` fixture: an OpenAI-compatible provider on 127.0.0.1.

    `base_url` (with `/v1`, what `openai.OpenAI(base_url=...)` takes), `api_key`;
    `reply(*replies)`, `respond_with(function)`; faults `fail_next(status, retry_after=)`,
    `hang_next()`, `cut_next(after_chunks=)`, `malformed_next()`; `set_latency(...)`,
    `add_model(...)`;
    `calls` (the API requests: model, messages, headers...), `hanging`.
    """

    name = "llm"

    def __init__(self, running: Any) -> None:
        super().__init__(running)
        self._responder: Responder | None = None

    @property
    def base_url(self) -> str:
        return str(self.config["base_url"])

    @property
    def api_key(self) -> str:
        return str(self.config["api_key"])

    def settings(self) -> dict[str, str]:
        return {"base_url": self.base_url, "api_key": self.api_key}

    def reply(self, *replies: LlmReply | str) -> None:
        """Queue answers: each chat completion takes the next one (a str is its content)."""
        if not replies:
            raise ValueError("reply() needs at least one LlmReply or str")
        self._call("POST", "replies", replies=[LlmReply.of(r).to_json() for r in replies])

    def respond_with(self, function: ResponderFunction | None) -> None:
        """Answer each chat completion the queue does not with `function(request)` (a
        LlmReply or a str), run in a thread of this process; None: the default answer."""
        self._stop_responder()
        if function is not None:
            self._responder = Responder(function)
        url = self._responder.url if self._responder is not None else None
        self._call("POST", "responder", url=url)

    def fail_next(
        self,
        status: int = 500,
        *,
        times: int = 1,
        retry_after: float | None = None,
        message: str | None = None,
    ) -> None:
        """The next `times` model requests answer `status` in OpenAI's error shape; a 429
        says "rate_limit_exceeded", with `retry-after` (whole seconds, rounded up) and
        `retry-after-ms` when `retry_after` is given."""
        if not 400 <= status <= 599:
            raise ValueError(f"status {status}: an HTTP error status (400-599)")
        fault = {"kind": "status", "status": status, "retry_after": retry_after, "message": message}
        self._call("POST", "faults", fault=fault, times=times)

    def hang_next(self, *, times: int = 1) -> None:
        """The next `times` model requests get no answer until the client gives up (its
        timeout) or the fake is reset or stopped."""
        self._call("POST", "faults", fault={"kind": "hang"}, times=times)

    def cut_next(self, *, after_chunks: int = 2, times: int = 1) -> None:
        """The next `times` model answers lose their connection midway: a stream after
        `after_chunks` events (the role chunk is the first), a document halfway."""
        if after_chunks < 0:
            raise ValueError("after_chunks >= 0")
        self._call(
            "POST", "faults", fault={"kind": "cut", "after_chunks": after_chunks}, times=times
        )

    def malformed_next(self, *, times: int = 1) -> None:
        """The next `times` model answers are 200 with JSON cut in half (a stream: its
        second chunk's)."""
        self._call("POST", "faults", fault={"kind": "malformed"}, times=times)

    def set_latency(self, delay: float, *, chunk_delay: float = 0.0) -> None:
        """Until reset, every chat answer waits `delay` seconds more before it starts and
        a stream `chunk_delay` more between chunks (a provider's latency, for benchmarks)."""
        if delay < 0 or chunk_delay < 0:
            raise ValueError("delay and chunk_delay are seconds, >= 0")
        self._call("POST", "latency", delay=delay, chunk_delay=chunk_delay)

    def add_model(
        self,
        model: str,
        *,
        context_window: int = 128_000,
        kind: str = "chat",
        dimensions: int = 1536,
    ) -> None:
        """Serve one more model (until reset): a chat model with `context_window` tokens,
        or an embedding model (kind="embedding") of `dimensions`."""
        if kind not in ("chat", "embedding"):
            raise ValueError(f"kind {kind!r}: 'chat' or 'embedding'")
        self._call(
            "POST",
            "models",
            id=model,
            kind=kind,
            context_window=context_window,
            dimensions=dimensions if kind == "embedding" else 0,
        )

    @property
    def models(self) -> dict[str, tuple[str, int, int]]:
        """Model id -> (kind, context window, embedding dimensions)."""
        served = self._call("GET", "state")["models"]
        return {m: (str(k), int(c), int(d)) for m, (k, c, d) in served.items()}

    @property
    def hanging(self) -> int:
        """How many requests a scripted hang holds now."""
        return int(self._call("GET", "state")["hanging"])

    @property
    def calls(self) -> list[LlmRequest]:
        """The API requests (`/v1/...`) since the last reset, oldest first."""
        return [
            LlmRequest.from_log(r.method, r.path, r.headers, r.body, r.status, r.time)
            for r in self.requests
            if r.path.startswith(f"{V1}/")
        ]

    def reset(self) -> None:
        self._stop_responder()
        super().reset()

    def close(self) -> None:
        self._stop_responder()
        super().close()

    def _stop_responder(self) -> None:
        if self._responder is not None:
            self._responder.stop()
            self._responder = None


SERVER = LlmServer
CLIENT = FakeLlm
