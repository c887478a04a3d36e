"""The benchmarks (`make bench`). Each publishes its latest run under benchmarks/results/, named by
the day and the commit measured (`publish`): the run it replaces is removed, and its headline
figures are appended to `history.csv` (date, commit, benchmark, figure, value, file), which keeps
every run's headline."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
HISTORY = RESULTS / "history.csv"
HISTORY_COLUMNS = ["date", "commit", "benchmark", "figure", "value", "file"]


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


def publish(prefix: str, result: dict, headline: dict[str, float], markdown: str | None = None) -> Path:
    """Write result as benchmarks/results/<prefix><date>-<commit>.json (and markdown beside it as .md),
    remove the earlier runs of this kind (the same prefix), append the headline figures to history.csv;
    return the JSON's path."""
    path = result_path(prefix)
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    if markdown is not None:
        path.with_suffix(".md").write_text(markdown)
    earlier = re.compile(re.escape(prefix) + r"\d{4}-\d{2}-\d{2}-")
    for old in RESULTS.iterdir():
        if earlier.match(old.name) and old.stem != path.stem:
            old.unlink()
    append_history(prefix.rstrip("-") or "nightly", headline, path.name)
    return path


def append_history(benchmark: str, headline: dict[str, float], file: str) -> None:
    """One row per headline figure of a run, appended to history.csv (written with its header if new)."""
    RESULTS.mkdir(exist_ok=True)
    new = not HISTORY.exists()
    with HISTORY.open("a", newline="") as out:
        writer = csv.writer(out)
        if new:
            writer.writerow(HISTORY_COLUMNS)
        day, measured = date.today().isoformat(), commit()
        for figure, value in headline.items():
            writer.writerow([day, measured, benchmark, figure, value, file])
