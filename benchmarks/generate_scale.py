"""Generator at scale: wall time and peak memory of `uplift generate`.

Runs `uplift generate` in a fresh process per size under /usr/bin/time (the peak RSS of
that process alone). Twice the days (twice the sends) at the same customer count should cost about
twice the time and no more memory: the generator streams day by day.

    python -m benchmarks.generate_scale
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from benchmarks import publish

SIZES = [  # name, customers, sends per day, days
    ("M: 500k customers, 2.5M sends, 30 days", 500_000, 83_334, 30),
    ("M x2 days: 500k customers, 5M sends, 60 days", 500_000, 83_334, 60),
]


def run(customers: int, sends_per_day: int, days: int) -> dict:
    home = tempfile.mkdtemp(prefix="uplift-gen-")
    command = [
        "/usr/bin/time",
        "-f",
        "peak_kb=%M",
        str(Path(sys.executable).parent / "uplift"),
        "generate",
        "--last-day",
        "2026-10-30",
        "--customers",
        str(customers),
        "--sends-per-day",
        str(sends_per_day),
        "--days",
        str(days),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "UPLIFT_HOME": home}, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    peak_kb = int(done.stderr.strip().splitlines()[-1].split("=")[1])
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(home)
    return {
        "sends": summary["sends"],
        "responses": summary["responses"],
        "wall_s": round(wall, 1),
        "sends_per_s": round(summary["sends"] / wall),
        "peak_rss_mb": round(peak_kb / 1024),
    }


def main() -> None:
    rows = {name: run(customers, per_day, days) for name, customers, per_day, days in SIZES}
    report = {
        "date": date.today().isoformat(),
        "command": "python -m benchmarks.generate_scale",
        "cores": os.cpu_count(),
        "sizes": rows,
    }
    out = publish("generate-", report, {f"{size} sends_per_s": r["sends_per_s"] for size, r in rows.items()})
    print("| size | sends | wall (s) | sends/s | peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['sends']:,} | {row['wall_s']} | {row['sends_per_s']:,} | {row['peak_rss_mb']} |")
    print(f"written {out}")


if __name__ == "__main__":
    main()
