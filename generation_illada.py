"""The transformers face of iLLaDA's diffusion sampling: `ILLaDAForCausalLM.generate` and its inputs.

[`ILLaDAGenerationMixin.generate`] takes what transformers users habitually pass (a tensor, a `BatchEncoding` or a
dict of them; an [`ILLaDAGenerationConfig`] or a plain `transformers.GenerationConfig`; `do_sample`, `top_k`,
`top_p`, `num_return_sequences`, `max_length`, ...), builds one complete configuration per call (the checkpoint's
`generation_config.json`, overridden only by what the caller sets), checks everything before the first forward
pass, and hands over to the sampler. The text-generation `pipeline` works through it.

Layout: `generation_config_illada.py` holds the settings and their validation, `sampler_illada.py` the algorithm
(block-wise low-confidence remasking, variable-length canvas, guidance, threshold decoding, key-value cache).
"""

import json
from collections.abc import Mapping

import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging

from .generation_config_illada import ILLaDAGenerationConfig, split_generation_options
from .sampler_illada import ILLaDAGenerateOutput, StepCallback, run_sampler

logger = logging.get_logger(__name__)

# Keys of a tokenizer's output that generate() reads from a `BatchEncoding` / dict first argument; the others of
# this set are ignored (they mean nothing to a bidirectional model without segments).
_ENCODING_KEYS = ("input_ids", "attention_mask")
_IGNORED_ENCODING_KEYS = ("token_type_ids",)


class ILLaDAGenerationMixin:
    """Mixed into `ILLaDAForCausalLM`: a diffusion `generate`, configured by [`ILLaDAGenerationConfig`].

    Deliberately not a `transformers.GenerationMixin`: none of the autoregressive machinery applies.
    """

    generation_config_class = ILLaDAGenerationConfig
    # Read by transformers' pipelines (e.g. when printing one): this model writes text.
    output_modalities = ("text",)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | Mapping | None = None,
        attention_mask: torch.Tensor | None = None,
        generation_config: ILLaDAGenerationConfig | GenerationConfig | None = None,
        *,
        streamer: BaseStreamer | None = None,
        step_callback: StepCallback | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        **kwargs,
    ) -> torch.LongTensor | ILLaDAGenerateOutput:
        """Generates answers by masked diffusion (see `sampler_illada.py` for the algorithm).

        The settings are the model's `generation_config` (the checkpoint's generation_config.json), overridden by
        `generation_config` and then by `kwargs`: only what the caller sets changes.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, prompt_len)`, `BatchEncoding` or `dict`): Prompts,
                left-padded; or a tokenizer's output holding `input_ids` (and `attention_mask`), e.g.
                `tokenizer.apply_chat_template(..., return_tensors="pt", return_dict=True)`. May have zero columns
                (or be `None`, one row) for unconditional generation.
            attention_mask (`torch.Tensor` of shape `(batch_size, prompt_len)`, *optional*): 1 for tokens, 0 for
                the left padding. Positions are counted from each row's first token, so a padded row decodes as
                it would alone. Padding ids outside the vocabulary are read (and returned) as the pad id.
            generation_config ([`ILLaDAGenerationConfig`] or `transformers.GenerationConfig`, *optional*): An
                `ILLaDAGenerationConfig` replaces the model's. A plain `GenerationConfig` (e.g.
                `GenerationConfig.from_pretrained(folder)`) overrides the model's settings with the options it
                sets (its `to_diff_dict()`); the diffusion settings it lacks stay the model's.
            streamer (`BaseStreamer`, *optional*): Receives the prompt, then each block once it is decoded (cut
                after a stop token); then `end()`. Batch size 1 only.
            step_callback (`Callable[[int, Tensor, Tensor], None]`, *optional*): Called after every step with the
                step index, the canvas `(batch_size, visible_len)` and the constrained logits of the block
                `(batch_size, block_len, vocab)` (NaN for rows not computed in that step). With `draft_tokens`, once
                per forward: the canvas after its commits and the logits of the draft each row reached.
            generator (`torch.Generator`, *optional*): Source of the sampling noise (when sampling, and for
                `remasking="random"`). At temperature 0 with a model-based score, results do not depend on it.
            progress (`bool`, *optional*, defaults to `False`): Show a tqdm bar over blocks.
            **kwargs: Any [`ILLaDAGenerationConfig`] setting, overriding the config for this call (`do_sample`,
                `top_k`, `top_p`, `num_return_sequences` included); `max_length` (prompt width plus answer budget:
                sets `max_new_tokens`). For speed: `threshold=0.9` (parallel decoding) and `use_cache="prefix"` or
                `"dual"` (a key-value cache that is an approximation in this bidirectional model;
                `cache_refresh_steps=1` makes it exact). Options without a diffusion meaning (`num_beams=4`,
                `repetition_penalty=1.2`, ...) raise `TypeError`; at their neutral value (`num_beams=1`) they
                are accepted and change nothing.

        Returns:
            `torch.LongTensor` of shape `(batch_size * num_return_sequences, prompt_len + answer_len)` (prompt, then
            answers cut after their first stop token and padded with the pad id), or an [`ILLaDAGenerateOutput`]
            with `return_dict_in_generate=True` (adds `nfe`, `answer_lengths`, `stopped`, optionally `history`).

        Raises:
            TypeError: an unknown keyword argument, or inputs of the wrong type.
            ValueError: bad settings or inputs (checked before the first forward pass).

        Example:

        ```python
        >>> out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=64, block_length=32)
        >>> tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
        ```
        """
        _check_no_prompt_learning(self)
        input_ids, attention_mask = _unpack_inputs(input_ids, attention_mask)
        _check_input_ids(input_ids)
        config = self._prepare_generation_config(generation_config, kwargs, prompt_width=input_ids.shape[1])
        input_ids, attention_mask = self._check_generate_inputs(input_ids, attention_mask, config, streamer)
        _check_hooks(step_callback, generator, progress)
        if config.num_return_sequences > 1:
            input_ids = input_ids.repeat_interleave(config.num_return_sequences, dim=0)
            if attention_mask is not None:
                attention_mask = attention_mask.repeat_interleave(config.num_return_sequences, dim=0)
        return run_sampler(self, input_ids, attention_mask, config, generator, step_callback, streamer, progress)

    def resolve_generation_config(
        self, generation_config: ILLaDAGenerationConfig | GenerationConfig | None = None, **kwargs
    ) -> ILLaDAGenerationConfig:
        """The complete, validated settings that `generate(..., generation_config, **kwargs)` would use: the
        model's generation config overridden by the caller's options, every token id filled in (e.g. its
        `stop_ids` and `mask_token_id`). A demo or an evaluation harness reads them here instead of re-deriving.

        Raises:
            ValueError: a bad setting, or `max_length` (which needs the prompt: pass it to `generate`).
        """
        return self._prepare_generation_config(generation_config, kwargs)

    def _prepare_generation_config(
        self, generation_config, kwargs: dict, prompt_width: int | None = None
    ) -> ILLaDAGenerationConfig:
        """The call's complete settings: the model's generation config (or `generation_config`), copied, updated by
        the caller's options (`max_length` turned into `max_new_tokens` for a prompt of `prompt_width` columns),
        token ids filled from the model config; validated once, as the call will use them."""
        base, options = self.generation_config, {}
        if _is_diffusion_config(generation_config):
            base = generation_config
        elif isinstance(generation_config, GenerationConfig):  # a stock config: only what it sets overrides
            options = {
                k: v
                for k, v in generation_config.to_diff_dict().items()
                if k not in ("transformers_version", "_from_model_config", "_commit_hash")
            }
        elif generation_config is not None:
            raise TypeError(
                f"`generation_config` must be an ILLaDAGenerationConfig or a transformers "
                f"GenerationConfig, got {type(generation_config).__name__}."
            )
        config_settings, config_max_length = split_generation_options(options, "`generation_config`")
        call_settings, max_length = split_generation_options(kwargs, "generate()")
        if max_length is not None and "max_new_tokens" in call_settings:
            raise ValueError(
                f"Give `max_new_tokens` ({call_settings['max_new_tokens']}) or `max_length` ({max_length}), not both."
            )
        # The most specific length wins: the call's, then the stock config's (its max_new_tokens before its max_length).
        if max_length is None and "max_new_tokens" not in call_settings and "max_new_tokens" not in config_settings:
            max_length = config_max_length
            if max_length is None and prompt_width is not None:  # a checkpoint file's `max_length`
                max_length = getattr(base, "max_length", None)
        if max_length is not None:
            call_settings["max_new_tokens"] = _budget_from_max_length(max_length, prompt_width)
        # A copy in this module's class: the config may come from a checkout while the model is remote code.
        config = ILLaDAGenerationConfig.from_dict(base.to_dict())
        if max_length is not None:
            config.__dict__.pop("max_length", None)  # now the call's `max_new_tokens`
        try:
            config.update(**{**config_settings, **call_settings})
        except ValueError as error:
            if max_length is None or "`max_new_tokens`" not in str(error):
                raise
            raise ValueError(
                f"{error} (`max_new_tokens` is `max_length` ({max_length}) minus the prompt width ({prompt_width}).)"
            ) from None
        defaults = {
            "mask_token_id": self.config.mask_token_id,
            "pad_token_id": self.config.pad_token_id,
            "eos_token_id": self.config.eos_token_ids,
        }
        config.update(**{name: value for name, value in defaults.items() if getattr(config, name) is None})
        self._check_config_against_model(config)
        return config

    def _check_config_against_model(self, config: ILLaDAGenerationConfig) -> None:
        vocab_size = self.config.vocab_size
        if config.mask_token_id is None:
            raise ValueError("No mask token: set `mask_token_id` in the model config or the generation config.")
        if config.pad_token_id is None:
            raise ValueError("No pad token to fill finished rows: set `pad_token_id` (any id but the mask's).")
        named = {
            "mask_token_id": [config.mask_token_id],
            "pad_token_id": [config.pad_token_id],
            "eos_token_id / stop_token_ids": config.stop_ids,
            "suppress_tokens": config.suppress_tokens or [],
        }
        if config.stop_token_bias is not None:
            named["stop_token_bias['token_ids']"] = config.stop_token_bias["token_ids"]
        for name, ids in named.items():
            bad = [t for t in ids if t >= vocab_size]
            if bad:
                raise ValueError(f"`{name}` holds ids {bad} outside the vocabulary [0, {vocab_size}).")
        if len(set(config.suppress_tokens or []) | {config.mask_token_id}) >= vocab_size:
            raise ValueError(
                "`suppress_tokens` and the mask token cover the whole vocabulary: nothing can be generated."
            )

    def _check_generate_inputs(
        self, input_ids: torch.Tensor, attention_mask, config: ILLaDAGenerationConfig, streamer
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Checks prompts (already a 2-D integer tensor) and mask against the settings before any forward pass;
        returns them on the model's device."""
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
            raise ValueError(
                f"`cfg_scale={config.cfg_scale}` needs a prompt in every row: classifier-free guidance "
                f"contrasts the prompt with its masked copy. Set `cfg_scale=0` for empty prompts."
            )
        padded = attention_mask is not None and not real.all()
        if padded and config.use_cache != "none" and self.config._attn_implementation.startswith("flash"):
            raise ValueError(
                f"`use_cache={config.use_cache!r}` with left padding needs `sdpa` or `eager` attention "
                f"(the cached span forward takes a padding mask that flash attention cannot), got "
                f"{self.config._attn_implementation!r}. Batch prompts of one length or load the model "
                f"with `attn_implementation='sdpa'`."
            )
        if streamer is not None and input_ids.shape[0] * config.num_return_sequences != 1:
            raise ValueError(
                f"`streamer` supports one answer at a time, got a batch of {input_ids.shape[0]} with "
                f"`num_return_sequences={config.num_return_sequences}`."
            )
        return input_ids, attention_mask

    def adjust_generation_fn(
        self,
        generation_config,
        from_auto_class,
        from_pipeline,
        pretrained_model_name_or_path,
        trust_remote_code=None,
        **kwargs,
    ) -> None:
        """Called by `from_pretrained`: loads the folder's generation_config.json as an [`ILLaDAGenerationConfig`]
        (after transformers' `GenerationMixin.adjust_generation_fn`). Without the file, the defaults built from
        the model config stay; a file that is not valid JSON raises `ValueError` naming it."""
        if generation_config is not None:  # a stock config: only what it sets (its `max_length` default is 20)
            values = (
                generation_config.to_dict()
                if _is_diffusion_config(generation_config)
                else generation_config.to_diff_dict()
            )
            self.generation_config = ILLaDAGenerationConfig.from_dict(values)
            return
        if pretrained_model_name_or_path is None:
            return
        download = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")
        try:
            self.generation_config = self.generation_config_class.from_pretrained(
                pretrained_model_name_or_path,
                _from_auto=from_auto_class,
                _from_pipeline=from_pipeline,
                **{key: kwargs[key] for key in download if key in kwargs},
            )
        except OSError as error:
            if isinstance(error.__context__, (json.JSONDecodeError, UnicodeDecodeError)):
                raise ValueError(
                    f"The generation config of {pretrained_model_name_or_path} is not valid JSON "
                    f"({error}). Fix or delete generation_config.json; the model's generation "
                    f"settings would otherwise silently become the defaults."
                ) from error
            logger.info("No generation_config.json found: using the defaults built from the model config.")


def _unpack_inputs(inputs, attention_mask) -> tuple:
    """`input_ids` and `attention_mask` from a tensor, a `BatchEncoding` / dict (a tokenizer's output) or None."""
    if inputs is None:
        return torch.zeros(1, 0, dtype=torch.long), attention_mask
    if not isinstance(inputs, Mapping):
        return inputs, attention_mask
    if "input_ids" not in inputs:
        raise TypeError(
            f"The first argument of generate() is a {type(inputs).__name__} without `input_ids` (keys: "
            f"{sorted(inputs)}). Pass a tokenizer's output or the `input_ids` tensor."
        )
    extra = sorted(set(inputs) - set(_ENCODING_KEYS) - set(_IGNORED_ENCODING_KEYS))
    if extra:
        raise TypeError(
            f"The first argument of generate() holds keys {extra} that generate() does not take; it "
            f"reads {list(_ENCODING_KEYS)}."
        )
    if attention_mask is not None and "attention_mask" in inputs:
        raise TypeError("`attention_mask` is given twice: in the first argument and as a keyword. Give it once.")
    return inputs["input_ids"], inputs.get("attention_mask", attention_mask)


def _check_no_prompt_learning(model) -> None:
    """PEFT prompt learning (prompt, prefix or P-tuning) adds its virtual tokens in `generate` by swapping the model's
    `prepare_inputs_for_generation` for its own; diffusion sampling runs the whole canvas through `forward` and never
    calls it, so the adapter would be silently dropped."""
    if "prepare_inputs_for_generation" in vars(model):
        raise ValueError(
            "`prepare_inputs_for_generation` was replaced on this model (PEFT prompt learning: prompt, prefix or "
            "P-tuning), which has no effect on diffusion sampling: it runs the whole canvas through `forward`, so "
            "the adapter would be silently dropped; use LoRA adapters."
        )


def _check_input_ids(input_ids) -> None:
    """`input_ids` is a non-empty batch of integer ids: a 2-D tensor `(batch_size, prompt_len)`."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(
            f"`input_ids` must be a 2-D integer tensor (batch_size, prompt_len), a BatchEncoding or "
            f"a dict holding one, got {type(input_ids).__name__}."
        )
    if input_ids.dim() != 2:
        raise ValueError(
            f"`input_ids` must be a 2-D tensor (batch_size, prompt_len), got shape {tuple(input_ids.shape)}."
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"`input_ids` must be an integer tensor, got {input_ids.dtype}.")
    if input_ids.shape[0] == 0:
        raise ValueError(f"`input_ids` is an empty batch (shape {tuple(input_ids.shape)}): give at least one row.")


def _budget_from_max_length(max_length, prompt_width: int | None) -> int:
    """`max_length` (transformers: prompt plus answer) -> `max_new_tokens = max_length - prompt_width`."""
    if prompt_width is None:
        raise ValueError(f"`max_length` ({max_length!r}) depends on the prompt width; give `max_new_tokens` here.")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length <= prompt_width:
        raise ValueError(
            f"`max_length` ({max_length!r}) counts the prompt ({prompt_width} columns) and the answer, so "
            f"it must be an integer > {prompt_width}; or give `max_new_tokens`."
        )
    return max_length - prompt_width


def _is_diffusion_config(config) -> bool:
    """An `ILLaDAGenerationConfig`, from this module or from another copy of it (Hub remote code, a checkout)."""
    return isinstance(config, GenerationConfig) and type(config).__name__ == ILLaDAGenerationConfig.__name__


def _check_attention_mask(attention_mask, input_ids: torch.Tensor) -> torch.Tensor:
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
        raise ValueError(
            f"`attention_mask` must be a tensor of the shape of `input_ids` {tuple(input_ids.shape)}, got {shape}."
        )
    if attention_mask.is_floating_point() or not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("`attention_mask` must hold only 0 (padding) and 1 (token), as an integer or bool tensor.")
    mask = attention_mask.long()
    if (mask[:, 1:] < mask[:, :-1]).any():
        raise ValueError(
            "`attention_mask` shows right or inner padding: generate() needs left padding "
            "(`tokenizer.padding_side = 'left'`), so that every answer starts in the same column."
        )
    return attention_mask


def _check_prompt_tokens(tokens: torch.Tensor, mask_token_id: int, vocab_size: int) -> None:
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"`input_ids` holds token ids outside the vocabulary [0, {vocab_size}).")
    if (tokens == mask_token_id).any():
        raise ValueError(
            f"`input_ids` holds the mask token {mask_token_id} in a prompt position. Prompts are never changed, so a "
            f"masked prompt position would never be filled; remove it (infilling is not supported by generate())."
        )


def _check_hooks(step_callback, generator, progress) -> None:
    if step_callback is not None and not callable(step_callback):
        raise TypeError(f"`step_callback` must be callable, got {type(step_callback).__name__}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}.")
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be True or False, got {progress!r}.")


def __getattr__(name: str):
    # The text-generation pipeline lives in pipeline_illada.py and is imported on first use, so that `generate` (and
    # the GGUF runtime built on it) does not load transformers' pipelines. This line is also what makes
    # `save_pretrained` carry pipeline_illada.py, which the config's `custom_pipelines` reaches through this module.
    if name == "ILLaDATextGenerationPipeline":
        from .pipeline_illada import ILLaDATextGenerationPipeline

        return ILLaDATextGenerationPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ILLaDAGenerationMixin"]
