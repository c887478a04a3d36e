"""Today's single-outcome configuration, run end to end in process and reduced to a digest.

`single_outcome_audience.json` next to this file holds the digest of that configuration's audience
(`python tests/single_outcome.py` writes it). tests/model/test_guardrails.py runs the same
configuration with today's code and compares, so adding outcomes and guardrails cannot change what a
single-outcome user gets. A change meant to move every audience (a new learner, a new policy rule)
regenerates it, and says so in its commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "single_outcome_audience.json"
DATA = {"customers": 8000, "days": 30, "sends_per_day": 4000, "seed": 23}
STEPS = ("validate-raw", "etl", "validate-features", "train", "gate", "promote", "score")


def single_outcome(settings):
    """settings with no outcome besides the primary response and no exploration (the configuration of before)."""
    from jobs.settings import Targeting

    if "outcomes" not in Targeting.model_fields:
        return settings
    targeting = settings.targeting.model_copy(update={"outcomes": {}, "exploration_share": 0.0})
    return settings.model_copy(update={"targeting": targeting})


def run(settings, root: Path) -> dict:
    """Generate DATA under root, run the nightly's steps on it in process; the audience's digest."""
    from conftest import RUN_DATE
    from helpers import settings_in
    from jobs import steps
    from jobs.demo.generate import generate

    local = single_outcome(settings_in(settings, root))
    generate(local, last_day=RUN_DATE, **DATA)
    for step in STEPS:
        steps.run(step, RUN_DATE, local)
    return digest(local, RUN_DATE)


def digest(settings, run_date) -> dict:
    from jobs.data.lake import partition_dir

    audience = pd.read_parquet(
        partition_dir(settings, "audience", run_date),
        columns=["customer_id", "recommended_arm", "selected", "holdout", "expected_uplift", "policy"],
    ).sort_values("customer_id")
    lines = "\n".join(
        f"{r.customer_id}|{r.recommended_arm}|{bool(r.selected)}|{bool(r.holdout)}|{r.expected_uplift:.6f}"
        for r in audience.itertuples()
    )
    return {
        "rows": len(audience),
        "policy": audience["policy"].iloc[0],
        "recommended": {k: int(v) for k, v in audience["recommended_arm"].value_counts().sort_index().items()},
        "selected": int(audience["selected"].sum()),
        "sha256": hashlib.sha256(lines.encode()).hexdigest(),
    }


if __name__ == "__main__":  # regenerate the fixture
    sys.path.insert(0, str(HERE))
    root = Path(tempfile.mkdtemp(prefix="single_outcome_"))
    from conftest import TEST_CONF, with_demo, write_overlay

    os.environ["UPLIFT_HOME"] = str(root)
    os.environ["UPLIFT_CONF"] = with_demo(write_overlay(root, TEST_CONF))
    from jobs.settings import load_settings

    result = run(load_settings(), root / "run")
    FIXTURE.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
