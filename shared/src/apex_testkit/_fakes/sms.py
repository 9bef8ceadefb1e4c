"""A fake of Twilio's Messages API (2010-04-01), enough for the official client.

`POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (form To, From, Body; HTTP Basic
AccountSid:AuthToken) -> 201 message resource, status "queued";
`GET .../Messages/{sid}.json`. Errors use Twilio's JSON (code, message, more_info,
status): 401/20003 for bad credentials (with a Basic challenge), 400/21211 for a bad To,
404/20404.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from apex_testkit._fakes._control import FakeClient
from apex_testkit._fakes._server import CONTROL, FakeServer, form_of

API = "/2010-04-01/Accounts/{account_sid}"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_STATUS_CODES = {400: 21211, 401: 20003, 404: 20404, 429: 20429, 500: 20500, 503: 20503}


def _error(status: int, message: str, code: int | None = None) -> Response:
    code = code or _STATUS_CODES.get(status, 20500)
    # Twilio challenges a 401 with HTTP Basic (RFC 7235 section 3.1: every 401 does).
    headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if status == 401 else None
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status_code=status,
        headers=headers,
    )


class SmsServer(FakeServer):
    name = "sms"

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        self.from_number = "+15005550006"
        self.changed = asyncio.Condition()
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.messages: list[dict[str, Any]] = []
        self.failures: list[int] = []

    def config(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "account_sid": self.account_sid,
            "auth_token": self.auth_token,
            "from_number": self.from_number,
        }

    def _authenticated(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return (
            user == self.account_sid
            and request.path_params["account_sid"] == self.account_sid
            and secrets.compare_digest(password, self.auth_token)
        )

    def _resource(self, message: dict[str, Any]) -> dict[str, Any]:
        uri = f"{API.format(account_sid=self.account_sid)}/Messages/{message['sid']}"
        return {
            **message,
            "uri": f"{uri}.json",
            "subresource_uris": {"media": f"{uri}/Media.json"},
        }

    async def create(self, request: Request) -> Response:
        if not self._authenticated(request):
            return _error(401, "Authenticate")
        form = await form_of(request)
        if self.failures:
            status = self.failures.pop(0)
            return _error(status, "Too Many Requests" if status == 429 else "Scripted failure")
        to, sender, body = form.get("To"), form.get("From"), form.get("Body")
        if not to:
            return _error(400, "A 'To' phone number is required.", 21604)
        if not E164.match(to):
            return _error(400, f"The 'To' number {to} is not a valid phone number.", 21211)
        if not sender and not form.get("MessagingServiceSid"):
            return _error(400, "A 'From' phone number is required.", 21603)
        if not body:
            return _error(400, "Message body is required.", 21602)
        now = formatdate(usegmt=True)
        message = {
            "sid": "SM" + secrets.token_hex(16),
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "to": to,
            "from": sender,
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "body": body,
            "status": "queued",
            "direction": "outbound-api",
            "num_segments": "1",
            "num_media": "0",
            "price": None,
            "price_unit": "USD",
            "error_code": None,
            "error_message": None,
            "date_created": now,
            "date_updated": now,
            "date_sent": None,
        }
        async with self.changed:
            self.messages.append(message)
            self.changed.notify_all()
        return JSONResponse(self._resource(message), status_code=201)

    async def fetch(self, request: Request) -> Response:
        if not self._authenticated(request):
            return _error(401, "Authenticate")
        sid = request.path_params["sid"]
        for message in self.messages:
            if message["sid"] == sid:
                return JSONResponse(self._resource(message))
        return _error(404, f"The requested resource {request.url.path} was not found")

    # -- control ----------------------------------------------------------------------

    async def list_messages(self, request: Request) -> Response:
        to = request.query_params.get("to")
        wait = float(request.query_params.get("wait", "0"))

        def matching() -> list[dict[str, Any]]:
            return [m for m in self.messages if to is None or m["to"] == to]

        if wait > 0:
            async with self.changed:
                try:
                    await asyncio.wait_for(self.changed.wait_for(matching), wait)
                except TimeoutError:
                    seen = [m["to"] for m in self.messages]
                    detail = f"no SMS to {to or 'anyone'} within {wait:g} s (sent to: {seen})"
                    return JSONResponse({"detail": detail}, status_code=408)
        return JSONResponse(matching())

    async def fail_next(self, request: Request) -> Response:
        body = await request.json()
        self.failures.extend([int(body["status"])] * int(body.get("times", 1)))
        return Response(status_code=204)

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{API}/Messages.json", self.create, methods=["POST"]),
            Route(f"{API}/Messages/{{sid}}.json", self.fetch),
            Route(f"{CONTROL}/messages", self.list_messages),
            Route(f"{CONTROL}/fail_next", self.fail_next, methods=["POST"]),
        ]


@dataclass(frozen=True)
class Sms:
    """One message the fake accepted."""

    sid: str
    to: str
    from_: str | None
    body: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sms:
        return cls(sid=data["sid"], to=data["to"], from_=data["from"], body=data["body"])


class FakeSms(FakeClient):
    """The `fake_sms` fixture: Twilio's Messages API on 127.0.0.1.

    `base_url`, `account_sid`, `auth_token`, `from_number`; `messages`;
    `await wait_for(to=..., timeout=5)`; `fail_next(status=500|429, times=1)`; `requests`.
    """

    name = "sms"

    @property
    def base_url(self) -> str:
        return str(self.config["base_url"])

    @property
    def account_sid(self) -> str:
        return str(self.config["account_sid"])

    @property
    def auth_token(self) -> str:
        return str(self.config["auth_token"])

    @property
    def from_number(self) -> str:
        return str(self.config["from_number"])

    def settings(self) -> dict[str, str]:
        return {
            "base_url": self.base_url,
            "account_sid": self.account_sid,
            "auth_token": self.auth_token,
            "from_number": self.from_number,
        }

    @property
    def messages(self) -> list[Sms]:
        """Every message accepted since the last reset, oldest first."""
        return [Sms.from_json(m) for m in self._call("GET", "messages")]

    async def wait_for(self, *, to: str | None = None, timeout: float = 5.0) -> Sms:
        """The first message (to `to`, if given), waiting up to `timeout` seconds for it;
        DeadlineExceeded names what was sent instead."""
        params = {"to": to} if to is not None else {}
        found = await self._wait("messages", params, timeout)
        return Sms.from_json(found[0])

    def fail_next(self, status: int = 500, *, times: int = 1) -> None:
        """The next `times` authenticated sends answer `status` (500, 429, ...) with
        Twilio's error JSON."""
        self._call("POST", "fail_next", status=status, times=times)


SERVER = SmsServer
CLIENT = FakeSms
