"""The nightly run at three sizes: wall time per stage, rows/s, peak memory, Qini vs the oracle.

For each size, in a fresh project home: generate the data, then run every step of the
nightly DAG as the DAG runs it with conf/base's settings, each in its own process as
`uplift <step>`: the Spark steps are clients of a Spark Connect server (`spark.remote`,
jobs/runtime/connect.py; local[2]: driver and executors share its JVM), which the first Spark step
starts, so the server's start and its cold JVM are in that step's wall, as on a machine's first
night. The same night then runs a second time on the same server, as every later night does
(measured apart; the targets are checked on the first night, and again on the second where
they are about time). Each size gets a server of its own on a free port, stopped after it.
A sampler follows each step's process tree and the server's, and keeps the peak resident memory of
- the driver: the Python process that runs the step (the Connect client, or the whole step);
- the JVM: Spark's driver and executors (the server's one process in local mode);
- the Python workers: the processes Spark starts for Python UDFs (model scoring).

Measured in the same run, on the same data and cores:
- raw LightGBM `predict` of the champion's boosters on the scoring features, in memory: the
  physical limit for scoring (scoring efficiency = its wall time / the score step's);
- the DuckDB reference ETL and the pandas + LightGBM script (benchmarks/references.py).

    python -m benchmarks.nightly --size S M L     (make bench SIZE="S M L")

Writes benchmarks/results/<date>-<commit>.json (sizes measured earlier that day at the same
commit are kept) and the same name .md, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from importlib.metadata import version
from pathlib import Path

import psutil
import yaml

from benchmarks import commit, publish, result_path
from jobs.settings import DEMO_CONF

PROJECT = Path(__file__).resolve().parent.parent
RUN_DATE = date(2026, 10, 30)
SIZES = {  # customers, sends per day over 30 days
    "S": (50_000, 8_334),
    "M": (500_000, 83_334),
    "L": (2_000_000, 333_334),
}
DAYS = 30
SEED = 5
# The bench runs the settings a user gets (conf/base); only the Spark driver memory is set
# here, so that every size runs with the same JVM heap.
DRIVER_MEMORY = "6g"
# The references run under this address-space limit: one that needs more memory fails with a
# MemoryError, recorded as such, instead of pushing the machine into swap or the OOM killer.
REFERENCE_MEMORY_LIMIT_GB = 18
TARGETS = {  # issue 15's, each a ratio inside one run
    "m_nightly_over_pandas": 1.0,  # M nightly wall at most the pandas script's
    "m_etl_over_duckdb": 3.0,
    "validation_share": 0.15,  # both validation steps, of the nightly wall
    "scoring_efficiency": 0.5,
    "l_over_m_wall": 4.5,
    "l_over_m_driver_memory": 1.5,
    "qini_vs_oracle": 0.95,
}
VALIDATION_STEPS = ("validate-raw", "validate-features")


class PeakMemory:
    """Samples a process tree, and the Connect server's if there is one, every `every` seconds;
    keeps the peak RSS per kind of process."""

    def __init__(self, pid: int, server_port: int | None = None, every: float = 0.2):
        self.root, self.server_port, self.every = psutil.Process(pid), server_port, every
        self.peak = {"driver": 0, "jvm": 0, "python_workers": 0}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def kind(process: psutil.Process) -> str | None:
        name, cmdline = process.name(), " ".join(process.cmdline())
        if name == "java":
            return "jvm"
        if not name.startswith(("python", "uplift")):
            # Launcher scripts and other helpers. Counting every non-Java process as the driver
            # once recorded a 6.9 GB "driver" for the 10x ETL, whose Python driver peaks at 163 MB.
            return None
        if "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline:
            return "python_workers"
        return "driver"  # the step's Python process (named `uplift` when run as the CLI)

    def _run(self) -> None:
        while not self._done.is_set():
            totals = dict.fromkeys(self.peak, 0)
            try:
                for process in [self.root, *self.root.children(recursive=True), *self._server()]:
                    try:
                        kind = self.kind(process)
                        if kind:
                            totals[kind] += process.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
            except psutil.NoSuchProcess:
                return
            for kind, value in totals.items():
                self.peak[kind] = max(self.peak[kind], value)
            self._done.wait(self.every)

    def _server(self) -> list[psutil.Process]:
        """The server and its children, once the first Spark step has started it (it then
        leaves that step's tree: it is started in a session of its own)."""
        from jobs.runtime.connect import server_pid

        pid = server_pid(self.server_port) if self.server_port else None
        if pid is None or pid in {self.root.pid, *(c.pid for c in self.root.children(recursive=True))}:
            return []
        try:
            server = psutil.Process(pid)
            return [server, *server.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> dict[str, int]:
        self._done.set()
        self._thread.join()
        return {f"{kind}_mb": round(value / 2**20) for kind, value in self.peak.items()}


def measured(
    command: list[str], env: dict, log: Path, memory_limit_gb: float | None = None, server_port: int | None = None
) -> dict:
    """Run command to completion; its wall time, peak memory and last stdout line."""

    def limit_memory() -> None:
        limit = int(memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            preexec_fn=limit_memory if memory_limit_gb else None,
        )
        sampler = PeakMemory(process.pid, server_port)
        stdout, _ = process.communicate()
    wall = time.perf_counter() - started
    memory = sampler.stop()
    with log.open("a") as out:
        out.write(stdout)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return {"wall_s": round(wall, 1), **memory, "output": json.loads(lines[-1]) if lines else None}


def reference(command: list[str], env: dict, log: Path) -> dict:
    """A reference run under REFERENCE_MEMORY_LIMIT_GB; if it fails, why (its last error line)."""
    started = time.perf_counter()
    try:
        return measured(command, env, log, memory_limit_gb=REFERENCE_MEMORY_LIMIT_GB)
    except RuntimeError:
        errors = [line for line in log.read_text().splitlines() if "Error" in line]
        return {
            "failed": errors[-1].strip() if errors else "see " + str(log),
            "after_s": round(time.perf_counter() - started, 1),
            "limit_gb": REFERENCE_MEMORY_LIMIT_GB,
        }


def step_command(step: str, settings) -> list[str]:
    from jobs.names import SPARK_STEPS
    from jobs.runtime.conf import submit_conf

    bin_dir = Path(sys.executable).parent
    if step not in SPARK_STEPS or settings.spark.remote:
        return [str(bin_dir / "uplift"), step, "--run-date", RUN_DATE.isoformat()]
    # What SparkSubmitOperator runs for the DAG's Spark tasks without spark.remote.
    command = [str(bin_dir / "spark-submit"), "--master", settings.spark.master, "--driver-memory", DRIVER_MEMORY]
    for key, value in submit_conf(settings).items():
        command += ["--conf", f"{key}={value}"]
    return [*command, str(PROJECT / "jobs" / "bin" / "spark_job.py"), step, "--run-date", RUN_DATE.isoformat()]


def raw_predict_reference(settings) -> dict:
    """The champion's LightGBM boosters (outcome and effect models) on the scoring features in memory:
    seconds and rows/s."""
    import mlflow
    import pandas as pd

    from jobs.data.lake import partition_dir
    from jobs.model.registry import CHAMPION, alias_version
    from jobs.model.tracking import use_tracking

    use_tracking(settings)
    champion = alias_version(settings, CHAMPION)
    model = mlflow.pyfunc.load_model(f"models:/{settings.mlflow.registered_model}/{champion.version}")
    served = model.unwrap_python_model()
    features = pd.read_parquet(partition_dir(settings, "features/scoring", RUN_DATE), columns=served.features)
    x = served.design_matrix(features)
    boosters = [b for models in served.loaded.outcome.values() for b in models]
    boosters += [b for models in served.loaded.effects.values() for _, b in models]
    started = time.perf_counter()
    for booster in boosters:
        booster.predict(x, num_threads=os.cpu_count())
    seconds = time.perf_counter() - started
    return {"rows": len(x), "seconds": round(seconds, 2), "rows_per_s": round(len(x) / seconds)}


def model_vs_oracle(settings, report: dict) -> dict:
    """Per arm: the model's holdout Qini and the Qini of ranking the same rows by true uplift."""
    import mlflow
    import pandas as pd

    from jobs.model import metrics
    from jobs.model.tracking import HOLDOUT_ARTIFACT, latest_training_run

    run = latest_training_run(settings, RUN_DATE)
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=HOLDOUT_ARTIFACT)
    truth = pd.read_parquet(settings.paths.ground_truth / "customers.parquet")
    scored = pd.read_parquet(local).merge(truth, on="customer_id", suffixes=("", "_true"))
    exp, out = settings.experiment, {}
    for arm in exp.arms:
        rows = scored[scored["arm"].isin([arm, exp.control])]
        treated = (rows["arm"] == arm).to_numpy().astype(int)
        true_uplift = (rows[f"p_{arm}_true"] - rows["p_control_true"]).to_numpy()
        oracle = metrics.qini_auc_score(rows["label"].to_numpy(), true_uplift, treated)
        model = report["qini"][arm]
        out[arm] = {"model": model, "oracle": round(oracle, 4), "ratio": round(model / oracle, 3)}
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_home(prefix: str) -> tuple[Path, Path, dict]:
    """A fresh project home (the bench's conf overlay in it), its logs folder, and the
    environment its steps run with; this process's settings point at it as well."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    logs = home / "logs"
    logs.mkdir()
    env = {
        **os.environ,
        "UPLIFT_HOME": str(home),
        "UPLIFT_CONF": f"{DEMO_CONF}{os.pathsep}{home / 'bench.yml'}",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
    }
    spark = {"driver_memory": DRIVER_MEMORY, "remote": f"sc://localhost:{free_port()}"}
    (home / "bench.yml").write_text(yaml.safe_dump({"spark": spark}))
    os.environ.update({k: env[k] for k in ("UPLIFT_HOME", "UPLIFT_CONF")})
    return home, logs, env


def generate_command(customers: int, sends_per_day: int) -> list[str]:
    """`uplift generate` of DAYS days ending on RUN_DATE, seed SEED."""
    command = [str(Path(sys.executable).parent / "uplift"), "generate", "--last-day", RUN_DATE.isoformat()]
    command += ["--customers", str(customers), "--sends-per-day", str(sends_per_day)]
    return command + ["--days", str(DAYS), "--seed", str(SEED)]


def night(size: str, settings, env: dict, logs: Path, port: int, label: str = "") -> dict:
    """Every step of the night, each in its own process as the DAG runs it; measured."""
    from jobs.names import STEPS

    stages = {}
    for step in STEPS:
        log = logs / (f"{step}-{label}.log" if label else f"{step}.log")
        stages[step] = measured(step_command(step, settings), env, log, server_port=port)
        stages[step].pop("output")
        print(f"[{size}]{' ' + label if label else ''} {step} {stages[step]}", flush=True)
    return stages


def run_size(size: str, keep: bool, references: bool = True) -> dict:
    customers, per_day = SIZES[size]
    home, logs, env = bench_home(f"uplift-bench-{size}-")
    from jobs.names import STEPS
    from jobs.runtime.connect import address, stop
    from jobs.settings import load_settings

    settings = load_settings(demo=True)
    print(f"[{size}] home {home}", flush=True)
    stages = {"generate": measured(generate_command(customers, per_day), env, logs / "generate.log")}
    generated = stages["generate"].pop("output")
    print(f"[{size}] generate {stages['generate']['wall_s']} s: {generated}", flush=True)
    port = address(settings.spark.remote)[1]
    try:
        stages |= night(size, settings, env, logs, port)
        report = json.loads((settings.paths.reports / f"run_date={RUN_DATE}" / "run_report.json").read_text())
        predict = raw_predict_reference(settings)
        oracle = model_vs_oracle(settings, report)
        # The same night again on the same server: what each night after a machine's first costs.
        warm = {step: s["wall_s"] for step, s in night(size, settings, env, logs, port, "warm").items()}
    finally:  # the references that follow run without it
        stop(settings)

    for stage in report["stages"]:
        stages[stage["step"]] |= {k: stage[k] for k in ("seconds", "rows_in", "rows_out")}
        stages[stage["step"]]["rows_per_s"] = (
            round(stage["rows_in"] / stages[stage["step"]]["wall_s"]) if stage["rows_in"] else None
        )
    nightly_s = round(sum(stages[s]["wall_s"] for s in STEPS), 1)
    score_rows = stages["score"]["rows_in"]
    pipeline_score_rate = score_rows / stages["score"]["wall_s"]

    reference_runs = {}
    duckdb_out = home / "duckdb_etl"
    if references:
        reference_runs["duckdb_etl"] = reference(
            [
                sys.executable,
                "-m",
                "benchmarks.references",
                "duckdb-etl",
                "--run-date",
                str(RUN_DATE),
                "--out",
                str(duckdb_out),
            ],
            env | {"PYTHONPATH": str(PROJECT)},
            logs / "duckdb_etl.log",
        )
        reference_runs["pandas_tlearner"] = reference(
            [sys.executable, "-m", "benchmarks.references", "pandas-tlearner", "--run-date", str(RUN_DATE)],
            env | {"PYTHONPATH": str(PROJECT)},
            logs / "pandas_tlearner.log",
        )
    result = {
        "customers": customers,
        "sends": generated["sends"],
        "responses": generated["responses"],
        "training_rows": stages["etl"]["rows_out"] - score_rows,
        "scoring_rows": score_rows,
        "stages": stages,
        "nightly_wall_s": nightly_s,
        "peak_memory_mb": {
            kind: max(s[f"{kind}_mb"] for name, s in stages.items() if name != "generate")
            for kind in ("driver", "jvm", "python_workers")
        },
        "raw_predict": predict,
        "pipeline_scoring_rows_per_s": round(pipeline_score_rate),
        "scoring_efficiency": round(pipeline_score_rate / predict["rows_per_s"], 3),
        # The same, without the process start (JVM, interpreter, imports): the step's own clock.
        "scoring_efficiency_in_process": round(score_rows / stages["score"]["seconds"] / predict["rows_per_s"], 3),
        "qini_vs_oracle": oracle,
        "warm_night": {"stages": warm, "nightly_wall_s": round(sum(warm.values()), 1)},
        "references": reference_runs,
        "gate": report["gate"]["decision"],
        "drift": report["drift"]["outcome"],
    }
    if not keep:
        shutil.rmtree(home)
    return result


def environment() -> dict:
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    packages = [
        "pyspark",
        "lightgbm",
        "mlflow",
        "apache-airflow",
        "great-expectations",
        "evidently",
        "duckdb",
        "pandas",
    ]
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "java": java,
        "spark_master": "local[2], on a Spark Connect server",
        "driver_memory": DRIVER_MEMORY,
        **{name: version(name) for name in packages},
    }


def targets(sizes: dict) -> list[dict]:
    """Each target of issue 15 that the sizes measured allow checking."""
    checks = []

    def check(target: str, value: float | None, met: bool) -> None:
        checks.append({"target": target, "value": value, "met": met})

    if "M" in sizes:
        m, refs = sizes["M"], sizes["M"]["references"]
        pandas, duckdb = refs.get("pandas_tlearner", {}), refs.get("duckdb_etl", {})
        if "wall_s" in pandas:
            ratio = round(m["nightly_wall_s"] / pandas["wall_s"], 2)
            check("M nightly wall / pandas script wall <= 1", ratio, ratio <= TARGETS["m_nightly_over_pandas"])
            if "warm_night" in m:
                ratio = round(m["warm_night"]["nightly_wall_s"] / pandas["wall_s"], 2)
                check("the same, second night (warm server)", ratio, ratio <= TARGETS["m_nightly_over_pandas"])
        if "wall_s" in duckdb:
            ratio = round(m["stages"]["etl"]["wall_s"] / duckdb["wall_s"], 2)
            check("M Spark ETL / DuckDB ETL <= 3", ratio, ratio <= TARGETS["m_etl_over_duckdb"])
        check(
            "M scoring efficiency >= 0.5",
            m["scoring_efficiency"],
            m["scoring_efficiency"] >= TARGETS["scoring_efficiency"],
        )
    for size, row in sizes.items():
        share = round(sum(row["stages"][s]["wall_s"] for s in VALIDATION_STEPS) / row["nightly_wall_s"], 3)
        check(f"{size} validation (both steps) / nightly <= 0.15", share, share <= TARGETS["validation_share"])
        if "warm_night" in row:
            warm = row["warm_night"]
            share = round(sum(warm["stages"][s] for s in VALIDATION_STEPS) / warm["nightly_wall_s"], 3)
            check(f"{size} the same, second night (warm server)", share, share <= TARGETS["validation_share"])
    if "M" in sizes and "L" in sizes:
        ratio = round(sizes["L"]["nightly_wall_s"] / sizes["M"]["nightly_wall_s"], 2)
        check("L / M nightly wall <= 4.5", ratio, ratio <= TARGETS["l_over_m_wall"])
        driver = round(sizes["L"]["peak_memory_mb"]["driver"] / sizes["M"]["peak_memory_mb"]["driver"], 2)
        check("L / M driver peak memory <= 1.5", driver, driver <= TARGETS["l_over_m_driver_memory"])
    for size, row in sizes.items():
        worst = min(arm["ratio"] for arm in row["qini_vs_oracle"].values())
        check(f"{size} Qini / oracle >= 0.95 (worst arm)", worst, worst >= TARGETS["qini_vs_oracle"])
    return checks


def _reference_cell(run: dict, detail: str) -> str:
    if "failed" in run:
        after = f" after {run['after_s']} s" if "after_s" in run else ""
        return f"failed{after} under a {run['limit_gb']} GB memory limit: {run['failed']}"
    return f"{run['wall_s']} s, {run['driver_mb']} MB, {detail}"


def markdown(report: dict) -> str:
    from jobs.names import SPARK_STEPS

    sizes = report["sizes"]
    names = list(sizes)
    stage_names = list(next(iter(sizes.values()))["stages"])
    lines = [
        f"# Nightly benchmark {report['date']}, commit {report.get('commit', 'unknown')}",
        "",
        f"`{report['command']}` on {report['environment']['cores']} cores, "
        f"{report['environment']['memory_gb']} GB ({report['environment']['cpu']}); "
        f"Spark {report['environment']['pyspark']} {report['environment']['spark_master']}, "
        f"driver memory {report['environment']['driver_memory']}.",
        "",
        "| | "
        + " | ".join(f"{n}: {sizes[n]['sends']:,} sends, {sizes[n]['customers']:,} customers" for n in names)
        + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for stage in stage_names:
        cells = []
        for n in names:
            s = sizes[n]["stages"][stage]
            rate = f", {s['rows_per_s']:,} rows/s" if s.get("rows_per_s") else ""
            cells.append(f"{s['wall_s']} s{rate}; driver {s['driver_mb']} MB, JVM {s['jvm_mb']} MB")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    rows = {
        "**nightly (all steps, without generate)**": lambda r: f"**{r['nightly_wall_s']} s**",
        "second night, the same server (warm): all steps; the Spark steps": lambda r: (
            f"{r['warm_night']['nightly_wall_s']} s; "
            + ", ".join(f"{s} {r['warm_night']['stages'][s]} s" for s in SPARK_STEPS)
            if "warm_night" in r
            else "not measured"
        ),
        "peak memory: driver / JVM / Python workers": lambda r: " / ".join(
            f"{r['peak_memory_mb'][k]} MB" for k in ("driver", "jvm", "python_workers")
        ),
        "raw LightGBM predict (scoring rows, in memory)": lambda r: (
            f"{r['raw_predict']['seconds']} s, {r['raw_predict']['rows_per_s']:,} rows/s"
        ),
        "scoring efficiency (score step rows/s / raw predict rows/s)": lambda r: str(r["scoring_efficiency"]),
        "the same on the step's own clock (without JVM and interpreter start)": lambda r: str(
            r.get("scoring_efficiency_in_process", "not measured")
        ),
        "Qini model / oracle per arm": lambda r: ", ".join(
            f"{arm} {v['model']} / {v['oracle']} = {v['ratio']}" for arm, v in r["qini_vs_oracle"].items()
        ),
        "DuckDB reference ETL": lambda r: _reference_cell(
            r["references"]["duckdb_etl"], f"(vs our ETL {r['stages']['etl']['wall_s']} s)"
        ),
        "pandas + LightGBM script, end to end (reference)": lambda r: _reference_cell(
            r["references"]["pandas_tlearner"],
            "Qini "
            + ", ".join(
                f"{v:.4f}" for v in r["references"]["pandas_tlearner"].get("output", {}).get("qini", {}).values()
            ),
        ),
        "gate / drift": lambda r: f"{r['gate']} / {r['drift']}",
    }
    for label, cell in rows.items():
        cells = [cell(sizes[n]) if sizes[n]["references"] or "reference" not in label else "not run" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| target | value | met |", "| --- | --- | --- |"]
    lines += [f"| {c['target']} | {c['value']} | {'yes' if c['met'] else '**no**'} |" for c in report["targets"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--keep", action="store_true", help="keep each size's project home (data, logs)")
    parser.add_argument("--skip-references", action="store_true", help="skip the DuckDB and pandas references")
    args = parser.parse_args()

    today = date.today().isoformat()
    out = result_path("nightly-")
    report = json.loads(out.read_text()) if out.exists() else {"date": today, "commit": commit(), "sizes": {}}
    for size in args.size:
        report["sizes"][size] = run_size(size, args.keep, references=not args.skip_references)
        report["sizes"] = {k: report["sizes"][k] for k in SIZES if k in report["sizes"]}
        report["command"] = "make bench SIZE=" + "'" + " ".join(report["sizes"]) + "'"
        report["environment"] = environment()
        report["targets"] = targets(report["sizes"])
        out.write_text(json.dumps(report, indent=2))
        out.with_suffix(".md").write_text(markdown(report))
    publish("nightly-", report, {t["target"]: t["value"] for t in report["targets"]}, markdown(report))
    print(out.with_suffix(".md").read_text())
    print(f"written {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
