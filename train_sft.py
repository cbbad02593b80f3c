"""Masked-diffusion training for iLLaDA: supervised fine-tuning (SFT) and pre-training, full or LoRA.

The objective is the one of "Improved Large Language Diffusion Models" (arXiv 2606.25331, section 3): per row draw
t ~ U[eps, 1], replace every maskable token by the mask token with probability t, and minimise the cross-entropy of
the clean tokens at the masked positions weighted by 1/t,

    loss = sum_{rows b, masked positions i} CE(logits[b, i], x0[b, i]) / t_b  /  N,

where N is the number of loss-eligible (maskable, non-padding) tokens of the whole optimizer step: every
micro-batch of the gradient accumulation on every process. With fixed-length windows this is LLaDA's
"batch x length" normalisation, and gradient accumulation and data parallelism give exactly the gradient of one
large batch. The masks of a step are drawn from a generator seeded by (`seed`, step) for the whole global batch,
and each process takes the rows it holds: with rows of equal padded length, the run is the same whatever the
process count and accumulation.

SFT data (`--data_format sft`) are `messages` conversations or `prompt`/`response` pairs, rendered with the
tokenizer's chat template (or the plain format of `render_sft_example`), each followed by exactly one EOS, all
concatenated into one stream and cut into `--max_seq_length` windows (the paper's recipe), or with
`--packing packed` packed into rows without crossing example boundaries. Masks cover the whole window (prompt,
response and EOS) unless `--mask_scope response_only`. Pre-training data (`--data_format pretrain`) are `text`
documents joined by EOS, cut into windows, and with probability `--split_probability` (0.3) a window is split at a
random point into two segments that attend only to themselves.

Commands (`--config_name` instead of `--model_name_or_path` trains from a random initialisation):

    # one GPU (or CPU: add --use_cpu)
    python train_sft.py --model_name_or_path GSAI-ML/iLLaDA-8B-Base --train_files sft.jsonl \\
        --output_dir out/sft --max_seq_length 8192 --per_device_train_batch_size 1 \\
        --gradient_accumulation_steps 16 --learning_rate 5e-6 --min_lr 5e-7 --num_train_epochs 3 \\
        --activation_checkpointing --save_steps 500 --save_total_limit 2

    # several GPUs (DeepSpeed / FSDP: add --deepspeed ds.json or --fsdp ... as for any Trainer script)
    accelerate launch --num_processes 8 train_sft.py <same arguments>
    torchrun --nproc_per_node 8 train_sft.py <same arguments>

    # two CPU processes (gloo backend)
    torchrun --nproc_per_node 2 train_sft.py --use_cpu <same arguments>

    # LoRA on q/k/v/o/gate/up/down, merged into the base weights on save
    python train_sft.py <same arguments> --use_lora --lora_r 16 --lora_alpha 32 --merge_lora

    # pre-training schedule and data: warmup, constant, cosine to the floor
    python train_sft.py <same arguments> --data_format pretrain --lr_schedule pretrain \\
        --learning_rate 2e-4 --min_lr 5e-6

    # resume from the newest checkpoint-* in --output_dir (starts afresh when there is none)
    python train_sft.py <same arguments> --resume

The saved folder holds the weights, the code files (`AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)` loads it), the tokenizer and the generation config when the model has one.
"""

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, load_dataset
from torch.optim.lr_scheduler import LambdaLR
from transformers import (
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import ModelOutput

try:  # as Hub remote code (a package made by transformers)
    from .configuration_illada import ILLaDAConfig
    from .modeling_illada import ILLaDAForCausalLM
except ImportError:  # from a checkout, with the repo root on sys.path
    from configuration_illada import ILLaDAConfig
    from modeling_illada import ILLaDAForCausalLM

logger = logging.getLogger(__name__)

# LLaDA's reference code masks with probability (1 - eps) * u + eps, so that 1/t stays below 1/eps.
DEFAULT_EPS = 1e-3
# iLLaDA pre-training splits 30% of the windows into two segments (paper, section 3).
DEFAULT_SPLIT_PROBABILITY = 0.3
# Both paper schedules decay over the last 10% of the steps.
DEFAULT_DECAY_FRACTION = 0.1
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Examples per `datasets.map` batch when cutting the token stream into windows: the stream restarts (and one
# window is short) every this many examples, so memory stays bounded on large corpora.
STREAM_CHUNK_EXAMPLES = 1000
# Turn format of SFT data when the tokenizer has no chat template.
PLAIN_TURN = "{role}: {content}\n"
PLAIN_RESPONSE_PREFIX = "assistant: "
# Keeps the (seed, step) pairs that seed the mask generator distinct for any run shorter than 2**32 steps.
_STEP_SEED_STRIDE = 2**32
_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DATA_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".csv": "csv"}


def _check_choice(name: str, value: Any, choices: tuple | list) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}.")


def _check_range(
    name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}.")
    if (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be in {interval}, got {value!r}.")


# ----------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """Which model to train and how: checkpoint or fresh config, dtype, attention kernel, LoRA."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Checkpoint folder or Hub id to fine-tune. Give this or `config_name`."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config folder or file: train a randomly initialised model of that shape."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or Hub id; defaults to `model_name_or_path` / `config_name`."}
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "Dtype of the loaded weights ('auto' = the checkpoint's, float32 for a fresh model). "
                  "Mixed precision is `--bf16`.", "choices": list(_DTYPES)},
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "Attention kernel.", "choices": ["sdpa", "eager", "flash_attention_2"]}
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (PEFT) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LORA_TARGET_MODULES), metadata={"help": "Module names that get adapters."}
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "Merge the adapters into the base weights and save a full model."}
    )

    def __post_init__(self) -> None:
        if (self.model_name_or_path is None) == (self.config_name is None):
            raise ValueError(
                "Give exactly one of `model_name_or_path` (fine-tune a checkpoint) and `config_name` (train from a "
                f"random initialisation); got model_name_or_path={self.model_name_or_path!r}, "
                f"config_name={self.config_name!r}."
            )
        _check_choice("dtype", self.dtype, list(_DTYPES))
        _check_choice("attn_implementation", self.attn_implementation, ["sdpa", "eager", "flash_attention_2"])
        if self.use_lora:
            if isinstance(self.lora_r, bool) or not isinstance(self.lora_r, int) or self.lora_r < 1:
                raise ValueError(f"`lora_r` must be a positive integer, got {self.lora_r!r}.")
            _check_range("lora_alpha", self.lora_alpha, 0, math.inf, low_open=True)
            _check_range("lora_dropout", self.lora_dropout, 0, 1, high_open=True)
            if not self.lora_target_modules:
                raise ValueError("`lora_target_modules` is empty: name at least one module, e.g. q_proj.")
        elif self.merge_lora:
            raise ValueError("`merge_lora=True` needs `use_lora=True`: there are no adapters to merge.")


@dataclass
class DataArguments:
    """Where the data are and how they become training rows."""

    train_files: list[str] | None = field(
        default=None, metadata={"help": "Local training files (.jsonl, .json, .parquet, .csv or .txt)."}
    )
    eval_files: list[str] | None = field(default=None, metadata={"help": "Local evaluation files, same formats."})
    data_format: str = field(
        default="sft",
        metadata={"help": "'sft': `messages` or `prompt`/`response` columns; 'pretrain': a `text` column.",
                  "choices": ["sft", "pretrain"]},
    )
    max_seq_length: int = field(default=8192, metadata={"help": "Length of the training windows (tokens)."})
    packing: str = field(
        default="stream",
        metadata={"help": "'stream': one token stream cut into windows (paper); 'packed' (sft only): whole "
                  "examples packed into rows, each with its own position ids.", "choices": ["stream", "packed"]},
    )
    split_probability: float = field(
        default=DEFAULT_SPLIT_PROBABILITY,
        metadata={"help": "Pre-training: probability that a window is split into two independent segments."},
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})

    def __post_init__(self) -> None:
        _check_choice("data_format", self.data_format, ["sft", "pretrain"])
        _check_choice("packing", self.packing, ["stream", "packed"])
        if isinstance(self.max_seq_length, bool) or not isinstance(self.max_seq_length, int) or self.max_seq_length < 2:
            raise ValueError(f"`max_seq_length` must be an integer >= 2, got {self.max_seq_length!r}.")
        _check_range("split_probability", self.split_probability, 0, 1)
        if self.packing == "packed" and self.data_format != "sft":
            raise ValueError("`packing='packed'` applies to `data_format='sft'`; pre-training data are streamed.")


@dataclass
class DiffusionTrainingArguments(TrainingArguments):
    """[`TrainingArguments`] plus the masked-diffusion options; defaults follow the paper's SFT recipe.

    Changed defaults: `learning_rate` 5e-6 and `weight_decay` 0.1 (AdamW, paper), `remove_unused_columns=False`
    (the collator's `maskable` column is not a forward argument), `label_names=["maskable"]` and
    `prediction_loss_only=True` (evaluation reports the diffusion loss), `bf16` on when a CUDA device supports it,
    `ddp_find_unused_parameters=False`.
    """

    learning_rate: float = field(default=5e-6, metadata={"help": "Peak learning rate (paper SFT: 5e-6)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (paper: 0.1)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the collator's columns."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation computes the loss only."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; default: on if supported."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every parameter takes part in the loss: DDP need not search for unused ones."}
    )
    diffusion_eps: float = field(
        default=DEFAULT_EPS, metadata={"help": "Masking probability t = eps + (1 - eps) * u, u ~ U[0, 1]."}
    )
    stratified_t: bool = field(
        default=False, metadata={"help": "Stratify t over the global batch (one draw per 1/N-wide stratum)."}
    )
    mask_scope: str = field(
        default="whole",
        metadata={"help": "'whole': prompt, response and EOS are maskable (iLLaDA); 'response_only': the prompt is "
                  "never masked nor scored (LLaDA).", "choices": ["whole", "response_only"]},
    )
    lr_schedule: str = field(
        default="sft",
        metadata={"help": "'sft': warmup, constant, linear decay to `min_lr` over the last `decay_fraction`; "
                  "'pretrain': the same with a cosine decay; 'trainer': use `lr_scheduler_type`.",
                  "choices": ["sft", "pretrain", "trainer"]},
    )
    min_lr: float = field(default=5e-7, metadata={"help": "Floor of the 'sft'/'pretrain' schedules (paper: 5e-7)."})
    decay_fraction: float = field(
        default=DEFAULT_DECAY_FRACTION, metadata={"help": "Fraction of the steps, at the end, over which LR decays."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Resume from the newest checkpoint in `output_dir` (if there is one)."}
    )

    def __post_init__(self) -> None:
        _check_range("diffusion_eps", self.diffusion_eps, 0, 1, low_open=True, high_open=True)
        _check_choice("mask_scope", self.mask_scope, ["whole", "response_only"])
        _check_choice("lr_schedule", self.lr_schedule, ["sft", "pretrain", "trainer"])
        _check_range("decay_fraction", self.decay_fraction, 0, 1)
        _check_range("learning_rate", self.learning_rate, 0, math.inf, low_open=True)
        _check_range("min_lr", self.min_lr, 0, math.inf)
        if self.min_lr > self.learning_rate:
            raise ValueError(f"`min_lr`={self.min_lr} is above `learning_rate`={self.learning_rate}: the schedules "
                             "decay from `learning_rate` down to `min_lr`.")
        if self.label_names is None:
            self.label_names = ["maskable"]
        if self.bf16 is None:
            self.bf16 = not self.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        super().__post_init__()


def check_arguments(model_args: ModelArguments, data_args: DataArguments, args: DiffusionTrainingArguments) -> None:
    """Checks the combinations that no single dataclass can see."""
    if args.mask_scope == "response_only" and data_args.data_format != "sft":
        raise ValueError("`mask_scope='response_only'` needs `data_format='sft'`: pre-training text has no response.")
    if data_args.train_files is None:
        raise ValueError("`train_files` is required: pass one or more local .jsonl/.json/.parquet/.csv/.txt files.")


# ----------------------------------------------------------------------------------------------------------------
# Objective
# ----------------------------------------------------------------------------------------------------------------


def sample_mask(
    input_ids: torch.LongTensor,
    maskable: torch.BoolTensor,
    mask_token_id: int,
    eps: float = DEFAULT_EPS,
    generator: torch.Generator | None = None,
    stratified: bool = False,
    row_offset: int = 0,
    num_rows: int | None = None,
) -> tuple[torch.LongTensor, torch.BoolTensor, torch.Tensor]:
    """Forward process of masked diffusion: masks each maskable token independently with its row's probability t.

    The noise is drawn for `num_rows` rows (the global batch) and rows `row_offset : row_offset + batch` are
    used, so every process and micro-batch of one optimizer step can draw from the same generator state.

    Args:
        input_ids (`torch.LongTensor` of shape `(batch, seq_len)`): Clean tokens.
        maskable (`torch.BoolTensor` of shape `(batch, seq_len)`): Tokens that may be masked (never padding).
        mask_token_id (`int`): Id written at the masked positions.
        eps (`float`, *optional*, defaults to 1e-3): t = eps + (1 - eps) * u with u ~ U[0, 1].
        generator (`torch.Generator`, *optional*): Source of randomness, on the device of `input_ids`.
        stratified (`bool`, *optional*, defaults to `False`): u of row j is (perm(j) + U[0, 1]) / num_rows.
        row_offset (`int`, *optional*, defaults to 0): First row of the global batch that this batch holds.
        num_rows (`int`, *optional*): Rows of the global batch; defaults to `batch`.

    Returns:
        `tuple`: `noisy_ids` `(batch, seq_len)`, `masked` `(batch, seq_len)` bool and `t` `(batch,)` float32.
    """
    batch_size, seq_len = input_ids.shape
    num_rows = batch_size if num_rows is None else num_rows
    if maskable.shape != input_ids.shape or maskable.dtype != torch.bool:
        raise ValueError(f"`maskable` must be a bool tensor of shape {tuple(input_ids.shape)}, got "
                         f"{maskable.dtype} {tuple(maskable.shape)}.")
    if not 0 <= row_offset <= num_rows - batch_size:
        raise ValueError(f"Rows {row_offset}..{row_offset + batch_size} do not fit in `num_rows`={num_rows}.")
    device = input_ids.device
    u = torch.rand(num_rows, generator=generator, device=device)  # [N]
    if stratified:
        u = (torch.randperm(num_rows, generator=generator, device=device) + u) / num_rows
    t = eps + (1 - eps) * u  # [N]
    coins = torch.rand(num_rows, seq_len, generator=generator, device=device)  # [N, L]
    rows = slice(row_offset, row_offset + batch_size)
    t, coins = t[rows], coins[rows]  # [B], [B, L]
    masked = (coins < t[:, None]) & maskable  # [B, L]
    return input_ids.masked_fill(masked, mask_token_id), masked, t


def masked_diffusion_loss(
    logits: torch.Tensor, targets: torch.LongTensor, t: torch.Tensor, normaliser: int | torch.Tensor
) -> torch.Tensor:
    """sum_i CE(logits_i, targets_i) / t_i / normaliser, over the masked tokens i (cross-entropy in float32).

    Args:
        logits (`torch.Tensor` of shape `(num_masked, vocab)`): Logits at the masked positions only.
        targets (`torch.LongTensor` of shape `(num_masked,)`): The clean tokens there.
        t (`torch.Tensor` of shape `(num_masked,)`): Masking probability of each token's row.
        normaliser (`int` or `torch.Tensor`): Number of loss-eligible tokens (at least 1 is used).
    """
    token_loss = F.cross_entropy(logits.float(), targets, reduction="none")  # [N]
    return (token_loss / t).sum() / torch.as_tensor(normaliser, device=token_loss.device).clamp(min=1)


def diffusion_lr_lambda(
    step: int, *, warmup_steps: int, total_steps: int, decay_fraction: float, min_lr_ratio: float, decay: str
) -> float:
    """LR multiplier of the paper's schedules at optimizer step `step` (0-based): linear warmup (step k < warmup
    gets (k + 1) / warmup_steps, so no step is wasted at 0), constant, then `decay` ('linear' or 'cosine') to
    `min_lr_ratio` over the last `decay_fraction` of `total_steps` (never before the warmup ends)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_start = max(warmup_steps, total_steps - math.ceil(decay_fraction * total_steps))
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, total_steps - decay_start))
    shape = 1 - progress if decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return min_lr_ratio + (1 - min_lr_ratio) * shape


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, config: ILLaDAConfig) -> None:
    """Checks that the tokenizer and the model config agree on the special tokens and the vocabulary size."""
    mask_id, size = config.mask_token_id, len(tokenizer)
    if size <= mask_id:
        raise ValueError(f"The tokenizer has {size} tokens, so it has no token with the config's `mask_token_id` "
                         f"{mask_id}: use the model's own tokenizer.")
    if tokenizer.mask_token_id is not None and tokenizer.mask_token_id != mask_id:
        raise ValueError(f"The tokenizer's mask token has id {tokenizer.mask_token_id}, the config's "
                         f"`mask_token_id` is {mask_id}: they must be the same token.")
    if size > config.vocab_size:
        raise ValueError(f"The tokenizer has {size} tokens, more than the model's `vocab_size` {config.vocab_size}.")
    if tokenizer.eos_token_id not in config.eos_token_ids:
        raise ValueError(f"The tokenizer's `eos_token_id` {tokenizer.eos_token_id} is not among the config's EOS "
                         f"ids {config.eos_token_ids}: SFT appends this token to every example.")
    pad_id = pad_token_id(tokenizer, config)
    if pad_id is None or pad_id == mask_id:
        raise ValueError(f"Padding id {pad_id!r} is unusable: set a pad token different from the mask token.")


def pad_token_id(tokenizer: PreTrainedTokenizerBase, config: ILLaDAConfig) -> int | None:
    """The tokenizer's pad id, else the config's."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id


def load_raw_dataset(files: list[str]) -> Dataset:
    """Loads local files with the `datasets` builder their extension names (all files must share it)."""
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"Data files not found: {missing}.")
    builders = {_DATA_BUILDERS.get(p.suffix.lower()) for p in paths}
    if None in builders or len(builders) != 1:
        raise ValueError(f"Data files must all be one of {sorted(_DATA_BUILDERS)}, got {[p.name for p in paths]}.")
    return load_dataset(builders.pop(), data_files=[str(p) for p in paths], split="train")


def render_sft_example(example: dict, tokenizer: PreTrainedTokenizerBase, index: int = 0) -> tuple[str, str]:
    """Splits one SFT example into the prompt text and the response text.

    An example is a `messages` list of `{"role", "content"}` turns whose last turn is the assistant's response,
    or a `prompt`/`response` pair (read as one user and one assistant turn). With a chat template, the prompt is
    the template applied to all turns but the last with `add_generation_prompt=True`, and the response is the
    rest of the rendered conversation. Without one, the plain format is: each earlier turn as
    `"{role}: {content}\\n"`, then `"assistant: "`, then the response.
    """
    if "messages" in example:
        messages = example["messages"]
    else:
        messages = [{"role": "user", "content": example["prompt"]},
                    {"role": "assistant", "content": example["response"]}]
    if not messages or messages[-1].get("role") != "assistant" or not messages[-1].get("content"):
        raise ValueError(f"SFT example {index} has no response (its last turn must be a non-empty assistant turn): "
                         f"{str(messages)[:200]}")
    if tokenizer.chat_template is None:
        prompt = "".join(PLAIN_TURN.format(role=m["role"], content=m["content"]) for m in messages[:-1])
        return prompt + PLAIN_RESPONSE_PREFIX, messages[-1]["content"]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    if not full.startswith(prompt):
        raise ValueError(f"The chat template does not render SFT example {index}'s prompt as a prefix of the whole "
                         "conversation, so the response cannot be located.")
    return prompt, full[len(prompt):]


def _tokenize_sft(batch: dict, indices: list[int], tokenizer: PreTrainedTokenizerBase) -> dict:
    """`prompt + response + EOS` ids of each example, with a flag on the response (and EOS) tokens."""
    examples = [dict(zip(batch, values)) for values in zip(*batch.values())]
    texts = [render_sft_example(example, tokenizer, i) for example, i in zip(examples, indices)]
    prompts = tokenizer([p for p, _ in texts], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r for _, r in texts], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    input_ids, response_mask = [], []
    for prompt, response in zip(prompts, responses):
        while response and response[-1] == eos:  # a template's own closing EOS: exactly one is appended below
            response = response[:-1]
        input_ids.append(prompt + response + [eos])
        response_mask.append([False] * len(prompt) + [True] * (len(response) + 1))
    return {"input_ids": input_ids, "response_mask": response_mask}


def _tokenize_pretrain(batch: dict, tokenizer: PreTrainedTokenizerBase) -> dict:
    ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    return {"input_ids": [doc + [tokenizer.eos_token_id] for doc in ids]}


def split_positions(length: int, split_at: int | None) -> list[int]:
    """Position ids of a window of `length` tokens, restarting at 0 at `split_at` (a second segment) if given."""
    positions = np.arange(length)
    if split_at is not None:
        positions[split_at:] -= split_at
    return positions.tolist()


def _stream_windows(
    batch: dict, indices: list[int], max_seq_length: int, split_probability: float, seed: int
) -> dict:
    """Concatenates the examples of `batch` and cuts the stream into windows; splits windows at random points."""
    stream = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in batch["input_ids"]])
    starts = range(0, len(stream), max_seq_length)
    windows = {"input_ids": [stream[s:s + max_seq_length].tolist() for s in starts]}
    if "response_mask" in batch:
        flags = np.concatenate([np.asarray(m, dtype=bool) for m in batch["response_mask"]])
        windows["response_mask"] = [flags[s:s + max_seq_length].tolist() for s in starts]
    rng = np.random.default_rng([seed, indices[0]])
    lengths = np.array([len(w) for w in windows["input_ids"]])
    split = (rng.random(len(lengths)) < split_probability) & (lengths >= 2)
    points = (rng.random(len(lengths)) * (lengths - 1)).astype(np.int64) + 1  # uniform on 1 .. length - 1
    windows["position_ids"] = [split_positions(n, p if s else None) for n, p, s in zip(lengths, points, split)]
    return windows


def _pack_examples(batch: dict, max_seq_length: int) -> dict:
    """Packs whole examples into rows of at most `max_seq_length` tokens, in order; positions restart per example."""
    too_long = [len(ids) for ids in batch["input_ids"] if len(ids) > max_seq_length]
    if too_long:
        raise ValueError(f"{len(too_long)} SFT examples are longer than `max_seq_length`={max_seq_length} (longest "
                         f"{max(too_long)}): they cannot be packed whole. Use `packing='stream'` or a longer window.")
    rows: dict[str, list] = {"input_ids": [], "position_ids": [], "response_mask": []}
    current: dict[str, list] = {key: [] for key in rows}
    for ids, flags in zip(batch["input_ids"], batch["response_mask"]):
        if len(current["input_ids"]) + len(ids) > max_seq_length:
            for key in rows:
                rows[key].append(current[key])
            current = {key: [] for key in rows}
        current["input_ids"] += ids
        current["position_ids"] += list(range(len(ids)))
        current["response_mask"] += flags
    for key in rows:
        rows[key].append(current[key])
    return rows


def build_dataset(
    raw: Dataset, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments, seed: int = 0
) -> Dataset:
    """Turns raw SFT or pre-training examples into training rows.

    Args:
        raw (`datasets.Dataset`): SFT: a `messages` column, or `prompt` and `response` columns. Pre-training: `text`.
        tokenizer ([`PreTrainedTokenizerBase`]): Renders and tokenises the examples; its EOS closes each one.
        data_args ([`DataArguments`]): Format, window length, packing and split probability.
        seed (`int`, *optional*, defaults to 0): Seed of the pre-training window splits (the script passes
            `--data_seed`, else `--seed`).

    Returns:
        `datasets.Dataset` with `input_ids`, `position_ids` (restarting at every packed example or split segment)
        and, for SFT, `response_mask` (True on response and EOS tokens); rows hold at most `max_seq_length` tokens.
    """
    if not isinstance(raw, Dataset):
        raise TypeError(f"`raw` must be a `datasets.Dataset`, got {type(raw).__name__} (pick one split of a "
                        "DatasetDict).")
    if len(raw) == 0:
        raise ValueError("The dataset is empty: there is nothing to train on.")
    columns = set(raw.column_names)
    common = dict(batched=True, remove_columns=raw.column_names, num_proc=data_args.preprocessing_num_workers)
    if data_args.data_format == "sft":
        if "messages" not in columns and not {"prompt", "response"} <= columns:
            raise ValueError(f"SFT data need a `messages` column or `prompt` and `response` columns; the dataset "
                             f"has {sorted(columns)}.")
        tokenized = raw.map(_tokenize_sft, with_indices=True, fn_kwargs={"tokenizer": tokenizer}, **common)
    else:
        if "text" not in columns:
            raise ValueError(f"Pre-training data need a `text` column; the dataset has {sorted(columns)}.")
        tokenized = raw.map(_tokenize_pretrain, fn_kwargs={"tokenizer": tokenizer}, **common)
    common["remove_columns"] = tokenized.column_names
    if data_args.packing == "packed":
        return tokenized.map(_pack_examples, fn_kwargs={"max_seq_length": data_args.max_seq_length},
                             batch_size=STREAM_CHUNK_EXAMPLES, **common)
    split_probability = data_args.split_probability if data_args.data_format == "pretrain" else 0.0
    kwargs = {"max_seq_length": data_args.max_seq_length, "split_probability": split_probability, "seed": seed}
    return tokenized.map(_stream_windows, with_indices=True, fn_kwargs=kwargs, batch_size=STREAM_CHUNK_EXAMPLES,
                         **common)


@dataclass
class DiffusionDataCollator:
    """Pads rows into a batch of `input_ids`, `position_ids` and the `maskable` flags the trainer masks from.

    Padding is appended as a separate packed segment (its position ids restart at 0), so real tokens never attend
    to it and no attention mask is needed (flash-attention varlen keeps working); it is never maskable.

    Args:
        pad_token_id (`int`): Id of the padding token.
        mask_scope (`str`, *optional*, defaults to `"whole"`): `"response_only"` makes only the rows'
            `response_mask` tokens maskable.
        pad_to_multiple_of (`int`, *optional*): Pad the length up to a multiple of this (e.g. `max_seq_length`,
            which makes the masks independent of the batch layout, see [`MaskedDiffusionTrainer`]).
    """

    pad_token_id: int
    mask_scope: str = "whole"
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        _check_choice("mask_scope", self.mask_scope, ["whole", "response_only"])
        if self.mask_scope == "response_only" and any("response_mask" not in f for f in features):
            raise ValueError("`mask_scope='response_only'` needs a `response_mask` in every row (SFT data).")
        lengths = [len(f["input_ids"]) for f in features]
        seq_len = max(lengths)
        if self.pad_to_multiple_of:
            seq_len = -(-seq_len // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), seq_len), self.pad_token_id, dtype=torch.long)
        maskable = torch.zeros(len(features), seq_len, dtype=torch.bool)
        # Padding restarts at position 0: it becomes a segment of its own that real tokens never attend to.
        position_ids = (torch.arange(seq_len) - torch.tensor(lengths)[:, None]).clamp(min=0)
        for row, (feature, length) in enumerate(zip(features, lengths)):
            input_ids[row, :length] = torch.as_tensor(feature["input_ids"])
            if "position_ids" in feature:
                position_ids[row, :length] = torch.as_tensor(feature["position_ids"])
            else:
                position_ids[row, :length] = torch.arange(length)
            flags = feature["response_mask"] if self.mask_scope == "response_only" else [True] * length
            maskable[row, :length] = torch.as_tensor(flags, dtype=torch.bool)
        return {"input_ids": input_ids, "position_ids": position_ids, "maskable": maskable}


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskNoise:
    """Where a micro-batch's masks come from: generator seed, its first row and the rows of the global batch."""

    seed: int
    row_offset: int
    num_rows: int


@dataclass
class MaskedDiffusionOutput(ModelOutput):
    """`compute_loss(..., return_outputs=True)` output: loss, logits `(num_masked, vocab)` at the masked positions,
    `masked` `(batch, seq_len)`, `t` `(batch,)` and the `noisy_input_ids` `(batch, seq_len)` the model saw."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    masked: torch.BoolTensor | None = None
    t: torch.Tensor | None = None
    noisy_input_ids: torch.LongTensor | None = None


class MaskedDiffusionTrainer(Trainer):
    """[`Trainer`] with the masked-diffusion loss of iLLaDA; `args` is a [`DiffusionTrainingArguments`].

    Batches come from [`DiffusionDataCollator`] (`input_ids`, `position_ids`, `maskable`). Normalisation: the
    sum over masked tokens of CE / t is divided by the number of `maskable` tokens of the optimizer step, counted
    over its micro-batches and (with `average_tokens_across_devices`, the default) gathered over processes, and
    multiplied by the process count because data parallelism averages gradients. One step's masks come from a
    generator seeded by (`args.seed`, global step) for the whole global batch, rows taken by process and
    micro-batch in data-loader order: with equal padded lengths the masks, losses and gradients do not depend on
    how the global batch is split over processes and accumulation steps (each micro-batch draws the uniforms of
    the whole global batch, global rows x seq_len numbers: negligible next to a forward pass).

    Example:

    ```python
    >>> trainer = MaskedDiffusionTrainer(model=model, args=DiffusionTrainingArguments("out", max_steps=10),
    ...     train_dataset=build_dataset(raw, tokenizer, DataArguments(max_seq_length=64)),
    ...     data_collator=DiffusionDataCollator(tokenizer.pad_token_id), processing_class=tokenizer)
    >>> trainer.train()
    ```
    """

    # The loss is normalised by the whole step's token count already: Trainer must not divide it by the
    # accumulation steps again.
    loss_is_scaled_for_ga = True

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device) -> tuple[list, torch.Tensor]:
        """Prefetches the step's micro-batches, counts their `maskable` tokens and tags each with its [`MaskNoise`].

        (Trainer's own count reads `labels`, and for a `*ForCausalLM` class it skips the first token of every
        row: the wrong count for this loss.)
        """
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        count = sum(_maskable(batch).sum() for batch in batch_samples).to(device)
        if self._across_processes():
            count = self.accelerator.gather(count).sum()
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        rows = self.args.per_device_train_batch_size
        seed = self.args.seed * _STEP_SEED_STRIDE + self.state.global_step
        for micro, batch in enumerate(batch_samples):
            batch["mask_noise"] = MaskNoise(seed, (micro * world + rank) * rows, len(batch_samples) * world * rows)
        return batch_samples, count

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, MaskedDiffusionOutput]:
        """Masked-diffusion loss of one micro-batch (see the class docstring for the normalisation)."""
        inputs = dict(inputs)
        maskable, input_ids = _maskable(inputs), inputs.pop("input_ids")  # [B, L], [B, L]
        del inputs["maskable"]
        noise = inputs.pop("mask_noise", None)
        # 1. Noise: t per row, then each maskable token is masked with probability t.
        generator, offset, rows = None, 0, None
        if noise is not None:
            generator = torch.Generator(device=input_ids.device).manual_seed(noise.seed)
            offset, rows = noise.row_offset, noise.num_rows
        noisy_ids, masked, t = sample_mask(
            input_ids, maskable, self.model.config.mask_token_id, self.args.diffusion_eps, generator,
            self.args.stratified_t, offset, rows,
        )  # [B, L], [B, L], [B]
        # 2. Forward; the LM head runs only at the masked positions.
        logits = model(input_ids=noisy_ids, logits_to_keep=masked, **inputs).logits  # [N, V]
        # 3. Normaliser: the step's eligible tokens, or this micro-batch's when Trainer gives no count (evaluation).
        scale = 1
        if num_items_in_batch is None:
            num_items_in_batch = maskable.sum()
        elif self._across_processes():
            scale = self.accelerator.num_processes  # DDP averages gradients over processes
        # 4. Loss: sum of CE / t over the masked tokens, divided by the normaliser.
        t_per_token = t[:, None].expand_as(masked)[masked]  # [N]
        loss = masked_diffusion_loss(logits, input_ids[masked], t_per_token, num_items_in_batch) * scale
        if return_outputs:
            return loss, MaskedDiffusionOutput(loss, logits, masked, t, noisy_ids)
        return loss

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The paper's schedules for `lr_schedule` 'sft' (linear decay) and 'pretrain' (cosine decay)."""
        if self.args.lr_schedule == "trainer":
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            lr_lambda = partial(
                diffusion_lr_lambda,
                warmup_steps=self.args.get_warmup_steps(num_training_steps),
                total_steps=num_training_steps,
                decay_fraction=self.args.decay_fraction,
                min_lr_ratio=self.args.min_lr / self.args.learning_rate,
                decay="linear" if self.args.lr_schedule == "sft" else "cosine",
            )
            self.lr_scheduler = LambdaLR(self.optimizer if optimizer is None else optimizer, lr_lambda)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _across_processes(self) -> bool:
        return self.args.average_tokens_across_devices and self.accelerator.num_processes > 1


def _maskable(batch: dict[str, Any]) -> torch.BoolTensor:
    if "maskable" not in batch:
        raise ValueError(f"The batch has no `maskable` tensor (keys: {sorted(batch)}): build batches with "
                         "`DiffusionDataCollator`.")
    return batch["maskable"]


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def load_config(model_args: ModelArguments) -> ILLaDAConfig:
    """The config of the checkpoint (or of `config_name`), read before any weight is loaded."""
    return ILLaDAConfig.from_pretrained(model_args.model_name_or_path or model_args.config_name)


def load_model(model_args: ModelArguments, config: ILLaDAConfig) -> ILLaDAForCausalLM:
    """Loads the checkpoint strictly (every tensor must match), or builds a random model from `config`."""
    dtype = _DTYPES[model_args.dtype]
    if model_args.model_name_or_path is None:
        dtype = torch.float32 if dtype == "auto" else dtype
        return ILLaDAForCausalLM._from_config(config, dtype=dtype, attn_implementation=model_args.attn_implementation)
    return ILLaDAForCausalLM.from_pretrained(
        model_args.model_name_or_path, config=config, dtype=dtype, attn_implementation=model_args.attn_implementation
    )


def add_lora(
    model: ILLaDAForCausalLM,
    r: int = 16,
    alpha: float = 32,
    dropout: float = 0.0,
    target_modules: list[str] | tuple[str, ...] = LORA_TARGET_MODULES,
) -> torch.nn.Module:
    """Wraps `model` in a PEFT model with LoRA adapters of rank `r` (scale `alpha / r`) on `target_modules`;
    only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
    return get_peft_model(model, lora_config)


def save_trained_model(trainer: MaskedDiffusionTrainer, merge_lora: bool = False) -> None:
    """Saves weights, code files, tokenizer and generation config to `output_dir`; LoRA adapters are merged into a
    full model first when `merge_lora`, else saved as a PEFT adapter folder. Pushes when `push_to_hub` is set."""
    if merge_lora:
        trainer.model = trainer.model.merge_and_unload()
    trainer.save_model()
    generation_config = getattr(trainer.model, "generation_config", None)
    output_dir = Path(trainer.args.output_dir)
    missing = not (output_dir / "generation_config.json").exists()
    if trainer.args.should_save and generation_config is not None and missing:
        generation_config.save_pretrained(output_dir)
    if trainer.args.push_to_hub:
        trainer.push_to_hub()


# ----------------------------------------------------------------------------------------------------------------
# Script
# ----------------------------------------------------------------------------------------------------------------


def parse_arguments(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, DiffusionTrainingArguments]:
    """Command-line flags, or a single .json / .yaml file holding them."""
    parser = HfArgumentParser((ModelArguments, DataArguments, DiffusionTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(argv[0])
    return parser.parse_args_into_dataclasses(argv)


def load_datasets(
    data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int
) -> tuple[Dataset, Dataset | None]:
    """Training rows from `train_files` and, if given, evaluation rows from `eval_files`."""
    train = build_dataset(load_raw_dataset(data_args.train_files), tokenizer, data_args, seed)
    evaluation = None
    if data_args.eval_files:
        evaluation = build_dataset(load_raw_dataset(data_args.eval_files), tokenizer, data_args, seed)
    return train, evaluation


def resume_checkpoint(args: DiffusionTrainingArguments) -> str | None:
    """With `--resume`, the newest `checkpoint-*` folder of `output_dir`, or `None` (start afresh) if there is none."""
    if not args.resume:
        return None
    checkpoint = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
    logger.info("Resuming from %s", checkpoint or "scratch: no checkpoint in `output_dir`")
    return checkpoint


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_arguments(argv)
    check_arguments(model_args, data_args, training_args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=training_args.get_process_log_level())
    set_seed(training_args.seed)

    # Model: the config and tokenizer are checked before any weight is loaded.
    config = load_config(model_args)
    # Passing the config keeps AutoTokenizer from asking to run the folder's remote code to read it.
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path or model_args.config_name, config=config
    )
    check_tokenizer(tokenizer, config)
    if data_args.max_seq_length > config.max_position_embeddings:
        raise ValueError(f"`max_seq_length`={data_args.max_seq_length} exceeds the model's "
                         f"`max_position_embeddings`={config.max_position_embeddings}.")
    model = load_model(model_args, config)
    if model_args.use_lora:
        model = add_lora(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                         model_args.lora_target_modules)

    # Data
    with training_args.main_process_first(desc="tokenising and windowing"):
        seed = training_args.seed if training_args.data_seed is None else training_args.data_seed
        train_dataset, eval_dataset = load_datasets(data_args, tokenizer, seed)
    logger.info("%d training rows of at most %d tokens", len(train_dataset), data_args.max_seq_length)

    # Train
    trainer = MaskedDiffusionTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=DiffusionDataCollator(pad_token_id(tokenizer, config), training_args.mask_scope),
        processing_class=tokenizer,
    )
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    # Save
    save_trained_model(trainer, merge_lora=model_args.merge_lora)


if __name__ == "__main__":
    main()
