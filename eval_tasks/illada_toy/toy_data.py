"""Data of the `illada_toy` lm-evaluation-harness tasks: small word problems generated from a fixed seed.

No download: the documents are generated when lm-eval loads the task (`custom_dataset` in the YAML files),
so the whole evaluation path runs offline. Every document uses only the words of `VOCABULARY`, which lets a
word-level test tokenizer cover the task exactly.

    Ann has 3 apples and gets 4 more . How many apples does Ann have now ?  ->  7 apples
"""

import random

import datasets

NAMES = ("Tom", "Ann", "Sam", "Mia")
FRUITS = ("apples", "pears", "plums")
MAX_OPERAND = 9
NUM_CHOICES = 4
TEMPLATE = "{name} has {a} {fruit} and gets {b} more . How many {fruit} does {name} have now ?"
# Every word a document can contain (numbers up to the largest wrong choice).
VOCABULARY = sorted(
    set(TEMPLATE.format(name="x", a=0, b=0, fruit="x").split()) - {"x", "0"}
    | set(NAMES) | set(FRUITS) | {str(n) for n in range(2 * MAX_OPERAND + NUM_CHOICES + 1)}
)


def _document(rng: random.Random) -> dict:
    name, fruit = rng.choice(NAMES), rng.choice(FRUITS)
    a, b = rng.randint(1, MAX_OPERAND), rng.randint(1, MAX_OPERAND)
    totals = [a + b + shift for shift in range(-1, NUM_CHOICES - 1)]  # the right total and its neighbours
    rng.shuffle(totals)
    return {
        "question": TEMPLATE.format(name=name, a=a, b=b, fruit=fruit),
        "choices": [f"{total} {fruit}" for total in totals],
        "label": totals.index(a + b),
        "answer": f"{a + b} {fruit}",
    }


def toy_dataset(num_docs: int = 24, seed: int = 0, **metadata) -> datasets.DatasetDict:
    """`num_docs` word problems in a `test` split (lm-eval passes its `metadata` too; it is not used)."""
    rng = random.Random(seed)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([_document(rng) for _ in range(num_docs)])})
