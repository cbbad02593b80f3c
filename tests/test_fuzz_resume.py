"""Fuzz: which checkpoint `--resume` picks from an output folder of damaged checkpoints (issue 12, item 12).

An output folder holds one to four `checkpoint-N` folders, each a copy of a complete checkpoint in the files
Trainer writes (weights, `optimizer.pt`, `scheduler.pt`, `rng_state.pth`, `trainer_state.json`) with now and then
one damage: a file deleted, emptied or cut at a random byte, the just-in-time-save sentinel left behind, a
`global_step` that is not the folder's. The oracle (written here): a checkpoint is complete when every file
Trainer reads to resume exactly is there and whole; `last_complete_checkpoint` must return the newest complete one
(or None). Trainer restores the optimizer only when both `optimizer.pt` and `scheduler.pt` exist
(`Trainer._load_optimizer_and_scheduler`), so a checkpoint without `scheduler.pt` cannot resume exactly.
"""

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import torch
from fuzz_strategies import fuzz_settings, run_case
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from illada.checkpoints import JIT_SENTINEL, last_complete_checkpoint

FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")
TEMPLATE = Path(tempfile.mkdtemp(prefix="illada-fuzz-resume-"))
atexit.register(shutil.rmtree, TEMPLATE, ignore_errors=True)
save_file({"model.embed_tokens.weight": torch.arange(12.0).reshape(3, 4)}, TEMPLATE / "model.safetensors")
torch.save({"state": {0: {"exp_avg": torch.ones(3, 4)}}, "param_groups": [{"lr": 1e-3}]}, TEMPLATE / "optimizer.pt")
torch.save({"last_epoch": 3, "_last_lr": [1e-3]}, TEMPLATE / "scheduler.pt")
torch.save({"python": 1, "torch": torch.get_rng_state()}, TEMPLATE / "rng_state.pth")
DAMAGES = ("none", "none", "deleted", "emptied", "cut", "sentinel", "wrong_step", "extra_file")


def write_checkpoint(folder: Path, step: int, damage: str, file: str, cut: float) -> bool:
    """Writes `checkpoint-<step>` with `damage` to `file`; returns whether it is complete (the oracle)."""
    shutil.copytree(TEMPLATE, folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 100}))
    path = folder / file
    if damage == "deleted":
        path.unlink()
    elif damage == "emptied":
        path.write_bytes(b"")
    elif damage == "cut":
        content = path.read_bytes()
        path.write_bytes(content[: int(cut * (len(content.rstrip()) - 1))])
    elif damage == "sentinel":
        (folder / JIT_SENTINEL).write_text("")
    elif damage == "wrong_step":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step + 1}))
    elif damage == "extra_file":
        (folder / "notes.txt").write_text("left by a user")
    return damage in ("none", "extra_file")


@fuzz_settings(max_examples=40)
@given(
    checkpoints=st.lists(
        st.tuples(st.integers(1, 60), st.sampled_from(DAMAGES), st.sampled_from(FILES), st.floats(0.0, 1.0)),
        min_size=0,
        max_size=4,
        unique_by=lambda c: c[0],
    )
)
def test_fuzz_resume_picks_the_newest_complete_checkpoint(checkpoints):
    with tempfile.TemporaryDirectory() as output_dir:
        complete = {
            step: write_checkpoint(Path(output_dir) / f"checkpoint-{step}", step, damage, file, cut)
            for step, damage, file, cut in checkpoints
        }
        newest = max((step for step, ok in complete.items() if ok), default=None)
        expected = None if newest is None else str(Path(output_dir) / f"checkpoint-{newest}")

        def check(found) -> None:
            assert found == expected, f"picked {found}, the newest complete checkpoint is {expected}"

        run_case(
            "checkpoints: resume choice",
            lambda: last_complete_checkpoint(output_dir),
            check=check,
            describe=f"checkpoints (step, damage, file, cut)={checkpoints}",
        )
