"""apex.stack.consistency over HTTP: each service's `GET /admin/config` fetched with the
admin token and compared; a service that does not answer one is named with its URL."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from apex.stack.consistency import ConfigMismatch, check_services, fetch_report

TOKEN = "admin-token"
Serve = Callable[[int, dict[str, Any]], str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """`serve(status, body)`: the URL of a loopback server answering /admin/config so
    (and 401 to a request without the admin token)."""
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, body: dict[str, Any]) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                authorized = self.headers.get("Authorization") == f"Bearer {TOKEN}"
                code = status if authorized and self.path == "/admin/config" else 401
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _report(issuer: str) -> dict[str, Any]:
    return {"service": "x", "settings": {"APEX_JWT_ISSUER": issuer}}


def test_agreeing_services_pass(serve: Serve) -> None:
    urls = {"auth": serve(200, _report("apex-auth")), "data": serve(200, _report("apex-auth"))}
    reports = check_services(urls, TOKEN)
    assert reports["data"] == _report("apex-auth")


def test_a_disagreement_names_the_setting_and_the_services(serve: Serve) -> None:
    urls = {"auth": serve(200, _report("apex-auth")), "data": serve(200, _report("rogue"))}
    with pytest.raises(ConfigMismatch, match="APEX_JWT_ISSUER differs: auth sees 'apex-auth'"):
        check_services(urls, TOKEN)


def test_a_ws_url_is_asked_over_http(serve: Serve) -> None:
    url = serve(200, _report("apex-auth")).replace("http://", "ws://")
    assert fetch_report(url, TOKEN) == _report("apex-auth")


def test_a_refusal_is_named_with_its_url(serve: Serve) -> None:
    url = serve(200, _report("apex-auth"))
    with pytest.raises(ConfigMismatch, match=rf"{url}/admin/config answered HTTP 401"):
        fetch_report(url, "not-the-token")


def test_a_service_that_does_not_answer_is_named() -> None:
    with pytest.raises(ConfigMismatch, match=r"http://127.0.0.1:9/admin/config did not answer"):
        fetch_report("http://127.0.0.1:9", TOKEN)


def test_a_url_without_a_port_is_refused() -> None:
    with pytest.raises(ValueError, match="with a port"):
        fetch_report("http://auth.example", TOKEN)
