"""What changed, from git: the files changed since a base, and the changed lines of each
against the commit the map was recorded at (the line numbers the map uses)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

__all__ = ["FileChange", "changed_files", "default_base", "git", "is_ancestor", "parse_diff"]

_HUNK = re.compile(r"^@@ -(?P<start>\d+)(?:,(?P<count>\d+))? \+\d+(?:,\d+)? @@")


@dataclasses.dataclass(frozen=True)
class FileChange:
    """One file's change: the old lines changed or removed, and the old lines after which
    new lines were inserted (0: at the top). `added`: the file is new; `whole`: no line
    information (a binary file)."""

    path: str
    lines: frozenset[int] = frozenset()
    inserted_after: frozenset[int] = frozenset()
    added: bool = False
    deleted: bool = False
    whole: bool = False


class GitError(RuntimeError):
    """A git command failed."""


def git(root: Path, *args: str) -> str:
    """stdout of `git -C root args...`; a failure raises GitError with git's message."""
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise GitError(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def is_ancestor(root: Path, commit: str, of: str = "HEAD") -> bool:
    """Whether `commit` is `of` or one of its ancestors (False for an unknown commit)."""
    done = subprocess.run(
        ["git", "-C", str(root), "merge-base", "--is-ancestor", commit, of], capture_output=True
    )
    return done.returncode == 0


def default_base(root: Path) -> str:
    """The merge-base of HEAD with `main`, else with `origin/main` (a branch's changes,
    committed or not), else HEAD~1, else HEAD (a repository of one commit)."""
    candidates = (
        ("merge-base", "HEAD", "main"),
        ("merge-base", "HEAD", "origin/main"),
        ("rev-parse", "--verify", "-q", "HEAD~1"),
    )
    for args in candidates:
        try:
            return git(root, *args).strip()
        except GitError:
            continue
    return git(root, "rev-parse", "HEAD").strip()


def changed_files(root: Path, base: str) -> set[str]:
    """Files that differ between `base` and the working tree, and untracked files."""
    tracked = git(root, "diff", "--name-only", "--no-renames", base, "--")
    untracked = git(root, "ls-files", "--others", "--exclude-standard")
    return {line for line in (tracked + untracked).splitlines() if line}


def diff_against(root: Path, commit: str, paths: Iterable[str]) -> list[FileChange]:
    """The changes of `paths` between `commit` and the working tree (untracked: added)."""
    paths = sorted(paths)
    if not paths:
        return []
    text = git(root, "diff", "--unified=0", "--no-color", "--no-ext-diff", "--no-renames",
               commit, "--", *paths)  # fmt: skip
    changes = {c.path: c for c in parse_diff(text)}
    untracked = set(git(root, "ls-files", "--others", "--exclude-standard", "--", *paths).split())
    for path in untracked:
        changes[path] = FileChange(path, added=True)
    return [changes[p] for p in paths if p in changes]


def parse_diff(text: str) -> list[FileChange]:
    """FileChanges of `git diff --unified=0` output."""
    out: list[FileChange] = []
    path = ""
    lines: set[int] = set()
    inserted: set[int] = set()
    flags: dict[str, bool] = {}

    def flush() -> None:
        if path:
            out.append(FileChange(path, frozenset(lines), frozenset(inserted), **flags))

    for line in text.splitlines():
        if line.startswith("diff --git "):
            flush()
            path = line.split(" b/", 1)[-1]
            lines, inserted, flags = set(), set(), {}
        elif line.startswith("new file mode"):
            flags["added"] = True
        elif line.startswith("deleted file mode"):
            flags["deleted"] = True
        elif line.startswith("Binary files "):
            flags["whole"] = True
        elif match := _HUNK.match(line):
            start = int(match["start"])
            count = 1 if match["count"] is None else int(match["count"])
            if count == 0:
                inserted.add(start)
            else:
                lines.update(range(start, start + count))
    flush()
    return out
