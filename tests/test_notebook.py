"""notebooks/quickstart.ipynb runs top to bottom offline on the shipped demo model, reproduces the answers it was
committed with, and what it prints is true: right/wrong marks, the measured accuracy, the denoising frames, the
learning rate the schedule gives, and a fine-tuning run that teaches the model facts it did not know.

The notebook is executed the way Jupyter runs it, with the working directory `notebooks/` (its first cell finds the
repository root). The model folder is `$ILLADA_DEMO_MODEL` if set, else `illada-demo/`; without one the test skips.
The comparison with the committed outputs is made only for the shipped model (the outputs were made with it).
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
SHIPPED = REPO / "illada-demo"
MODEL_DIR = Path(os.environ.get("ILLADA_DEMO_MODEL", SHIPPED))
CELL_TIMEOUT_S = 300  # a whole run takes about two minutes on 2 CPU cores; this only catches a hang
# Cells whose printed output must be the same in a fresh run as in the committed notebook.
REPRODUCED_TAGS = ("generate", "generate-batch", "plot", "score", "before-lora", "lora", "after-lora")
ANSWER_LINE = re.compile(r"^(?:   )?('.*?') -> ('.*?') (?:\| expected ('.*?') \| |\()?(right|wrong)", re.MULTILINE)

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "config.json").is_file(),
    reason=f"no demo model at {MODEL_DIR}: build it with `python -m illada.demo.build_demo_model` (or set "
    "ILLADA_DEMO_MODEL)",
)


def _tagged(notebook) -> dict:
    return {tag: cell for cell in notebook.cells for tag in cell.metadata.get("tags", [])}


@pytest.fixture(scope="module")
def committed() -> dict:
    """The tagged cells of the notebook as committed (with the outputs of the run that made them)."""
    return _tagged(nbformat.read(NOTEBOOK, as_version=4))


@pytest.fixture(scope="module")
def executed():
    """The notebook after a fresh full run, and its tagged cells by tag."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ILLADA_DEMO_MODEL", str(MODEL_DIR.resolve()))  # the kernel inherits the environment
        client.execute()
    return _tagged(notebook), notebook


@pytest.fixture(scope="module")
def special_tokens() -> dict[str, str]:
    config = json.loads((MODEL_DIR / "tokenizer_config.json").read_text())
    return {"mask": config["mask_token"], "eos": config["eos_token"]}


def _text(cell) -> str:
    return "".join(output.get("text", "") for output in cell.outputs if output.get("output_type") == "stream")


def test_notebook_runs_without_errors(executed):
    _, notebook = executed
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells and all(cell.execution_count is not None for cell in code_cells)
    errors = [output for cell in code_cells for output in cell.outputs if output.output_type == "error"]
    assert not errors


def test_committed_notebook_holds_the_outputs_of_a_run(committed):
    for tag in REPRODUCED_TAGS:
        assert _text(committed[tag]).strip(), f"cell {tag!r} was committed without its output"
    assert any("image/png" in output.get("data", {}) for output in committed["plot"].outputs)


@pytest.mark.skipif(MODEL_DIR.resolve() != SHIPPED.resolve(), reason="the committed outputs are the shipped model's")
@pytest.mark.parametrize("tag", REPRODUCED_TAGS)
def test_fresh_run_prints_what_was_committed(executed, committed, tag):
    """Same answers, scores, losses and accuracies as the committed run (greedy decoding, seeded training)."""
    cells, _ = executed
    fresh, saved = _text(cells[tag]), _text(committed[tag])
    if tag == "lora":  # the trainer's own log lines carry timings: compare the cell's lines, numbers loosely
        ours = re.compile(r"^(?:settings|trainable params|step|final training loss).*$", re.MULTILINE)
        fresh, saved = ("\n".join(ours.findall(text)) for text in (fresh, saved))
        assert fresh.count("\n") == saved.count("\n") >= 11, (fresh, saved)
        numbers = [re.findall(r"[-+]?\d+\.\d+(?:e[-+]\d+)?", text) for text in (fresh, saved)]
        assert len(numbers[0]) == len(numbers[1]) and numbers[0], (fresh, saved)
        assert all(math.isclose(float(a), float(b), rel_tol=1e-3) for a, b in zip(*numbers)), (fresh, saved)
        return
    assert fresh == saved


def test_answers_are_marked_right_exactly_when_they_equal_the_reference(executed, special_tokens):
    cells, _ = executed
    lines = ANSWER_LINE.findall(_text(cells["generate"]))
    assert len(lines) == 4, _text(cells["generate"])
    for _, answer, expected, verdict in lines:
        answer, expected = ast.literal_eval(answer), ast.literal_eval(expected)
        assert verdict == ("right" if answer == expected else "wrong")
        assert special_tokens["mask"] not in answer and "░" not in answer and special_tokens["eos"] not in answer
    # The batch (left padding, temperature 0) with the default preset prints the answers of the single runs, and
    # lossless-fast the same answers in at most as many forward passes.
    text = _text(cells["generate-batch"])
    batch = re.findall(r"^   ('.*?') -> ('.*?') \((right|wrong)\)$", text, re.MULTILINE)
    presets = re.findall(r"^preset (\S+): (\d+) forward passes for the batch$", text, re.MULTILINE)
    assert [name for name, _ in presets] == ["exact", "default", "lossless-fast", "fast"] and len(batch) == 16
    answers = {name: batch[4 * i : 4 * i + 4] for i, (name, _) in enumerate(presets)}
    single = {ast.literal_eval(prompt): ast.literal_eval(answer) for prompt, answer, _, _ in lines}
    for prompt, answer, _verdict in answers["default"]:
        assert single[ast.literal_eval(prompt)] == ast.literal_eval(answer)
    assert answers["lossless-fast"] == answers["default"]
    forwards = {name: int(count) for name, count in presets}
    assert forwards["lossless-fast"] <= forwards["default"] < forwards["exact"]


def test_printed_accuracy_is_the_measured_one(executed):
    cells, _ = executed
    measured = json.loads((MODEL_DIR / "eval_results.json").read_text())
    overall = measured["summary"]["all"]
    expected = f"measured exact match: {overall['exact_match']:.1%} on {overall['questions']} held-out questions"
    assert expected in _text(cells["generate"])


def test_denoising_frames_show_nothing_after_the_answers_eos(executed):
    cells, _ = executed
    text = _text(cells["plot"])
    frames = re.findall(r"^step +(\d+) \| (.*)$", text, re.MULTILINE)
    assert len(frames) >= 2 and frames[0][0] == "0"
    assert "stopped at EOS: True" in text
    last = frames[-1][1]
    assert "░" not in last and "[EOS]" in last  # the answer is complete and ends with EOS
    for _, frame in frames:
        if "[EOS]" in frame:
            assert set(frame.split("[EOS]", 1)[1]) <= {"·"}, frame
    answer = re.search(r"^answer: ('.*') \| expected", text, re.MULTILINE)
    assert answer is not None and last.split("[EOS]")[0].strip() == ast.literal_eval(answer.group(1))


def test_history_plot_is_drawn_inline(executed):
    cells, _ = executed
    images = [output for output in cells["plot"].outputs if "image/png" in output.get("data", {})]
    assert len(images) == 1


def test_scoring_reports_both_methods(executed):
    cells, _ = executed
    counts = re.search(r"\{'confidence': '(\d+)/(\d+)', 'likelihood': '(\d+)/(\d+)'\}", _text(cells["score"]))
    assert counts is not None
    assert int(counts.group(2)) == int(counts.group(4)) > 0


def _schedule(step: int, total: int, peak: float, warmup: int, floor: float, decay_fraction: float = 0.1) -> float:
    """The 'sft' schedule written out by hand: the rate used by optimizer step `step` (1-based)."""
    k = step - 1
    if k < warmup:
        return peak * (k + 1) / warmup
    decay_start = max(warmup, total - math.ceil(decay_fraction * total))
    if k < decay_start:
        return peak
    return floor + (peak - floor) * (1 - (k - decay_start) / (total - decay_start))


def test_logged_learning_rate_is_the_one_the_schedule_gives(executed):
    cells, _ = executed
    text = _text(cells["lora"])
    assert "trainable params" in text
    settings = re.search(
        r"^settings: steps (\d+), peak learning rate (\S+), warmup (\d+), min_lr (\S+)$", text, re.MULTILINE
    )
    assert settings is not None, text
    total, peak, warmup, floor = int(settings[1]), float(settings[2]), int(settings[3]), float(settings[4])
    logged = re.findall(r"^step +(\d+)  loss (\S+)  learning rate (\S+)$", text, re.MULTILINE)
    assert len(logged) == 10, text
    for step, loss, rate in logged:
        assert math.isfinite(float(loss)) and float(loss) > 0
        assert float(rate) == pytest.approx(_schedule(int(step), total, peak, warmup, floor), rel=1e-2), step
    assert float(logged[-1][2]) < peak  # the decay is visible in the log


def test_fine_tuning_teaches_the_new_facts_and_keeps_the_old_tasks(executed):
    cells, _ = executed
    rows = dict(
        re.findall(
            r"^(colours|demo tasks) \(held-out(?: wordings)?\) +before +(\d+%  after +\d+%)$",
            _text(cells["after-lora"]),
            re.MULTILINE,
        )
    )
    assert set(rows) == {"colours", "demo tasks"}, _text(cells["after-lora"])
    (new_before, new_after), (old_before, old_after) = (
        [int(v) / 100 for v in re.findall(r"(\d+)%", rows[name])] for name in ("colours", "demo tasks")
    )
    assert new_before <= 0.4 and new_after >= new_before + 0.4  # learned, on wordings it was not trained on
    assert old_after >= old_before - 0.25  # the replay keeps most of the old skills
