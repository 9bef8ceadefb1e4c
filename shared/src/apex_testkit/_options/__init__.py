"""The kit's command-line options, one module each: where an option is declared, parsed
(option, else env, else default; a bad value is a UsageError that says why) and applied
(the tests it selects, the fixtures it wires), the way pytest's `tmpdir.py` keeps
`--basetemp` in one place.

- `level`: --level / APEX_TEST_LEVEL
- `target`: --target / APEX_TEST_TARGET
- `services`: --services / APEX_TEST_SERVICES
- `perf`: --perf / APEX_TEST_PERF
- `timeout`: --test-timeout / APEX_TEST_TIMEOUT
- `order`: --test-order / APEX_TEST_ORDER

Each is a pytest plugin of its own (the kit's plugin lists them in `pytest_plugins`).
"""

from __future__ import annotations

PLUGINS = tuple(
    f"apex_testkit._options.{name}"
    for name in ("level", "target", "services", "perf", "timeout", "order")
)
