"""Builds the small iLLaDA demo model shipped in `illada-demo/`: the paper's two training stages, then VRPO.

Run from the repository root (fixed seeds, no network; with the defaults about 1 h 33 min on 2 CPU cores,
measured in `illada-demo/build_info.json`; on cores busy with other work use `--num_threads 1` and expect it to
take longer):

    python -m illada.demo.build_demo_model            # the full recipe, writes illada-demo/
    python -m illada.demo.build_demo_model --smoke    # a few steps of each stage, writes runs/demo-build/smoke-model/
    python -m illada.demo.build_demo_model --help     # every knob (sizes, steps, learning rates, task mix)
    python -m illada.demo.build_demo_model --resume   # continue a stopped build from its last checkpoints
    python -m illada.demo.learning_curves --run runs/demo-build/stage2-sft   # per-task held-out curves

What it does, in `work_dir` (default `runs/demo-build/`):

1. Data (`illada.demo.data`): the pre-training corpus (Python's bundled reference pages plus one sentence per fact) as
   `pretrain.jsonl` (`text`), and `sft_examples` training-split instruction examples as `sft.jsonl`
   (`prompt`/`response`). The held-out split is never written.
2. Tokenizer (`illada.demo.tokenizer`): byte-level BPE with iLLaDA's special ids (bos 0, pad 1, eos 2, mask 5), one
   token per digit, and the same token for a word at the start of an answer as inside the question.
3. Model config: a few-million-parameter iLLaDA (grouped-query attention, tied embeddings).
4. Stage 1, pre-training: `train_sft.py --data_format pretrain --lr_schedule pretrain` from a random
   initialisation (documents joined by EOS, cut into windows, 30% of windows split at a random point).
5. Stage 2, SFT: `train_sft.py --data_format sft --lr_schedule sft` from stage 1: `prompt + response + EOS`
   examples streamed into windows, masks over the whole window; the task mix set by `task_weights`.
6. Last stage, preference optimisation (`--vrpo_steps N`, 0 for none): the SFT model answers `vrpo_questions`
   training-split questions (`python -m illada.demo.build_preferences`, in the exported model's blocks); the gold
   answer is preferred to each wrong answer and to a near miss of every question, and `train_vrpo.py` runs VRPO (DPO on
   antithetic ELBO estimates, the SFT model as the frozen reference) on those pairs. It takes about two minutes and
   keeps no checkpoints: a VRPO stage that was stopped runs again.
7. Export: the weights, config (with `auto_map`), generation config (`block_length` set to
   `generation_block_length`), tokenizer and code files go to `output_dir`, with `build_info.json` (arguments,
   versions, corpus fingerprint, stage times and losses, the preference pairs' counts).

Every stage is a plain `train_sft.py` / `illada.demo.build_preferences` / `train_vrpo.py` command line (printed before
it runs), so the recipe can also be run by hand. With `--resume`, a stage that finished with the same command and
training data is not run again, and `build_info.json` counts the time it took when it ran (recorded in its folder's
`build_stage.json`); preference pairs built from the same weights with the same command are not built again.

Sizing (2-core CPU, fp32, one optimizer step of 32 x 128 tokens, forward + backward + AdamW). Measured on an idle
machine for the first recipe: hidden 128 / 4 layers (1.05M parameters, 4.0 MB) 0.22 s; 192 / 6 (2.8M, 10.8 MB)
0.53 s; 256 / 4 (3.7M, 14 MB) 0.56 s; 256 / 6 (5.0M, 18.9 MB) 0.79 s; vocabularies of 1k / 2k / 4k change the last
by -5% / 0 / +15%. Measured again on the day of the second recipe (the same machine type, shared): 128 / 4 0.37 s,
128 / 6 0.54 s, 192 / 6 0.88 s. Within the 2-hour budget that is 15,000+ steps at 128 / 4 but 7,000 at 192 / 6,
and the first recipe's learning curves said steps were what it lacked (docs/demo.md), so the
size stayed. The second recipe's curves (15,000 steps, constant LR, decay over the last 10%) showed the training
loss flat at 1.11-1.13 from step 9,000 to 13,000 and most of the held-out gain in the final decay, so the third
recipe (the defaults) decays the learning rate linearly from the end of the warmup (`sft_decay_fraction` 1.0) over
13,000 steps (1 h 30 min, 0.41 s per step). Windows of 16 x 256 cost 5-15% more than 32 x 128, packed-document
masks 0-5% more. On a machine whose two cores are shared with other work, two torch threads run 3-7x slower than
on an idle machine and one thread about 2x slower: build with `--num_threads 1` there. Continuing the SFT on
the weakest tasks (curriculum and arithmetic-heavy stages, tried and dropped: docs/demo.md) left the held-out exact
match where it was. The VRPO stage on the third recipe's SFT model (pairs 69 s, 150 steps 96 s) raised it from 55.0%
to 59.3% (other seeds: 60.3%, 61.3%; 960 questions or 600 steps: 58.0%, 55.3%; docs/vrpo.md has the table), so the
defaults end with it.
"""

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tokenizers
import torch
import transformers
from transformers import HfArgumentParser

from illada.configuration_illada import ILLaDAConfig
from illada.demo.data import DEMO_SEED, TASKS, corpus_fingerprint, make_examples, pretraining_texts, tokenizer_texts
from illada.demo.tokenizer import train_tokenizer
from illada.generation_config_illada import ILLaDAGenerationConfig
from illada.utils import check_non_negative_int
from illada.utils_illada import check_positive_int, check_range

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO_ROOT / "train_sft.py"
VRPO_SCRIPT = REPO_ROOT / "train_vrpo.py"
# What `output_dir` receives from the stage-2 folder: everything `from_pretrained` needs, nothing else.
EXPORTED_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
SMOKE_STEPS = 2
# Twice the data for the tasks the 7,000-step model of the first recipe got wrong most (<= 67% held-out exact match),
# three times for the two it did not learn at all (add 0%, subtract 8%); see docs/demo.md.
DEFAULT_TASK_WEIGHTS = (
    "add:3,subtract:3,count_up:2,sort_words:2,copy:2,reverse_words:2,count_occurrences:2,sort_digits:2"
)
SMOKE_SFT_EXAMPLES = 2000
# Written by `build` into each finished stage folder: the stage's command (without the interpreter and the
# resume/overwrite flag), the SHA-256 of its training file, seconds and training loss. `--resume` reuses a stage
# whose record has the same command and data.
STAGE_RECORD = "build_stage.json"


@dataclass
class BuildArguments:
    """Sizes, step counts and paths of the demo-model recipe (defaults: the committed model)."""

    output_dir: str = field(default="illada-demo", metadata={"help": "Where the finished model folder goes."})
    work_dir: str = field(default="runs/demo-build", metadata={"help": "Data, tokenizer and stage outputs."})
    seed: int = field(default=DEMO_SEED, metadata={"help": "Seed of the data, the initialisation and the masks."})
    smoke: bool = field(
        default=False,
        metadata={
            "help": f"Check the pipeline: {SMOKE_STEPS} steps per stage on {SMOKE_SFT_EXAMPLES} SFT examples; the "
            "model goes to `work_dir`/smoke-model unless `output_dir` is given."
        },
    )
    vocab_size: int = field(default=2048, metadata={"help": "Tokenizer vocabulary, special tokens included."})
    # Size: learning is limited by optimizer steps, not capacity (see the sizing study in the module docstring),
    # so the default is the smallest model and the most steps that fit the budget.
    hidden_size: int = field(default=128, metadata={"help": "Width of the residual stream."})
    intermediate_size: int = field(default=384, metadata={"help": "Width of the SwiGLU MLP."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Decoder layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Query heads."})
    num_key_value_heads: int = field(default=2, metadata={"help": "Key/value heads (grouped-query attention)."})
    max_position_embeddings: int = field(default=512, metadata={"help": "Longest prompt + answer the model takes."})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base (short contexts need no larger)."})
    max_seq_length: int = field(default=128, metadata={"help": "Training window length (tokens), both stages."})
    batch_size: int = field(default=32, metadata={"help": "Windows per optimizer step, both stages."})
    pretrain_steps: int = field(default=150, metadata={"help": "Stage-1 optimizer steps."})
    pretrain_learning_rate: float = field(default=2e-3, metadata={"help": "Stage-1 peak learning rate."})
    pretrain_min_lr: float = field(default=1e-4, metadata={"help": "Stage-1 floor of the cosine decay."})
    sft_steps: int = field(default=13_000, metadata={"help": "Stage-2 optimizer steps."})
    sft_learning_rate: float = field(default=3e-3, metadata={"help": "Stage-2 peak learning rate."})
    sft_min_lr: float = field(default=3e-5, metadata={"help": "Stage-2 floor of the linear decay."})
    sft_decay_fraction: float = field(
        default=1.0,
        metadata={
            "help": "Share of the stage-2 steps, at the end, over which the learning rate decays linearly to "
            "`sft_min_lr` (train_sft.py `--decay_fraction`; the paper: 0.1). 1: decay right after the warmup."
        },
    )
    sft_examples: int = field(default=200_000, metadata={"help": "Training-split examples written for SFT."})
    vrpo_steps: int = field(
        default=150,
        metadata={
            "help": "Optimizer steps of the last stage, preference optimisation (train_vrpo.py) on pairs built from "
            "the SFT model's own answers to `vrpo_questions` training-split questions "
            "(illada.demo.build_preferences); 0: no VRPO stage."
        },
    )
    vrpo_questions: int = field(
        default=240,
        metadata={
            "help": "Training-split questions the SFT model answers to build the preference pairs (spread over the "
            "tasks)."
        },
    )
    vrpo_learning_rate: float = field(default=3e-5, metadata={"help": "VRPO peak learning rate (linear decay to 0)."})
    vrpo_warmup_steps: int = field(default=10, metadata={"help": "VRPO warmup steps."})
    vrpo_batch_size: int = field(default=8, metadata={"help": "Preference pairs per VRPO optimizer step."})
    vrpo_num_mc_samples: int = field(default=8, metadata={"help": "ELBO samples per answer (VRPO's n)."})
    vrpo_beta: float = field(
        default=0.1, metadata={"help": "DPO's beta: how far the policy may move from the SFT model."}
    )
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of each stage's steps spent warming up."})
    generation_block_length: int = field(
        default=32,
        metadata={
            "help": "`block_length` of the exported generation config (the paper's 32; on the shipped model, blocks of "
            "8 cost a quarter of the forward passes but lost 17 points of held-out exact match)."
        },
    )
    stratified_t: bool = field(
        default=True,
        metadata={
            "help": "Stratify the diffusion time t over each batch (train_sft.py `--stratified_t`): lower-variance "
            "gradients, which a 32-row batch needs."
        },
    )
    task_weights: str = field(
        default=DEFAULT_TASK_WEIGHTS,
        metadata={
            "help": "Share of each task in the SFT data, as `task:weight` pairs separated by commas (integers; tasks "
            "not named weigh 1), e.g. `add:3,copy:2`. Empty: every task equally."
        },
    )
    save_steps: int = field(
        default=1000,
        metadata={
            "help": "Save a checkpoint every this many steps in each stage (0: none). Checkpoints let `--resume` "
            "continue a build that was stopped, and `python -m illada.demo.learning_curves` measure each task as "
            "training goes."
        },
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "Continue each stage from its newest complete checkpoint in `work_dir`; a stage that finished with "
            "the same command and training data is not run again, and its recorded time and loss count in "
            "`build_info.json`. Without it, checkpoints of an earlier build in `work_dir` are deleted."
        },
    )
    num_threads: int | None = field(
        default=None,
        metadata={
            "help": "Torch threads of the training processes (OMP_NUM_THREADS); default: one per core. On a machine "
            "busy with other work use 1: two threads competing for two busy cores run several times slower."
        },
    )

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "max_seq_length",
            "batch_size",
            "pretrain_steps",
            "sft_steps",
            "sft_examples",
            "generation_block_length",
            "vrpo_questions",
            "vrpo_batch_size",
            "vrpo_num_mc_samples",
        ):
            check_positive_int(name, getattr(self, name))
        check_non_negative_int("vrpo_steps", self.vrpo_steps)  # 0: no VRPO stage
        check_non_negative_int("vrpo_warmup_steps", self.vrpo_warmup_steps)
        check_range("vrpo_learning_rate", self.vrpo_learning_rate, 0, math.inf, low_open=True, high_open=True)
        check_range("vrpo_beta", self.vrpo_beta, 0, math.inf, low_open=True, high_open=True)
        if self.max_seq_length > self.max_position_embeddings:
            raise ValueError(
                f"`max_seq_length`={self.max_seq_length} exceeds `max_position_embeddings`="
                f"{self.max_position_embeddings}."
            )
        check_range("warmup_ratio", self.warmup_ratio, 0, 1, high_open=True)
        check_range("sft_decay_fraction", self.sft_decay_fraction, 0, 1)
        check_positive_int("num_threads", self.num_threads, allow_none=True)
        check_non_negative_int("save_steps", self.save_steps)  # 0: no checkpoints
        self.weighted_tasks()  # checks `task_weights`
        if self.smoke:
            self.pretrain_steps = self.sft_steps = SMOKE_STEPS
            self.vrpo_steps = min(self.vrpo_steps, SMOKE_STEPS)
            self.vrpo_questions = min(self.vrpo_questions, len(TASKS))
            self.vrpo_warmup_steps = min(self.vrpo_warmup_steps, 1)
            self.sft_examples = SMOKE_SFT_EXAMPLES
            if self.output_dir == BuildArguments.output_dir:
                self.output_dir = str(Path(self.work_dir) / "smoke-model")

    def weighted_tasks(self) -> tuple[str, ...]:
        """The task names `make_examples` cycles through for the mix in `task_weights`: each task repeated `weight`
        times, in `TASKS` order."""
        weights = dict.fromkeys(TASKS, 1)
        for pair in filter(None, (part.strip() for part in self.task_weights.split(","))):
            name, _, weight = pair.partition(":")
            if name not in TASKS or not weight.isdigit() or int(weight) < 1:
                raise ValueError(
                    f"`task_weights` entry {pair!r} must be `task:weight` with a task of {sorted(TASKS)} and an "
                    "integer weight >= 1."
                )
            weights[name] = int(weight)
        return tuple(name for name, weight in weights.items() for _ in range(weight))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_data(args: BuildArguments, work_dir: Path) -> dict[str, str]:
    """Writes `pretrain.jsonl` and `sft.jsonl` (training split only); returns their paths."""
    files = {"pretrain": work_dir / "pretrain.jsonl", "sft": work_dir / "sft.jsonl"}
    _write_jsonl(files["pretrain"], [{"text": text} for text in pretraining_texts()])
    examples = make_examples("train", args.sft_examples, seed=args.seed, tasks=args.weighted_tasks())
    _write_jsonl(files["sft"], [{"prompt": e.prompt, "response": e.response, "task": e.task} for e in examples])
    return {stage: str(path) for stage, path in files.items()}


def write_model_config(args: BuildArguments, folder: Path) -> ILLaDAConfig:
    """Trains the tokenizer and saves it with a fresh model config into `folder` (stage 1's `--config_name`)."""
    tokenizer = train_tokenizer(tokenizer_texts(seed=args.seed), args.vocab_size, args.max_position_embeddings)
    config = ILLaDAConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        max_position_embeddings=args.max_position_embeddings,
        rope_theta=args.rope_theta,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        mask_token_id=tokenizer.mask_token_id,
    )
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return config


def stage_command(
    args: BuildArguments, stage: str, model_flag: list[str], train_file: str, output: Path, resume: bool | None = None
) -> list[str]:
    """The `train_sft.py` command line of one stage (`"pretrain"` or `"sft"`): with `--resume` when `resume`
    (default: `args.resume`), else with `--overwrite_output_dir`."""
    steps, lr, min_lr = {
        "pretrain": (args.pretrain_steps, args.pretrain_learning_rate, args.pretrain_min_lr),
        "sft": (args.sft_steps, args.sft_learning_rate, args.sft_min_lr),
    }[stage]
    kind = stage
    flags = {
        "--train_files": train_file,
        "--data_format": kind,
        "--lr_schedule": kind,
        "--output_dir": str(output),
        "--max_seq_length": args.max_seq_length,
        "--per_device_train_batch_size": args.batch_size,
        "--max_steps": steps,
        "--learning_rate": lr,
        "--min_lr": min_lr,
        "--warmup_steps": max(1, round(args.warmup_ratio * steps)),
        "--seed": args.seed,
        "--data_seed": args.seed,
        "--save_strategy": "steps" if args.save_steps else "no",
        "--logging_steps": max(1, min(50, steps // 10)),
        "--report_to": "none",
        "--dtype": "float32",
        "--max_grad_norm": 1.0,
    }
    if args.save_steps:
        flags["--save_steps"] = args.save_steps
    if kind == "sft":
        flags["--decay_fraction"] = args.sft_decay_fraction
    switches = [*model_flag, "--use_cpu", _resume_switch(args, resume)]
    if args.stratified_t:
        switches.append("--stratified_t")
    return _script_command(TRAIN_SCRIPT, switches, flags)


def _resume_switch(args: BuildArguments, resume: bool | None) -> str:
    """`--resume` when `resume` (default: `args.resume`), else `--overwrite_output_dir`."""
    return "--resume" if (args.resume if resume is None else resume) else "--overwrite_output_dir"


def _script_command(script: Path, switches: list[str], flags: dict) -> list[str]:
    """`python script`, the flags without a value, then each `--flag value` pair."""
    pairs = [part for flag, value in flags.items() for part in (flag, str(value))]
    return [sys.executable, str(script), *switches, *pairs]


def preferences_command(args: BuildArguments, model_dir: Path, output: Path) -> list[str]:
    """The `illada.demo.build_preferences` command that answers `vrpo_questions` training-split questions with the
    model in `model_dir` (in the exported model's blocks) and writes the preference pairs to `output`, replacing the
    pairs of an earlier build there."""
    return [
        sys.executable,
        "-m",
        "illada.demo.build_preferences",
        "--model",
        str(model_dir),
        "--trust-remote-code",
        "--output",
        str(output),
        "--overwrite",  # the build's own pairs: a build that does not reuse them makes them again
        "--questions",
        str(args.vrpo_questions),
        "--block-length",
        str(args.generation_block_length),
    ]


def vrpo_command(
    args: BuildArguments, model_dir: Path, train_file: str, output: Path, resume: bool | None = None
) -> list[str]:
    """The `train_vrpo.py` command line of the VRPO stage (with `--resume` when `resume`, default `args.resume`, else
    with `--overwrite_output_dir`): the SFT model in `model_dir` is the policy's start and the frozen reference."""
    flags = {
        "--model_name_or_path": str(model_dir),
        "--train_files": train_file,
        "--output_dir": str(output),
        "--max_steps": args.vrpo_steps,
        "--learning_rate": args.vrpo_learning_rate,
        "--warmup_steps": args.vrpo_warmup_steps,
        "--per_device_train_batch_size": args.vrpo_batch_size,
        "--num_mc_samples": args.vrpo_num_mc_samples,
        "--beta": args.vrpo_beta,
        "--seed": args.seed,
        "--data_seed": args.seed,
        "--logging_steps": max(1, min(5, args.vrpo_steps // 10)),
        "--save_strategy": "no",
        "--report_to": "none",
        "--dtype": "float32",
    }
    return _script_command(VRPO_SCRIPT, ["--use_cpu", _resume_switch(args, resume)], flags)


def run_stage(command: list[str], log_path: Path, num_threads: int | None = None) -> float:
    """Runs one stage in a fresh process from the repository root, teeing its output to `log_path`."""
    env = dict(os.environ) if num_threads is None else {**os.environ, "OMP_NUM_THREADS": str(num_threads)}
    print("$", *(["OMP_NUM_THREADS=" + str(num_threads)] if num_threads else []), " ".join(command), flush=True)
    start = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
        if process.wait() != 0:
            raise RuntimeError(f"Training stage failed with exit code {process.returncode}; see {log_path}.")
    return time.perf_counter() - start


def _train_loss(stage_dir: Path) -> float | None:
    results = stage_dir / "train_results.json"
    return json.loads(results.read_text()).get("train_loss") if results.is_file() else None


def _command_key(command: list[str]) -> list[str]:
    """What makes two stage commands the same stage: everything but the interpreter and the resume/overwrite flag."""
    return [part for part in command[1:] if part not in ("--resume", "--overwrite_output_dir")]


def _file_sha256(path: Path) -> str | None:
    """SHA-256 of a file (None when it does not exist)."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _train_file_sha256(command: list[str]) -> str | None:
    """SHA-256 of the stage's `--train_files` file: the command names the file, not what is in it, and a changed
    task mix rewrites the same path."""
    return _file_sha256(Path(command[command.index("--train_files") + 1]))


def _recorded_data_differs(folder: Path, train_file: str) -> bool:
    """Whether `folder` holds a stage record whose training data is not `train_file`'s present content."""
    record_path = folder / STAGE_RECORD
    if not record_path.is_file():
        return False
    return json.loads(record_path.read_text()).get("train_file_sha256") != _file_sha256(Path(train_file))


def run_or_reuse_stage(
    args: BuildArguments, command: list[str], output: Path, log_path: Path, reuse: bool = False
) -> tuple[dict, bool]:
    """Runs one stage and records it in `output`/`STAGE_RECORD`. With `reuse`, a stage already recorded with the
    same command and the same training data (SHA-256 of its `--train_files`) is not run again: its recorded seconds
    and loss are returned, so that `build_info.json` counts the time the stage took when it ran (for a stage that was
    stopped and resumed, the run that finished it).
    Returns the record `{"command", "train_file_sha256", "seconds", "train_loss"}` and whether it was reused."""
    key = {"command": _command_key(command), "train_file_sha256": _train_file_sha256(command)}
    return _run_or_reuse(
        args,
        command,
        key,
        output / STAGE_RECORD,
        log_path,
        reuse,
        f"Stage {output.name} finished",
        "run",
        lambda: {"train_loss": _train_loss(output)},
    )


def _run_or_reuse(
    args: BuildArguments,
    command: list[str],
    key: dict,
    record_path: Path,
    log_path: Path,
    reuse: bool,
    done: str,
    verb: str,
    results: Callable[[], dict],
) -> tuple[dict, bool]:
    """With `reuse`, returns the record in `record_path` when it holds the same `key` (saying `done` earlier, not
    `verb` again); otherwise runs `command` and records `key`, its seconds and `results()` there."""
    if reuse and record_path.is_file():
        record = json.loads(record_path.read_text())
        if {name: record.get(name) for name in key} == key:
            print(f"{done} earlier ({record['seconds']:.0f} s, {record_path}); not {verb} again.", flush=True)
            return record, True
    seconds = run_stage(command, log_path, args.num_threads)
    record = {**key, "seconds": round(seconds, 1), **results()}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record, False


def run_or_reuse_preferences(
    args: BuildArguments, model_dir: Path, output: Path, log_path: Path, reuse: bool = False
) -> tuple[dict, bool]:
    """Builds the VRPO stage's preference pairs from `model_dir`'s answers and records the run next to `output`
    (`<output>.build.json`: command, SHA-256 of the model's weights, seconds, and the summary's training-split exact
    match and pair counts). With `reuse`, pairs recorded with the same command and the same weights are not built
    again. Returns the record and whether it was reused."""
    command = preferences_command(args, model_dir, output)
    key = {"command": _command_key(command), "model_sha256": _file_sha256(model_dir / "model.safetensors")}

    def counts() -> dict:
        summary = json.loads(Path(f"{output}.summary.json").read_text())
        return {name: summary[name] for name in ("exact_match", "pairs", "own_wrong_answers")}

    return _run_or_reuse(
        args,
        command,
        key,
        Path(f"{output}.build.json"),
        log_path,
        reuse and output.is_file(),
        f"Preference pairs {output} built from the same model",
        "built",
        counts,
    )


def export_model(stage_dir: Path, output_dir: Path, info: dict, block_length: int | None = None) -> None:
    """Copies the loadable files of the final stage (weights, configs, tokenizer, code) into `output_dir`, with
    the generation config's `block_length` set to `block_length` when given."""
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True)
    for path in stage_dir.iterdir():
        if path.name in EXPORTED_FILES or path.suffix == ".py":
            shutil.copy2(path, output_dir / path.name)
    if block_length is not None:
        generation_config = ILLaDAGenerationConfig.from_pretrained(output_dir)
        generation_config.block_length = block_length
        generation_config.save_pretrained(output_dir)
    weights = output_dir / "model.safetensors"
    info["weights_sha256"] = _file_sha256(weights)
    info["weights_mib"] = round(weights.stat().st_size / 2**20, 2)
    (output_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")


def build(args: BuildArguments) -> Path:
    """Runs the whole recipe (see the module docstring) and returns the finished model folder."""
    start = time.perf_counter()
    work_dir, output_dir = Path(args.work_dir), Path(args.output_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    files = write_data(args, work_dir)
    config = write_model_config(args, work_dir / "init")
    stages = {"pretrain": work_dir / "stage1-pretrain", "sft": work_dir / "stage2-sft"}
    times, records = {"data_and_tokenizer_s": time.perf_counter() - start}, {}
    model_flag = ["--config_name", str(work_dir / "init")]
    # With --resume, finished stages are reused (and unfinished ones continued from their checkpoints) until one has
    # to run: the stages after it start from its new model, so they run afresh.
    reuse = args.resume
    for number, (stage, folder) in enumerate(stages.items(), start=1):
        # a stage whose training data changed cannot continue from its checkpoints: they learned other data
        reuse = reuse and not _recorded_data_differs(folder, files[stage])
        command = stage_command(args, stage, model_flag, files[stage], folder, resume=reuse)
        records[stage], reuse = run_or_reuse_stage(args, command, folder, work_dir / f"stage{number}.log", reuse)
        times[f"{stage}_s"] = records[stage]["seconds"]
        model_flag = ["--model_name_or_path", str(folder)]
    preferences = None
    if args.vrpo_steps:  # the last stage: preferences from the SFT model's own answers, then VRPO from it
        pairs_file = work_dir / "preferences.jsonl"
        preferences, _ = run_or_reuse_preferences(args, folder, pairs_file, work_dir / "preferences.log", args.resume)
        times["preferences_s"] = preferences["seconds"]
        number = len(stages) + 1
        sft_folder, folder = folder, work_dir / f"stage{number}-vrpo"
        reuse = reuse and not _recorded_data_differs(folder, str(pairs_file))
        command = vrpo_command(args, sft_folder, str(pairs_file), folder, resume=reuse)
        records["vrpo"], reuse = run_or_reuse_stage(args, command, folder, work_dir / f"stage{number}.log", reuse)
        times["vrpo_s"] = records["vrpo"]["seconds"]
    # Stages reused by `--resume` count with the time they took when they ran.
    times["total_s"] = sum(times.values())
    info = {
        "arguments": asdict(args),
        "parameters": sum(p.numel() for p in _parameter_shapes(config)),
        "pretraining_corpus_sha256": corpus_fingerprint(pretraining_texts()),
        "train_loss": {stage: record["train_loss"] for stage, record in records.items()},
        "seconds": {name: round(value, 1) for name, value in times.items()},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
    }
    if preferences is not None:
        info["preferences"] = {name: preferences[name] for name in ("exact_match", "pairs", "own_wrong_answers")}
    export_model(folder, output_dir, info, args.generation_block_length)
    print(json.dumps({k: info[k] for k in ("parameters", "train_loss", "seconds", "weights_mib")}, indent=2))
    print(f"Demo model written to {output_dir}", flush=True)
    return output_dir


def _parameter_shapes(config: ILLaDAConfig) -> list[torch.Tensor]:
    """The model's parameters, built on the meta device (no memory, no compute): for the parameter count."""
    from illada.modeling_illada import ILLaDAForCausalLM

    with torch.device("meta"):
        model = ILLaDAForCausalLM(config)
    return list(model.parameters())  # tied embeddings are listed once


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(BuildArguments).parse_args_into_dataclasses(argv)
    build(args)


if __name__ == "__main__":
    main()
