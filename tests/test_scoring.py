"""Scoring: confidence-based scores and Monte-Carlo likelihood against naive float64 references on a tiny model.

The references below score one candidate at a time with plain Python loops on a float64 copy of the model,
without padding, batching or `logits_to_keep`; the code under test batches everything in float32.
"""

import copy
import itertools
import math

import pytest
import torch
from tiny import make_model
from word_tokenizer import make_word_tokenizer

from illada.scoring_illada import random_subset_mask, stratified_mask_counts

MASK = 5  # tiny.py's mask_token_id
SCORE_ATOL = 1e-4  # float32 batched forward vs float64 reference, summed over a few tokens

# Questions of different prompt lengths with candidates of different lengths (1 to 4 tokens).
PROMPTS = [[0, 10, 11, 12, 13], [0, 20], [0, 30, 31, 32]]
CHOICES = [
    [[40, 41, 42], [43], [44, 45]],
    [[50, 51, 52, 53], [54, 55], [56], [57, 58, 59]],
    [[60], [61, 62]],
]


@pytest.fixture(scope="module")
def model():
    return make_model(seed=0)


@pytest.fixture(scope="module")
def model64(model):
    return copy.deepcopy(model).double()


def reference_log_probs(model64, canvas: list[int], prompt_len: int, cfg_scale: float = 0.0) -> torch.Tensor:
    """float64 log-probabilities (seq_len, vocab) of one unpadded sequence; CFG as `u + (s + 1) (c - u)`."""
    with torch.no_grad():
        logits = model64(torch.tensor([canvas])).logits[0]
        if cfg_scale:
            unconditional = [MASK] * prompt_len + canvas[prompt_len:]
            uncond_logits = model64(torch.tensor([unconditional])).logits[0]
            logits = uncond_logits + (cfg_scale + 1) * (logits - uncond_logits)
    return torch.log_softmax(logits, -1)


def reference_confidence(model64, prompt, choice, cfg_scale=0.0) -> tuple[float, list[int]]:
    """The paper's confidence score, one candidate at a time; ties go to the lowest position."""
    canvas, masked = list(prompt) + [MASK] * len(choice), list(range(len(choice)))
    score, order = 0.0, []
    for _ in choice:
        log_probs = reference_log_probs(model64, canvas, len(prompt), cfg_scale)
        best, best_position = -math.inf, None
        for j in masked:  # ascending: a strict `>` keeps the lowest position on a tie
            value = log_probs[len(prompt) + j, choice[j]].item()
            if value > best:
                best, best_position = value, j
        score += best
        order.append(best_position)
        masked.remove(best_position)
        canvas[len(prompt) + best_position] = choice[best_position]
    return score, order


def reference_greedy_decode(model64, prompt, length) -> list[int]:
    """Greedy confidence decoding: each step writes the most likely token at the most confident position (the
    mask token is never written; probabilities are not renormalised without it)."""
    canvas, masked = list(prompt) + [MASK] * length, list(range(length))
    for _ in range(length):
        log_probs = reference_log_probs(model64, canvas, len(prompt))
        log_probs[:, MASK] = -math.inf
        best, best_position, best_token = -math.inf, None, None
        for j in masked:
            value, token = log_probs[len(prompt) + j].max(-1)
            if value.item() > best:
                best, best_position, best_token = value.item(), j, token.item()
        canvas[len(prompt) + best_position] = best_token
        masked.remove(best_position)
    return canvas[len(prompt) :]


def reference_elbo(model64, prompt, answer) -> tuple[float, float]:
    """Exact ELBO by enumerating every mask, and the standard deviation of one uniform sample of it:
    ELBO = (1/L) Σ_l mean_{|S|=l} (L/l) Σ_{i∈S} log p(y_i | prompt, y with S masked)."""
    length = len(answer)
    mean, second_moment = 0.0, 0.0
    for count in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), count))
        for subset in subsets:
            canvas = list(prompt) + [MASK if i in subset else t for i, t in enumerate(answer)]
            log_probs = reference_log_probs(model64, canvas, len(prompt))
            value = length / count * sum(log_probs[len(prompt) + i, answer[i]].item() for i in subset)
            weight = 1.0 / (length * len(subsets))
            mean += weight * value
            second_moment += weight * value**2
    return mean, math.sqrt(second_moment - mean**2)


def count_forwards(model):
    """Registers a hook recording the batch size of every forward call; returns (list, handle)."""
    sizes = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    return sizes, handle


# ----------------------------------------------------------------------------------------- confidence


@pytest.mark.parametrize("batch_size", [2, 64])
def test_confidence_matches_naive_reference(model, model64, batch_size):
    results = model.score_choices_batch(PROMPTS, CHOICES, batch_size=batch_size)
    for prompt, choices, result in zip(PROMPTS, CHOICES, results):
        expected = [reference_confidence(model64, prompt, choice) for choice in choices]
        torch.testing.assert_close(
            result.scores, torch.tensor([s for s, _ in expected], dtype=torch.float64), rtol=0, atol=SCORE_ATOL
        )
        for choice, (_, order), row in zip(choices, expected, result.reveal_order):
            assert row[: len(choice)].tolist() == order and (row[len(choice) :] == -1).all()
        assert result.best == max(range(len(choices)), key=lambda c: expected[c][0])


def test_confidence_with_guidance_matches_reference(model, model64):
    result = model.score_choices(PROMPTS[0], CHOICES[0], cfg_scale=1.5)
    expected = [reference_confidence(model64, PROMPTS[0], choice, cfg_scale=1.5)[0] for choice in CHOICES[0]]
    torch.testing.assert_close(result.scores, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=SCORE_ATOL)


def test_is_greedy_flags_exactly_the_greedy_decoding(model, model64):
    prompt = PROMPTS[2]
    greedy = reference_greedy_decode(model64, prompt, 3)
    other_last = (greedy[2] + 1) % 90 + 6  # any other non-special token
    choices = [greedy, greedy[:2] + [other_last], [60, 61, 62], reference_greedy_decode(model64, prompt, 1)]
    result = model.score_choices(prompt, choices)
    assert result.is_greedy.tolist() == [True, False, choices[2] == greedy, True]
    with_likelihood = model.score_choices(prompt, choices, method="likelihood", check_greedy=True, mc_num=16)
    assert torch.equal(with_likelihood.is_greedy, result.is_greedy)


def test_confidence_ties_go_to_the_lowest_position():
    # With zero query weights every position attends uniformly to all, so all masked positions hold the same
    # distribution: repeated candidate tokens tie exactly, at every step.
    model = make_model(seed=1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    model64 = copy.deepcopy(model).double()
    prompt, choices = [0, 10, 11], [[7, 7, 7], [8, 9, 8, 9], [12, 13]]
    first = reference_log_probs(model64, prompt + [MASK] * 3, len(prompt))
    assert first[3, 7] == first[4, 7] == first[5, 7]  # the tie is real
    result = model.score_choices(prompt, choices)
    for choice, row, score in zip(choices, result.reveal_order, result.scores):
        expected_score, expected_order = reference_confidence(model64, prompt, choice)
        assert row[: len(choice)].tolist() == expected_order
        assert abs(score.item() - expected_score) < SCORE_ATOL
    assert result.reveal_order[0, :3].tolist() == [0, 1, 2]


def test_confidence_takes_one_forward_per_candidate_token(model):
    sizes, handle = count_forwards(model)
    try:
        model.score_choices([0, 10], [[20, 21, 22], [23], [24, 25]])
        assert sizes == [3, 2, 1]  # finished candidates leave the batch
        sizes.clear()
        model.score_choices([0, 10], [[20], [23], [24]])
        assert sizes == [3]
        sizes.clear()
        model.score_choices([0, 10], [[20, 21, 22], [23], [24, 25]], batch_size=1)
        assert sizes == [1] * 6  # 3 + 1 + 2 forward passes
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------- likelihood


@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_likelihood_of_one_token_answers_is_exact(model, model64, cfg_scale):
    prompts, choices = [[0, 10, 11, 12], [0, 20]], [[[30], [31], [32]], [[33], [34]]]
    sizes, handle = count_forwards(model)
    try:
        results = model.score_choices_batch(prompts, choices, method="likelihood", cfg_scale=cfg_scale)
    finally:
        handle.remove()
    expected_forwards = 2 if cfg_scale else 1  # guidance runs the unconditional copies in the same forward
    assert sizes == [5 * expected_forwards]
    for prompt, question_choices, result in zip(prompts, choices, results):
        log_probs = reference_log_probs(model64, prompt + [MASK], len(prompt), cfg_scale)
        expected = torch.tensor([log_probs[len(prompt), c[0]].item() for c in question_choices], dtype=torch.float64)
        torch.testing.assert_close(result.scores, expected, rtol=0, atol=1e-5)


def test_likelihood_estimate_converges_to_exact_elbo(model, model64):
    prompts, answers = [[0, 10, 11], [0, 20, 21, 22, 23]], [[30, 31, 32, 33], [40, 41]]
    mc_num = 4096
    result = model.score_continuations(
        prompts,
        answers,
        method="likelihood",
        mc_num=mc_num,
        mc_batch_size=16,
        batch_size=1024,
        generator=torch.Generator().manual_seed(0),
    )
    for prompt, answer, estimate in zip(prompts, answers, result.scores.tolist()):
        elbo, std = reference_elbo(model64, prompt, answer)
        # Stratifying the mask counts only lowers the variance of the i.i.d. estimator: 4 of its standard errors
        # bound the error with probability > 0.9999 (and the seed is fixed).
        tolerance = 4 * std / math.sqrt(mc_num)
        assert abs(estimate - elbo) < tolerance, (estimate, elbo, tolerance)
        assert tolerance < 0.05 * abs(elbo)  # the check is tight


def test_likelihood_is_reproducible_with_a_generator(model):
    kwargs = dict(method="likelihood", mc_num=32, mc_batch_size=8)
    first = model.score_choices(PROMPTS[1], CHOICES[1], generator=torch.Generator().manual_seed(3), **kwargs)
    again = model.score_choices(PROMPTS[1], CHOICES[1], generator=torch.Generator().manual_seed(3), **kwargs)
    torch.testing.assert_close(first.scores, again.scores, rtol=0, atol=0)


@pytest.mark.parametrize("group_size", [4, 16])
def test_stratified_mask_counts_are_uniform_and_spread(group_size):
    lengths = torch.tensor([1, 3, 4, 7, 20]).repeat_interleave(2000)
    counts = stratified_mask_counts(lengths, group_size, torch.Generator().manual_seed(0))
    assert counts.shape == (lengths.shape[0], group_size)
    assert ((counts >= 1) & (counts <= lengths[:, None])).all()
    for length in lengths.unique().tolist():
        rows = counts[lengths == length]
        per_group = torch.stack([(rows == value).sum(-1) for value in range(1, length + 1)], -1)  # [G, L]
        assert (per_group.max(-1).values - per_group.min(-1).values <= 1).all()  # spread evenly over 1..L
        frequencies = torch.stack([(rows == value).float().mean(0) for value in range(1, length + 1)])  # [L, b]
        standard_error = math.sqrt((1 / length) * (1 - 1 / length) / rows.shape[0]) + 1e-12
        assert ((frequencies - 1 / length).abs() <= 5 * standard_error).all()  # each sample uniform on 1..L


def test_random_subset_mask_draws_exact_counts_uniformly():
    lengths = torch.tensor([5, 3, 1]).repeat(3000)
    counts = torch.tensor([2, 3, 1]).repeat(3000)
    mask = random_subset_mask(lengths, counts, 6, torch.Generator().manual_seed(0))
    assert torch.equal(mask.sum(-1), counts)
    assert not (mask & (torch.arange(6) >= lengths[:, None])).any()
    inclusion = mask[lengths == 5].float().mean(0)[:5]
    assert (inclusion - 2 / 5).abs().max() < 5 * math.sqrt(0.4 * 0.6 / 3000)


# ----------------------------------------------------------------------------------------- API and errors


def test_strings_with_a_tokenizer_equal_token_ids(model):
    tokenizer = make_word_tokenizer()
    prompt, choices = "Tom has 3 apples and gets 4 more .", [" 7 apples", " 6 pears", " 8"]
    from_text = model.score_choices(prompt, choices, tokenizer=tokenizer)
    prompt_ids = tokenizer(prompt)["input_ids"]
    choice_ids = [torch.tensor(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in choices]
    from_ids = model.score_choices(prompt_ids, choice_ids)
    torch.testing.assert_close(from_text.scores, from_ids.scores)
    assert from_text.best == from_ids.best


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(choices=[]), ValueError, "`choices` must be a non-empty list"),
        (dict(choices=[[7], []]), ValueError, r"`choices\[1\]` is empty"),
        (dict(choices=[" 7", ""], tokenizer=make_word_tokenizer()), ValueError, r"`choices\[1\]` is empty"),
        (dict(choices=[[7] * 300]), ValueError, "max_position_embeddings"),
        (dict(choices=[[7]], method="perplexity"), ValueError, "`method` must be one of"),
        (dict(choices=[" 7"]), TypeError, "tokenizer"),
        (dict(choices=[[7, MASK]]), ValueError, "mask token"),
        (dict(choices=[[7, 500]]), ValueError, r"Token ids must lie in \[0, 97\)"),
        (dict(choices=[[7.0]]), TypeError, "sequence of ints"),
        (dict(choices=[[7, 8]], method="likelihood", mc_num=10, mc_batch_size=4), ValueError, "multiple of"),
        (dict(choices=[[7]], batch_size=0), ValueError, "`batch_size` must be a positive integer"),
        (dict(choices=[[7]], cfg_scale=-1.0), ValueError, "`cfg_scale`"),
        (dict(choices=[[7]], cfg_scale=math.inf), ValueError, "`cfg_scale` must be a finite number"),
        (dict(choices=[[7]], cfg_scale=math.nan), ValueError, "`cfg_scale` must be a finite number"),
        (dict(choices=[[7]], cfg_scale=1e308), ValueError, r"`cfg_scale` must be in \[0, 1000.0\]"),
        (dict(choices=[[7]], cfg_scale="abc"), TypeError, "`cfg_scale` must be a number"),
        (dict(choices=[[7]], method="likelihood", mc_num=0), ValueError, "`mc_num` must be a positive integer"),
        (dict(choices=[[7]], generator=0), TypeError, "`generator`"),
        (dict(choices=[[7]], temperature=1.0), TypeError, "temperature"),
    ],
)
def test_bad_inputs_raise_before_any_forward(model, kwargs, error, match):
    sizes, handle = count_forwards(model)
    try:
        with pytest.raises(error, match=match):
            model.score_choices([0, 10], **kwargs)
    finally:
        handle.remove()
    assert sizes == []


def test_prompt_plus_choice_longer_than_the_model_is_rejected(model):
    limit = model.config.max_position_embeddings
    model.score_choices([0] * (limit - 2), [[7, 8]])  # exactly the maximum is fine
    with pytest.raises(ValueError, match=f"= {limit}"):
        model.score_choices([0] * (limit - 1), [[7], [7, 8]])


def test_confidence_ignores_the_monte_carlo_options(model):
    # `mc_num` and `mc_batch_size` belong to `likelihood`; confidence scoring neither uses nor checks their ratio.
    expected = model.score_choices(PROMPTS[0], CHOICES[0])
    result = model.score_choices(PROMPTS[0], CHOICES[0], mc_num=10, mc_batch_size=4)
    torch.testing.assert_close(result.scores, expected.scores, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["confidence", "likelihood"])
def test_a_prompt_holding_the_mask_token_is_rejected_like_generate(model, method):
    # generate() refuses such a prompt too: nothing would ever fill that position.
    sizes, handle = count_forwards(model)
    try:
        with pytest.raises(ValueError, match=r"`prompt` contains the mask token id 5"):
            model.score_choices([0, MASK, 10], [[7], [8]], method=method)
        with pytest.raises(ValueError, match=r"`prompts\[1\]` contains the mask token id 5"):
            model.score_continuations([[0, 10], [0, MASK]], [[7], [8]], method)
    finally:
        handle.remove()
    assert sizes == []


def test_guidance_with_an_empty_prompt_is_rejected_like_generate(model, model64):
    with pytest.raises(ValueError, match=r"`cfg_scale=1.5` needs a non-empty prompt, and `prompt` is empty"):
        model.score_choices([], [[7], [8]], cfg_scale=1.5)
    with pytest.raises(ValueError, match=r"`prompts\[0\]` is empty"):
        model.score_continuations([[], [0, 10]], [[7], [8]], cfg_scale=1.5)
    # Without guidance an empty prompt is fine (unconditional scoring).
    result = model.score_choices([], [[7, 8]])
    assert result.scores.item() == pytest.approx(reference_confidence(model64, [], [7, 8])[0], abs=SCORE_ATOL)


@pytest.mark.parametrize("method", ["confidence", "likelihood"])
def test_nan_scores_raise_instead_of_ranking(model, method):
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.norm.weight[0] = math.nan  # every logit becomes NaN
    with pytest.raises(FloatingPointError, match=r"NaN for 3 continuation\(s\) \(`choices\[0\]`, `choices\[1\]`"):
        broken.score_choices(PROMPTS[0], CHOICES[0], method=method, mc_num=4, mc_batch_size=4)


def test_guidance_defaults_to_the_generation_config(model, model64):
    guided = copy.deepcopy(model)
    guided.generation_config.cfg_scale = 1.5  # as a checkpoint's generation_config.json would set it
    expected = [reference_confidence(model64, PROMPTS[0], choice, cfg_scale=1.5)[0] for choice in CHOICES[0]]
    result = guided.score_choices(PROMPTS[0], CHOICES[0])
    torch.testing.assert_close(result.scores, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=SCORE_ATOL)
    # What the caller sets wins over the checkpoint.
    unguided = guided.score_choices(PROMPTS[0], CHOICES[0], cfg_scale=0)
    expected = [reference_confidence(model64, PROMPTS[0], choice)[0] for choice in CHOICES[0]]
    torch.testing.assert_close(unguided.scores, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=SCORE_ATOL)


def test_generate_and_scoring_share_the_guidance_bound(model):
    """One bound for both (utils_illada.MAX_CFG_SCALE): at 1000 each still gives a finite score and an answer
    without the mask token; just above it, both refuse the scale by name (before, generate took any finite one)."""
    prompt = torch.tensor([[0, 10, 11]])
    score = model.score_choices(PROMPTS[0], CHOICES[0], cfg_scale=1000.0)
    assert torch.isfinite(score.scores).all()
    answer = model.generate(prompt, max_new_tokens=4, block_length=2, cfg_scale=1000.0)[0, 3:]
    assert answer.numel() and not (answer == MASK).any()
    with pytest.raises(ValueError, match=r"`cfg_scale` must be in \[0, 1000.0\]"):
        model.score_choices(PROMPTS[0], CHOICES[0], cfg_scale=1000.5)
    with pytest.raises(ValueError, match=r"`cfg_scale` must be in \[0, 1000.0\]"):
        model.generate(prompt, max_new_tokens=4, block_length=2, cfg_scale=1000.5)
