"""The benchmarks (`make bench`). Each writes its results under benchmarks/results/, named by the
day and the commit measured (`result_path`): a rerun on another day, of other code, does not
overwrite an earlier run's figures, which the notes and the README cite by file."""

from __future__ import annotations

import subprocess
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def commit() -> str:
    """The commit measured: its short hash, `-dirty` when the code measured (tracked files but the
    results and the docs) differs from it."""
    root = RESULTS.parent.parent
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown"
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results", ":!*.md"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return head.stdout.strip() + ("-dirty" if changed else "")


def result_path(prefix: str = "", suffix: str = ".json") -> Path:
    """benchmarks/results/<prefix><date>-<commit><suffix> (the folder made if missing)."""
    RESULTS.mkdir(exist_ok=True)
    return RESULTS / f"{prefix}{date.today().isoformat()}-{commit()}{suffix}"
