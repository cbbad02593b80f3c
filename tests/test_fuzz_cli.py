"""Fuzz: the flag combinations of `train_sft.py` and `train_vrpo.py` as a careless user types them (issue 25).

Each case draws an `--output_dir` (new, empty string, a folder holding a finished model, one holding an earlier run's
checkpoints, the base model's own folder, the data's folder), `--resume` / `--overwrite_output_dir`, LoRA flags with
or without `--use_lora`, packing, data-format and schedule flags (SFT) or loss flags (VRPO). An oracle written here
says which flags a case gets wrong (contradictory or inert flags included); a valid case must train one step and
save a model in `--output_dir`. Whatever the outcome, the base model and the data files never change, and a
refused case leaves `--output_dir` as it was ("data lost" otherwise).
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from fuzz_strategies import fuzz_settings, run_case
from hypothesis import given
from hypothesis import strategies as st
from tiny import make_model
from tiny_tokenizer import make_tiny_tokenizer
from vrpo_helper import preference_rows

from illada import sft_cli, vrpo_cli

pytestmark = pytest.mark.usefixtures("one_thread")
OUTPUT_KINDS = ("new",) * 5 + ("empty_string", "holds_model", "holds_checkpoints", "base_model", "data_folder")


def snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    if folder.is_file():
        return {folder.name: hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-fuzz")
    make_model(seed=1).save_pretrained(root / "base")
    make_tiny_tokenizer(chat_template=True).save_pretrained(root / "base")
    (root / "data").mkdir()
    sft = [{"prompt": f"count {i} {i + 1}", "completion": f" {i + 2}"} for i in range(6)]
    (root / "data" / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in sft))
    prefs = preference_rows(4, conversational=False)
    (root / "data" / "prefs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in prefs))
    make_model(seed=7).save_pretrained(root / "finished")
    (root / "finished" / "README.md").write_text("a card")
    (root / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    make_model(seed=8).save_pretrained(root / "checkpoints" / "checkpoint-3")
    return root


def output_dir(kind: str, workspace: Path, case_dir: Path) -> str:
    """A fresh copy of the drawn kind of folder (the shared ones are the base model and the data)."""
    if kind == "empty_string":
        return ""
    if kind == "base_model":
        return str(workspace / "base")
    if kind == "data_folder":
        return str(workspace / "data")
    out = case_dir / "out"
    if kind in ("holds_model", "holds_checkpoints"):
        shutil.copytree(workspace / ("finished" if kind == "holds_model" else "checkpoints"), out)
    return str(out)


COMMON_FLAGS = ["--use_cpu", "--report_to", "none", "--max_steps", "1", "--per_device_train_batch_size", "2"]
COMMON_FLAGS += ["--save_strategy", "no", "--disable_tqdm", "true", "--learning_rate", "1e-3"]


@st.composite
def cli_case(draw, cli: str):
    flags, bad = {}, set()
    kind = draw(st.sampled_from(OUTPUT_KINDS))
    resume, overwrite = draw(st.integers(0, 3)) == 0, draw(st.integers(0, 2)) == 0
    if resume and overwrite:
        bad |= {"--resume", "--overwrite_output_dir"}
    if kind == "empty_string":
        bad.add("output_dir")
    elif kind in ("base_model", "data_folder"):
        bad |= {"output_dir", "model_name_or_path", "train_files"}
    elif kind == "holds_model" and not overwrite:
        bad |= {"output_dir", "--overwrite_output_dir"}
    elif kind == "holds_checkpoints" and not (overwrite or resume):
        bad |= {"output_dir", "--resume", "--overwrite_output_dir"}
    use_lora = draw(st.booleans())
    if use_lora:
        flags["--use_lora"] = None
    for name, values in (("--lora_r", ["4", "8"]), ("--lora_dropout", ["0.1"]), ("--merge_lora", [None])):
        if draw(st.integers(0, 5)) == 0:
            flags[name] = draw(st.sampled_from(values))
            if not use_lora:
                bad.add(name.lstrip("-"))  # inert (or, for merge_lora, contradictory) without --use_lora
    if cli == "sft":
        packing = draw(st.sampled_from([None, "true", "false"]))
        if packing:
            flags["--packing"] = packing
        if draw(st.booleans()):
            flags["--packing_strategy"] = draw(st.sampled_from(["wrapped", "bfd", "bfd_split"]))
            if packing == "false" and flags["--packing_strategy"] != "wrapped":
                bad |= {"packing_strategy", "packing"}
        if draw(st.integers(0, 5)) == 0:
            flags["--split_probability"] = "0.5"
            bad |= {"split_probability", "data_format"}  # the data are SFT rows: no window split
        if draw(st.integers(0, 5)) == 0:
            flags["--lr_schedule"] = "trainer"
            flags["--min_lr"] = "1e-4"
            bad |= {"min_lr", "lr_schedule"}  # the floor of the paper's schedules, inert under Trainer's
    else:
        if draw(st.integers(0, 3)) == 0:
            flags["--label_smoothing"] = "0.1"
            flags["--loss_type"] = draw(st.sampled_from(["sigmoid", "robust"]))
            if flags["--loss_type"] != "robust":
                bad |= {"label_smoothing", "loss_type"}
    if resume:
        flags["--resume"] = None
    if overwrite:
        flags["--overwrite_output_dir"] = None
    return kind, flags, bad


def argv(cli: str, workspace: Path, out: str, flags: dict) -> list[str]:
    data = workspace / "data" / ("sft.jsonl" if cli == "sft" else "prefs.jsonl")
    extra = ["--max_seq_length", "32", "--min_lr", "1e-4"] if cli == "sft" and "--min_lr" not in flags else []
    extra += ["--num_mc_samples", "2"] if cli == "vrpo" else []
    parts = ["--model_name_or_path", str(workspace / "base"), "--train_files", str(data), "--output_dir", out]
    for name, value in flags.items():
        parts += [name] if value is None else [name, value]
    return parts + COMMON_FLAGS + extra


def run_cli_case(cli: str, case, workspace: Path, case_dir: Path) -> None:
    kind, flags, bad = case
    out = output_dir(kind, workspace, case_dir)
    inputs = {"base": snapshot(workspace / "base"), "data": snapshot(workspace / "data")}
    before = snapshot(Path(out)) if out else {}

    def kept() -> None:
        assert snapshot(workspace / "base") == inputs["base"], "the base model changed"
        assert snapshot(workspace / "data") == inputs["data"], "the data changed"

    def check(_) -> None:
        assert (Path(out) / "model.safetensors").is_file() or (Path(out) / "adapter_model.safetensors").is_file()
        assert json.loads((Path(out) / "trainer_state.json").read_text())["global_step"] == 1

    def call():
        try:
            (sft_cli if cli == "sft" else vrpo_cli).main(argv(cli, workspace, out, flags))
        except ValueError:
            assert not out or snapshot(Path(out)) == before, "a refused run changed --output_dir"
            raise

    run_case(
        f"CLI: train_{cli}.py flags",
        call,
        bad=bad,
        check=check,
        kept=kept,
        describe=f"--output_dir <{kind}> {flags}",
    )


@fuzz_settings(max_examples=24)
@given(case=cli_case("sft"))
def test_fuzz_train_sft_flags(case, workspace, tmp_path_factory):
    run_cli_case("sft", case, workspace, tmp_path_factory.mktemp("case"))


@fuzz_settings(max_examples=16)
@given(case=cli_case("vrpo"))
def test_fuzz_train_vrpo_flags(case, workspace, tmp_path_factory):
    run_cli_case("vrpo", case, workspace, tmp_path_factory.mktemp("case"))
