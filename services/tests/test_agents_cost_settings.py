"""apex.agents' cost delivery settings: APEX_COST_BATCH is 100 records by default and at
most what apex.data takes in one batch (10,000); a bad value is a ConfigError naming it."""

from __future__ import annotations

import pytest

from apex.agents import load_settings
from apex.common.settings import ConfigError

REQUIRED = {
    "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
    "APEX_REDIS_URL": "redis://cache:6379/0",
    "APEX_AUTH_URL": "http://auth:8000/",
    "APEX_LLM_BASE_URL": "http://llm:9000/v1/",
    "APEX_LLM_API_KEY": "sk-secret",
}


def test_the_cost_batch_is_100_by_default_and_up_to_apex_datas_largest() -> None:
    assert load_settings(REQUIRED).cost_batch == 100
    assert load_settings({**REQUIRED, "APEX_COST_BATCH": "10000"}).cost_batch == 10_000


@pytest.mark.parametrize(("value", "message"), [("10001", "at most 10000"), ("0", "at least 1")])
def test_a_cost_batch_apex_data_would_refuse_is_a_config_error(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"APEX_COST_BATCH must be {message}"):
        load_settings({**REQUIRED, "APEX_COST_BATCH": value})
