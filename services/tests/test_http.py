"""The shared HTTP conventions: JSON errors, content types, body limits, bearer tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from apex.common.http import (
    MAX_AUTHORIZATION_LENGTH,
    ApiError,
    BodyLimitMiddleware,
    bearer_token,
    install_error_handlers,
    require_json_body,
)


class Item(BaseModel):
    name: str


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=1024)

    @app.post("/items", dependencies=[Depends(require_json_body)])
    async def create(item: Item) -> dict[str, str]:
        return {"name": item.name}

    @app.get("/token")
    async def token(request: Request) -> dict[str, str]:
        return {"token": bearer_token(request)}

    @app.get("/expired")
    async def expired() -> None:
        raise ApiError(401, "token_expired", "token rejected: exp")

    @app.get("/teapot")
    async def teapot() -> None:
        raise ApiError(418, "teapot", "short and stout", headers={"X-Why": "tea"})

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("boom")

    return app


@pytest.fixture(name="client")
async def _client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def _error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str)
    return dict(body)


async def test_valid_json(client: httpx.AsyncClient) -> None:
    response = await client.post("/items", json={"name": "a"})
    assert response.json() == {"name": "a"}


async def test_json_with_charset_and_suffix_types(client: httpx.AsyncClient) -> None:
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = await client.post(
            "/items", content=b'{"name": "a"}', headers={"content-type": content_type}
        )
        assert response.status_code == 200, content_type


async def test_malformed_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/items", content=b"{nope", headers={"content-type": "application/json"}
    )
    await _error(response, 400, "malformed_json")


async def test_wrong_content_type(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/items", content=b'{"name": "a"}', headers={"content-type": "text/plain"}
    )
    await _error(response, 415, "unsupported_media_type")


async def test_body_without_content_type(client: httpx.AsyncClient) -> None:
    await _error(
        await client.post("/items", content=b'{"name": "a"}'), 415, "unsupported_media_type"
    )


async def test_missing_field_names_the_field_without_echoing_input(
    client: httpx.AsyncClient,
) -> None:
    body = await _error(
        await client.post("/items", json={"nam": "secret-value"}), 422, "invalid_request"
    )
    assert "name" in body["detail"]
    assert "secret-value" not in body["detail"]


async def test_declared_oversized_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/items", json={"name": "x" * 2000})
    await _error(response, 413, "payload_too_large")


async def test_streamed_oversized_body(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(10):
            yield b"x" * 200
        yield b'"}'

    response = await client.post(
        "/items", content=chunks(), headers={"content-type": "application/json"}
    )
    await _error(response, 413, "payload_too_large")


async def test_bad_content_length(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/items",
        content=b"{}",
        headers={"content-type": "application/json", "content-length": "abc"},
    )
    await _error(response, 400, "bad_request")


async def test_bearer_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/token", headers={"Authorization": "bearer  abc "})
    assert response.json() == {"token": "abc"}


@pytest.mark.parametrize(
    ("header", "challenge"),
    [
        # RFC 6750 section 3.1: no credentials, or another scheme: no error code.
        (None, 'Bearer realm="apex"'),
        ("", 'Bearer realm="apex"'),
        ("Basic abc", 'Bearer realm="apex"'),
        ("abc", 'Bearer realm="apex"'),
        # A Bearer credential that is refused.
        ("Bearer", 'Bearer realm="apex", error="invalid_token"'),
        ("Bearer ", 'Bearer realm="apex", error="invalid_token"'),
        ("Bearer " + "x" * MAX_AUTHORIZATION_LENGTH, 'Bearer realm="apex", error="invalid_token"'),
    ],
)
async def test_bad_authorization_headers(
    client: httpx.AsyncClient, header: str | None, challenge: str
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = await client.get("/token", headers=headers)
    await _error(response, 401, "invalid_token")
    assert response.headers["www-authenticate"] == challenge


async def test_every_other_401_challenges_a_refused_credential(client: httpx.AsyncClient) -> None:
    """The JSON body names the specific reason; the challenge speaks RFC 6750."""
    response = await client.get("/expired")
    await _error(response, 401, "token_expired")
    assert response.headers["www-authenticate"] == 'Bearer realm="apex", error="invalid_token"'


async def test_api_error_keeps_status_code_and_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/teapot")
    assert await _error(response, 418, "teapot") == {"error": "teapot", "detail": "short and stout"}
    assert response.headers["x-why"] == "tea"


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    await _error(await client.get("/nowhere"), 404, "not_found")
    await _error(await client.get("/items"), 405, "method_not_allowed")


async def test_unexpected_exception_is_a_json_500(client: httpx.AsyncClient) -> None:
    body = await _error(await client.get("/crash"), 500, "internal_error")
    assert "boom" not in body["detail"]
