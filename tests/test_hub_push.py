"""Push to the Hub, end to end (issue 31): every push path (`model.push_to_hub`, `tokenizer.push_to_hub`, the SFT and
VRPO trainers' `push_to_hub()`, `train_sft.py --push_to_hub`, `train_vrpo.py --push_to_hub`, a LoRA adapter) sends a
local Hub (`tests/hub_server.py`, started on 127.0.0.1 by the fixture) exactly the files a model repo needs, and a
fresh process with an empty cache downloads the repo through `HF_ENDPOINT`, loads it with `trust_remote_code=True`
and generates the same tokens as the pushed model. Branches, private repos and a push that fails half-way too.

The real upload code of transformers, trl, PEFT and huggingface_hub runs; the only setting changed is
`HF_HUB_DISABLE_XET` (the local Hub speaks LFS, not Xet). Only loopback connections are allowed (`loopback_only`)."""

import hashlib
import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
from datasets import Dataset
from hub_server import LocalHub, only_loopback_connections, point_huggingface_hub_at
from huggingface_hub import HfApi
from peft import PeftModel
from tiny import SHARP, make_model
from tiny_tokenizer import make_tiny_tokenizer
from vrpo_helper import make_trainer as make_vrpo_trainer
from vrpo_helper import preference_rows

from illada import sft_cli, vrpo_cli
from illada.checkpoints import STAGING_DIR
from illada.modeling_illada import ILLaDAForCausalLM
from illada.trainer import DiffusionSFTConfig, DiffusionSFTTrainer

pytestmark = pytest.mark.usefixtures("one_thread", "loopback_only")
ROOT = Path(__file__).resolve().parents[1]
RUNTIME = {path.name for path in ROOT.glob("*_illada.py")}  # the code files trust_remote_code loads
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
MODEL_FILES = RUNTIME | {"config.json", "generation_config.json", "model.safetensors"}
REPO_FILES = MODEL_FILES | TOKENIZER_FILES | {"README.md", ".gitattributes"}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
# What Trainer.push_to_hub uploads besides the model on every Hub (transformers' convention): the training settings
# and the run's metrics. The local-only files (optimizer, scheduler, rng state, checkpoint-*) must not be there.
TRAINER_FILES = {"training_args.bin"}
RUN_FILES = {"all_results.json", "train_results.json", "trainer_state.json"}
LOCAL_ONLY = ("optimizer.pt", "scheduler.pt", "rng_state", "checkpoint-", "train.jsonl", "prefs.jsonl")
PROMPT = [[0, 3, 8, 28, 37, 38, 4]]  # <s> <|user|> count 3 4 <|assistant|>
GENERATE = {"max_new_tokens": 8, "block_length": 4, "steps": 4}


@pytest.fixture(scope="module")
def hub():
    with LocalHub() as server:
        yield server


@pytest.fixture
def endpoint(hub, monkeypatch, tmp_path):
    return point_huggingface_hub_at(hub, monkeypatch, tmp_path / "cache")


@pytest.fixture(scope="module")
def loopback_only():
    with only_loopback_connections():
        yield


# A fresh process with an empty cache and without this checkout on its path: downloads each repo, loads it with
# trust_remote_code, generates, and writes what it got (or the error) per repo.
LOAD = """
import json, socket, sys, traceback
connect = socket.socket.connect
def loopback_connect(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
        raise OSError(f"not loopback: {address}")
    return connect(sock, address)
socket.socket.connect = loopback_connect

import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoTokenizer
specs, prompt, generate, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
results = {}
for repo, revision, kind in specs:
    try:
        auto = AutoPeftModelForCausalLM if kind == "adapter" else AutoModelForCausalLM
        model = auto.from_pretrained(repo, revision=revision, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision, trust_remote_code=True)
        chat = tokenizer.apply_chat_template([{"role": "user", "content": "count 3 4"}], add_generation_prompt=True)
        ids = torch.tensor(prompt)
        with torch.no_grad():
            tokens = model.generate(input_ids=ids, **generate)
            logits = model(input_ids=ids).logits
        base = model.get_base_model() if kind == "adapter" else model
        results[f"{repo}@{revision}"] = {"tokens": tokens.tolist(), "logits": logits.tolist(),
            "class": type(base).__name__, "module": type(base).__module__, "chat": list(chat["input_ids"])}
    except Exception:
        results[f"{repo}@{revision}"] = {"error": traceback.format_exc()}
json.dump(results, open(out, "w"))
"""


def load_in_fresh_process(hub: LocalHub, tmp_path: Path, specs: list[tuple[str, str, str]]) -> dict:
    """What another machine gets: each `(repo_id, revision, kind)` downloaded through `HF_ENDPOINT` into an empty
    HF_HOME and loaded with trust_remote_code (`AutoPeftModelForCausalLM` for kind "adapter")."""
    out = tmp_path / "loaded.json"
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "empty-hf-home"),
        "HF_TOKEN": hub.token,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PATH": "",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-c", LOAD, json.dumps(specs), json.dumps(PROMPT), json.dumps(GENERATE), str(out)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------------------------
# The pushes, done once for the module; one fresh process then loads every pushed repo
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Push:
    repo_id: str
    model: Any  # what was pushed, to compare the reloaded model with
    revision: str = "main"
    kind: str = "model"  # or "adapter"
    output_dir: Path | None = None
    main_before: dict | None = None


def push_model_and_tokenizer(folder: Path) -> Push:
    model = make_model(seed=2, **SHARP)
    model.push_to_hub("tester/tiny")
    make_tiny_tokenizer(chat_template=True).push_to_hub("tester/tiny")
    return Push("tester/tiny", model)


def push_to_a_branch(folder: Path, hub: LocalHub) -> Push:
    make_model(seed=4, **SHARP).push_to_hub("tester/branched")
    main_before = hub.files("tester/branched")
    second = make_model(seed=5, **SHARP)
    second.push_to_hub("tester/branched", revision="experiment", commit_message="second model")
    make_tiny_tokenizer(chat_template=True).push_to_hub("tester/branched", revision="experiment")
    return Push("tester/branched", second, revision="experiment", main_before=main_before)


def push_sft_trainer(folder: Path) -> Push:
    """Trainer with `push_to_hub=True`: a push at every checkpoint (in the background), then `push_to_hub()`; the
    base model comes from the Hub, so the card names it. A leftover of an interrupted save must stay local."""
    base = ILLaDAForCausalLM.from_pretrained("tester/tiny")
    args = DiffusionSFTConfig(str(folder), hub_model_id="tester/sft", **TRAINING)
    trainer = DiffusionSFTTrainer(
        base,
        args=args,
        train_dataset=Dataset.from_list(sft_rows()),
        processing_class=make_tiny_tokenizer(chat_template=True),
    )
    trainer.train()
    interrupted = folder / STAGING_DIR / "checkpoint-3"
    interrupted.mkdir(parents=True)
    (interrupted / "optimizer.pt").write_bytes(b"an interrupted save")
    trainer.push_to_hub()
    return Push("tester/sft", trainer.model, output_dir=folder)


def push_vrpo_trainer(folder: Path) -> Push:
    trainer = make_vrpo_trainer(
        str(folder), push_to_hub=True, hub_model_id="tester/vrpo", save_strategy="steps", save_steps=1
    )
    trainer.train()
    trainer.push_to_hub()
    return Push("tester/vrpo", trainer.model, output_dir=folder)


def cli_flags(folder: Path, data: Path, repo_id: str) -> list[str]:
    return [
        "--model_name_or_path", "tester/tiny", "--train_files", str(data), "--output_dir", str(folder),
        "--push_to_hub", "--hub_model_id", repo_id, "--use_cpu", "--report_to", "none", "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--save_steps", "1", "--disable_tqdm", "true",
    ]  # fmt: skip


def push_sft_cli(folder: Path) -> Push:
    data = write_jsonl(folder.parent / "train.jsonl", sft_rows())
    sft_cli.main([*cli_flags(folder, data, "tester/sft-cli"), "--min_lr", "1e-3", "--max_seq_length", "32"])
    return Push("tester/sft-cli", ILLaDAForCausalLM.from_pretrained(folder), output_dir=folder)


def push_sft_cli_lora(folder: Path) -> Push:
    data = write_jsonl(folder.parent / "train.jsonl", sft_rows())
    flags = ["--min_lr", "1e-3", "--max_seq_length", "32", "--use_lora", "--lora_r", "4"]
    sft_cli.main([*cli_flags(folder, data, "tester/sft-lora"), *flags])
    pushed = PeftModel.from_pretrained(ILLaDAForCausalLM.from_pretrained("tester/tiny"), str(folder))
    return Push("tester/sft-lora", pushed, kind="adapter", output_dir=folder)


def push_vrpo_cli(folder: Path) -> Push:
    data = write_jsonl(folder.parent / "prefs.jsonl", preference_rows(8, conversational=False).to_list())
    vrpo_cli.main([*cli_flags(folder, data, "tester/vrpo-cli"), "--num_mc_samples", "2"])
    return Push("tester/vrpo-cli", ILLaDAForCausalLM.from_pretrained(folder), output_dir=folder)


PUSHES = {  # in order: the trainers start from the model pushed first
    "model": push_model_and_tokenizer,
    "branch": push_to_a_branch,
    "sft_trainer": push_sft_trainer,
    "vrpo_trainer": push_vrpo_trainer,
    "sft_cli": push_sft_cli,
    "sft_cli_lora": push_sft_cli_lora,
    "vrpo_cli": push_vrpo_cli,
}
TRAINING = dict(
    max_steps=2,
    per_device_train_batch_size=2,
    learning_rate=1e-2,
    min_lr=1e-3,
    use_cpu=True,
    report_to="none",
    save_strategy="steps",
    save_steps=1,
    disable_tqdm=True,
    max_length=32,
    push_to_hub=True,
)


def sft_rows(n: int = 16) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"count {i} {i + 1}"}, {"role": "assistant", "content": f"{i + 2}"}]}
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory) -> dict[str, Push | Exception]:
    """Runs every push of `PUSHES` (a failure is kept and raised by the test that reads it), then loads every
    pushed repo in one fresh process (`loaded`)."""
    tmp = tmp_path_factory.mktemp("pushes")
    results = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        point_huggingface_hub_at(hub, monkeypatch, cache=tmp / "pushing-process-cache")
        for name, push in PUSHES.items():
            (tmp / name).mkdir()
            try:
                arguments = (tmp / name / "out", hub) if name == "branch" else (tmp / name / "out",)
                results[name] = push(*arguments)
            except Exception as error:  # noqa: BLE001 - raised again by the test of this push
                results[name] = error
    done = [push for push in results.values() if isinstance(push, Push)]
    results["loaded"] = load_in_fresh_process(hub, tmp, [(p.repo_id, p.revision, p.kind) for p in done])
    return results


def result(pushed: dict, name: str) -> tuple[Push, dict]:
    push = pushed[name]
    if isinstance(push, Exception):
        raise push
    return push, pushed["loaded"][f"{push.repo_id}@{push.revision}"]


def assert_generates_the_same(push: Push, loaded: dict) -> None:
    if "error" in loaded:
        raise AssertionError(f"{push.repo_id}@{push.revision} did not load in a fresh process:\n{loaded['error']}")
    ids = torch.tensor(PROMPT)
    model = push.model.eval()
    with torch.no_grad():
        tokens = model.generate(input_ids=ids, **GENERATE).tolist()
        logits = model(input_ids=ids).logits
    assert loaded["module"].startswith("transformers_modules.")  # the repo's own code files, not this checkout's
    torch.testing.assert_close(torch.tensor(loaded["logits"]), logits, rtol=1e-5, atol=1e-5)
    assert loaded["tokens"] == tokens


def card_metadata(card: str) -> str:
    assert card.startswith("---\n"), card[:200]
    return card.split("---\n")[1]


def assert_nothing_local(files: dict[str, bytes]) -> None:
    leaked = [path for path in files if any(marker in path for marker in LOCAL_ONLY)]
    assert not leaked, f"local-only files reached the repo: {leaked}"


def assert_model_repo(files: dict[str, bytes], push: Push, loaded: dict) -> None:
    """config.json with auto_map, the runtime files byte for byte, weights, generation config, tokenizer with
    its chat template, a card tagged custom_code; nothing local; reloads elsewhere and generates the same."""
    assert MODEL_FILES | TOKENIZER_FILES | {"README.md"} <= set(files)
    assert json.loads(files["config.json"])["auto_map"]["AutoModelForCausalLM"] == "modeling_illada.ILLaDAForCausalLM"
    for name in RUNTIME:
        assert files[name] == (ROOT / name).read_bytes(), name
    assert "- custom_code" in card_metadata(files["README.md"].decode())
    assert_nothing_local(files)
    assert_generates_the_same(push, loaded)
    assert loaded["class"] == "ILLaDAForCausalLM"
    chat = make_tiny_tokenizer(chat_template=True).apply_chat_template(
        [{"role": "user", "content": "count 3 4"}], add_generation_prompt=True
    )
    assert loaded["chat"] == chat["input_ids"]


# ---------------------------------------------------------------------------------------------------------------
# model.push_to_hub, tokenizer.push_to_hub, branches, private repos
# ---------------------------------------------------------------------------------------------------------------


def test_model_and_tokenizer_push_holds_what_the_hub_needs_and_loads_elsewhere(hub, pushed):
    push, loaded = result(pushed, "model")
    files = hub.files(push.repo_id)
    assert set(files) == REPO_FILES
    assert hub.lfs_files(push.repo_id) == {"model.safetensors"}  # the weights go through LFS, as on the Hub
    assert_model_repo(files, push, loaded)
    metadata = card_metadata(files["README.md"].decode())
    assert "library_name: transformers" in metadata and "- illada" in metadata and "- diffusion" in metadata
    # Every request of every push and load was one the local Hub serves, and none failed in it.
    assert hub.unhandled == [] and hub.errors == []


def test_push_to_a_branch_leaves_main_unchanged(hub, pushed):
    push, loaded = result(pushed, "branch")
    assert hub.files(push.repo_id) == push.main_before
    branch = hub.files(push.repo_id, "experiment")
    assert set(branch) == REPO_FILES and branch["model.safetensors"] != push.main_before["model.safetensors"]
    refs = HfApi(endpoint=hub.url).list_repo_refs(push.repo_id, token=hub.token)
    assert {ref.name for ref in refs.branches} == {"main", "experiment"}
    assert_model_repo(branch, push, loaded)


def test_only_loopback_connections_are_allowed():
    with pytest.raises(OSError, match="only connect to 127.0.0.1"):
        socket.create_connection(("192.0.2.1", 443), timeout=0.1)  # TEST-NET-1: never reached


def test_private_push_is_private(endpoint):
    make_model(seed=6).push_to_hub("tester/secret", private=True)
    make_model(seed=6).push_to_hub("tester/open")
    api = HfApi(endpoint=endpoint.url)
    assert api.model_info("tester/secret", token=endpoint.token).private is True
    assert api.model_info("tester/open", token=False).private is False
    with pytest.raises(huggingface_hub.errors.RepositoryNotFoundError):
        api.model_info("tester/secret", token=False)  # not visible without the token
    make_model(seed=6).push_to_hub("tester/open", private=True)  # "ignored if the repo already exists"
    assert api.model_info("tester/open", token=False).private is False
    with pytest.raises(huggingface_hub.errors.RepositoryNotFoundError):
        huggingface_hub.hf_hub_download("tester/secret", "config.json", token=False)


# ---------------------------------------------------------------------------------------------------------------
# Trainers and command lines
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sft_trainer", "vrpo_trainer", "sft_cli", "vrpo_cli"])
def test_trainer_push_holds_the_model_repo_and_nothing_local(hub, pushed, name):
    push, loaded = result(pushed, name)
    files = hub.files(push.repo_id)
    run_files = RUN_FILES if name.endswith("cli") else set()  # the command lines save the metrics and state
    assert set(files) == REPO_FILES | TRAINER_FILES | run_files
    assert_model_repo(files, push, loaded)
    metadata = card_metadata(files["README.md"].decode())
    assert "base_model: tester/tiny" in metadata or name.startswith("vrpo_trainer")
    local = {path.name for path in push.output_dir.iterdir()}
    assert {"checkpoint-1", "checkpoint-2"} <= local  # they exist locally, and stayed there


def test_lora_push_holds_the_adapter_and_its_card(hub, pushed):
    push, loaded = result(pushed, "sft_cli_lora")
    files = hub.files(push.repo_id)
    saved = {"README.md", ".gitattributes", "generation_config.json"}  # the trained model's generation settings
    assert set(files) == ADAPTER_FILES | TOKENIZER_FILES | saved | TRAINER_FILES | RUN_FILES
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "tester/tiny"
    metadata = card_metadata(files["README.md"].decode())
    assert "library_name: peft" in metadata and "base_model: tester/tiny" in metadata and "- lora" in metadata
    assert "AutoPeftModelForCausalLM" in files["README.md"].decode()
    assert_nothing_local(files)
    assert_generates_the_same(push, loaded)
    assert loaded["class"] == "ILLaDAForCausalLM"


# ---------------------------------------------------------------------------------------------------------------
# A push that fails half-way
# ---------------------------------------------------------------------------------------------------------------


def folder_hash(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_push_that_fails_half_way_keeps_the_local_folder_and_says_so(monkeypatch, tmp_path):
    """The Hub goes down when the commit arrives, after the weights were uploaded: the error names the repo and the
    endpoint, the output folder is byte for byte what it was, and the repo did not change."""
    with LocalHub(stop_on="commit") as failing:
        point_huggingface_hub_at(failing, monkeypatch, tmp_path / "cache")
        settings = {**TRAINING, "push_to_hub": False, "hub_model_id": "tester/falls"}
        args = DiffusionSFTConfig(str(tmp_path / "out"), **settings)
        trainer = DiffusionSFTTrainer(
            make_model(seed=7),
            args=args,
            train_dataset=Dataset.from_list(sft_rows()),
            processing_class=make_tiny_tokenizer(chat_template=True),
        )
        trainer.train()
        trainer.save_model()
        trainer.create_model_card()
        before = folder_hash(tmp_path / "out")
        with pytest.raises(Exception) as error:  # noqa: B017 - httpx's own error, which huggingface_hub lets through
            trainer.push_to_hub()
        message = "\n".join([str(error.value), *getattr(error.value, "__notes__", [])])
        assert "tester/falls" in message and failing.url in message and "unchanged" in message
        assert folder_hash(tmp_path / "out") == before
        assert [name for name, _ in failing.requests][-2:] == ["lfs_upload", "commit"]  # it died mid-push
        assert failing.stopped and failing.files("tester/falls").keys() == {".gitattributes"}


def test_hf_upload_of_a_finished_folder_sends_what_the_trainer_sent(hub, pushed):
    """docs/hub.md's `hf upload REPO FOLDER --exclude "checkpoint-*" --exclude "_*"`: the same files as the push."""
    push, _ = result(pushed, "sft_cli")
    command = [sys.executable, "-m", "huggingface_hub.cli.hf", "upload", "tester/again", str(push.output_dir)]  # `hf`
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HUB_DISABLE_XET": "1", "PATH": "", "HOME": "/nonexistent"}
    completed = subprocess.run(
        [*command, "--exclude", "checkpoint-*", "--exclude", "_*"], env=env, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert hub.files("tester/again") == hub.files(push.repo_id)
