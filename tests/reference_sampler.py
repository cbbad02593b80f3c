"""Independent references for `tests/test_generation.py`; nothing here imports `generation_illada`.

- `reference_generate`: the sampler written the naive way: one row at a time, each row alone (no padding, no
  attention mask, logits of the whole row), float64 everywhere, plain Python loops over positions, softmax and
  Gumbel-max by their textbook formulas, selection by sorting a Python list. It follows the documented random-draw
  contract of `generate` (per step: one float64 uniform tensor `(active rows, block, vocab)` for the Gumbel noise
  when `temperature > 0`, then one `(active rows, block)` for `random` scores), so that sampled runs can be compared
  token for token.
- `llada_generate`: the arithmetic of the official LLaDA `generate.py` (ML-GSAI/LLaDA), restated: fixed canvas,
  logits of every position, Gumbel noise as `exp(l) / (-log u)^T`, per-row `torch.topk`.
"""

import math

import torch


def _row_logits(model, tokens: list[int], prompt_len: int, cfg_scale: float, mask_id: int) -> torch.Tensor:
    """float64 logits `(len(tokens), vocab)` of one row run alone; guided as `u + (s + 1)(c - u)`."""
    with torch.no_grad():
        conditional = model(torch.tensor([tokens])).logits[0].double()
        if cfg_scale == 0:
            return conditional
        unconditional = model(torch.tensor([[mask_id] * prompt_len + tokens[prompt_len:]])).logits[0].double()
    return unconditional + (cfg_scale + 1) * (conditional - unconditional)


def _softmax(values: torch.Tensor) -> torch.Tensor:
    shifted = values - values.max()
    exps = torch.exp(shifted)
    return exps / exps.sum()


def _propose(logits: torch.Tensor, answer_pos: int, uniform: torch.Tensor | None, random_score, options) -> tuple:
    """Proposed token and its score at one masked position, from its float64 logits `(vocab,)`."""
    scores = logits.clone()
    bias = options["stop_bias"]
    if bias is not None:
        value = bias["slope"] * max(0, answer_pos - bias.get("start", 0))
        if bias.get("max_bias") is not None:
            value = min(value, bias["max_bias"])
        for token in bias["token_ids"]:
            scores[token] += value
    for token in options["suppress"]:
        scores[token] = -math.inf
    scores[options["mask_id"]] = -math.inf
    if options["temperature"] == 0:
        token = int(torch.argmax(scores))
    else:
        allowed = _nucleus_and_top_k(scores, options["temperature"], options["top_k"], options["top_p"])
        noisy = torch.exp(scores) / (-torch.log(uniform)) ** options["temperature"]
        token = max(allowed, key=lambda t: (float(noisy[t]), -t))
    probs = _softmax(scores)
    remasking = options["remasking"]
    if remasking == "random":
        return token, float(random_score)
    if remasking == "low_confidence":
        return token, float(probs[token])
    if remasking == "margin":
        ordered = sorted(probs.tolist(), reverse=True)
        return token, ordered[0] - ordered[1]
    entropy = -sum(p * math.log(p) for p in probs.tolist() if p > 0)
    return token, math.exp(-entropy)


def _nucleus_and_top_k(scores: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> list[int]:
    """Tokens a sampled draw may pick: Dream's order, the nucleus of `softmax(scores / T)` first (smallest
    most-likely prefix whose probability exceeds `top_p`, by a sorted Python list), then those whose score is at
    least the `top_k`-th best among what is left."""
    tokens = [t for t in range(len(scores)) if scores[t] > -math.inf]
    if top_p is not None and top_p < 1:
        probs = _softmax(scores / temperature)
        kept, total = [], 0.0
        for t in sorted(tokens, key=lambda t: (-float(probs[t]), t)):
            kept.append(t)
            total += float(probs[t])
            if total > top_p:
                break
        tokens = kept
    if top_k is not None and top_k < len(tokens):
        kth = sorted((float(scores[t]) for t in tokens), reverse=True)[top_k - 1]
        tokens = [t for t in tokens if float(scores[t]) >= kth]
    return tokens


def _steps_for(n: int, steps: int | None, tokens_per_step: int | None) -> int:
    if steps is not None:
        return min(steps, n)
    if tokens_per_step is not None:
        return math.ceil(n / tokens_per_step)
    return n


def reference_generate(
    model,
    prompts: list[list[int]],
    *,
    mask_id: int,
    max_new_tokens: int,
    block_length: int,
    steps: int | None = None,
    tokens_per_step: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    threshold: float | None = None,
    cfg_scale: float = 0.0,
    canvas: str = "variable",
    stop_ids: tuple[int, ...] = (),
    suppress: tuple[int, ...] = (),
    stop_bias: dict | None = None,
    generator: torch.Generator | None = None,
    decode_after_stop: bool | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> tuple[list[list[int]], int]:
    """Returns each row's answer (cut after its first stop token) and the number of batched steps.

    Unless `decode_after_stop` (default: only in the fixed canvas, as LLaDA), a row decodes only the positions of its
    block before the first stop token it holds."""
    options = dict(
        mask_id=mask_id,
        temperature=temperature,
        remasking=remasking,
        suppress=suppress,
        stop_bias=stop_bias,
        top_k=top_k,
        top_p=top_p,
    )
    vocab = model.config.vocab_size
    skip_after_stop = not (canvas == "fixed" if decode_after_stop is None else decode_after_stop)
    rows = [list(p) + [mask_id] * max_new_tokens for p in prompts]
    finished = [False] * len(rows)
    nfe = 0
    end = 0
    for start in range(0, max_new_tokens, block_length):
        end = min(start + block_length, max_new_tokens)
        n = end - start
        num_steps = _steps_for(n, steps, tokens_per_step)
        schedule = [n // num_steps + (1 if s < n % num_steps else 0) for s in range(num_steps)]
        for step in range(num_steps):
            todo = {}  # row -> block offsets still to decode
            for r in range(len(rows)):
                block = rows[r][len(prompts[r]) + start : len(prompts[r]) + end]
                last = next((j for j, t in enumerate(block) if t in stop_ids), n) if skip_after_stop else n
                todo[r] = [j for j in range(last) if block[j] == mask_id]
            active = [r for r in range(len(rows)) if not finished[r] and todo[r]]
            if not active:
                break
            gumbel = (
                torch.rand((len(active), n, vocab), dtype=torch.float64, generator=generator)
                if temperature > 0
                else None
            )
            random_scores = (
                torch.rand((len(active), n), dtype=torch.float64, generator=generator)
                if remasking == "random"
                else None
            )
            for i, r in enumerate(active):
                p = len(prompts[r])
                visible = p + (end if canvas == "variable" else max_new_tokens)
                logits = _row_logits(model, rows[r][:visible], p, cfg_scale, mask_id)
                proposals = {}
                for j in todo[r]:
                    proposals[j] = _propose(
                        logits[p + start + j],
                        start + j,
                        None if gumbel is None else gumbel[i, j],
                        None if random_scores is None else random_scores[i, j],
                        options,
                    )
                k = schedule[step]
                if threshold is not None:
                    k = max(k, sum(1 for _, score in proposals.values() if score >= threshold))
                k = min(k, len(proposals))
                for j in sorted(proposals, key=lambda j: (-proposals[j][1], j))[:k]:
                    rows[r][p + start + j] = proposals[j][0]
            nfe += 1
        for r in range(len(rows)):
            p = len(prompts[r])
            if any(t in stop_ids for t in rows[r][p + start : p + end]):
                finished[r] = True
        if all(finished):
            break
    answers = []
    for r, prompt in enumerate(prompts):
        answer = rows[r][len(prompt) : len(prompt) + end]
        for j, token in enumerate(answer):
            if token in stop_ids:
                answer = answer[: j + 1]
                break
        answers.append(answer)
    return answers, nfe


def llada_generate(
    logits_fn,
    prompt: torch.Tensor,
    *,
    mask_id: int,
    steps: int,
    gen_length: int,
    block_length: int,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
) -> torch.Tensor:
    """LLaDA `generate.py` arithmetic; `steps` counts all blocks; `logits_fn(x)` gives `(batch, len, vocab)`."""
    batch, prompt_len = prompt.shape
    x = torch.cat([prompt, torch.full((batch, gen_length), mask_id, dtype=torch.long)], dim=1)
    is_prompt = x != mask_id
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    for b in range(num_blocks):
        lo, hi = prompt_len + b * block_length, prompt_len + (b + 1) * block_length
        count = (x[:, lo:hi] == mask_id).sum(1, keepdim=True)
        schedule = count // per_block + (torch.arange(per_block)[None] < count % per_block).long()
        for i in range(per_block):
            masked = x == mask_id
            if cfg_scale > 0:
                both = logits_fn(torch.cat([x, x.masked_fill(is_prompt, mask_id)]))
                cond, uncond = both.chunk(2)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = logits_fn(x)
            if temperature > 0:
                noise = torch.rand(logits.shape, dtype=torch.float64)
                x0 = (logits.double().exp() / (-torch.log(noise)) ** temperature).argmax(-1)
            else:
                x0 = logits.argmax(-1)
            if remasking == "low_confidence":
                conf = torch.softmax(logits, -1).gather(-1, x0[..., None]).squeeze(-1)
            else:
                conf = torch.rand(x0.shape)
            conf[:, hi:] = -math.inf
            x0 = torch.where(masked, x0, x)
            conf = torch.where(masked, conf, torch.full_like(conf, -math.inf))
            for j in range(batch):
                chosen = torch.topk(conf[j], k=int(schedule[j, i])).indices
                x[j, chosen] = x0[j, chosen]
    return x
