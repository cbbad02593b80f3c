"""Data of the `illada_demo` lm-evaluation-harness tasks: held-out questions of the demo model's look-up tasks.

The documents come from `illada.demo.data` (the generators the demo model was trained with) when lm-eval loads the task
(`custom_dataset` in the YAML files), so the evaluation runs offline:

- `test`: questions from the held-out split (`make_examples("heldout", ...)`, drawn with the seed of
  `python -m illada.demo.evaluate`), never seen in training: capitals, animal sounds and opposites asked in wordings
  not trained on for that fact (the demo model's best tasks, see docs/demo.md, "Quality on the held-out split").
- `train`: training-split questions, the few-shot examples (`--num_fewshot`).

Multiple choice puts the reference among `illada.demo.data.NUM_CHOICES - 1` near misses (`make_multiple_choice`).
The demo model answers in its chat format: run the tasks with `--apply_chat_template`.
"""

import sys
from pathlib import Path

import datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `demo`
from illada.demo.data import make_examples, make_multiple_choice  # noqa: E402
from illada.demo.evaluate import EVAL_SEED  # noqa: E402

TASKS = ("capital", "animal_sound", "opposite")
PER_TASK = 16
FEWSHOT_DOCS = 30


def _documents(split: str, num_docs: int, seed: int) -> list[dict]:
    examples = make_examples(split, num_docs, seed=seed, tasks=TASKS)
    items = make_multiple_choice(examples, seed=seed)
    return [
        {"task": e.task, "question": e.prompt, "answer": e.response, "choices": list(item.choices), "label": item.gold}
        for e, item in zip(examples, items)
    ]


def demo_dataset(per_task: int = PER_TASK, seed: int = EVAL_SEED, **metadata) -> datasets.DatasetDict:
    """`per_task` held-out questions of each task of `TASKS` (`test`) and few-shot examples (`train`); lm-eval
    passes the task's `metadata` too (not used)."""
    return datasets.DatasetDict(
        {
            "test": datasets.Dataset.from_list(_documents("heldout", per_task * len(TASKS), seed)),
            "train": datasets.Dataset.from_list(_documents("train", FEWSHOT_DOCS, seed)),
        }
    )
