"""apex.billing's provider retries (APEX_PAYMENTS_RETRY_DELAY; notes-billing.md § Provider
calls): the SDK retries a failing call twice, first after the retry delay, then after 1-2
times it (the SDK's jitter); the default is the SDK's own delay; a bad value is a
ConfigError naming the variable.

The provider is a local server answering every request 500; the waits are recorded
instead of slept (anyio.sleep, what the SDK's httpx client sleeps with), and the jitter
is pinned to its maximum, so the waits are exact."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator

import anyio
import pytest
import stripe

from apex.billing import load_settings
from apex.billing.payments import PaymentProvider, ProviderUnavailable
from apex.common.settings import ConfigError

REQUIRED = {
    "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
    "APEX_REDIS_URL": "redis://cache:6379/0",
    "APEX_AUTH_URL": "http://auth:8000/",
    "APEX_PAYMENTS_BASE_URL": "http://payments:9000/",
    "APEX_PAYMENTS_API_KEY": "sk_test_secret",
    "APEX_PAYMENTS_WEBHOOK_SECRET": "whsec_secret",
}
ERROR = json.dumps({"error": {"type": "api_error", "message": "down"}}).encode()


class FailingProvider:
    """A provider that answers every request 500 and counts them."""

    def __init__(self) -> None:
        self.requests = 0

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        self.requests += 1
        writer.write(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(ERROR)}\r\nConnection: close\r\n\r\n".encode()
            + ERROR
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def failing() -> AsyncIterator[tuple[FailingProvider, str]]:
    """The failing provider and its base URL."""
    provider = FailingProvider()
    server = await asyncio.start_server(provider.answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield provider, f"http://127.0.0.1:{port}"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The SDK's waits between retries, recorded and not slept; its jitter at the maximum."""
    recorded: list[float] = []

    async def wait(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(anyio, "sleep", wait)
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    return recorded


@pytest.mark.parametrize(
    ("env", "delay"), [({}, 0.5), ({"APEX_PAYMENTS_RETRY_DELAY": "0.02"}, 0.02)]
)
async def test_a_failing_call_is_retried_twice_after_the_retry_delay(
    failing: tuple[FailingProvider, str], waits: list[float], env: dict[str, str], delay: float
) -> None:
    server, url = failing
    settings = load_settings({**REQUIRED, "APEX_PAYMENTS_BASE_URL": url, **env})
    provider = PaymentProvider(
        settings.payments_base_url,
        settings.payments_api_key,
        timeout=5.0,
        retry_delay=settings.payments_retry_delay,
    )
    try:
        with pytest.raises(ProviderUnavailable):
            await provider.customer("tenant-1", None)
    finally:
        await provider.aclose()
    assert server.requests == 3
    # The SDK's backoff, scaled: the first wait is the delay, the second twice it (jitter
    # pinned at its maximum: the SDK's own range is 1-2 times the delay).
    assert waits == [pytest.approx(delay), pytest.approx(2 * delay)]


def test_the_default_retry_delay_is_the_sdks() -> None:
    assert load_settings(REQUIRED).payments_retry_delay == stripe.HTTPClient.INITIAL_DELAY == 0.5


@pytest.mark.parametrize("value", ["0", "-0.5", "soon", "inf"])
def test_a_bad_retry_delay_names_its_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="APEX_PAYMENTS_RETRY_DELAY"):
        load_settings({**REQUIRED, "APEX_PAYMENTS_RETRY_DELAY": value})
