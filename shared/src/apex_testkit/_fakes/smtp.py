"""A fake mail server: aiosmtpd on a loopback port that keeps every message it accepts.

The SMTP port is the fake's second socket; its HTTP port serves the control API
(messages, scripted failures). `fail_next(451|550)` answers the next DATA (or RCPT)
with that code, as a full mailbox or a greylisting server would.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import socket
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from apex_testkit._fakes._control import FakeClient
from apex_testkit._fakes._server import CONTROL, FakeServer

_TEXT = {
    451: "451 4.3.0 Requested action aborted: local error in processing",
    450: "450 4.2.1 Mailbox unavailable, try again later",
    452: "452 4.3.1 Insufficient system storage",
    550: "550 5.1.1 Mailbox unavailable",
    552: "552 5.3.4 Message size exceeds fixed limit",
    554: "554 5.7.1 Transaction failed",
}


class SmtpServer(FakeServer):
    name = "smtp"
    extra_socket = True

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.smtp_port: int | None = None
        self.changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.messages: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []

    def config(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.smtp_port}

    async def start(self, extra: socket.socket | None) -> None:
        if extra is None:
            raise RuntimeError("the SMTP fake needs its SMTP socket")
        self.smtp_port = int(extra.getsockname()[1])
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="mailbox.apex.test", ident="apex-testkit fake SMTP"),
            sock=extra,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- aiosmtpd handler hooks -------------------------------------------------------

    def _scripted(self, stage: str) -> str | None:
        if self.failures and self.failures[0]["at"] == stage:
            failure = self.failures.pop(0)
            code = int(failure["code"])
            return _TEXT.get(code, f"{code} scripted failure")
        return None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        failure = self._scripted("rcpt")
        if failure is not None:
            return failure
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        failure = self._scripted("data")
        if failure is not None:
            return failure
        raw = envelope.original_content or b""
        async with self.changed:
            self.messages.append(
                {
                    "mail_from": envelope.mail_from,
                    "rcpt_tos": list(envelope.rcpt_tos),
                    "raw": base64.b64encode(raw).decode(),
                    "time": time.time(),
                }
            )
            self.changed.notify_all()
        return "250 Message accepted for delivery"

    # -- control ----------------------------------------------------------------------

    async def list_messages(self, request: Request) -> Response:
        to = request.query_params.get("to")
        wait = float(request.query_params.get("wait", "0"))

        def matching() -> list[dict[str, Any]]:
            return [
                m
                for m in self.messages
                if to is None or to.lower() in (r.lower() for r in m["rcpt_tos"])
            ]

        if wait > 0:
            async with self.changed:
                try:
                    await asyncio.wait_for(self.changed.wait_for(matching), wait)
                except TimeoutError:
                    seen = [m["rcpt_tos"] for m in self.messages]
                    detail = f"no mail to {to or 'anyone'} within {wait:g} s (mail to: {seen})"
                    return JSONResponse({"detail": detail}, status_code=408)
        return JSONResponse(matching())

    async def fail_next(self, request: Request) -> Response:
        body = await request.json()
        at = body.get("at", "data")
        if at not in ("data", "rcpt"):
            return JSONResponse({"detail": "at must be 'data' or 'rcpt'"}, status_code=400)
        self.failures.extend([{"code": int(body["code"]), "at": at}] * int(body.get("times", 1)))
        return Response(status_code=204)

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"{CONTROL}/messages", self.list_messages),
            Route(f"{CONTROL}/fail_next", self.fail_next, methods=["POST"]),
        ]


@dataclass(frozen=True)
class Mail:
    """One message the mailbox accepted: envelope, raw bytes, parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes = field(repr=False)
    message: EmailMessage = field(repr=False)

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")

    @property
    def to(self) -> str:
        return str(self.message["To"] or "")

    @property
    def text(self) -> str:
        """The plain-text body (the text/plain part of a multipart message)."""
        part = self.message.get_body(preferencelist=("plain", "html"))
        return str(part.get_content()) if part is not None else ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mail:
        raw = base64.b64decode(data["raw"])
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        return cls(data["mail_from"], data["rcpt_tos"], raw, parsed)


class Mailbox(FakeClient):
    """The `mailbox` fixture: an SMTP server on 127.0.0.1.

    `host`, `port`, `smtp_url`; `messages`; `await wait_for(to=..., timeout=5)`;
    `fail_next(code=451|550, times=1, at="data"|"rcpt")`.
    """

    name = "smtp"

    @property
    def host(self) -> str:
        return str(self.config["host"])

    @property
    def port(self) -> int:
        return int(self.config["port"])

    @property
    def smtp_url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def settings(self) -> dict[str, str]:
        return {"smtp_url": self.smtp_url}

    @property
    def messages(self) -> list[Mail]:
        """Every message accepted since the last reset, oldest first."""
        return [Mail.from_json(m) for m in self._call("GET", "messages")]

    async def wait_for(self, *, to: str | None = None, timeout: float = 5.0) -> Mail:
        """The first message to `to` (any, if None), waiting up to `timeout` seconds;
        DeadlineExceeded names the recipients of what arrived instead."""
        params = {"to": to} if to is not None else {}
        found = await self._wait("messages", params, timeout)
        return Mail.from_json(found[0])

    def fail_next(self, code: int = 451, *, times: int = 1, at: str = "data") -> None:
        """Answer the next `times` DATA (or RCPT, `at="rcpt"`) commands with `code`."""
        self._call("POST", "fail_next", code=code, times=times, at=at)


SERVER = SmtpServer
CLIENT = Mailbox
