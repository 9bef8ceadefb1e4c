"""Headless Chromium (Debian's `chromium`): the rendered DOM of a page, and its screenshot.

Each call is one `chromium --headless` process with its own throwaway profile directory;
it exits when the page is done, so nothing is left running.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["ChromiumMissing", "chromium", "dump_dom", "screenshot"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT = 120.0  # seconds; a first start on a busy 2-core machine takes a few


class ChromiumMissing(RuntimeError):
    """No Chromium on PATH."""


def chromium() -> str:
    """Path of the Chromium binary; ChromiumMissing says how to install it."""
    for name in CANDIDATES:
        if found := shutil.which(name):
            return found
    raise ChromiumMissing(
        "no chromium on PATH: install Debian's `chromium` (tools/setup.sh does: "
        "apt-get install chromium)"
    )


def _run(page: Path, *options: str) -> str:
    with tempfile.TemporaryDirectory(prefix="apex-chromium-") as profile:
        command = [
            chromium(),
            "--headless",
            # root in a container has no user namespace for the sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *options,
            page.resolve().as_uri(),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def dump_dom(page: Path) -> str:
    """The DOM after Chromium rendered the file, serialised as HTML."""
    return _run(page, "--dump-dom")


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 2400) -> None:
    """A PNG of the rendered page's top `height` pixels."""
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(page, f"--screenshot={png.resolve()}", f"--window-size={width},{height}")
    if not png.is_file() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot at {png}")
