"""The settings of iLLaDA's diffusion sampling: [`ILLaDAGenerationConfig`], saved as `generation_config.json`.

Holds every setting of [`ILLaDAGenerationMixin.generate`] and its validation, and the mapping of the habitual
`transformers.GenerationConfig` options that have a diffusion meaning (`do_sample`, `top_k`, `top_p`,
`num_return_sequences`, `max_length`). The sampler (`sampler_illada.py`) reads a validated config; the
transformers wrapper (`generation_illada.py`) builds one per call from the checkpoint's config and the caller's
options.
"""

import copy
import difflib
import inspect

from transformers import GenerationConfig
from transformers.utils import logging

from .utils_illada import (
    MAX_CFG_SCALE,
    as_id_list,
    check_choice,
    check_positive_int,
    check_range,
    check_token_ids,
    is_int,
)

logger = logging.get_logger(__name__)

REMASKING_STRATEGIES = ("low_confidence", "random", "margin", "entropy")
CANVAS_MODES = ("variable", "fixed")
# `use_cache` values: no cache, Fast-dLLM's prefix cache, and its dual cache.
CACHE_MODES = ("none", "prefix", "dual")
# LLaDA generate.py's default answer length.
DEFAULT_MAX_NEW_TOKENS = 128
# The block length of most of the paper's evaluations (arXiv 2606.25331, evaluation settings).
DEFAULT_BLOCK_LENGTH = 32
# `do_sample=True` with `temperature=0`: sample from the model's own distribution (transformers' default temperature).
DEFAULT_SAMPLING_TEMPERATURE = 1.0
# Upper bound of `temperature`. Sampling divides the logits by it in float64, so no value overflows; beyond this the
# draw is uniform over the allowed tokens for any realistic logit range, and larger values are most likely typos.
MAX_TEMPERATURE = 1e4
# Options of `transformers.GenerationConfig` without a diffusion meaning, accepted only at these neutral values
# (a pipeline or a stock generation_config.json may carry them); any other value is an error.
NEUTRAL_OPTIONS = {
    "num_beams": 1,
    "num_beam_groups": 1,
    "repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "output_scores": False,
    "output_logits": False,
    "output_attentions": False,
    "output_hidden_states": False,
    "early_stopping": False,
    "min_length": 0,
    "min_new_tokens": 0,
}
# Upper bound of `draft_tokens`: a forward verifies 2**(draft_tokens - 1) canvases per row.
MAX_DRAFT_TOKENS = 8
# Named speed settings, passed as `generate(ids, **GENERATION_PRESETS[name])`; each sets every speed-related setting,
# so that a checkpoint's own choices do not leak in. Measured in bench/RESULTS.md ("Generation presets").
GENERATION_PRESETS = {
    # The iLLaDA paper, literally: whole blocks, one token per step, no cache.
    "exact": dict(
        decode_after_stop=True, draft_tokens=None, threshold=None, use_cache="none", steps=None, tokens_per_step=None
    ),
    # The default: stop decoding a block at the answer's end (variable canvas), one token per step.
    "default": dict(
        decode_after_stop=None, draft_tokens=None, threshold=None, use_cache="none", steps=None, tokens_per_step=None
    ),
    # The default's exact tokens in fewer forwards: draft and verify.
    "lossless-fast": dict(
        decode_after_stop=None, draft_tokens=4, threshold=None, use_cache="none", steps=None, tokens_per_step=None
    ),
    # Fast-dLLM's confidence threshold and prefix cache on top of the default: changes answers a little.
    "fast": dict(
        decode_after_stop=None, draft_tokens=None, threshold=0.9, use_cache="prefix", steps=None, tokens_per_step=None
    ),
}
# Similarity (difflib ratio) from which an unknown key of generation_config.json is taken for a misspelt setting.
NEAR_MISS = 0.8
# Keys a generation_config.json may carry besides the settings.
_METADATA_KEYS = ("transformers_version", "_from_model_config", "_commit_hash")
_STOP_BIAS_KEYS = {"token_ids", "slope", "start", "max_bias"}


class ILLaDAGenerationConfig(GenerationConfig):
    r"""
    Settings of [`ILLaDAGenerationMixin.generate`], saved to and loaded from `generation_config.json`.

    Only settings with a diffusion meaning exist here: the other options of [`~transformers.GenerationConfig`]
    (`num_beams`, `repetition_penalty`, ...) are rejected. Token ids left at `None` come from the model config.

    Args:
        max_new_tokens (`int`, *optional*, defaults to 128): Budget of generated tokens. `generate(max_length=n)`
            sets it to `n` minus the prompt width.
        block_length (`int`, *optional*, defaults to 32): Tokens decoded together before moving right. In `fixed`
            mode it must divide `max_new_tokens`; in `variable` mode the last block may be shorter.
        steps (`int`, *optional*): Denoising steps (forward passes) per block, at most `block_length` (a shorter
            last block uses at most one step per token). Give this or `tokens_per_step`; without both, one token is
            committed per step.
        tokens_per_step (`int`, *optional*): Alternative to `steps`: commit this many tokens per step.
        temperature (`float`, *optional*, defaults to 0.0): 0 takes the argmax; above 0 (at most `MAX_TEMPERATURE`),
            tokens are drawn from `softmax(logits / temperature)` by Gumbel-max in float64.
        do_sample (`bool`, *optional*): transformers' switch. `None` (default): sample iff `temperature > 0`.
            `False`: greedy, whatever `temperature` says. `True`: sample at `temperature`, or at
            `DEFAULT_SAMPLING_TEMPERATURE` (1.0) when `temperature` is 0.
        top_k (`int`, *optional*): When sampling, draw only among the `top_k` most likely tokens (Dream's
            `top_k_logits`). Confidence scores still use the unfiltered probabilities.
        top_p (`float`, *optional*): When sampling, draw only from the smallest set of tokens whose tempered
            probability reaches `top_p`, in `(0, 1]` (Dream's `top_p_logits`, applied before `top_k` as Dream does).
        num_return_sequences (`int`, *optional*, defaults to 1): Answers per prompt; the rows of one prompt are
            adjacent in the output (as in transformers). They differ only when sampling.
        remasking (`str`, *optional*, defaults to `"low_confidence"`): Score that decides which positions are
            committed first: `"low_confidence"` (probability of the proposed token, LLaDA), `"random"` (uniform,
            LLaDA), `"margin"` (top-1 minus top-2 probability) or `"entropy"` (`exp(-entropy)` of the prediction).
        threshold (`float`, *optional*): Confidence-threshold decoding (Fast-dLLM): each step also commits every
            masked position of the block whose score is at least `threshold`. The step still commits at least
            what the schedule asks (at least one token), so a block never takes more steps than without it; a
            threshold above 1 changes nothing. Not available with `remasking="random"`.
        cfg_scale (`float`, *optional*, defaults to 0.0): Unsupervised classifier-free guidance: logits are
            `u + (cfg_scale + 1) * (c - u)`, `u` computed with the prompt masked. 0 turns it off; at most
            `MAX_CFG_SCALE` (1000, as in scoring): larger scales overflow the guided logits.
        canvas (`str`, *optional*, defaults to `"variable"`): `"variable"` appends one block of masks at a time
            (iLLaDA); `"fixed"` puts all `max_new_tokens` masks on the canvas from the start (LLaDA).
        mask_token_id (`int`, *optional*): The mask token; defaults to `config.mask_token_id`.
        eos_token_id (`int` or `list[int]`, *optional*): End-of-sequence token(s); defaults to
            `config.eos_token_id`. Give `[]` for none.
        stop_token_ids (`list[int]`, *optional*): More stop tokens (e.g. an end-of-turn token). Generation stops on
            any of `eos_token_id` and `stop_token_ids`.
        pad_token_id (`int`, *optional*): Fills finished rows; defaults to `config.pad_token_id`.
        bos_token_id (`int`, *optional*): Not read by `generate` (prompts come tokenised); kept because
            transformers' `Trainer` aligns the BOS/EOS/pad ids of the generation config with the tokenizer.
        suppress_tokens (`list[int]`, *optional*): Tokens that are never generated (logit set to `-inf`).
        stop_token_bias (`dict`, *optional*): Raises the logits of `token_ids` with the position of a token in the
            answer, against the Instruct model's thinking loops: `{"token_ids": [...], "slope": s, "start": a,
            "max_bias": m}` adds `min(m, s * max(0, i - a))` at answer position `i` (0-based). `start` defaults
            to 0, `max_bias` to no cap.
        decode_after_stop (`bool`, *optional*): Whether the masked positions of a block that follow a committed
            stop token are still decoded. They are cut from the answer anyway. `None` (default): not in the
            `variable` canvas (a row leaves its block once every position before its first stop token is committed:
            a short answer in a long block costs a few forwards, not the whole block), yes in the `fixed` canvas
            (token-exact with LLaDA's `generate.py`). `True`: the paper-literal whole-block decoding of the
            iLLaDA paper (the `"exact"` preset). `False`: skip them in both canvases. Skipping changes answers where
            positions before the stop were still masked when it was committed: the model then sees masks, not
            decoded tokens, after the stop.
        draft_tokens (`int`, *optional*): Lossless parallel decoding by draft and verify (FreeDave, arXiv
            2510.00294, with a verification tree as in self-speculative decoding, arXiv 2510.04147), at most
            `MAX_DRAFT_TOKENS` (8). Each forward runs, as one batch, the `2**(draft_tokens - 1)` canvases that the
            next `draft_tokens` commits can reach in any order among the best-scored positions of the last verified
            canvas, and keeps the commits that one-token-per-step decoding makes. The answers are **identical** to
            greedy one-token-per-step decoding with the same other settings, in fewer forwards, each over more
            canvases (more compute per forward). Needs greedy decoding, one token per step (`steps`,
            `tokens_per_step` and `threshold` unset), a confidence `remasking` (not `"random"`) and no
            `cache_refresh_steps`. With `use_cache`, identity holds against one-token-per-step decoding with the
            same cache (itself an approximation of uncached decoding).
        use_cache (`str`, *optional*, defaults to `"none"`): Key-value cache of the canvas (Fast-dLLM, arXiv
            2505.22618, Sec. 3.2).
            `"prefix"`: the first step of each block runs the model on the whole canvas and stores every layer's
            keys and values; the other steps of the block run only on the block and the canvas right of it, and
            take the prefix (prompt and earlier blocks) from the cache. `"dual"`: the other steps run on the block
            alone, and take the suffix from the cache too. `"none"` (default): every step runs
            on the whole canvas. **An approximation**: attention is bidirectional, so the cached keys and values
            of a position depend on the whole canvas at the last refresh and miss the tokens committed since
            (Fast-dLLM reports that this costs little accuracy). In `variable` mode the canvas ends with the block,
            so `"prefix"` and `"dual"` do the same.
        cache_refresh_steps (`int`, *optional*): With `use_cache`, also refresh the cache at every
            `cache_refresh_steps`-th step of a block (steps 0, k, 2k, ...). `None`: at the first step of each block
            only (Fast-dLLM). `1` refreshes at every step: the output then equals the uncached output exactly,
            and nothing is saved.
        return_dict_in_generate (`bool`, *optional*, defaults to `False`): Return an [`ILLaDAGenerateOutput`]
            instead of the sequences alone.
        output_history (`bool`, *optional*, defaults to `False`): Add to the output the step at which each
            position was committed. Needs `return_dict_in_generate=True`.
    """

    def __init__(
        self,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        block_length: int = DEFAULT_BLOCK_LENGTH,
        steps: int | None = None,
        tokens_per_step: int | None = None,
        temperature: float = 0.0,
        do_sample: bool | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        num_return_sequences: int = 1,
        remasking: str = "low_confidence",
        threshold: float | None = None,
        cfg_scale: float = 0.0,
        canvas: str = "variable",
        mask_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        stop_token_ids: list[int] | None = None,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        suppress_tokens: list[int] | None = None,
        stop_token_bias: dict | None = None,
        decode_after_stop: bool | None = None,
        draft_tokens: int | None = None,
        use_cache: str = "none",
        cache_refresh_steps: int | None = None,
        return_dict_in_generate: bool = False,
        output_history: bool = False,
        **metadata,
    ) -> None:
        # iLLaDA: the parent's __init__ is not called, so none of its autoregressive attributes exist here.
        unknown = sorted(set(metadata) - set(_METADATA_KEYS))
        if unknown:
            raise TypeError(unknown_names_message("ILLaDAGenerationConfig", unknown))
        self.max_new_tokens = max_new_tokens
        self.block_length = block_length
        self.steps = steps
        self.tokens_per_step = tokens_per_step
        self.temperature = temperature
        self.do_sample = do_sample
        self.top_k = top_k
        self.top_p = top_p
        self.num_return_sequences = num_return_sequences
        self.remasking = remasking
        self.threshold = threshold
        self.cfg_scale = cfg_scale
        self.canvas = canvas
        self.mask_token_id = mask_token_id
        self.eos_token_id = copy.deepcopy(eos_token_id)
        self.stop_token_ids = copy.deepcopy(stop_token_ids)
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.suppress_tokens = copy.deepcopy(suppress_tokens)
        self.stop_token_bias = copy.deepcopy(stop_token_bias)
        self.decode_after_stop = decode_after_stop
        self.draft_tokens = draft_tokens
        self.use_cache = use_cache
        self.cache_refresh_steps = cache_refresh_steps
        self.return_dict_in_generate = return_dict_in_generate
        self.output_history = output_history
        self._from_model_config = metadata.get("_from_model_config")
        self.transformers_version = metadata.get("transformers_version")
        self.validate()

    def validate(self, strict: bool = False, user_set_attributes: set[str] | None = None) -> None:
        """Checks every setting on its own and against the others; raises `ValueError` naming the setting.

        `strict` and `user_set_attributes` exist for the parent's callers: every problem is an error here.
        """
        for name in ("max_new_tokens", "block_length", "num_return_sequences"):
            check_positive_int(name, getattr(self, name))
        for name in ("steps", "tokens_per_step", "top_k"):
            check_positive_int(name, getattr(self, name), allow_none=True)
        self._validate_schedule()
        self._validate_choices()
        self._validate_sampling()
        self._validate_cache()
        self._validate_token_ids()
        _check_stop_token_bias(self.stop_token_bias)
        for name in ("return_dict_in_generate", "output_history"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        if not (self.decode_after_stop is None or isinstance(self.decode_after_stop, bool)):
            raise ValueError(f"`decode_after_stop` must be None, True or False, got {self.decode_after_stop!r}.")
        self._validate_drafts()
        if self.output_history and not self.return_dict_in_generate:
            raise ValueError(
                "`output_history=True` needs `return_dict_in_generate=True` (the history is a field of "
                "the returned ILLaDAGenerateOutput)."
            )

    def _validate_schedule(self) -> None:
        if self.steps is not None and self.tokens_per_step is not None:
            raise ValueError(f"Give `steps` ({self.steps}) or `tokens_per_step` ({self.tokens_per_step}), not both.")
        for name in ("steps", "tokens_per_step"):
            value = getattr(self, name)
            if value is not None and value > self.block_length:
                raise ValueError(
                    f"`{name}` ({value}) must not exceed `block_length` ({self.block_length}): a block has only "
                    f"{self.block_length} tokens to commit."
                )
        if self.canvas == "fixed" and self.max_new_tokens % self.block_length:
            raise ValueError(
                f"With `canvas='fixed'`, `max_new_tokens` ({self.max_new_tokens}) must be a multiple of "
                f"`block_length` ({self.block_length}). Use `canvas='variable'` for a shorter last block."
            )

    def _validate_choices(self) -> None:
        check_choice("remasking", self.remasking, REMASKING_STRATEGIES)
        check_choice("canvas", self.canvas, CANVAS_MODES)
        _check_number("cfg_scale", self.cfg_scale, 0, MAX_CFG_SCALE)
        if self.threshold is not None:
            _check_number("threshold", self.threshold, 0, float("inf"))
            if self.remasking == "random":
                raise ValueError(
                    "`threshold` compares the model's confidence and cannot be used with "
                    "`remasking='random'`: choose 'low_confidence', 'margin' or 'entropy'."
                )

    def _validate_sampling(self) -> None:
        _check_number("temperature", self.temperature, 0, MAX_TEMPERATURE)
        if not (self.do_sample is None or isinstance(self.do_sample, bool)):
            raise ValueError(f"`do_sample` must be None, True or False, got {self.do_sample!r}.")
        if self.top_p is not None:
            _check_number("top_p", self.top_p, 0, 1, low_open=True)

    def _validate_drafts(self) -> None:
        """`draft_tokens` reproduces greedy one-token-per-step decoding: settings that depart from it conflict."""
        check_positive_int("draft_tokens", self.draft_tokens, allow_none=True)
        if self.draft_tokens is None:
            return
        if self.draft_tokens > MAX_DRAFT_TOKENS:
            raise ValueError(
                f"`draft_tokens` ({self.draft_tokens}) must be at most {MAX_DRAFT_TOKENS}: each forward runs "
                f"2**(draft_tokens - 1) canvases."
            )
        conflicts = {
            "steps": self.steps is not None,
            "tokens_per_step": self.tokens_per_step is not None,
            "threshold": self.threshold is not None,
            "remasking": self.remasking == "random",
            "temperature / do_sample": self.sampling_temperature != 0,
            "cache_refresh_steps": self.cache_refresh_steps is not None,
        }
        bad = [f"`{name}`" for name, conflict in conflicts.items() if conflict]
        if bad:
            raise ValueError(
                f"`draft_tokens={self.draft_tokens}` reproduces greedy one-token-per-step decoding, so it cannot be "
                f"combined with {', '.join(bad)}: leave `steps`, `tokens_per_step`, `threshold` and "
                f"`cache_refresh_steps` unset, decode greedily (temperature 0) with a confidence `remasking`."
            )

    @property
    def decodes_after_stop(self) -> bool:
        """`decode_after_stop` resolved: `None` means no in the `variable` canvas, yes in the `fixed` one (LLaDA)."""
        return self.canvas == "fixed" if self.decode_after_stop is None else self.decode_after_stop

    @property
    def sampling_temperature(self) -> float:
        """The temperature the sampler uses: 0 (greedy) with `do_sample=False`, `temperature` otherwise, and
        `DEFAULT_SAMPLING_TEMPERATURE` when `do_sample=True` meets `temperature=0`."""
        if self.do_sample is False:
            return 0.0
        if self.do_sample and self.temperature == 0:
            return DEFAULT_SAMPLING_TEMPERATURE
        return float(self.temperature)

    def _validate_cache(self) -> None:
        if not isinstance(self.use_cache, str) or self.use_cache not in CACHE_MODES:
            raise ValueError(
                f"`use_cache` must be one of {CACHE_MODES}, got {self.use_cache!r}. The autoregressive "
                f"`use_cache=True` / `False` has no meaning here: 'none' runs every step on the whole "
                f"canvas, 'prefix' or 'dual' cache keys and values."
            )
        check_positive_int("cache_refresh_steps", self.cache_refresh_steps, allow_none=True)
        if self.cache_refresh_steps is not None and self.use_cache == "none":
            raise ValueError(
                f"`cache_refresh_steps={self.cache_refresh_steps}` needs a cache: set `use_cache` to "
                f"'prefix' or 'dual', or leave `cache_refresh_steps` at None."
            )

    def _validate_token_ids(self) -> None:
        for name in ("mask_token_id", "pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 0):
                raise ValueError(f"`{name}` must be None or a non-negative integer token id, got {value!r}.")
        check_token_ids("eos_token_id", self.eos_token_id, allow_int=True)
        check_token_ids("stop_token_ids", self.stop_token_ids)
        check_token_ids("suppress_tokens", self.suppress_tokens)
        mask = self.mask_token_id
        if mask is not None and mask == self.pad_token_id:
            raise ValueError(
                f"`pad_token_id` and `mask_token_id` are both {mask}: padding would read as masked "
                f"positions. Use a different pad token."
            )
        if mask is not None and mask in self.stop_ids:
            raise ValueError(
                f"The mask token (`mask_token_id` {mask}) is among the stop tokens (`eos_token_id` / "
                f"`stop_token_ids` {self.stop_ids}); it is never generated."
            )

    @property
    def stop_ids(self) -> list[int]:
        """The stop tokens: `eos_token_id` then `stop_token_ids`, without repeats."""
        return list(dict.fromkeys(as_id_list(self.eos_token_id) + as_id_list(self.stop_token_ids)))

    @classmethod
    def from_model_config(cls, model_config) -> "ILLaDAGenerationConfig":
        """The defaults with the special token ids of a model config (an `ILLaDAConfig` or its dict)."""
        get = model_config.get if isinstance(model_config, dict) else lambda key: getattr(model_config, key, None)
        return cls(
            mask_token_id=get("mask_token_id"),
            eos_token_id=get("eos_token_id"),
            pad_token_id=get("pad_token_id"),
            bos_token_id=get("bos_token_id"),
            _from_model_config=True,
        )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "ILLaDAGenerationConfig":
        """Like [`GenerationConfig.from_dict`], for a generation_config.json that this package may not have written:
        the autoregressive keys of a stock file (e.g. `num_beams`) are dropped, and logged when they are set; keys of
        other tools are dropped and named in one warning, except a near-miss of a setting (`block_lenght`), which
        raises with the suggestion. A `max_length` (prompt + answer) without `max_new_tokens` is kept and
        honoured by `generate`, which knows the prompt width."""
        if not isinstance(config_dict, dict):
            raise ValueError(
                f"`generation_config.json` must hold a JSON object of settings, got {type(config_dict).__name__} "
                f"{str(config_dict)[:80]}."
            )
        config_dict = {**config_dict, **kwargs}
        return_unused_kwargs = config_dict.pop("return_unused_kwargs", False)
        for key in ("_from_auto", "_from_pipeline"):
            config_dict.pop(key, None)
        max_length = config_dict.pop("max_length", None)
        if max_length is not None and config_dict.get("max_new_tokens") is not None:
            config_dict["max_length"], max_length = max_length, None  # max_new_tokens wins, as in transformers
        _drop_foreign_keys(config_dict)
        stock_keys = GenerationConfig().to_dict()
        ignored = {
            k: config_dict.pop(k)
            for k in list(config_dict)
            if k in stock_keys and k not in SETTINGS and k not in _METADATA_KEYS
        }
        if isinstance(config_dict.get("use_cache"), bool):  # a stock file's autoregressive flag, not a cache mode
            ignored["use_cache"] = config_dict.pop("use_cache")
        ignored_set = {k: v for k, v in ignored.items() if v is not None and NEUTRAL_OPTIONS.get(k, "unset") != v}
        if ignored_set:
            logger.warning(
                f"Ignoring autoregressive generation options that diffusion decoding does not use: {ignored_set}."
            )
        config = cls(**{k: v for k, v in config_dict.items() if v is not None or k not in _NOT_NONE})
        if max_length is not None:
            check_positive_int("max_length", max_length)
            config.max_length = max_length  # not a setting: `generate` turns it into `max_new_tokens`
        return (config, {}) if return_unused_kwargs else config

    def to_dict(self) -> dict:
        """[`GenerationConfig.to_dict`]; a `max_length` read from a file is written instead of `max_new_tokens`
        (which it replaces), so that saving and loading keep it."""
        values = super().to_dict()
        if values.get("max_length") is not None:
            values.pop("max_new_tokens", None)
        return values

    def to_diff_dict(self) -> dict:
        """Every setting: a saved generation_config.json decodes the same way even if the defaults change. (The
        text-generation pipeline reads this to see which options the checkpoint sets, and adds its own defaults
        only for the others, so a checkpoint's settings are what the pipeline uses.)"""
        return self.to_dict()

    def get_generation_mode(self, *args, **kwargs):
        raise NotImplementedError("iLLaDA generates by diffusion; there is no autoregressive generation mode.")


# The settings, in the order of `ILLaDAGenerationConfig.__init__`.
SETTINGS = tuple(
    name
    for name, parameter in inspect.signature(ILLaDAGenerationConfig.__init__).parameters.items()
    if name != "self" and parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
)
# Settings whose default is not None: a stock file's `null` for them means "not set", i.e. the default.
_NOT_NONE = tuple(
    name
    for name, parameter in inspect.signature(ILLaDAGenerationConfig.__init__).parameters.items()
    if name in SETTINGS and parameter.default is not None
)


def split_generation_options(options: dict, where: str) -> tuple[dict, int | None]:
    """Sorts habitual `generate` / `GenerationConfig` options: returns (diffusion settings, `max_length`).

    Settings pass through; `max_length` (a total length) comes back apart, as it needs the prompt width; the
    options of `NEUTRAL_OPTIONS` are dropped at their neutral value; anything else raises.

    Raises:
        TypeError: an unknown option, or one without a diffusion meaning (`num_beams=4`, `repetition_penalty=1.2`).
    """
    settings, unknown = {}, []
    max_length = options.get("max_length")
    for name, value in options.items():
        if name in SETTINGS:
            settings[name] = value
        elif name != "max_length" and NEUTRAL_OPTIONS.get(name, "unset") != value:
            unknown.append(name)
    if unknown:
        raise TypeError(unknown_names_message(where, sorted(unknown)))
    return settings, max_length


def _check_number(name: str, value, low: float, high: float, low_open: bool = False) -> None:
    """`check_range` with the bad type reported as a ValueError too (settings are values read from a file)."""
    try:
        check_range(name, value, low, high, low_open=low_open)
    except TypeError as error:
        raise ValueError(str(error)) from None


def _check_stop_token_bias(spec) -> None:
    if spec is None:
        return
    if not isinstance(spec, dict) or not {"token_ids", "slope"} <= set(spec) or not set(spec) <= _STOP_BIAS_KEYS:
        raise ValueError(
            f"`stop_token_bias` must be None or a dict with keys `token_ids` and `slope` and optionally "
            f"`start` and `max_bias`, got {spec!r}."
        )
    check_token_ids("stop_token_bias['token_ids']", spec["token_ids"])
    if not spec["token_ids"]:
        raise ValueError("`stop_token_bias['token_ids']` must name at least one token.")
    _check_number("stop_token_bias['slope']", spec["slope"], 0, float("inf"), low_open=True)
    start = spec.get("start", 0)
    if not is_int(start) or start < 0:
        raise ValueError(f"`stop_token_bias['start']` must be an integer >= 0, got {start!r}.")
    if spec.get("max_bias") is not None:
        _check_number("stop_token_bias['max_bias']", spec["max_bias"], 0, float("inf"), low_open=True)


def _drop_foreign_keys(config_dict: dict) -> None:
    """Removes from `config_dict` the keys that are no setting, metadata or stock option (another tool's), naming
    them in one warning; a key that is a near-miss of a setting raises `TypeError` with the suggestion."""
    stock = GenerationConfig().to_dict()
    foreign = sorted(k for k in config_dict if k not in SETTINGS and k not in _METADATA_KEYS and k not in stock)
    typos = [name for name in foreign if difflib.get_close_matches(name, SETTINGS, n=1, cutoff=NEAR_MISS)]
    if typos:
        raise TypeError(unknown_names_message("generation_config.json", typos))
    if foreign:
        logger.warning(f"Ignoring keys of generation_config.json that are not iLLaDA generation settings: {foreign}.")
    for name in foreign:
        del config_dict[name]


def unknown_names_message(where: str, names: list[str]) -> str:
    """The error for unexpected option names: autoregressive ones are named as such, typos get a suggestion."""
    stock = GenerationConfig().to_dict()
    parts = []
    for name in names:
        if name in stock:
            parts.append(f"`{name}` is an autoregressive option that diffusion decoding does not use")
            continue
        close = difflib.get_close_matches(name, SETTINGS, n=1)
        parts.append(f"`{name}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    return f"{where} got unexpected keyword argument(s): {'; '.join(parts)}. Allowed settings: {', '.join(SETTINGS)}."


__all__ = [
    "ILLaDAGenerationConfig",
    "GENERATION_PRESETS",
    "MAX_DRAFT_TOKENS",
    "SETTINGS",
    "REMASKING_STRATEGIES",
    "CANVAS_MODES",
    "CACHE_MODES",
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_BLOCK_LENGTH",
    "DEFAULT_SAMPLING_TEMPERATURE",
    "MAX_TEMPERATURE",
    "split_generation_options",
]
