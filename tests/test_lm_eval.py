"""lm-evaluation-harness model `illada`: requests against our own API, and one end-to-end run on the toy tasks.

The end-to-end run goes through `run_lm_eval.py` (the lm-eval command line with `illada` registered) on a tiny
random model saved to disk and loaded with `trust_remote_code`, for both `loglikelihood` (multiple choice) and
`generate_until`; its reported accuracies must equal the ones computed directly with `score_choices_batch`
and `generate` on the same documents.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import run_lm_eval  # noqa: E402
from lm_eval_illada import ILLaDAEvalHarness, truncate_at_stop  # noqa: E402
from tiny import make_model  # noqa: E402
from word_tokenizer import make_word_tokenizer  # noqa: E402

EVAL_TASKS = Path(__file__).resolve().parents[1] / "eval_tasks"
sys.path.insert(0, str(EVAL_TASKS / "illada_toy"))
from toy_data import toy_dataset  # noqa: E402

MODEL_SEED = 3  # a random tiny model that gets some, not all, of the first toy questions right, and whose
# generations are not one word repeated
NUM_DOCS = 8
BLOCK_LENGTH = 4
QUESTION = "Tom has 3 apples and gets 4 more . How many apples does Tom have now ?"


@pytest.fixture(scope="module")
def tokenizer():
    return make_word_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    # The vocabulary of the tokenizer exactly, so that every generated id decodes to a word.
    return make_model(seed=MODEL_SEED, vocab_size=len(tokenizer))


@pytest.fixture(scope="module")
def harness(model, tokenizer):
    return ILLaDAEvalHarness(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=4,
                             block_length=BLOCK_LENGTH)


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
        text = tokenizer.decode(sequences[0, ids.shape[1]:], skip_special_tokens=True)
        answers.append(text.split(stop)[0])
    return answers


# ----------------------------------------------------------------------------------------- requests


def test_truncate_at_stop_cuts_at_the_earliest_stop():
    assert truncate_at_stop("7 apples . and more", ["."]) == "7 apples "
    assert truncate_at_stop("a b c d", ["d", "b"]) == "a "
    assert truncate_at_stop("a b c", ["x", ""]) == "a b c"


@pytest.mark.parametrize("method", ["confidence", "likelihood"])
def test_loglikelihood_equals_our_scoring(model, tokenizer, method):
    harness = ILLaDAEvalHarness(pretrained=model, tokenizer=tokenizer, device="cpu", method=method, mc_num=8,
                                mc_batch_size=4, seed=0, check_greedy=True)
    pairs = [(QUESTION, " 7 apples"), (QUESTION, " 8"), ("", "Tom has")]
    answers = harness.loglikelihood([loglikelihood_request(*pair) for pair in pairs], disable_tqdm=True)
    prompts = [tokenizer(QUESTION)["input_ids"]] * 2 + [[tokenizer.bos_token_id]]  # empty context: BOS
    continuations = [tokenizer(text.strip())["input_ids"] for _, text in pairs]
    expected = model.score_continuations(prompts, continuations, method, mc_num=8, mc_batch_size=4,
                                         generator=torch.Generator().manual_seed(0), check_greedy=True)
    assert [score for score, _ in answers] == pytest.approx(expected.scores.tolist(), abs=1e-6)
    assert [greedy for _, greedy in answers] == expected.is_greedy.tolist()


def test_likelihood_without_greedy_check_reports_not_greedy(model, tokenizer):
    harness = ILLaDAEvalHarness(pretrained=model, tokenizer=tokenizer, device="cpu", method="likelihood",
                                check_greedy=False, mc_num=4, mc_batch_size=4)
    answers = harness.loglikelihood([loglikelihood_request(QUESTION, " 7")], disable_tqdm=True)
    assert answers[0][1] is False


def test_long_contexts_are_cut_from_the_left(model, tokenizer):
    harness = ILLaDAEvalHarness(pretrained=model, tokenizer=tokenizer, device="cpu", max_length=6)
    (score, _), = harness.loglikelihood([loglikelihood_request(QUESTION, " 7 apples")], disable_tqdm=True)
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
    prompts = [doc["question"] for doc in toy_dataset(num_docs=4)["test"]] + ["How many apples ?", "Tom has 3"]
    requests = [generation_request(prompt, until=["."], max_gen_toks=6) for prompt in prompts]
    batched = harness.generate_until(requests, disable_tqdm=True)
    assert batched == generate_directly(model, tokenizer, prompts, 6, ".")


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(method="perplexity"), "`method` must be one of"), (dict(batch_size="auto"), "`batch_size`"),
     (dict(dtype="int8"), "`dtype`")],
)
def test_bad_model_args_raise(model, tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ILLaDAEvalHarness(pretrained=model, tokenizer=tokenizer, device="cpu", **kwargs)


def test_rolling_loglikelihood_is_not_available(harness):
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        harness.loglikelihood_rolling([])


# ----------------------------------------------------------------------------------------- end to end


def test_lm_eval_end_to_end_matches_our_api(model, tokenizer, tmp_path):
    saved = tmp_path / "model"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    run_lm_eval.main([
        "--model", "illada", "--device", "cpu", "--batch_size", "8", "--limit", str(NUM_DOCS),
        "--model_args", f"pretrained={saved},trust_remote_code=True,block_length={BLOCK_LENGTH}",
        "--include_path", str(EVAL_TASKS), "--tasks", "illada_toy_mc,illada_toy_gen",
        "--output_path", str(tmp_path / "out"), "--log_samples",
    ])
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    docs = toy_dataset()["test"].select(range(NUM_DOCS))
    loaded = AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=True)
    loaded_tokenizer = AutoTokenizer.from_pretrained(saved)

    choices = loaded.score_choices_batch([doc["question"] for doc in docs],
                                         [[" " + choice for choice in doc["choices"]] for doc in docs],
                                         tokenizer=loaded_tokenizer)
    accuracy = sum(scores.best == doc["label"] for scores, doc in zip(choices, docs)) / NUM_DOCS
    assert 0 < accuracy < 1  # the comparison below can tell right from wrong answers
    assert results["illada_toy_mc"]["acc,none"] == pytest.approx(accuracy)
    mc_samples = [json.loads(line) for line in next((tmp_path / "out").rglob("samples_illada_toy_mc_*.jsonl")).open()]
    for sample in mc_samples:
        reported = [float(response[0][0]) for response in sample["resps"]]
        assert reported == pytest.approx(choices[sample["doc_id"]].scores.tolist(), abs=1e-5)

    answers = generate_directly(loaded, loaded_tokenizer, [doc["question"] for doc in docs], 8, ".")
    exact = sum(answer.strip().lower() == doc["answer"].lower() for answer, doc in zip(answers, docs)) / NUM_DOCS
    assert results["illada_toy_gen"]["exact_match,none"] == pytest.approx(exact)
    samples = [json.loads(line) for line in next((tmp_path / "out").rglob("samples_illada_toy_gen_*.jsonl")).open()]
    assert [sample["resps"][0][0] for sample in sorted(samples, key=lambda s: s["doc_id"])] == answers
