"""lm-eval on the shipped demo model: chat templates (`--apply_chat_template`, `--fewshot_as_multiturn`), the
`illada_demo` tasks of `eval_tasks/`, and no accuracy reported from NaN scores.

The prompts the model receives are captured (spies on `generate` and `score_continuations`) and compared with
the tokenizer's own `apply_chat_template` of the documents' questions; the reported scores are compared with
the model's API called directly on the same documents.
"""

import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from illada import lm_eval_model  # noqa: E402
from illada.lm_eval_model import ILLaDAEvalHarness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "illada-demo"
EVAL_TASKS = ROOT / "eval_tasks"
sys.path.insert(0, str(EVAL_TASKS / "illada_demo"))
from demo_data import demo_dataset  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not DEMO.is_dir(), reason="no illada-demo/ folder"),
    pytest.mark.usefixtures("one_thread"),
]
LIMIT = 4


@pytest.fixture(scope="module")
def harness():
    return ILLaDAEvalHarness(pretrained=str(DEMO), trust_remote_code=True, device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def docs():
    return demo_dataset()


@pytest.fixture(scope="module")
def task_manager():
    return TaskManager(include_path=str(EVAL_TASKS), include_defaults=False)  # not the 10k built-in tasks


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt as transformers renders and tokenises a chat, ready for the assistant's answer."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


def user(text: str) -> dict:
    return {"role": "user", "content": text}


class Spy:
    """Records the prompts a model method receives, then calls it."""

    def __init__(self, method, prompts_of):
        self.method, self.prompts_of, self.prompts = method, prompts_of, []

    def __call__(self, *args, **kwargs):
        self.prompts += self.prompts_of(*args, **kwargs)
        return self.method(*args, **kwargs)


def generate_prompts(input_ids, attention_mask=None, **kwargs) -> list[list[int]]:
    return [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]


def scored_prompts(prompts, continuations, *args, **kwargs) -> list[list[int]]:
    return [list(prompt) for prompt in prompts]


def run(harness, task_manager, monkeypatch, task: str, **options) -> tuple[dict, list[list[int]]]:
    """`simple_evaluate` on `task`; returns the results and the prompts the model received."""
    method, prompts_of = (
        ("generate", generate_prompts) if task.endswith("gen") else ("score_continuations", scored_prompts)
    )
    spy = Spy(getattr(harness.model, method), prompts_of)
    monkeypatch.setattr(harness.model, method, spy)
    results = lm_eval.simple_evaluate(
        model=harness, tasks=[task], task_manager=task_manager, limit=LIMIT, bootstrap_iters=0, **options
    )
    return results, spy.prompts


# ----------------------------------------------------------------------------------------- chat templates


@pytest.mark.parametrize("task", ["illada_demo_gen", "illada_demo_mc"])
def test_apply_chat_template_sends_the_chat_prompt(harness, docs, task_manager, monkeypatch, task):
    _, prompts = run(harness, task_manager, monkeypatch, task, apply_chat_template=True)
    tokenizer = harness.tokenizer
    expected = [chat_ids(tokenizer, [user(doc["question"])]) for doc in docs["test"].select(range(LIMIT))]
    assert sorted(map(tuple, prompts)) == sorted(map(tuple, expected * (1 if task.endswith("gen") else 4)))
    assert tokenizer.convert_tokens_to_ids("<|user|>") in expected[0]  # the template did add its markers
    _, plain = run(harness, task_manager, monkeypatch, task, apply_chat_template=False)
    assert set(map(tuple, plain)).isdisjoint(map(tuple, expected))


def test_fewshot_as_multiturn_sends_earlier_turns(harness, docs, task_manager, monkeypatch):
    _, prompts = run(
        harness,
        task_manager,
        monkeypatch,
        "illada_demo_gen",
        apply_chat_template=True,
        fewshot_as_multiturn=True,
        num_fewshot=1,
    )
    tokenizer = harness.tokenizer
    candidates = {
        tuple(
            chat_ids(
                tokenizer,
                [user(shot["question"]), {"role": "assistant", "content": shot["answer"]}, user(doc["question"])],
            )
        ): doc["question"]
        for shot in docs["train"]
        for doc in docs["test"].select(range(LIMIT))
    }
    assert sorted(candidates[tuple(prompt)] for prompt in prompts) == sorted(docs["test"][:LIMIT]["question"])


def test_system_instruction_becomes_a_system_turn(harness, docs, task_manager, monkeypatch):
    messages = [{"role": "system", "content": "Answer briefly."}, user(docs["test"][0]["question"])]
    expected = chat_ids(harness.tokenizer, messages)
    _, prompts = run(
        harness,
        task_manager,
        monkeypatch,
        "illada_demo_gen",
        apply_chat_template=True,
        system_instruction="Answer briefly.",
    )
    assert expected in prompts


def test_a_gen_prefix_continues_the_assistant_turn(harness):
    # lm-eval asks for add_generation_prompt=False when a task's `gen_prefix` starts the answer: the last
    # (assistant) message is continued, without its end-of-turn EOS. Expected text written from the template.
    text = harness.apply_chat_template(
        [user("Q?"), {"role": "assistant", "content": "The answer is"}], add_generation_prompt=False
    )
    assert text == "<bos><|user|>Q?\n<|assistant|>The answer is"
    assert harness.apply_chat_template([user("Q?")]) == "<bos><|user|>Q?\n<|assistant|>"


# ----------------------------------------------------------------------------------------- end to end


def evaluate_demo_tasks(how: str, tmp_path: Path, task_manager) -> tuple[dict, dict[str, list[dict]]]:
    """Both demo tasks with the chat template, through the command line (`run_lm_eval.py`) or `simple_evaluate`
    with the registered model name; returns the results per task and the logged samples in doc order."""
    tasks, model_args = ["illada_demo_mc", "illada_demo_gen"], f"pretrained={DEMO},trust_remote_code=True"
    if how == "cli":
        lm_eval_model.main(
            [
                "--model",
                "illada",
                "--device",
                "cpu",
                "--batch_size",
                "8",
                "--limit",
                str(LIMIT),
                "--model_args",
                model_args,
                "--apply_chat_template",
                "--include_path",
                str(EVAL_TASKS),
                "--tasks",
                ",".join(tasks),
                "--output_path",
                str(tmp_path / "out"),
                "--log_samples",
            ]
        )
        results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
        logged = {
            task: [
                json.loads(line)
                for line in next((tmp_path / "out").rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()
            ]
            for task in tasks
        }
    else:
        output = lm_eval.simple_evaluate(
            model="illada",
            model_args=model_args,
            tasks=tasks,
            device="cpu",
            batch_size=8,
            limit=LIMIT,
            apply_chat_template=True,
            log_samples=True,
            task_manager=task_manager,
            bootstrap_iters=0,
        )
        results, logged = output["results"], output["samples"]
    return results, {task: sorted(rows, key=lambda row: row["doc_id"]) for task, rows in logged.items()}


@pytest.mark.parametrize("how", ["api", pytest.param("cli", marks=pytest.mark.slow)])  # the cli indexes 10k tasks
def test_demo_tasks_match_our_api(how, tmp_path, task_manager):
    results, samples = evaluate_demo_tasks(how, tmp_path, task_manager)
    docs = demo_dataset()["test"].select(range(LIMIT))
    model = AutoModelForCausalLM.from_pretrained(DEMO, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(DEMO, trust_remote_code=True)
    prompts = [chat_ids(tokenizer, [user(doc["question"])]) for doc in docs]

    choices = model.score_choices_batch(prompts, [doc["choices"] for doc in docs], tokenizer=tokenizer)
    hits = [scores.best == doc["label"] for scores, doc in zip(choices, docs)]
    assert results["illada_demo_mc"]["acc,none"] == pytest.approx(sum(hits) / LIMIT)
    for sample in samples["illada_demo_mc"]:
        reported = [float(response[0][0]) for response in sample["resps"]]
        assert reported == pytest.approx(choices[sample["doc_id"]].scores.tolist(), abs=1e-5)

    answers = []
    for prompt in prompts:  # one at a time, with the checkpoint's generation settings
        out = model.generate(torch.tensor([prompt]))
        answers.append(tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True).strip())
    exact = [answer == doc["answer"] for answer, doc in zip(answers, docs)]
    assert results["illada_demo_gen"]["exact_match,strip"] == pytest.approx(sum(exact) / LIMIT)
    assert [sample["filtered_resps"][0] for sample in samples["illada_demo_gen"]] == answers
    assert any(exact)  # the demo model answers some of its held-out questions


def test_nan_scores_stop_the_evaluation_instead_of_reporting_an_accuracy(harness, task_manager):
    broken = copy.copy(harness)
    broken.model = copy.deepcopy(harness.model)
    with torch.no_grad():
        broken.model.model.norm.weight[0] = math.nan
    with pytest.raises(FloatingPointError, match="NaN"):
        lm_eval.simple_evaluate(
            model=broken, tasks=["illada_demo_mc"], task_manager=task_manager, limit=2, bootstrap_iters=0
        )
