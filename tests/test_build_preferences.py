"""Tests of demo/build_preferences.py: which pairs the preference set holds, in trl's conversational format."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from datasets import Dataset
from tiny_tokenizer import make_tiny_tokenizer

from illada.demo import build_preferences
from illada.demo.build_preferences import build_pairs, main
from illada.demo.data import example_is_heldout, make_examples
from illada.generation_config_illada import ILLaDAGenerationConfig
from illada.vrpo import build_preference_dataset


def test_pairs_prefer_the_gold_answer_to_own_wrong_answers_and_near_misses():
    examples = make_examples("train", 6, seed=7)
    answers = [e.response if i % 2 else "wrong answer" for i, e in enumerate(examples)]  # every other one wrong
    rows = build_pairs(examples, answers, num_near_misses=2, seed=7)
    own = [r for r in rows if r["kind"] == "own"]
    assert [r["prompt"][0]["content"] for r in own] == [e.prompt for e in examples[::2]]
    assert all(r["rejected"][0]["content"] == "wrong answer" for r in own)
    assert sum(r["kind"] == "near_miss" for r in rows) == 2 * len(examples)
    for row in rows:
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
        roles = [m["role"] for m in row["prompt"] + row["chosen"] + row["rejected"]]
        assert roles == ["user", "assistant", "assistant"]
    assert not any(example_is_heldout(e) for e in examples)
    assert build_pairs(examples, answers, 2, seed=7) == rows  # reproducible
    # The rows are a trl preference dataset the VRPO trainer reads.
    data = build_preference_dataset(Dataset.from_list(rows), make_tiny_tokenizer(chat_template=True), 512, 5)
    assert len(data) == len(rows)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--questions", "0"], "`--questions` must be a positive integer"),
        (["--near-misses", "-1"], "`--near-misses` must be an integer >= 0"),
        (["--model", "no-such-folder"], "No model folder"),
        (["--block-length", "0"], "`--block-length` must be a positive integer"),
    ],
)
def test_errors_exit_before_loading(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["--output", str(tmp_path / "p.jsonl"), *argv])


@pytest.mark.parametrize("argv, block_length", [([], 32), (["--block-length", "8"], 8)])
def test_block_length_sets_the_blocks_the_model_answers_in(tmp_path, monkeypatch, argv, block_length):
    """The demo build makes the pairs from answers in the exported model's blocks, whatever the stage folder says."""
    model, seen = SimpleNamespace(generation_config=ILLaDAGenerationConfig(block_length=32)), []

    def answer_right(model, tokenizer, example):
        seen.append(model.generation_config.block_length)
        return {"answer": example.response.strip()}

    monkeypatch.setattr(build_preferences, "check_model_folder", lambda folder: None)
    monkeypatch.setattr(build_preferences, "load_model", lambda folder, trust_remote_code: (model, None))
    monkeypatch.setattr(build_preferences, "generate_one", answer_right)
    rows = main(["--model", "m", "--output", str(tmp_path / "p.jsonl"), "--questions", "3", *argv])
    assert seen == [block_length] * 3
    assert [row["kind"] for row in rows] == ["near_miss"] * 3  # every answer right: near misses only


def test_an_existing_output_is_refused_without_overwrite(tmp_path):
    """Nothing lost: the pairs file (or its summary) of an earlier run is not replaced unless `--overwrite` says so;
    a folder is never an output. The demo build passes `--overwrite` for its own pairs."""
    from illada.demo.build_demo_model import BuildArguments, preferences_command

    output = tmp_path / "p.jsonl"
    output.write_text("earlier\n")
    argv = ["--output", str(output), "--near-misses-only", "--split", "heldout", "--questions", "2"]
    with pytest.raises(SystemExit, match="already exist.*--overwrite"):
        main(argv)
    assert output.read_text() == "earlier\n"
    output.unlink()
    Path(f"{output}.summary.json").write_text("{}")
    with pytest.raises(SystemExit, match="summary.json already exist"):
        main(argv)
    rows = main([*argv, "--overwrite"])
    assert len(output.read_text().splitlines()) == len(rows) > 0
    with pytest.raises(SystemExit, match="is a folder"):
        main(["--output", str(tmp_path), "--near-misses-only", "--overwrite"])
    assert "--overwrite" in preferences_command(BuildArguments(work_dir=str(tmp_path)), tmp_path, output)
