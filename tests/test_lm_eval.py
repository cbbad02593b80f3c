"""lm-evaluation-harness model `illada` on a tiny random model: requests against our own API, model args and
generation kwargs, and the checkpoint's generation settings. The end-to-end runs on the demo model (chat
templates, the `illada_demo` tasks) are in `test_lm_eval_demo.py`.
"""

import copy

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import simple_parse_args_string  # noqa: E402
from tiny import make_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from word_tokenizer import make_word_tokenizer  # noqa: E402

from illada.lm_eval_model import ILLaDAEvalHarness, truncate_at_stop  # noqa: E402

MODEL_SEED = 3  # a random tiny model whose generations are not one word repeated
BLOCK_LENGTH = 4
QUESTION = "Tom has 3 apples and gets 4 more . How many apples does Tom have now ?"
QUESTIONS = [
    QUESTION,
    "Ann has 9 pears and gets 2 more . How many pears does Ann have now ?",
    "Sam has 1 plums and gets 8 more .",
    "Mia has 5 apples",
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_word_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    # The vocabulary of the tokenizer exactly, so that every generated id decodes to a word.
    return make_model(seed=MODEL_SEED, vocab_size=len(tokenizer))


@pytest.fixture(scope="module")
def harness(model, tokenizer):
    return ILLaDAEvalHarness(
        pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=4, block_length=BLOCK_LENGTH
    )


def loglikelihood_request(context: str, continuation: str) -> Instance:
    return Instance("loglikelihood", doc={}, arguments=(context, continuation), idx=0)


def generation_request(context: str, **gen_kwargs) -> Instance:
    return Instance("generate_until", doc={}, arguments=(context, gen_kwargs), idx=0)


def generate_directly(model, tokenizer, prompts: list[str], max_new_tokens: int, stop: str) -> list[str]:
    """Our own path, one prompt at a time: `generate`, decode the new tokens, cut at the stop string."""
    answers = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        sequences = model.generate(ids, max_new_tokens=max_new_tokens, block_length=BLOCK_LENGTH)
        sequences = sequences if isinstance(sequences, torch.Tensor) else sequences.sequences
        text = tokenizer.decode(sequences[0, ids.shape[1] :], skip_special_tokens=True)
        answers.append(text.split(stop)[0])
    return answers


# ----------------------------------------------------------------------------------------- requests


def test_truncate_at_stop_cuts_at_the_earliest_stop():
    assert truncate_at_stop("7 apples . and more", ["."]) == "7 apples "
    assert truncate_at_stop("a b c d", ["d", "b"]) == "a "
    assert truncate_at_stop("a b c", ["x", ""]) == "a b c"


@pytest.mark.parametrize("method", ["confidence", "likelihood"])
def test_loglikelihood_equals_our_scoring(model, tokenizer, method):
    harness = ILLaDAEvalHarness(
        pretrained=model,
        tokenizer=tokenizer,
        device="cpu",
        method=method,
        mc_num=8,
        mc_batch_size=4,
        seed=0,
        check_greedy=True,
    )
    pairs = [(QUESTION, " 7 apples"), (QUESTION, " 8"), ("", "Tom has")]
    answers = harness.loglikelihood([loglikelihood_request(*pair) for pair in pairs], disable_tqdm=True)
    prompts = [tokenizer(QUESTION)["input_ids"]] * 2 + [[tokenizer.bos_token_id]]  # empty context: BOS
    continuations = [tokenizer(text.strip())["input_ids"] for _, text in pairs]
    expected = model.score_continuations(
        prompts,
        continuations,
        method,
        mc_num=8,
        mc_batch_size=4,
        generator=torch.Generator().manual_seed(0),
        check_greedy=True,
    )
    assert [score for score, _ in answers] == pytest.approx(expected.scores.tolist(), abs=1e-6)
    assert [greedy for _, greedy in answers] == expected.is_greedy.tolist()


def test_likelihood_without_greedy_check_reports_not_greedy(model, tokenizer):
    harness = ILLaDAEvalHarness(
        pretrained=model,
        tokenizer=tokenizer,
        device="cpu",
        method="likelihood",
        check_greedy=False,
        mc_num=4,
        mc_batch_size=4,
    )
    answers = harness.loglikelihood([loglikelihood_request(QUESTION, " 7")], disable_tqdm=True)
    assert answers[0][1] is False


def test_long_contexts_are_cut_from_the_left(model, tokenizer):
    harness = ILLaDAEvalHarness(pretrained=model, tokenizer=tokenizer, device="cpu", max_length=6)
    ((score, _),) = harness.loglikelihood([loglikelihood_request(QUESTION, " 7 apples")], disable_tqdm=True)
    context = tokenizer(QUESTION)["input_ids"][-4:]
    expected = model.score_continuations([context], [tokenizer("7 apples")["input_ids"]]).scores
    assert score == pytest.approx(expected.item(), abs=1e-6)


def test_generate_until_honours_stop_sequences(harness):
    raw = harness.generate_until([generation_request(QUESTION, until=[], max_gen_toks=8)], disable_tqdm=True)[0]
    words = raw.split()
    stop = next(word for word in words if word != words[0])  # a word that is not at the very start
    # The stop word is one token, so generation also ends early, with the block that holds it.
    cut = harness.generate_until([generation_request(QUESTION, until=[stop], max_gen_toks=8)], disable_tqdm=True)
    assert cut == [raw[: raw.index(stop)]] and 0 < len(cut[0]) < len(raw)


def test_generate_until_batches_like_one_at_a_time(harness, model, tokenizer):
    prompts = QUESTIONS + ["How many apples ?", "Tom has 3"]
    requests = [generation_request(prompt, until=["."], max_gen_toks=6) for prompt in prompts]
    batched = harness.generate_until(requests, disable_tqdm=True)
    assert batched == generate_directly(model, tokenizer, prompts, 6, ".")


@pytest.mark.parametrize(
    "model_args, error, match",
    [
        ("method=perplexity", ValueError, "`method` must be one of"),
        ("batch_size=auto", ValueError, "`batch_size`"),
        ("dtype=int8", ValueError, "`dtype`"),
        ("cfg_scale=inf", ValueError, r"`cfg_scale` must be a finite number in \[0, 1000.0\], got inf"),
        ("cfg_scale=1e308", ValueError, r"`cfg_scale` must be in \[0, 1000.0\], got 1e\+308"),
        ("cfg_scale=nan", ValueError, "`cfg_scale` must be a finite number"),
        ("cfg_scale=abc", TypeError, "`cfg_scale` must be a number, got str 'abc'"),
        ("seed=abc", ValueError, r"`seed` must be an integer in \[-2\*\*63, 2\*\*64\) .*, got 'abc'"),
        ("seed=1180591620717411303424", ValueError, r"`seed` must be an integer in \[-2\*\*63, 2\*\*64\)"),
        ("mc_num=abc", ValueError, "`mc_num` must be a positive integer, got 'abc'"),
        ("max_new_tokens=0", ValueError, "`max_new_tokens` must be a positive integer or None, got 0"),
        ("max_length=0", ValueError, "`max_length` must be a positive integer or None, got 0"),
        ("steps=abc", ValueError, "`steps`"),
        ("block_length=0", ValueError, "`block_length`"),
        ("blocklength=8", ValueError, r"Unknown model arg\(s\) \['blocklength'\]"),
        ("return_dict_in_generate=True", ValueError, "Unknown model arg"),
        ("check_greedy=yes", ValueError, "`check_greedy` must be True or False, got 'yes'"),
    ],
)
def test_bad_model_args_name_the_argument(model, tokenizer, model_args, error, match):
    # As lm-eval's command line parses `--model_args` (numbers and booleans converted, the rest left strings).
    with pytest.raises(error, match=match):
        ILLaDAEvalHarness(pretrained=model, tokenizer=tokenizer, device="cpu", **simple_parse_args_string(model_args))


@pytest.mark.parametrize(
    "gen_kwargs, match",
    [
        (dict(max_gen_toks=0), "`max_gen_toks` must be a positive integer or None, got 0"),
        (dict(blocklength=8), r"Unknown generation kwarg\(s\) \['blocklength'\]"),
        (dict(temperature=-1.0), "`temperature`"),
    ],
)
def test_bad_generation_kwargs_name_the_argument(harness, gen_kwargs, match):
    # 0 tokens is not replaced by a default budget: it is refused.
    with pytest.raises(ValueError, match=match):
        harness.generate_until([generation_request(QUESTION, until=["."], **gen_kwargs)], disable_tqdm=True)


# ----------------------------------------------------------------------------------------- generation settings

# Non-default settings saved with a checkpoint: 2 steps per block of 8, guidance, sampling at temperature 0.7.
SAVED_SETTINGS = dict(steps=2, block_length=8, cfg_scale=0.5, temperature=0.7, max_new_tokens=16)


@pytest.fixture(scope="module")
def saved_model(model, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    saved = copy.deepcopy(model)
    saved.generation_config.update(**SAVED_SETTINGS)
    saved.generation_config.validate()
    saved.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def counted(model, call) -> tuple[torch.Tensor, int]:
    """`call()`'s sequences and the number of forward passes it ran on `model`."""
    forwards = []
    handle = model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        return call(), len(forwards)
    finally:
        handle.remove()


def harness_generation(harness, **gen_kwargs) -> tuple[torch.Tensor, int]:
    """The sequences `generate` returned inside `generate_until` for QUESTION, and the forward count."""
    returned = []
    original = harness.model.generate

    def spy(*args, **kwargs):
        returned.append(original(*args, **kwargs))
        return returned[-1]

    harness.model.generate = spy
    try:
        _, forwards = counted(
            harness.model,
            lambda: harness.generate_until([generation_request(QUESTION, until=[], **gen_kwargs)], disable_tqdm=True),
        )
    finally:
        del harness.model.generate
    return returned[0], forwards


@pytest.mark.parametrize(
    "model_args, gen_kwargs, generate_kwargs",
    [
        (dict(), dict(), dict()),  # nothing set: exactly `generate()` with no arguments
        (dict(steps=4), dict(), dict(steps=4)),  # a model arg overrides the checkpoint
        (dict(), dict(max_gen_toks=8, do_sample=False), dict(max_new_tokens=8, temperature=0.0)),  # the task's
        (dict(block_length=4), dict(block_length=16), dict(block_length=4)),  # model args above gen_kwargs
        (dict(), dict(do_sample=True, temperature=1.5), dict(temperature=1.5)),  # sampling as the task asks
    ],
)
def test_generation_follows_the_checkpoint_unless_set(saved_model, tokenizer, model_args, gen_kwargs, generate_kwargs):
    harness = ILLaDAEvalHarness(pretrained=str(saved_model), trust_remote_code=True, device="cpu", seed=0, **model_args)
    reference = AutoModelForCausalLM.from_pretrained(saved_model, trust_remote_code=True)
    ids = torch.tensor([tokenizer(QUESTION)["input_ids"]])
    expected, expected_forwards = counted(
        reference, lambda: reference.generate(ids, generator=torch.Generator().manual_seed(0), **generate_kwargs)
    )
    sequences, forwards = harness_generation(harness, **gen_kwargs)
    assert torch.equal(sequences, expected) and forwards == expected_forwards
    if not model_args and not gen_kwargs:
        # Hand-derived: 16 tokens in blocks of 8 at 2 steps each is at most 4 forwards (the harness once passed
        # its own block length and one token per step: 16).
        assert 2 <= forwards <= 4


def test_scoring_guidance_comes_from_the_generation_config_unless_set(model, tokenizer):
    guided = copy.deepcopy(model)
    guided.generation_config.cfg_scale = 0.5  # as a checkpoint's generation_config.json would set it
    prompt, continuation = tokenizer(QUESTION)["input_ids"], tokenizer("7 apples")["input_ids"]
    request = [loglikelihood_request(QUESTION, " 7 apples")]
    for model_args, cfg_scale in ((dict(), 0.5), (dict(cfg_scale=0), 0.0), (dict(cfg_scale=2.0), 2.0)):
        harness = ILLaDAEvalHarness(pretrained=guided, tokenizer=tokenizer, device="cpu", **model_args)
        ((score, _),) = harness.loglikelihood(request, disable_tqdm=True)
        expected = model.score_continuations([prompt], [continuation], cfg_scale=cfg_scale).scores.item()
        assert score == pytest.approx(expected, abs=1e-6), model_args
    unguided = model.score_continuations([prompt], [continuation], cfg_scale=0.0).scores.item()
    assert abs(unguided - model.score_continuations([prompt], [continuation], cfg_scale=0.5).scores.item()) > 1e-3


def test_rolling_loglikelihood_is_not_available(harness):
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        harness.loglikelihood_rolling([])
