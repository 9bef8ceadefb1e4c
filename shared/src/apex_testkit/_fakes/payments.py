"""A fake of Stripe's API (v1), stateful, for the official `stripe` SDKs (Python and Node).

Protocol (what the SDKs send and expect; objects in `payments_objects`, `payments_billing`):
- `Authorization: Bearer <secret key>` (or HTTP Basic with the key as user); a missing or
  wrong key is 401 `invalid_request_error`, as Stripe answers.
- Form bodies with bracketed keys (`payments_form`); JSON answers; errors
  `{"error": {type, code, message, param, decline_code...}}` with Stripe's statuses
  (400 invalid request, 402 card error, 404 missing, 409/400 idempotency, 429, 500), so
  the SDKs raise their own exception classes.
- `Idempotency-Key` on a POST: the same key with the same parameters answers the first
  answer again (`Idempotent-Replayed: true`); with other parameters or another endpoint,
  400 `idempotency_error`. As at Stripe, only answers of requests that started executing
  are kept (200 and 402), not a validation error or a scripted fault.
- Webhook endpoints (`POST /v1/webhook_endpoints`, or the control API's `add_endpoint`
  with the account's configured secret): every event is POSTed to each endpoint that
  enabled its type, signed as Stripe signs (`Stripe-Signature: t=<unix>,v1=<hex
  HMAC-SHA256 of "<t>.<body>" with the endpoint secret>`), retried with exponential
  backoff until a 2xx; deliveries can be held and released in reverse order.

Control API (`/_fake/...`, used by :class:`FakePayments`): endpoints, holding and
releasing deliveries, the delivery log, scripted faults, the dunning schedule, the
webhook backoff, resending an event.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from apex_testkit._fakes._control import FakeClient
from apex_testkit._fakes._server import CONTROL, FakeServer
from apex_testkit._fakes.payments_billing import Account
from apex_testkit._fakes.payments_form import FormError, canonical, decode
from apex_testkit._fakes.payments_objects import API_VERSION, StripeError, new_id, public

__all__ = ["FakePayments", "PaymentsServer", "WebhookDelivery", "stripe_signature"]

# A webhook delivery that fails is tried again after base * 2^(attempt - 1) seconds, at
# most cap (Stripe retries for three days; tests make it short).
DEFAULT_BACKOFF: Final = (0.05, 2.0)
DELIVERY_TIMEOUT: Final = 10.0
# How long a reset waits for the delivery under way to be answered (the reset's caller
# gives up after 10 s).
SETTLE_TIMEOUT: Final = 5.0
_Handler = Callable[[Account, dict[str, Any], tuple[str, ...]], dict[str, Any]]


@dataclass
class WebhookDelivery:
    """One attempt to deliver an event to an endpoint, as logged."""

    event_id: str
    event_type: str
    endpoint: str
    attempt: int
    status: int | None
    time: float
    error: str | None = None


@dataclass
class _Pending:
    event: dict[str, Any]
    endpoint: dict[str, Any]
    attempt: int = 1
    due: float = field(default_factory=time.monotonic)


def stripe_signature(payload: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header Stripe sends for `payload`."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _list(objects: Account, kind: str, url: str, params: dict[str, Any], *keys: str) -> Any:
    listing = objects.listing(kind, url, **{key: params.get(key) for key in keys})
    limit = params.get("limit")
    if limit is not None:
        if not str(limit).isdigit() or not 1 <= int(limit) <= 100:
            raise StripeError(400, "invalid_request_error", "Invalid limit", param="limit")
        listing["has_more"] = len(listing["data"]) > int(limit)
        listing["data"] = listing["data"][: int(limit)]
    return listing


# (method, path pattern, handler): the API the fake serves.
_ROUTES: Final[list[tuple[str, str, _Handler]]] = [
    ("POST", r"/v1/customers", lambda o, p, a: o.create_customer(p)),
    ("GET", r"/v1/customers", lambda o, p, a: _list(o, "customer", "/v1/customers", p, "email")),
    ("GET", r"/v1/customers/([^/]+)", lambda o, p, a: o.get("customer", a[0])),
    ("POST", r"/v1/customers/([^/]+)", lambda o, p, a: o.update_customer(a[0], p)),
    ("DELETE", r"/v1/customers/([^/]+)", lambda o, p, a: o.delete_customer(a[0])),
    ("GET", r"/v1/payment_methods/([^/]+)", lambda o, p, a: o.get("payment_method", a[0])),
    ("POST", r"/v1/payment_methods/([^/]+)/attach", lambda o, p, a: o.attach(a[0], p)),
    ("POST", r"/v1/payment_methods/([^/]+)/detach", lambda o, p, a: o.detach(a[0])),
    (
        "GET",
        r"/v1/payment_methods",
        lambda o, p, a: _list(o, "payment_method", "/v1/payment_methods", p, "customer"),
    ),
    ("POST", r"/v1/payment_intents", lambda o, p, a: o.create_payment_intent(p)),
    ("GET", r"/v1/payment_intents/([^/]+)", lambda o, p, a: o.get("payment_intent", a[0])),
    ("POST", r"/v1/payment_intents/([^/]+)/confirm", lambda o, p, a: o.confirm(a[0], p)),
    (
        "POST",
        r"/v1/payment_intents/([^/]+)/cancel",
        lambda o, p, a: o.cancel_payment_intent(a[0], p),
    ),
    ("GET", r"/v1/charges/([^/]+)", lambda o, p, a: o.get("charge", a[0])),
    ("POST", r"/v1/refunds", lambda o, p, a: o.create_refund(p)),
    ("GET", r"/v1/refunds/([^/]+)", lambda o, p, a: o.get("refund", a[0])),
    ("POST", r"/v1/products", lambda o, p, a: o.create_product(p)),
    ("GET", r"/v1/products/([^/]+)", lambda o, p, a: o.get("product", a[0])),
    ("POST", r"/v1/prices", lambda o, p, a: o.create_price(p)),
    ("GET", r"/v1/prices/([^/]+)", lambda o, p, a: o.get("price", a[0])),
    ("POST", r"/v1/subscriptions", lambda o, p, a: o.create_subscription(p)),
    (
        "GET",
        r"/v1/subscriptions",
        lambda o, p, a: _list(o, "subscription", "/v1/subscriptions", p, "customer", "status"),
    ),
    ("GET", r"/v1/subscriptions/([^/]+)", lambda o, p, a: o.get("subscription", a[0])),
    ("POST", r"/v1/subscriptions/([^/]+)", lambda o, p, a: o.update_subscription(a[0], p)),
    ("DELETE", r"/v1/subscriptions/([^/]+)", lambda o, p, a: o.cancel_subscription(a[0])),
    (
        "GET",
        r"/v1/invoices",
        lambda o, p, a: _list(o, "invoice", "/v1/invoices", p, "customer", "subscription"),
    ),
    ("GET", r"/v1/invoices/([^/]+)", lambda o, p, a: o.get("invoice", a[0])),
    ("POST", r"/v1/invoices/([^/]+)/pay", lambda o, p, a: o.pay_invoice(a[0])),
    ("POST", r"/v1/invoiceitems", lambda o, p, a: o.create_invoice_item(p)),
    ("GET", r"/v1/invoiceitems/([^/]+)", lambda o, p, a: o.get("invoiceitem", a[0])),
    ("GET", r"/v1/events", lambda o, p, a: _list(o, "event", "/v1/events", p, "type")),
    ("GET", r"/v1/events/([^/]+)", lambda o, p, a: o.get("event", a[0])),
    ("POST", r"/v1/test_helpers/test_clocks", lambda o, p, a: o.create_clock(p)),
    (
        "GET",
        r"/v1/test_helpers/test_clocks/([^/]+)",
        lambda o, p, a: o.get("test_helpers.test_clock", a[0]),
    ),
    (
        "POST",
        r"/v1/test_helpers/test_clocks/([^/]+)/advance",
        lambda o, p, a: o.advance_clock(a[0], p),
    ),
]
_COMPILED: Final = [(m, re.compile(f"^{pattern}$"), h) for m, pattern, h in _ROUTES]


class PaymentsServer(FakeServer):
    name = "payments"

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.api_key = "sk_test_" + secrets.token_hex(24)
        self.webhook_secret = "whsec_" + secrets.token_hex(24)
        self.wake = asyncio.Event()
        self.delivered = asyncio.Condition()
        self._sender: asyncio.Task[None] | None = None
        # Counts resets: a delivery under way when one comes belongs to the test before.
        self._generation = 0
        # Set while no delivery is under way; settling: a reset is coming, start none.
        self._idle = asyncio.Event()
        self._idle.set()
        self._settling = False
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._generation += 1
        self._settling = False
        self.objects = Account(self._on_event)
        self.idempotency: dict[str, tuple[str, str, int, dict[str, Any]]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.pending: list[_Pending] = []
        self.deliveries: list[WebhookDelivery] = []
        self.faults: list[int] = []
        self.held = False
        self.backoff = DEFAULT_BACKOFF

    def config(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "api_key": self.api_key,
            "webhook_secret": self.webhook_secret,
            "api_version": API_VERSION,
        }

    async def settle(self) -> None:
        # The platform may write what a webhook tells it: one under way must be answered
        # (its effects done) before the kit wipes the platform's state for the next test.
        self._settling = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_TIMEOUT):
                await self._idle.wait()

    async def start(self, extra: Any) -> None:
        self._sender = asyncio.create_task(self._send_forever())

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()

    # -- the API --------------------------------------------------------------------------

    def _authorized(self, request: Request) -> StripeError | None:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        key = credentials
        if scheme.lower() == "basic":
            try:
                key = base64.b64decode(credentials).decode().partition(":")[0]
            except ValueError:
                key = ""
        if not header:
            return StripeError(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY').",
            )
        if scheme.lower() not in ("bearer", "basic") or not secrets.compare_digest(
            key, self.api_key
        ):
            shown = f"{key[:8]}{'*' * max(len(key) - 12, 0)}{key[-4:]}" if key else "''"
            return StripeError(401, "invalid_request_error", f"Invalid API Key provided: {shown}")
        return None

    async def api(self, request: Request) -> Response:
        request_id = f"req_{secrets.token_hex(7)}"
        headers = {"request-id": request_id, "stripe-version": API_VERSION}
        refused = self._authorized(request)
        if refused is not None:
            return JSONResponse(refused.body(), status_code=401, headers=headers)
        method, path = request.method, request.url.path
        try:
            params = decode(
                (await request.body()).decode() if method == "POST" else request.url.query
            )
        except (FormError, UnicodeDecodeError) as exc:
            error = StripeError(400, "invalid_request_error", str(exc))
            return JSONResponse(error.body(), status_code=400, headers=headers)
        key = request.headers.get("idempotency-key") if method == "POST" else None
        if key:
            replay = self._replay(key, path, params, headers)
            if replay is not None:
                return replay
        if self.faults:
            status = self.faults.pop(0)
            kind = "api_error" if status >= 500 else "invalid_request_error"
            code = "rate_limit" if status == 429 else None
            error = StripeError(status, kind, f"Scripted failure ({status})", code=code)
            return JSONResponse(error.body(), status_code=status, headers=headers)
        for route_method, pattern, handler in _COMPILED:
            match = pattern.match(path)
            if match is None or route_method != method:
                continue
            self.objects.request = {"id": request_id, "idempotency_key": key}
            try:
                status, body = 200, public(handler(self.objects, params, match.groups()))
            except StripeError as exc:
                status, body = exc.status, exc.body()
            finally:
                self.objects.request = {"id": None, "idempotency_key": None}
            if key and status in (200, 402):
                self.idempotency[key] = (path, canonical(params), status, body)
            return JSONResponse(body, status_code=status, headers=headers)
        error = StripeError(
            404,
            "invalid_request_error",
            f"Unrecognized request URL ({method}: {path}).",
        )
        return JSONResponse(error.body(), status_code=404, headers=headers)

    def _replay(
        self, key: str, path: str, params: dict[str, Any], headers: dict[str, str]
    ) -> Response | None:
        kept = self.idempotency.get(key)
        if kept is None:
            return None
        kept_path, kept_params, status, body = kept
        if kept_path != path:
            message = (
                "Keys for idempotent requests can only be used for the same endpoint they "
                f"were first used for ('{kept_path}' vs '{path}'). Try using a key other than "
                f"'{key}' if you meant to execute a different request."
            )
        elif kept_params != canonical(params):
            message = (
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request."
            )
        else:
            replayed = {**headers, "idempotent-replayed": "true", "idempotency-key": key}
            return JSONResponse(body, status_code=status, headers=replayed)
        error = StripeError(400, "idempotency_error", message)
        return JSONResponse(error.body(), status_code=400, headers=headers)

    async def webhook_endpoints(self, request: Request) -> Response:
        refused = self._authorized(request)
        if refused is not None:
            return JSONResponse(refused.body(), status_code=401)
        if request.method == "GET":
            listing = {
                "object": "list",
                "data": [public(e) for e in self.endpoints.values()],
                "has_more": False,
                "url": "/v1/webhook_endpoints",
            }
            return JSONResponse(listing)
        params = decode((await request.body()).decode())
        url, events = params.get("url"), params.get("enabled_events")
        if not url or not isinstance(events, list) or not events:
            error = StripeError(
                400,
                "invalid_request_error",
                "Missing required param: url and enabled_events.",
                param="url" if not url else "enabled_events",
            )
            return JSONResponse(error.body(), status_code=400)
        endpoint = self._add_endpoint(str(url), [str(e) for e in events], None)
        return JSONResponse(endpoint)

    def _add_endpoint(self, url: str, events: list[str], secret: str | None) -> dict[str, Any]:
        endpoint: dict[str, Any] = {
            "id": new_id("webhook_endpoint"),
            "object": "webhook_endpoint",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "enabled_events": events,
            "livemode": False,
            "metadata": {},
            "secret": secret or "whsec_" + secrets.token_hex(24),
            "status": "enabled",
            "url": url,
        }
        self.endpoints[endpoint["id"]] = endpoint
        return endpoint

    # -- webhooks -------------------------------------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        for endpoint in self.endpoints.values():
            enabled = endpoint["enabled_events"]
            if "*" in enabled or event["type"] in enabled:
                event["pending_webhooks"] += 1
                self.pending.append(_Pending(event, endpoint))
        self.wake.set()

    async def _send_forever(self) -> None:
        async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT) as client:
            while True:
                generation = self._generation
                due = [] if self.held else [p for p in self.pending if p.due <= time.monotonic()]
                for pending in due:
                    if self._generation != generation or self._settling:
                        break  # a reset came (or is coming): the rest was (will be) dropped
                    self.pending.remove(pending)
                    await self._send(client, pending)
                self.wake.clear()
                waits = [p.due - time.monotonic() for p in self.pending if not self.held]
                timeout = max(min(waits), 0.0) if waits else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)

    async def _send(self, client: httpx.AsyncClient, pending: _Pending) -> None:
        event, endpoint = pending.event, pending.endpoint
        payload = json.dumps(event, indent=2).encode()
        headers = {
            "content-type": "application/json; charset=utf-8",
            "user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "stripe-signature": stripe_signature(payload, endpoint["secret"], int(time.time())),
        }
        status: int | None = None
        error: str | None = None
        generation = self._generation
        self._idle.clear()
        try:
            answer = await client.post(endpoint["url"], content=payload, headers=headers)
            status = answer.status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self._idle.set()
        if self._generation != generation:
            return  # reset meanwhile: neither logged nor retried in the next test
        self.deliveries.append(
            WebhookDelivery(
                event["id"],
                event["type"],
                endpoint["id"],
                pending.attempt,
                status,
                time.time(),
                error,
            )
        )
        if status is not None and 200 <= status < 300:
            event["pending_webhooks"] -= 1
        else:
            base, cap = self.backoff
            delay = min(base * 2 ** (pending.attempt - 1), cap)
            pending.attempt += 1
            pending.due = time.monotonic() + delay
            self.pending.append(pending)
        async with self.delivered:
            self.delivered.notify_all()

    # -- control --------------------------------------------------------------------------

    async def control_endpoint(self, request: Request) -> Response:
        body = await request.json()
        endpoint = self._add_endpoint(
            body["url"],
            list(body.get("events") or ["*"]),
            body.get("secret") or self.webhook_secret,
        )
        return JSONResponse(endpoint)

    async def hold(self, request: Request) -> Response:
        self.held = True
        return Response(status_code=204)

    async def release_held(self, request: Request) -> Response:
        order = (await request.json()).get("order", "created")
        if order not in ("created", "reverse"):
            return JSONResponse({"detail": "order is created or reverse"}, status_code=400)
        if order == "reverse":
            self.pending.reverse()
        self.held = False
        self.wake.set()
        return Response(status_code=204)

    async def delivery_log(self, request: Request) -> Response:
        return JSONResponse([d.__dict__ for d in self.deliveries])

    async def add_faults(self, request: Request) -> Response:
        body = await request.json()
        self.faults.extend([int(body["status"])] * int(body.get("times", 1)))
        return Response(status_code=204)

    async def faults_left(self, request: Request) -> Response:
        return JSONResponse({"left": len(self.faults)})

    async def settings_of(self, request: Request) -> Response:
        body = await request.json()
        if "dunning_days" in body:
            self.objects.dunning_days = tuple(int(d) for d in body["dunning_days"])
        if "webhook_backoff" in body:
            base, cap = body["webhook_backoff"]
            self.backoff = (float(base), float(cap))
        return Response(status_code=204)

    async def resend(self, request: Request) -> Response:
        event_id = (await request.json())["event_id"]
        event = self.objects.objects.get(event_id)
        if event is None or event["object"] != "event":
            return JSONResponse({"detail": f"no event {event_id}"}, status_code=404)
        self._on_event(event)
        return Response(status_code=204)

    def routes(self) -> list[BaseRoute]:
        methods = ["GET", "POST", "DELETE"]
        return [
            Route(f"{CONTROL}/endpoints", self.control_endpoint, methods=["POST"]),
            Route(f"{CONTROL}/webhooks/hold", self.hold, methods=["POST"]),
            Route(f"{CONTROL}/webhooks/release", self.release_held, methods=["POST"]),
            Route(f"{CONTROL}/webhooks/resend", self.resend, methods=["POST"]),
            Route(f"{CONTROL}/deliveries", self.delivery_log),
            Route(f"{CONTROL}/faults", self.add_faults, methods=["POST"]),
            Route(f"{CONTROL}/faults", self.faults_left, methods=["GET"]),
            Route(f"{CONTROL}/settings", self.settings_of, methods=["POST"]),
            Route("/v1/webhook_endpoints", self.webhook_endpoints, methods=["GET", "POST"]),
            Route("/v1/{rest:path}", self.api, methods=methods),
        ]


class FakePayments(FakeClient):
    """Test-side client of the payments fake (Stripe's API): its key, its webhook secret,
    endpoints, deliveries, faults and the dunning schedule."""

    name = "payments"

    @property
    def base_url(self) -> str:
        """What to give the SDK as its API base (`StripeClient(base_addresses={"api": ...})`)."""
        return self.url

    @property
    def api_key(self) -> str:
        return str(self.config["api_key"])

    @property
    def webhook_secret(self) -> str:
        """The secret of endpoints added with `add_endpoint` (the platform's setting)."""
        return str(self.config["webhook_secret"])

    def settings(self) -> dict[str, str]:
        return {
            "base_url": self.base_url,
            "api_key": self.api_key,
            "webhook_secret": self.webhook_secret,
        }

    def add_endpoint(self, url: str, events: tuple[str, ...] = ("*",)) -> str:
        """Send events of these types (`*`: all) to `url`, signed with `webhook_secret`;
        the endpoint's id."""
        endpoint = self._call("POST", "endpoints", url=url, events=list(events))
        return str(endpoint["id"])

    def hold_webhooks(self) -> None:
        """Keep events undelivered until `release_webhooks`."""
        self._call("POST", "webhooks/hold")

    def release_webhooks(self, order: str = "created") -> None:
        """Deliver what was held, in the order the events were made or in reverse."""
        self._call("POST", "webhooks/release", order=order)

    def resend(self, event_id: str) -> None:
        """Deliver an event again (a replay, as Stripe's dashboard resend does)."""
        self._call("POST", "webhooks/resend", event_id=event_id)

    @property
    def deliveries(self) -> list[WebhookDelivery]:
        """Every delivery attempt so far, oldest first."""
        return [WebhookDelivery(**d) for d in self._call("GET", "deliveries")]

    def fail_next(self, status: int, *, times: int = 1) -> None:
        """The next `times` API requests answer `status` (500: api_error, 429: rate limit)."""
        self._call("POST", "faults", status=status, times=times)

    @property
    def faults_left(self) -> int:
        """How many of the failures `fail_next` scripted are still to come: 0 once the
        requests they were for have been answered."""
        return int(self._call("GET", "faults")["left"])

    def set_dunning(self, days: tuple[int, ...]) -> None:
        """Retry a failed renewal after these days (then cancel the subscription)."""
        self._call("POST", "settings", dunning_days=list(days))

    def set_webhook_backoff(self, base: float, cap: float) -> None:
        """Retry a failed delivery after base * 2^(attempt-1) seconds, at most cap."""
        self._call("POST", "settings", webhook_backoff=[base, cap])


SERVER = PaymentsServer
CLIENT = FakePayments
