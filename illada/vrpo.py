"""Preference optimisation for iLLaDA: VRPO, DPO on variance-reduced ELBO estimates (LLaDA 1.5, arXiv 2505.19223).

A masked diffusion model has no exact log-likelihood, so DPO's `log pi(y | x)` is replaced by the masked-diffusion
lower bound (ELBO) of the answer, the one `score_continuations(method="likelihood")` estimates (LLaDA Eq. (6)):

    B_pi(y | x) = E_{l ~ U{1..L}} E_{S ⊂ y, |S| = l} [ (L / l) Σ_{i ∈ S} log pi(y_i | x, y with S masked) ],

the prompt `x` never masked, `L` the answer length (its EOS included). The loss is DPO's,

    -log σ(β [(B_pi(y_w) - B_ref(y_w)) - (B_pi(y_l) - B_ref(y_l))]),

with each `B` a Monte-Carlo estimate of `num_mc_samples` = n samples. VRPO's three variance reductions:

1. a budget of n samples per answer (a larger n, a smaller variance);
2. the budget spent as n mask counts ("timesteps") with one random mask set each: the counts of an answer are
   stratified over `1..L` (`scoring_illada.stratified_mask_counts`), each one marginally uniform (unbiased);
3. antithetic sampling: the policy and the reference see the *same* masked inputs for the same answer, so the
   Monte-Carlo noise common to both cancels in `B_pi - B_ref` (with the policy equal to the reference the loss is
   exactly log 2, whatever the masks).

Masks are drawn per answer from a generator seeded by (`seed`, optimizer step, dataset index, chosen/rejected):
they do not depend on the batch size, the accumulation or the process count. The reference is the policy with
its LoRA adapters disabled (no second copy), a given `ref_model`, a frozen copy of the initial model, or
estimates precomputed before training (`precompute_ref_log_probs`; masks are then seeded with step 0 at every
step, so that training reuses the masks of the precomputation).

Data are trl's preference formats: `prompt`/`chosen`/`rejected`, conversational (rendered with the tokenizer's
chat template) or plain text, or `chosen`/`rejected` with an implicit prompt. Every answer ends with exactly one
EOS. Option names follow trl's `DPOConfig` (`beta`, `loss_type`, `loss_weights`, `label_smoothing`, `max_length`,
`precompute_ref_log_probs`, `disable_dropout`), and the logged metrics trl's `DPOTrainer` (`rewards/chosen`,
`rewards/rejected`, `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected`: here ELBO estimates).
"""

import contextlib
import copy
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments
from trl.data_utils import common_prefix_length, is_conversational, maybe_extract_prompt

from illada.checkpoints import ResumeArguments, SafeCheckpointMixin
from illada.data import check_tokenizer
from illada.hub import HubPushMixin
from illada.scoring_illada import random_subset_mask, stratified_mask_counts
from illada.utils import mask_seed, refuse_inert
from illada.utils_illada import check_choice, check_positive_int, check_range

logger = logging.getLogger(__name__)

# Samples per ELBO estimate: a micro-batch of B pairs runs 2 * B * n rows per forward, so n stays modest.
DEFAULT_NUM_MC_SAMPLES = 8
# Loss types of trl's DPOTrainer that only need the four sequence scores (and the answer lengths for `ipo`).
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
# Mixing constants of the mask seed (odd, large): distinct (seed, step, index, answer) give distinct seeds for any
# realistic run, and the result stays below 2**63 (torch.Generator.manual_seed accepts up to 2**64 - 1).
ANSWERS = ("chosen", "rejected")
# DPO's beta is typically 0.01-0.5; beyond this the sigmoid saturates on the first step (no gradient) and beta times
# an ELBO difference of a long answer leaves float32's range.
MAX_BETA = 1e3
# Config fields a reference model must share with the policy: the same vocabulary, mask token and network width.
REFERENCE_FIELDS = ("vocab_size", "mask_token_id", "hidden_size", "num_hidden_layers")


# ----------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class VRPOConfig(ResumeArguments, TrainingArguments):
    """[`TrainingArguments`] plus VRPO's options, named as in trl's `DPOConfig` where they mean the same thing.

    Changed defaults: `learning_rate` 5e-7 (a DPO-scale rate for an 8B model; trl's default is 1e-6),
    `remove_unused_columns=False` (the collator reads the tokenised columns), `ddp_find_unused_parameters=False`.
    """

    learning_rate: float = field(default=5e-7, metadata={"help": "Peak learning rate."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the tokenised columns."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every trainable parameter takes part in the loss."}
    )
    beta: float = field(default=0.1, metadata={"help": "DPO's β: how far the policy may move from the reference."})
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={"help": f"Loss type(s), combined with `loss_weights`; one or more of {list(LOSS_TYPES)}."},
    )
    loss_weights: list[float] | None = field(
        default=None, metadata={"help": "Weight of each loss type (default 1.0 each)."}
    )
    label_smoothing: float = field(
        default=0.0, metadata={"help": "`robust` loss: probability that a preference label is flipped, in [0, 0.5)."}
    )
    num_mc_samples: int = field(
        default=DEFAULT_NUM_MC_SAMPLES,
        metadata={"help": "Monte-Carlo samples per ELBO estimate: n stratified mask counts, one mask each."},
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Longest prompt + answer (tokens); default: the model's context length."}
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={
            "help": "Estimate the reference ELBOs once before training (no reference forward "
            "during training); the masks of each answer are then the same at every step."
        },
    )
    disable_dropout: bool = field(default=True, metadata={"help": "Turn dropout off in the policy and reference."})
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})

    def __post_init__(self) -> None:
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        if not isinstance(self.loss_type, list) or not self.loss_type:
            raise ValueError(f"`loss_type` must name one or more of {list(LOSS_TYPES)}, got {self.loss_type!r}.")
        for loss_type in self.loss_type:
            check_choice("loss_type", loss_type, LOSS_TYPES)
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"`loss_weights` has {len(self.loss_weights)} values for {len(self.loss_type)} loss "
                f"types {self.loss_type}: give one weight per loss type."
            )
        for k, weight in enumerate(self.loss_weights or []):
            check_range(f"loss_weights[{k}]", weight, 0, math.inf)
        if self.loss_weights is not None and not any(self.loss_weights):
            raise ValueError(f"`loss_weights` {self.loss_weights} are all 0: there would be no loss to train on.")
        check_range("beta", self.beta, 0, MAX_BETA, low_open=True)
        check_range("label_smoothing", self.label_smoothing, 0, 0.5, high_open=True)
        if "robust" not in self.loss_type:
            refuse_inert(self, ("label_smoothing",), "without the `robust` loss type")
        check_positive_int("num_mc_samples", self.num_mc_samples)
        check_positive_int("max_length", self.max_length, allow_none=True)
        super().__post_init__()


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def _token_ids(tokenizer: PreTrainedTokenizerBase, value: str | list, generation_prompt: bool = False) -> list[int]:
    """Ids of plain text (tokenizer call) or of a conversation (chat template)."""
    if isinstance(value, str):
        return list(tokenizer(value)["input_ids"])
    return list(
        tokenizer.apply_chat_template(value, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt)[
            "input_ids"
        ]
    )


def tokenize_preference(example: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """`prompt_ids`, `chosen_ids` and `rejected_ids` of one trl preference example (prompt already explicit).

    As trl's `DPOTrainer`: a conversation is rendered with the chat template (the prompt with the generation
    prompt), plain text is tokenised as it is, and an answer starts where the tokenised prompt and the tokenised
    prompt + answer diverge. iLLaDA: trailing EOS tokens of an answer (a template's own) are replaced by exactly one.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no `eos_token_id`: every answer must end with one EOS.")
    conversational = is_conversational(example)
    prompt_ids = _token_ids(tokenizer, example["prompt"], generation_prompt=conversational)
    full = {name: _token_ids(tokenizer, example["prompt"] + example[name]) for name in ANSWERS}
    start = min(common_prefix_length(prompt_ids, ids) for ids in full.values())
    output = {"prompt_ids": prompt_ids[:start]}
    for name, ids in full.items():
        answer = ids[start:]
        while answer and answer[-1] == tokenizer.eos_token_id:
            answer = answer[:-1]
        output[f"{name}_ids"] = answer + [tokenizer.eos_token_id]
    return output


def build_preference_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    mask_token_id: int,
    num_proc: int | None = None,
) -> Dataset:
    """Tokenised preference rows (see [`tokenize_preference`]) with an `index` column that seeds the masks.

    Raises:
        ValueError: a column is missing, a prompt + answer is longer than `max_length`, or an answer contains the
            mask token.
    """
    missing = [name for name in ANSWERS if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The preference dataset has no `{missing[0]}` column (columns: {dataset.column_names}): "
            "give `prompt`/`chosen`/`rejected`, or `chosen`/`rejected` with an implicit prompt."
        )
    for row, example in enumerate(dataset):
        check_preference(example, f"Example {row}")
    if "index" not in dataset.column_names:
        dataset = dataset.map(lambda _, i: {"index": i}, with_indices=True)
    dataset = dataset.map(maybe_extract_prompt, num_proc=num_proc)
    dataset = dataset.map(tokenize_preference, fn_kwargs={"tokenizer": tokenizer}, num_proc=num_proc)
    for row, (prompt, *answers) in enumerate(zip(*(dataset[f"{n}_ids"] for n in ("prompt", *ANSWERS)))):
        for name, answer in zip(ANSWERS, answers):
            if len(prompt) + len(answer) > max_length:
                raise ValueError(
                    f"Example {row}: prompt + {name} answer is {len(prompt) + len(answer)} tokens, over "
                    f"`max_length`={max_length}: filter long examples or raise `max_length`."
                )
            if mask_token_id in answer:
                raise ValueError(f"Example {row}: `{name}` holds the mask token id {mask_token_id}: remove it.")
        if mask_token_id in prompt:
            raise ValueError(f"Example {row}: `prompt` holds the mask token id {mask_token_id}: remove it.")
    return dataset


def check_preference(example: Any, where: str) -> None:
    """Raises naming `where` and the column unless `example` is a trl preference row: `chosen` and `rejected` both
    strings or both lists of `{"role", "content"}` turns, and `prompt` (optional) of the same kind."""
    if not isinstance(example, dict):
        raise TypeError(f"{where} must be a mapping of `prompt`/`chosen`/`rejected`, got {type(example).__name__}.")
    kinds = {}
    for name in ("prompt", *ANSWERS):
        if name == "prompt" and name not in example:  # an implicit prompt: the common start of the answers
            continue
        value = example.get(name)
        if isinstance(value, str):
            kinds[name] = "text"
        elif isinstance(value, list) and all(_is_turn(turn) for turn in value):
            kinds[name] = "conversation"
        else:
            raise TypeError(
                f"{where}: `{name}` must be a string or a list of {{'role', 'content'}} turns (trl's preference "
                f"formats), got {type(value).__name__} {repr(value)[:80]}."
            )
    if example["chosen"] == example["rejected"]:
        raise ValueError(
            f"{where}: `chosen` and `rejected` are the same answer: the pair states no preference (its loss is "
            "constant). Drop it."
        )
    chosen, rejected = example["chosen"], example["rejected"]
    if "prompt" not in example and (chosen[: len(rejected)] == rejected or rejected[: len(chosen)] == chosen):
        raise ValueError(
            f"{where}: one of `chosen` and `rejected` is the start of the other, so the implicit prompt (their common "
            "start) leaves an empty answer: give an explicit `prompt`."
        )
    if len(set(kinds.values())) > 1:
        raise TypeError(
            f"{where}: mixes plain text and conversations ({kinds}): `prompt`, `chosen` and `rejected` "
            "must all be strings or all be lists of turns."
        )


def _is_turn(turn: Any) -> bool:
    return isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)


@dataclass
class PreferenceCollator:
    """Pads a batch of B tokenised pairs into 2B right-padded `prompt + answer` rows: the chosen answers, then
    the rejected ones. Returns `input_ids` / `attention_mask` `(2B, T)`, `prompt_lengths` / `answer_lengths`
    `(2B,)`, `index` `(B,)` and, when the rows have them, the precomputed `ref_chosen_logps` / `ref_rejected_logps`."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [f["prompt_ids"] for f in features] * 2
        answers = [f[f"{name}_ids"] for name in ANSWERS for f in features]
        width = max(len(p) + len(a) for p, a in zip(prompts, answers))
        input_ids = torch.full((len(answers), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(len(answers), width, dtype=torch.long)
        for row, (prompt, answer) in enumerate(zip(prompts, answers)):
            input_ids[row, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
            attention_mask[row, : len(prompt) + len(answer)] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prompt_lengths": torch.tensor([len(p) for p in prompts]),
            "answer_lengths": torch.tensor([len(a) for a in answers]),
            "index": torch.tensor([f["index"] for f in features]),
        }
        for name in REFERENCE_COLUMNS:
            if name in features[0]:
                batch[name] = torch.tensor([f[name] for f in features], dtype=torch.float64)
        return batch


# ----------------------------------------------------------------------------------------------------------------
# ELBO estimate and loss
# ----------------------------------------------------------------------------------------------------------------


def draw_answer_masks(
    answer_lengths: torch.Tensor, num_samples: int, seeds: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """VRPO's sampling for each answer: `num_samples` stratified mask counts, one random mask set each.

    Args:
        answer_lengths (`torch.Tensor` of shape `(rows,)`): answer lengths L >= 1.
        num_samples (`int`): samples n per answer.
        seeds (`list[int]`): one generator seed per row (see [`mask_seed`]).

    Returns:
        `counts` `(rows, n)` in `1..L` and `span` `(rows, n, L_max)` bool, `counts[r, s]` of the first `L_r`
        positions set in `span[r, s]`; on the device of `answer_lengths`.
    """
    max_len = int(answer_lengths.max())
    counts, spans = [], []
    for length, seed in zip(answer_lengths.cpu().tolist(), seeds):
        generator = torch.Generator().manual_seed(seed)
        row_counts = stratified_mask_counts(torch.tensor([length]), num_samples, generator)[0]  # [n]
        # Drawn at the answer's own length: the draws, hence the masks, do not depend on the other rows.
        span = random_subset_mask(torch.full((num_samples,), length), row_counts, length, generator)  # [n, L]
        spans.append(F.pad(span, (0, max_len - length)))
        counts.append(row_counts)
    return torch.stack(counts).to(answer_lengths.device), torch.stack(spans).to(answer_lengths.device)


def elbo_estimates(
    model: torch.nn.Module,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    prompt_lengths: torch.Tensor,
    answer_lengths: torch.Tensor,
    counts: torch.Tensor,
    span: torch.Tensor,
    mask_token_id: int,
) -> torch.Tensor:
    """Differentiable Monte-Carlo ELBO of each row's answer: the mean over samples s of
    `(L / counts[s]) Σ_{i ∈ span[s]} log p(y_i | prompt, answer with span[s] masked)`.

    Args:
        input_ids (`torch.LongTensor` of shape `(rows, T)`): `prompt + answer`, right-padded.
        attention_mask (`torch.Tensor` of shape `(rows, T)`, *optional*): 1 on tokens, 0 on padding.
        prompt_lengths, answer_lengths (`torch.Tensor` of shape `(rows,)`): where each answer starts, its length.
        counts, span: the masks of [`draw_answer_masks`], `(rows, n)` and `(rows, n, L_max)`.

    Returns:
        `torch.Tensor` of shape `(rows,)`, in the logits' dtype promoted to at least float32.
    """
    rows, num_samples, max_len = span.shape
    width = input_ids.shape[1]
    # 1. Masked positions in canvas coordinates: answer position j of row r is column prompt_lengths[r] + j.
    offsets = torch.arange(width, device=input_ids.device) - prompt_lengths[:, None]  # [R, T]
    inside = (offsets >= 0) & (offsets < max_len)  # [R, T]
    gathered = span.gather(2, offsets.clamp(0, max_len - 1)[:, None, :].expand(-1, num_samples, -1))  # [R, n, T]
    masked = (gathered & inside[:, None, :]).reshape(rows * num_samples, width)  # [R*n, T]
    clean = input_ids.repeat_interleave(num_samples, 0)  # [R*n, T]
    if attention_mask is not None:
        attention_mask = attention_mask.repeat_interleave(num_samples, 0)
    # 2. One forward over all samples; the LM head runs at the masked positions only.
    logits = model(
        input_ids=clean.masked_fill(masked, mask_token_id), attention_mask=attention_mask, logits_to_keep=masked
    ).logits  # [N, V]
    log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
    token_log_probs = log_probs.gather(1, clean[masked][:, None]).squeeze(1)  # [N]
    # 3. Per sample: sum over its masked tokens, weighted by L / l; then the mean over samples.
    sample_of_token = torch.arange(rows * num_samples, device=clean.device)[:, None].expand_as(masked)[masked]
    sums = token_log_probs.new_zeros(rows * num_samples).index_add(0, sample_of_token, token_log_probs)
    weights = answer_lengths[:, None].to(sums.dtype) / counts.to(sums.dtype)  # [R, n]
    return (sums.view(rows, num_samples) * weights).mean(1)


def preference_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    args: VRPOConfig,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair loss `(B,)` of `args.loss_type` (weighted by `args.loss_weights`), as trl's DPOTrainer defines
    them, on ELBO estimates; and the implicit rewards `β (B_pi - B_ref)` of the chosen and rejected answers `(B,)`."""
    chosen_ratio = policy_chosen - reference_chosen.to(policy_chosen.dtype)
    rejected_ratio = policy_rejected - reference_rejected.to(policy_rejected.dtype)
    delta, beta, smoothing = chosen_ratio - rejected_ratio, args.beta, args.label_smoothing
    weights = args.loss_weights or [1.0] * len(args.loss_type)
    losses = torch.zeros_like(delta)
    for loss_type, weight in zip(args.loss_type, weights):
        if loss_type == "sigmoid":
            loss = -F.logsigmoid(beta * delta)
        elif loss_type == "hinge":
            loss = torch.relu(1 - beta * delta)
        elif loss_type == "ipo":  # trl normalises IPO's log-ratios by the answer lengths
            average_delta = chosen_ratio / chosen_lengths - rejected_ratio / rejected_lengths
            loss = (average_delta - 1 / (2 * beta)) ** 2
        else:  # robust
            loss = (-(1 - smoothing) * F.logsigmoid(beta * delta) + smoothing * F.logsigmoid(-beta * delta)) / (
                1 - 2 * smoothing
            )
        losses = losses + weight * loss
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def _check_finite(losses: torch.Tensor, policy: torch.Tensor, reference: torch.Tensor, args: VRPOConfig) -> None:
    """A non-finite loss would turn the weights into NaN (the logged loss hiding it): stop with the cause."""
    if bool(torch.isfinite(losses).all()):
        return
    cause = "the policy's ELBO estimates" if not torch.isfinite(policy).all() else "the reference's ELBO estimates"
    if torch.isfinite(policy).all() and torch.isfinite(reference).all():
        cause = f"`beta`={args.beta} times the ELBO differences, with `loss_type`={args.loss_type}"
    raise ValueError(
        f"The VRPO loss is not finite ({losses.tolist()[:4]}), from {cause}: lower `beta`, check the weights "
        "(a NaN in the model) and the reference."
    )


def disable_dropout(model: torch.nn.Module) -> None:
    """Sets every dropout of `model` to 0 (`nn.Dropout` modules, LoRA's included, and iLLaDA's attention dropout):
    the policy and the reference must compute the same function for antithetic sampling to cancel."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.0


def is_zero3_partitioned(model: torch.nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitioned `model`'s weights when it was built (`deepspeed.zero.Init`, which
    `from_pretrained` enters under a ZeRO-3 config with `zero3_init_flag`): each process then holds a slice of every
    weight, and the parameter carries DeepSpeed's `ds_id`."""
    return any(hasattr(parameter, "ds_id") for parameter in model.parameters())


def whole_weights(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """A context in which a ZeRO-3-partitioned `model` holds its whole weights on every process (DeepSpeed's
    `GatheredParameters`, read-only: they are partitioned again on exit); nothing for any other model."""
    if not is_zero3_partitioned(model):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()))


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------


VRPO_CARD_TRAINING = (
    "Trained with `VRPOTrainer` (VRPO, LLaDA 1.5, arXiv 2505.19223): DPO's loss on Monte-Carlo estimates of the\n"
    "masked-diffusion ELBO of the chosen and rejected answers, with stratified mask counts and the same masks for the\n"
    "policy and the reference (antithetic sampling)."
)
VRPO_CARD_SETTINGS = (
    "learning_rate",
    "beta",
    "loss_type",
    "num_mc_samples",
    "max_length",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "num_train_epochs",
    "seed",
)


class VRPOTrainer(HubPushMixin, SafeCheckpointMixin, Trainer):
    """[`Trainer`] for VRPO on iLLaDA, used like trl's `DPOTrainer`; `args` is a [`VRPOConfig`].

    Normalisation: the per-pair losses are summed and divided by the number of pairs of the optimizer step (all
    micro-batches on all processes), times the process count because data parallelism averages gradients: the
    gradient is the one of one large batch whatever the split (tested), and a short last micro-batch weighs by
    its pairs.

    Args:
        model: the policy, an iLLaDA model or a PEFT model of one (the reference is then the model with its adapters
            disabled).
        ref_model (*optional*): the reference; default: a frozen copy of `model` (none under PEFT or with
            `precompute_ref_log_probs`).
        train_dataset, eval_dataset (`datasets.Dataset`): trl preference data, raw or already built by
            [`build_preference_dataset`]; may carry precomputed `ref_chosen_logps` / `ref_rejected_logps`.
        processing_class: the tokenizer (its chat template renders conversations).

    Example:

    ```python
    >>> args = VRPOConfig("out/vrpo", beta=0.1, num_mc_samples=8, per_device_train_batch_size=4)
    >>> trainer = VRPOTrainer(model, args=args, train_dataset=preferences, processing_class=tokenizer)
    >>> trainer.train()
    ```
    """

    loss_is_scaled_for_ga = True
    card_tags = ("vrpo", "dpo")

    def __init__(
        self,
        model,
        ref_model=None,
        args: VRPOConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        data_collator=None,
        **kwargs,
    ) -> None:
        args = VRPOConfig("vrpo-output") if args is None else args
        if not isinstance(args, VRPOConfig):
            raise TypeError(f"`args` must be a `VRPOConfig`, got {type(args).__name__}.")
        if processing_class is None:
            raise ValueError("`processing_class` (the tokenizer) is required: it tokenises the preference data.")
        config = model.config
        check_tokenizer(processing_class, config)
        max_length = args.max_length or config.max_position_embeddings
        if max_length > config.max_position_embeddings:
            raise ValueError(
                f"`max_length`={max_length} exceeds the model's `max_position_embeddings`="
                f"{config.max_position_embeddings}."
            )
        train_dataset, eval_dataset = (
            _build(data, processing_class, max_length, config.mask_token_id, args.dataset_num_proc)
            for data in (train_dataset, eval_dataset)
        )
        if data_collator is None:
            pad = processing_class.pad_token_id if processing_class.pad_token_id is not None else config.pad_token_id
            data_collator = PreferenceCollator(pad)
        if args.disable_dropout:
            disable_dropout(model)
        self.ref_model = _reference_model(model, ref_model, args, [train_dataset, eval_dataset])
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            **kwargs,
        )
        if self.ref_model is not None:
            self.ref_model = self._place_reference(self.ref_model)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        if args.precompute_ref_log_probs:
            self.train_dataset, self.eval_dataset = (
                None if data is None else self.precompute_reference(data)
                for data in (self.train_dataset, self.eval_dataset)
            )
            self.ref_model = None  # every estimate it gives is in the datasets now

    def _place_reference(self, ref_model: torch.nn.Module) -> torch.nn.Module:
        """The frozen reference sharded like the policy: FSDP2 shards it per decoder layer (accelerate's auto-wrap
        of the config), DeepSpeed ZeRO-3 partitions it (trl's `prepare_deepspeed`; under ZeRO-2 every process holds
        it whole, as the policy's weights); otherwise it moves to the device."""
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled and self.accelerator.is_fsdp2:
            from accelerate.utils.fsdp_utils import fsdp2_prepare_model

            return fsdp2_prepare_model(self.accelerator, ref_model.to(self.args.device))
        if self.is_fsdp_enabled:
            from trl.models import prepare_fsdp

            return prepare_fsdp(ref_model, self.accelerator)
        return ref_model.to(self.args.device)

    def precompute_reference(self, dataset: Dataset) -> Dataset:
        """`dataset` with the reference ELBO estimates `ref_chosen_logps` / `ref_rejected_logps` added, computed with
        the step-0 masks that training then reuses (antithetic sampling). Each process computes all rows, with the
        whole model (a ZeRO-3-partitioned one is gathered for it)."""
        if _has_reference(dataset):
            return dataset
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator
        )
        was_training = self.model.training
        self.model.eval()
        estimates = []
        with whole_weights(self.model):
            for batch in loader:
                batch = self._prepare_inputs(batch)
                masks = self._draw_masks(batch, step=0)
                estimates.append(self._reference_estimates(self.model, batch, masks).view(2, -1))
        self.model.train(was_training)
        chosen, rejected = torch.cat(estimates, 1).double().cpu()
        dataset = dataset.add_column(REFERENCE_COLUMNS[0], chosen.tolist())
        return dataset.add_column(REFERENCE_COLUMNS[1], rejected.tolist())

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device) -> tuple[list, torch.Tensor]:
        """Prefetches the step's micro-batches and counts their pairs over all processes (the loss normaliser)."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        count = torch.tensor(sum(len(batch["index"]) for batch in batch_samples), device=device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.gather(count).sum()
        return batch_samples, count

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """VRPO loss of one micro-batch of B pairs (2B rows: chosen, then rejected)."""
        # 1. Masks, shared by the policy and the reference (antithetic sampling).
        masks = self._draw_masks(inputs)  # counts [2B, n], span [2B, n, L_max]
        # 2. ELBO estimates of every answer under the policy (with gradients) and the reference.
        policy = elbo_estimates(model, *_rows(inputs), *masks, self.model.config.mask_token_id)  # [2B]
        reference = self._reference_estimates(model, inputs, masks)  # [2B]
        # 3. Per-pair losses and implicit rewards.
        chosen_lengths, rejected_lengths = inputs["answer_lengths"].chunk(2)
        losses, chosen_rewards, rejected_rewards = preference_losses(
            *policy.chunk(2), *reference.chunk(2), self.args, chosen_lengths, rejected_lengths
        )  # [B] each
        _check_finite(losses, policy, reference, self.args)
        self._record_metrics(policy.detach(), chosen_rewards, rejected_rewards)
        # 4. Normalised by the pairs of the optimizer step (the micro-batch's own count in evaluation).
        if num_items_in_batch is None:
            loss = losses.mean()
        else:
            loss = losses.sum() / num_items_in_batch * self.accelerator.num_processes
        if return_outputs:
            return loss, {"policy_logps": policy, "reference_logps": reference, "losses": losses}
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys: list[str] | None = None):
        """Evaluation computes the VRPO loss (there are no labels)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def card_training(self) -> tuple[str, tuple[str, ...]]:
        """The model card's "Training" paragraph and settings (see [`HubPushMixin.create_model_card`])."""
        return VRPO_CARD_TRAINING, VRPO_CARD_SETTINGS

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the means of the recorded metrics since the last log (as trl's DPOTrainer)."""
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items()}
        logs.update({f"eval_{k}" if mode == "eval" else k: v for k, v in metrics.items()})
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def _draw_masks(self, inputs: dict[str, torch.Tensor], step: int | None = None) -> tuple[torch.Tensor, ...]:
        if step is None:
            step = 0 if self.args.precompute_ref_log_probs else self.state.global_step
        index = inputs["index"].tolist()
        seeds = [mask_seed(self.args.seed, step, i, answer) for answer in range(len(ANSWERS)) for i in index]
        return draw_answer_masks(inputs["answer_lengths"], self.args.num_mc_samples, seeds)

    def _reference_estimates(self, model, inputs: dict[str, torch.Tensor], masks: tuple[torch.Tensor, ...]):
        """Reference ELBOs `(2B,)`: precomputed, from `ref_model`, or from the policy with its adapters disabled."""
        if REFERENCE_COLUMNS[0] in inputs:
            return torch.cat([inputs[name] for name in REFERENCE_COLUMNS])
        mask_id = self.model.config.mask_token_id
        with torch.no_grad():
            if self.ref_model is not None:
                return elbo_estimates(self.ref_model, *_rows(inputs), *masks, mask_id)
            unwrapped = self.accelerator.unwrap_model(model)
            if not _is_peft(unwrapped):
                return elbo_estimates(unwrapped, *_rows(inputs), *masks, mask_id)  # precomputation, before training
            with unwrapped.disable_adapter():
                return elbo_estimates(unwrapped, *_rows(inputs), *masks, mask_id)

    def _record_metrics(self, policy: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor):
        mode = "train" if self.model.training else "eval"
        chosen_logps, rejected_logps = policy.chunk(2)
        values = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": chosen_logps,
            "logps/rejected": rejected_logps,
        }
        for key, value in values.items():
            self._metrics[mode][key].append(self.accelerator.gather_for_metrics(value.float()).mean().item())


def _reference_model(model, ref_model, args: VRPOConfig, datasets: list[Dataset | None]):
    """The reference network: `ref_model`, else a frozen copy of `model`; None under PEFT (adapters disabled) or
    when every dataset carries (or will carry, with `precompute_ref_log_probs`) the reference estimates."""
    datasets = [data for data in datasets if data is not None]
    precomputed = args.precompute_ref_log_probs or (datasets and all(map(_has_reference, datasets)))
    if ref_model is None and not (_is_peft(model) or precomputed):
        if is_zero3_partitioned(model):
            raise ValueError(
                "The model's weights are partitioned by DeepSpeed ZeRO-3 (`zero3_init_flag`), so a copy of it cannot "
                "be the reference: pass `ref_model` loaded with `from_pretrained` like the model (it is partitioned "
                "too), train LoRA adapters (the reference is the model without them), or set "
                "`precompute_ref_log_probs=True`."
            )
        ref_model = copy.deepcopy(model)
    if ref_model is not None:
        _check_reference(model, ref_model)
        ref_model.requires_grad_(False).eval()
        disable_dropout(ref_model)
    return ref_model


def _check_reference(model, ref_model) -> None:
    """The reference must share the policy's vocabulary, mask token and shape (`REFERENCE_FIELDS`)."""
    config, ref_config = _base_config(model), _base_config(ref_model)
    if ref_config is None:
        raise TypeError(f"`ref_model` must be an iLLaDA model (with a config), got {type(ref_model).__name__}.")
    for name in REFERENCE_FIELDS:
        ours, theirs = getattr(config, name, None), getattr(ref_config, name, None)
        if ours != theirs:
            raise ValueError(
                f"`ref_model` has {name}={theirs!r}, the policy {name}={ours!r}: the reference must be a model of the "
                f"same vocabulary, mask token and shape (usually the policy's own starting checkpoint)."
            )


def _base_config(model):
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(model, "config", None)


def _build(data: Dataset | None, tokenizer, max_length: int, mask_token_id: int, num_proc: int | None):
    """Tokenises raw preference data; data already built (with `prompt_ids`) pass through."""
    if data is None or "prompt_ids" in data.column_names:
        return data
    return build_preference_dataset(data, tokenizer, max_length, mask_token_id, num_proc)


def _has_reference(data: Dataset | None) -> bool:
    return data is not None and all(name in data.column_names for name in REFERENCE_COLUMNS)


def _rows(inputs: dict[str, torch.Tensor]) -> tuple:
    """`input_ids`, `attention_mask` (None without padding), `prompt_lengths`, `answer_lengths` of a batch."""
    attention_mask = inputs["attention_mask"]
    attention_mask = None if bool(attention_mask.bool().all()) else attention_mask
    return inputs["input_ids"], attention_mask, inputs["prompt_lengths"], inputs["answer_lengths"]
