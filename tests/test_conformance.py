"""The model contract of transformers' common model tests, with `LlamaForCausalLM` as the reference (issue 26).

Outputs as in transformers (`return_dict=False` tuples, `output_hidden_states` / `output_attentions` /
`return_dict` falling back to the config, attention weights with eager attention), attention switching at run
time, RoPE scaling through transformers' rope initialisers, the config checked again when a model is built,
and a forward that `torch.export` and `torch.compile(fullgraph=True)` can trace. Where a computation can be
checked independently, it is compared with transformers' own Llama loaded with the same weights and a
bidirectional mask.
"""

import pytest
import torch
from tiny import SHARP, TINY, llama_twin, make_config, make_model
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from illada import modeling_illada
from illada.cache_illada import DiffusionKVCache
from illada.configuration_illada import ILLaDAConfig
from illada.modeling_illada import ILLaDAForCausalLM, ILLaDAModel

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS, HEADS, HIDDEN = TINY["num_hidden_layers"], TINY["num_attention_heads"], TINY["hidden_size"]
ATOL = 1e-5


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(6, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def full_mask(batch: int, length: int) -> torch.Tensor:
    """Llama's bidirectional form: an additive 4-D mask of zeros (every token sees every token)."""
    return torch.zeros(batch, 1, length, length)


def spy(function, calls: list):
    """`function`, recording the keyword arguments of each call in `calls`."""

    def wrapper(*args, **kwargs):
        calls.append(kwargs)
        return function(*args, **kwargs)

    return wrapper


# ------------------------------------------------------------------------------------------------ outputs


@pytest.mark.parametrize("source", ["argument", "config"])
@pytest.mark.parametrize("cls", [ILLaDAForCausalLM, ILLaDAModel])
def test_return_dict_false_gives_the_tuple_of_the_dict(cls, source):
    """transformers' `test_model_outputs_equivalence`: the tuple holds the dict's set fields, in order."""
    torch.manual_seed(0)
    model = cls._from_config(make_config(), attn_implementation="eager").eval()
    ids = random_ids(2, 7)
    with torch.no_grad():
        as_dict = model(ids, output_hidden_states=True, output_attentions=True)
        if source == "config":
            model.config.return_dict = False
            as_tuple = model(ids, output_hidden_states=True, output_attentions=True)
        else:
            as_tuple = model(ids, output_hidden_states=True, output_attentions=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple()) == 3
    for got, expected in zip(as_tuple, as_dict.values(), strict=True):
        got, expected = (got, expected) if isinstance(got, tuple) else ((got,), (expected,))
        assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))


def test_return_dict_false_unpacks_logits_and_stays_out_of_the_layers(monkeypatch):
    model = make_model(attn_implementation="eager")
    calls = []
    monkeypatch.setattr(modeling_illada, "eager_attention_forward", spy(modeling_illada.eager_attention_forward, calls))
    ids = random_ids(1, 5)
    with torch.no_grad():
        (logits,) = model(ids, return_dict=False)
        expected = model(ids).logits
    assert torch.equal(logits, expected)
    assert len(calls) == 2 * LAYERS and not any("return_dict" in kwargs for kwargs in calls)


def test_return_dict_in_config_leaves_generation_and_scoring_working():
    model = make_model(seed=3)
    prompt = random_ids(1, 4)
    expected = model.generate(prompt, max_new_tokens=4, block_length=4, steps=2)
    pairs = ([[7, 8, 9]], [[10, 11]])
    scores = model.score_continuations(*pairs)
    model.config.return_dict = False
    assert torch.equal(model.generate(prompt, max_new_tokens=4, block_length=4, steps=2), expected)
    again = model.score_continuations(*pairs)
    assert torch.equal(again.scores, scores.scores) and torch.equal(again.reveal_order, scores.reveal_order)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hidden_states_from_config_match_llama(attn):
    """`config.output_hidden_states`: the embeddings, each layer's output and the normed output (count and shapes
    from the config), equal to Llama's with the same weights; the argument overrides the config."""
    model = make_model(seed=1, attn_implementation=attn)
    llama = llama_twin(model, attn)
    ids = random_ids(2, 9)
    model.config.output_hidden_states = True
    with torch.no_grad():
        ours = model(ids)
        theirs = llama(ids, attention_mask=full_mask(2, 9), output_hidden_states=True)
        off = model(ids, output_hidden_states=False)
    assert len(ours.hidden_states) == LAYERS + 1 == len(theirs.hidden_states)
    for got, expected in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        assert got.shape == (2, 9, HIDDEN) and (got - expected).abs().max() <= ATOL
    assert off.hidden_states is None and off.attentions is None


def test_attentions_match_llama_and_rows_sum_to_one():
    """`config.output_attentions` with eager attention: one `(batch, heads, q, k)` map per layer, equal to Llama's."""
    model = make_model(seed=1, attn_implementation="eager")
    llama = llama_twin(model, "eager")
    ids = random_ids(2, 9)
    model.config.output_attentions = True
    with torch.no_grad():
        ours = model(ids).attentions
        theirs = llama(ids, attention_mask=full_mask(2, 9), output_attentions=True).attentions
    assert len(ours) == LAYERS == len(theirs)
    for got, expected in zip(ours, theirs, strict=True):
        assert got.shape == (2, HEADS, 9, 9) and (got - expected).abs().max() <= ATOL
        assert torch.allclose(got.sum(-1), torch.ones(2, HEADS, 9), atol=1e-6)


def test_attentions_give_no_weight_to_padding_and_see_later_tokens():
    model = make_model(seed=1, attn_implementation="eager")
    ids = random_ids(2, 6)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        attentions = model(ids, attention_mask=mask, output_attentions=True).attentions
    for weights in attentions:
        assert torch.allclose(weights.sum(-1)[0, :, 2:], torch.ones(HEADS, 4), atol=1e-6)
        assert weights[0, :, 2:, :2].abs().max() == 0  # padded keys get nothing
        later = torch.ones(6, 6, dtype=torch.bool).triu(1)
        assert weights[1][:, later].min() > 0  # bidirectional: every query attends to later keys


def test_output_attentions_without_eager_is_a_clear_error():
    model = make_model(attn_implementation="sdpa")
    message = r"`output_attentions=True` is not supported with `attn_implementation='sdpa'`"
    with pytest.raises(ValueError, match=message):
        model(random_ids(1, 4), output_attentions=True)
    with pytest.raises(ValueError, match="set it to 'eager'"):  # transformers' own check of the config attribute
        model.config.output_attentions = True


# ---------------------------------------------------------------------------------------- attention switching


def test_set_attn_implementation_switches_the_kernel(monkeypatch):
    """`set_attn_implementation` changes which function runs (seen by spies), and eager equals SDPA."""
    model = make_model(seed=2, attn_implementation="sdpa")
    eager_calls, sdpa_calls = [], []
    monkeypatch.setattr(
        modeling_illada, "eager_attention_forward", spy(modeling_illada.eager_attention_forward, eager_calls)
    )
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", spy(ALL_ATTENTION_FUNCTIONS["sdpa"], sdpa_calls))
    ids, mask = random_ids(2, 8), torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    with torch.no_grad():
        sdpa = model(ids, attention_mask=mask).logits
        assert (len(sdpa_calls), len(eager_calls)) == (LAYERS, 0)
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager" == model.model.config._attn_implementation
        eager = model(ids, attention_mask=mask, output_attentions=True)
        assert (len(sdpa_calls), len(eager_calls)) == (LAYERS, LAYERS)
        model.set_attn_implementation("sdpa")
        again = model(ids, attention_mask=mask).logits
        assert (len(sdpa_calls), len(eager_calls)) == (2 * LAYERS, LAYERS)
    assert len(eager.attentions) == LAYERS
    assert (eager.logits - sdpa).abs().max() <= ATOL and torch.equal(again, sdpa)


# ---------------------------------------------------------------------------------------------- RoPE scaling

SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {
        "rope_type": "llama3",
        "factor": 4.0,
        "original_max_position_embeddings": 16,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
    },
}


@pytest.mark.parametrize("name", list(SCALINGS))
def test_scaled_rope_matches_llama_beyond_the_original_context(name):
    """Each scaling against Llama with the same `rope_parameters` and weights, on 40 tokens (original context 16)."""
    model = make_model(seed=4, rope_scaling=dict(SCALINGS[name]), max_position_embeddings=16, **SHARP)
    assert model.config.rope_parameters["rope_type"] == name
    llama = llama_twin(model, "sdpa")
    plain = make_model(seed=4, max_position_embeddings=16, **SHARP)
    ids = random_ids(2, 40)
    with torch.no_grad():
        got = model(ids).logits
        expected = llama(ids, attention_mask=full_mask(2, 40)).logits
        unscaled = plain(ids).logits
    assert (got - expected).abs().max() <= ATOL
    assert (got - unscaled).abs().max() > 1e-3  # the scaling is applied, not ignored


def test_dynamic_rope_changes_logits_only_beyond_the_original_context():
    scaled = make_model(seed=4, rope_scaling=dict(SCALINGS["dynamic"]), max_position_embeddings=16, **SHARP)
    plain = make_model(seed=4, max_position_embeddings=16, **SHARP)
    full, long, short = random_ids(2, 16), random_ids(2, 30), random_ids(2, 12)
    with torch.no_grad():
        assert torch.equal(scaled(full).logits, plain(full).logits)
        assert (scaled(long).logits - plain(long).logits).abs().max() > 1e-3
        # Shorter than the original context again: back to the original frequencies (as in transformers, a forward
        # of exactly `max_position_embeddings` tokens keeps the frequencies of the longest forward so far).
        assert torch.equal(scaled(short).logits, plain(short).logits)


def test_dynamic_rope_refuses_a_kv_cache():
    model = make_model(rope_scaling=dict(SCALINGS["dynamic"]), max_position_embeddings=16)
    with pytest.raises(ValueError, match="`kv_cache` cannot be used with `rope_type='dynamic'`"):
        model(random_ids(1, 6), kv_cache=DiffusionKVCache())


@pytest.mark.parametrize(
    "rope, match",
    [
        ({"rope_type": "longrope", "factor": 2.0}, r"`rope_type='longrope'` .* is not supported"),
        ({"rope_type": "proportional"}, r"`rope_type='proportional'` .* is not supported"),
        ({"rope_type": "linear"}, r"missing \['factor'\]"),
        ({"rope_type": "linear", "factor": 2.0, "beta_fast": 3}, r"unknown \['beta_fast'\]"),
        ({"rope_type": "linear", "factor": 0.5}, r"`rope_parameters\['factor'\]` must be in \[1.0, inf\)"),
        ({"rope_type": "dynamic", "factor": float("nan")}, r"`rope_parameters\['factor'\]` must be a finite"),
        ({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 0}, "must be a positive integer"),
        ({**SCALINGS["llama3"], "high_freq_factor": 0.5}, "must be greater than"),
    ],
)
def test_bad_rope_parameters_raise_at_config_and_at_model_construction(rope, match):
    with pytest.raises(ValueError, match=match) as at_config:
        make_config(rope_scaling=dict(rope))
    config = make_config()
    config.rope_parameters = {**dict(rope), "rope_theta": TINY["rope_theta"]}
    with pytest.raises(ValueError, match=match) as at_build:
        ILLaDAForCausalLM(config)
    assert str(at_build.value) == str(at_config.value)


def test_scaling_set_on_a_loaded_config_without_rope_theta_is_named(tmp_path):
    """transformers' `rope_scaling` setter replaces the whole `rope_parameters`, dropping `rope_theta`."""
    config = make_config()
    config.rope_scaling = {"rope_type": "linear", "factor": 2.0}
    with pytest.raises(ValueError, match="has no `rope_theta`"):
        ILLaDAForCausalLM(config)


def test_scaled_model_saves_and_reloads(tmp_path):
    model = make_model(seed=4, rope_scaling=dict(SCALINGS["yarn"]), max_position_embeddings=16)
    model.save_pretrained(tmp_path)
    loaded = ILLaDAForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.rope_parameters == model.config.rope_parameters
    ids = random_ids(1, 40)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# ------------------------------------------------------------------------------- the config, checked at build

EDITS = [
    {"hidden_act": "gelu"},
    {"tie_word_embeddings": False},
    {"attention_bias": True},
    {"mlp_bias": True},
    {"num_key_value_heads": 3},
    {"mask_token_id": 1},
    {"rms_norm_eps": 0.0},
    {"attention_dropout": 1.0},
    {"rope_parameters": {"rope_type": "default", "rope_theta": -1.0}},
]


@pytest.mark.parametrize("edit", EDITS, ids=lambda edit: next(iter(edit)))
@pytest.mark.parametrize("cls", [ILLaDAForCausalLM, ILLaDAModel])
def test_a_field_edited_after_creation_is_refused_at_construction(cls, edit, tmp_path):
    """The error of `ILLaDAConfig(...)`, word for word, when the model is built, and `save_pretrained` refuses to
    write a config that would not load."""
    with pytest.raises(ValueError) as at_config:
        ILLaDAConfig(**{**TINY, **edit})
    config = make_config()
    for name, value in edit.items():
        setattr(config, name, value)
    with pytest.raises(ValueError) as at_build:
        cls(config)
    assert str(at_build.value) == str(at_config.value)
    with pytest.raises(ValueError):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


# ------------------------------------------------------------------------------------------ export, compile


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_export_static_shape_equals_eager(attn):
    model = make_model(seed=6, attn_implementation=attn)
    ids, mask = random_ids(2, 9), torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1] * 9])
    exported = torch.export.export(model, args=(), kwargs={"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
    got = exported.module()(input_ids=ids, attention_mask=mask).logits
    assert (got - expected).abs().max() <= ATOL


def test_export_dynamic_sequence_length_equals_eager():
    """One export with a symbolic length serves other lengths, and packed documents (`position_ids`) are traced."""
    model = make_model(seed=6)
    seq = torch.export.Dim("seq", min=2, max=64)
    ids, positions = random_ids(2, 9), torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4]] * 2)
    exported = torch.export.export(
        model,
        args=(),
        kwargs={"input_ids": ids, "position_ids": positions},
        dynamic_shapes={"input_ids": {1: seq}, "position_ids": {1: seq}},
    ).module()
    for length in (5, 17):
        ids = random_ids(2, length, seed=length)
        positions = torch.cat([torch.arange(3), torch.arange(length - 3)]).expand(2, length)
        with torch.no_grad():
            expected = model(ids, position_ids=positions).logits
            alone = model(ids[:, 3:]).logits  # the second packed document on its own
        got = exported(input_ids=ids, position_ids=positions).logits
        assert (got - expected).abs().max() <= ATOL
        assert (got[:, 3:] - alone).abs().max() <= 1e-4


def test_compile_fullgraph_traces_the_forward_in_one_graph():
    """`torch.compile(fullgraph=True)` raises on any graph break; the `eager` backend checks the capture quickly
    (the inductor run is `test_compile_fullgraph_inductor_matches_eager`)."""
    model = make_model(seed=6)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    ids, mask = random_ids(2, 7), torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1] * 7])
    with torch.no_grad():
        got = compiled(ids, attention_mask=mask).logits
        expected = model(ids, attention_mask=mask).logits
    assert (got - expected).abs().max() <= ATOL


@pytest.mark.slow
def test_compile_fullgraph_inductor_matches_eager():
    model = make_model(seed=6)
    compiled = torch.compile(model, fullgraph=True)
    ids = random_ids(2, 7)
    with torch.no_grad():
        assert (compiled(ids).logits - model(ids).logits).abs().max() <= ATOL
