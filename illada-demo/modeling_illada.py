"""PyTorch iLLaDA: the bidirectional Transformer of "Improved Large Language Diffusion Models" (arXiv 2606.25331).

The network is Llama-shaped (pre-norm RMSNorm, SwiGLU, RoPE, grouped-query attention, no biases, tied
embeddings) with one difference that matters everywhere: attention is fully bidirectional. It predicts the
clean token at every masked position of a partially masked sequence; the diffusion time is never an input.
Sampling lives in `generation_illada.py`, the training loss in `illada/trainer.py`, strict loading in
`loading_illada.py`, the attention masks in `masks_illada.py`.
"""

import sys
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep

from .cache_illada import DiffusionKVCache
from .configuration_illada import ILLaDAConfig
from .generation_illada import ILLaDAGenerationMixin
from .loading_illada import StrictLoadingMixin
from .masks_illada import build_bidirectional_mask, build_span_mask, check_logits_to_keep
from .scoring_illada import ILLaDAScoringMixin
from .utils_illada import as_tag_list

# The model card tags of a pushed iLLaDA: the Hub lists it as a custom-code diffusion model for text generation.
MODEL_CARD_TAGS = ("illada", "diffusion", "masked-diffusion", "custom_code", "text-generation")
# iLLaDA's LoRA targets: every linear layer of the decoder (the seven that PEFT's `target_modules="all-linear"` picks).
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PEFT_LORA_TABLE = "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING"


def register_peft_targets() -> None:
    """Enters `model_type="illada"` in PEFT's default-target tables, so that an adapter config naming no targets
    (`LoraConfig(task_type="CAUSAL_LM")`, as PEFT's quick-start writes it) is completed as it is for Llama.

    PEFT fills such a config only from these public tables (`peft.utils.TRANSFORMERS_MODELS_TO_*_MAPPING`), keyed by
    `config.model_type`; it asks the model nothing. LoRA gets [`LORA_TARGET_MODULES`], every other method its Llama
    entry (iLLaDA's modules carry Llama's names). Entries already there are kept. Does nothing until PEFT is
    imported: it runs when this module is imported, in [`ILLaDAPreTrainedModel.add_adapter`] and in the trainers,
    so with PEFT imported only after the model is loaded, plain `get_peft_model` needs `target_modules`.
    """
    constants = sys.modules.get("peft.utils.constants")
    if constants is None:
        return
    for name, table in vars(constants).items():
        if name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(table, dict) and "llama" in table:
            table.setdefault("illada", list(LORA_TARGET_MODULES) if name == _PEFT_LORA_TABLE else table["llama"])


register_peft_targets()


class ILLaDARMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Normalise in float32, cast back, then scale (no +1 offset), as the release does.
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class ILLaDARotaryEmbedding(nn.Module):
    """RoPE as in Llama: `(cos, sin)` once per forward for all layers. `config.rope_parameters["rope_type"]` picks
    the plain RoPE of the release (`"default"`) or a context-extension scaling (`"linear"`, `"dynamic"`, `"yarn"`,
    `"llama3"`) computed by transformers' initialisers (`ROPE_INIT_FUNCTIONS`)."""

    def __init__(self, config: ILLaDAConfig) -> None:
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        # `dynamic_rope_update` goes back to these frequencies when a forward is shorter than the original context.
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: ILLaDAConfig, *args, **kwargs) -> tuple[torch.Tensor, float]:
        """The plain RoPE frequencies `1 / theta^(2i / head_dim)` and a post-scaling factor of 1."""
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), 1.0

    @torch.no_grad()
    @dynamic_rope_update  # `dynamic` RoPE: recomputes the frequencies for a forward past the original context
    def forward(self, hidden_states: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Angles in float32 whatever the model dtype: bf16 positions above 256 lose integer precision.
        inv_freq = self.inv_freq.to(device=hidden_states.device, dtype=torch.float32)
        freqs = position_ids[..., None].float() * inv_freq  # [B, L, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(hidden_states.dtype), sin.to(hidden_states.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotates half the hidden dims of the input (non-interleaved RoPE)."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Applies RoPE to `q`, `k` of shape `(batch, heads, seq_len, head_dim)`; `cos`/`sin` are `(batch, seq_len,
    head_dim)`."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class ILLaDAMLP(nn.Module):
    def __init__(self, config: ILLaDAConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq_len, head_dim) -> (batch, kv_heads * n_rep, seq_len, head_dim)."""
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention; `attention_mask` is additive, `(batch, 1|heads, q_len, k_len)`."""
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


class ILLaDAAttention(nn.Module):
    """Grouped-query self-attention, bidirectional (`is_causal = False`), kernel chosen by the attention interface."""

    def __init__(self, config: ILLaDAConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        # iLLaDA: bidirectional. The SDPA and flash integrations read this flag and default to causal without it.
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        kv_cache: "DiffusionKVCache | None" = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, *position_embeddings)
        if kv_cache is not None:
            key_states, value_states = kv_cache.update(self.layer_idx, key_states, value_states)

        # Looked up at every call, so that `model.set_attn_implementation(...)` switches the kernel at run time.
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            is_causal=False,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class ILLaDADecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: ILLaDAConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = ILLaDAAttention(config=config, layer_idx=layer_idx)
        self.mlp = ILLaDAMLP(config)
        self.input_layernorm = ILLaDARMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = ILLaDARMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the layer's output and its attention weights (`None` unless the kernel computes them: eager)."""
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, attn_weights = self.self_attn(hidden_states, position_embeddings, attention_mask, **kwargs)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states, attn_weights


class ILLaDAPreTrainedModel(StrictLoadingMixin, PreTrainedModel):
    """Weight init, strict loading (`StrictLoadingMixin`: a checkpoint that does not fill the model exactly is
    a `ValueError`; `from_pretrained(..., strict=False)` for transformers' lenient behaviour) and the checks every
    model runs on its config when it is built."""

    config_class = ILLaDAConfig
    config: ILLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ILLaDADecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: ILLaDAConfig, *inputs, **kwargs) -> None:
        # iLLaDA: a config edited after creation (`config.hidden_act = "gelu"`, a new `rope_parameters`) is checked
        # again here, with the errors of `ILLaDAConfig(...)`: no model is built from a config that would not reload.
        config.validate()
        super().__init__(config, *inputs, **kwargs)

    def _output_options(
        self, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None
    ) -> tuple[bool, bool, bool]:
        """The call's `output_attentions`, `output_hidden_states`, `return_dict`, each falling back to the config
        (as in transformers' models). Attention weights exist only where the kernel computes them."""
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        if output_attentions and config._attn_implementation != "eager":
            # transformers raises this for `config.output_attentions`, and only warns for the argument.
            raise ValueError(
                f"`output_attentions=True` is not supported with `attn_implementation="
                f"{config._attn_implementation!r}`, which does not compute attention weights: call "
                f'`model.set_attn_implementation("eager")` first.'
            )
        return bool(output_attentions), bool(output_hidden_states), bool(return_dict)

    def add_adapter(self, adapter_config, adapter_name: str | None = None) -> None:
        """transformers' PEFT integration; a config that names no targets gets iLLaDA's ([`register_peft_targets`])."""
        register_peft_targets()
        super().add_adapter(adapter_config, adapter_name)


class ILLaDAModel(ILLaDAPreTrainedModel):
    """The bidirectional Transformer backbone (embeddings, decoder layers, final norm)."""

    def __init__(self, config: ILLaDAConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(ILLaDADecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = ILLaDARMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = ILLaDARotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        kv_cache: DiffusionKVCache | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        """
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`): Token ids, masked positions holding
                `config.mask_token_id`. Give either this or `inputs_embeds`.
            attention_mask (`torch.Tensor`, *optional*): 2-D `(batch, seq_len)` key padding (1 = token,
                0 = padding), or a 3-D / 4-D boolean (True = attend) or additive mask. Never causal.
            position_ids (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*): Defaults to
                `arange(seq_len)`. A restart at 0 inside a row starts a new packed document: documents then
                attend only within themselves.
            inputs_embeds (`torch.Tensor` of shape `(batch, seq_len, hidden_size)`, *optional*).
            output_attentions (`bool`, *optional*): Also return every layer's attention weights `(batch, heads,
                seq_len, seq_len)`; needs eager attention. Defaults to `config.output_attentions`.
            output_hidden_states (`bool`, *optional*): Also return the input of every layer and the final output.
                Defaults to `config.output_hidden_states`.
            return_dict (`bool`, *optional*): `False` returns a tuple, as in transformers. Defaults to
                `config.return_dict`.
            kv_cache ([`DiffusionKVCache`], *optional*): With `kv_cache.span = None` the forward stores every
                layer's keys and values; with `kv_cache.span = (start, end)` the inputs are the canvas tokens
                `start:end` only, `position_ids` default to `arange(start, end)`, `attention_mask` is the 2-D
                padding mask of the whole canvas, and the rest of the canvas comes from the cache.
        """
        output_attentions, output_hidden_states, return_dict = self._output_options(
            output_attentions, output_hidden_states, return_dict
        )
        self._check_unsupported(kwargs, kv_cache)
        span = kv_cache.span if kv_cache is not None else None
        packed = position_ids is not None and span is None  # defaulted positions never hold packed documents
        inputs_embeds, position_ids = self._check_inputs(input_ids, inputs_embeds, position_ids, span, kv_cache)
        mask = self._attention_mask(attention_mask, position_ids, packed, inputs_embeds.dtype, kv_cache)
        if kv_cache is not None:
            kwargs["kv_cache"] = kv_cache
        if self.config._attn_implementation.startswith("flash") and mask is None and span is None:
            kwargs.setdefault("position_ids", position_ids)  # the flash kernel finds packed documents here
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for decoder_layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, attn_weights = decoder_layer(hidden_states, position_embeddings, mask, **kwargs)
            if output_attentions:
                all_attentions += (attn_weights,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        outputs = BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )
        return outputs if return_dict else outputs.to_tuple()

    def _check_unsupported(self, kwargs: dict, kv_cache: DiffusionKVCache | None) -> None:
        if kwargs.get("past_key_values") is not None:
            raise ValueError(
                "`past_key_values` is not supported: iLLaDA attends bidirectionally and keeps no "
                "autoregressive cache (PEFT prefix tuning needs one: use LoRA). See `kv_cache`."
            )
        if kv_cache is not None and self.rotary_emb.rope_type == "dynamic":
            raise ValueError(
                "A `kv_cache` cannot be used with `rope_type='dynamic'`: dynamic RoPE recomputes its frequencies "
                "from the length of each forward, so the cached keys and a span's queries would be rotated "
                "differently. Generate without `use_cache`, or use `linear`, `yarn` or `llama3` scaling."
            )

    def _attention_mask(
        self,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor,
        packed: bool,
        dtype: torch.dtype,
        kv_cache: DiffusionKVCache | None,
    ) -> torch.Tensor | None:
        implementation = self.config._attn_implementation
        if kv_cache is None or kv_cache.span is None:
            return build_bidirectional_mask(attention_mask, position_ids, dtype, implementation, packed=packed)
        return build_span_mask(attention_mask, kv_cache.span, kv_cache.seq_len, dtype, implementation)

    def _check_inputs(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        span: tuple[int, int] | None = None,
        kv_cache: DiffusionKVCache | None = None,
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"`input_ids` must be 2-D (batch_size, seq_len), got shape {tuple(input_ids.shape)}.")
            if input_ids.dtype.is_floating_point:
                raise TypeError(f"`input_ids` must be an integer tensor, got dtype {input_ids.dtype}.")
            inputs_embeds = self.embed_tokens(input_ids)
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"`inputs_embeds` must have shape (batch_size, seq_len, {self.config.hidden_size}), "
                f"got {tuple(inputs_embeds.shape)}."
            )
        batch_size, seq_len = inputs_embeds.shape[:2]
        first = 0 if span is None else self._check_span(span, seq_len, kv_cache)
        if position_ids is None:
            position_ids = torch.arange(first, first + seq_len, device=inputs_embeds.device).expand(batch_size, seq_len)
        else:
            if position_ids.dim() == 1:
                position_ids = position_ids[None]
            if (
                position_ids.dim() != 2
                or position_ids.shape[-1] != seq_len
                or position_ids.shape[0] not in (1, batch_size)
            ):
                raise ValueError(
                    f"`position_ids` must have shape (batch_size, seq_len) = {(batch_size, seq_len)} "
                    f"(or (1, seq_len)), got {tuple(position_ids.shape)}."
                )
            position_ids = position_ids.expand(batch_size, seq_len)
        return inputs_embeds, position_ids

    def _check_span(self, span: tuple[int, int], seq_len: int, kv_cache: DiffusionKVCache) -> int:
        start, end = span
        if len(kv_cache.keys) != self.config.num_hidden_layers:
            raise ValueError("The `kv_cache` is empty: run a forward with `kv_cache.span = None` on the canvas first.")
        if not 0 <= start < end <= kv_cache.seq_len or end - start != seq_len:
            raise ValueError(
                f"`kv_cache.span` {span} must satisfy 0 <= start < end <= {kv_cache.seq_len} (the cached canvas) "
                f"with end - start equal to the input length {seq_len}."
            )
        return start


class ILLaDAForCausalLM(ILLaDAGenerationMixin, ILLaDAScoringMixin, ILLaDAPreTrainedModel):
    """iLLaDA with its (tied) LM head: predicts the clean token at every position.

    The name is the one the released `config.json` points at; despite it, the model is not autoregressive.
    Use `model.generate(...)` for diffusion sampling and `DiffusionSFTTrainer` (illada/trainer.py) for training.

    Example:

    ```python
    >>> import torch
    >>> from configuration_illada import ILLaDAConfig
    >>> from modeling_illada import ILLaDAForCausalLM
    >>> config = ILLaDAConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...                       num_attention_heads=4, num_key_value_heads=2)
    >>> model = ILLaDAForCausalLM(config)
    >>> ids = torch.tensor([[7, 8, config.mask_token_id, 9]])
    >>> model(ids).logits.shape
    torch.Size([1, 4, 128])
    ```
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # Makes `save_pretrained` / `push_to_hub` copy the code files, so the folder loads with trust_remote_code.
    _auto_class = "AutoModelForCausalLM"

    def __init__(self, config: ILLaDAConfig) -> None:
        super().__init__(config)
        self.model = ILLaDAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput | tuple:
        """
        Args: as [`ILLaDAModel.forward`], plus
            logits_to_keep (`int` or `torch.Tensor`, *optional*, defaults to 0): which positions get logits:
                `0` all; an int `n > 0` the last `n`; a 1-D index tensor the same positions in every row; a 2-D
                boolean `(batch, seq_len)` mask the selected positions, flattened to `(num_selected, vocab)`.
                Computing the LM head only where it is needed is the largest saving for a 155k vocabulary.
            labels: not supported. A shifted autoregressive loss is wrong for this model and the
                masked-diffusion loss needs the diffusion time of each row: train with `DiffusionSFTTrainer`.

        Returns:
            [`~modeling_outputs.MaskedLMOutput`] with `logits` (float, model dtype) and the optional
            `hidden_states` and `attentions`; with `return_dict=False` the tuple of those that are set.
        """
        if labels is not None:
            raise ValueError(
                "`labels` is not supported by ILLaDAForCausalLM: iLLaDA is a masked diffusion model, and its loss "
                "needs the diffusion time of every row. Train with `illada.trainer.DiffusionSFTTrainer` (trl's "
                "SFTTrainer with the masked-diffusion loss) or use `illada.trainer.masked_diffusion_loss`."
            )
        output_attentions, output_hidden_states, return_dict = self._output_options(
            output_attentions, output_hidden_states, return_dict
        )
        inputs = input_ids if input_ids is not None else inputs_embeds
        if isinstance(inputs, torch.Tensor) and inputs.dim() >= 2:  # other inputs: the backbone's error
            logits_to_keep = check_logits_to_keep(logits_to_keep, *inputs.shape[:2])
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        outputs = MaskedLMOutput(
            logits=self.lm_head(hidden_states), hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return outputs if return_dict else outputs.to_tuple()

    def add_model_tags(self, tags: list[str] | str) -> None:
        """Refuses trl's trainers other than the diffusion one: they tag the model (`"trl"`) and then train
        next-token log-probabilities through their own LM head, bypassing `forward` and its `labels` check."""
        tags = [tags] if isinstance(tags, str) else list(tags)
        if "trl" in tags and "diffusion" not in tags:
            raise ValueError(
                f"trl's trainer (tags {tags}) would train iLLaDA with a next-token (autoregressive) loss, which is "
                "wrong for this masked diffusion model. Use `illada.trainer.DiffusionSFTTrainer` with "
                "`DiffusionSFTConfig` (drop-in for `SFTTrainer`/`SFTConfig`)."
            )
        super().add_model_tags(tags)

    def push_to_hub(self, *args, tags: list[str] | str | None = None, **kwargs):
        """transformers' `push_to_hub` (weights, config, generation config and every code file `trust_remote_code`
        loads, see `_auto_class`), with `MODEL_CARD_TAGS` added to the tags of the model card it writes when the
        repo has none, so that the Hub lists the model as custom code."""
        tags = list(dict.fromkeys([*MODEL_CARD_TAGS, *as_tag_list("tags", tags)]))
        return super().push_to_hub(*args, tags=tags, **kwargs)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs) -> dict:
        """The forward's inputs for a denoising step: the whole canvas, as given. Diffusion `generate` does not call
        this; PEFT's `PeftModelForCausalLM` (`task_type="CAUSAL_LM"`) requires a causal LM to have it."""
        return {"input_ids": input_ids, **kwargs}


__all__ = ["MODEL_CARD_TAGS", "ILLaDAPreTrainedModel", "ILLaDAModel", "ILLaDAForCausalLM", "DiffusionKVCache"]
