"""The shared checks of `utils_illada.py`: each accepts what it promises and names the argument when it refuses."""

import math

import numpy as np
import pytest
import torch

from illada.utils import check_non_negative_int, load_tokenizer, resolve_dtype
from illada.utils_illada import (
    as_id_list,
    check_choice,
    check_positive_int,
    check_range,
    check_token_ids,
    guided_logits,
    is_int,
)


def test_integers_and_numbers():
    assert is_int(3) and is_int(np.int64(3)) and not is_int(True) and not is_int(3.0)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2", None])
def test_positive_int_refuses(value):
    with pytest.raises(ValueError, match="`steps` must be a positive integer"):
        check_positive_int("steps", value)


def test_positive_and_non_negative_int_accept():
    check_positive_int("steps", 1)
    check_positive_int("steps", None, allow_none=True)
    check_non_negative_int("seed", 0)
    with pytest.raises(ValueError, match="`seed` must be an integer >= 0"):
        check_non_negative_int("seed", -1)


def test_choice():
    check_choice("mode", "a", ("a", "b"))
    with pytest.raises(ValueError, match=r"`mode` must be one of \['a', 'b'\], got 'c'"):
        check_choice("mode", "c", ("a", "b"))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_range_refuses_non_finite_even_when_unbounded(value):
    with pytest.raises(ValueError, match="`temperature` must be a finite number"):
        check_range("temperature", value, 0, math.inf)


def test_range_ends():
    check_range("p", 0.0, 0, 1)
    with pytest.raises(ValueError, match=r"`p` must be in \(0, 1\]"):
        check_range("p", 0.0, 0, 1, low_open=True)
    with pytest.raises(TypeError, match="`p` must be a number, got str"):
        check_range("p", "0.5", 0, 1)


def test_token_ids():
    check_token_ids("stop", [2, 3])
    check_token_ids("stop", 2, allow_int=True)
    assert as_id_list(None) == [] and as_id_list(np.int64(2)) == [2] and as_id_list((4, 5)) == [4, 5]
    for bad in ([-1], [1.0], "2", 2):
        with pytest.raises(ValueError, match="`stop` must be None or a list of token ids"):
            check_token_ids("stop", bad)
    with pytest.raises(ValueError, match="`stop` must be a list of token ids"):
        check_token_ids("stop", None, allow_none=False)


def test_dtype_names():
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="`torch_dtype` must be one of"):
        resolve_dtype("fp8", "torch_dtype")


def test_guidance_formula_by_hand():
    conditional, unconditional = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    # u + (s + 1)(c - u) at s = 2: 0.5 + 3 * 1.5 = 5.0 and 1.0 + 3 * (-2.0) = -5.0
    assert torch.equal(guided_logits(conditional, unconditional, 2.0), torch.tensor([5.0, -5.0]))
    assert torch.equal(guided_logits(conditional, unconditional, 0.0), conditional)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "is not valid JSON"),
        (b'{"version": "1.', "is not valid JSON"),
        (b"\xff\xfe{}", "is not valid JSON"),
        (b"[]", "holds a JSON list"),
    ],
)
def test_load_tokenizer_names_a_damaged_json_file(tmp_path, name, content, problem):
    """Fuzz finding F2: transformers / tokenizers raised a bare JSONDecodeError or UnicodeDecodeError."""
    from tiny_tokenizer import make_tiny_tokenizer

    make_tiny_tokenizer().save_pretrained(tmp_path)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=f"{name}` {problem}"):
        load_tokenizer(str(tmp_path))


def test_load_tokenizer_loads_an_intact_folder(tmp_path):
    from tiny_tokenizer import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded("12 + 3")["input_ids"] == tokenizer("12 + 3")["input_ids"]
    assert loaded.get_vocab() == tokenizer.get_vocab()
