"""Crash test of `train_sft.py`: a tiny training run killed with SIGKILL (in the middle of checkpoint saves, or at
random moments) and resumed with `--resume` ends with exactly the weights of an uninterrupted run.

Every interrupted run is a process of its own that dies by SIGKILL (as from `kill -9`: no Python cleanup runs).
In the default test the runs are forked from the test process (no interpreter start-up, so the test takes
seconds), and a `torch.save` wrapper in the child writes half of a chosen checkpoint file, then SIGKILLs its own
process: a deterministic kill in the middle of a save. The slow test starts new interpreters and kills them from
outside, at random moments or as soon as a checkpoint save begins. Everything runs on CPU with one thread, so
runs are bit-for-bit reproducible and weights are compared with `torch.equal`."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import make_config
from tiny_tokenizer import make_tiny_tokenizer
from transformers import modeling_utils

from illada import sft_cli as train_sft
from illada.checkpoints import STAGING_DIR, list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS, SAVE_STEPS = 8, 2
# A child interpreter running the command line on the arguments after `-c` (the slow test's processes).
CHILD = """
import sys
import torch
torch.set_num_threads(1)
from illada import sft_cli as train_sft
train_sft.main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A tiny config and chat-template tokenizer (random initialisation) and 40 conversations."""
    folder = tmp_path_factory.mktemp("inputs")
    make_config().save_pretrained(folder / "init")
    make_tiny_tokenizer(chat_template=True).save_pretrained(folder / "init")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"count {i % 50} {(i + 1) % 50}"},
                {"role": "assistant", "content": " ".join(["cat"] * (1 + i % 3))},
            ]
        }
        for i in range(40)
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def cli_arguments(inputs: Path, out: Path) -> list[str]:
    return [
        "--config_name",
        str(inputs / "init"),
        "--train_files",
        str(inputs / "train.jsonl"),
        "--output_dir",
        str(out),
        "--max_seq_length",
        "32",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        str(MAX_STEPS),
        "--save_steps",
        str(SAVE_STEPS),
        "--learning_rate",
        "1e-3",
        "--min_lr",
        "1e-4",
        "--warmup_steps",
        "1",
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--logging_steps",
        "1",
        "--seed",
        "11",
    ]


def start(arguments: list[str]) -> subprocess.Popen:
    """The command line in a new interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *arguments],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, expected_returncode: int) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == expected_returncode, output[-3000:]
    return output


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def assert_same_weights(out: Path, reference: Path) -> None:
    got, expected = weights(out), weights(reference)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), f"{name} differs from the uninterrupted run"


def logged_losses(out: Path) -> list[tuple[int, float]]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


def final_step(out: Path) -> int:
    return json.loads((out / "trainer_state.json").read_text())["global_step"]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    """The uninterrupted run (in this process: the command line's code path, without the start-up cost)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    train_sft.main(cli_arguments(inputs, out))
    assert final_step(out) == MAX_STEPS
    return out


def run_forked(arguments: list[str], crash_save: tuple[str, str] | None = None) -> int:
    """Runs the command line in a forked child process (this process's imports are reused, so a run takes a
    second, not the start-up time of a new interpreter) and returns its exit code: -SIGKILL when it was killed.
    With `crash_save=(folder, file)` the child SIGKILLs itself after writing half of that file."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            if crash_save:
                install_crash_hook(*crash_save)
            train_sft.main(arguments)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def install_crash_hook(folder: str, name: str) -> None:
    """Wraps the two writers of checkpoint files (`torch.save`: optimizer, scheduler, RNG, training arguments;
    transformers' safetensors writer: weights) so that writing `folder/name` leaves half of it and SIGKILLs."""

    def crashing(write):
        def wrapper(obj, path, *args, **kwargs):
            write(obj, path, *args, **kwargs)
            path = Path(path)
            if path.name == name and path.parent.name == folder:
                os.truncate(path, path.stat().st_size // 2)
                os.kill(os.getpid(), signal.SIGKILL)

        return wrapper

    torch.save = crashing(torch.save)
    modeling_utils.safe_save_file = crashing(modeling_utils.safe_save_file)


def test_killed_during_saves_resumes_to_the_same_weights(inputs, reference, tmp_path):
    out = tmp_path / "out"
    arguments = cli_arguments(inputs, out)
    # 1. Killed while writing the optimizer state of checkpoint-4: checkpoint-2 is the last complete one.
    assert run_forked(arguments, crash_save=("checkpoint-4", "optimizer.pt")) == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert (out / STAGING_DIR / "checkpoint-4" / "optimizer.pt").is_file()  # the interrupted save is left aside
    # 2. Resumed from checkpoint-2, killed while writing the weights of checkpoint-6.
    assert run_forked([*arguments, "--resume"], crash_save=("checkpoint-6", "model.safetensors")) == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-2"]
    # 3. Resumed from checkpoint-4, killed while writing the final weights (checkpoint-8 is complete).
    assert run_forked([*arguments, "--resume"], crash_save=(out.name, "model.safetensors")) == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(out)][0] == "checkpoint-8"
    with pytest.raises(Exception):  # noqa: B017 (whichever error safetensors raises: it must not load)
        weights(out)  # the truncated final file
    # 4. Resumed from checkpoint-8: no step to train, the final save is redone.
    assert run_forked([*arguments, "--resume"]) == 0
    assert final_step(out) == MAX_STEPS
    assert_same_weights(out, reference)
    assert logged_losses(out) == logged_losses(reference)  # one entry per step, each the uninterrupted run's


def test_resume_of_a_finished_run_trains_nothing(inputs, reference, tmp_path, caplog):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = weights(out)
    train_sft.main([*cli_arguments(inputs, out), "--resume"])
    assert "already reached `max_steps`=8" in caplog.text
    assert final_step(out) == MAX_STEPS
    assert [p.name for p in list_checkpoints(out)][0] == f"checkpoint-{MAX_STEPS}"
    after = weights(out)
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert logged_losses(out) == logged_losses(reference)  # no step 9


def test_reusing_an_output_dir_without_resume_is_refused(inputs, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run.*`--resume`"):
        train_sft.main(cli_arguments(inputs, out))


def checkpoint_folders(out: Path) -> set[tuple[str, int]]:
    """Name and inode of every checkpoint folder, staged or final: a save that begins adds a new pair."""
    folders = [*(out / STAGING_DIR).glob("checkpoint-*"), *list_checkpoints(out)]
    found = set()
    for folder in folders:
        try:
            found.add((str(folder), folder.stat().st_ino))
        except FileNotFoundError:  # renamed or deleted meanwhile
            pass
    return found


def kill_when_a_save_begins(process: subprocess.Popen, out: Path) -> None:
    """SIGKILLs `process` as soon as it starts writing a checkpoint folder."""
    before = checkpoint_folders(out)
    while process.poll() is None:
        if checkpoint_folders(out) - before:
            process.send_signal(signal.SIGKILL)
            return
        time.sleep(0.001)


@pytest.mark.slow
def test_random_kills_resume_to_the_same_weights(inputs, reference, tmp_path):
    """Six runs killed from outside, at random moments or as soon as a save begins, then a run to the end."""
    out, rng = tmp_path / "out", random.Random(0)
    arguments = cli_arguments(inputs, out)
    for attempt in range(6):
        process = start([*arguments, "--resume"])
        if attempt % 2 == 0:
            kill_when_a_save_begins(process, out)
        else:
            time.sleep(rng.uniform(4, 15))  # start-up (imports) takes several seconds on a busy machine
            process.send_signal(signal.SIGKILL)
        process.communicate(timeout=300)
        if process.returncode == 0:  # finished before the kill
            break
    finish(start([*arguments, "--resume"]), 0)
    assert final_step(out) == MAX_STEPS
    assert_same_weights(out, reference)
    assert logged_losses(out) == logged_losses(reference)
