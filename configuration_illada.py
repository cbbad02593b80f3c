"""iLLaDA model configuration.

iLLaDA ("Improved Large Language Diffusion Models", arXiv 2606.25331) is a masked diffusion language model
with a Llama-shaped, fully bidirectional Transformer. The config uses the Llama key names of the released
checkpoints (`GSAI-ML/iLLaDA-8B-Base`, `GSAI-ML/iLLaDA-8B-Instruct`) so their `config.json` loads as is,
and adds `mask_token_id`, which the release lacks.
"""

import copy
import math
import os
from typing import ClassVar

from transformers import PretrainedConfig

from .utils_illada import check_json_files, check_positive_int, check_range, check_token_ids, is_int

# Where a saved folder's `auto_map` sends the Auto classes (the released checkpoints' mapping).
AUTO_MAP = {
    "AutoConfig": "configuration_illada.ILLaDAConfig",
    "AutoModel": "modeling_illada.ILLaDAForCausalLM",
    "AutoModelForCausalLM": "modeling_illada.ILLaDAForCausalLM",
}

# The text-generation pipeline that `pipeline("text-generation", model=path, trust_remote_code=True)` builds.
CUSTOM_PIPELINES = {
    "text-generation": {
        "impl": "generation_illada.ILLaDATextGenerationPipeline",
        "pt": ["AutoModelForCausalLM"],
        "tf": [],
        "type": "text",
    }
}

# The architecture is fixed by the paper. The released config.json still carries these keys, so we accept
# them but only with the one value the model implements.
_FIXED_ARCHITECTURE = {
    "hidden_act": "silu",  # SwiGLU MLP
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": True,
}

# The RoPE types the model builds (with transformers' initialisers, as Llama does) and the keys each reads from
# `rope_parameters` besides `rope_type` and `rope_theta`: required, then optional. Others are refused.
_ROPE_KEYS = {
    "default": (set(), set()),
    "linear": ({"factor"}, set()),
    "dynamic": ({"factor"}, set()),
    "yarn": (
        {"factor", "original_max_position_embeddings"},
        {"attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"},
    ),
    "llama3": ({"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"}, set()),
}


class ILLaDAConfig(PretrainedConfig):
    r"""
    Configuration of an [`ILLaDAModel`] / [`ILLaDAForCausalLM`]. The defaults describe iLLaDA 8B.

    Args:
        vocab_size (`int`, *optional*, defaults to 155136): Size of the vocabulary.
        hidden_size (`int`, *optional*, defaults to 4096): Width of the residual stream.
        intermediate_size (`int`, *optional*, defaults to 14336): Width of the SwiGLU MLP.
        num_hidden_layers (`int`, *optional*, defaults to 32): Number of decoder layers.
        num_attention_heads (`int`, *optional*, defaults to 32): Number of query heads.
        num_key_value_heads (`int`, *optional*, defaults to 8): Number of key/value heads (grouped-query
            attention); must divide `num_attention_heads`. `None` means one per query head.
        head_dim (`int`, *optional*): Per-head width; derived as `hidden_size // num_attention_heads`.
        max_position_embeddings (`int`, *optional*, defaults to 8192): Longest sequence the model supports.
        rms_norm_eps (`float`, *optional*, defaults to 1e-5): RMSNorm epsilon. Not published for iLLaDA:
            1e-5 is LLaDA's value, and a checkpoint's own config.json overrides it.
        rope_parameters (`dict`, *optional*): `{"rope_type": "default", "rope_theta": ...}`, the plain RoPE of
            the release. A context-extension scaling is `rope_type` `"linear"`, `"dynamic"`, `"yarn"` or `"llama3"`
            with its transformers keys (`factor`; `low_freq_factor`, `high_freq_factor` for llama3;
            `original_max_position_embeddings`, which defaults to `max_position_embeddings`, for yarn and llama3);
            other types are refused. The legacy keys `rope_theta` / `rope_scaling` of the released config.json are
            accepted and converted. `rope_theta` defaults to 500000 (LLaDA's; not published for iLLaDA).
        attention_dropout (`float`, *optional*, defaults to 0.0): Dropout on attention probabilities.
        initializer_range (`float`, *optional*, defaults to 0.02): Std of the normal weight initialisation, in [0, 1].
        pad_token_id (`int`, *optional*, defaults to 1), bos_token_id (`int`, *optional*, defaults to 0),
        eos_token_id (`int` or `list[int]`, *optional*, defaults to 2): Special tokens of iLLaDA's vocabulary.
        mask_token_id (`int`, *optional*, defaults to 5): The `<[MASK]>` token every diffusion algorithm reads.
        hidden_act, attention_bias, mlp_bias, tie_word_embeddings: Present in the released config.json; only
            `"silu"`, `False`, `False`, `True` are accepted, because that is the architecture.

    Example:

    ```python
    >>> from configuration_illada import ILLaDAConfig
    >>> config = ILLaDAConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...                       num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    >>> config.head_dim
    16
    ```
    """

    model_type = "illada"
    keys_to_ignore_at_inference: ClassVar[list[str]] = []
    # Makes `save_pretrained` copy this file next to config.json, as on the Hub.
    _auto_class: ClassVar[str | None] = "AutoConfig"
    default_theta = 500_000.0

    vocab_size: int = 155136
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 8
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    rope_parameters: dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 2
    mask_token_id: int = 5

    def __post_init__(self, **kwargs):
        for name, value in (("rope_parameters", self.rope_parameters), ("rope_scaling", kwargs.get("rope_scaling"))):
            if value is not None and not isinstance(value, dict):  # transformers would fail on it with AttributeError
                raise ValueError(f"`{name}` must be a dict, got {value!r}.")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(AUTO_MAP)
        if getattr(self, "custom_pipelines", None) is None:
            self.custom_pipelines = copy.deepcopy(CUSTOM_PIPELINES)
        self._validate_sizes()
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    def validate(self) -> None:
        """Every check of `ILLaDAConfig(...)`, run again when a model is built and by `save_pretrained`, so that a
        field set after creation (`config.hidden_act = "gelu"`) gets the same error instead of a silently
        different model or a saved folder that does not reload."""
        self._validate_sizes()
        self._validate_floats()
        self._validate_fixed_architecture()
        self._validate_rope()
        self._validate_token_ids()

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict:
        """transformers' reader of config.json, after `check_json_files`: a file that is not a JSON object raises
        `ValueError` naming it (transformers raises an `OSError` for bad JSON, as for a missing file)."""
        check_json_files(os.path.dirname(json_file), [os.path.basename(json_file)])
        return super()._dict_from_json_file(json_file)

    def _validate_sizes(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            check_positive_int(name, getattr(self, name))
        check_positive_int("head_dim", self.head_dim, allow_none=True)
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must be divisible by `num_key_value_heads` "
                f"({self.num_key_value_heads}) for grouped-query attention."
            )
        if self.head_dim is not None and self.head_dim * self.num_attention_heads != self.hidden_size:
            raise ValueError(
                f"`head_dim` ({self.head_dim}) times `num_attention_heads` ({self.num_attention_heads}) must equal "
                f"`hidden_size` ({self.hidden_size}); leave `head_dim` unset to derive it."
            )
        head_dim = self.hidden_size // self.num_attention_heads
        if head_dim % 2:
            raise ValueError(
                f"`head_dim` (`hidden_size // num_attention_heads`) must be even for rotary embeddings, got {head_dim}."
            )

    def _validate_floats(self) -> None:
        check_range("rms_norm_eps", self.rms_norm_eps, 0.0, math.inf, low_open=True, high_open=True)
        # A standard deviation of the weights' normal init: 0.02 in the release; above 1 it has no use, and huge
        # values overflow to inf weights.
        check_range("initializer_range", self.initializer_range, 0.0, 1.0)
        check_range("attention_dropout", self.attention_dropout, 0.0, 1.0, high_open=True)

    def _validate_fixed_architecture(self) -> None:
        for name, allowed in _FIXED_ARCHITECTURE.items():
            if getattr(self, name) != allowed:
                raise ValueError(
                    f"`{name}={getattr(self, name)!r}` is not supported: iLLaDA's architecture has "
                    f"`{name}={allowed!r}`."
                )

    def _validate_rope(self) -> None:
        if not isinstance(self.rope_parameters, dict):
            raise ValueError(f"`rope_parameters` must be a dict, got {self.rope_parameters!r}.")
        self.standardize_rope_params()  # transformers' defaults: `rope_type`, `original_max_position_embeddings`
        params = self.rope_parameters
        rope_type = params.get("rope_type")
        if not isinstance(rope_type, str) or rope_type not in _ROPE_KEYS:
            raise ValueError(
                f"`rope_type={rope_type!r}` in `rope_parameters` (or `rope_scaling`) is not supported: use one of "
                f"{list(_ROPE_KEYS)}, or remove the scaling entry for the plain RoPE of the release."
            )
        required, optional = _ROPE_KEYS[rope_type]
        missing = sorted(required - params.keys())
        unknown = sorted(params.keys() - required - optional - {"rope_type", "type", "rope_theta"})
        if missing or unknown:
            raise ValueError(
                f"`rope_parameters` for `rope_type={rope_type!r}` must have the keys {sorted(required)} and may have "
                f"{sorted(optional)}: missing {missing}, unknown {unknown}."
            )
        if params.get("rope_theta") is None:
            raise ValueError(
                f"`rope_parameters` {params} has no `rope_theta`: a dict set on an existing config (or through "
                f"`rope_scaling`) replaces the whole entry, so include the checkpoint's `rope_theta` in it."
            )
        check_range("rope_theta", params["rope_theta"], 0.0, math.inf, low_open=True, high_open=True)
        if "factor" in required:
            check_range("rope_parameters['factor']", params["factor"], 1.0, math.inf, high_open=True)
        if "original_max_position_embeddings" in required:
            name = "rope_parameters['original_max_position_embeddings']"
            check_positive_int(name, params["original_max_position_embeddings"])
        if rope_type == "llama3":
            self._validate_llama3_rope(params)
        if rope_type == "yarn" and params["rope_theta"] <= 1:  # YaRN divides by log(rope_theta)
            raise ValueError(f"`rope_theta` must be greater than 1 for `rope_type='yarn'`, got {params['rope_theta']}.")
        if rope_type == "dynamic" and self.head_dim <= 2:  # the NTK exponent is head_dim / (head_dim - 2)
            raise ValueError(f"`rope_type='dynamic'` needs `head_dim` > 2, got `head_dim={self.head_dim}`.")
        for name in ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            if params.get(name) is not None:
                check_range(f"rope_parameters[{name!r}]", params[name], 0.0, math.inf, low_open=True, high_open=True)

    @staticmethod
    def _validate_llama3_rope(params: dict) -> None:
        for name in ("low_freq_factor", "high_freq_factor"):
            check_range(f"rope_parameters[{name!r}]", params[name], 0.0, math.inf, low_open=True, high_open=True)
        if params["high_freq_factor"] <= params["low_freq_factor"]:
            raise ValueError(
                f"`rope_parameters['high_freq_factor']` ({params['high_freq_factor']}) must be greater than "
                f"`rope_parameters['low_freq_factor']` ({params['low_freq_factor']})."
            )

    def _validate_token_ids(self) -> None:
        for name in ("mask_token_id", "pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if (value is not None or name == "mask_token_id") and not (is_int(value) and 0 <= value < self.vocab_size):
                raise ValueError(
                    f"`{name}` must be an integer in [0, `vocab_size`) = [0, {self.vocab_size}), got {value!r}: "
                    f"check both fields."
                )
        if self.pad_token_id == self.mask_token_id:
            raise ValueError(
                f"`pad_token_id` and `mask_token_id` are both {self.mask_token_id}: padding would be read as "
                f"masked positions. Use a different pad token."
            )
        check_token_ids("eos_token_id", self.eos_token_id, allow_int=True)
        for eos in self.eos_token_ids:
            if not 0 <= eos < self.vocab_size:
                raise ValueError(
                    f"`eos_token_id` must be in [0, `vocab_size`) = [0, {self.vocab_size}), got {eos}: "
                    f"check both fields."
                )
            if eos == self.mask_token_id:
                raise ValueError(f"`eos_token_id` {eos} equals `mask_token_id`: the mask can never be output.")

    @property
    def eos_token_ids(self) -> list[int]:
        """The stop tokens of the config as a list (`eos_token_id` may be an int, a list or `None`)."""
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if is_int(self.eos_token_id) else list(self.eos_token_id)


__all__ = ["ILLaDAConfig"]
