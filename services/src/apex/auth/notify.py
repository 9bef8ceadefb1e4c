"""Outgoing messages: e-mail through SMTP (APEX_SMTP_URL) and SMS through a
Twilio-compatible Messages API (APEX_SMS_*).

SMTP uses the standard library's smtplib in a worker thread; the SMS API is a form
POST with HTTP Basic auth (AccountSid:AuthToken), as Twilio's REST API expects.
"""

from __future__ import annotations

import asyncio
import email.message
import email.utils
import logging
import smtplib
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx

__all__ = ["DeliveryError", "Mailer", "SmsSender"]

log = logging.getLogger(__name__)

SMTP_TIMEOUT_SECONDS: Final = 10.0


class DeliveryError(Exception):
    """A message could not be handed over; ``reason`` is safe to log and audit."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Mailer:
    """Sends plain-text e-mail through one SMTP server (no auth, no TLS: a relay)."""

    def __init__(self, smtp_url: str, sender: str) -> None:
        parts = urlsplit(smtp_url)
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 25
        self.sender = sender

    def compose(self, to: str, subject: str, body: str) -> email.message.EmailMessage:
        """The message as it will be sent."""
        message = email.message.EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = email.utils.formatdate(localtime=False)
        message["Message-ID"] = email.utils.make_msgid(domain="apex.test")
        message.set_content(body)
        return message

    async def send(self, to: str, subject: str, body: str) -> None:
        """Hand one message to the SMTP server; DeliveryError if it refuses or is unreachable."""
        message = self.compose(to, subject, body)
        await asyncio.to_thread(self._send, message, to)

    def _send(self, message: email.message.EmailMessage, to: str) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=SMTP_TIMEOUT_SECONDS) as smtp:
                smtp.send_message(message, from_addr=self.sender, to_addrs=[to])
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            raise DeliveryError(f"SMTP recipient refused ({codes})") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP error: {type(exc).__name__}: {exc}") from None


class SmsSender:
    """Sends SMS through a Twilio-compatible ``/2010-04-01/Accounts/{sid}/Messages.json``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
    ) -> None:
        self._http = http
        account = quote(account_sid, safe="")
        self.url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account}/Messages.json"
        self._auth = httpx.BasicAuth(account_sid, auth_token)
        self.sender = sender

    async def send(self, to: str, body: str) -> str:
        """Send one message; return its sid. DeliveryError when the API refuses or is down."""
        try:
            response = await self._http.post(
                self.url, data={"To": to, "From": self.sender, "Body": body}, auth=self._auth
            )
        except httpx.HTTPError as exc:
            raise DeliveryError(f"SMS API unreachable: {type(exc).__name__}") from None
        if response.status_code not in (200, 201):
            raise DeliveryError(f"SMS API answered {response.status_code}: {_error(response)}")
        try:
            payload: Any = response.json()
        except ValueError:
            payload = {}
        return str(payload.get("sid", "")) if isinstance(payload, dict) else ""


def _error(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(payload, dict):
        return str(payload.get("message") or payload.get("code") or "")[:200]
    return ""


def _text(value: bytes | str) -> str:
    return (value.decode(errors="replace") if isinstance(value, bytes) else value)[:200]
