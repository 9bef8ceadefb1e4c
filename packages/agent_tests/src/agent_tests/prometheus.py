"""apex.agents' `/metrics`, read with prometheus_client's own parser of the text format.

`scrape(client, admin_token)` is every sample of one scrape keyed by name and labels;
`sample(samples, name, **labels)` one value (0 for a series not exported yet), so a test
takes the difference of two scrapes: what its own runs moved.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agent_tests.client import admin_headers

__all__ = ["Samples", "sample", "scrape"]

# (sample name, sorted labels) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(client: httpx.AsyncClient, admin_token: str) -> Samples:
    """`GET /metrics` (the admin token), parsed."""
    response = await client.get("/metrics", headers=admin_headers(admin_token))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample (0 when the series does not exist yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
