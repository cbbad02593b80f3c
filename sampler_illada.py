"""The sampler of iLLaDA: block-wise low-confidence remasking with stop-token-terminated generation.

[`run_sampler`] fills a canvas of mask tokens after the prompt, one block at a time:

- **Low-confidence remasking** (LLaDA, arXiv 2502.09992, Alg. 5 and `generate.py`). Inside a block of `n` masks,
  step `s` of `S` commits `n // S` tokens, plus one on the first `n % S` steps. Every step runs the model on the
  canvas, proposes a token `x0` at each masked position (argmax, or Gumbel-max at temperature > 0, optionally
  restricted by top-p / top-k as in Dream), scores it (`low_confidence`: its probability; `random`; `margin`;
  `entropy`) and commits the best-scored positions of the block. Committed tokens are never remasked.
- **Two canvases.** `variable` (the iLLaDA paper, Sec. "Variable-length generation"): the canvas grows by one block
  at a time and a row stops after the block that contains a stop token (EOS or another one). `fixed` (LLaDA): the
  whole budget of masks is on the canvas from the start; later blocks are visible while earlier ones decode.
- **Extras.** Unsupervised classifier-free guidance (LLaDA App. B.3), confidence-threshold parallel decoding
  (Fast-dLLM, arXiv 2505.22618, Sec. 3.3), a stop-token logit bias that grows with the generated length (the
  iLLaDA paper's fix for the Instruct model's loops), suppressed tokens.
- **Stop at the answer's end** (default of the `variable` canvas): the positions of a block after a committed stop
  token are not decoded; `decode_after_stop=True` decodes whole blocks, as the paper does.
- **Lossless draft and verify** (`draft_tokens`, FreeDave, arXiv 2510.00294; a verification tree as in arXiv
  2510.04147): each forward runs the canvases of several drafted commits as one batch and keeps those that
  one-token-per-step greedy decoding makes: its tokens, in fewer forwards.
- **Key-value cache** (`use_cache="prefix"` / `"dual"`, Fast-dLLM Sec. 3.2): the first step of a block runs on the
  whole canvas and stores keys and values; the other steps run on the block (and, for `"prefix"`, the canvas right
  of it) and reuse the stored entries elsewhere. An approximation in a bidirectional model, exact when refreshed
  at every step (`cache_refresh_steps=1`).

Every answer is cut after its first stop token; the rest of the row is the pad id. Logits are computed only for
the block being decoded, and finished rows leave the batch. The settings come validated from
`generation_config_illada.py`; the transformers entry point is `generation_illada.py`.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers.generation.streamers import BaseStreamer
from transformers.utils import ModelOutput

from .cache_illada import DiffusionKVCache
from .generation_config_illada import ILLaDAGenerationConfig
from .utils_illada import guided_logits

# Gumbel-max in float64: low-precision Gumbel noise lowers the effective temperature of masked diffusion
# models (Zheng et al., arXiv 2409.02908), which is why LLaDA samples in float64 too.
NOISE_DTYPE = torch.float64
# `history` value of positions that were not generated (prompt, padding, after the end).
NOT_GENERATED = -1
# Remasking scores closer than this are tied (leftmost first): float32 logits carry noise of ~1e-7 that depends on
# the row's padding, which must not pick the committed position.
TIE_TOLERANCE = 1e-6

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class ILLaDAGenerateOutput(ModelOutput):
    """Output of [`ILLaDAGenerationMixin.generate`] with `return_dict_in_generate=True`.

    Args:
        sequences (`torch.LongTensor` of shape `(batch_size, prompt_len + answer_len)`): Prompt (as given, left
            padding included) and answer, cut after the first stop token; shorter answers end in the pad id.
        nfe (`int`): Number of function evaluations: forward passes of the model (a guided step counts once).
        answer_lengths (`torch.LongTensor` of shape `(batch_size,)`): Tokens of each answer before its stop token
            (the answer's text is `sequences[i, prompt_len : prompt_len + answer_lengths[i]]`).
        stopped (`torch.BoolTensor` of shape `(batch_size,)`): Why each row ended: `True` when a stop token (EOS
            or one of `stop_token_ids`) follows the answer, `False` when the `max_new_tokens` budget ran out.
        history (`torch.LongTensor` of shape `(batch_size, prompt_len + answer_len)`, *optional*): With
            `output_history=True`, the step (0 to `nfe - 1`) at which each generated position was committed;
            `-1` for the prompt and for positions after the end of an answer.
    """

    sequences: torch.LongTensor | None = None
    nfe: int | None = None
    answer_lengths: torch.LongTensor | None = None
    stopped: torch.BoolTensor | None = None
    history: torch.LongTensor | None = None


# --------------------------------------------------------------------------------------------- sampler steps


def steps_in_block(num_tokens: int, steps: int | None, tokens_per_step: int | None) -> int:
    """Forward passes spent on a block of `num_tokens` masks: `steps` (at most one per token), `ceil(num_tokens /
    tokens_per_step)`, or one per token by default (the paper does not publish its steps per block)."""
    if steps is not None:
        return min(steps, num_tokens)
    if tokens_per_step is not None:
        return -(-num_tokens // tokens_per_step)
    return num_tokens


def transfer_schedule(num_tokens: int, steps: int) -> list[int]:
    """Tokens to commit at each of `steps` steps for a block of `num_tokens` masks.

    LLaDA (arXiv 2502.09992, Eq. (8) and `get_num_transfer_tokens`): the linear noise schedule unmasks the same
    expected number of tokens per step, so each step gets `num_tokens // steps`, and the first
    `num_tokens % steps` steps one more. Example: 10 tokens in 4 steps -> `[3, 3, 2, 2]`.
    """
    base, extra = divmod(num_tokens, steps)
    return [base + (step < extra) for step in range(steps)]


def denoiser_logits(
    model,
    tokens: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.LongTensor | None,
    start: int,
    end: int,
) -> torch.Tensor:
    """The one model call of a denoising step: logits `(rows, end - start, vocab)` of canvas columns `start:end`.

    Only the block's positions go through the LM head (`logits_to_keep`): over a 155k vocabulary, logits of the
    whole canvas are the largest waste of a naive sampler. With `use_cache`, `_BlockCache.logits` replaces it.
    """
    keep = torch.arange(start, end, device=tokens.device)
    return model(
        input_ids=tokens,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=keep,
        return_dict=True,
    ).logits


def stop_bias_values(offsets: torch.Tensor, spec: dict) -> torch.Tensor:
    """Bias `min(max_bias, slope * max(0, i - start))` for answer positions `offsets` `(n,)` (float32).

    The iLLaDA paper raises the stop-thinking token's probability gradually with the generated length; this
    linear ramp is our (configurable) choice, as the paper does not publish its schedule.
    """
    bias = spec["slope"] * (offsets - spec.get("start", 0)).clamp(min=0).float()
    return bias if spec.get("max_bias") is None else bias.clamp(max=spec["max_bias"])


def constrain_logits(logits: torch.Tensor, config: ILLaDAGenerationConfig, offsets: torch.Tensor) -> torch.Tensor:
    """Applies the stop-token bias, `suppress_tokens` and the mask ban to block logits `(rows, n, vocab)` in place.

    The mask token gets `-inf`: it is an input symbol, never an answer. Suppression sets the logit
    itself (not only the confidence), so a suppressed token can be neither proposed nor committed (LLaDA issue 137).
    """
    if config.stop_token_bias is not None:
        ids = torch.tensor(config.stop_token_bias["token_ids"], device=logits.device)
        logits[..., ids] += stop_bias_values(offsets, config.stop_token_bias).to(logits.device)[None, :, None]
    if config.suppress_tokens:
        logits[..., torch.tensor(config.suppress_tokens, device=logits.device)] = -math.inf
    logits[..., config.mask_token_id] = -math.inf
    return logits


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    noise_device = generator.device if generator is not None else device
    return torch.rand(shape, dtype=NOISE_DTYPE, generator=generator, device=noise_device).to(device)


def filter_logits(scaled: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Sets to `-inf` the tokens outside the nucleus `top_p`, then outside the `top_k` best (Dream's `top_p_logits`
    and `top_k_logits`, in Dream's order). `scaled` are tempered logits `(rows, n, vocab)`; ties at the cut are kept.

    Nucleus: the most likely tokens, in order, up to and including the first whose cumulative probability exceeds
    `top_p` (always at least one).
    """
    if top_p is not None and top_p < 1:
        ordered, order = scaled.sort(dim=-1, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        outside = torch.zeros_like(cumulative, dtype=torch.bool)
        outside[..., 1:] = cumulative[..., :-1] > top_p  # shifted: keep the token that crosses `top_p`
        scaled = scaled.masked_fill(outside.scatter(-1, order, outside), -math.inf)
    if top_k is not None and top_k < scaled.shape[-1]:
        kth_best = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth_best, -math.inf)
    return scaled


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Proposed tokens `x0` `(rows, n)`: the argmax, or at `temperature > 0` a draw from `softmax(logits / T)`,
    restricted to the `top_p` nucleus and the `top_k` best tokens when given.

    Gumbel-max in float64 on the block only (LLaDA `add_gumbel_noise`, arXiv 2409.02908): `argmax((l - max l) / T
    + g)` with `g = -log(-log u)`, the log of LLaDA's `exp(l) / (-log u)^T` divided by `T` (same argmax). Shifting
    by the maximum and dividing by `T` keeps every value finite for any positive `T`, so a banned token (logit
    `-inf`: the mask, suppressed and filtered tokens) can never win. Draws one `(rows, n, vocab)` float64 uniform
    tensor.
    """
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.to(NOISE_DTYPE)
    scaled = filter_logits((logits - logits.amax(-1, keepdim=True)) / temperature, top_k, top_p)
    gumbel = -torch.log(-torch.log(_uniform(logits.shape, generator, logits.device)))
    return (scaled + gumbel).argmax(-1)


def remasking_confidence(
    logits: torch.Tensor, x0: torch.Tensor, remasking: str, generator: torch.Generator | None
) -> torch.Tensor:
    """The remasking score `(rows, n)` (float64) of committing `x0` at each position; higher is committed first.

    `low_confidence`: `softmax(logits)[x0]` (LLaDA). `random`: `U(0, 1)` (LLaDA; draws a `(rows, n)` float64
    tensor). `margin`: top-1 minus top-2 probability; `entropy`: `exp(-H(softmax(logits)))` (Dream's margin and
    entropy confidences, arXiv 2508.15487, with entropy mapped into (0, 1] so that `threshold` applies to it too).
    Not to be confused with `scoring_illada`'s scoring of candidate answers.
    """
    if remasking == "random":
        return _uniform(x0.shape, generator, x0.device)
    probs = logits.softmax(-1)
    if remasking == "low_confidence":
        score = probs.gather(-1, x0[..., None]).squeeze(-1)
    elif remasking == "margin":
        top2 = probs.topk(2, dim=-1).values
        score = top2[..., 0] - top2[..., 1]
    else:
        score = torch.exp(-torch.special.entr(probs).sum(-1))
    return score.to(NOISE_DTYPE)


def select_commits(
    scores: torch.Tensor, masked: torch.Tensor, num_tokens: int, threshold: float | None
) -> torch.Tensor:
    """Which positions `(rows, n)` to commit: the `k` best-scored masked ones of each row, vectorised.

    `k = num_tokens` (the schedule), raised with a `threshold` to the number of masked positions scoring at least
    `threshold` (Fast-dLLM's parallel decoding, which always commits at least the top one). A row with fewer
    masks left than `k` commits them all: the masked positions rank first.

    Ties go to the leftmost positions, and scores within `TIE_TOLERANCE` of the k-th best count as tied: float
    noise (a row's padding changes the order of the sums) must not decide which of equally confident positions is
    committed, so a row decodes the same alone or padded (e.g. an empty prompt, whose all-mask confidences tie).
    """
    scores = scores.masked_fill(~masked, -math.inf)
    count = torch.full(scores.shape[:1], num_tokens, device=scores.device)  # [rows]
    if threshold is not None:
        count = torch.maximum(count, (scores >= threshold).sum(-1))
    ordered = scores.sort(dim=-1, descending=True).values
    kth = ordered.gather(-1, (count - 1).clamp(0, scores.shape[-1] - 1)[:, None])  # [rows, 1]
    sure = (scores > kth + TIE_TOLERANCE) & masked  # clearly better than the k-th best
    tied = (scores >= kth - TIE_TOLERANCE) & masked & ~sure
    need = (count - sure.sum(-1))[:, None]  # [rows, 1]
    return sure | (tied & (tied.cumsum(-1) <= need))


def cut_after_stop(
    answers: torch.Tensor, stop_ids: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replaces everything after the first stop token of each row by `pad_token_id`.

    Returns the cut answers `(batch, n)` and each answer's length `(batch,)` (through its first stop token, or `n`).
    """
    is_stop = torch.isin(answers, stop_ids)
    after_stop = (is_stop.cumsum(-1) - is_stop.long()) > 0
    lengths = answers.shape[1] - after_stop.sum(-1)
    return answers.masked_fill(after_stop, pad_token_id), lengths


# --------------------------------------------------------------------------------------------- sampler loop


@dataclass
class _Canvas:
    """The batch being decoded: prompt columns `[0, prompt_width)`, then `max_new_tokens` answer columns."""

    tokens: torch.Tensor  # [B, T] prompt, then masks / committed tokens
    attention_mask: torch.Tensor | None  # [B, T]; None when no row is padded
    position_ids: torch.Tensor | None  # [B, T] counted from each row's first real token; None without padding
    prompt_width: int
    finished: torch.Tensor  # [B] rows whose answer holds a stop token
    history: torch.Tensor | None  # [B, T] step at which each position was committed
    nfe: int = 0


def _make_canvas(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, config: ILLaDAGenerationConfig, vocab_size: int
) -> _Canvas:
    batch, width = input_ids.shape
    answer = torch.full((batch, config.max_new_tokens), config.mask_token_id, dtype=torch.long, device=input_ids.device)
    tokens = torch.cat([input_ids.long(), answer], dim=1)
    mask = position_ids = None
    if attention_mask is not None:
        # Padding is never attended to, but the embedding still reads it: ids outside the vocabulary become pad.
        padding = torch.cat([~attention_mask.bool(), torch.zeros_like(answer, dtype=torch.bool)], dim=1)
        tokens = tokens.masked_fill(padding & ((tokens < 0) | (tokens >= vocab_size)), config.pad_token_id)
    if attention_mask is not None and not attention_mask.bool().all():
        mask = torch.cat([attention_mask.long(), torch.ones_like(answer)], dim=1)
        # One document per row for the model's packed-sequence logic: padding restarts at 0, real tokens count on.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    history = torch.full_like(tokens, NOT_GENERATED) if config.output_history else None
    finished = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
    return _Canvas(tokens, mask, position_ids, width, finished, history)


def _step_logits(
    model,
    canvas: _Canvas,
    rows: torch.Tensor,
    visible: int,
    start: int,
    end: int,
    config: ILLaDAGenerationConfig,
    cache: "_BlockCache | None",
    step: int,
    tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Constrained float32 logits `(len(rows), end - start, vocab)` of one step, guided when `cfg_scale > 0`.

    `tokens` `(len(rows), visible)` replaces the canvases of `rows` (drafts; `rows` may repeat). With CFG, the
    conditional and unconditional canvases run as one doubled batch (and share one cache).
    """
    tokens = canvas.tokens[rows, :visible] if tokens is None else tokens
    mask = None if canvas.attention_mask is None else canvas.attention_mask[rows, :visible]
    positions = None if canvas.position_ids is None else canvas.position_ids[rows, :visible]
    if config.cfg_scale > 0:
        unconditional = tokens.clone()
        unconditional[:, : canvas.prompt_width] = config.mask_token_id
        tokens = torch.cat([tokens, unconditional])
        mask = None if mask is None else torch.cat([mask, mask])
        positions = None if positions is None else torch.cat([positions, positions])
    if cache is None:
        logits = denoiser_logits(model, tokens, mask, positions, start, end).float()
    else:
        logits = cache.logits(model, rows, tokens, mask, positions, start, end, step).float()
    if config.cfg_scale > 0:
        logits = guided_logits(*logits.chunk(2), config.cfg_scale)
    offsets = torch.arange(start - canvas.prompt_width, end - canvas.prompt_width, device=logits.device)
    return constrain_logits(logits, config, offsets)


def _report_step(
    canvas: _Canvas, rows: torch.Tensor, logits: torch.Tensor, visible: int, callback: StepCallback | None
) -> None:
    if callback is None:
        return
    full = logits
    if rows.numel() != canvas.tokens.shape[0]:
        full = logits.new_full((canvas.tokens.shape[0], *logits.shape[1:]), math.nan)
        full[rows] = logits
    callback(canvas.nfe - 1, canvas.tokens[:, :visible].clone(), full)


def undecided_positions(block: torch.Tensor, mask_token_id: int, stop_ids: torch.Tensor | None) -> torch.Tensor:
    """Positions `(..., n)` of a block still to decode: its masks, or with `stop_ids` (when the positions after a
    stop are not decoded, `decode_after_stop`) only the masks before the block's first committed stop token."""
    masked = block == mask_token_id
    if stop_ids is None:
        return masked
    return masked & (torch.isin(block, stop_ids).cumsum(-1) == 0)


def _commit(canvas: _Canvas, rows: torch.Tensor, start: int, block: torch.Tensor) -> None:
    """Writes the new block `(rows, n)` of `rows`; with a history, its new tokens get the last forward's index."""
    end = start + block.shape[-1]
    if canvas.history is not None:
        new = block != canvas.tokens[rows, start:end]
        canvas.history[rows, start:end] = canvas.history[rows, start:end].masked_fill(new, max(canvas.nfe - 1, 0))
    canvas.tokens[rows, start:end] = block


def _denoise_block(
    model,
    canvas: _Canvas,
    start: int,
    end: int,
    visible: int,
    config: ILLaDAGenerationConfig,
    generator: torch.Generator | None,
    callback: StepCallback | None,
    cache: "_BlockCache | None" = None,
    skip_after: torch.Tensor | None = None,
) -> None:
    """Decodes canvas columns `start:end` of the unfinished rows (LLaDA Alg. 5, one block), seeing `:visible`.

    Per step: logits of the rows with positions left to decode, proposals `x0`, scores, top-`k` commits. Random
    draws per step, in order: the Gumbel noise `(rows, n, vocab)` if `temperature > 0`, then the `random` scores
    `(rows, n)`; `rows` are the active rows in batch order. `skip_after` holds the stop ids when the positions after
    a committed stop are not decoded (`decode_after_stop`); `draft_tokens` hands the block to [`_draft_block`].
    """
    if config.draft_tokens is not None:
        return _draft_block(model, canvas, (start, end, visible), config, callback, cache, skip_after)
    schedule = transfer_schedule(end - start, steps_in_block(end - start, config.steps, config.tokens_per_step))
    for step, num_tokens in enumerate(schedule):
        masked = undecided_positions(canvas.tokens[:, start:end], config.mask_token_id, skip_after)  # [B, n]
        rows = masked.any(-1).nonzero().squeeze(-1)  # finished rows have no masks: `_close_block` padded them
        if rows.numel() == 0:  # threshold decoding or a committed stop token finished the block early
            return
        logits = _step_logits(model, canvas, rows, visible, start, end, config, cache, step)  # [r, n, V]
        x0 = sample_tokens(logits, config.sampling_temperature, generator, config.top_k, config.top_p)
        scores = remasking_confidence(logits, x0, config.remasking, generator)
        commit = select_commits(scores, masked[rows], num_tokens, config.threshold)
        canvas.nfe += 1
        _commit(canvas, rows, start, torch.where(commit, x0, canvas.tokens[rows, start:end]))
        _report_step(canvas, rows, logits, visible, callback)


def _close_block(
    canvas: _Canvas, start: int, end: int, stop_ids: torch.Tensor, pad_token_id: int, streamer: BaseStreamer | None
) -> None:
    """After a block: streams it, and finishes the rows whose block holds a stop token (iLLaDA paper, variable-length
    generation: stop once the decoded block contains EOS); their later columns become padding."""
    block = canvas.tokens[:, start:end]
    if streamer is not None:  # one row, and the block loop ends once it is finished
        cut, length = cut_after_stop(block, stop_ids, pad_token_id)
        streamer.put(cut[0, : int(length[0])].cpu())
    stopped = torch.isin(block, stop_ids).any(-1)  # a finished row's padding changes nothing if stopped again
    canvas.finished |= stopped
    canvas.tokens[:, end:] = canvas.tokens[:, end:].masked_fill(stopped[:, None], pad_token_id)


def _finish(
    canvas: _Canvas, generated: int, stop_ids: torch.Tensor, pad_token_id: int, config: ILLaDAGenerationConfig
) -> torch.Tensor | ILLaDAGenerateOutput:
    """Cuts answers after their first stop token and trims columns that no row uses; with
    `return_dict_in_generate`, also reports each answer's length and whether it stopped on a stop token."""
    prompt_width = canvas.prompt_width
    answers, lengths = cut_after_stop(canvas.tokens[:, prompt_width : prompt_width + generated], stop_ids, pad_token_id)
    width = prompt_width + int(lengths.max()) if lengths.numel() else prompt_width
    sequences = torch.cat([canvas.tokens[:, :prompt_width], answers], dim=1)[:, :width]
    if not config.return_dict_in_generate:
        return sequences
    history = None
    if canvas.history is not None:
        after_end = torch.arange(width, device=sequences.device) >= prompt_width + lengths[:, None]
        history = canvas.history[:, :width].masked_fill(after_end, NOT_GENERATED)
    stopped = torch.isin(answers, stop_ids).any(-1)
    return ILLaDAGenerateOutput(
        sequences=sequences, nfe=canvas.nfe, answer_lengths=lengths - stopped.long(), stopped=stopped, history=history
    )


# --------------------------------------------------------------------------------------------- draft and verify


def _greedy_proposals(logits: torch.Tensor, config: ILLaDAGenerationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The argmax proposals `x0` `(rows, n)` and their remasking scores, as a greedy step computes them."""
    x0 = logits.argmax(-1)
    return x0, remasking_confidence(logits, x0, config.remasking, None)


def _draft_canvases(
    block: torch.Tensor, x0: torch.Tensor, scores: torch.Tensor, undecided: torch.Tensor, depth: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The canvases one-token-per-step decoding may reach in its next `depth` commits if they stay among the `depth`
    best-scored undecided positions (ties to the left, as [`select_commits`]) and keep their proposals `x0`.

    Draft `m` `(rows, 2**(depth - 1), n)` commits the positions of ranks `j` with bit `j` of `2m + 1` set: rank 0,
    the step's own commit, is in every draft, the others in any order. Also returns `real` `(rows, drafts)` (every
    drafted rank is an undecided position) and the positions by rank `(rows, depth)`.
    """
    depth = min(depth, block.shape[-1])
    order = scores.masked_fill(~undecided, -math.inf).argsort(dim=-1, descending=True, stable=True)[:, :depth]
    masks = torch.arange(1, 2**depth, 2, device=block.device)
    bits = ((masks[:, None] >> torch.arange(depth, device=block.device)) & 1).bool()  # [drafts, depth]
    real = (bits[None] <= undecided.gather(-1, order)[:, None, :]).all(-1)
    shape = (block.shape[0], masks.numel(), depth)
    commit = torch.zeros(*shape[:2], block.shape[-1], dtype=torch.bool, device=block.device)
    commit.scatter_(-1, order[:, None, :].expand(shape), bits[None].expand(shape))
    return torch.where(commit, x0[:, None, :], block[:, None, :]), real, order


def _walk_drafts(
    picks: torch.Tensor, proposals: torch.Tensor, x0: torch.Tensor, order: torch.Tensor, ran
) -> torch.Tensor:
    """The draft each row reaches `(rows,)`: from draft 0 (the step's own commit), while the verified draft picks
    (`picks` `(N, n)`, one position each, with `proposals` `(N, n)`) a drafted position with its drafted token,
    move to the draft that adds it. `ran` `(local rows, drafts)` names the verified drafts of `picks`."""
    local, number = ran
    rows, depth = order.shape
    position = picks.float().argmax(-1)  # [N]
    hit = order[local] == position[:, None]  # [N, depth]: the pick is the drafted position of that rank
    rank = hit.long().argmax(-1)
    same_token = proposals.gather(-1, position[:, None]) == x0[local].gather(-1, position[:, None])
    drafted = hit.any(-1) & same_token.squeeze(-1)
    step = torch.full((rows, 2 ** (depth - 1)), -1, dtype=torch.long, device=order.device)
    step[local, number] = torch.where(drafted, rank, -1)
    mask = torch.ones(rows, dtype=torch.long, device=order.device)
    for _ in range(depth - 1):
        rank = step[torch.arange(rows, device=order.device), mask // 2]
        mask = torch.where(rank >= 0, mask | (1 << rank.clamp(min=0)), mask)
    return mask // 2


def _first_proposals(model, canvas: _Canvas, span: tuple, config, callback, cache, rows: torch.Tensor) -> tuple:
    """The block's first forward: proposals and scores `(batch, n)` of the canvas (zero for the other rows)."""
    start, end, visible = span
    logits = _step_logits(model, canvas, rows, visible, start, end, config, cache, 0)
    canvas.nfe += 1
    _report_step(canvas, rows, logits, visible, callback)
    x0 = canvas.tokens[:, start:end].clone()
    scores = torch.zeros(x0.shape, dtype=NOISE_DTYPE, device=x0.device)
    x0[rows], scores[rows] = _greedy_proposals(logits, config)
    return x0, scores


def _verify_drafts(model, canvas: _Canvas, span: tuple, config, callback, cache, stops, rows, proposals) -> None:
    """One forward over every row's drafts; each row commits the draft it reaches (see [`_walk_drafts`]), whose
    logits become its proposals `(x0, scores)` (updated in place)."""
    start, end, visible = span
    x0, scores = proposals
    block = canvas.tokens[rows, start:end]
    undecided = undecided_positions(block, config.mask_token_id, stops)
    drafts, real, order = _draft_canvases(block, x0[rows], scores[rows], undecided, config.draft_tokens)
    left = undecided_positions(drafts, config.mask_token_id, stops)  # [r, drafts, n]
    local, number = (real & left.any(-1)).nonzero(as_tuple=True)  # drafts with positions left: verified
    reached, report = torch.zeros_like(rows), None
    if local.numel():
        tokens = canvas.tokens[rows[local], :visible].clone()
        tokens[:, start:end] = drafts[local, number]
        logits = _step_logits(model, canvas, rows[local], visible, start, end, config, cache, 1, tokens)
        canvas.nfe += 1
        vx0, vscores = _greedy_proposals(logits, config)
        picks = select_commits(vscores, left[local, number], 1, None)
        reached = _walk_drafts(picks, vx0, x0[rows], order, (local, number))
        last = (number == reached[local]).nonzero().squeeze(-1)  # verified drafts where rows end
        x0[rows[local[last]]], scores[rows[local[last]]] = vx0[last], vscores[last]
        report = rows[local[last]], logits[last]
    _commit(canvas, rows, start, drafts[torch.arange(rows.numel(), device=rows.device), reached])
    if report is not None:
        _report_step(canvas, *report, visible, callback)


def _draft_block(
    model, canvas: _Canvas, span: tuple, config, callback: StepCallback | None, cache, stops: torch.Tensor | None
) -> None:
    """Decodes canvas columns `start:end` (`span = (start, end, visible)`) into exactly the tokens of greedy
    one-token-per-step decoding, in fewer forwards: FreeDave's draft and verify (arXiv 2510.00294), drafting from
    the model's own parallel predictions with a tree of drafts like self-speculative decoding (arXiv 2510.04147).

    The first forward proposes a token and a score at every position. Then each forward runs, as one batch, the
    canvases that a row's next `draft_tokens` commits can reach in any order among its best-scored positions, and
    the row follows the commits that each verified canvas chooses itself. A step callback sees, per forward, the
    committed canvas and the logits of the draft each row reached (the block's first forward: the canvas and its
    logits).
    """
    start, end, _ = span
    proposals = None
    while True:
        undecided = undecided_positions(canvas.tokens[:, start:end], config.mask_token_id, stops)
        rows = undecided.any(-1).nonzero().squeeze(-1)
        if rows.numel() == 0:
            return
        if proposals is None:
            proposals = _first_proposals(model, canvas, span, config, callback, cache, rows)
        else:
            _verify_drafts(model, canvas, span, config, callback, cache, stops, rows, proposals)


# --------------------------------------------------------------------------------------------- key-value cache


@dataclass
class _BlockCache:
    """The key-value cache of the steps of a block: Fast-dLLM's prefix and dual caches (arXiv 2505.22618, Sec. 3.2).

    A refresh (the first step of a block, and every `refresh_steps`-th step if set) runs the model on the whole
    visible canvas and stores every layer's keys and values; the other steps run it only on the span
    `start:visible` (`"prefix"`) or `start:end` (`"dual"`) and read the rest from the store. Rows only leave a
    block (their masks run out), so the store is narrowed to the rows still decoding, never widened.
    """

    mode: str  # "prefix" or "dual"
    refresh_steps: int | None
    kv: DiffusionKVCache
    rows: torch.Tensor | None = None  # [r] batch rows of the stored keys and values, in batch order

    def logits(
        self,
        model,
        rows: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None,
        start: int,
        end: int,
        step: int,
    ) -> torch.Tensor:
        """Logits `(tokens.shape[0], end - start, vocab)` of canvas columns `start:end`, as [`denoiser_logits`].

        `tokens` `(batch, visible)` holds the canvases of `rows` (twice, conditional then unconditional, with CFG).
        """
        if step == 0 or (self.refresh_steps is not None and step % self.refresh_steps == 0):
            self.kv.span, self.rows = None, rows
            keep = torch.arange(start, end, device=tokens.device)
            return model(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=positions,
                logits_to_keep=keep,
                kv_cache=self.kv,
                return_dict=True,
            ).logits
        distinct, guided = rows.unique_consecutive(), tokens.shape[0] == 2 * rows.numel()
        self._narrow(distinct, guided)
        span_end = end if self.mode == "dual" else tokens.shape[1]
        self.kv.span = (start, span_end)
        kv = self.kv if distinct.numel() == rows.numel() else self._repeated(rows, guided)
        keep = torch.arange(end - start, device=tokens.device)
        return model(
            input_ids=tokens[:, start:span_end],
            attention_mask=mask,
            position_ids=None if positions is None else positions[:, start:span_end],
            logits_to_keep=keep,
            kv_cache=kv,
            return_dict=True,
        ).logits

    def _index(self, rows: torch.Tensor, guided: bool) -> torch.Tensor:
        """Indices of `rows` (sorted) in the store; with CFG the unconditional copies follow the conditional ones."""
        index = torch.searchsorted(self.rows, rows)
        return torch.cat([index, index + self.rows.numel()]) if guided else index

    def _narrow(self, rows: torch.Tensor, guided: bool) -> None:
        """Keeps the stored keys and values of `rows` only (a subset of the stored rows)."""
        if rows.numel() == self.rows.numel():
            return
        index = self._index(rows, guided)
        for layer in self.kv.keys:
            self.kv.keys[layer] = self.kv.keys[layer][index]
            self.kv.values[layer] = self.kv.values[layer][index]
        self.rows = rows

    def _repeated(self, rows: torch.Tensor, guided: bool) -> DiffusionKVCache:
        """A store for a batch that repeats stored rows (drafts), the span included; the store itself is kept."""
        index, kv = self._index(rows, guided), DiffusionKVCache()
        kv.keys = {layer: keys[index] for layer, keys in self.kv.keys.items()}
        kv.values = {layer: values[index] for layer, values in self.kv.values.items()}
        kv.span = self.kv.span
        return kv


def _make_block_cache(config: ILLaDAGenerationConfig) -> _BlockCache | None:
    if config.use_cache == "none":
        return None
    return _BlockCache(config.use_cache, config.cache_refresh_steps, DiffusionKVCache())


# --------------------------------------------------------------------------------------------- whole run


def run_sampler(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    config: ILLaDAGenerationConfig,
    generator: torch.Generator | None = None,
    step_callback: StepCallback | None = None,
    streamer: BaseStreamer | None = None,
    progress: bool = False,
) -> torch.Tensor | ILLaDAGenerateOutput:
    """Generates answers for checked, left-padded prompts `(batch, prompt_len)` with a complete, validated config
    (every token id set): the block loop, then the cut after stop tokens. See the module docstring."""
    if streamer is not None:
        streamer.put(input_ids.cpu())
    canvas = _make_canvas(input_ids, attention_mask, config, model.config.vocab_size)
    stop_ids = torch.tensor(config.stop_ids, dtype=torch.long, device=input_ids.device)
    prompt_width, budget = canvas.prompt_width, config.max_new_tokens
    cache = _make_block_cache(config)
    end = 0
    for block_start in tqdm(range(0, budget, config.block_length), desc="iLLaDA blocks", disable=not progress):
        end = min(block_start + config.block_length, budget)
        visible = prompt_width + (end if config.canvas == "variable" else budget)
        _denoise_block(
            model,
            canvas,
            prompt_width + block_start,
            prompt_width + end,
            visible,
            config,
            generator,
            step_callback,
            cache,
            None if config.decodes_after_stop else stop_ids,
        )
        _close_block(canvas, prompt_width + block_start, prompt_width + end, stop_ids, config.pad_token_id, streamer)
        if canvas.finished.all():
            break
    if streamer is not None:
        streamer.end()
    return _finish(canvas, end, stop_ids, config.pad_token_id, config)


__all__ = [
    "ILLaDAGenerateOutput",
    "run_sampler",
    "transfer_schedule",
    "steps_in_block",
    "denoiser_logits",
    "constrain_logits",
    "filter_logits",
    "select_commits",
    "remasking_confidence",
    "sample_tokens",
    "cut_after_stop",
    "undecided_positions",
]
