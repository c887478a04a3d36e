"""How fast the Campaigns pages answer for a large audience (issue: a 500k-customer page within a second).

In a fresh project home, the published outputs of one night for `--customers` customers are
written as the nightly writes them (the audience and its summary, the scoring features of the
configured feature spec, gate.json with the per-arm estimates, the budget curve, step records),
with random values in their real shapes. Then a real Airflow API app (the plugin loaded from the
package's entry point, a logged-in viewer's token) serves each page `--repeat` times through
FastAPI's test client; the first request of each page is timed apart (cold: DuckDB, pyarrow and
the OS cache warm up), the rest give the median and the maximum.

    python -m benchmarks.ui_pages --customers 500000      (part of make bench)

Writes benchmarks/results/ui-pages-<date>-<commit>.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks import publish as publish_result
from jobs.names import p_column, uplift_column

RUN_DATE = date(2026, 10, 30)
TARGET_S = 1.0


def publish(settings, customers: int, seed: int = 3) -> None:
    """One night's published outputs for `customers` customers, in the lake and report layout."""
    from jobs.data.lake import partition_dir
    from jobs.settings import report_dir

    rng = np.random.default_rng(seed)
    exp, targeting = settings.experiment, settings.targeting
    ids = np.char.add("C", np.arange(customers).astype(str))
    features = {"customer_id": ids}
    for name in settings.features.names:
        if name in settings.features.categorical:
            features[name] = rng.choice([f"{name}_{i}" for i in range(6)], customers)
        else:
            features[name] = rng.gamma(2.0, 20.0, customers)
    folder = partition_dir(settings, "features/scoring", RUN_DATE)
    folder.mkdir(parents=True)
    pq.write_table(pa.table(features), folder / "part-00000.parquet")

    p = {arm: rng.beta(2, 12, customers) for arm in exp.all_arms}
    uplift = {arm: p[arm] - p[exp.control] for arm in exp.arms}
    net = np.column_stack([targeting.value_per_response * uplift[a] - targeting.cost_per_send[a] for a in exp.arms])
    best = net.argmax(axis=1)
    best_net = net[np.arange(customers), best]
    arm = np.where(best_net > 0, np.array(exp.arms, dtype=object)[best], "none")
    order = np.argsort(-best_net, kind="mergesort")
    rank = np.empty(customers, dtype=np.int64)
    rank[order] = np.arange(1, customers + 1)
    selected = arm != "none"
    holdout = selected & (rng.random(customers) < targeting.holdout_share)
    costs = np.array([targeting.cost_per_send[a] for a in exp.arms])[best]
    rows = np.arange(customers)
    audience = pd.DataFrame(
        {
            "customer_id": ids,
            "recommended_arm": arm,
            "selected": selected,
            "holdout": holdout,
            "resting": False,
            # The assignment record (no exploration in this synthetic night).
            "assignment": np.where(holdout, "holdout", np.where(selected, "target", "none")),
            "assigned_arm": np.where(holdout, exp.control, np.where(selected, arm, None)),
            "propensity": np.where(
                holdout, targeting.holdout_share, np.where(selected, 1 - targeting.holdout_share, 1.0)
            ),
            "inclusion_probability": selected.astype(float),
            "campaign_id": settings.export.campaign_of(RUN_DATE),
            "expected_uplift": np.where(selected, np.column_stack([uplift[a] for a in exp.arms])[rows, best], 0),
            "expected_net_value": best_net,
            "send_cost": np.where(selected, costs, 0.0),
            "rank": rank,
            "decile": (rank - 1) * 10 // customers + 1,
            "p_control": p[exp.control],
            **{p_column(a): p[a] for a in exp.arms},
            **{uplift_column(a): uplift[a] for a in exp.arms},
            "policy": "model:1",
            "model_name": settings.mlflow.registered_model,
            "model_version": "1",
            "scored_at": pd.Timestamp(datetime.now(UTC)),
        }
    )
    folder = partition_dir(settings, "audience", RUN_DATE)
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(customers), 4)):  # Spark writes several part files
        audience.iloc[part].to_parquet(folder / f"part-{i:05d}.parquet", index=False)
    sent = audience[audience["selected"] & ~audience["holdout"]]
    summary = (
        audience[audience["selected"]]
        .groupby("recommended_arm")
        .agg(customers=("customer_id", "size"), holdout=("holdout", "sum"))
        .assign(explore=0)
        .join(
            sent.groupby("recommended_arm").agg(
                sends=("customer_id", "size"),
                expected_incremental_responses=("expected_uplift", "sum"),
                expected_net_value=("expected_net_value", "sum"),
                spend=("send_cost", "sum"),
            )
        )
        .reset_index()
        .assign(policy="model:1", model_version="1")
    )
    folder = partition_dir(settings, "audience_summary", RUN_DATE)
    folder.mkdir(parents=True)
    summary.to_parquet(folder / "part-00000.parquet", index=False)

    reports = report_dir(settings, RUN_DATE)
    (reports / "steps").mkdir(parents=True)
    total = int(len(sent))
    curve = pd.DataFrame({"sends": np.linspace(0, total, 21).round().astype(int)})
    curve["net_value"] = np.sqrt(curve["sends"] / max(total, 1)) * sent["expected_net_value"].sum()
    curve["incremental_responses"] = curve["net_value"] / targeting.value_per_response
    for column in ("net_value", "incremental_responses"):
        curve[f"{column}_low"], curve[f"{column}_high"] = curve[column] * 0.8, curve[column] * 1.2
    curve.to_csv(reports / "budget_curve.csv", index=False)
    by_arm = {
        row.recommended_arm: {
            "sends": int(row.sends),
            "net_value": float(row.expected_net_value),
            "net_value_low": float(row.expected_net_value) * 0.8,
            "net_value_high": float(row.expected_net_value) * 1.2,
            "incremental_responses": float(row.expected_incremental_responses),
            "incremental_responses_low": float(row.expected_incremental_responses) * 0.8,
            "incremental_responses_high": float(row.expected_incremental_responses) * 1.2,
        }
        for row in summary.itertuples()
    }
    gate = {"decision": "promote", "reasons": ["synthetic night"], "deployed_policy": "model:1", "run_id": None}
    (reports / "gate.json").write_text(json.dumps({**gate, "policy_values": {}, "deployed_arms": by_arm}))
    for step, record in {
        "gate": gate,
        "score": {"rows": customers, "policy": "model:1", "model_version": "1"},
        "drift": {"outcome": "pass", "drifted_share": 0.0},
    }.items():
        (reports / "steps" / f"{step}.json").write_text(json.dumps({"step": step, **record}))


def measure(customers: int, repeat: int) -> dict:
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    from jobs.settings import load_settings
    from jobs.ui import campaigns

    settings = load_settings(demo=True)
    started = time.perf_counter()
    publish(settings, customers)
    publish_s = time.perf_counter() - started
    client = TestClient(create_app())
    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="bench", role="viewer"))
    options = campaigns.segment_options(settings, RUN_DATE)
    picks = {name: values[1] for name, values in list(options.items())[:2]}
    day = RUN_DATE.isoformat()
    arm = settings.experiment.arms[0]
    pages = {
        "runs": "/campaigns/",
        "run": f"/campaigns/runs/{day}",
        "run with another budget": f"/campaigns/runs/{day}?budget={customers // 5}",
        "segments (what-if)": f"/campaigns/runs/{day}/segments?"
        + "&".join(f"{k}={v}" for k, v in picks.items())
        + f"&arm={arm}",
        f"download {arm} CSV": f"/campaigns/runs/{day}/download/{arm}.csv",
    }
    results = {}
    for name, path in pages.items():
        times = []
        for _ in range(repeat + 1):
            t = time.perf_counter()
            response = client.get(path, headers={"Authorization": f"Bearer {token}"})
            times.append(time.perf_counter() - t)
            assert response.status_code == 200, (name, response.status_code, response.text[:500])
        warm = times[1:]
        results[name] = {
            "cold_s": round(times[0], 3),
            "median_s": round(statistics.median(warm), 3),
            "max_s": round(max(warm), 3),
            "bytes": len(response.content),
        }
    return {"publish_s": round(publish_s, 1), "pages": results}


def main() -> None:
    parser = argparse.ArgumentParser(description="Campaigns page response times")
    parser.add_argument("--customers", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if os.environ.get("UI_BENCH_CHILD") != "1":  # a fresh home and Airflow config for the measurement
        with tempfile.TemporaryDirectory(prefix="uplift-ui-bench-") as home:
            env = {
                **os.environ,
                "UI_BENCH_CHILD": "1",
                "UPLIFT_HOME": home,
                "AIRFLOW_HOME": f"{home}/airflow",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            }
            env.pop("UPLIFT_CONF", None)
            airflow = str(Path(sys.executable).parent / "airflow")
            subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
            subprocess.run([sys.executable, "-m", "benchmarks.ui_pages", *sys.argv[1:]], env=env, check=True)
        return
    measured = measure(args.customers, args.repeat)
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "customers": args.customers,
        "repeat": args.repeat,
        "target_s": TARGET_S,
        **measured,
        "met": all(p["max_s"] < TARGET_S for n, p in measured["pages"].items() if not n.startswith("download")),
    }
    out = publish_result("ui-pages-", result, {f"{name} max_s": p["max_s"] for name, p in measured["pages"].items()})
    print(f"Campaigns pages, {args.customers:,} customers ({args.repeat} warm requests each, after one cold):")
    print(f"{'page':<28}{'cold s':>9}{'median s':>10}{'max s':>8}{'bytes':>12}")
    for name, p in measured["pages"].items():
        print(f"{name:<28}{p['cold_s']:>9.3f}{p['median_s']:>10.3f}{p['max_s']:>8.3f}{p['bytes']:>12,}")
    print(f"every page within {TARGET_S} s (warm max): {'yes' if result['met'] else 'NO'}; written to {out}")


if __name__ == "__main__":
    main()
