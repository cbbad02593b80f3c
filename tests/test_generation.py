"""Diffusion generation: agreement with an independent naive sampler and with LLaDA's arithmetic, stopping,
threshold decoding, properties, errors, and the generation config round trip."""

import json
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_sampler import llada_generate, reference_generate
from tiny import FIRST_ORDINARY_ID, SHARP, TINY, left_pad, make_model, random_prompts
from transformers import AutoModelForCausalLM, GenerationConfig, GenerationMixin
from transformers.generation.streamers import BaseStreamer

from illada.generation_config_illada import ILLaDAGenerationConfig
from illada.generation_illada import ILLaDAGenerationMixin
from illada.sampler_illada import (
    ILLaDAGenerateOutput,
    cut_after_stop,
    sample_tokens,
    select_commits,
    steps_in_block,
    transfer_schedule,
)

MASK, PAD, EOS, VOCAB = TINY["mask_token_id"], TINY["pad_token_id"], TINY["eos_token_id"], TINY["vocab_size"]
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)

pytestmark = pytest.mark.usefixtures("one_thread")


def answers_match(sequences: torch.Tensor, prompt_width: int, expected: list[list[int]]) -> None:
    """Row `r` holds `expected[r]` right after the prompt, then only padding."""
    for row, answer in zip(sequences.tolist(), expected):
        got = row[prompt_width:]
        assert got[: len(answer)] == answer
        assert all(t == PAD for t in got[len(answer) :])
    assert sequences.shape[1] == prompt_width + max(len(a) for a in expected)


@contextmanager
def logit_offsets(model, offset_fn):
    """Adds `offset_fn(input_ids, positions)` `(rows, len(positions), vocab)` to the model's output logits."""

    def hook(module, args, kwargs, output):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        keep = kwargs.get("logits_to_keep", 0)
        positions = torch.arange(ids.shape[1]) if isinstance(keep, int) else keep
        output.logits += offset_fn(ids, positions)

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def count_forwards(model):
    """Records the input shape of every forward of `model`."""
    calls = []

    def hook(module, args, kwargs):
        calls.append((kwargs["input_ids"] if "input_ids" in kwargs else args[0]).shape)

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def stop_token_of(model, prompts: list[list[int]], **options) -> int:
    """A stop id that makes some rows stop early: the commonest token of row 0's answer that the last row's
    answer lacks (in a run with these options and no stop token)."""
    ids, mask = left_pad(prompts)
    answers = model.generate(ids, attention_mask=mask, eos_token_id=[], **options)[:, ids.shape[1] :].tolist()
    by_count = sorted(set(answers[0]), key=lambda t: (-answers[0].count(t), t))
    return next((t for t in by_count if t not in answers[-1]), by_count[0])


# --------------------------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize("n, steps, expected", [(10, 4, [3, 3, 2, 2]), (8, 8, [1] * 8), (7, 1, [7]), (5, 3, [2, 2, 1])])
def test_transfer_schedule_hand_examples(n, steps, expected):
    assert transfer_schedule(n, steps) == expected


@PROPERTY_SETTINGS
@given(n=st.integers(1, 64), data=st.data())
def test_transfer_schedule_spreads_tokens_evenly(n, data):
    steps = data.draw(st.integers(1, n))
    schedule = transfer_schedule(n, steps)
    assert len(schedule) == steps and sum(schedule) == n
    assert max(schedule) - min(schedule) <= 1 and schedule == sorted(schedule, reverse=True)


def test_steps_in_block():
    assert steps_in_block(32, None, None) == 32  # default: one token per step
    assert steps_in_block(32, 8, None) == 8
    assert steps_in_block(5, 8, None) == 5  # a short last block uses at most one step per token
    assert steps_in_block(10, None, 3) == 4  # ceil(10 / 3)


@PROPERTY_SETTINGS
@given(
    rows=st.integers(1, 3),
    n=st.integers(1, 7),
    k=st.integers(1, 7),
    seed=st.integers(0, 10_000),
    threshold=st.one_of(st.none(), st.floats(0, 1.2)),
)
def test_select_commits_equals_sorting_each_row(rows, n, k, seed, threshold):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(rows, n, generator=g, dtype=torch.float64)
    masked = torch.rand(rows, n, generator=g) < 0.7
    got = select_commits(scores, masked, k, threshold)
    for r in range(rows):
        candidates = [j for j in range(n) if masked[r, j]]
        count = k if threshold is None else max(k, sum(1 for j in candidates if scores[r, j] >= threshold))
        chosen = sorted(candidates, key=lambda j: (-float(scores[r, j]), j))[: min(count, len(candidates))]
        assert got[r].nonzero().flatten().tolist() == sorted(chosen)


def test_select_commits_breaks_ties_to_the_left():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.5]], dtype=torch.float64)
    masked = torch.tensor([[True, False, True, True, True]])
    assert select_commits(scores, masked, 2, None).tolist() == [[True, False, True, False, False]]


def test_sampling_draws_from_the_tempered_softmax():
    """Gumbel-max frequencies match softmax(logits / T) within 4 standard errors (20000 draws)."""
    logits = torch.tensor([1.5, 0.5, 0.0, -1.0])
    draws, temperature = 20_000, 0.7
    tokens = sample_tokens(logits.expand(1, draws, 4).clone(), temperature, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(tokens.flatten(), minlength=4).double() / draws
    expected = torch.softmax(logits.double() / temperature, -1)
    assert ((frequencies - expected).abs() <= 4 * (expected * (1 - expected) / draws).sqrt()).all()
    assert torch.equal(sample_tokens(logits.expand(1, 3, 4), 0.0, None), torch.zeros(1, 3, dtype=torch.long))


def test_cut_after_stop():
    answers = torch.tensor([[7, 2, 9, 2], [7, 8, 9, 10], [3, 4, 5, 6]])
    cut, lengths = cut_after_stop(answers, torch.tensor([2, 5]), PAD)
    assert cut.tolist() == [[7, 2, PAD, PAD], [7, 8, 9, 10], [3, 4, 5, PAD]]
    assert lengths.tolist() == [2, 4, 3]


# --------------------------------------------------------------------------------------------- agreement

CASES = {
    "variable-greedy": dict(canvas="variable", max_new_tokens=12, block_length=4, steps=2),
    "fixed-greedy": dict(canvas="fixed", max_new_tokens=12, block_length=4, steps=4),
    "variable-sampled": dict(canvas="variable", max_new_tokens=12, block_length=4, steps=2, temperature=0.9),
    "fixed-sampled": dict(canvas="fixed", max_new_tokens=8, block_length=4, steps=2, temperature=1.3),
    "variable-cfg": dict(canvas="variable", max_new_tokens=8, block_length=4, steps=2, cfg_scale=1.5),
    "fixed-cfg-sampled": dict(
        canvas="fixed", max_new_tokens=8, block_length=4, steps=2, cfg_scale=0.7, temperature=0.5
    ),
    "random-remasking": dict(canvas="variable", max_new_tokens=10, block_length=4, steps=3, remasking="random"),
    "random-remasking-sampled": dict(
        canvas="fixed", max_new_tokens=8, block_length=4, steps=2, remasking="random", temperature=0.8
    ),
    "margin": dict(canvas="fixed", max_new_tokens=8, block_length=8, steps=3, remasking="margin"),
    "entropy-short-last-block": dict(
        canvas="variable", max_new_tokens=10, block_length=4, remasking="entropy", tokens_per_step=3
    ),
    "threshold": dict(canvas="variable", max_new_tokens=12, block_length=6, threshold=0.15),
    "entropy-threshold": dict(
        canvas="fixed", max_new_tokens=12, block_length=6, steps=3, remasking="entropy", threshold=0.05
    ),
    "variable-whole-blocks": dict(canvas="variable", max_new_tokens=12, block_length=6, decode_after_stop=True),
    "skip-after-stop-fixed-sampled": dict(
        canvas="fixed",
        max_new_tokens=12,
        block_length=6,
        steps=4,
        temperature=0.7,
        threshold=0.3,
        decode_after_stop=False,
    ),
    "top-k-sampled": dict(canvas="variable", max_new_tokens=8, block_length=4, steps=2, temperature=1.5, top_k=3),
    "top-p-sampled": dict(canvas="fixed", max_new_tokens=8, block_length=4, steps=2, temperature=1.2, top_p=0.3),
    "top-p-top-k-sampled": dict(
        canvas="variable", max_new_tokens=8, block_length=4, temperature=2.0, top_p=0.6, top_k=5
    ),
    "suppress-and-bias": dict(
        canvas="fixed",
        max_new_tokens=8,
        block_length=4,
        steps=2,
        suppress_tokens=[7, 8],
        stop_token_bias={"token_ids": [9], "slope": 0.4, "start": 2, "max_bias": 2.0},
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_generate_matches_naive_reference(sharp_model, name):
    options = CASES[name]
    prompts = random_prompts([5, 3, 6])
    stop = stop_token_of(sharp_model, prompts, canvas="fixed", max_new_tokens=8, block_length=8)
    ids, mask = left_pad(prompts)
    out = sharp_model.generate(
        ids,
        attention_mask=mask,
        stop_token_ids=[stop],
        return_dict_in_generate=True,
        generator=torch.Generator().manual_seed(7),
        **options,
    )
    reference_options = {k: v for k, v in options.items() if k not in ("suppress_tokens", "stop_token_bias")}
    expected, nfe = reference_generate(
        sharp_model,
        prompts,
        mask_id=MASK,
        stop_ids=(EOS, stop),
        generator=torch.Generator().manual_seed(7),
        suppress=tuple(options.get("suppress_tokens", ())),
        stop_bias=options.get("stop_token_bias"),
        **reference_options,
    )
    answers_match(out.sequences, ids.shape[1], expected)
    assert out.nfe == nfe
    assert (out.sequences[:, : ids.shape[1]] == ids).all()


def test_reference_cases_exercise_stopping(sharp_model):
    """The agreement cases are meaningful: with the chosen stop token some rows stop early and some do not."""
    prompts = random_prompts([5, 3, 6])
    stop = stop_token_of(sharp_model, prompts, canvas="fixed", max_new_tokens=8, block_length=8)
    expected, _ = reference_generate(
        sharp_model, prompts, mask_id=MASK, stop_ids=(EOS, stop), **CASES["variable-greedy"]
    )
    lengths = [len(a) for a in expected]
    assert min(lengths) < 12 and len(set(lengths)) > 1


@pytest.mark.parametrize(
    "options",
    [
        dict(canvas="variable"),
        dict(canvas="fixed"),
        dict(canvas="variable", cfg_scale=1.0),
        dict(canvas="fixed", threshold=0.2),
    ],
    ids=["variable", "fixed", "cfg", "threshold"],
)
def test_batched_equals_each_row_alone(sharp_model, options):
    prompts = random_prompts([6, 2, 4, 5], seed=1)
    stop = stop_token_of(sharp_model, prompts, canvas="fixed", max_new_tokens=8, block_length=8)
    settings_ = dict(max_new_tokens=12, block_length=4, steps=2, stop_token_ids=[stop], **options)
    ids, mask = left_pad(prompts)
    batched = sharp_model.generate(ids, attention_mask=mask, **settings_)
    alone = []
    for prompt in prompts:
        row = sharp_model.generate(torch.tensor([prompt]), **settings_)[0, len(prompt) :].tolist()
        alone.append(row)
    answers_match(batched, ids.shape[1], alone)


@pytest.mark.parametrize("options", [dict(), dict(cfg_scale=1.2)], ids=["plain", "cfg"])
def test_fixed_mode_equals_llada_generate(sharp_model, options):
    """With no stop tokens, the fixed canvas is exactly LLaDA's output, for a model that never predicts the mask
    (LLaDA does not ban it, so the comparison model gives it a logit of -1e9: probability exactly 0 in float32,
    and finite, so that guidance does not turn it into NaN)."""
    prompt = torch.tensor(random_prompts([5, 5], seed=2))

    def logits_without_mask(x):
        with torch.no_grad():
            logits = sharp_model(x).logits
        logits[..., MASK] = -1e9
        return logits

    expected = llada_generate(
        logits_without_mask, prompt, mask_id=MASK, steps=6, gen_length=12, block_length=4, **options
    )
    got = sharp_model.generate(
        prompt, canvas="fixed", max_new_tokens=12, block_length=4, steps=2, eos_token_id=[], **options
    )
    assert torch.equal(got, expected)
    with_stop = sharp_model.generate(
        prompt,
        canvas="fixed",
        max_new_tokens=12,
        block_length=4,
        steps=2,
        eos_token_id=[int(expected[0, 9])],
        **options,
    )
    for row, full in zip(with_stop.tolist(), expected.tolist()):
        answer = full[5:]
        cut = answer[: answer.index(expected[0, 9].item()) + 1] if expected[0, 9].item() in answer else answer
        assert row[5 : 5 + len(cut)] == cut and all(t == PAD for t in row[5 + len(cut) :])


def test_variable_mode_with_one_block_equals_fixed(sharp_model):
    ids, mask = left_pad(random_prompts([4, 7], seed=3))
    options = dict(max_new_tokens=8, block_length=8, steps=4, eos_token_id=[])
    variable = sharp_model.generate(ids, attention_mask=mask, canvas="variable", **options)
    fixed = sharp_model.generate(ids, attention_mask=mask, canvas="fixed", **options)
    assert torch.equal(variable, fixed)


# --------------------------------------------------------------------------------------------- stopping


def eos_in_second_block(prompt_len: int, block_length: int, marker: int, offset_in_block: int = 2):
    """Logit offsets: rows whose first token is `marker` put EOS at answer position block_length + offset;
    EOS is banned everywhere else."""
    target = prompt_len + block_length + offset_in_block

    def offsets(ids, positions):
        out = torch.zeros(ids.shape[0], len(positions), VOCAB)
        out[..., EOS] = -50.0
        marked = ids[:, 0] == marker
        at_target = positions == target
        out[marked[:, None] & at_target[None], EOS] = 50.0
        return out

    return offsets


@pytest.mark.parametrize("canvas", ["variable", "fixed"])
def test_stops_after_the_block_with_eos(canvas):
    model = make_model(seed=4, **SHARP)
    block, steps = 4, 2
    prompt = random_prompts([5], seed=4)[0]
    with logit_offsets(model, eos_in_second_block(5, block, marker=prompt[0])):
        with count_forwards(model) as calls:
            out = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=16,
                block_length=block,
                steps=steps,
                canvas=canvas,
                return_dict_in_generate=True,
            )
        expected, _ = reference_generate(
            model,
            [prompt],
            mask_id=MASK,
            max_new_tokens=16,
            block_length=block,
            steps=steps,
            canvas=canvas,
            stop_ids=(EOS,),
        )
    answer = out.sequences[0, 5:].tolist()
    assert out.nfe == 2 * steps == len(calls)
    assert answer == expected[0] and len(answer) == block + 3 and answer[-1] == EOS
    assert EOS not in answer[:-1] and MASK not in answer


def test_finished_rows_leave_the_batch():
    model = make_model(seed=4, **SHARP)
    prompts = random_prompts([5, 5], seed=5)
    prompts[1][0] = prompts[0][0] + 1 if prompts[0][0] + 1 < VOCAB else FIRST_ORDINARY_ID
    with logit_offsets(model, eos_in_second_block(5, 4, marker=prompts[0][0])), count_forwards(model) as calls:
        out = model.generate(
            torch.tensor(prompts), max_new_tokens=16, block_length=4, steps=2, return_dict_in_generate=True
        )
    assert [shape[0] for shape in calls] == [2] * 4 + [1] * 4  # row 0 is done after two blocks of two steps
    assert out.nfe == 8
    assert out.sequences[0, 5 + 7 :].eq(PAD).all() and out.sequences[0, 5 + 6] == EOS
    assert out.sequences.shape[1] == 5 + 16 and EOS not in out.sequences[1].tolist()


def test_threshold_decoding_spends_fewer_steps(sharp_model):
    ids, mask = left_pad(random_prompts([4, 6], seed=6))
    options = dict(max_new_tokens=16, block_length=8, eos_token_id=[], return_dict_in_generate=True)
    plain = sharp_model.generate(ids, attention_mask=mask, **options)
    assert plain.nfe == 16
    nfes = []
    for threshold in (1.01, 0.6, 0.3, 0.1, 0.0):
        out = sharp_model.generate(ids, attention_mask=mask, threshold=threshold, **options)
        assert not (out.sequences == MASK).any()
        nfes.append(out.nfe)
        if threshold > 1:
            assert torch.equal(out.sequences, plain.sequences)
    assert nfes[0] == plain.nfe and nfes[-1] == 2  # threshold 0: each block in one step
    assert nfes == sorted(nfes, reverse=True) and nfes[1] > nfes[-2]


# --------------------------------------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=3),
    block=st.integers(1, 6),
    blocks=st.integers(1, 3),
    extra=st.integers(0, 5),
    steps_fraction=st.floats(0.01, 1.0),
    canvas=st.sampled_from(["variable", "fixed"]),
    temperature=st.sampled_from([0.0, 1.0, 1e4]),
    top_p=st.sampled_from([None, 0.5]),
    top_k=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 1000),
)
def test_generation_invariants(
    sharp_model, lengths, block, blocks, extra, steps_fraction, canvas, temperature, top_p, top_k, seed
):
    if max(lengths) == 0:
        lengths = [*lengths[:-1], 1]
    prompts = random_prompts(lengths, seed=seed)
    budget = block * blocks + (extra % block if canvas == "variable" else 0)
    steps = max(1, round(steps_fraction * block))
    stops = [EOS, FIRST_ORDINARY_ID + seed % (VOCAB - FIRST_ORDINARY_ID)]
    ids, mask = left_pad(prompts)
    out = sharp_model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=budget,
        block_length=block,
        steps=steps,
        canvas=canvas,
        temperature=temperature,
        stop_token_ids=stops,
        top_p=top_p,
        top_k=top_k,
        generator=torch.Generator().manual_seed(seed),
        return_dict_in_generate=True,
    )
    width = ids.shape[1]
    assert torch.equal(out.sequences[:, :width], ids)  # prompt unchanged
    assert not (out.sequences == MASK).any()
    assert width < out.sequences.shape[1] <= width + budget
    assert out.nfe <= -(-budget // block) * steps
    for row in out.sequences[:, width:].tolist():
        first = next((j for j, t in enumerate(row) if t in stops), None)
        if first is not None:
            assert all(t == PAD for t in row[first + 1 :])


# --------------------------------------------------------------------------------------------- errors

ERRORS = [
    (dict(prompt_mask_token=True), ValueError, "`input_ids` holds the mask token 5"),
    (dict(pad_token_id=MASK), ValueError, "`pad_token_id` and `mask_token_id`"),
    (dict(block_length=0), ValueError, "`block_length` must be a positive integer"),
    (dict(block_length=-4), ValueError, "`block_length` must be a positive integer"),
    (dict(steps=0), ValueError, "`steps` must be a positive integer"),
    (dict(block_length=4, steps=5), ValueError, "`steps` (5) must not exceed `block_length` (4)"),
    (dict(tokens_per_step=2, steps=2, block_length=4), ValueError, "not both"),
    (dict(canvas="fixed", max_new_tokens=10, block_length=4), ValueError, "must be a multiple of `block_length`"),
    (dict(canvas="sliding"), ValueError, "`canvas` must be one of"),
    (dict(remasking="lowest_confidence"), ValueError, "`remasking` must be one of"),
    (dict(remasking="random", threshold=0.9), ValueError, "cannot be used with `remasking='random'`"),
    (dict(temperature=-1.0), ValueError, "`temperature` must be in [0, 10000.0]"),
    (dict(temperature=1e308), ValueError, "`temperature` must be in [0, 10000.0]"),
    (dict(temperature=float("inf")), ValueError, "`temperature` must be a finite number"),
    (dict(top_k=0), ValueError, "`top_k` must be a positive integer"),
    (dict(top_p=0.0), ValueError, "`top_p` must be in (0, 1]"),
    (dict(top_p=1.5), ValueError, "`top_p` must be in (0, 1]"),
    (dict(do_sample="yes"), ValueError, "`do_sample` must be None, True or False"),
    (dict(num_return_sequences=0), ValueError, "`num_return_sequences` must be a positive integer"),
    (dict(max_length=4, max_new_tokens=None), ValueError, "`max_length` (4) counts the prompt (4 columns)"),
    (dict(max_length=20), ValueError, "Give `max_new_tokens` (8) or `max_length` (20), not both"),
    (dict(empty_batch=True), ValueError, "`input_ids` is an empty batch"),
    (dict(encoding_extra_key=True), TypeError, "holds keys ['pixel_values']"),
    (dict(encoding_without_ids=True), TypeError, "without `input_ids`"),
    (dict(list_ids=True), TypeError, "`input_ids` must be a 2-D integer tensor"),
    (dict(stock_config_beams=True), TypeError, "`num_beams` is an autoregressive option"),
    (dict(cfg_scale=float("nan")), ValueError, "`cfg_scale`"),
    (dict(output_history=True), ValueError, "needs `return_dict_in_generate=True`"),
    (dict(suppress_tokens=[VOCAB + 3]), ValueError, "outside the vocabulary"),
    (dict(stop_token_ids=[MASK]), ValueError, "is among the stop tokens"),
    (dict(stop_token_bias={"token_ids": [2]}), ValueError, "`stop_token_bias` must be None or a dict"),
    (dict(stop_token_bias={"token_ids": [2], "slope": -1}), ValueError, "`stop_token_bias['slope']`"),
    (dict(max_new_tokens=TINY["max_position_embeddings"]), ValueError, "max_position_embeddings"),
    (dict(mask_shape=(2, 3)), ValueError, "`attention_mask` must be a tensor of the shape"),
    (dict(right_padding=True), ValueError, "left padding"),
    (dict(empty_prompt=True, cfg_scale=1.0), ValueError, "needs a prompt in every row"),
    (dict(padded_out_row=True, cfg_scale=1.0), ValueError, "needs a prompt in every row"),
    (dict(streamer_batch=True), ValueError, "one answer at a time"),
    (dict(streamer_batch=True, num_return_sequences=2, one_row=True), ValueError, "one answer at a time"),
    (dict(float_ids=True), TypeError, "integer tensor"),
    (dict(stepz=4), TypeError, "`stepz` (did you mean `steps`?)"),
    (dict(repetition_penalty=1.2), TypeError, "`repetition_penalty` is an autoregressive option"),
    (dict(num_beams=4), TypeError, "`num_beams` is an autoregressive option"),
    (dict(generation_config={"steps": 2}), TypeError, "must be an ILLaDAGenerationConfig or a transformers"),
    (dict(step_callback=3), TypeError, "`step_callback` must be callable"),
]


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended = True


def bad_call(model, spec: dict):
    ids, mask = left_pad(random_prompts([4, 2], seed=8))
    spec = dict(spec)
    if spec.pop("prompt_mask_token", False):
        ids[0, -1] = MASK
    if "mask_shape" in spec:
        mask = torch.ones(spec.pop("mask_shape"), dtype=torch.long)
    if spec.pop("right_padding", False):
        mask = mask.flip(-1)
    if spec.pop("empty_prompt", False):
        ids, mask = ids[:, :0], None
    if spec.pop("padded_out_row", False):
        mask[1] = 0
    if spec.pop("streamer_batch", False):
        spec["streamer"] = RecordingStreamer()
    if spec.pop("float_ids", False):
        ids = ids.float()
    if spec.pop("one_row", False):
        ids, mask = ids[:1], mask[:1]
    if spec.pop("stock_config_beams", False):
        spec["generation_config"] = GenerationConfig(num_beams=4)
    if spec.pop("empty_batch", False):
        ids, mask = ids[:0], mask[:0]
    if spec.pop("encoding_extra_key", False):
        ids, mask = {"input_ids": ids, "attention_mask": mask, "pixel_values": ids}, None
    if spec.pop("encoding_without_ids", False):
        ids, mask = {"attention_mask": mask}, None
    if spec.pop("list_ids", False):
        ids, mask = ids.tolist(), None
    if spec.get("max_new_tokens", 8) is None:
        spec.pop("max_new_tokens")
        return model.generate(ids, attention_mask=mask, **spec)
    return model.generate(ids, attention_mask=mask, max_new_tokens=spec.pop("max_new_tokens", 8), **spec)


@pytest.mark.parametrize("spec, error, message", ERRORS, ids=[m for _, _, m in ERRORS])
def test_bad_input_raises_before_any_forward(tiny_model, spec, error, message):
    with count_forwards(tiny_model) as calls, pytest.raises(error) as info:
        bad_call(tiny_model, spec)
    assert message in str(info.value)
    assert calls == []


def test_config_rejects_unknown_and_autoregressive_options():
    with pytest.raises(TypeError, match="did you mean `block_length`"):
        ILLaDAGenerationConfig(block_lenght=4)
    with pytest.raises(TypeError, match="`num_beams` is an autoregressive option"):
        ILLaDAGenerationConfig(num_beams=4)
    config = ILLaDAGenerationConfig()
    with pytest.raises(ValueError, match="`steps`"):
        config.update(steps=64)  # more than the default block of 32


# --------------------------------------------------------------------------------------------- API


def test_model_is_a_diffusion_generator_not_an_autoregressive_one(tiny_model):
    assert type(tiny_model).can_generate()
    assert not isinstance(tiny_model, GenerationMixin)
    assert type(tiny_model).generate is ILLaDAGenerationMixin.generate
    config = tiny_model.generation_config
    assert isinstance(config, ILLaDAGenerationConfig)
    assert (config.mask_token_id, config.pad_token_id, config.stop_ids) == (MASK, PAD, [EOS])
    assert (config.temperature, config.canvas, config.steps, config.tokens_per_step) == (0.0, "variable", None, None)


def test_kwargs_override_without_mutating_configs(sharp_model):
    ids = torch.tensor(random_prompts([4], seed=9))
    given_config = ILLaDAGenerationConfig(max_new_tokens=8, block_length=4)
    before, model_before = given_config.to_dict(), sharp_model.generation_config.to_dict()
    by_kwargs = sharp_model.generate(ids, generation_config=given_config, steps=2, eos_token_id=[])
    by_config = sharp_model.generate(
        ids, generation_config=ILLaDAGenerationConfig(max_new_tokens=8, block_length=4, steps=2, eos_token_id=[])
    )
    assert torch.equal(by_kwargs, by_config) and by_kwargs.shape == (1, 12)
    assert given_config.to_dict() == before and sharp_model.generation_config.to_dict() == model_before


def test_history_follows_the_schedule(sharp_model):
    ids = torch.tensor(random_prompts([3], seed=10))
    out = sharp_model.generate(
        ids,
        max_new_tokens=10,
        block_length=5,
        steps=2,
        eos_token_id=[],
        canvas="fixed",
        return_dict_in_generate=True,
        output_history=True,
    )
    assert isinstance(out, ILLaDAGenerateOutput) and out.nfe == 4
    history = out.history[0].tolist()
    assert history[:3] == [-1, -1, -1]
    per_step = [history.count(step) for step in range(out.nfe)]
    assert per_step == [3, 2, 3, 2]  # 5 tokens in 2 steps: 5 // 2 + 1, then 5 // 2, per block
    assert set(history[3:8]) == {0, 1} and set(history[8:]) == {2, 3}


def test_history_is_cut_with_the_answer():
    model = make_model(seed=4, **SHARP)
    prompt = random_prompts([5], seed=4)[0]
    with logit_offsets(model, eos_in_second_block(5, 4, marker=prompt[0])):
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=16,
            block_length=4,
            steps=2,
            return_dict_in_generate=True,
            output_history=True,
        )
    assert out.history.shape == out.sequences.shape
    assert (out.history[0, 5:] >= 0).all() and (out.history[0, 5:] < out.nfe).all()


def test_streamer_receives_prompt_then_blocks(sharp_model):
    streamer = RecordingStreamer()
    prompt = random_prompts([4], seed=11)[0]
    stop = stop_token_of(sharp_model, [prompt], canvas="fixed", max_new_tokens=8, block_length=8)
    out = sharp_model.generate(
        torch.tensor([prompt]), max_new_tokens=12, block_length=4, stop_token_ids=[stop], streamer=streamer
    )
    assert streamer.puts[0] == [prompt] and streamer.ended
    streamed = [t for put in streamer.puts[1:] for t in put]
    assert streamed == out[0, 4:].tolist()
    assert all(len(put) <= 4 for put in streamer.puts[1:])


def test_step_callback_sees_every_step(sharp_model):
    seen = []
    ids, mask = left_pad(random_prompts([3, 5], seed=12))

    def callback(step, x, logits):
        seen.append(
            (
                step,
                tuple(x.shape),
                tuple(logits.shape),
                bool((logits[..., MASK] == -torch.inf).all()),
                int((x == MASK).sum()),
            )
        )

    out = sharp_model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=8,
        block_length=4,
        steps=2,
        eos_token_id=[],
        step_callback=callback,
        return_dict_in_generate=True,
    )
    assert [s[0] for s in seen] == list(range(out.nfe))
    assert [s[1] for s in seen] == [(2, 9)] * 2 + [(2, 13)] * 2  # the variable canvas grows by a block
    assert all(s[2] == (2, 4, VOCAB) and s[3] for s in seen)
    assert [s[4] for s in seen] == [4, 0, 4, 0]  # masks left after each step: 2 rows x (4 - 2), then none


def test_logits_are_computed_for_the_block_only(sharp_model):
    shapes = []
    handle = sharp_model.lm_head.register_forward_hook(lambda module, args, output: shapes.append(tuple(args[0].shape)))
    try:
        sharp_model.generate(
            torch.tensor(random_prompts([6], seed=13)),
            max_new_tokens=12,
            block_length=4,
            canvas="fixed",
            eos_token_id=[],
            steps=1,
        )
    finally:
        handle.remove()
    assert shapes == [(1, 4, TINY["hidden_size"])] * 3  # canvas of 18 positions, 4 get logits


def test_mask_token_is_never_sampled_even_when_preferred(sharp_model):
    ids = torch.tensor(random_prompts([4], seed=14))
    options = dict(max_new_tokens=8, block_length=4, eos_token_id=[], temperature=0.8)
    plain = sharp_model.generate(ids, generator=torch.Generator().manual_seed(0), **options)

    def prefer_mask(ids_, positions):
        out = torch.zeros(ids_.shape[0], len(positions), VOCAB)
        out[..., MASK] = 1e4
        return out

    with logit_offsets(sharp_model, prefer_mask):
        pushed = sharp_model.generate(ids, generator=torch.Generator().manual_seed(0), **options)
    assert torch.equal(pushed, plain) and not (pushed == MASK).any()


def test_suppressed_token_is_never_generated(sharp_model):
    ids = torch.tensor(random_prompts([4], seed=15))
    favourite = 40

    def prefer(ids_, positions):
        out = torch.zeros(ids_.shape[0], len(positions), VOCAB)
        out[..., favourite] = 30.0
        return out

    options = dict(max_new_tokens=8, block_length=4, eos_token_id=[])
    with logit_offsets(sharp_model, prefer):
        free = sharp_model.generate(ids, **options)
        suppressed = sharp_model.generate(ids, suppress_tokens=[favourite], **options)
    assert (free[0, 4:] == favourite).all()
    assert not (suppressed == favourite).any()


def test_stop_token_bias_ramps_with_the_answer_position(sharp_model):
    ids = torch.tensor(random_prompts([4], seed=16))
    biased = 50
    out = sharp_model.generate(
        ids,
        max_new_tokens=12,
        block_length=4,
        eos_token_id=[],
        canvas="fixed",
        stop_token_bias={"token_ids": [biased], "slope": 1e3, "start": 5},
    )
    assert (out[0, 4 + 6 :] == biased).all()  # answer positions > 5 get at least 1000


def test_empty_prompt_generates_unconditionally(sharp_model):
    out = sharp_model.generate(torch.zeros(2, 0, dtype=torch.long), max_new_tokens=6, block_length=3, eos_token_id=[])
    assert out.shape == (2, 6) and not (out == MASK).any()


def test_progress_bar_is_off_by_default(sharp_model, capsys):
    ids = torch.tensor(random_prompts([3], seed=17))
    sharp_model.generate(ids, max_new_tokens=4, block_length=2, eos_token_id=[])
    assert "iLLaDA blocks" not in capsys.readouterr().err
    sharp_model.generate(ids, max_new_tokens=4, block_length=2, eos_token_id=[], progress=True)
    assert "iLLaDA blocks" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- save / load


def test_generation_config_round_trip_with_remote_code(tmp_path, sharp_model):
    custom = ILLaDAGenerationConfig(
        max_new_tokens=8,
        block_length=4,
        steps=2,
        temperature=0.0,
        remasking="margin",
        stop_token_ids=[9],
        suppress_tokens=[7],
        canvas="fixed",
        threshold=0.5,
        stop_token_bias={"token_ids": [9], "slope": 0.1},
        mask_token_id=MASK,
        pad_token_id=PAD,
        eos_token_id=[EOS],
    )
    sharp_model.generation_config = custom
    try:
        sharp_model.save_pretrained(tmp_path)
    finally:
        sharp_model.generation_config = ILLaDAGenerationConfig.from_model_config(sharp_model.config)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["remasking"] == "margin" and saved["stop_token_bias"] == {"token_ids": [9], "slope": 0.1}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded.generation_config).__name__ == "ILLaDAGenerationConfig"
    assert type(loaded).__module__ != type(sharp_model).__module__  # really the copied remote code

    def strip(d):
        return {k: v for k, v in d.items() if k not in ("transformers_version", "_from_model_config")}

    assert strip(loaded.generation_config.to_dict()) == strip(custom.to_dict())
    ids = torch.tensor(random_prompts([4], seed=18))
    expected = sharp_model.generate(ids, generation_config=custom)
    assert torch.equal(loaded.generate(ids), expected)
    assert torch.equal(loaded.generate(ids, generation_config=custom), expected)  # a checkout's config works too


def test_config_file_with_autoregressive_keys_loads(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": 0,
                "eos_token_id": 2,
                "pad_token_id": 1,
                "do_sample": True,
                "top_p": 0.9,
                "transformers_version": "4.57.1",
            }
        )
    )
    config = ILLaDAGenerationConfig.from_pretrained(tmp_path)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id, config.max_new_tokens) == (0, 2, 1, 128)
    assert (config.do_sample, config.top_p) == (True, 0.9)  # habitual options with a diffusion meaning are kept
    assert config.sampling_temperature == 1.0
    (tmp_path / "generation_config.json").write_text(json.dumps({"num_beams": 4, "max_length": 20}))
    assert not hasattr(ILLaDAGenerationConfig.from_pretrained(tmp_path), "num_beams")
    (tmp_path / "generation_config.json").write_text(json.dumps({"blok_length": 4}))
    with pytest.raises(TypeError, match="blok_length"):
        ILLaDAGenerationConfig.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------- transformers arguments


def test_do_sample_false_is_greedy_whatever_the_temperature(sharp_model):
    prompts = random_prompts([5, 3], seed=20)
    ids, mask = left_pad(prompts)
    options = dict(max_new_tokens=8, block_length=4, steps=2, eos_token_id=[])
    got = sharp_model.generate(
        ids,
        attention_mask=mask,
        do_sample=False,
        temperature=1.7,
        generator=torch.Generator().manual_seed(1),
        **options,
    )
    expected, _ = reference_generate(sharp_model, prompts, mask_id=MASK, **options_for_reference(options))
    answers_match(got, ids.shape[1], expected)


def options_for_reference(options: dict) -> dict:
    return {k: v for k, v in options.items() if k != "eos_token_id"}


def test_top_k_1_sampling_is_greedy(sharp_model):
    prompts = random_prompts([4, 6], seed=21)
    ids, mask = left_pad(prompts)
    options = dict(max_new_tokens=8, block_length=4, steps=2, eos_token_id=[])
    sampled = sharp_model.generate(
        ids,
        attention_mask=mask,
        do_sample=True,
        temperature=3.0,
        top_k=1,
        generator=torch.Generator().manual_seed(2),
        **options,
    )
    greedy, _ = reference_generate(sharp_model, prompts, mask_id=MASK, **options_for_reference(options))
    answers_match(sampled, ids.shape[1], greedy)
    unfiltered = sharp_model.generate(
        ids, attention_mask=mask, do_sample=True, temperature=3.0, generator=torch.Generator().manual_seed(2), **options
    )
    assert not torch.equal(unfiltered, sampled)  # at this temperature, sampling without top_k=1 departs from greedy


def test_do_sample_true_at_temperature_0_samples_at_the_default_temperature(sharp_model):
    prompts = random_prompts([5], seed=22)
    options = dict(max_new_tokens=8, block_length=4, steps=2, eos_token_id=[])
    got = sharp_model.generate(
        torch.tensor(prompts), do_sample=True, temperature=0.0, generator=torch.Generator().manual_seed(3), **options
    )
    expected, _ = reference_generate(
        sharp_model,
        prompts,
        mask_id=MASK,
        temperature=1.0,
        generator=torch.Generator().manual_seed(3),
        **options_for_reference(options),
    )
    answers_match(got, 5, expected)


def test_num_return_sequences_gives_adjacent_rows_per_prompt(sharp_model):
    prompts = random_prompts([4, 6], seed=23)
    ids, mask = left_pad(prompts)
    options = dict(max_new_tokens=8, block_length=4, steps=2, eos_token_id=[], temperature=1.0)
    out = sharp_model.generate(
        ids, attention_mask=mask, num_return_sequences=3, generator=torch.Generator().manual_seed(4), **options
    )
    assert out.shape[0] == 6
    repeated = [p for p in prompts for _ in range(3)]
    expected, _ = reference_generate(
        sharp_model,
        repeated,
        mask_id=MASK,
        generator=torch.Generator().manual_seed(4),
        **options_for_reference(options),
    )
    answers_match(out, ids.shape[1], expected)
    assert len({tuple(row) for row in out[:3].tolist()}) > 1  # sampled copies differ
    greedy = sharp_model.generate(ids, attention_mask=mask, num_return_sequences=3, **{**options, "temperature": 0})
    assert torch.equal(greedy[0], greedy[2]) and torch.equal(greedy[3], greedy[5])


def test_max_length_counts_the_prompt(sharp_model):
    prompts = random_prompts([5, 3], seed=24)
    ids, mask = left_pad(prompts)
    out = sharp_model.generate(
        ids, attention_mask=mask, max_length=ids.shape[1] + 6, block_length=4, steps=2, eos_token_id=[]
    )
    expected, _ = reference_generate(sharp_model, prompts, mask_id=MASK, max_new_tokens=6, block_length=4, steps=2)
    answers_match(out, ids.shape[1], expected)


def test_max_length_sets_the_budget_before_the_settings_are_checked(sharp_model):
    """A fixed canvas of one block given by `max_length` is valid although the default budget (128) is not a
    multiple of the block (fuzz finding G2); a budget that is not a multiple names the caller's `max_length`."""
    assert sharp_model.generation_config.max_new_tokens % 3
    prompts = random_prompts([2], seed=27)
    ids = torch.tensor(prompts)
    by_length = sharp_model.generate(ids, max_length=5, block_length=3, canvas="fixed", eos_token_id=[])
    expected, _ = reference_generate(
        sharp_model, prompts, mask_id=MASK, max_new_tokens=3, block_length=3, canvas="fixed"
    )
    answers_match(by_length, 2, expected)
    with pytest.raises(
        ValueError,
        match=r"`max_new_tokens` \(4\) must be a multiple of `block_length` \(3\).*"
        r"`max_length` \(6\) minus the prompt width \(2\)",
    ):
        sharp_model.generate(ids, max_length=6, block_length=3, canvas="fixed")


def test_plain_generation_config_overrides_only_what_it_sets(sharp_model):
    prompts = random_prompts([5], seed=25)
    stock = GenerationConfig(max_new_tokens=6, do_sample=False, num_beams=1)
    out = sharp_model.generate(torch.tensor(prompts), generation_config=stock, return_dict_in_generate=True)
    # Diffusion settings stay the model's defaults: one block of 32 > 6 tokens, one token per step.
    expected, nfe = reference_generate(
        sharp_model, prompts, mask_id=MASK, max_new_tokens=6, block_length=32, stop_ids=(EOS,)
    )
    answers_match(out.sequences, 5, expected)
    assert out.nfe == nfe
    by_length = sharp_model.generate(torch.tensor(prompts), generation_config=GenerationConfig(max_length=11))
    assert torch.equal(by_length, out.sequences)


def test_generation_config_from_the_folder_keeps_the_checkpoint_diffusion_settings(tmp_path):
    model = make_model(seed=3, **SHARP)
    model.generation_config = ILLaDAGenerationConfig(
        max_new_tokens=8, block_length=4, steps=2, eos_token_id=[], mask_token_id=MASK, pad_token_id=PAD
    )
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)
    prompts = random_prompts([4], seed=26)
    stock = GenerationConfig.from_pretrained(tmp_path)  # knows max_new_tokens, not block_length or steps
    out = loaded.generate(torch.tensor(prompts), generation_config=stock, return_dict_in_generate=True)
    expected, nfe = reference_generate(model, prompts, mask_id=MASK, max_new_tokens=8, block_length=4, steps=2)
    answers_match(out.sequences, 4, expected)
    assert out.nfe == nfe == 4


def test_batch_encoding_or_dict_as_first_argument(sharp_model):
    from transformers import BatchEncoding

    prompts = random_prompts([5, 2], seed=27)
    ids, mask = left_pad(prompts)
    options = dict(max_new_tokens=8, block_length=4, steps=2, eos_token_id=[])
    expected, _ = reference_generate(sharp_model, prompts, mask_id=MASK, **options_for_reference(options))
    for inputs in (
        BatchEncoding({"input_ids": ids, "attention_mask": mask}),
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)},
    ):
        answers_match(sharp_model.generate(inputs, **options), ids.shape[1], expected)


def test_out_of_vocabulary_ids_under_padding_read_as_pad(sharp_model):
    prompts = random_prompts([5, 2], seed=28)
    ids, mask = left_pad(prompts)
    dirty = ids.clone()
    dirty[1, 0], dirty[1, 1] = 10**6, -3
    options = dict(max_new_tokens=8, block_length=4, steps=2, eos_token_id=[])
    expected, _ = reference_generate(sharp_model, prompts, mask_id=MASK, **options_for_reference(options))
    out = sharp_model.generate(dirty, attention_mask=mask, **options)
    answers_match(out, ids.shape[1], expected)
    assert torch.equal(out[:, : ids.shape[1]], ids)  # returned as the pad id


def test_huge_temperature_never_emits_mask_or_suppressed_tokens(sharp_model):
    from illada.generation_config_illada import MAX_TEMPERATURE

    ids = torch.tensor(random_prompts([4], seed=29))

    def prefer_banned(ids_, positions):
        out = torch.zeros(ids_.shape[0], len(positions), VOCAB)
        out[..., MASK] = 1e30
        out[..., 40] = 1e30
        return out

    with logit_offsets(sharp_model, prefer_banned):
        out = sharp_model.generate(
            ids,
            max_new_tokens=32,
            block_length=8,
            eos_token_id=[],
            suppress_tokens=[40],
            temperature=MAX_TEMPERATURE,
            generator=torch.Generator().manual_seed(0),
        )
    answer = out[0, 4:]
    assert not ((answer == MASK) | (answer == 40)).any() and len(set(answer.tolist())) > 10  # near-uniform draws


def test_answer_lengths_and_stop_reasons():
    model = make_model(seed=4, **SHARP)
    prompts = random_prompts([5, 5], seed=5)
    prompts[1][0] = prompts[0][0] + 1 if prompts[0][0] + 1 < VOCAB else FIRST_ORDINARY_ID
    with logit_offsets(model, eos_in_second_block(5, 4, marker=prompts[0][0])):
        out = model.generate(
            torch.tensor(prompts), max_new_tokens=16, block_length=4, steps=2, return_dict_in_generate=True
        )
    # Row 0: EOS planted at answer position 4 + 2 = 6, so six answer tokens and a stop; row 1: the whole budget.
    assert out.answer_lengths.tolist() == [6, 16] and out.stopped.tolist() == [True, False]


def test_fixed_canvas_shows_the_whole_budget_and_variable_grows(sharp_model):
    """The canvases differ in what the model sees (max_new_tokens > block_length, where they are not the same)."""
    ids = torch.tensor(random_prompts([3], seed=30))
    widths = {}
    for canvas in ("fixed", "variable"):
        with count_forwards(sharp_model) as calls:
            sharp_model.generate(ids, max_new_tokens=12, block_length=4, steps=2, eos_token_id=[], canvas=canvas)
        widths[canvas] = [shape[1] for shape in calls]
    assert widths == {"fixed": [15] * 6, "variable": [7, 7, 11, 11, 15, 15]}


def test_invalid_generation_config_file_names_the_file(tmp_path):
    make_model().save_pretrained(tmp_path)
    path = tmp_path / "generation_config.json"
    path.write_text(path.read_text()[:40])  # truncated
    with pytest.raises(ValueError, match="generation_config.json"):
        AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)
    path.unlink()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)  # absent: model defaults
    assert loaded.generation_config.max_new_tokens == 128


def test_resolve_generation_config_gives_the_settings_a_call_uses(sharp_model):
    config = sharp_model.resolve_generation_config(steps=2, block_length=4, stop_token_ids=[9])
    assert (config.steps, config.block_length, config.max_new_tokens) == (2, 4, 128)  # the rest: model defaults
    assert (config.mask_token_id, config.pad_token_id, config.stop_ids) == (MASK, PAD, [EOS, 9])
    ids = torch.tensor(random_prompts([4], seed=31))
    assert torch.equal(
        sharp_model.generate(ids, generation_config=config, max_new_tokens=8),
        sharp_model.generate(ids, steps=2, block_length=4, stop_token_ids=[9], max_new_tokens=8),
    )
    with pytest.raises(ValueError, match="`max_length`"):
        sharp_model.resolve_generation_config(max_length=20)


def test_streamer_stops_with_the_answer():
    """EOS planted in the second of four blocks: the streamer gets the prompt, the first block, the second block cut
    after EOS, and nothing of the two blocks that are never decoded."""
    model = make_model(seed=4, **SHARP)
    prompt = random_prompts([5], seed=4)[0]
    streamer = RecordingStreamer()
    with logit_offsets(model, eos_in_second_block(5, 4, marker=prompt[0])):
        out = model.generate(torch.tensor([prompt]), max_new_tokens=16, block_length=4, steps=2, streamer=streamer)
    assert [len(put) for put in streamer.puts] == [1, 4, 3] and streamer.ended
    assert streamer.puts[2][-1] == EOS and [t for put in streamer.puts[1:] for t in put] == out[0, 5:].tolist()


def test_history_after_the_end_of_an_answer_is_not_generated(capsys):
    """Row 0 stops in the second of four blocks (EOS planted), row 1 runs to the budget; the bar shows the loop
    leaving after the second block, when every row is finished."""
    model = make_model(seed=4, **SHARP)
    prompts = random_prompts([5, 5], seed=5)
    prompts[1][0] = prompts[0][0] + 1 if prompts[0][0] + 1 < VOCAB else FIRST_ORDINARY_ID
    with logit_offsets(model, eos_in_second_block(5, 4, marker=prompts[0][0])):
        out = model.generate(
            torch.tensor(prompts),
            max_new_tokens=16,
            block_length=4,
            steps=2,
            return_dict_in_generate=True,
            output_history=True,
        )
        alone = model.generate(torch.tensor(prompts[:1]), max_new_tokens=16, block_length=4, steps=2, progress=True)
    history = out.history.tolist()
    assert all(step >= 0 for step in history[0][5 : 5 + 7]) and all(step == -1 for step in history[0][5 + 7 :])
    assert all(step >= 0 for step in history[1][5:])
    assert alone.shape[1] == 5 + 7 and "4/4" not in capsys.readouterr().err  # the last two blocks never start


def test_positions_count_from_each_rows_first_token(sharp_model):
    seen = []
    handle = sharp_model.register_forward_pre_hook(
        lambda m, a, kwargs: seen.append(kwargs["position_ids"]), with_kwargs=True
    )
    try:
        ids, mask = left_pad(random_prompts([2, 4], seed=32))
        sharp_model.generate(ids, attention_mask=mask, max_new_tokens=2, block_length=2, steps=1, eos_token_id=[])
    finally:
        handle.remove()
    assert seen[0].tolist() == [[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]  # padding at 0, the row's tokens from 0
