#!/usr/bin/env bash
# Set a machine up to run the Apex tests: the server binaries the test kit starts
# (PostgreSQL, Redis, ClickHouse), Python 3 with pip, Node.js with npm, Chromium (the
# report's selftest), and nox + uv.
#
# Debian/Ubuntu. Idempotent: installs only what is missing and says what it does.
# Non-interactive (CI, no stdin). Uses sudo for apt when not run as root.
# Services are not started: the test kit starts its own servers on ephemeral ports.
set -euo pipefail

NOX_REQUIREMENT="nox>=2026.10.20"

say() { printf '[setup] %s\n' "$*"; }
run() { printf '[setup] + %s\n' "$*"; "$@"; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "not root and no sudo: run this as root"; exit 1; }
    SUDO=(sudo)
fi

# -- apt packages -------------------------------------------------------------------
have() {  # have BINARY: on PATH or where Debian puts it
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]
}
have_postgres() {
    have postgres || compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null
}

missing=()
have_postgres || missing+=(postgresql)
have redis-server || missing+=(redis-server)
have clickhouse-server || missing+=(clickhouse-server)
have python3 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# node + npm: the selftests hold the LLM fake to the official Node `openai` SDK too.
have node || missing+=(nodejs)
have npm || missing+=(npm)
# chromium: the report's selftest renders reports/report.html in headless Chromium.
have chromium || missing+=(chromium)

if [ "${#missing[@]}" -eq 0 ]; then
    say "server binaries, python3 + pip, node + npm, chromium: present"
else
    say "installing with apt: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Do not let the packages start their system services: nothing needs them.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
        "${SUDO[@]}" chmod +x "$policy"
        trap '"${SUDO[@]}" rm -f "$policy"' EXIT
    fi
    run "${SUDO[@]}" apt-get update -q
    run "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# -- nox and uv ---------------------------------------------------------------------
tools_ok() {
    python3 - "$NOX_REQUIREMENT" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version

wanted = tuple(int(x) for x in sys.argv[1].split(">=")[1].split("."))
have = tuple(int(x) for x in version("nox").split(".")[:3])
version("uv")
sys.exit(0 if have >= wanted else 1)
PY
}

if tools_ok; then
    say "nox and uv: present ($(python3 -m nox --version 2>&1), $(python3 -m uv --version))"
else
    pip_args=()
    if [ -z "${VIRTUAL_ENV:-}" ] && [ "$(id -u)" -ne 0 ]; then
        pip_args+=(--user)
    fi
    # Debian marks its Python as externally managed (PEP 668); these are tools, not
    # libraries anything else imports.
    export PIP_BREAK_SYSTEM_PACKAGES=1
    run python3 -m pip install --quiet "${pip_args[@]}" "$NOX_REQUIREMENT" uv
fi

say "ready: run 'nox -s l2' (or 'python3 -m nox -s l2' if nox is not on PATH)"
