"""notebooks/quickstart.ipynb runs top to bottom offline on the shipped demo model, and its outputs make sense.

The notebook is executed the way Jupyter runs it, with the working directory `notebooks/` (its first cell finds the
repository root). The model folder is `$ILLADA_DEMO_MODEL` if set, else `illada-demo/`; without one the test skips.
"""

import ast
import json
import math
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs nbformat (requirements-test.txt)")
nbclient = pytest.importorskip("nbclient", reason="needs nbclient and ipykernel (requirements-test.txt)")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
MODEL_DIR = Path(os.environ.get("ILLADA_DEMO_MODEL", REPO / "illada-demo"))
CELL_TIMEOUT_S = 120  # a whole run takes well under a minute on 2 CPU cores; this only catches a hang

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "config.json").is_file(),
    reason=f"no demo model at {MODEL_DIR}: build it with `python -m demo.build_demo_model` (or set ILLADA_DEMO_MODEL)",
)


@pytest.fixture(scope="module")
def executed():
    """The notebook after a full run, and its tagged cells by tag."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ILLADA_DEMO_MODEL", str(MODEL_DIR.resolve()))  # the kernel inherits the environment
        client.execute()
    return {tag: cell for cell in notebook.cells for tag in cell.metadata.get("tags", [])}, notebook


@pytest.fixture(scope="module")
def special_tokens() -> dict[str, str]:
    config = json.loads((MODEL_DIR / "tokenizer_config.json").read_text())
    return {"mask": config["mask_token"], "eos": config["eos_token"]}


def _text(cell) -> str:
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")


def test_notebook_runs_without_errors(executed):
    _, notebook = executed
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells and all(cell.execution_count is not None for cell in code_cells)
    errors = [output for cell in code_cells for output in cell.outputs if output.output_type == "error"]
    assert not errors


def test_generated_answer_has_no_mask_and_stops_at_eos(executed, special_tokens):
    cells, _ = executed
    text = _text(cells["generate"])
    answer = re.search(r"^answer:\s*('.*'|\".*\") \| expected:", text, re.MULTILINE)
    assert answer is not None, text
    answer = ast.literal_eval(answer.group(1))  # printed with repr: newlines stay on one line
    assert answer.strip()
    assert special_tokens["mask"] not in answer and "░" not in answer and special_tokens["eos"] not in answer
    nfe = re.search(r"^(\d+) forward passes, (\d+) answer tokens, stopped at EOS: (True|False)$", text, re.MULTILINE)
    assert nfe is not None and int(nfe.group(1)) > 0 and nfe.group(3) == "True", text
    assert special_tokens["mask"] not in _text(cells["generate-batch"])


def test_history_plot_is_drawn_inline(executed):
    cells, _ = executed
    images = [output for output in cells["plot"].outputs if "image/png" in output.get("data", {})]
    assert len(images) == 1
    assert "step   0 |" in _text(cells["plot"])


def test_scoring_reports_both_methods(executed):
    cells, _ = executed
    counts = re.search(r"\{'confidence': '(\d+)/(\d+)', 'likelihood': '(\d+)/(\d+)'\}", _text(cells["score"]))
    assert counts is not None
    assert int(counts.group(2)) == int(counts.group(4)) > 0


def test_lora_fine_tuning_prints_a_finite_loss(executed):
    cells, _ = executed
    text = _text(cells["lora"])
    assert "trainable params" in text
    losses = re.search(r"^loss per step: \[(.*)\]$", text, re.MULTILINE)
    assert losses is not None and len(losses.group(1).split(",")) == 5, text
    final = re.search(r"^final training loss: (\S+) ", text, re.MULTILINE)
    assert final is not None and math.isfinite(float(final.group(1))) and float(final.group(1)) > 0
    assert "->" in _text(cells["after-lora"])
