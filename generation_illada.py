"""Diffusion sampling for iLLaDA: block-wise low-confidence remasking with stop-token-terminated generation.

`ILLaDAForCausalLM.generate` fills a canvas of mask tokens after the prompt, one block at a time:

- **Low-confidence remasking** (LLaDA, arXiv 2502.09992, Alg. 5 and `generate.py`). Inside a block of `n` masks,
  step `s` of `S` commits `n // S` tokens, plus one on the first `n % S` steps. Every step runs the model on the
  canvas, proposes a token `x0` at each masked position (argmax, or Gumbel-max at temperature > 0), scores it
  (`low_confidence`: its probability; `random`; `margin`; `entropy`) and commits the best-scored positions of the
  block. Committed tokens are never remasked.
- **Two canvases.** `variable` (the iLLaDA paper, Sec. "Variable-length generation"): the canvas grows by one block
  at a time and a row stops after the block that contains a stop token (EOS or another one). `fixed` (LLaDA): the
  whole budget of masks is on the canvas from the start; later blocks are visible while earlier ones decode.
- **Extras.** Unsupervised classifier-free guidance (LLaDA App. B.3), confidence-threshold parallel decoding
  (Fast-dLLM, arXiv 2505.22618, Sec. 3.3), skipping the positions after a committed stop token (`skip_after_stop`),
  a stop-token logit bias that grows with the generated length (the iLLaDA paper's fix for the Instruct model's
  loops), suppressed tokens.
- **Key-value cache** (`use_cache="prefix"` / `"dual"`, Fast-dLLM Sec. 3.2): the first step of a block runs on the
  whole canvas and stores keys and values; the other steps run on the block (and, for `"prefix"`, the canvas right
  of it) and reuse the stored entries elsewhere. An approximation in a bidirectional model, exact when refreshed
  at every step (`cache_refresh_steps=1`).

Every answer is cut after its first stop token; the rest of the row is the pad id. Logits are computed only for
the block being decoded, and finished rows leave the batch.
"""

import copy
import difflib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer
from transformers.utils import ModelOutput, logging

try:  # as Hub remote code (a package made by transformers)
    from .cache_illada import DiffusionKVCache
except ImportError:  # from a checkout, with the repo root on sys.path
    from cache_illada import DiffusionKVCache

logger = logging.get_logger(__name__)

REMASKING_STRATEGIES = ("low_confidence", "random", "margin", "entropy")
CANVAS_MODES = ("variable", "fixed")
# `use_cache` values: no cache (also `None` / `False`), Fast-dLLM's prefix cache, and its dual cache.
CACHE_MODES = ("none", "prefix", "dual")
# LLaDA generate.py's default answer length.
DEFAULT_MAX_NEW_TOKENS = 128
# The block length of most of the paper's evaluations (ILLADA.md §4).
DEFAULT_BLOCK_LENGTH = 32
# Gumbel-max in float64: low-precision Gumbel noise lowers the effective temperature of masked diffusion
# models (Zheng et al., arXiv 2409.02908), which is why LLaDA samples in float64 too.
NOISE_DTYPE = torch.float64
# `history` value of positions that were not generated (prompt, padding, after the end).
NOT_GENERATED = -1
# Keys a generation_config.json may carry besides the settings.
_METADATA_KEYS = ("transformers_version", "_from_model_config", "_commit_hash")
_STOP_BIAS_KEYS = {"token_ids", "slope", "start", "max_bias"}

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


# --------------------------------------------------------------------------------------------- configuration


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not _is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer{' or None' if allow_none else ''}, got {value!r}.")


def _check_token_list(name: str, value, allow_int: bool = False) -> None:
    if value is None or (allow_int and _is_int(value) and value >= 0):
        return
    if not isinstance(value, (list, tuple)) or not all(_is_int(t) and t >= 0 for t in value):
        kind = "a token id or a list of token ids" if allow_int else "a list of token ids"
        raise ValueError(f"`{name}` must be None or {kind} (non-negative integers), got {value!r}.")


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(value)] if _is_int(value) else [int(t) for t in value]


class ILLaDAGenerationConfig(GenerationConfig):
    r"""
    Settings of [`ILLaDAGenerationMixin.generate`], saved to and loaded from `generation_config.json`.

    Only diffusion settings exist here: the autoregressive options of [`~transformers.GenerationConfig`]
    (`do_sample`, `top_p`, `num_beams`, ...) are rejected. Token ids left at `None` come from the model config.

    Args:
        max_new_tokens (`int`, *optional*, defaults to 128): Budget of generated tokens.
        block_length (`int`, *optional*, defaults to 32): Tokens decoded together before moving right. In `fixed`
            mode it must divide `max_new_tokens`; in `variable` mode the last block may be shorter.
        steps (`int`, *optional*): Denoising steps (forward passes) per block, at most `block_length` (a shorter
            last block uses at most one step per token). Give this or `tokens_per_step`; without both, one token is
            committed per step.
        tokens_per_step (`int`, *optional*): Alternative to `steps`: commit this many tokens per step.
        temperature (`float`, *optional*, defaults to 0.0): 0 takes the argmax; above 0, tokens are drawn from
            `softmax(logits / temperature)` by Gumbel-max in float64.
        remasking (`str`, *optional*, defaults to `"low_confidence"`): Score that decides which positions are
            committed first: `"low_confidence"` (probability of the proposed token, LLaDA), `"random"` (uniform,
            LLaDA), `"margin"` (top-1 minus top-2 probability) or `"entropy"` (`exp(-entropy)` of the prediction).
        threshold (`float`, *optional*): Confidence-threshold decoding (Fast-dLLM): each step also commits every
            masked position of the block whose score is at least `threshold`. The step still commits at least
            what the schedule asks (at least one token), so a block never takes more steps than without it; a
            threshold above 1 changes nothing. Not available with `remasking="random"`.
        cfg_scale (`float`, *optional*, defaults to 0.0): Unsupervised classifier-free guidance: logits are
            `u + (cfg_scale + 1) * (c - u)`, `u` computed with the prompt masked. 0 turns it off.
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
        skip_after_stop (`bool`, *optional*, defaults to `False`): Leave undecoded the masked positions of a block
            that follow a committed stop token. They are cut from the answer anyway, so a row leaves its block once
            every position before its first stop token is committed, instead of decoding the whole block. Saves
            most steps of short answers in long blocks, but changes the output: the model sees masks, not decoded
            tokens, after the stop. Our addition; the iLLaDA paper decodes whole blocks.
        use_cache (`str`, *optional*): Key-value cache of the canvas (Fast-dLLM, arXiv 2505.22618, Sec. 3.2).
            `"prefix"`: the first step of each block runs the model on the whole canvas and stores every layer's
            keys and values; the other steps of the block run only on the block and the canvas right of it, and
            take the prefix (prompt and earlier blocks) from the cache. `"dual"`: the other steps run on the block
            alone, and take the suffix from the cache too. `None`, `False` or `"none"` (default): every step runs
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
        skip_after_stop: bool = False,
        use_cache: str | bool | None = None,
        cache_refresh_steps: int | None = None,
        return_dict_in_generate: bool = False,
        output_history: bool = False,
        **metadata,
    ) -> None:
        # iLLaDA: the parent's __init__ is not called, so none of its autoregressive attributes exist here.
        unknown = sorted(set(metadata) - set(_METADATA_KEYS))
        if unknown:
            raise TypeError(_unknown_names_message("ILLaDAGenerationConfig", unknown))
        self.max_new_tokens = max_new_tokens
        self.block_length = block_length
        self.steps = steps
        self.tokens_per_step = tokens_per_step
        self.temperature = temperature
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
        self.skip_after_stop = skip_after_stop
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
        for name in ("max_new_tokens", "block_length"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("steps", self.steps, allow_none=True)
        _check_positive_int("tokens_per_step", self.tokens_per_step, allow_none=True)
        self._validate_schedule()
        self._validate_choices()
        self._validate_cache()
        self._validate_token_ids()
        _check_stop_token_bias(self.stop_token_bias)
        for name in ("return_dict_in_generate", "output_history", "skip_after_stop"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be True or False, got {getattr(self, name)!r}.")
        if self.output_history and not self.return_dict_in_generate:
            raise ValueError("`output_history=True` needs `return_dict_in_generate=True` (the history is a field of "
                             "the returned ILLaDAGenerateOutput).")

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
        if self.remasking not in REMASKING_STRATEGIES:
            raise ValueError(f"`remasking` must be one of {REMASKING_STRATEGIES}, got {self.remasking!r}.")
        if self.canvas not in CANVAS_MODES:
            raise ValueError(f"`canvas` must be one of {CANVAS_MODES}, got {self.canvas!r}.")
        for name in ("temperature", "cfg_scale"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
        if self.threshold is not None:
            if not _is_number(self.threshold) or self.threshold < 0:
                raise ValueError(f"`threshold` must be None or a finite number >= 0, got {self.threshold!r}.")
            if self.remasking == "random":
                raise ValueError("`threshold` compares the model's confidence and cannot be used with "
                                 "`remasking='random'`: choose 'low_confidence', 'margin' or 'entropy'.")

    def _validate_cache(self) -> None:
        if self.use_cache not in (None, False, *CACHE_MODES):
            raise ValueError(f"`use_cache` must be one of {CACHE_MODES} (or None / False for no cache), got "
                             f"{self.use_cache!r}. The autoregressive `use_cache=True` has no meaning here: choose "
                             f"'prefix' or 'dual'.")
        _check_positive_int("cache_refresh_steps", self.cache_refresh_steps, allow_none=True)
        if self.cache_refresh_steps is not None and self.cache_mode == "none":
            raise ValueError(f"`cache_refresh_steps={self.cache_refresh_steps}` needs a cache: set `use_cache` to "
                             f"'prefix' or 'dual', or leave `cache_refresh_steps` at None.")

    @property
    def cache_mode(self) -> str:
        """`use_cache` as one of `CACHE_MODES` (`None` and `False` read as `"none"`)."""
        return self.use_cache or "none"

    def _validate_token_ids(self) -> None:
        for name in ("mask_token_id", "pad_token_id", "bos_token_id"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):
                raise ValueError(f"`{name}` must be None or a non-negative integer token id, got {value!r}.")
        _check_token_list("eos_token_id", self.eos_token_id, allow_int=True)
        _check_token_list("stop_token_ids", self.stop_token_ids)
        _check_token_list("suppress_tokens", self.suppress_tokens)
        mask = self.mask_token_id
        if mask is not None and mask == self.pad_token_id:
            raise ValueError(f"`pad_token_id` and `mask_token_id` are both {mask}: padding would read as masked "
                             f"positions. Use a different pad token.")
        if mask is not None and mask in self.stop_ids:
            raise ValueError(f"The mask token {mask} is among the stop tokens {self.stop_ids}; it is never generated.")

    @property
    def stop_ids(self) -> list[int]:
        """The stop tokens: `eos_token_id` then `stop_token_ids`, without repeats."""
        return list(dict.fromkeys(_as_list(self.eos_token_id) + _as_list(self.stop_token_ids)))

    @classmethod
    def from_model_config(cls, model_config) -> "ILLaDAGenerationConfig":
        """The defaults with the special token ids of a model config (an `ILLaDAConfig` or its dict)."""
        get = model_config.get if isinstance(model_config, dict) else lambda key: getattr(model_config, key, None)
        return cls(mask_token_id=get("mask_token_id"), eos_token_id=get("eos_token_id"),
                   pad_token_id=get("pad_token_id"), bos_token_id=get("bos_token_id"), _from_model_config=True)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "ILLaDAGenerationConfig":
        """Like [`GenerationConfig.from_dict`]; the autoregressive keys of a stock generation_config.json (e.g.
        `do_sample`, `top_p`) are dropped, and logged when they are set."""
        config_dict = {**config_dict, **kwargs}
        return_unused_kwargs = config_dict.pop("return_unused_kwargs", False)
        for key in ("_from_auto", "_from_pipeline"):
            config_dict.pop(key, None)
        stock_defaults = GenerationConfig().to_dict()
        ignored = {k: config_dict.pop(k) for k in list(config_dict)
                   if k in stock_defaults and k not in SETTINGS and k not in _METADATA_KEYS}
        if isinstance(config_dict.get("use_cache"), bool):  # a stock file's autoregressive flag, not a cache mode
            ignored["use_cache"] = config_dict.pop("use_cache")
        ignored_set = {k: v for k, v in ignored.items() if v != stock_defaults[k]}
        if ignored_set:
            logger.warning(f"Ignoring autoregressive generation options that diffusion decoding does not use: "
                           f"{ignored_set}.")
        config = cls(**config_dict)
        return (config, {}) if return_unused_kwargs else config

    def to_diff_dict(self) -> dict:
        """Every setting: a saved generation_config.json decodes the same way even if the defaults change."""
        return self.to_dict()

    def get_generation_mode(self, *args, **kwargs):
        raise NotImplementedError("iLLaDA generates by diffusion; there is no autoregressive generation mode.")


# The settings, in the order of `ILLaDAGenerationConfig.__init__`.
SETTINGS = tuple(name for name, parameter in inspect.signature(ILLaDAGenerationConfig.__init__).parameters.items()
                 if name != "self" and parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _check_stop_token_bias(spec) -> None:
    if spec is None:
        return
    if not isinstance(spec, dict) or not {"token_ids", "slope"} <= set(spec) or not set(spec) <= _STOP_BIAS_KEYS:
        raise ValueError(f"`stop_token_bias` must be None or a dict with keys `token_ids` and `slope` and optionally "
                         f"`start` and `max_bias`, got {spec!r}.")
    _check_token_list("stop_token_bias['token_ids']", spec["token_ids"])
    if not spec["token_ids"]:
        raise ValueError("`stop_token_bias['token_ids']` must name at least one token.")
    if not _is_number(spec["slope"]) or spec["slope"] <= 0:
        raise ValueError(f"`stop_token_bias['slope']` must be a number > 0, got {spec['slope']!r}.")
    start = spec.get("start", 0)
    if not _is_int(start) or start < 0:
        raise ValueError(f"`stop_token_bias['start']` must be an integer >= 0, got {start!r}.")
    max_bias = spec.get("max_bias")
    if max_bias is not None and (not _is_number(max_bias) or max_bias <= 0):
        raise ValueError(f"`stop_token_bias['max_bias']` must be None or a number > 0, got {max_bias!r}.")


def _unknown_names_message(where: str, names: list[str]) -> str:
    stock = GenerationConfig().to_dict()
    parts = []
    for name in names:
        if name in stock:
            parts.append(f"`{name}` is an autoregressive option that diffusion decoding does not use")
            continue
        close = difflib.get_close_matches(name, SETTINGS, n=1)
        parts.append(f"`{name}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    return (f"{where} got unexpected keyword argument(s): {'; '.join(parts)}. Allowed settings: "
            f"{', '.join(SETTINGS)}.")


@dataclass
class ILLaDAGenerateOutput(ModelOutput):
    """Output of [`ILLaDAGenerationMixin.generate`] with `return_dict_in_generate=True`.

    Args:
        sequences (`torch.LongTensor` of shape `(batch_size, prompt_len + answer_len)`): Prompt (as given, left
            padding included) and answer, cut after the first stop token; shorter answers end in the pad id.
        nfe (`int`): Number of function evaluations: forward passes of the model (a guided step counts once).
        history (`torch.LongTensor` of shape `(batch_size, prompt_len + answer_len)`, *optional*): With
            `output_history=True`, the step (0 to `nfe - 1`) at which each generated position was committed;
            `-1` for the prompt and for positions after the end of an answer.
    """

    sequences: torch.LongTensor | None = None
    nfe: int | None = None
    history: torch.LongTensor | None = None


# --------------------------------------------------------------------------------------------- sampler steps


def steps_in_block(num_tokens: int, steps: int | None, tokens_per_step: int | None) -> int:
    """Forward passes spent on a block of `num_tokens` masks: `steps` (at most one per token), `ceil(num_tokens /
    tokens_per_step)`, or one per token by default (ILLADA.md §4: the paper's steps are not published)."""
    if steps is not None:
        return min(steps, num_tokens)
    if tokens_per_step is not None:
        return -(-num_tokens // tokens_per_step)
    return num_tokens


def transfer_schedule(num_tokens: int, steps: int) -> list[int]:
    """Tokens to commit at each of `steps` steps for a block of `num_tokens` masks.

    LLaDA (arXiv 2502.09992, Eq. (8) and `get_num_transfer_tokens`): the linear noise schedule unmasks the same
    expected number of tokens per step, so each step gets `num_tokens // steps`, and the first
    `num_tokens % steps` steps one more. Example: 10 tokens in 4 steps -> `[3, 3, 2, 2]`.
    """
    base, extra = divmod(num_tokens, steps)
    return [base + (step < extra) for step in range(steps)]


def denoiser_logits(
    model,
    tokens: torch.LongTensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.LongTensor | None,
    start: int,
    end: int,
) -> torch.Tensor:
    """The one model call of a denoising step: logits `(rows, end - start, vocab)` of canvas columns `start:end`.

    Only the block's positions go through the LM head (`logits_to_keep`): over a 155k vocabulary, logits of the
    whole canvas are the largest waste of a naive sampler. With `use_cache`, `_BlockCache.logits` replaces it.
    """
    keep = torch.arange(start, end, device=tokens.device)
    return model(input_ids=tokens, attention_mask=attention_mask, position_ids=position_ids,
                 logits_to_keep=keep).logits


def guided_logits(conditional: torch.Tensor, unconditional: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Unsupervised classifier-free guidance (LLaDA App. B.3, after Nie et al. 2024): `u + (s + 1) (c - u)`."""
    return unconditional + (cfg_scale + 1) * (conditional - unconditional)


def stop_bias_values(offsets: torch.Tensor, spec: dict) -> torch.Tensor:
    """Bias `min(max_bias, slope * max(0, i - start))` for answer positions `offsets` `(n,)` (float32).

    The iLLaDA paper raises the stop-thinking token's probability gradually with the generated length; this
    linear ramp is our (configurable) choice, as the paper does not publish its schedule.
    """
    bias = spec["slope"] * (offsets - spec.get("start", 0)).clamp(min=0).float()
    return bias if spec.get("max_bias") is None else bias.clamp(max=spec["max_bias"])


def constrain_logits(logits: torch.Tensor, config: ILLaDAGenerationConfig, offsets: torch.Tensor) -> torch.Tensor:
    """Applies the stop-token bias, `suppress_tokens` and the mask ban to block logits `(rows, n, vocab)` in place.

    The mask token gets `-inf`: it is an input symbol, never an answer (ILLADA.md §2). Suppression sets the logit
    itself (not only the confidence), so a suppressed token can be neither proposed nor committed (LLaDA issue 137).
    """
    if config.stop_token_bias is not None:
        ids = torch.tensor(config.stop_token_bias["token_ids"], device=logits.device)
        logits[..., ids] += stop_bias_values(offsets, config.stop_token_bias).to(logits.device)[None, :, None]
    if config.suppress_tokens:
        logits[..., torch.tensor(config.suppress_tokens, device=logits.device)] = -math.inf
    logits[..., config.mask_token_id] = -math.inf
    return logits


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    noise_device = generator.device if generator is not None else device
    return torch.rand(shape, dtype=NOISE_DTYPE, generator=generator, device=noise_device).to(device)


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Proposed tokens `x0` `(rows, n)`: the argmax, or at `temperature > 0` a draw from `softmax(logits / T)`.

    Gumbel-max in float64 on the block only (LLaDA `add_gumbel_noise`, arXiv 2409.02908): `argmax(l + T * g)` with
    `g = -log(-log u)`, the log of LLaDA's `exp(l) / (-log u)^T` (same argmax, no overflow). Draws one
    `(rows, n, vocab)` float64 uniform tensor.
    """
    if temperature == 0:
        return logits.argmax(-1)
    gumbel = -torch.log(-torch.log(_uniform(logits.shape, generator, logits.device)))
    return (logits.to(NOISE_DTYPE) + temperature * gumbel).argmax(-1)


def confidence_scores(
    logits: torch.Tensor, x0: torch.Tensor, remasking: str, generator: torch.Generator | None
) -> torch.Tensor:
    """Score `(rows, n)` (float64) of committing `x0` at each position; higher is committed first.

    `low_confidence`: `softmax(logits)[x0]` (LLaDA). `random`: `U(0, 1)` (LLaDA; draws a `(rows, n)` float64
    tensor). `margin`: top-1 minus top-2 probability; `entropy`: `exp(-H(softmax(logits)))` (Dream's margin and
    entropy confidences, arXiv 2508.15487, with entropy mapped into (0, 1] so that `threshold` applies to it too).
    """
    if remasking == "random":
        return _uniform(x0.shape, generator, x0.device)
    probs = logits.softmax(-1)
    if remasking == "low_confidence":
        score = probs.gather(-1, x0[..., None]).squeeze(-1)
    elif remasking == "margin":
        top2 = probs.topk(2, dim=-1).values
        score = top2[..., 0] - top2[..., 1]
    else:
        score = torch.exp(-torch.special.entr(probs).sum(-1))
    return score.to(NOISE_DTYPE)


def select_commits(
    scores: torch.Tensor, masked: torch.Tensor, num_tokens: int, threshold: float | None
) -> torch.Tensor:
    """Which positions `(rows, n)` to commit: the `k` best-scored masked ones of each row, vectorised.

    `k = num_tokens` (the schedule), raised with a `threshold` to the number of masked positions scoring at least
    `threshold` (Fast-dLLM's parallel decoding, which always commits at least the top one), and capped by the
    masks left. Ties go to the leftmost position.
    """
    scores = scores.masked_fill(~masked, -math.inf)
    remaining = masked.sum(-1)  # [rows]
    count = torch.full_like(remaining, num_tokens)
    if threshold is not None:
        count = torch.maximum(count, (scores >= threshold).sum(-1))
    count = torch.minimum(count, remaining)
    order = scores.argsort(dim=-1, descending=True, stable=True)
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return (rank < count[:, None]) & masked


def cut_after_stop(
    answers: torch.Tensor, stop_ids: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replaces everything after the first stop token of each row by `pad_token_id`.

    Returns the cut answers `(batch, n)` and each answer's length `(batch,)` (through its first stop token, or `n`).
    """
    is_stop = torch.isin(answers, stop_ids)
    after_stop = (is_stop.cumsum(-1) - is_stop.long()) > 0
    lengths = answers.shape[1] - after_stop.sum(-1)
    return answers.masked_fill(after_stop, pad_token_id), lengths


# --------------------------------------------------------------------------------------------- sampler loop


@dataclass
class _Canvas:
    """The batch being decoded: prompt columns `[0, prompt_width)`, then `max_new_tokens` answer columns."""

    tokens: torch.Tensor  # [B, T] prompt, then masks / committed tokens
    attention_mask: torch.Tensor | None  # [B, T]; None when no row is padded
    position_ids: torch.Tensor | None  # [B, T] counted from each row's first real token; None without padding
    prompt_width: int
    finished: torch.Tensor  # [B] rows whose answer holds a stop token
    history: torch.Tensor | None  # [B, T] step at which each position was committed
    nfe: int = 0


def _make_canvas(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 config: ILLaDAGenerationConfig) -> _Canvas:
    batch, width = input_ids.shape
    answer = torch.full((batch, config.max_new_tokens), config.mask_token_id, dtype=torch.long,
                        device=input_ids.device)
    tokens = torch.cat([input_ids.long(), answer], dim=1)
    mask = position_ids = None
    if attention_mask is not None and not attention_mask.bool().all():
        mask = torch.cat([attention_mask.long(), torch.ones_like(answer)], dim=1)
        # One document per row for the model's packed-sequence logic: padding restarts at 0, real tokens count on.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    history = torch.full_like(tokens, NOT_GENERATED) if config.output_history else None
    finished = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
    return _Canvas(tokens, mask, position_ids, width, finished, history)


def _step_logits(model, canvas: _Canvas, rows: torch.Tensor, visible: int, start: int, end: int,
                 config: ILLaDAGenerationConfig, cache: "_BlockCache | None", step: int) -> torch.Tensor:
    """Constrained float32 logits `(len(rows), end - start, vocab)` of one step, guided when `cfg_scale > 0`.

    With CFG, the conditional and unconditional canvases run as one doubled batch (and share one cache).
    """
    tokens = canvas.tokens[rows, :visible]
    mask = None if canvas.attention_mask is None else canvas.attention_mask[rows, :visible]
    positions = None if canvas.position_ids is None else canvas.position_ids[rows, :visible]
    if config.cfg_scale > 0:
        unconditional = tokens.clone()
        unconditional[:, : canvas.prompt_width] = config.mask_token_id
        tokens = torch.cat([tokens, unconditional])
        mask = None if mask is None else torch.cat([mask, mask])
        positions = None if positions is None else torch.cat([positions, positions])
    if cache is None:
        logits = denoiser_logits(model, tokens, mask, positions, start, end).float()
    else:
        logits = cache.logits(model, rows, tokens, mask, positions, start, end, step).float()
    if config.cfg_scale > 0:
        logits = guided_logits(*logits.chunk(2), config.cfg_scale)
    offsets = torch.arange(start - canvas.prompt_width, end - canvas.prompt_width, device=logits.device)
    return constrain_logits(logits, config, offsets)


def _report_step(canvas: _Canvas, rows: torch.Tensor, logits: torch.Tensor, visible: int,
                 callback: StepCallback | None) -> None:
    if callback is None:
        return
    full = logits
    if rows.numel() != canvas.tokens.shape[0]:
        full = logits.new_full((canvas.tokens.shape[0], *logits.shape[1:]), math.nan)
        full[rows] = logits
    callback(canvas.nfe - 1, canvas.tokens[:, :visible].clone(), full)


def undecided_positions(block: torch.Tensor, mask_token_id: int, stop_ids: torch.Tensor | None) -> torch.Tensor:
    """Positions `(batch, n)` of a block still to decode: its masks, or with `stop_ids` (`skip_after_stop`) only the
    masks before the block's first committed stop token."""
    masked = block == mask_token_id
    if stop_ids is None:
        return masked
    return masked & (torch.isin(block, stop_ids).cumsum(-1) == 0)


def _denoise_block(model, canvas: _Canvas, start: int, end: int, visible: int, config: ILLaDAGenerationConfig,
                   generator: torch.Generator | None, callback: StepCallback | None,
                   cache: "_BlockCache | None" = None, skip_after: torch.Tensor | None = None) -> None:
    """Decodes canvas columns `start:end` of the unfinished rows (LLaDA Alg. 5, one block), seeing `:visible`.

    Per step: logits of the rows with positions left to decode, proposals `x0`, scores, top-`k` commits. Random
    draws per step, in order: the Gumbel noise `(rows, n, vocab)` if `temperature > 0`, then the `random` scores
    `(rows, n)`; `rows` are the active rows in batch order. `skip_after` holds the stop ids with `skip_after_stop`.
    """
    schedule = transfer_schedule(end - start, steps_in_block(end - start, config.steps, config.tokens_per_step))
    for step, num_tokens in enumerate(schedule):
        masked = undecided_positions(canvas.tokens[:, start:end], config.mask_token_id, skip_after)  # [B, n]
        rows = (masked.any(-1) & ~canvas.finished).nonzero().squeeze(-1)
        if rows.numel() == 0:  # threshold decoding or `skip_after_stop` finished the block early
            return
        logits = _step_logits(model, canvas, rows, visible, start, end, config, cache, step)  # [r, n, V]
        x0 = sample_tokens(logits, config.temperature, generator)
        scores = confidence_scores(logits, x0, config.remasking, generator)
        commit = select_commits(scores, masked[rows], num_tokens, config.threshold)
        canvas.tokens[rows, start:end] = torch.where(commit, x0, canvas.tokens[rows, start:end])
        if canvas.history is not None:
            canvas.history[rows, start:end] = canvas.history[rows, start:end].masked_fill(commit, canvas.nfe)
        canvas.nfe += 1
        _report_step(canvas, rows, logits, visible, callback)


def _close_block(canvas: _Canvas, start: int, end: int, stop_ids: torch.Tensor, pad_token_id: int,
                 streamer: BaseStreamer | None) -> None:
    """After a block: streams it, and finishes the rows whose block holds a stop token (iLLaDA paper, variable-length
    generation: stop once the decoded block contains EOS); their later columns become padding."""
    block = canvas.tokens[:, start:end]
    if streamer is not None and not canvas.finished[0]:
        cut, length = cut_after_stop(block, stop_ids, pad_token_id)
        streamer.put(cut[0, : int(length[0])].cpu())
    stopped = torch.isin(block, stop_ids).any(-1) & ~canvas.finished
    canvas.finished |= stopped
    canvas.tokens[:, end:] = canvas.tokens[:, end:].masked_fill(stopped[:, None], pad_token_id)


def _finish(canvas: _Canvas, generated: int, stop_ids: torch.Tensor, pad_token_id: int,
            config: ILLaDAGenerationConfig) -> torch.Tensor | ILLaDAGenerateOutput:
    """Cuts answers after their first stop token and trims columns that no row uses."""
    prompt_width = canvas.prompt_width
    answers, lengths = cut_after_stop(canvas.tokens[:, prompt_width : prompt_width + generated], stop_ids,
                                      pad_token_id)
    width = prompt_width + int(lengths.max()) if lengths.numel() else prompt_width
    sequences = torch.cat([canvas.tokens[:, :prompt_width], answers], dim=1)[:, :width]
    if not config.return_dict_in_generate:
        return sequences
    history = None
    if canvas.history is not None:
        after_end = torch.arange(width, device=sequences.device) >= prompt_width + lengths[:, None]
        history = canvas.history[:, :width].masked_fill(after_end, NOT_GENERATED)
    return ILLaDAGenerateOutput(sequences=sequences, nfe=canvas.nfe, history=history)


# --------------------------------------------------------------------------------------------- key-value cache


@dataclass
class _BlockCache:
    """The key-value cache of the steps of a block: Fast-dLLM's prefix and dual caches (arXiv 2505.22618, Sec. 3.2).

    A refresh (the first step of a block, and every `refresh_steps`-th step if set) runs the model on the whole
    visible canvas and stores every layer's keys and values; the other steps run it only on the span
    `start:visible` (`"prefix"`) or `start:end` (`"dual"`) and read the rest from the store. Rows only leave a
    block (their masks run out), so the store is narrowed to the rows still decoding, never widened.
    """

    mode: str  # "prefix" or "dual"
    refresh_steps: int | None
    kv: DiffusionKVCache
    rows: torch.Tensor | None = None  # [r] batch rows of the stored keys and values, in batch order

    def logits(self, model, rows: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None,
               positions: torch.Tensor | None, start: int, end: int, step: int) -> torch.Tensor:
        """Logits `(tokens.shape[0], end - start, vocab)` of canvas columns `start:end`, as [`denoiser_logits`].

        `tokens` `(batch, visible)` holds the canvases of `rows` (twice, conditional then unconditional, with CFG).
        """
        if step == 0 or (self.refresh_steps is not None and step % self.refresh_steps == 0):
            self.kv.span, self.rows = None, rows
            keep = torch.arange(start, end, device=tokens.device)
            return model(input_ids=tokens, attention_mask=mask, position_ids=positions, logits_to_keep=keep,
                         kv_cache=self.kv).logits
        self._narrow(rows, tokens.shape[0])
        span_end = end if self.mode == "dual" else tokens.shape[1]
        self.kv.span = (start, span_end)
        keep = torch.arange(end - start, device=tokens.device)
        return model(input_ids=tokens[:, start:span_end], attention_mask=mask,
                     position_ids=None if positions is None else positions[:, start:span_end],
                     logits_to_keep=keep, kv_cache=self.kv).logits

    def _narrow(self, rows: torch.Tensor, batch: int) -> None:
        """Keeps the stored keys and values of `rows` only (a subset of the stored rows)."""
        if rows.numel() == self.rows.numel():
            return
        index = torch.searchsorted(self.rows, rows)
        if batch == 2 * rows.numel():  # CFG: the unconditional copies follow the conditional ones
            index = torch.cat([index, index + self.rows.numel()])
        for layer in self.kv.keys:
            self.kv.keys[layer] = self.kv.keys[layer][index]
            self.kv.values[layer] = self.kv.values[layer][index]
        self.rows = rows


def _make_block_cache(config: ILLaDAGenerationConfig) -> _BlockCache | None:
    if config.cache_mode == "none":
        return None
    return _BlockCache(config.cache_mode, config.cache_refresh_steps, DiffusionKVCache())


# --------------------------------------------------------------------------------------------- entry point


class ILLaDAGenerationMixin:
    """Mixed into `ILLaDAForCausalLM`: a diffusion `generate`, configured by [`ILLaDAGenerationConfig`].

    Deliberately not a `transformers.GenerationMixin`: none of the autoregressive machinery applies.
    """

    generation_config_class = ILLaDAGenerationConfig

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        generation_config: ILLaDAGenerationConfig | None = None,
        *,
        streamer: BaseStreamer | None = None,
        step_callback: StepCallback | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        **kwargs,
    ) -> torch.LongTensor | ILLaDAGenerateOutput:
        """Generates answers by masked diffusion (see the module docstring for the algorithm).

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, prompt_len)`): Prompts, left-padded. May have zero
                columns for unconditional generation.
            attention_mask (`torch.Tensor` of shape `(batch_size, prompt_len)`, *optional*): 1 for tokens, 0 for
                the left padding. Positions are counted from each row's first token, so a padded row decodes as
                it would alone.
            generation_config ([`ILLaDAGenerationConfig`], *optional*): Defaults to `self.generation_config`.
            streamer (`BaseStreamer`, *optional*): Receives the prompt, then each block once it is decoded (cut
                after a stop token); then `end()`. Batch size 1 only.
            step_callback (`Callable[[int, Tensor, Tensor], None]`, *optional*): Called after every step with the
                step index, the canvas `(batch_size, visible_len)` and the constrained logits of the block
                `(batch_size, block_len, vocab)` (NaN for rows not computed in that step).
            generator (`torch.Generator`, *optional*): Source of the sampling noise (`temperature > 0`,
                `remasking="random"`). At temperature 0 with a model-based score, results do not depend on it.
            progress (`bool`, *optional*, defaults to `False`): Show a tqdm bar over blocks.
            **kwargs: Any [`ILLaDAGenerationConfig`] setting, overriding `generation_config` for this call. For
                speed: `threshold=0.9` (parallel decoding) and `use_cache="prefix"` or `"dual"` (a key-value cache
                that is an approximation in this bidirectional model; `cache_refresh_steps=1` makes it exact).

        Returns:
            `torch.LongTensor` of shape `(batch_size, prompt_len + answer_len)` (prompt, then answers cut after
            their first stop token and padded with the pad id), or an [`ILLaDAGenerateOutput`] with
            `return_dict_in_generate=True`.

        Raises:
            TypeError: an unknown keyword argument, or inputs of the wrong type.
            ValueError: bad settings or inputs (checked before the first forward pass).

        Example:

        ```python
        >>> out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=64, block_length=32)
        >>> tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
        ```
        """
        config = self._prepare_generation_config(generation_config, kwargs)
        input_ids, attention_mask = self._check_generate_inputs(input_ids, attention_mask, config, streamer)
        _check_hooks(step_callback, generator, progress)
        if streamer is not None:
            streamer.put(input_ids.cpu())
        canvas = _make_canvas(input_ids, attention_mask, config)
        stop_ids = torch.tensor(config.stop_ids, dtype=torch.long, device=input_ids.device)
        generated = self._run_blocks(canvas, config, stop_ids, generator, step_callback, streamer, progress)
        if streamer is not None:
            streamer.end()
        return _finish(canvas, generated, stop_ids, config.pad_token_id, config)

    def _run_blocks(self, canvas: _Canvas, config: ILLaDAGenerationConfig, stop_ids: torch.Tensor,
                    generator: torch.Generator | None, step_callback: StepCallback | None,
                    streamer: BaseStreamer | None, progress: bool) -> int:
        """The block loop; returns the number of answer columns decoded."""
        prompt_width, budget = canvas.prompt_width, config.max_new_tokens
        starts = range(0, budget, config.block_length)
        cache = _make_block_cache(config)
        end = 0
        for block_start in tqdm(starts, desc="iLLaDA blocks", disable=not progress):
            end = min(block_start + config.block_length, budget)
            visible = prompt_width + (end if config.canvas == "variable" else budget)
            _denoise_block(self, canvas, prompt_width + block_start, prompt_width + end, visible, config,
                           generator, step_callback, cache, stop_ids if config.skip_after_stop else None)
            _close_block(canvas, prompt_width + block_start, prompt_width + end, stop_ids, config.pad_token_id,
                         streamer)
            if canvas.finished.all():
                break
        return end

    def _prepare_generation_config(self, generation_config, kwargs: dict) -> ILLaDAGenerationConfig:
        """`generation_config` (or the model's), copied, updated by `kwargs`, token ids filled from the model config."""
        if generation_config is None:
            generation_config = self.generation_config
        elif not _is_diffusion_config(generation_config):
            raise TypeError(
                f"`generation_config` must be an ILLaDAGenerationConfig, got {type(generation_config).__name__}. "
                f"Convert one with `ILLaDAGenerationConfig.from_dict(config.to_dict())` (autoregressive options are "
                f"dropped)."
            )
        unknown = sorted(set(kwargs) - set(SETTINGS))
        if unknown:
            raise TypeError(_unknown_names_message("generate()", unknown))
        # A copy in this module's class: the config may come from a checkout while the model is remote code.
        config = ILLaDAGenerationConfig.from_dict(generation_config.to_dict())
        config.update(**kwargs)
        defaults = {"mask_token_id": self.config.mask_token_id, "pad_token_id": self.config.pad_token_id,
                    "eos_token_id": self.config.eos_token_ids}
        config.update(**{name: value for name, value in defaults.items() if getattr(config, name) is None})
        self._check_config_against_model(config)
        return config

    def _check_config_against_model(self, config: ILLaDAGenerationConfig) -> None:
        vocab_size = self.config.vocab_size
        if config.mask_token_id is None:
            raise ValueError("No mask token: set `mask_token_id` in the model config or the generation config.")
        if config.pad_token_id is None:
            raise ValueError("No pad token to fill finished rows: set `pad_token_id` (any id but the mask's).")
        named = {"mask_token_id": [config.mask_token_id], "pad_token_id": [config.pad_token_id],
                 "eos_token_id / stop_token_ids": config.stop_ids, "suppress_tokens": config.suppress_tokens or []}
        if config.stop_token_bias is not None:
            named["stop_token_bias['token_ids']"] = config.stop_token_bias["token_ids"]
        for name, ids in named.items():
            bad = [t for t in ids if t >= vocab_size]
            if bad:
                raise ValueError(f"`{name}` holds ids {bad} outside the vocabulary [0, {vocab_size}).")
        if len(set(config.suppress_tokens or []) | {config.mask_token_id}) >= vocab_size:
            raise ValueError("`suppress_tokens` and the mask token cover the whole vocabulary: nothing can be "
                             "generated.")

    def _check_generate_inputs(self, input_ids, attention_mask, config: ILLaDAGenerationConfig,
                               streamer) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Checks prompts and mask before any forward pass; returns them on the model's device."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must be a 2-D tensor (batch_size, prompt_len), got "
                             f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)}.")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.shape[0] == 0:
            raise TypeError(f"`input_ids` must be a non-empty integer tensor, got {input_ids.dtype} with shape "
                            f"{tuple(input_ids.shape)}.")
        input_ids = input_ids.to(self.device)
        real = torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is not None:
            attention_mask = _check_attention_mask(attention_mask, input_ids).to(self.device)
            real = attention_mask.bool()
        _check_prompt_tokens(input_ids[real], config.mask_token_id, self.config.vocab_size)
        longest = int(real.sum(-1).max())
        if longest + config.max_new_tokens > self.config.max_position_embeddings:
            raise ValueError(
                f"The longest prompt ({longest} tokens) plus `max_new_tokens` ({config.max_new_tokens}) exceeds the "
                f"model's `max_position_embeddings` ({self.config.max_position_embeddings})."
            )
        if config.cfg_scale > 0 and (input_ids.shape[1] == 0 or not real.any(-1).all()):
            raise ValueError(f"`cfg_scale={config.cfg_scale}` needs a prompt in every row: classifier-free guidance "
                             f"contrasts the prompt with its masked copy. Set `cfg_scale=0` for empty prompts.")
        padded = attention_mask is not None and not real.all()
        if padded and config.cache_mode != "none" and self.config._attn_implementation.startswith("flash"):
            raise ValueError(f"`use_cache={config.use_cache!r}` with left padding needs `sdpa` or `eager` attention "
                             f"(the cached span forward takes a padding mask that flash attention cannot), got "
                             f"{self.config._attn_implementation!r}. Batch prompts of one length or load the model "
                             f"with `attn_implementation='sdpa'`.")
        if streamer is not None and input_ids.shape[0] != 1:
            raise ValueError(f"`streamer` supports batch size 1 only, got a batch of {input_ids.shape[0]}.")
        return input_ids, attention_mask

    def adjust_generation_fn(self, generation_config, from_auto_class, from_pipeline, pretrained_model_name_or_path,
                             trust_remote_code=None, **kwargs) -> None:
        """Called by `from_pretrained`: loads the folder's generation_config.json as an [`ILLaDAGenerationConfig`]
        (after transformers' `GenerationMixin.adjust_generation_fn`). Without the file, the defaults built from
        the model config stay."""
        if generation_config is not None:
            self.generation_config = ILLaDAGenerationConfig.from_dict(generation_config.to_dict())
            return
        if pretrained_model_name_or_path is None:
            return
        download = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")
        try:
            self.generation_config = self.generation_config_class.from_pretrained(
                pretrained_model_name_or_path, _from_auto=from_auto_class, _from_pipeline=from_pipeline,
                **{key: kwargs[key] for key in download if key in kwargs},
            )
        except OSError:
            logger.info("No generation_config.json found: using the defaults built from the model config.")


def _is_diffusion_config(config) -> bool:
    """An `ILLaDAGenerationConfig`, from this module or from another copy of it (Hub remote code, a checkout)."""
    return isinstance(config, GenerationConfig) and type(config).__name__ == ILLaDAGenerationConfig.__name__


def _check_attention_mask(attention_mask, input_ids: torch.Tensor) -> torch.Tensor:
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
        raise ValueError(f"`attention_mask` must be a tensor of the shape of `input_ids` {tuple(input_ids.shape)}, "
                         f"got {shape}.")
    if attention_mask.is_floating_point() or not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("`attention_mask` must hold only 0 (padding) and 1 (token), as an integer or bool tensor.")
    mask = attention_mask.long()
    if (mask[:, 1:] < mask[:, :-1]).any():
        raise ValueError("`attention_mask` shows right or inner padding: generate() needs left padding "
                         "(`tokenizer.padding_side = 'left'`), so that every answer starts in the same column.")
    return attention_mask


def _check_prompt_tokens(tokens: torch.Tensor, mask_token_id: int, vocab_size: int) -> None:
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"`input_ids` holds token ids outside the vocabulary [0, {vocab_size}).")
    if (tokens == mask_token_id).any():
        raise ValueError(
            f"The prompt contains the mask token {mask_token_id}. Prompts are never changed, so a masked prompt "
            f"position would never be filled; remove it (infilling is not supported by generate())."
        )


def _check_hooks(step_callback, generator, progress) -> None:
    if step_callback is not None and not callable(step_callback):
        raise TypeError(f"`step_callback` must be callable, got {type(step_callback).__name__}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}.")
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be True or False, got {progress!r}.")


__all__ = [
    "ILLaDAGenerationConfig",
    "ILLaDAGenerationMixin",
    "ILLaDAGenerateOutput",
    "transfer_schedule",
    "steps_in_block",
    "select_commits",
    "confidence_scores",
    "sample_tokens",
    "cut_after_stop",
    "undecided_positions",
]
