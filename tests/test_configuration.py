"""ILLaDAConfig: 8B defaults, released-format keys, validation errors."""

import pytest
from tiny import TINY, make_config

from illada.configuration_illada import ILLaDAConfig


def test_defaults_describe_illada_8b():
    c = ILLaDAConfig()
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        32,
        4096,
        32,
        8,
        128,
    )
    assert (c.intermediate_size, c.vocab_size, c.max_position_embeddings) == (14336, 155136, 8192)
    assert (c.bos_token_id, c.pad_token_id, c.eos_token_id, c.mask_token_id) == (0, 1, 2, 5)
    assert c.tie_word_embeddings and c.model_type == "illada"


def test_released_legacy_rope_keys_are_converted():
    c = make_config(rope_theta=123.0, rope_scaling=None)
    assert c.rope_parameters == {"rope_type": "default", "rope_theta": 123.0}


def test_round_trip_through_json(tmp_path):
    c = make_config(mask_token_id=7, eos_token_id=[2, 3])
    c.save_pretrained(tmp_path)
    back = ILLaDAConfig.from_pretrained(tmp_path)
    assert back.mask_token_id == 7 and back.eos_token_ids == [2, 3]
    assert back.rope_parameters == c.rope_parameters and back.head_dim == c.head_dim


def test_eos_token_ids_is_always_a_list():
    assert make_config(eos_token_id=2).eos_token_ids == [2]
    assert make_config(eos_token_id=[2, 4]).eos_token_ids == [2, 4]
    assert make_config(eos_token_id=None).eos_token_ids == []


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"hidden_size": 30}, r"`hidden_size` \(30\) must be divisible by `num_attention_heads` \(4\)"),
        ({"num_key_value_heads": 3}, r"`num_attention_heads` \(4\) must be divisible by `num_key_value_heads` \(3\)"),
        ({"num_hidden_layers": 0}, "`num_hidden_layers` must be a positive integer"),
        ({"vocab_size": -1}, "`vocab_size` must be a positive integer"),
        ({"intermediate_size": 2.5}, "`intermediate_size` must be a positive integer"),
        ({"mask_token_id": 97}, r"`mask_token_id` must be an integer in \[0, `vocab_size`\) = \[0, 97\)"),
        ({"vocab_size": 3}, r"`mask_token_id` must be an integer in \[0, `vocab_size`\) = \[0, 3\)"),
        ({"mask_token_id": 1}, "`pad_token_id` and `mask_token_id` are both 1"),
        ({"eos_token_id": 5}, "equals `mask_token_id`"),
        ({"eos_token_id": 200}, r"`eos_token_id` must be in \[0, `vocab_size`\)"),
        ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, r"`rope_type='longrope'` .* is not supported"),
        ({"rope_theta": -1.0}, r"`rope_theta` must be in \(0.0, inf\), got -1.0"),
        ({"attention_bias": True}, "`attention_bias=True` is not supported"),
        ({"mlp_bias": True}, "`mlp_bias=True` is not supported"),
        ({"hidden_act": "gelu"}, "`hidden_act='gelu'` is not supported"),
        ({"tie_word_embeddings": False}, "`tie_word_embeddings=False` is not supported"),
        ({"head_dim": 16}, "`head_dim` \\(16\\) times `num_attention_heads`"),
        ({"hidden_size": 12, "num_attention_heads": 4, "num_key_value_heads": 4}, "`head_dim` .* must be even"),
        ({"head_dim": 0}, "`head_dim` must be a positive integer"),
        ({"rms_norm_eps": 0.0}, r"`rms_norm_eps` must be in \(0.0, inf\), got 0.0"),
        ({"attention_dropout": 1.0}, r"`attention_dropout` must be in \[0.0, 1.0\), got 1.0"),
        ({"pad_token_id": 1.5}, "`pad_token_id` must be an integer in"),
        ({"bos_token_id": -1}, "`bos_token_id` must be an integer in"),
        ({"eos_token_id": [2, "3"]}, "`eos_token_id` must be None or a token id or a list of token ids"),
        ({"mask_token_id": True}, "`mask_token_id` must be an integer"),
        ({"initializer_range": 1e308}, r"`initializer_range` must be in \[0.0, 1.0\], got 1e\+308"),
    ],
)
def test_invalid_configs_raise_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        ILLaDAConfig(**{**TINY, **overrides})


FLOAT_FIELDS = ["initializer_range", "rms_norm_eps", "rope_theta", "attention_dropout"]


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -0.5])
def test_float_fields_must_be_finite_and_in_range(name, value):
    with pytest.raises(ValueError, match=f"`{name}` must be"):
        ILLaDAConfig(**{**TINY, name: value})


@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_float_fields_must_be_numbers(name):
    with pytest.raises(TypeError, match=f"`{name}` must be a number, got str"):
        ILLaDAConfig(**{**TINY, name: "0.1"})


@pytest.mark.parametrize(
    "overrides",
    [
        {"initializer_range": 0.0},
        {"attention_dropout": 0.0},
        {"rms_norm_eps": 1e-12},
        {"rope_theta": 1.5},
        {"head_dim": 8},
    ],
)
def test_boundary_values_are_accepted(overrides):
    config = ILLaDAConfig(**{**TINY, **overrides})
    assert all(getattr(config, k) == v for k, v in overrides.items() if k != "rope_theta")
    assert config.rope_parameters["rope_theta"] == overrides.get("rope_theta", TINY["rope_theta"])


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "is not valid JSON"),
        (b'{"vocab_size": 9', "is not valid JSON"),
        (b"\xff\xfe{}", "is not valid JSON"),
        (b"[1, 2]", "holds a JSON list"),
    ],
)
def test_unreadable_config_json_is_a_value_error_naming_it(tmp_path, content, match):
    """Fuzz finding F1: transformers raised `OSError` (as for a missing file); the file is named either way."""
    make_config().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=f"config.json` {match}"):
        ILLaDAConfig.from_pretrained(tmp_path)
