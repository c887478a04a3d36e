"""The analysis notebook runs top to bottom on a real run's outputs (so it never rots)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import RUN_DATE

pytestmark = pytest.mark.slow  # the notebook after a whole nightly run

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "run_report.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


def test_report_notebook_executes_on_the_run_outputs(nightly, tmp_path, monkeypatch):
    monkeypatch.setenv("UPLIFT_RUN_DATE", RUN_DATE.isoformat())
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4, "Qini, deciles, audience and drift pictures"
    text = "".join(o.get("text", "") for o in outputs)
    assert f"for {RUN_DATE}, gate: promote" in text and "outcome:" in text
