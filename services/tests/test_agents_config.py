"""apex.agents' reloadable config (APEX_AGENTS_CONFIG): a bad file stops the start with a
ConfigError naming it; a reload (the route's and SIGHUP's) replaces the config only with a
valid file, else the old one stays."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from apex.agents import load_settings
from apex.agents.config import ConfigHolder, reload_on_signal
from apex.agents.costs import DEFAULT_MODELS, Model
from apex.common.settings import ConfigError

REQUIRED = {
    "APEX_DATABASE_URL": "postgresql://u:pw@db:5432/apex",
    "APEX_REDIS_URL": "redis://cache:6379/0",
    "APEX_AUTH_URL": "http://auth:8000/",
    "APEX_LLM_BASE_URL": "http://llm:9000/v1/",
    "APEX_LLM_API_KEY": "sk-secret",
}
PRICE = {"context_window": 1000, "input_micros_per_1k": 7, "output_micros_per_1k": 9}


def write(path: Path, document: Any) -> str:
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


def test_a_valid_file_sets_the_models_and_absent_keys_keep_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", {"models": {"m": PRICE}, "quality": {"min_length": 2}})
    holder = ConfigHolder(path, DEFAULT_MODELS)
    assert dict(holder.current.models) == {"m": Model(1000, 7, 9)}
    assert holder.current.providers == ("llm", "llm_fallback")
    assert ConfigHolder(write(tmp_path / "e.json", {}), DEFAULT_MODELS).current.models == (
        DEFAULT_MODELS
    )


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ([], "JSON object"),
        ({"prices": {}}, "'prices'"),
        ({"models": {"m": {**PRICE, "context_window": 0}}}, "context_window"),
        ({"quality": {"min_length": 5, "max_length": 1}}, "min_length 5"),
        ({"quality": {"non_empty": 1}}, "non_empty"),
        ({"providers": ["other"]}, "providers"),
    ],
)
def test_a_bad_file_stops_the_start_naming_the_problem(
    tmp_path: Path, document: Any, named: str
) -> None:
    path = write(tmp_path / "c.json", document)
    with pytest.raises(ConfigError, match="APEX_AGENTS_CONFIG") as caught:
        load_settings({**REQUIRED, "APEX_AGENTS_CONFIG": path})
    assert named in str(caught.value)


def test_a_missing_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings({**REQUIRED, "APEX_AGENTS_CONFIG": str(tmp_path / "absent.json")})


def test_sighup_reloads_and_an_invalid_file_keeps_the_old_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "c.json", {"models": {"m": PRICE}})
    holder = ConfigHolder(path, DEFAULT_MODELS)
    previous = signal.signal(signal.SIGHUP, lambda *_: reload_on_signal(holder))
    try:
        write(tmp_path / "c.json", {"models": {"m": {**PRICE, "input_micros_per_1k": 70}}})
        os.kill(os.getpid(), signal.SIGHUP)  # handled before kill returns (main thread)
        assert (holder.current.version, holder.current.models["m"].input_micros_per_1k) == (2, 70)
        (tmp_path / "c.json").write_text("{broken", encoding="utf-8")
        with caplog.at_level(logging.WARNING, logger="apex.agents.config"):
            os.kill(os.getpid(), signal.SIGHUP)
        assert (holder.current.version, holder.current.models["m"].input_micros_per_1k) == (2, 70)
        assert "the old config stays" in caplog.text
    finally:
        signal.signal(signal.SIGHUP, previous)
