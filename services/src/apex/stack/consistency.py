"""Whether running services share one configuration: each one's ``GET /admin/config``
(:func:`apex.common.shared_config.config_report`), fetched with the admin token and
compared (:func:`apex.common.shared_config.check_reports`).

``python -m apex.stack`` checks its services once they are healthy; an operator (or a
test) calls :func:`check_services` with any services' URLs.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from apex.common.shared_config import ConfigMismatch, check_reports

__all__ = ["ConfigMismatch", "check_services", "fetch_report"]

TIMEOUT_SECONDS = 5.0


def fetch_report(url: str, admin_token: str) -> dict[str, Any]:
    """``GET <url>/admin/config`` of one service (an http:// or ws:// base URL: every
    service answers plain HTTP on its port); ConfigMismatch if it does not answer one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "ws") or parts.hostname is None or parts.port is None:
        raise ValueError(f"not an http:// or ws:// URL with a port: {url!r}")
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT_SECONDS)
    try:
        connection.request(
            "GET", "/admin/config", headers={"Authorization": f"Bearer {admin_token}"}
        )
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ConfigMismatch(f"{url}/admin/config did not answer: {exc}") from None
    finally:
        connection.close()
    if response.status != 200:
        text = body[:200].decode(errors="replace")
        raise ConfigMismatch(f"{url}/admin/config answered HTTP {response.status}: {text}")
    report: dict[str, Any] = json.loads(body)
    return report


def check_services(urls: Mapping[str, str], admin_token: str) -> dict[str, dict[str, Any]]:
    """The reports of the services ``urls`` (name -> base URL); ConfigMismatch naming each
    setting they disagree on, the values and the services that see each."""
    reports = {name: fetch_report(url, admin_token) for name, url in urls.items()}
    check_reports(reports)
    return reports
