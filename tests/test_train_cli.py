"""`train_sft.py` as a user runs it: jsonl files in each of trl's formats, a `datasets` folder written by
`save_to_disk`, a folder of jsonl files, defaults that fit the model, LoRA adapters that PEFT's loaders read in a
fresh process, and data errors that name the file and line (issue 12, items 2 and 10)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from tiny import make_config, make_model
from tiny_tokenizer import make_tiny_tokenizer

from illada import data as data_illada
from illada import sft_cli as train_sft

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def turns(i: int) -> list[dict]:
    return [
        {"role": "user", "content": f"count {i % 40} {i % 40 + 1}"},
        {"role": "assistant", "content": f"{i % 40 + 2}"},
    ]


ROWS = {
    "messages": lambda i: {"messages": [{"role": "system", "content": "count"}, *turns(i)]},
    "prompt_completion": lambda i: {"prompt": f"count {i % 40} {i % 40 + 1} ", "completion": f"{i % 40 + 2}"},
    "conversational_prompt_completion": lambda i: {"prompt": turns(i)[:1], "completion": turns(i)[1:]},
    "legacy_prompt_response": lambda i: {"prompt": f"count {i % 40}", "response": f"{i % 40 + 1}"},
    "text": lambda i: {"text": " ".join(str((i + k) % 50) for k in range(6))},
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def model_folder(tmp_path: Path, weights: bool = False) -> list[str]:
    """A tiny config (or model) folder with the tiny tokenizer; returns the model flag."""
    folder = tmp_path / "init"
    if weights:
        make_model(seed=0).save_pretrained(folder)
    else:
        make_config().save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    return ["--model_name_or_path" if weights else "--config_name", str(folder)]


def run(tmp_path: Path, data_flags: list[str], *extra: str, model_flag: list[str] | None = None) -> Path:
    out = tmp_path / "out"
    train_sft.main(
        [
            *(model_flag or model_folder(tmp_path)),
            *data_flags,
            "--output_dir",
            str(out),
            "--use_cpu",
            "--report_to",
            "none",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--learning_rate",
            "1e-3",
            "--min_lr",
            "1e-4",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
            *extra,
        ]
    )
    return out


def trained_steps(out: Path) -> int:
    return json.loads((out / "trainer_state.json").read_text())["global_step"]


@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_cli_trains_on_jsonl_in_each_trl_format(tmp_path, fmt):
    data = write_jsonl(tmp_path / "train.jsonl", [ROWS[fmt](i) for i in range(24)])
    out = run(tmp_path, ["--train_files", str(data)])
    assert trained_steps(out) == 2 and (out / "model.safetensors").is_file()
    # No --max_seq_length: the paper's 8192 is capped by the tiny model's max_position_embeddings (256).
    assert "| `max_length` | 256 |" in (out / "README.md").read_text()


def test_cli_pretrains_on_text(tmp_path):
    data = write_jsonl(tmp_path / "docs.jsonl", [ROWS["text"](i) for i in range(40)])
    out = run(
        tmp_path,
        ["--train_files", str(data)],
        "--data_format",
        "pretrain",
        "--lr_schedule",
        "pretrain",
        "--max_seq_length",
        "16",
    )
    assert trained_steps(out) == 2


def test_cli_reads_a_saved_datasets_folder_with_its_splits(tmp_path):
    rows = [ROWS["messages"](i) for i in range(30)]
    DatasetDict({"train_sft": Dataset.from_list(rows[:24]), "test_sft": Dataset.from_list(rows[24:])}).save_to_disk(
        str(tmp_path / "saved")
    )
    out = run(
        tmp_path,
        ["--dataset_name", str(tmp_path / "saved"), "--dataset_split", "train_sft", "--eval_split", "test_sft"],
    )
    assert trained_steps(out) == 2 and (out / "eval_results.json").is_file()
    with pytest.raises(ValueError, match=r"`dataset_split`='train' is not a split of .*saved: it has"):
        run(tmp_path, ["--dataset_name", str(tmp_path / "saved")], "--overwrite_output_dir")


def test_cli_reads_a_single_saved_dataset_and_a_folder_of_jsonl(tmp_path):
    Dataset.from_list([ROWS["prompt_completion"](i) for i in range(20)]).save_to_disk(str(tmp_path / "one"))
    assert trained_steps(run(tmp_path, ["--dataset_name", str(tmp_path / "one")], "--overwrite_output_dir")) == 2
    (tmp_path / "folder").mkdir()
    write_jsonl(tmp_path / "folder" / "a.jsonl", [ROWS["messages"](i) for i in range(10)])
    write_jsonl(tmp_path / "folder" / "b.jsonl", [ROWS["messages"](i) for i in range(10, 20)])
    assert (
        trained_steps(
            run(tmp_path / "f", ["--dataset_name", str(tmp_path / "folder")], model_flag=model_folder(tmp_path))
        )
        == 2
    )
    loaded = data_illada.load_data(dataset_name=str(tmp_path / "folder"))
    assert loaded["messages"] == [ROWS["messages"](i)["messages"] for i in range(20)]


LOAD_ADAPTER = """
import sys, torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM
adapter, base, ids = sys.argv[1], sys.argv[2], torch.tensor([[7, 8, 9, 30, 31]])
auto = AutoPeftModelForCausalLM.from_pretrained(adapter, trust_remote_code=True).eval()
plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, trust_remote_code=True), adapter).eval()
with torch.no_grad():
    torch.save({"auto": auto(input_ids=ids).logits, "plain": plain(input_ids=ids).logits,
                "merged": auto.merge_and_unload()(input_ids=ids).logits}, sys.argv[3])
"""


def test_cli_lora_adapter_loads_with_peft_in_a_fresh_process(tmp_path):
    model_flag = model_folder(tmp_path, weights=True)
    data = write_jsonl(tmp_path / "train.jsonl", [ROWS["messages"](i) for i in range(24)])
    out = run(
        tmp_path,
        ["--train_files", str(data)],
        "--use_lora",
        "--lora_r",
        "4",
        "--learning_rate",
        "1e-2",
        model_flag=model_flag,
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == model_flag[1]
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "AutoPeftModelForCausalLM" in card

    base = make_model(seed=0)
    from peft import PeftModel

    expected_model = PeftModel.from_pretrained(base, str(out)).eval()  # in-process reference
    ids = torch.tensor([[7, 8, 9, 30, 31]])
    with torch.no_grad():
        expected = expected_model(input_ids=ids).logits
        untrained = make_model(seed=0)(input_ids=ids).logits
    assert not torch.allclose(expected, untrained)  # the adapter changes the outputs
    result = subprocess.run(
        [sys.executable, "-c", LOAD_ADAPTER, str(out), model_flag[1], str(tmp_path / "l.pt")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logits = torch.load(tmp_path / "l.pt")
    for name in ("auto", "plain", "merged"):
        torch.testing.assert_close(logits[name], expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Data errors name the file and line (issue 12, items 2 and 10)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines,kwargs,error,match",
    [
        ([], {}, ValueError, r"bad.jsonl is empty: it holds no JSON rows"),
        (
            [
                '{"prompt": "a", "response": "b"}',
                '{"prompt": "c", "response": "d"}',
                '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
            ],
            {},
            ValueError,
            r"bad.jsonl line 3 is in the messages format but the data before it are in the prompt-response format",
        ),
        (['{"messages": "user: hi"}'], {}, TypeError, r"bad.jsonl line 1: `messages` must be a list of .* got str"),
        (
            ['{"text": "a b"}', '{"text": null}'],
            {"data_format": "pretrain"},
            ValueError,
            r"bad.jsonl line 2: `text` is missing or null",
        ),
        (
            ['{"prompt": 3, "completion": "4"}'],
            {},
            TypeError,
            r"bad.jsonl line 1: `prompt` must be a string, got int 3",
        ),
        (
            ['{"prompt": "a", "completion": "b"}', '{"prompt": "a", "completion": "b"', ""],
            {},
            ValueError,
            r"bad.jsonl line 2 is not valid JSON",
        ),
        (
            ['{"prompt": "a", "completion": "b"}', '{"prompt": null, "completion": "b"}'],
            {},
            ValueError,
            r"bad.jsonl line 2: `prompt` is missing or null",
        ),
        (
            ['{"completion": "b"}'],
            {},
            ValueError,
            r"bad.jsonl line 1 has \['completion'\] \(`prompt` is missing or null\)",
        ),
        (['["a", "b"]'], {}, TypeError, r"bad.jsonl line 1 must hold a JSON object, got list"),
    ],
)
def test_jsonl_errors_name_the_file_and_line(tmp_path, lines, kwargs, error, match):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(error, match=match):
        data_illada.load_data_files([str(path)], **kwargs)


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin.jsonl is not UTF-8 text"):
        data_illada.load_data_files([str(path)])


def test_missing_prompt_without_a_chat_template_raises_not_trains_user_none(tmp_path):
    """Issue 12 item 2: the old plain format rendered a null prompt as the text "user: None"."""
    tokenizer = make_tiny_tokenizer()
    assert tokenizer.chat_template is None
    rows = Dataset.from_list([{"prompt": "count 1", "response": "2"}, {"prompt": None, "response": "3"}])
    with pytest.raises(ValueError, match=r"Example 1: `prompt` is missing or null"):
        data_illada.prepare_dataset(rows, tokenizer, 32)
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "count 1", "response": "2"}, {"response": "3"}])
    with pytest.raises(ValueError, match=r"train.jsonl line 2: `prompt` is missing or null"):
        run(tmp_path, ["--train_files", str(path)])
    assert not (tmp_path / "out" / "model.safetensors").exists()
