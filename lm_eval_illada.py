"""lm-evaluation-harness model `illada`: iLLaDA's multiple-choice scoring and diffusion generation.

Importing this module registers the name `illada` with lm-eval. `run_lm_eval.py` does that and then runs
the ordinary lm-eval command line, so every lm-eval option works:

    # multiple choice with the paper's confidence-based scoring (the default `method`)
    python run_lm_eval.py --model illada --tasks arc_challenge,hellaswag,piqa --batch_size 16 \\
        --model_args pretrained=GSAI-ML/iLLaDA-8B-Base,trust_remote_code=True,dtype=bfloat16
    # LLaDA's Monte-Carlo likelihood instead, with guidance
    python run_lm_eval.py --model illada --tasks piqa \\
        --model_args pretrained=GSAI-ML/iLLaDA-8B-Base,trust_remote_code=True,method=likelihood,mc_num=128,cfg_scale=0.5
    # generation (variable length: blocks of 32 until a stop token, at most 1024 new tokens)
    python run_lm_eval.py --model illada --tasks gsm8k \\
        --model_args pretrained=GSAI-ML/iLLaDA-8B-Base,trust_remote_code=True,max_new_tokens=1024,block_length=32
    # the offline toy tasks shipped in eval_tasks/
    python run_lm_eval.py --model illada --include_path eval_tasks --tasks illada_toy_mc,illada_toy_gen \\
        --model_args pretrained=PATH/TO/MODEL,trust_remote_code=True

`loglikelihood` returns, per request, the score of the chosen `method` and whether the continuation is what
greedy confidence decoding produces. `generate_until` calls the model's diffusion `generate` and cuts the
text at the first stop sequence.
"""

import json
import logging
from collections.abc import Iterator

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

try:
    from .scoring_illada import DEFAULT_MC_BATCH_SIZE, DEFAULT_MC_NUM, METHODS
except ImportError:
    from scoring_illada import DEFAULT_MC_BATCH_SIZE, DEFAULT_MC_NUM, METHODS

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
# lm-eval's own default generation budget (`max_gen_toks`) when a task sets none.
DEFAULT_MAX_GEN_TOKS = 256
# iLLaDA's evaluation block length for the Base model (paper: 1024 tokens in blocks of 32).
DEFAULT_BLOCK_LENGTH = 32
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


@register_model("illada")
class ILLaDAEvalHarness(TemplateLM):
    """lm-eval model for iLLaDA (registered as `illada`).

    Args:
        pretrained (`str` or `PreTrainedModel`): a checkpoint path or Hub id, or a loaded iLLaDA model.
        tokenizer (`str` or tokenizer, *optional*): defaults to the tokenizer saved with `pretrained`.
        method (`str`, *optional*, defaults to `"confidence"`): `loglikelihood` scoring, `"confidence"` (the
            iLLaDA paper's) or `"likelihood"` (LLaDA's Monte-Carlo ELBO).
        mc_num, mc_batch_size, cfg_scale: see `ILLaDAScoringMixin.score_continuations` (`cfg_scale` also guides
            generation).
        check_greedy (`bool`, *optional*, defaults to `True`): fill `is_greedy`. Free with `confidence`; with
            `likelihood` it adds the confidence passes, and `False` reports `is_greedy=False` (as LLaDA does).
        batch_size (`int`, *optional*, defaults to 16): sequences per forward pass (scoring) or per `generate`.
        device (`str`, *optional*): defaults to `cuda` when available (lm-eval's `--device`, which itself
            defaults to `cuda:0`; without CUDA the CPU is used, with a warning).
        dtype (`str`, *optional*, defaults to `"auto"`): `auto`, `float32`, `bfloat16` or `float16`.
        trust_remote_code (`bool`, *optional*, defaults to `False`): passed to `from_pretrained`.
        add_bos_token (`bool`, *optional*, defaults to `False`): let the tokenizer add its special tokens.
        max_length (`int`, *optional*): longest prompt + continuation; prompts are cut from the left to fit.
            Defaults to `config.max_position_embeddings`.
        max_new_tokens (`int`, *optional*): generation budget; defaults to the task's `max_gen_toks`.
        block_length (`int`, *optional*, defaults to 32), steps (`int`, *optional*): diffusion sampling blocks
            and steps per block (default: one token per step).
        seed (`int`, *optional*): seeds the Monte-Carlo mask draws (otherwise torch's global generator).
    """

    def __init__(
        self,
        pretrained: str | PreTrainedModel,
        tokenizer=None,
        method: str = "confidence",
        mc_num: int = DEFAULT_MC_NUM,
        mc_batch_size: int = DEFAULT_MC_BATCH_SIZE,
        cfg_scale: float = 0.0,
        check_greedy: bool = True,
        batch_size: int | str = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,
        device: str | None = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        add_bos_token: bool = False,
        max_length: int | None = None,
        max_new_tokens: int | None = None,
        block_length: int = DEFAULT_BLOCK_LENGTH,
        steps: int | None = None,
        seed: int | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
        if not str(batch_size).isdigit() or int(batch_size) < 1 or max_batch_size is not None:
            raise ValueError(f"`batch_size` must be a positive integer (no 'auto'), got {batch_size!r}.")
        if dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {sorted(DTYPES)}, got {dtype!r}.")
        self._device = self._pick_device(device)
        self.model = self._load_model(pretrained, dtype, trust_remote_code, revision)
        self.tokenizer = self._load_tokenizer(tokenizer, pretrained, trust_remote_code, revision)
        self.method, self.check_greedy, self.add_bos_token = method, bool(check_greedy), bool(add_bos_token)
        self.batch_size = int(batch_size)
        self.score_options = dict(batch_size=self.batch_size, cfg_scale=float(cfg_scale), mc_num=int(mc_num),
                                  mc_batch_size=int(mc_batch_size))
        self.max_length = int(max_length or self.model.config.max_position_embeddings)
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.block_length, self.steps = int(block_length), None if steps is None else int(steps)
        self.generator = None if seed is None else torch.Generator().manual_seed(int(seed))

    @staticmethod
    def _pick_device(device: str | None) -> torch.device:
        if device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            # The lm-eval command line asks for `cuda:0` unless told otherwise (as its `hf` model does).
            logger.warning("`device` %s is not available; using the CPU. Pass `--device cpu` to silence this.", device)
            return torch.device("cpu")
        return torch.device(device)

    def _load_model(self, pretrained, dtype: str, trust_remote_code: bool, revision: str | None) -> PreTrainedModel:
        if isinstance(pretrained, PreTrainedModel):
            model = pretrained
        elif isinstance(pretrained, str):
            model = AutoModelForCausalLM.from_pretrained(
                pretrained, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, revision=revision
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
            tokenizer = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=trust_remote_code, revision=revision)
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
        add_special_tokens = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return self.tokenizer(string, add_special_tokens=add_special_tokens)["input_ids"]

    def _fit(self, context: list[int], reserved: int) -> list[int]:
        """The context, cut from the left so that it leaves `reserved` tokens free within `max_length`."""
        room = self.max_length - reserved
        if room < 0:
            raise ValueError(
                f"A continuation or generation budget of {reserved} tokens does not fit in `max_length` = "
                f"{self.max_length}."
            )
        return context[len(context) - room:] if len(context) > room else context

    # ------------------------------------------------------------------------------------------ scoring

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        contexts = [self._fit(context, len(continuation)) for _, context, continuation in requests]
        continuations = [continuation for _, _, continuation in requests]
        result = self.model.score_continuations(
            contexts, continuations, self.method, **self.score_options, generator=self.generator,
            check_greedy=self.check_greedy and self.method == "likelihood", show_progress=not disable_tqdm,
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
                yield indices[start:start + self.batch_size]

    def _generate_batch(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        options = dict(gen_kwargs)
        stops = _stop_sequences(options.pop("until", None))
        max_new_tokens = int(options.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        max_new_tokens = self.max_new_tokens or max_new_tokens
        temperature = float(options.pop("temperature", 1.0))  # lm-eval: greedy unless `do_sample`
        temperature = temperature if options.pop("do_sample", False) else 0.0
        if options:
            logger.warning("iLLaDA's diffusion sampler ignores the generation kwargs %s.", sorted(options))
        prompts = [self._fit(self.tok_encode(context), max_new_tokens) for context in contexts]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self._device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self._device)
        sequences = self.model.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, block_length=self.block_length,
            steps=self.steps, temperature=temperature, cfg_scale=self.score_options["cfg_scale"],
            stop_token_ids=self._stop_token_ids(stops),
        )
        texts = self.tokenizer.batch_decode(sequences[:, width:], skip_special_tokens=True)
        return [truncate_at_stop(text, stops) for text in texts]

    def _stop_token_ids(self, stops: list[str]) -> list[int]:
        """The model's own stop tokens plus every stop sequence that is one token on its own.

        Generation then ends with the block that holds such a token instead of running to the budget. Stop
        sequences of several tokens are honoured by the text cut only.
        """
        ids = list(getattr(self.model.generation_config, "stop_token_ids", None) or [])
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
