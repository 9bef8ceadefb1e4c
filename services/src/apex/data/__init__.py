"""apex.data: the data layer, as a library and as a service.

The library: PostgreSQL pools and migrations, the ClickHouse client, tenant isolation.
The service contract (apex.topology): ``load_settings(env)``, then
``create_app(settings)`` gives the ASGI app; ``python -m apex.data`` runs it as a process
(``python -m apex.data migrate|rollback|status`` manages the schema).
"""

from collections.abc import Mapping

from apex.data.app import create_app
from apex.data.settings import Backoff, DataSettings


def load_settings(env: Mapping[str, str] | None = None) -> DataSettings:
    """The service's settings from `env` (default: the process environment)."""
    return DataSettings.from_env(env)


__all__ = ["Backoff", "DataSettings", "create_app", "load_settings"]
