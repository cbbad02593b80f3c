"""The masked-diffusion objective of iLLaDA and its trainer, a subclass of trl's `SFTTrainer`.

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

A trl user changes one class: `SFTTrainer` -> [`DiffusionSFTTrainer`], `SFTConfig` -> [`DiffusionSFTConfig`]. The
data layer is trl's (its dataset formats, packing strategies and packed position ids, see `illada/data.py`); what
differs is the loss (whole-sequence masking by default, `completion_only_loss=True` for LLaDA's response-only
masking) and the defaults of the paper's recipe.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from transformers import AutoConfig, PreTrainedTokenizerBase, TrainingArguments
from transformers.utils import ModelOutput
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from illada.checkpoints import ResumeArguments, SafeCheckpointMixin
from illada.data import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_SPLIT_PROBABILITY,
    check_tokenizer,
    prepare_dataset,
    resolve_max_length,
)
from illada.hub import HubPushMixin
from illada.modeling_illada import register_peft_targets
from illada.utils import mask_seed, refuse_inert
from illada.utils_illada import check_choice, check_range

logger = logging.getLogger(__name__)

# LLaDA's reference code masks with probability (1 - eps) * u + eps, so that 1/t stays below 1/eps.
DEFAULT_EPS = 1e-3
# Both paper schedules decay over the last 10% of the steps.
DEFAULT_DECAY_FRACTION = 0.1
# Marks the evaluation seeds (seed, _EVAL_STREAM, batch) apart from the training ones (seed, step).
_EVAL_STREAM = 1
PACKING_STRATEGIES = ("wrapped", "bfd", "bfd_split")
# trl's padding-free position ids: 0, 1, ... restarting at every packed document.
packed_position_ids = DataCollatorForLanguageModeling.get_position_ids_from_packed_seq_lengths
DATA_FORMATS = ("sft", "pretrain")
LR_SCHEDULES = ("sft", "pretrain", "trainer")


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
        raise ValueError(
            f"`maskable` must be a bool tensor of shape {tuple(input_ids.shape)}, got "
            f"{maskable.dtype} {tuple(maskable.shape)}."
        )
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
# Configuration
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DiffusionSFTConfig(ResumeArguments, SFTConfig):
    """[`trl.SFTConfig`] for the masked-diffusion loss; the defaults follow the paper's SFT recipe.

    Defaults that differ from trl's: `learning_rate` 5e-6 and `weight_decay` 0.1 (AdamW, paper); activation
    checkpointing off (trl turns it on); `bf16` on only where a CUDA device supports it (trl turns it on everywhere,
    30x slower on CPU); `max_length` 8192 capped by the model's `max_position_embeddings`; `packing=True` with
    `packing_strategy="wrapped"` (all examples in one stream cut into windows, paper); `completion_only_loss=False`
    (prompt, response and EOS all maskable: trl's `None` would mean completion-only for prompt-completion data);
    `remove_unused_columns=False`, `label_names=["maskable"]`, `prediction_loss_only=True` (evaluation reports the
    diffusion loss) and `ddp_find_unused_parameters=False`.

    Not supported (a clear error): `padding_free=True` (rows keep their own t, packing is carried by position ids),
    `assistant_only_loss=True` (use `completion_only_loss`), `loss_type` other than "nll".
    """

    learning_rate: float = field(default=5e-6, metadata={"help": "Peak learning rate (paper SFT: 5e-6)."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (paper: 0.1)."})
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "transformers' alias of `activation_checkpointing`; None keeps trl's default (on) out."},
    )
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; default: on if CUDA supports it."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the collator's columns."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation computes the loss only."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every parameter takes part in the loss: DDP need not search for unused ones."}
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": f"Window length in tokens; default {DEFAULT_MAX_LENGTH} capped by the model's "
            "`max_position_embeddings`.",
            "aliases": ["--max_seq_length"],
        },
    )
    packing: bool = field(default=True, metadata={"help": "Pack examples into windows of `max_length` tokens."})
    packing_strategy: str = field(
        default="wrapped",
        metadata={
            "help": "'wrapped': one stream of all examples cut into windows (paper); 'bfd': whole examples "
            "packed best-fit, positions restart per example; 'bfd_split': the same, long examples split.",
            "choices": list(PACKING_STRATEGIES),
        },
    )
    completion_only_loss: bool | None = field(
        default=False,
        metadata={
            "help": "False: prompt, response and EOS are maskable (iLLaDA); True: only the completion "
            "(response and EOS) is masked and scored (LLaDA)."
        },
    )
    data_format: str = field(
        default="sft",
        metadata={
            "help": "'sft': trl's formats (`messages`, `prompt`/`completion`, `text`); 'pretrain': `text` "
            "documents joined by EOS, windows split at random.",
            "choices": list(DATA_FORMATS),
        },
    )
    split_probability: float = field(
        default=DEFAULT_SPLIT_PROBABILITY,
        metadata={"help": "Pre-training: probability that a window is split into two independent segments."},
    )
    diffusion_eps: float = field(
        default=DEFAULT_EPS, metadata={"help": "Masking probability t = eps + (1 - eps) * u, u ~ U[0, 1]."}
    )
    stratified_t: bool = field(
        default=False, metadata={"help": "Stratify t over the global batch (one draw per 1/N-wide stratum)."}
    )
    lr_schedule: str = field(
        default="sft",
        metadata={
            "help": "'sft': warmup, constant, linear decay to `min_lr` over the last `decay_fraction`; "
            "'pretrain': the same with a cosine decay; 'trainer': use `lr_scheduler_type`.",
            "choices": list(LR_SCHEDULES),
        },
    )
    min_lr: float = field(default=5e-7, metadata={"help": "Floor of the 'sft'/'pretrain' schedules (paper: 5e-7)."})
    decay_fraction: float = field(
        default=DEFAULT_DECAY_FRACTION, metadata={"help": "Fraction of the steps, at the end, over which LR decays."}
    )

    def __post_init__(self) -> None:
        check_range("diffusion_eps", self.diffusion_eps, 0, 1, low_open=True, high_open=True)
        check_choice("packing_strategy", self.packing_strategy, PACKING_STRATEGIES)
        check_choice("data_format", self.data_format, DATA_FORMATS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_range("split_probability", self.split_probability, 0, 1)
        check_range("decay_fraction", self.decay_fraction, 0, 1)
        check_range("learning_rate", self.learning_rate, 0, math.inf, low_open=True)
        check_range("min_lr", self.min_lr, 0, math.inf)
        if self.min_lr > self.learning_rate:
            raise ValueError(
                f"`min_lr`={self.min_lr} is above `learning_rate`={self.learning_rate}: the schedules "
                "decay from `learning_rate` down to `min_lr`."
            )
        if self.max_length is not None and (
            isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2
        ):
            raise ValueError(f"`max_length` must be an integer >= 2 or None, got {self.max_length!r}.")
        if self.completion_only_loss is not None and not isinstance(self.completion_only_loss, bool):
            raise TypeError(
                f"`completion_only_loss` must be True, False or None (None: whole-sequence masking), got "
                f"{type(self.completion_only_loss).__name__} {self.completion_only_loss!r}."
            )
        self.completion_only_loss = bool(self.completion_only_loss)
        if self.completion_only_loss and self.data_format == "pretrain":
            raise ValueError(
                "`completion_only_loss=True` needs `data_format='sft'`: pre-training text has no completion."
            )
        for name, value, fix in [
            ("padding_free", self.padding_free, "packed rows carry their documents in `position_ids` already"),
            ("assistant_only_loss", self.assistant_only_loss, "use `completion_only_loss=True`"),
        ]:
            if value:
                raise ValueError(f"`{name}=True` is not supported by the diffusion trainer: {fix}.")
        if self.loss_type not in ("nll", "chunked_nll"):
            raise ValueError(
                f"`loss_type`={self.loss_type!r} is a next-token loss option; the diffusion trainer has "
                "one loss (leave `loss_type` unset)."
            )
        for name in ("packing", "stratified_t"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        if not self.packing:
            refuse_inert(self, ("packing_strategy",), "with `packing=False`")
        if self.data_format != "pretrain":
            refuse_inert(self, ("split_probability",), "without `data_format='pretrain'`")
        if self.lr_schedule == "trainer":
            refuse_inert(self, ("min_lr", "decay_fraction"), "with `lr_schedule='trainer'` (use `lr_scheduler_type`)")
        if self.label_names is None:
            self.label_names = ["maskable"]
        if self.bf16 is None:
            self.bf16 = not self.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        super().__post_init__()


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DiffusionDataCollator:
    """Pads prepared rows into a batch of `input_ids`, `position_ids` and the `maskable` flags the trainer masks from.

    Rows come from `illada.data.prepare_dataset`: `input_ids`, `completion_mask` and, for packed rows, trl's
    `seq_lengths` (the lengths of the documents in the row), from which the position ids restart at 0 at every
    document, as trl's padding-free collator computes them. Unlike that collator the rows are not flattened into one
    (each row keeps its own diffusion time t). Padding is appended as a separate packed segment (its positions restart
    at 0), so real tokens never attend to it and no attention mask is needed; it is never maskable.

    Args:
        pad_token_id (`int`): Id of the padding token.
        completion_only_loss (`bool`, *optional*, defaults to `False`): Only `completion_mask` tokens are maskable.
        pad_to_multiple_of (`int`, *optional*): Pad the length up to a multiple of this (e.g. `max_length`,
            which makes the masks independent of the batch layout, see [`DiffusionSFTTrainer`]).
    """

    pad_token_id: int
    completion_only_loss: bool = False
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if self.completion_only_loss and any("completion_mask" not in f for f in features):
            raise ValueError("`completion_only_loss=True` needs a `completion_mask` in every row (SFT data).")
        lengths = [len(f["input_ids"]) for f in features]
        seq_len = max(lengths)
        if self.pad_to_multiple_of:
            seq_len = -(-seq_len // self.pad_to_multiple_of) * self.pad_to_multiple_of
        # Padding restarts at position 0: it becomes a segment of its own that real tokens never attend to.
        position_ids = (torch.arange(seq_len) - torch.tensor(lengths)[:, None]).clamp(min=0)  # [B, L]
        input_ids = torch.full((len(features), seq_len), self.pad_token_id, dtype=torch.long)  # [B, L]
        maskable = torch.zeros(len(features), seq_len, dtype=torch.bool)  # [B, L]
        for row, (feature, length) in enumerate(zip(features, lengths)):
            input_ids[row, :length] = torch.as_tensor(feature["input_ids"])
            documents = feature.get("seq_lengths") or [length]
            position_ids[row, :length] = packed_position_ids([documents])[0]
            flags = feature["completion_mask"] if self.completion_only_loss else [True] * length
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


class DiffusionSFTTrainer(HubPushMixin, SafeCheckpointMixin, SFTTrainer):
    """trl's [`SFTTrainer`] with the masked-diffusion loss of iLLaDA; `args` is a [`DiffusionSFTConfig`].

    Data: trl's formats (`messages`, `prompt`/`completion` plain or conversational, `text`) are tokenised, closed by
    exactly one EOS and packed by `illada.data.prepare_dataset`, pre-tokenised rows checked and packed; a
    `datasets.IterableDataset` is streamed through the same steps (set `max_steps`); batches come from
    [`DiffusionDataCollator`]. `train()` refuses an `output_dir` that is the model's own folder, or that holds
    another run's checkpoints unless `overwrite_output_dir=True` or resuming.

    Normalisation: the sum over masked tokens of CE / t is divided by the number of `maskable` tokens of the optimizer
    step, counted over its micro-batches and (with `average_tokens_across_devices`, the default) gathered over
    processes, and multiplied by the process count because data parallelism averages gradients. One step's masks come
    from a generator seeded by (`args.seed`, global step) for the whole global batch, rows taken by process and
    micro-batch in data-loader order: with equal padded lengths the masks, losses and gradients do not depend on how
    the global batch is split over processes and accumulation steps. Evaluation masks come from a generator seeded by
    (`args.seed`, evaluation batch index), so an evaluation gives the same loss every time.

    Example:

    ```python
    >>> trainer = DiffusionSFTTrainer(model=model, args=DiffusionSFTConfig("out", max_steps=10),
    ...                               train_dataset=load_dataset("json", data_files="chat.jsonl", split="train"),
    ...                               processing_class=tokenizer)
    >>> trainer.train()
    ```
    """

    _tag_names = ["trl", "sft", "illada", "diffusion"]
    card_tags = ("trl", "sft")
    _name = "Diffusion SFT"
    # The loss is normalised by the whole step's token count already: Trainer must not divide it by the
    # accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: Any,
        args: DiffusionSFTConfig | TrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        **kwargs: Any,
    ) -> None:
        args = _as_diffusion_config(args, model)
        if isinstance(model, str):
            config = AutoConfig.from_pretrained(model, trust_remote_code=args.trust_remote_code)
        else:
            config = model.config
        args.max_length = resolve_max_length(args.max_length, config.max_position_embeddings)
        if processing_class is not None:  # before trl tokenises anything with it
            check_tokenizer(processing_class, config)
        self._eval_batches = 0
        self._vocab_size = config.vocab_size  # pre-tokenised ids must be below it
        register_peft_targets()  # a `peft_config` naming no targets gets iLLaDA's, as in plain PEFT
        # trl's own collator flattens rows and shifts labels; it is replaced once trl's setup is done.
        super().__init__(model, args, None, train_dataset, eval_dataset, processing_class, **kwargs)
        # trl patched the model's forward with a next-token log-prob head: give the model its own forward back.
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        base.__dict__.pop("forward", None)
        self.data_collator = data_collator or DiffusionDataCollator(
            self._tokenizer.pad_token_id,
            completion_only_loss=args.completion_only_loss,
            pad_to_multiple_of=args.pad_to_multiple_of,
        )

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        """trl's data preparation, with exactly one EOS per example and the pre-training window splits (see
        `illada.data.prepare_dataset`); the main process prepares first, the others read its cache."""
        with args.main_process_first(desc=f"preparing the {dataset_name} dataset"):
            return prepare_dataset(
                dataset,
                self._tokenizer,
                max_length=args.max_length,
                packing=packing,
                packing_strategy=args.packing_strategy,
                data_format=args.data_format,
                split_probability=args.split_probability,
                seed=args.seed if args.data_seed is None else args.data_seed,
                text_field=args.dataset_text_field,
                formatting_func=formatting_func,
                num_proc=args.dataset_num_proc,
                shuffle=args.shuffle_dataset,
                name=dataset_name,
                completion_only_loss=args.completion_only_loss,
                vocab_size=self._vocab_size,
            )

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "completion_mask", "seq_lengths"]

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
        seed = mask_seed(self.args.seed, self.state.global_step)
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
        noise = inputs.pop("mask_noise", None) or self._evaluation_noise(len(input_ids))
        # 1. Noise: t per row, then each maskable token is masked with probability t.
        generator = torch.Generator(device=input_ids.device).manual_seed(noise.seed)
        noisy_ids, masked, t = sample_mask(
            input_ids,
            maskable,
            self.model.config.mask_token_id,
            self.args.diffusion_eps,
            generator,
            self.args.stratified_t,
            noise.row_offset,
            noise.num_rows,
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

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """trl's `evaluate`; every evaluation draws its masks from the same seeds (batch 0, 1, ...)."""
        self._eval_batches = 0
        return super().evaluate(*args, **kwargs)

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

    def card_training(self) -> tuple[str, tuple[str, ...]]:
        """The model card's "Training" paragraph and settings (see [`HubPushMixin.create_model_card`])."""
        return sft_card_training(self.args), SFT_CARD_SETTINGS

    def _evaluation_noise(self, num_rows: int) -> MaskNoise:
        """Seeded masks for a batch without a training step's noise (evaluation, or a direct `compute_loss` call)."""
        seed = mask_seed(self.args.seed, _EVAL_STREAM, self._eval_batches)
        self._eval_batches += 1
        return MaskNoise(seed, 0, num_rows)

    def _across_processes(self) -> bool:
        return self.args.average_tokens_across_devices and self.accelerator.num_processes > 1


def _maskable(batch: dict[str, Any]) -> torch.BoolTensor:
    if "maskable" not in batch:
        raise ValueError(
            f"The batch has no `maskable` tensor (keys: {sorted(batch)}): build batches with `DiffusionDataCollator`."
        )
    return batch["maskable"]


def _as_diffusion_config(args: TrainingArguments | None, model: Any) -> DiffusionSFTConfig:
    """`args` as a [`DiffusionSFTConfig`]: `None` gives the defaults; a plain `TrainingArguments`/`SFTConfig` is
    converted, its values kept except the ones whose trl defaults do not fit (checkpointing, bf16, completion-only
    loss, window length, packing, and an `SFTConfig`'s learning rate, which cannot be told from trl's default):
    those, and the diffusion options, take [`DiffusionSFTConfig`]'s defaults."""
    if isinstance(args, DiffusionSFTConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else (model.config.name_or_path or "illada")
        return DiffusionSFTConfig(f"{Path(name).name}-diffusion-sft")
    if not isinstance(args, TrainingArguments):
        raise TypeError(f"`args` must be a `DiffusionSFTConfig`, got {type(args).__name__}.")
    ours = {f.name for f in fields(DiffusionSFTConfig) if f.init}
    values = {f.name: getattr(args, f.name) for f in fields(args) if f.init and f.name in ours}
    unfit = [
        "completion_only_loss",
        "gradient_checkpointing",
        "activation_checkpointing",
        "max_length",
        "packing",
        "packing_strategy",
        "bf16",
    ]
    if isinstance(args, SFTConfig):
        unfit.append("learning_rate")  # trl's 2e-5 default cannot be told from a value the user chose
    for name in unfit:
        values.pop(name, None)
    return DiffusionSFTConfig(**values)


# ----------------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------------

# The settings the model card of a [`DiffusionSFTTrainer`] run lists.
SFT_CARD_SETTINGS = (
    "learning_rate",
    "min_lr",
    "lr_schedule",
    "weight_decay",
    "max_length",
    "packing_strategy",
    "completion_only_loss",
    "data_format",
    "diffusion_eps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "num_train_epochs",
    "seed",
)


def sft_card_training(args: DiffusionSFTConfig) -> str:
    """The "Training" paragraph of the model card of a [`DiffusionSFTTrainer`] run."""
    objective = (
        "only the completion (response and EOS) masked, LLaDA-style"
        if args.completion_only_loss
        else "the whole sequence (prompt, response and EOS) maskable, as in iLLaDA"
    )
    return (
        "Trained with `DiffusionSFTTrainer` (trl `SFTTrainer` with the masked-diffusion loss): per row t ~ U[eps, 1],"
        " each\nmaskable token masked with probability t, loss = sum of CE / t over the masked tokens divided by the"
        f" step's\nmaskable tokens; {objective}."
    )
