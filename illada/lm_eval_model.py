"""lm-evaluation-harness model `illada`: iLLaDA's multiple-choice scoring and diffusion generation.

Importing this module registers the name `illada` with lm-eval. `run_lm_eval.py` does that and then runs
the ordinary lm-eval command line, so every lm-eval option works:

    # multiple choice with the paper's confidence-based scoring (the default `method`)
    python run_lm_eval.py --model illada --tasks arc_challenge,hellaswag,piqa --batch_size 16 \\
        --model_args pretrained=GSAI-ML/iLLaDA-8B-Base,trust_remote_code=True,dtype=bfloat16
    # LLaDA's Monte-Carlo likelihood instead, with guidance
    python run_lm_eval.py --model illada --tasks piqa \\
        --model_args pretrained=GSAI-ML/iLLaDA-8B-Base,trust_remote_code=True,method=likelihood,mc_num=128,cfg_scale=0.5
    # generation: variable length, blocks of 32 until a stop token, at most 1024 new tokens (any setting not
    # given comes from the checkpoint's generation_config.json)
    python run_lm_eval.py --model illada --tasks gsm8k \\
        --model_args pretrained=GSAI-ML/iLLaDA-8B-Base,trust_remote_code=True,max_new_tokens=1024,block_length=32
    # a chat model: prompts in the tokenizer's chat template (few-shot examples as earlier turns)
    python run_lm_eval.py --model illada --tasks gsm8k --apply_chat_template --fewshot_as_multiturn \\
        --model_args pretrained=GSAI-ML/iLLaDA-8B-Instruct,trust_remote_code=True
    # the offline tasks shipped in eval_tasks/, on the demo model
    python run_lm_eval.py --model illada --device cpu --include_path eval_tasks \\
        --tasks illada_demo_gen,illada_demo_mc --apply_chat_template \\
        --model_args pretrained=illada-demo,trust_remote_code=True

`loglikelihood` returns, per request, the score of the chosen `method` and whether the continuation is what
greedy confidence decoding produces. `generate_until` calls the model's diffusion `generate` and cuts the
text at the first stop sequence.
"""

import inspect
import json
import logging
import sys
from collections.abc import Iterator

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedModel

from illada.generation_config_illada import NEUTRAL_OPTIONS, SETTINGS
from illada.scoring_illada import DEFAULT_MC_BATCH_SIZE, DEFAULT_MC_NUM, METHODS
from illada.utils import load_tokenizer, resolve_dtype
from illada.utils_illada import MAX_CFG_SCALE, check_choice, check_positive_int, check_range, is_int

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
# Generation settings the harness needs for itself: one sequence per request, not an output object.
_RESERVED_SETTINGS = ("return_dict_in_generate", "output_history", "num_return_sequences")


def truncate_at_stop(text: str, stop_sequences: list[str]) -> str:
    """Cuts `text` before the earliest occurrence of any of `stop_sequences`."""
    found = [text.find(stop) for stop in stop_sequences if stop]
    return text[: min((index for index in found if index >= 0), default=len(text))]


def _stop_sequences(until) -> list[str]:
    if until is None:
        return []
    if isinstance(until, str):
        return [until]
    if isinstance(until, (list, tuple)) and all(isinstance(stop, str) for stop in until):
        return list(until)
    raise ValueError(f"`until` must be a string or a list of strings, got {until!r}.")


def _settings_of(generation_config) -> set[str]:
    """The setting names of the model's own generation-config class (Hub code or a checkout)."""
    parameters = inspect.signature(type(generation_config).__init__).parameters.values()
    return {p.name for p in parameters if p.name != "self" and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}


def _check_generation_settings(model: PreTrainedModel, settings: dict, where: str) -> None:
    """Applies `settings` to a copy of the model's generation config, which raises on an unknown name or a bad
    value, so that a mistake shows before any request runs; `where` says where the settings came from."""
    config = model.generation_config
    unknown = sorted(set(settings) - (_settings_of(config) - set(_RESERVED_SETTINGS)))
    if unknown:
        known = sorted(_settings_of(config) - set(_RESERVED_SETTINGS))
        details = "; ".join(
            f"`{name}`"
            + (
                f" has no diffusion meaning (accepted at {NEUTRAL_OPTIONS[name]!r} only)"
                if name in NEUTRAL_OPTIONS
                else ""
            )
            for name in unknown
        )
        raise ValueError(
            f"Unknown {where} {unknown} for the `illada` model ({details}); the generation settings are {known}."
        )
    type(config).from_dict({**config.to_dict(), **settings})


@register_model("illada")
class ILLaDAEvalHarness(TemplateLM):
    """lm-eval model for iLLaDA (registered as `illada`).

    Generation settings come from the checkpoint's `generation_config.json`; only what is set overrides them:
    the task's `generation_kwargs` (and lm-eval's `--gen_kwargs`), then, above those, the model args below.

    Args:
        pretrained (`str` or `PreTrainedModel`): a checkpoint path or Hub id, or a loaded iLLaDA model.
        tokenizer (`str` or tokenizer, *optional*): defaults to the tokenizer saved with `pretrained`.
        method (`str`, *optional*, defaults to `"confidence"`): `loglikelihood` scoring, `"confidence"` (the
            iLLaDA paper's) or `"likelihood"` (LLaDA's Monte-Carlo ELBO).
        mc_num, mc_batch_size: see `ILLaDAScoringMixin.score_continuations` (`likelihood` only).
        cfg_scale (`float`, *optional*): classifier-free guidance of scoring and generation, in
            [0, `MAX_CFG_SCALE`]; defaults to the generation config's.
        check_greedy (`bool`, *optional*, defaults to `True`): fill `is_greedy`. Free with `confidence`; with
            `likelihood` it adds the confidence passes, and `False` reports `is_greedy=False` (as LLaDA does).
        batch_size (`int`, *optional*, defaults to 16): sequences per forward pass (scoring) or per `generate`.
        device (`str`, *optional*): defaults to `cuda` when available (lm-eval's `--device`, which itself
            defaults to `cuda:0`; without CUDA the CPU is used, with a warning).
        dtype (`str`, *optional*, defaults to `"auto"`): `auto`, `float32`, `bfloat16` or `float16`.
        trust_remote_code (`bool`, *optional*, defaults to `False`): passed to `from_pretrained`.
        add_bos_token (`bool`, *optional*, defaults to `False`): let the tokenizer add its special tokens (not to
            a text that already starts with the BOS token, as a chat-templated prompt does).
        enable_thinking (`bool`, *optional*): passed to the chat template (`--apply_chat_template`) when set.
        max_length (`int`, *optional*): longest prompt + continuation; prompts are cut from the left to fit.
            Defaults to `config.max_position_embeddings`.
        max_new_tokens (`int`, *optional*): generation budget, above the task's `max_gen_toks`; defaults to the
            task's, else the generation config's.
        seed (`int`, *optional*): seeds the Monte-Carlo mask draws and the sampling noise (otherwise torch's
            global generator).
        **generation_settings: any other setting of the model's generation config (`block_length`, `steps`,
            `temperature`, `threshold`, `use_cache`, ...), overriding the checkpoint's for every request.
    """

    def __init__(
        self,
        pretrained: str | PreTrainedModel,
        tokenizer=None,
        method: str = "confidence",
        mc_num: int = DEFAULT_MC_NUM,
        mc_batch_size: int = DEFAULT_MC_BATCH_SIZE,
        cfg_scale: float | None = None,
        check_greedy: bool = True,
        batch_size: int | str = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,
        device: str | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        add_bos_token: bool = False,
        enable_thinking: bool | None = None,
        max_length: int | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        revision: str | None = None,
        **generation_settings,
    ) -> None:
        super().__init__()
        self._check_model_args(
            method,
            mc_num,
            mc_batch_size,
            cfg_scale,
            batch_size,
            max_batch_size,
            max_length,
            max_new_tokens,
            seed,
            dict(
                check_greedy=check_greedy,
                trust_remote_code=trust_remote_code,
                add_bos_token=add_bos_token,
                enable_thinking=enable_thinking,
            ),
        )
        self._device = self._pick_device(device)
        self.model = self._load_model(pretrained, resolve_dtype(dtype), trust_remote_code, revision)
        self.tokenizer = self._load_tokenizer(tokenizer, pretrained, trust_remote_code, revision)
        self.method, self.check_greedy, self.add_bos_token = method, check_greedy, add_bos_token
        self.chat_template_args = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        self.batch_size = int(batch_size)
        self.score_options = dict(
            batch_size=self.batch_size, cfg_scale=cfg_scale, mc_num=mc_num, mc_batch_size=mc_batch_size
        )
        self.max_length = self.model.config.max_position_embeddings if max_length is None else max_length
        self.max_new_tokens = max_new_tokens
        # Only what the user set: everything else comes from the checkpoint's generation config.
        self.generation_settings = {**generation_settings, **({} if cfg_scale is None else {"cfg_scale": cfg_scale})}
        _check_generation_settings(self.model, self.generation_settings, "model arg(s)")
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    @staticmethod
    def _check_model_args(
        method,
        mc_num,
        mc_batch_size,
        cfg_scale,
        batch_size,
        max_batch_size,
        max_length,
        max_new_tokens,
        seed,
        flags: dict,
    ) -> None:
        """Model args arrive as parsed strings (`seed=abc` stays a string): each is checked by name."""
        check_choice("method", method, METHODS)
        check_positive_int("mc_num", mc_num)
        check_positive_int("mc_batch_size", mc_batch_size)
        if cfg_scale is not None:
            check_range("cfg_scale", cfg_scale, 0, MAX_CFG_SCALE)
        if not str(batch_size).isdigit() or int(batch_size) < 1 or max_batch_size is not None:
            raise ValueError(f"`batch_size` must be a positive integer (no 'auto'), got {batch_size!r}.")
        check_positive_int("max_length", max_length, allow_none=True)
        check_positive_int("max_new_tokens", max_new_tokens, allow_none=True)
        if seed is not None and not (is_int(seed) and -(2**63) <= seed < 2**64):
            raise ValueError(f"`seed` must be an integer in [-2**63, 2**64) (torch's generator seeds), got {seed!r}.")
        for name, value in flags.items():
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"`{name}` must be True or False, got {value!r}.")

    @staticmethod
    def _pick_device(device: str | None) -> torch.device:
        if device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            # The lm-eval command line asks for `cuda:0` unless told otherwise (as its `hf` model does).
            logger.warning("`device` %s is not available; using the CPU. Pass `--device cpu` to silence this.", device)
            return torch.device("cpu")
        return torch.device(device)

    def _load_model(self, pretrained, dtype, trust_remote_code: bool, revision: str | None) -> PreTrainedModel:
        if isinstance(pretrained, PreTrainedModel):
            model = pretrained
        elif isinstance(pretrained, str):
            model = AutoModelForCausalLM.from_pretrained(
                pretrained, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision
            )
        else:
            raise TypeError(f"`pretrained` must be a path, a Hub id or a model, got {type(pretrained).__name__}.")
        if not hasattr(model, "score_continuations"):
            raise TypeError(
                f"`pretrained` must be an iLLaDA model (with `score_continuations`), got {type(model).__name__}."
            )
        return model.to(self._device).eval()

    @staticmethod
    def _load_tokenizer(tokenizer, pretrained, trust_remote_code: bool, revision: str | None):
        if tokenizer is None:
            if not isinstance(pretrained, str):
                raise ValueError("Pass `tokenizer` when `pretrained` is a model object.")
            tokenizer = pretrained
        if isinstance(tokenizer, str):
            tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code, revision=revision)
        return tokenizer

    # ------------------------------------------------------------------------------------------ tokens

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # Conditions the score of a continuation whose context is empty.
        bos = self.tokenizer.bos_token_id
        return self.eot_token_id if bos is None else bos

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens is None:
            # A chat-templated prompt already starts with the BOS token: do not add a second one.
            bos = self.tokenizer.bos_token
            add_special_tokens = self.add_bos_token and not (bos and string.startswith(bos))
        return self.tokenizer(string, add_special_tokens=add_special_tokens)["input_ids"]

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text of `chat_history` in the tokenizer's chat template (lm-eval's `--apply_chat_template`;
        with `--fewshot_as_multiturn` the few-shot examples are earlier user/assistant turns).

        `add_generation_prompt=False` is lm-eval's way of asking to continue the last (assistant) message, for a
        task's `gen_prefix`.
        """
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
            **self.chat_template_args,
        )

    def _fit(self, context: list[int], reserved: int) -> list[int]:
        """The context, cut from the left so that it leaves `reserved` tokens free within `max_length`."""
        room = self.max_length - reserved
        if room < 0:
            raise ValueError(
                f"A continuation or generation budget of {reserved} tokens does not fit in `max_length` = "
                f"{self.max_length}."
            )
        return context[len(context) - room :] if len(context) > room else context

    # ------------------------------------------------------------------------------------------ scoring

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        contexts = [self._fit(context, len(continuation)) for _, context, continuation in requests]
        continuations = [continuation for _, _, continuation in requests]
        result = self.model.score_continuations(
            contexts,
            continuations,
            self.method,
            **self.score_options,
            generator=self.generator,
            check_greedy=self.check_greedy and self.method == "likelihood",
            show_progress=not disable_tqdm,
        )
        greedy = [False] * len(requests) if result.is_greedy is None else result.is_greedy.tolist()
        answers = [(score, is_greedy) for score, is_greedy in zip(result.scores.tolist(), greedy)]
        for (key, _, _), answer in zip(requests, answers):
            self.cache_hook.add_partial("loglikelihood", key, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "`loglikelihood_rolling` (perplexity tasks) is not implemented for iLLaDA: a masked diffusion model "
            "has no left-to-right factorisation. Use multiple-choice (`loglikelihood`) or generation tasks."
        )

    # ------------------------------------------------------------------------------------------ generation

    def _generation_batches(self, requests: list[Instance]) -> Iterator[list[int]]:
        """Request indices in batches of `batch_size` with identical generation kwargs, longest prompt first."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        for indices in groups.values():
            indices.sort(key=lambda i: -len(requests[i].args[0]))
            for start in range(0, len(indices), self.batch_size):
                yield indices[start : start + self.batch_size]

    def _generation_options(self, gen_kwargs: dict) -> tuple[list[str], dict, int | None]:
        """The stop sequences, the settings to pass to `generate` for one request's `gen_kwargs` (only what the task
        or the user set, model args above the task, the checkpoint's generation config for the rest) and the task's
        `max_length` (prompt + answer) when no budget in tokens is given.

        lm-eval's own tasks may carry options without a diffusion meaning at their neutral value (`num_beams: 1`,
        `repetition_penalty: 1.0`): those are dropped; any other value is refused by name."""
        options = {
            name: value
            for name, value in gen_kwargs.items()
            if not (name in NEUTRAL_OPTIONS and NEUTRAL_OPTIONS[name] == value and name not in SETTINGS)
        }
        stops = _stop_sequences(options.pop("until", None))
        max_gen_toks = options.pop("max_gen_toks", None)
        max_length = options.pop("max_length", None)
        check_positive_int("max_gen_toks", max_gen_toks, allow_none=True)
        check_positive_int("max_length", max_length, allow_none=True)
        settings = {**options, **self.generation_settings}
        max_new_tokens = self.max_new_tokens if self.max_new_tokens is not None else max_gen_toks
        if max_new_tokens is not None:
            settings["max_new_tokens"] = max_new_tokens
            if max_length is not None:
                logger.warning(
                    "`max_length`=%d of the task is unused: the budget is %d new tokens.", max_length, max_new_tokens
                )
                max_length = None
        own_stop_ids = list(settings.get("stop_token_ids", self.model.generation_config.stop_token_ids) or [])
        extra_stop_ids = [t for t in self._single_token_stops(stops) if t not in own_stop_ids]
        if extra_stop_ids:
            settings["stop_token_ids"] = own_stop_ids + extra_stop_ids
        _check_generation_settings(self.model, settings, "generation kwarg(s)")
        return stops, settings, max_length

    def _generate_batch(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        stops, settings, max_length = self._generation_options(gen_kwargs)
        budget = settings.get("max_new_tokens", self.model.generation_config.max_new_tokens)
        prompts = [self._fit(self.tok_encode(context), 1 if max_length else budget) for context in contexts]
        width = max(len(p) for p in prompts)
        if max_length is not None:  # a total length: the budget is what the prompt leaves
            if max_length <= width:
                raise ValueError(
                    f"The task's `max_length`={max_length} (prompt + answer) leaves no room after a prompt of "
                    f"{width} tokens: raise it or give `max_gen_toks`."
                )
            settings["max_new_tokens"] = max_length - width
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=self._device)
        attention_mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=self._device
        )  # an empty context (width 0) stays an integer tensor
        if self.generator is not None:
            settings["generator"] = self.generator
        sequences = self.model.generate(input_ids, attention_mask=attention_mask, **settings)
        texts = self.tokenizer.batch_decode(sequences[:, width:], skip_special_tokens=True)
        return [truncate_at_stop(text, stops) for text in texts]

    def _single_token_stops(self, stops: list[str]) -> list[int]:
        """The ids of the stop sequences that are one token on their own, added to the stop tokens of `generate`.

        Generation then ends with the block that holds such a token instead of running to the budget. Stop
        sequences of several tokens are honoured by the text cut only.
        """
        ids = []
        for stop in stops:
            tokens = self.tokenizer(stop, add_special_tokens=False)["input_ids"]
            if len(tokens) == 1 and stop in self.tokenizer.decode(tokens) and tokens[0] not in ids:
                ids.append(tokens[0])
        return ids

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        answers: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc="Generating", disable=disable_tqdm) as progress:
            for batch in self._generation_batches(requests):
                texts = self._generate_batch([requests[i].args[0] for i in batch], requests[batch[0]].args[1])
                for index, text in zip(batch, texts):
                    answers[index] = text
                    self.cache_hook.add_partial("generate_until", requests[index].args, text)
                progress.update(len(batch))
        return answers


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line on `argv` (defaults to `sys.argv[1:]`), with the `illada` model registered (by this
    module's import): every `lm_eval` option works."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
