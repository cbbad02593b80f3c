"""Scoring continuations with iLLaDA: the paper's confidence-based scoring and LLaDA's Monte-Carlo likelihood.

Both give a score to a continuation `y` of `L` tokens (a candidate answer) after a prompt `p`; the candidate
with the highest score wins a multiple-choice question. Every candidate of every question shares the same
forward passes: rows are right-padded to a common length, and logits are computed only at the positions
that are scored.

- `confidence` (iLLaDA paper, Sec. "Evaluation": the scoring of its MMLU / ARC-C / HellaSwag / PIQA results).
  Start from `p` followed by `L` masks. At each of `L` steps run the model, reveal the still-masked position
  whose probability of its own candidate token is highest, and add that log-probability to the score.
  Deterministic; `L` forward passes (1 for a one-token answer). Ties go to the lowest position.
- `likelihood` (LLaDA `get_log_likelihood.py`; LLaDA paper Eq. (6) and App. B.5). The masked-diffusion lower
  bound on `log p(y | p)`:
  `E_{l ~ U{1..L}} E_{S ⊂ y, |S| = l} [ (L / l) Σ_{i ∈ S} log p(y_i | p, y with S masked) ]`,
  estimated with `mc_num` samples. Samples come in groups of `mc_batch_size` that share one stratified draw
  of the mask counts `l`; the prompt is never masked. With `L = 1` the bound is exact and takes one forward.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .utils_illada import MAX_CFG_SCALE, check_choice, check_positive_int, check_range, guided_logits, is_int

METHODS = ("confidence", "likelihood")
# LLaDA (App. B.5) found 128 Monte-Carlo samples enough for stable likelihoods.
DEFAULT_MC_NUM = 128
# Samples sharing one stratified draw of mask counts (LLaDA's default mini-batch in get_log_likelihood.py).
DEFAULT_MC_BATCH_SIZE = 16
# Sequences per forward pass (classifier-free guidance doubles it).
DEFAULT_BATCH_SIZE = 32
# Sort key for positions outside a continuation when drawing a random subset: above every U[0, 1) key.
_OUTSIDE_KEY = 2.0

TokenIds = Sequence[int] | torch.Tensor


@dataclass
class ContinuationScores:
    """Scores of `(prompt, continuation)` pairs, in the order they were given.

    Attributes:
        scores (`torch.Tensor` of shape `(num_pairs,)`, float64): the confidence score (a sum of `L`
            log-probabilities) or the likelihood estimate of each continuation.
        is_greedy (`torch.Tensor` of shape `(num_pairs,)`, bool, *optional*): whether greedy confidence decoding
            (reveal, one per step, the masked position whose most likely token other than the mask is most
            likely, and write that token; probabilities are the model's, not renormalised without the mask)
            produces exactly this continuation. Always given by `confidence` (it costs nothing there);
            by `likelihood` only with `check_greedy=True`, which adds the `L` confidence passes.
        reveal_order (`torch.Tensor` of shape `(num_pairs, max_len)`, long, *optional*): for `confidence`, the
            continuation position revealed at each step; `-1` after the continuation's end.
    """

    scores: torch.Tensor
    is_greedy: torch.Tensor | None = None
    reveal_order: torch.Tensor | None = None


@dataclass
class ChoiceScores:
    """Scores of the candidate answers of one question.

    Attributes:
        scores (`torch.Tensor` of shape `(num_choices,)`, float64): one score per choice, higher is better.
        best (`int`): index of the highest score (the first one on a tie).
        is_greedy (`torch.Tensor` of shape `(num_choices,)`, bool, *optional*): see [`ContinuationScores`].
        reveal_order (`torch.Tensor` of shape `(num_choices, max_len)`, *optional*): see [`ContinuationScores`].
    """

    scores: torch.Tensor
    best: int
    is_greedy: torch.Tensor | None = None
    reveal_order: torch.Tensor | None = None


@dataclass
class _Packed:
    """Prompt + continuation rows, right-padded: the continuation of row `r` is `clean[r, starts[r]:totals[r]]`."""

    clean: torch.Tensor  # [R, T]
    attention_mask: torch.Tensor | None  # [R, T]; None when no row is padded
    starts: torch.Tensor  # [R]
    lengths: torch.Tensor  # [R]
    targets: torch.Tensor  # [R, L_max] continuation tokens, padding after each row's end
    totals: list[int]


def _pack(prompts: list[list[int]], continuations: list[list[int]], pad_id: int, device: torch.device) -> _Packed:
    totals = [len(p) + len(c) for p, c in zip(prompts, continuations)]
    width, max_len = max(totals), max(len(c) for c in continuations)
    clean = [p + c + [pad_id] * (width - len(p) - len(c)) for p, c in zip(prompts, continuations)]
    targets = [c + [pad_id] * (max_len - len(c)) for c in continuations]
    clean = torch.tensor(clean, dtype=torch.long, device=device)
    totals_t = torch.tensor(totals, device=device)
    attention_mask = None
    if min(totals) != width:
        attention_mask = (torch.arange(width, device=device) < totals_t[:, None]).long()
    return _Packed(
        clean=clean,
        attention_mask=attention_mask,
        starts=torch.tensor([len(p) for p in prompts], device=device),
        lengths=torch.tensor([len(c) for c in continuations], device=device),
        targets=torch.tensor(targets, dtype=torch.long, device=device),
        totals=totals,
    )


def _span_to_canvas(starts: torch.Tensor, span_mask: torch.Tensor, width: int) -> torch.Tensor:
    """Places a `(rows, L_max)` mask over the continuations into `(rows, width)` canvas coordinates."""
    max_len = span_mask.shape[1]
    offsets = torch.arange(width, device=starts.device) - starts[:, None]  # [n, T]
    inside = (offsets >= 0) & (offsets < max_len)
    return inside & span_mask.gather(1, offsets.clamp(0, max_len - 1))


def _log_probs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    keep: torch.Tensor,
    starts: torch.Tensor,
    cfg_scale: float,
) -> torch.Tensor:
    """Log-probabilities `(num_kept, vocab)` at the `keep` positions, row-major, in at least float32.

    With `cfg_scale > 0`, unsupervised classifier-free guidance (LLaDA paper App. B.3): the unconditional input
    masks the whole prompt, and the logits are `u + (cfg_scale + 1) * (c - u)`.
    """
    if cfg_scale > 0:
        prompt = torch.arange(input_ids.shape[1], device=input_ids.device) < starts[:, None]
        input_ids = torch.cat([input_ids, input_ids.masked_fill(prompt, model.config.mask_token_id)])
        attention_mask = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
        keep = torch.cat([keep, keep])
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if cfg_scale > 0:
        logits = guided_logits(*logits.chunk(2), cfg_scale)
    return logits.log_softmax(-1)


def _batches(num_items: int, batch_size: int) -> Iterator[slice]:
    return (slice(start, min(start + batch_size, num_items)) for start in range(0, num_items, batch_size))


# --------------------------------------------------------------------------------------------- confidence


def _confidence_step(
    model, packed: _Packed, canvas: torch.Tensor, still_masked: torch.Tensor, width: int, cfg_scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One reveal on the `n` rows given (all with a masked position left), updating `canvas` / `still_masked`.

    Returns the revealed continuation position `(n,)`, its log-probability `(n,)` and whether that reveal is
    also what greedy confidence decoding would write there `(n,)`.
    """
    n = canvas.shape[0]
    keep = _span_to_canvas(packed.starts[:n], still_masked, width)  # [n, T]
    mask = packed.attention_mask
    log_probs = _log_probs(
        model, canvas[:, :width], None if mask is None else mask[:n, :width], keep, packed.starts[:n], cfg_scale
    )  # [N, V]
    own = log_probs.new_full(still_masked.shape, float("-inf"))  # [n, L_max]
    own[still_masked] = log_probs.gather(1, packed.targets[:n][still_masked][:, None]).squeeze(1)
    most_likely = torch.full_like(own, float("-inf"))
    # Greedy decoding never writes the mask token: its most likely token is the best of the others.
    others = log_probs.clone()
    others[:, model.config.mask_token_id] = float("-inf")
    most_likely[still_masked] = others.max(-1).values
    # torch.argmax returns the first maximum: ties go to the lowest position.
    chosen = own.argmax(-1)  # [n]
    greedy_position = most_likely.argmax(-1)
    greedy = own.gather(1, greedy_position[:, None]) == most_likely.gather(1, greedy_position[:, None])
    still_masked.scatter_(1, chosen[:, None], False)
    canvas.scatter_(1, (packed.starts[:n] + chosen)[:, None], packed.targets[:n].gather(1, chosen[:, None]))
    return chosen, own.gather(1, chosen[:, None]).squeeze(1), greedy.squeeze(1)


def _confidence_rows(
    model, packed: _Packed, lengths: list[int], cfg_scale: float, progress: tqdm
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Confidence scores of packed rows sorted by continuation length (longest first).

    Rows whose continuation is fully revealed leave the batch: step `s` runs on the rows longer than `s`,
    which are a prefix, so a continuation of `L` tokens takes part in exactly `L` forward passes.
    """
    num_rows, max_len = packed.targets.shape
    device = packed.clean.device
    still_masked = torch.arange(max_len, device=device) < packed.lengths[:, None]  # [R, L_max]
    canvas = packed.clean.masked_fill(
        _span_to_canvas(packed.starts, still_masked, packed.clean.shape[1]), model.config.mask_token_id
    )
    scores = torch.zeros(num_rows, dtype=torch.float64, device=device)
    is_greedy = torch.ones(num_rows, dtype=torch.bool, device=device)
    order = torch.full((num_rows, max_len), -1, dtype=torch.long, device=device)
    for step in range(max_len):
        n = sum(length > step for length in lengths)
        width = max(packed.totals[:n])
        chosen, log_prob, greedy = _confidence_step(model, packed, canvas[:n], still_masked[:n], width, cfg_scale)
        scores[:n] += log_prob.double()
        is_greedy[:n] &= greedy
        order[:n, step] = chosen
        progress.update(1)
    return scores, is_greedy, order


def confidence_scores(
    model,
    prompts: list[list[int]],
    continuations: list[list[int]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    cfg_scale: float = 0.0,
    show_progress: bool = False,
) -> ContinuationScores:
    """Confidence-based scores (iLLaDA paper) of `(prompt, continuation)` token-id pairs, already validated.

    Pairs are sorted by continuation length and split into batches of `batch_size` rows; a batch whose longest
    continuation has `L` tokens takes `L` forward passes. Use [`ILLaDAScoringMixin.score_continuations`] for
    checked inputs.
    """
    device = model.device
    lengths = [len(c) for c in continuations]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = [order[part] for part in _batches(len(order), batch_size)]
    scores = torch.zeros(len(order), dtype=torch.float64, device=device)
    is_greedy = torch.zeros(len(order), dtype=torch.bool, device=device)
    reveal_order = torch.full((len(order), max(lengths)), -1, dtype=torch.long, device=device)
    total_passes = sum(lengths[rows[0]] for rows in batches)
    with tqdm(total=total_passes, desc="Confidence scoring", disable=not show_progress) as progress:
        for rows in batches:
            packed = _pack([prompts[i] for i in rows], [continuations[i] for i in rows], _pad_id(model), device)
            batch_scores, batch_greedy, batch_order = _confidence_rows(
                model, packed, [lengths[i] for i in rows], cfg_scale, progress
            )
            index = torch.tensor(rows, device=device)
            scores[index], is_greedy[index] = batch_scores, batch_greedy
            reveal_order[index, : batch_order.shape[1]] = batch_order
    return ContinuationScores(scores=scores, is_greedy=is_greedy, reveal_order=reveal_order)


# --------------------------------------------------------------------------------------------- likelihood


def stratified_mask_counts(
    lengths: torch.Tensor, group_size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Numbers of masked tokens for groups of Monte-Carlo samples (LLaDA `forward_process`, stratified).

    Group `g` of continuation length `L` draws `k ~ U{0..L-1}` once; its sample `i` masks
    `(k + floor(i * L / group_size)) mod L + 1` tokens, so the counts of a group are spread evenly over
    `1..L` while each one is marginally uniform on `1..L` (the estimator stays unbiased). LLaDA rounds
    `k + i * L / b` as a whole; with round-half-to-even that makes some counts more likely than others.

    Args:
        lengths (`torch.Tensor` of shape `(num_groups,)`): continuation length of each group (>= 1).
        group_size (`int`): samples per group.
        generator (`torch.Generator`, *optional*): a CPU generator for the draw.

    Returns:
        `torch.LongTensor` of shape `(num_groups, group_size)` on the device of `lengths`, values in `1..L`.
    """
    lengths_cpu = lengths.cpu().long()
    uniform = torch.rand(lengths_cpu.shape, generator=generator, dtype=torch.float64)
    first = torch.minimum((uniform * lengths_cpu).long(), lengths_cpu - 1)  # [G], U{0..L-1}
    offsets = torch.arange(group_size) * lengths_cpu[:, None] // group_size  # [G, b]
    return ((first[:, None] + offsets) % lengths_cpu[:, None] + 1).to(lengths.device)


def random_subset_mask(
    lengths: torch.Tensor, counts: torch.Tensor, max_len: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Boolean `(rows, max_len)` masks choosing, in each row, `counts[r]` of the first `lengths[r]` positions
    uniformly at random (draws on the CPU `generator`, result on the device of `lengths`)."""
    keys = torch.rand(lengths.shape[0], max_len, generator=generator, dtype=torch.float64)
    keys.masked_fill_(torch.arange(max_len) >= lengths.cpu()[:, None], _OUTSIDE_KEY)
    ranks = keys.argsort(-1).argsort(-1)
    return (ranks < counts.cpu()[:, None]).to(lengths.device)


def _likelihood_rows(
    model, packed: _Packed, rows: torch.Tensor, counts: torch.Tensor, width: int, cfg_scale: float, generator
) -> torch.Tensor:
    """One forward over Monte-Carlo samples: row `j` is a copy of packed row `rows[j]` with `counts[j]` of
    its continuation tokens masked (`width` covers every row). Returns each sample's
    `(L / l) Σ_masked log p` `(num_samples,)`, float64."""
    clean = packed.clean[rows, :width]
    mask = None if packed.attention_mask is None else packed.attention_mask[rows, :width]
    starts, lengths = packed.starts[rows], packed.lengths[rows]
    span = random_subset_mask(lengths, counts, packed.targets.shape[1], generator)  # [n, L_max]
    keep = _span_to_canvas(starts, span, width)  # [n, T]
    log_probs = _log_probs(model, clean.masked_fill(keep, model.config.mask_token_id), mask, keep, starts, cfg_scale)
    token_log_probs = log_probs.gather(1, clean[keep][:, None]).squeeze(1).double()  # [N]
    sample_of_token = torch.arange(rows.shape[0], device=rows.device)[:, None].expand_as(keep)[keep]
    sums = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device).index_add_(
        0, sample_of_token, token_log_probs
    )
    return sums * lengths / counts


def likelihood_scores(
    model,
    prompts: list[list[int]],
    continuations: list[list[int]],
    mc_num: int = DEFAULT_MC_NUM,
    mc_batch_size: int = DEFAULT_MC_BATCH_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cfg_scale: float = 0.0,
    generator: torch.Generator | None = None,
    show_progress: bool = False,
) -> ContinuationScores:
    """Monte-Carlo ELBO estimates of `log p(continuation | prompt)` for token-id pairs, already validated.

    A continuation of one token gets one sample (the bound is then exact); a longer one gets `mc_num` samples
    in groups of `mc_batch_size` (see [`stratified_mask_counts`]). Samples of all pairs are packed into
    forward passes of `batch_size` rows. Use [`ILLaDAScoringMixin.score_continuations`] for checked inputs.
    """
    device = model.device
    lengths = [len(c) for c in continuations]
    order = sorted(range(len(lengths)), key=lambda i: -(len(prompts[i]) + lengths[i]))
    packed = _pack([prompts[i] for i in order], [continuations[i] for i in order], _pad_id(model), device)
    samples = torch.tensor([1 if lengths[i] == 1 else mc_num for i in order], device=device)
    sample_row = torch.repeat_interleave(torch.arange(len(order), device=device), samples)  # [S]
    counts = torch.ones_like(sample_row)
    several = packed.lengths[sample_row] > 1
    counts[several] = stratified_mask_counts(
        packed.lengths[sample_row][several][::mc_batch_size], mc_batch_size, generator
    ).flatten()
    sums = torch.zeros(len(order), dtype=torch.float64, device=device)
    first_rows = sample_row.tolist()
    parts = list(_batches(sample_row.shape[0], batch_size))
    for part in tqdm(parts, desc="Likelihood scoring", disable=not show_progress):
        width = packed.totals[first_rows[part.start]]  # rows are sorted by total length, longest first
        estimates = _likelihood_rows(model, packed, sample_row[part], counts[part], width, cfg_scale, generator)
        sums.index_add_(0, sample_row[part], estimates / samples[sample_row[part]])
    scores = torch.empty_like(sums)
    scores[torch.tensor(order, device=device)] = sums
    return ContinuationScores(scores=scores)


# --------------------------------------------------------------------------------------------- checks, API


def _pad_id(model) -> int:
    pad = model.config.pad_token_id
    return 0 if pad is None else pad  # any id works: padded positions are never attended to nor scored


def _as_ids(value, tokenizer, name: str, add_special_tokens: bool) -> list[int]:
    """Token ids of a string (through `tokenizer`), a 1-D integer tensor or a sequence of ints."""
    if isinstance(value, str):
        if tokenizer is None:
            raise TypeError(
                f"`{name}` is a string ({value!r}): give token ids, or pass `tokenizer=` to `score_choices` to "
                f"tokenise it."
            )
        return list(tokenizer(value, add_special_tokens=add_special_tokens)["input_ids"])
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise TypeError(f"`{name}` must be a 1-D integer tensor, got shape {tuple(value.shape)} and {value.dtype}.")
        return value.tolist()
    if isinstance(value, Sequence) and all(is_int(t) for t in value):
        return [int(t) for t in value]
    raise TypeError(
        f"`{name}` must be a string, a 1-D integer tensor or a sequence of ints, got {type(value).__name__}."
    )


def _check_method(method: str) -> None:
    check_choice("method", method, METHODS)


def _check_options(method: str, mc_num: int, mc_batch_size: int, batch_size: int, generator) -> None:
    _check_method(method)
    for name, value in (("mc_num", mc_num), ("mc_batch_size", mc_batch_size), ("batch_size", batch_size)):
        check_positive_int(name, value)
    if method == "likelihood" and mc_num % mc_batch_size:
        raise ValueError(
            f"`mc_num` ({mc_num}) must be a multiple of `mc_batch_size` ({mc_batch_size}): the samples come in "
            f"groups that share one stratified draw of mask counts."
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a `torch.Generator` or None, got {type(generator).__name__}.")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"`generator` must be a CPU generator (draws are made on the CPU), got {generator.device}.")


def _check_pairs(
    config,
    prompts: list[list[int]],
    continuations: list[list[int]],
    prompt_names: list[str],
    names: list[str],
    cfg_scale: float,
) -> None:
    """Checks token ids, prompt and continuation contents and lengths; `prompt_names[k]` and `names[k]` name
    pair `k` in errors."""
    if not continuations:
        raise ValueError("There is nothing to score: give at least one continuation (choice).")
    limit, mask = config.max_position_embeddings, config.mask_token_id
    for prompt, continuation, prompt_name, name in zip(prompts, continuations, prompt_names, names):
        if not continuation:
            raise ValueError(f"`{name}` is empty (or tokenises to nothing): every choice needs at least one token.")
        if mask in continuation:
            raise ValueError(f"`{name}` contains the mask token id {mask}, which cannot be scored.")
        if mask in prompt:
            raise ValueError(
                f"`{prompt_name}` contains the mask token id {mask}. Scoring fills only the continuation's masks, so "
                f"a masked prompt position would never be filled; remove it."
            )
        if cfg_scale > 0 and not prompt:
            raise ValueError(
                f"`cfg_scale={cfg_scale}` needs a non-empty prompt, and `{prompt_name}` is empty: classifier-free "
                f"guidance contrasts the prompt with its masked copy. Set `cfg_scale=0` for empty prompts."
            )
        if len(prompt) + len(continuation) > limit:
            raise ValueError(
                f"The prompt ({len(prompt)} tokens) plus `{name}` ({len(continuation)} tokens) is longer than the "
                f"model's maximum length `config.max_position_embeddings` = {limit}: shorten the prompt."
            )
        bad = [t for t in prompt + continuation if not 0 <= t < config.vocab_size]
        if bad:
            raise ValueError(f"Token ids must lie in [0, {config.vocab_size}); the pair with `{name}` has {bad[:5]}.")


def _check_finite(result: ContinuationScores, names: list[str]) -> None:
    """A NaN score (non-finite logits: float16 overflow, broken weights) must not be ranked as if it were one."""
    bad = torch.isnan(result.scores).nonzero().flatten().tolist()
    if bad:
        listed = ", ".join(f"`{names[k]}`" for k in bad[:5])
        raise FloatingPointError(
            f"Scoring gave NaN for {len(bad)} continuation(s) ({listed}{', ...' if len(bad) > 5 else ''}): the model "
            f"produced non-finite logits. Check the weights and the dtype (float16 overflows easily; use float32 "
            f"or bfloat16)."
        )


class ILLaDAScoringMixin:
    """Mixed into `ILLaDAForCausalLM`: confidence-based and likelihood scoring of candidate answers."""

    @torch.no_grad()
    def score_continuations(
        self,
        prompts: Sequence[TokenIds],
        continuations: Sequence[TokenIds],
        method: str = "confidence",
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        cfg_scale: float | None = None,
        mc_num: int = DEFAULT_MC_NUM,
        mc_batch_size: int = DEFAULT_MC_BATCH_SIZE,
        check_greedy: bool = False,
        generator: torch.Generator | None = None,
        show_progress: bool = False,
        pair_names: tuple[list[str], list[str]] | None = None,
    ) -> ContinuationScores:
        """Scores each `continuations[k]` after `prompts[k]` (token ids), all pairs batched together.

        Args:
            prompts (`Sequence` of token-id sequences or 1-D tensors): one prompt per pair (may be empty).
            continuations (`Sequence` of token-id sequences or 1-D tensors): one non-empty continuation per pair.
            method (`str`, *optional*, defaults to `"confidence"`): `"confidence"` (the iLLaDA paper's scoring,
                `L` forward passes for `L` tokens) or `"likelihood"` (Monte-Carlo ELBO, LLaDA).
            batch_size (`int`, *optional*, defaults to 32): sequences per forward pass.
            cfg_scale (`float`, *optional*): unsupervised classifier-free guidance scale, in [0, `MAX_CFG_SCALE`].
                Defaults to the `cfg_scale` of the model's generation config (`generation_config.json`; 0 when
                unset), so that scoring and generation use the checkpoint's guidance unless told otherwise.
            mc_num (`int`, *optional*, defaults to 128): `likelihood` samples per continuation longer than 1.
            mc_batch_size (`int`, *optional*, defaults to 16): samples sharing one stratified draw of mask
                counts; with `likelihood`, must divide `mc_num`.
            check_greedy (`bool`, *optional*, defaults to `False`): with `likelihood`, also run the confidence
                passes to fill `is_greedy` (`confidence` always fills it).
            generator (`torch.Generator`, *optional*): CPU generator for the `likelihood` mask draws.
            show_progress (`bool`, *optional*, defaults to `False`): show a tqdm progress bar.
            pair_names (`tuple[list[str], list[str]]`, *optional*): the names error messages give to each prompt
                and each continuation; defaults to `prompts[k]` and `continuations[k]`.

        Returns:
            [`ContinuationScores`].

        Raises:
            ValueError: unknown `method`, bad option values (a non-finite `cfg_scale` included), an empty
                continuation, a pair longer than `config.max_position_embeddings`, token ids outside the
                vocabulary, the mask token in a prompt or a continuation, guidance with an empty prompt.
            TypeError: inputs that are not token ids, a `cfg_scale` that is not a number.
            FloatingPointError: a score came out NaN (the model's logits are not finite).
        """
        _check_options(method, mc_num, mc_batch_size, batch_size, generator)
        cfg_scale = self._guidance_scale(cfg_scale)
        if len(prompts) != len(continuations):
            raise ValueError(f"Got {len(prompts)} `prompts` for {len(continuations)} `continuations`: give one each.")
        prompt_names, names = pair_names or (
            [f"prompts[{k}]" for k in range(len(prompts))],
            [f"continuations[{k}]" for k in range(len(continuations))],
        )
        prompt_ids = [_as_ids(p, None, name, True) for p, name in zip(prompts, prompt_names)]
        continuation_ids = [_as_ids(c, None, name, False) for c, name in zip(continuations, names)]
        _check_pairs(self.config, prompt_ids, continuation_ids, prompt_names, names, cfg_scale)
        result = self._score_ids(
            prompt_ids,
            continuation_ids,
            method,
            batch_size,
            cfg_scale,
            mc_num,
            mc_batch_size,
            check_greedy,
            generator,
            show_progress,
        )
        _check_finite(result, names)
        return result

    def _guidance_scale(self, cfg_scale: float | None) -> float:
        """`cfg_scale`, checked, or the generation config's when None (one source of the checkpoint's settings)."""
        if cfg_scale is None:
            cfg_scale = getattr(getattr(self, "generation_config", None), "cfg_scale", None)
            cfg_scale = 0.0 if cfg_scale is None else cfg_scale
        check_range("cfg_scale", cfg_scale, 0, MAX_CFG_SCALE)
        return float(cfg_scale)

    def _score_ids(
        self,
        prompts,
        continuations,
        method,
        batch_size,
        cfg_scale,
        mc_num,
        mc_batch_size,
        check_greedy,
        generator,
        show_progress,
    ) -> ContinuationScores:
        confidence = None
        if method == "confidence" or check_greedy:
            confidence = confidence_scores(self, prompts, continuations, batch_size, cfg_scale, show_progress)
        if method == "confidence":
            return confidence
        result = likelihood_scores(
            self, prompts, continuations, mc_num, mc_batch_size, batch_size, cfg_scale, generator, show_progress
        )
        result.is_greedy = None if confidence is None else confidence.is_greedy
        return result

    def score_choices(
        self,
        prompt: str | TokenIds,
        choices: Sequence[str | TokenIds],
        method: str = "confidence",
        tokenizer=None,
        **options,
    ) -> ChoiceScores:
        """Scores the candidate answers of one multiple-choice question.

        Args:
            prompt (`str`, token-id sequence or 1-D tensor): the question. A string is tokenised with
                `tokenizer(prompt)` (the tokenizer's special tokens, e.g. BOS, are added).
            choices (`Sequence` of `str`, token-id sequences or 1-D tensors): the candidate answers. Strings are
                tokenised without special tokens; mind the leading space (`" Paris"`).
            method (`str`, *optional*, defaults to `"confidence"`): `"confidence"` or `"likelihood"`.
            tokenizer (*optional*): a Hugging Face tokenizer, needed when `prompt` or a choice is a string.
            **options: the keyword options of [`~ILLaDAScoringMixin.score_continuations`] (`batch_size`,
                `cfg_scale`, `mc_num`, `mc_batch_size`, `check_greedy`, `generator`, `show_progress`).

        Returns:
            [`ChoiceScores`] with one score per choice and `best`, the index of the highest (first on a tie).

        Example:

        ```python
        >>> out = model.score_choices("The capital of France is", [" Paris", " Rome"], tokenizer=tokenizer)
        >>> out.best, out.scores
        ```
        """
        return self.score_choices_batch([prompt], [choices], method, tokenizer, **options)[0]

    def score_choices_batch(
        self,
        prompts: Sequence[str | TokenIds],
        choices: Sequence[Sequence[str | TokenIds]],
        method: str = "confidence",
        tokenizer=None,
        **options,
    ) -> list[ChoiceScores]:
        """[`~ILLaDAScoringMixin.score_choices`] for many questions at once: every candidate of every question
        shares the forward passes. `choices[q]` are the candidates of `prompts[q]`. Returns one [`ChoiceScores`]
        per question."""
        _check_method(method)  # before tokenising; the other options are checked by `score_continuations`
        if len(prompts) != len(choices):
            raise ValueError(f"Got {len(prompts)} `prompts` for {len(choices)} lists of `choices`: give one each.")
        pair_prompts, pair_choices, prompt_names, names, sizes = [], [], [], [], []
        for q, (prompt, question_choices) in enumerate(zip(prompts, choices)):
            name = "choices" if len(prompts) == 1 else f"choices[{q}]"
            if not isinstance(question_choices, (list, tuple)):  # a set or dict has no order for the answer index
                raise TypeError(
                    f"`{name}` must be a list or tuple of candidates (the answer is an index into it), got "
                    f"{type(question_choices).__name__} {question_choices!r:.80}."
                )
            if not question_choices:
                raise ValueError(f"`{name}` must be a non-empty list of candidates, got {question_choices!r}.")
            prompt_name = "prompt" if len(prompts) == 1 else f"prompts[{q}]"
            prompt_ids = _as_ids(prompt, tokenizer, prompt_name, True)
            for c, choice in enumerate(question_choices):
                name = f"choices[{c}]" if len(prompts) == 1 else f"choices[{q}][{c}]"
                pair_prompts.append(prompt_ids)
                pair_choices.append(_as_ids(choice, tokenizer, name, False))
                prompt_names.append(prompt_name)
                names.append(name)
            sizes.append(len(question_choices))
        result = self.score_continuations(
            pair_prompts, pair_choices, method, pair_names=(prompt_names, names), **options
        )
        return _split_by_question(result, sizes)


def _split_by_question(result: ContinuationScores, sizes: list[int]) -> list[ChoiceScores]:
    def part(tensor: torch.Tensor | None, index: int) -> torch.Tensor | None:
        return None if tensor is None else tensor.split(sizes)[index]

    return [
        ChoiceScores(
            scores=scores,
            best=int(scores.argmax()),
            is_greedy=part(result.is_greedy, q),
            reveal_order=part(result.reveal_order, q),
        )
        for q, scores in enumerate(result.scores.split(sizes))
    ]


__all__ = [
    "ILLaDAScoringMixin",
    "ChoiceScores",
    "ContinuationScores",
    "MAX_CFG_SCALE",
    "confidence_scores",
    "likelihood_scores",
    "stratified_mask_counts",
    "random_subset_mask",
]
