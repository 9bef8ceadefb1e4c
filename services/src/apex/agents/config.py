"""The reloadable configuration (``APEX_AGENTS_CONFIG``): models, quality rules, providers'
order.

The file is one JSON object with these keys, each optional:

- ``models``: ``{model: {context_window, input_micros_per_1k, output_micros_per_1k}}``,
  the whole price table (as ``APEX_MODELS``, which it replaces; absent: the table of
  ``APEX_MODELS`` or the default stays);
- ``quality``: ``{non_empty?: bool, no_refusal?: bool, min_length?: int, max_length?:
  int}``, checked now and applied by the quality gate when it comes;
- ``providers``: the providers' order, distinct names among ``llm`` and ``llm_fallback``,
  checked now and applied by failover when it comes.

Any other key, or a bad value, is a :class:`ConfigError` naming the key. A
:class:`ConfigHolder` holds the current :class:`AgentConfig`; ``reload()`` reads the file
again and replaces it only when the new one is valid (else the old one stays). A run
captures the config current when it starts and keeps it to its end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from apex.agents.costs import Model
from apex.common.settings import ConfigError

__all__ = [
    "PROVIDERS",
    "QUALITY_RULES",
    "AgentConfig",
    "ConfigHolder",
    "parse_config",
    "parse_models",
    "read_config",
    "reload_on_signal",
]

log = logging.getLogger(__name__)

MODEL_FIELDS: Final = ("context_window", "input_micros_per_1k", "output_micros_per_1k")
# The quality rules the file may set, and the type of each.
QUALITY_RULES: Final[Mapping[str, type]] = MappingProxyType(
    {"non_empty": bool, "no_refusal": bool, "min_length": int, "max_length": int}
)
PROVIDERS: Final = ("llm", "llm_fallback")
_KEYS: Final = ("models", "quality", "providers")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """One version of the reloadable config (``version`` counts loads from 1)."""

    models: Mapping[str, Model]
    quality: Mapping[str, bool | int] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    providers: tuple[str, ...] = PROVIDERS
    version: int = 1

    def view(self) -> dict[str, Any]:
        """The config as the reload route reports it."""
        return {
            "version": self.version,
            "models": {name: dataclasses.asdict(model) for name, model in self.models.items()},
            "quality": dict(self.quality),
            "providers": list(self.providers),
        }


def parse_models(table: Any, where: str) -> Mapping[str, Model]:
    """A price table from JSON; ConfigError naming ``where`` when it is not one."""
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{where} must be a non-empty JSON object of models")
    models: dict[str, Model] = {}
    for name, entry in table.items():
        if not isinstance(entry, dict) or set(entry) != set(MODEL_FIELDS):
            raise ConfigError(f"{where}: model {name!r} needs exactly {', '.join(MODEL_FIELDS)}")
        values = [entry[field] for field in MODEL_FIELDS]
        if not all(_whole(v) for v in values):
            raise ConfigError(f"{where}: model {name!r}: each value is a whole number >= 0")
        if values[0] < 1:
            raise ConfigError(f"{where}: model {name!r}: context_window must be at least 1")
        models[name] = Model(*values)
    return MappingProxyType(models)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _quality(rules: Any, where: str) -> Mapping[str, bool | int]:
    if not isinstance(rules, dict):
        raise ConfigError(f"{where}: quality must be a JSON object of rules")
    for name, value in rules.items():
        kind = QUALITY_RULES.get(name)
        if kind is None:
            known = ", ".join(QUALITY_RULES)
            raise ConfigError(f"{where}: unknown quality rule {name!r}; known: {known}")
        valid = isinstance(value, bool) if kind is bool else _whole(value)
        if not valid:
            wanted = "true or false" if kind is bool else "a whole number >= 0"
            raise ConfigError(f"{where}: quality rule {name!r} must be {wanted}")
    low, high = rules.get("min_length"), rules.get("max_length")
    if low is not None and high is not None and low > high:
        raise ConfigError(f"{where}: quality min_length {low} is above max_length {high}")
    return MappingProxyType(dict(rules))


def _providers(order: Any, where: str) -> tuple[str, ...]:
    if (
        not isinstance(order, list)
        or not order
        or not all(isinstance(name, str) and name in PROVIDERS for name in order)
        or len(set(order)) != len(order)
    ):
        known = ", ".join(PROVIDERS)
        raise ConfigError(f"{where}: providers must be a list of distinct names among {known}")
    return tuple(order)


def parse_config(
    document: Any, where: str, *, default_models: Mapping[str, Model], version: int = 1
) -> AgentConfig:
    """The config a parsed JSON document declares; ConfigError naming the bad key."""
    if not isinstance(document, dict):
        raise ConfigError(f"{where} must hold a JSON object")
    unknown = sorted(set(document) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(_KEYS)}")
    models = default_models
    if "models" in document:
        models = parse_models(document["models"], f"{where}: models")
    return AgentConfig(
        models=models,
        quality=_quality(document.get("quality", {}), where),
        providers=_providers(document.get("providers", list(PROVIDERS)), where),
        version=version,
    )


def read_config(path: str, *, default_models: Mapping[str, Model], version: int = 1) -> AgentConfig:
    """The config in the file at ``path``; ConfigError saying why it cannot be used."""
    where = f"APEX_AGENTS_CONFIG ({path})"
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    return parse_config(document, where, default_models=default_models, version=version)


class ConfigHolder:
    """The current config of one service instance, replaced whole by a valid reload."""

    def __init__(self, path: str | None, default_models: Mapping[str, Model]) -> None:
        self._path = path
        self._default_models = default_models
        self._lock = threading.Lock()
        if path is None:
            self._current = AgentConfig(models=default_models)
        else:
            self._current = read_config(path, default_models=default_models)

    @property
    def path(self) -> str | None:
        """The file reloads read (None: APEX_AGENTS_CONFIG is unset)."""
        return self._path

    @property
    def current(self) -> AgentConfig:
        """The config a run starting now captures."""
        return self._current

    def reload(self) -> AgentConfig:
        """Read the file again and make it current; ConfigError (the old config stays)
        when it is invalid or APEX_AGENTS_CONFIG is unset."""
        if self._path is None:
            raise ConfigError("APEX_AGENTS_CONFIG is unset: there is no config file to reload")
        # One reload at a time (the route and SIGHUP may race): versions stay distinct.
        with self._lock:
            fresh = read_config(
                self._path,
                default_models=self._default_models,
                version=self._current.version + 1,
            )
            self._current = fresh
        return fresh


def reload_on_signal(holder: ConfigHolder) -> None:
    """SIGHUP's handler: reload, logging the outcome (an invalid file: the old config
    stays)."""
    try:
        fresh = holder.reload()
    except ConfigError as exc:
        log.warning("config reload refused, the old config stays: %s", exc)
        return
    log.info("config reloaded: version %d", fresh.version)
