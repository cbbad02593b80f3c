"""Two CPU processes (`torchrun --nproc_per_node 2`, gloo) train VRPO exactly like one process with the same global
batch: 1 pair per process and 2 accumulation steps against 4 pairs in one micro-batch. The masks are seeded by
example, so they do not depend on the split; the loss is normalised by the pairs of the whole step.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vrpo_helper import logged_losses, make_trainer

HELPER = Path(__file__).resolve().parent / "vrpo_helper.py"
# Two Python processes importing torch, transformers and trl take ~15 s on the 2-core CI machine.
TORCHRUN_TIMEOUT_S = 300


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HELPER),
               str(tmp_path / "two"), "1", "2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    two_losses = json.loads((tmp_path / "two" / "losses.json").read_text())
    two_weights = load_file(tmp_path / "two" / "final" / "model.safetensors")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = make_trainer(str(tmp_path / "one"), 4, 1, max_steps=3)
        one.train()
    finally:
        torch.set_num_threads(threads)
    assert len(two_losses) == 3
    assert two_losses == pytest.approx(logged_losses(one), rel=1e-5)
    one_weights = one.model.state_dict()
    for name, tensor in two_weights.items():
        # Adam divides by the root of tiny second moments: float32 summation-order noise grows to ~1e-5.
        torch.testing.assert_close(tensor, one_weights[name], rtol=1e-4, atol=1e-5)
