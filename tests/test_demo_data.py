"""Demo data and tokenizer: determinism, a disjoint held-out split, correct answers, special ids, chat template."""

import random
import re

import pytest
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer

from illada.demo.data import (
    TASKS,
    example_is_heldout,
    fact_sentences,
    make_examples,
    make_multiple_choice,
    pretraining_texts,
    to_messages,
    tokenizer_texts,
)
from illada.demo.tokenizer import train_tokenizer, wrap_tokenizer

NUM_TRAIN = 6000
NUM_HELDOUT = 240  # 20 per task


@pytest.fixture(scope="module")
def train_examples():
    return make_examples("train", NUM_TRAIN)


@pytest.fixture(scope="module")
def heldout_examples():
    return make_examples("heldout", NUM_HELDOUT)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(tokenizer_texts(num_examples=2000), vocab_size=1024)


# --- independent answers: parse the prompt text, recompute the answer with plain Python ---------------------


def _numbers(prompt: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", prompt)]


def _items(prompt: str) -> list[str]:
    return prompt.split(": ", 1)[1].split()


def _expected_answer(task: str, prompt: str) -> str:
    if task == "add":
        return str(sum(_numbers(prompt)))
    if task == "subtract":
        a, b = _numbers(prompt)
        return str(b - a) if prompt.startswith("Subtract") else str(a - b)  # "Subtract b from a."
    if task in ("sort_digits", "sort_words"):
        return " ".join(sorted(_items(prompt)))
    if task == "reverse_words":
        return " ".join(_items(prompt)[::-1])
    if task == "copy":
        return " ".join(_items(prompt))
    if task == "count_words":
        return str(len(_items(prompt)))
    if task == "count_occurrences":
        target = re.match(r"How many times does (\w+) appear in:", prompt).group(1)
        return str(_items(prompt).count(target))
    if task == "count_up":
        start, stop = _numbers(prompt)
        return " ".join(str(n) for n in range(start, stop + 1))
    raise KeyError(task)


# A few facts written out by hand, independent of the tables in demo/data.py.
KNOWN_FACTS = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Kenya": "Nairobi",
    "cow": "moo",
    "duck": "quack",
    "cold": "hot",
    "fast": "slow",
}


def test_every_task_is_exercised(train_examples, heldout_examples):
    assert {e.task for e in train_examples} == set(TASKS)
    assert {e.task for e in heldout_examples} == set(TASKS)
    assert len({e.prompt for e in heldout_examples}) == NUM_HELDOUT  # held-out prompts are unique


def test_answers_are_correct(train_examples, heldout_examples):
    checked = 0
    for example in train_examples[:2400] + heldout_examples:
        if example.task in ("capital", "animal_sound", "opposite"):
            continue
        assert example.response == _expected_answer(example.task, example.prompt), example
        checked += 1
    assert checked > 1500


def test_facts_match_hand_written_table(train_examples):
    seen = 0
    for example in train_examples:
        for key, answer in KNOWN_FACTS.items():
            if re.search(rf"\b{key}\b", example.prompt) and example.task in ("capital", "animal_sound", "opposite"):
                assert example.response == answer, example
                seen += 1
    assert seen > 20


def test_answers_vary_in_length(train_examples):
    lengths = {len(e.response.split()) for e in train_examples}
    assert min(lengths) == 1 and max(lengths) >= 8


def test_generation_is_deterministic():
    assert make_examples("train", 300) == make_examples("train", 300)
    assert make_examples("heldout", 50) == make_examples("heldout", 50)
    assert make_examples("train", 300, seed=1) != make_examples("train", 300)
    assert make_multiple_choice(make_examples("heldout", 50)) == make_multiple_choice(make_examples("heldout", 50))


def test_heldout_split_is_disjoint_from_training(train_examples, heldout_examples):
    assert not {e.split_key for e in train_examples} & {e.split_key for e in heldout_examples}
    assert not {e.prompt for e in train_examples} & {e.prompt for e in heldout_examples}
    assert all(example_is_heldout(e) for e in heldout_examples)
    assert not any(example_is_heldout(e) for e in train_examples)


def test_heldout_arithmetic_problem_is_unseen_in_any_wording(train_examples, heldout_examples):
    """The split holds out the problem (the operands), not one phrasing of it."""

    def problem(example):  # (a, b) in the order of "a + b" / "a - b", whatever the wording
        numbers = _numbers(example.prompt)
        return example.task, tuple(numbers if example.task == "add" else sorted(numbers, reverse=True))

    def problems(examples):
        return {problem(e) for e in examples if e.task in ("add", "subtract")}

    held = problems(heldout_examples)
    assert len(held) >= 30
    assert not held & problems(train_examples)


def test_heldout_facts_are_trained_under_other_wordings(train_examples, heldout_examples):
    trained_pairs = {(e.task, e.response) for e in train_examples}
    for example in heldout_examples:
        if example.task in ("capital", "animal_sound", "opposite"):
            assert (example.task, example.response) in trained_pairs, example


def test_multiple_choice_items(heldout_examples):
    items = make_multiple_choice(heldout_examples)
    assert len(items) == len(heldout_examples)
    for item, example in zip(items, heldout_examples):
        assert item.prompt == example.prompt and item.task == example.task
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        assert item.choices[item.gold] == example.response
        wrong = [c for i, c in enumerate(item.choices) if i != item.gold]
        assert all(
            c != _expected_answer(example.task, example.prompt)
            for c in wrong
            if example.task not in ("capital", "animal_sound", "opposite")
        )
    golds = [item.gold for item in items]
    assert set(golds) == {0, 1, 2, 3}  # the gold position is not a giveaway


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(split="test", num_examples=3), "`split`"),
        (dict(split="train", num_examples=-1), "`num_examples`"),
        (dict(split="train", num_examples=3, tasks=("add", "poetry")), "poetry"),
        (dict(split="train", num_examples=3, tasks=()), "`tasks`"),
        (dict(split="heldout", num_examples=500, tasks=("animal_sound",)), "ran out"),
    ],
)
def test_bad_requests_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_examples(**kwargs)


def test_multiple_choice_rejects_bad_num_choices(heldout_examples):
    with pytest.raises(ValueError, match="`num_choices`"):
        make_multiple_choice(heldout_examples[:2], num_choices=1)


def test_pretraining_corpus_is_english_text_with_the_facts():
    texts = pretraining_texts()
    assert sum(len(t) for t in texts) > 100_000
    assert texts[-len(fact_sentences()) :] == fact_sentences()
    assert "The capital of France is Paris." in texts


def test_tokenizer_texts_hold_no_heldout_prompt(heldout_examples):
    texts = set(tokenizer_texts(num_examples=2000))
    assert not any(e.prompt in texts for e in heldout_examples)


# --- tokenizer ---------------------------------------------------------------------------------------------


def test_special_token_ids_match_illada(tokenizer):
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.mask_token_id == 5 and tokenizer.convert_ids_to_tokens(5) == "<[MASK]>"
    assert tokenizer.convert_ids_to_tokens([3, 4]) == ["<|user|>", "<|assistant|>"]
    assert len(tokenizer) <= 1024


@pytest.mark.parametrize(
    "text", ["Add 60 and 34.", "  two  spaces\nand a newline\t", "café naïve 東京 🙂", "x = [1, 22, 333]", ""]
)
def test_tokenizer_round_trips_text(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == (" " + text if text else "")  # the tokenizer's leading space comes back
    assert not set(ids) & {0, 1, 2, 5}  # plain text never becomes a special token


def test_digits_are_single_tokens(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("1234 + 56789 = 58023, year 2024").input_ids)
    digit_tokens = [t for t in tokens if any(ch.isdigit() for ch in t)]
    assert len(digit_tokens) == len(re.findall(r"\d", "1234 + 56789 = 58023, year 2024"))
    assert all(sum(ch.isdigit() for ch in t) == 1 and t.lstrip("Ġ").isdigit() for t in digit_tokens)


def test_a_word_is_one_token_wherever_it_stands(tokenizer):
    """An answer is tokenised on its own: its first word must be the same token as in the question."""
    question = tokenizer.convert_ids_to_tokens(tokenizer("Copy this text: green owl").input_ids)
    answer = tokenizer.convert_ids_to_tokens(tokenizer("green owl").input_ids)
    assert question[-len(answer) :] == answer


def test_chat_template_renders(tokenizer, train_examples):
    example = train_examples[0]
    text = tokenizer.apply_chat_template(to_messages(example), tokenize=False)
    assert text == f"<bos><|user|>{example.prompt}\n<|assistant|>{example.response}<eos>"
    prompt = tokenizer.apply_chat_template(to_messages(example)[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == f"<bos><|user|>{example.prompt}\n<|assistant|>"
    ids = tokenizer.apply_chat_template(to_messages(example), tokenize=True)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and ids.count(2) == 1 and ids.count(3) == 1 and ids.count(4) == 1
    assert tokenizer.decode(ids) == text.replace("|>", "|> ")  # each text after a marker gets its space


def test_chat_template_rejects_other_roles(tokenizer):
    with pytest.raises(Exception, match="`system`, `user` and `assistant`"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "hi"}], tokenize=False)


def test_tokenizer_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "What is 12 + 7?"
    assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert reloaded.mask_token_id == 5 and reloaded.chat_template == tokenizer.chat_template


def test_tokenizer_training_is_deterministic(tokenizer):
    again = train_tokenizer(tokenizer_texts(num_examples=2000), vocab_size=1024)
    assert again.get_vocab() == tokenizer.get_vocab()


@pytest.mark.parametrize("vocab_size", [100, 2.5, True])
def test_bad_vocab_size_raises(vocab_size):
    with pytest.raises(ValueError, match="`vocab_size`"):
        train_tokenizer(["some text"], vocab_size=vocab_size)


def test_wrap_rejects_misplaced_special_tokens():
    shuffled = Tokenizer(
        models.BPE(
            vocab={"<pad>": 0, "<bos>": 1, "<eos>": 2, "<|user|>": 3, "<|assistant|>": 4, "<[MASK]>": 5, "a": 6},
            merges=[],
        )
    )
    with pytest.raises(ValueError, match="'<bos>' at id 1, expected 0"):
        wrap_tokenizer(shuffled)


def test_examples_are_reproducible_with_a_fresh_rng_state():
    """Global random state does not leak into the generators."""
    random.seed(99)
    first = make_examples("train", 40)
    random.seed(7)
    assert make_examples("train", 40) == first


def test_new_fact_table_is_unseen_by_the_demo_and_split_by_wording():
    from illada.demo.data import COLOUR_TEMPLATES, COLOURS, TASKS, fact_sentences, new_fact_examples

    train, heldout = new_fact_examples("train"), new_fact_examples("heldout")
    # every (thing, wording) question, written out here: prompt -> (thing, colour)
    questions = {
        template.format(x=thing): (thing, colour) for thing, colour in COLOURS.items() for template in COLOUR_TEMPLATES
    }
    assert {e.prompt for e in train} | {e.prompt for e in heldout} == set(questions)
    assert not {e.prompt for e in train} & {e.prompt for e in heldout}
    assert heldout and all(e.response == questions[e.prompt][1] for e in train + heldout)
    # every fact can be learned: at least one training wording asks it
    assert {questions[e.prompt][0] for e in train} == set(COLOURS)
    assert "colour" not in TASKS
    corpus = " ".join(fact_sentences()).lower()
    assert "colour" not in corpus and all(f"the {thing} is" not in corpus for thing in COLOURS)
    with pytest.raises(ValueError, match="split"):
        new_fact_examples("test")
