"""demo/learning_curves.py: which checkpoints it measures, the loss it reads, its exact match (checked against an
independent generate-and-compare loop on the shipped model used as a checkpoint), skipping, and the plot."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from illada.demo import learning_curves
from illada.demo.data import TASKS, make_examples

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "illada-demo"
needs_model = pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="no shipped demo model")


def _state(folder: Path, losses: list[tuple[int, float]]) -> None:
    history = [{"step": step, "loss": loss, "learning_rate": 1e-3} for step, loss in losses]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))


def test_only_complete_checkpoints_are_listed_in_step_order(tmp_path):
    for name in ("checkpoint-20", "checkpoint-3", "checkpoint-100", "checkpoint-x", "other-5"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        _state(folder, [])
    (tmp_path / "checkpoint-50").mkdir()  # no weights yet: being written
    assert [step for step, _ in learning_curves.checkpoints(tmp_path)] == [3, 20, 100]


def test_training_loss_is_the_mean_of_the_last_logged_losses_up_to_the_step(tmp_path):
    _state(tmp_path, [(10, 9.0), (20, 1.0), (30, 2.0), (40, 3.0), (50, 4.0), (60, 5.0), (70, 100.0)])
    assert learning_curves.training_loss(tmp_path, 60) == pytest.approx((1 + 2 + 3 + 4 + 5) / 5)
    _state(tmp_path, [])
    assert learning_curves.training_loss(tmp_path, 60) is None


@needs_model
def test_exact_match_equals_an_independent_generate_loop_and_checkpoints_are_measured_once(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = tmp_path / "checkpoint-7"
    shutil.copytree(SHIPPED, checkpoint)
    _state(checkpoint, [(5, 2.5), (7, 1.5)])
    output, plot = tmp_path / "curves.jsonl", tmp_path / "curves.png"
    argv = ["--run", str(tmp_path), "--per-task", "1", "--seed", "3", "--output", str(output), "--plot", str(plot)]
    (tmp_path / "train_results.json").write_text("{}")  # a finished run: --watch makes one last pass and returns
    (row,) = learning_curves.main([*argv, "--watch"])

    model = AutoModelForCausalLM.from_pretrained(SHIPPED, trust_remote_code=True).eval()
    model.generation_config.block_length = 32
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED, trust_remote_code=True)
    right = {}
    for example in make_examples("heldout", len(TASKS), seed=3):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": example.prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
        tokens = model.generate(ids)[0, ids.shape[1] :].tolist()
        end = tokens.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in tokens else len(tokens)
        right[example.task] = tokenizer.decode(tokens[:end], skip_special_tokens=True).strip() == example.response
    assert row["step"] == 7 and row["loss"] == 2.0
    assert {task: row["exact_match"][task] for task in TASKS} == {task: float(ok) for task, ok in right.items()}
    assert row["exact_match"]["all"] == pytest.approx(sum(right.values()) / len(TASKS), abs=1e-4)
    assert json.loads(output.read_text()) == row
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = learning_curves.markdown_table([row]).splitlines()
    assert table[0].split(" | ")[:3] == ["| step", "loss", "all"] and len(table) == 3
    assert table[2].startswith(f"| 7 | 2.000 | {row['exact_match']['all']:.0%} | ")
    assert learning_curves.main(argv) == [row]  # measured once: a second run reads it back
    assert len(output.read_text().splitlines()) == 1


def test_missing_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no training folder"):
        learning_curves.main(["--run", str(tmp_path / "nope")])
    with pytest.raises(ValueError, match="--per-task"):
        learning_curves.main(["--run", str(tmp_path), "--per-task", "0"])


def test_watch_waits_for_the_stage_folder_and_offsets_steps(tmp_path, monkeypatch):
    """`--watch` started before the build created the stage folder waits for it (it used to exit); `--step-offset`
    counts a continuing stage's checkpoints from the start of the stage before it."""
    run = tmp_path / "stage3"
    measured = []

    def fake_measure(folder, step, per_task, seed, block_length):
        measured.append((folder.name, step))
        return {
            "step": step,
            "loss": 1.0,
            "exact_match": {"all": 0.5},
            "questions_per_task": per_task,
            "seed": seed,
            "seconds": 0.0,
        }

    def fake_sleep(seconds):  # the build creates the folder, one checkpoint and its final results while we wait
        assert seconds == learning_curves.POLL_S
        checkpoint = run / "checkpoint-250"
        checkpoint.mkdir(parents=True)
        (checkpoint / "model.safetensors").write_bytes(b"")
        _state(checkpoint, [(250, 1.0)])
        (run / "train_results.json").write_text("{}")

    monkeypatch.setattr(learning_curves, "measure", fake_measure)
    monkeypatch.setattr(learning_curves.time, "sleep", fake_sleep)
    rows = learning_curves.main(["--run", str(run), "--watch", "--plot", "none", "--step-offset", "1000"])
    assert measured == [("checkpoint-250", 250)]
    assert [row["step"] for row in rows] == [1250]
    assert [json.loads(line)["step"] for line in (run / learning_curves.CURVES_FILE).read_text().splitlines()] == [1250]
    with pytest.raises(ValueError, match="--step-offset"):
        learning_curves.main(["--run", str(run), "--step-offset", "-1"])
