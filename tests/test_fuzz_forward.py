"""Fuzz: `ILLaDAForCausalLM.forward` with random padding, masks, packed position ids and `logits_to_keep`, and
hostile shapes and dtypes (issue 12).

Valid cases are checked against independent computations on the same model: each left- or right-padded row equals
the row alone at its real positions; a 4-D boolean mask equals its 2-D key-padding form; a row packing two
documents (position ids restarting at 0) equals each document alone; `logits_to_keep` returns exactly the selected
rows of the full logits. Wrong shapes and dtypes must raise errors that name the argument. (Ids outside the
vocabulary are left out here: the forward, like transformers' models, does not check them, which would cost a
device synchronisation per step; `generate` and the scoring functions do.)
"""

import pytest
import torch
from fuzz_strategies import fuzz_settings, run_case
from hypothesis import given
from hypothesis import strategies as st
from tiny import FIRST_ORDINARY_ID, SHARP, TINY, make_model

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = make_model(seed=5, **SHARP)
VOCAB, HIDDEN = TINY["vocab_size"], TINY["hidden_size"]
ATOL = 1e-4
AREA = "model forward"


@torch.no_grad()
def logits(input_ids, **kwargs) -> torch.Tensor:
    return MODEL(input_ids=input_ids, **kwargs).logits


def random_ids(rows: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(FIRST_ORDINARY_ID, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


@st.composite
def padded_batch(draw):
    """(ids, 2-D mask) with each row left- or right-padded (one side for the whole batch)."""
    lengths = draw(st.lists(st.integers(1, 7), min_size=1, max_size=4))
    width, side = max(lengths), draw(st.sampled_from(["left", "right"]))
    ids = random_ids(len(lengths), width, draw(st.integers(0, 999)))
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for r, n in enumerate(lengths):
        if side == "left":
            mask[r, width - n :] = 1
        else:
            mask[r, :n] = 1
    return ids, mask


def check_rows_alone(ids: torch.Tensor, mask: torch.Tensor):
    def check(result: torch.Tensor) -> None:
        assert result.shape == (*ids.shape, VOCAB) and torch.isfinite(result).all()
        for r in range(ids.shape[0]):
            real = mask[r].bool()
            alone = logits(ids[r][real][None])[0]
            assert torch.allclose(result[r][real], alone, atol=ATOL), f"row {r} differs from the row alone"

    return check


@fuzz_settings(max_examples=25)
@given(batch=padded_batch(), form=st.sampled_from(["long", "bool", "int32", "4d_bool"]))
def test_fuzz_forward_padding(batch, form):
    """Left or right padding: each row's logits at its real positions equal the row alone's."""
    ids, mask = batch
    given_mask = mask.to({"long": torch.long, "bool": torch.bool, "int32": torch.int32, "4d_bool": torch.bool}[form])
    if form == "4d_bool":
        given_mask = mask.bool()[:, None, None, :] & mask.bool()[:, None, :, None]  # [B, 1, L, L]
    run_case(
        AREA,
        lambda: logits(ids, attention_mask=given_mask),
        check=check_rows_alone(ids, mask),
        describe=f"ids={ids.tolist()}, mask ({form})={mask.tolist()}",
    )


@fuzz_settings(max_examples=20)
@given(first=st.integers(1, 6), second=st.integers(1, 6), seed=st.integers(0, 999), batch=st.integers(1, 3))
def test_fuzz_forward_packed_documents(first, second, seed, batch):
    """Two documents packed in a row (position ids restart at 0) attend only within themselves."""
    ids = random_ids(batch, first + second, seed)
    positions = torch.cat([torch.arange(first), torch.arange(second)]).expand(batch, -1)

    def check(result: torch.Tensor) -> None:
        assert torch.allclose(result[:, :first], logits(ids[:, :first]), atol=ATOL), "first document"
        assert torch.allclose(result[:, first:], logits(ids[:, first:]), atol=ATOL), "second document"

    run_case(
        AREA,
        lambda: logits(ids, position_ids=positions),
        check=check,
        describe=f"documents of {first} and {second} tokens, {batch} rows",
    )


@st.composite
def keep_case(draw):
    """`logits_to_keep` values, valid or not; returns (sequence length, value, the selector of the full logits
    that a valid value must give, bad names)."""
    length = draw(st.integers(1, 6))
    kind = draw(
        st.sampled_from(
            ["int", "index", "bool2d", "negative", "too_many", "float", "bad_index", "bool_wrong_shape", "float_tensor"]
        )
    )
    if kind == "int":
        n = draw(st.integers(0, length))
        return length, n, (slice(None), slice(length - n if n else 0, None)), set(), set()
    if kind == "index":
        index = torch.tensor(draw(st.lists(st.integers(0, length - 1), min_size=1, max_size=length)))
        return length, index, (slice(None), index), set(), set()
    if kind == "bool2d":
        selected = torch.tensor(draw(st.lists(st.booleans(), min_size=2 * length, max_size=2 * length))).view(2, length)
        return length, selected, selected, set(), set()
    if kind == "too_many":  # more than the sequence: all positions (as transformers' slice does) or a clear error
        return length, length + draw(st.integers(1, 3)), (slice(None), slice(0, None)), set(), {"logits_to_keep"}
    bad_values = {
        "negative": -1,
        "float": 1.5,
        "bad_index": torch.tensor([length + 3]),
        "bool_wrong_shape": torch.ones(2, length + 1, dtype=torch.bool),
        "float_tensor": torch.tensor([0.0, 1.0]),
    }
    return length, bad_values[kind], None, {"logits_to_keep"}, set()


@fuzz_settings(max_examples=30)
@given(case=keep_case(), seed=st.integers(0, 999))
def test_fuzz_forward_logits_to_keep(case, seed):
    """`logits_to_keep` (an int, an index tensor or a boolean mask) selects exactly those rows of the full logits."""
    length, keep, selector, bad, doubtful = case
    ids = random_ids(2, length, seed)

    def check(result: torch.Tensor) -> None:
        expected = logits(ids)[selector]
        assert result.shape == expected.shape, f"shape {tuple(result.shape)} != {tuple(expected.shape)}"
        assert torch.allclose(result, expected, atol=ATOL), "kept logits differ from the full logits"

    run_case(
        AREA,
        lambda: logits(ids, logits_to_keep=keep),
        bad=bad,
        check=check,
        doubtful=doubtful,
        describe=f"length {length}, logits_to_keep={keep!r}",
    )


HOSTILE_INPUTS = {
    "float_ids": lambda ids: ({"input_ids": ids.float()}, {"input_ids"}),
    "ids_1d": lambda ids: ({"input_ids": ids[0]}, {"input_ids"}),
    "ids_3d": lambda ids: ({"input_ids": ids[None]}, {"input_ids"}),
    "ids_and_embeds": lambda ids: (
        {"input_ids": ids, "inputs_embeds": torch.zeros(*ids.shape, HIDDEN)},
        {"input_ids", "inputs_embeds"},
    ),
    "neither": lambda ids: ({}, {"input_ids", "inputs_embeds"}),
    "embeds_wrong_width": lambda ids: ({"inputs_embeds": torch.zeros(*ids.shape, HIDDEN + 1)}, {"inputs_embeds"}),
    "positions_wrong_shape": lambda ids: (
        {"input_ids": ids, "position_ids": torch.arange(ids.shape[1] + 1)[None]},
        {"position_ids"},
    ),
    "mask_wrong_shape": lambda ids: (
        {"input_ids": ids, "attention_mask": torch.ones(ids.shape[0], ids.shape[1] + 2, dtype=torch.long)},
        {"attention_mask"},
    ),
    "mask_wrong_rows": lambda ids: (
        {"input_ids": ids, "attention_mask": torch.ones(ids.shape[0] + 1, ids.shape[1], dtype=torch.long)},
        {"attention_mask"},
    ),
    "labels": lambda ids: ({"input_ids": ids, "labels": ids}, {"labels"}),
}


@pytest.mark.parametrize("fault", sorted(HOSTILE_INPUTS))
@fuzz_settings(max_examples=3)
@given(rows=st.integers(1, 3), length=st.integers(1, 6), seed=st.integers(0, 999))
def test_fuzz_forward_hostile_inputs(fault, rows, length, seed):
    """Wrong dtypes and shapes name the argument."""
    kwargs, bad = HOSTILE_INPUTS[fault](random_ids(rows, length, seed))

    def call():
        with torch.no_grad():
            return MODEL(**kwargs)

    run_case(AREA, call, bad=bad, describe=f"{fault}: { ({k: tuple(v.shape) for k, v in kwargs.items()}) }")


FLAGS = ("output_attentions", "output_hidden_states", "return_dict")


@fuzz_settings(max_examples=30)
@given(
    attn=st.sampled_from(["eager", "sdpa"]),
    arguments=st.fixed_dictionaries({name: st.sampled_from([None, True, False]) for name in FLAGS}),
    in_config=st.fixed_dictionaries({name: st.booleans() for name in FLAGS}),
    rows=st.integers(1, 3),
    length=st.integers(1, 6),
    seed=st.integers(0, 999),
)
def test_fuzz_forward_output_flags(attn, arguments, in_config, rows, length, seed):
    """`output_attentions`, `output_hidden_states`, `return_dict` from the call, else from the config (as in
    transformers): the right fields, counts and shapes, rows of attention weights summing to 1, a tuple exactly
    when `return_dict` resolves to False, and a clear error for attention weights without eager attention."""
    model = make_model(seed=5, attn_implementation=attn, **SHARP)
    for name, value in in_config.items():
        if name != "output_attentions" or attn == "eager":  # transformers refuses the attribute with sdpa
            setattr(model.config, name, value)
    wanted = {name: in_config[name] if arguments[name] is None else arguments[name] for name in FLAGS}
    if attn != "eager" and arguments["output_attentions"] is None:
        wanted["output_attentions"] = False
    ids = random_ids(rows, length, seed)
    with torch.no_grad():
        expected = MODEL(input_ids=ids).logits

    def call():
        with torch.no_grad():
            return model(input_ids=ids, **{name: value for name, value in arguments.items() if value is not None})

    def check(result) -> None:
        assert isinstance(result, tuple) != wanted["return_dict"]
        fields = list(result) if isinstance(result, tuple) else [result.logits, result.hidden_states, result.attentions]
        if isinstance(result, tuple):
            fields += [None] * (3 - len(fields))
            if not wanted["output_hidden_states"]:
                fields = [fields[0], None, fields[1]]
        logits, hidden_states, attentions = fields
        assert torch.allclose(logits, expected, atol=ATOL)
        assert (hidden_states is not None) == wanted["output_hidden_states"]
        assert (attentions is not None) == wanted["output_attentions"]
        if hidden_states is not None:
            assert [h.shape for h in hidden_states] == [(rows, length, HIDDEN)] * (TINY["num_hidden_layers"] + 1)
        for weights in attentions or ():
            assert weights.shape == (rows, TINY["num_attention_heads"], length, length)
            assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)

    run_case(
        AREA,
        call,
        bad={"output_attentions"} if wanted["output_attentions"] and attn != "eager" else set(),
        check=check,
        describe=f"{attn}, arguments {arguments}, config {in_config}",
    )
