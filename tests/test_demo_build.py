"""The demo-model recipe (demo/build_demo_model.py): arguments, stage command lines, config, export, smoke build."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from illada.demo import build_demo_model
from illada.demo.build_demo_model import (
    EXPORTED_FILES,
    STAGE_RECORD,
    BuildArguments,
    export_model,
    preferences_command,
    run_or_reuse_stage,
    stage_command,
    vrpo_command,
    write_data,
    write_model_config,
)
from illada.demo.data import TASKS, example_is_heldout, make_examples
from illada.generation_config_illada import ILLaDAGenerationConfig

REPO = Path(__file__).resolve().parents[1]


def _flags(command: list[str]) -> dict[str, str]:
    """`--name value` pairs of a command line (flags without a value map to "")."""
    flags, i = {}, 0
    while i < len(command):
        if command[i].startswith("--"):
            has_value = i + 1 < len(command) and not command[i + 1].startswith("--")
            flags[command[i]] = command[i + 1] if has_value else ""
            i += 2 if has_value else 1
        else:
            i += 1
    return flags


def test_stage_commands_follow_the_two_stage_recipe(tmp_path):
    args = BuildArguments(work_dir=str(tmp_path), pretrain_steps=40, sft_steps=200, warmup_ratio=0.1)
    pretrain = _flags(stage_command(args, "pretrain", ["--config_name", "init"], "p.jsonl", tmp_path / "s1"))
    sft = _flags(stage_command(args, "sft", ["--model_name_or_path", "s1"], "s.jsonl", tmp_path / "s2"))
    assert pretrain["--config_name"] == "init" and sft["--model_name_or_path"] == "s1"
    assert (pretrain["--data_format"], pretrain["--lr_schedule"]) == ("pretrain", "pretrain")
    assert (sft["--data_format"], sft["--lr_schedule"]) == ("sft", "sft")
    assert (pretrain["--max_steps"], sft["--max_steps"]) == ("40", "200")
    assert (pretrain["--warmup_steps"], sft["--warmup_steps"]) == ("4", "20")
    assert float(pretrain["--learning_rate"]) == args.pretrain_learning_rate
    assert float(sft["--learning_rate"]) == args.sft_learning_rate
    for flags in (pretrain, sft):
        assert "--use_cpu" in flags and flags["--seed"] == str(args.seed)
        assert "--stratified_t" in flags
    # the SFT decay length is the build's own knob; the pre-training stage keeps train_sft.py's default
    assert float(sft["--decay_fraction"]) == args.sft_decay_fraction and "--decay_fraction" not in pretrain
    half = BuildArguments(work_dir=str(tmp_path), sft_decay_fraction=0.5)
    assert _flags(stage_command(half, "sft", [], "s.jsonl", tmp_path / "s2"))["--decay_fraction"] == "0.5"
    plain = BuildArguments(work_dir=str(tmp_path), stratified_t=False)
    assert "--stratified_t" not in stage_command(plain, "sft", [], "s.jsonl", tmp_path / "s2")


def test_a_finished_stage_is_reused_only_when_its_command_is_the_same(tmp_path, monkeypatch):
    runs = []

    def fake_run_stage(command, log_path, num_threads=None):
        runs.append(command)
        (output / "train_results.json").write_text(json.dumps({"train_loss": 0.5 + len(runs)}))
        return 10.0 * len(runs)

    monkeypatch.setattr(build_demo_model, "run_stage", fake_run_stage)
    output = tmp_path / "stage2-sft"
    output.mkdir()
    fresh, resumed = BuildArguments(work_dir=str(tmp_path)), BuildArguments(work_dir=str(tmp_path), resume=True)
    command = stage_command(fresh, "sft", ["--model_name_or_path", "s1"], "s.jsonl", output)
    first, reused = run_or_reuse_stage(fresh, command, output, tmp_path / "log")
    assert (first["seconds"], first["train_loss"], reused) == (10.0, 1.5, False)
    assert json.loads((output / STAGE_RECORD).read_text()) == first
    # the same stage (the resume flag and the interpreter do not count) is not run again, and keeps its time
    resumed_command = stage_command(resumed, "sft", ["--model_name_or_path", "s1"], "s.jsonl", output)
    assert "--resume" in resumed_command
    assert run_or_reuse_stage(
        resumed, ["/other/python", *resumed_command[1:]], output, tmp_path / "log", reuse=True
    ) == (first, True)
    assert len(runs) == 1
    # another command, or reuse not allowed: the stage runs again
    longer = BuildArguments(work_dir=str(tmp_path), resume=True, sft_steps=99)
    second, reused = run_or_reuse_stage(
        longer, stage_command(longer, "sft", [], "s.jsonl", output), output, tmp_path / "log", reuse=True
    )
    assert (second["seconds"], reused, len(runs)) == (20.0, False, 2)
    run_or_reuse_stage(resumed, command, output, tmp_path / "log", reuse=False)
    assert len(runs) == 3
    # the resume flag of a command can be set apart from the arguments' (a stage after a re-run one starts afresh)
    assert "--overwrite_output_dir" in stage_command(resumed, "sft", [], "s.jsonl", output, resume=False)


def test_resumed_build_reuses_finished_stages_until_one_has_to_run(tmp_path, monkeypatch):
    """`--resume` re-runs nothing of a finished build; when a stage's command changed, that stage continues from its
    checkpoints and every later stage starts afresh from the new model (its old checkpoints are stale)."""
    from illada.demo.build_demo_model import build

    calls = []

    def fake_run_stage(command, log_path, num_threads=None):
        flags = _flags(command)
        out = Path(flags["--output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_bytes(out.name.encode())
        ILLaDAGenerationConfig(block_length=32).save_pretrained(out)
        (out / "train_results.json").write_text(json.dumps({"train_loss": 1.0 + len(calls)}))
        calls.append((out.name, "--resume" in flags))
        return 100.0

    monkeypatch.setattr(build_demo_model, "run_stage", fake_run_stage)
    recipe = dict(
        work_dir=str(tmp_path / "work"),
        output_dir=str(tmp_path / "out"),
        sft_examples=24,
        pretrain_steps=2,
        sft_steps=2,
        vrpo_steps=0,
    )
    build(BuildArguments(**recipe))
    assert calls == [("stage1-pretrain", False), ("stage2-sft", False)]
    first = json.loads((tmp_path / "out" / "build_info.json").read_text())

    calls.clear()
    build(BuildArguments(**recipe, resume=True))
    assert calls == []
    again = json.loads((tmp_path / "out" / "build_info.json").read_text())
    assert again["train_loss"] == first["train_loss"] == {"pretrain": 1.0, "sft": 2.0}
    assert again["seconds"]["pretrain_s"] == again["seconds"]["sft_s"] == 100.0
    assert again["seconds"]["total_s"] == pytest.approx(200.0 + again["seconds"]["data_and_tokenizer_s"], abs=0.1)

    calls.clear()
    build(BuildArguments(**{**recipe, "pretrain_steps": 4}, resume=True))
    assert calls == [("stage1-pretrain", True), ("stage2-sft", False)]  # stage 2 afresh: --overwrite_output_dir

    # another task mix rewrites sft.jsonl under the same name, so the command is the same but the data is not:
    # stage 2 runs again, afresh (its checkpoints learned the old data)
    calls.clear()
    build(BuildArguments(**{**recipe, "pretrain_steps": 4, "task_weights": "add:5"}, resume=True))
    assert calls == [("stage2-sft", False)]
    record = json.loads((tmp_path / "work" / "stage2-sft" / STAGE_RECORD).read_text())
    sft_file = tmp_path / "work" / "sft.jsonl"
    assert record["train_file_sha256"] == hashlib.sha256(sft_file.read_bytes()).hexdigest()


def test_vrpo_stage_commands_start_from_the_sft_model_and_its_pairs(tmp_path):
    args = BuildArguments(
        work_dir=str(tmp_path), vrpo_steps=120, vrpo_learning_rate=2e-5, vrpo_questions=48, generation_block_length=16
    )
    preferences = _flags(preferences_command(args, tmp_path / "s2", tmp_path / "p.jsonl"))
    assert preferences["--model"] == str(tmp_path / "s2") and preferences["--output"] == str(tmp_path / "p.jsonl")
    assert (preferences["--questions"], preferences["--block-length"]) == ("48", "16")
    assert "--trust-remote-code" in preferences and "--split" not in preferences  # the training split only
    vrpo = vrpo_command(args, tmp_path / "s2", "p.jsonl", tmp_path / "s3")
    assert vrpo[1].endswith("train_vrpo.py")
    flags = _flags(vrpo)
    assert (flags["--model_name_or_path"], flags["--train_files"]) == (str(tmp_path / "s2"), "p.jsonl")
    assert (flags["--max_steps"], float(flags["--learning_rate"]), flags["--warmup_steps"]) == ("120", 2e-5, "10")
    assert (flags["--per_device_train_batch_size"], flags["--num_mc_samples"], float(flags["--beta"])) == (
        "8",
        "8",
        0.1,
    )
    assert "--use_cpu" in flags and flags["--seed"] == str(args.seed) and "--overwrite_output_dir" in flags
    assert "--resume" in vrpo_command(args, tmp_path / "s2", "p.jsonl", tmp_path / "s3", resume=True)


def test_resumed_build_rebuilds_preferences_only_for_another_model_or_command(tmp_path, monkeypatch):
    """The VRPO stage's pairs come from the SFT model's answers: a resumed build reuses them (and the stage) while
    the SFT weights and the command are the same, and builds them again, with VRPO afresh, when either changed."""
    from illada.demo.build_demo_model import build

    calls = []

    def fake_run_stage(command, log_path, num_threads=None):
        flags = _flags(command)
        if "illada.demo.build_preferences" in command:
            # pairs that depend on the model's weights and the number of questions, as the real answers do
            weights = (Path(flags["--model"]) / "model.safetensors").read_bytes()
            output = Path(flags["--output"])
            output.write_text(json.dumps({"weights": weights.decode(), "questions": flags["--questions"]}) + "\n")
            summary = {"exact_match": 0.5, "pairs": 1, "own_wrong_answers": 1}
            Path(f"{output}.summary.json").write_text(json.dumps(summary))
            calls.append(("preferences", flags["--model"]))
            return 7.0
        out = Path(flags["--output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.safetensors").write_bytes(f"{out.name}:{flags['--max_steps']}".encode())
        ILLaDAGenerationConfig(block_length=32).save_pretrained(out)
        (out / "train_results.json").write_text(json.dumps({"train_loss": 1.0 + len(calls)}))
        calls.append((out.name, "--resume" in flags))
        return 100.0

    monkeypatch.setattr(build_demo_model, "run_stage", fake_run_stage)
    work = tmp_path / "work"
    recipe = dict(
        work_dir=str(work),
        output_dir=str(tmp_path / "out"),
        sft_examples=24,
        pretrain_steps=2,
        sft_steps=2,
        vrpo_steps=3,
    )
    build(BuildArguments(**recipe))
    assert calls == [
        ("stage1-pretrain", False),
        ("stage2-sft", False),
        ("preferences", str(work / "stage2-sft")),
        ("stage3-vrpo", False),
    ]
    info = json.loads((tmp_path / "out" / "build_info.json").read_text())
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"stage3-vrpo:3"  # the VRPO model is shipped
    assert info["train_loss"] == {"pretrain": 1.0, "sft": 2.0, "vrpo": 4.0}
    assert (info["seconds"]["preferences_s"], info["seconds"]["vrpo_s"]) == (7.0, 100.0)
    assert info["seconds"]["total_s"] == pytest.approx(307.0 + info["seconds"]["data_and_tokenizer_s"], abs=0.1)
    assert info["preferences"] == {"exact_match": 0.5, "pairs": 1, "own_wrong_answers": 1}

    calls.clear()
    build(BuildArguments(**recipe, resume=True))
    assert calls == []
    again = json.loads((tmp_path / "out" / "build_info.json").read_text())
    assert again["seconds"] == {
        **info["seconds"],
        "data_and_tokenizer_s": again["seconds"]["data_and_tokenizer_s"],
        "total_s": again["seconds"]["total_s"],
    }

    # more questions: the pairs change, so VRPO runs again, afresh
    calls.clear()
    build(BuildArguments(**{**recipe, "vrpo_questions": 36}, resume=True))
    assert calls == [("preferences", str(work / "stage2-sft")), ("stage3-vrpo", False)]

    # another SFT model: its answers (and so the pairs) are new, and VRPO starts afresh from it
    calls.clear()
    build(BuildArguments(**{**recipe, "vrpo_questions": 36, "sft_steps": 4}, resume=True))
    assert calls == [("stage2-sft", True), ("preferences", str(work / "stage2-sft")), ("stage3-vrpo", False)]
    record = json.loads((work / "preferences.jsonl.build.json").read_text())
    assert record["model_sha256"] == hashlib.sha256(b"stage2-sft:4").hexdigest()

    # without a VRPO stage the SFT model is shipped
    calls.clear()
    build(BuildArguments(**{**recipe, "vrpo_questions": 36, "sft_steps": 4, "vrpo_steps": 0}, resume=True))
    assert calls == [] and (tmp_path / "out" / "model.safetensors").read_bytes() == b"stage2-sft:4"
    assert "vrpo" not in json.loads((tmp_path / "out" / "build_info.json").read_text())["train_loss"]


def test_written_data_hold_only_the_training_split(tmp_path):
    args = BuildArguments(work_dir=str(tmp_path), sft_examples=600)
    files = write_data(args, tmp_path)
    rows = [json.loads(line) for line in Path(files["sft"]).read_text().splitlines()]
    assert len(rows) == 600
    heldout_prompts = {e.prompt for e in make_examples("heldout", 240)}
    assert not heldout_prompts & {row["prompt"] for row in rows}
    examples = make_examples("train", 600, seed=args.seed, tasks=args.weighted_tasks())
    assert [(r["prompt"], r["response"]) for r in rows] == [(e.prompt, e.response) for e in examples]
    assert not any(example_is_heldout(e) for e in examples)
    texts = [json.loads(line)["text"] for line in Path(files["pretrain"]).read_text().splitlines()]
    assert len(texts) > 100 and all(texts)


def test_model_config_matches_tokenizer(tmp_path):
    args = BuildArguments(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    config = write_model_config(args, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    tokenizer_json = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["vocab_size"] == config.vocab_size == len(tokenizer_json["model"]["vocab"]) <= 600
    assert (saved["bos_token_id"], saved["pad_token_id"], saved["eos_token_id"], saved["mask_token_id"]) == (0, 1, 2, 5)
    assert saved["num_key_value_heads"] == 2 < saved["num_attention_heads"] == 4  # grouped-query attention
    assert saved["tie_word_embeddings"] is True and "auto_map" in saved


def test_export_copies_only_loadable_files(tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    for name in (*EXPORTED_FILES, "modeling_illada.py", "training_args.bin", "trainer_state.json"):
        (stage / name).write_bytes(name.encode())
    (stage / "checkpoint-10").mkdir()
    ILLaDAGenerationConfig(block_length=32).save_pretrained(stage)
    export_model(stage, tmp_path / "out", {"note": "test"}, block_length=16)
    exported = {p.name for p in (tmp_path / "out").iterdir()}
    assert exported == {*EXPORTED_FILES, "modeling_illada.py", "build_info.json"}
    info = json.loads((tmp_path / "out" / "build_info.json").read_text())
    assert info["note"] == "test" and len(info["weights_sha256"]) == 64
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text())["block_length"] == 16


def test_checkpoints_and_resume_reach_the_stage_commands(tmp_path):
    def flags(**kwargs):
        args = BuildArguments(work_dir=str(tmp_path), **kwargs)
        return _flags(stage_command(args, "sft", ["--model_name_or_path", "s1"], "s.jsonl", tmp_path / "s2"))

    none = flags(save_steps=0)
    assert none["--save_strategy"] == "no" and "--save_steps" not in none
    assert "--overwrite_output_dir" in none and "--resume" not in none  # a new build starts afresh
    saving = flags(save_steps=250, resume=True)
    assert (saving["--save_strategy"], saving["--save_steps"]) == ("steps", "250")
    assert "--resume" in saving and "--overwrite_output_dir" not in saving


def test_task_weights_set_the_share_of_each_task(tmp_path):
    from collections import Counter

    from illada.demo.data import TASKS

    args = BuildArguments(work_dir=str(tmp_path), task_weights="add:3, copy:2", sft_examples=len(TASKS) * 30 + 90)
    cycle = args.weighted_tasks()
    assert Counter(cycle) == {**dict.fromkeys(TASKS, 1), "add": 3, "copy": 2}
    rows = [json.loads(line) for line in Path(write_data(args, tmp_path)["sft"]).read_text().splitlines()]
    counts = Counter(row["task"] for row in rows)
    # make_examples cycles through the weighted list (len(TASKS) + 3 names): exactly 30 cycles
    per_cycle = len(cycle)
    assert len(rows) == 30 * per_cycle
    assert counts == {name: 30 * weight for name, weight in Counter(cycle).items()}
    assert BuildArguments(task_weights="").weighted_tasks() == tuple(TASKS)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(task_weights="nope:2"), "`task_weights`"),
        (dict(task_weights="add:0"), "`task_weights`"),
        (dict(task_weights="add:1.5"), "`task_weights`"),
        (dict(task_weights="add"), "`task_weights`"),
        (dict(save_steps=-1), "`save_steps`"),
        (dict(sft_steps=0), "`sft_steps`"),
        (dict(hidden_size=1.5), "`hidden_size`"),
        (dict(max_seq_length=1024), "`max_seq_length`"),
        (dict(warmup_ratio=1.0), "`warmup_ratio`"),
        (dict(sft_decay_fraction=1.5), "`sft_decay_fraction`"),
        (dict(sft_decay_fraction=float("nan")), "`sft_decay_fraction`"),
        (dict(num_threads=0), "`num_threads`"),
        (dict(vrpo_steps=-1), "`vrpo_steps`"),
        (dict(vrpo_questions=0), "`vrpo_questions`"),
        (dict(vrpo_learning_rate=0.0), "`vrpo_learning_rate`"),
        (dict(vrpo_beta=float("inf")), "`vrpo_beta`"),
        (dict(vrpo_num_mc_samples=0), "`vrpo_num_mc_samples`"),
        (dict(vrpo_warmup_steps=-2), "`vrpo_warmup_steps`"),
    ],
)
def test_bad_build_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BuildArguments(**kwargs)


def test_smoke_shrinks_the_run_and_keeps_the_shipped_folder():
    args = BuildArguments(smoke=True, work_dir="somewhere")
    assert args.pretrain_steps == args.sft_steps == 2 and args.sft_examples < 10_000
    assert args.vrpo_steps == 2 and args.vrpo_questions == len(TASKS)  # one question per task
    assert BuildArguments(smoke=True, vrpo_steps=0).vrpo_steps == 0
    assert Path(args.output_dir) == Path("somewhere") / "smoke-model"


@pytest.mark.slow
def test_smoke_build_loads_with_auto_classes(tmp_path):
    """All three stages run (two through train_sft.py, VRPO on the SFT model's own answers through train_vrpo.py), a
    `--resume` re-run reuses them and the preference pairs, and the exported folder loads offline with
    trust_remote_code."""
    out = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "illada.demo.build_demo_model",
        "--smoke",
        "--work_dir",
        str(tmp_path / "work"),
        "--output_dir",
        str(out),
        "--hidden_size",
        "64",
        "--intermediate_size",
        "128",
        "--num_hidden_layers",
        "2",
        "--batch_size",
        "4",
    ]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=600)
    first = json.loads((out / "build_info.json").read_text())
    # a resumed build of the same recipe runs no stage again and reports the times the stages took when they ran
    rerun = subprocess.run(
        [*command, "--resume"], cwd=REPO, env=env, check=True, capture_output=True, text=True, timeout=600
    )
    assert rerun.stdout.count("not run again") == 3 and "not built again" in rerun.stdout
    assert "train_sft.py" not in rerun.stdout and "train_vrpo.py" not in rerun.stdout
    again = json.loads((out / "build_info.json").read_text())
    assert set(first["train_loss"]) == {"pretrain", "sft", "vrpo"}
    assert again["train_loss"] == first["train_loss"] and again["preferences"] == first["preferences"]
    assert first["preferences"]["pairs"] >= len(TASKS)  # a near miss for each question, at least
    assert {k: v for k, v in again["seconds"].items() if k not in ("data_and_tokenizer_s", "total_s")} == {
        k: v for k, v in first["seconds"].items() if k not in ("data_and_tokenizer_s", "total_s")
    }
    assert again["weights_sha256"] == first["weights_sha256"]
    check = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "ids = tokenizer.apply_chat_template([{'role': 'user', 'content': 'What is 2 + 3?'}],\n"
        "    add_generation_prompt=True, return_tensors='pt')['input_ids']\n"
        "logits = model(ids).logits\n"
        "assert logits.shape == (1, ids.shape[1], model.config.vocab_size), logits.shape\n"
        "assert torch.isfinite(logits).all()\n"
        "print(type(model).__name__, model.config.mask_token_id, tokenizer.mask_token_id)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check, str(out)],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.stdout.split() == ["ILLaDAForCausalLM", "5", "5"]
    info = json.loads((out / "build_info.json").read_text())
    assert info["arguments"]["smoke"] is True and info["weights_mib"] < 20
