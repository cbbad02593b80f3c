"""Two CPU processes (`torchrun --nproc_per_node 2`, gloo) train exactly like one process with the same global batch.

The 2-process run uses 1 row per process and 2 accumulation steps, the 1-process run 4 rows in one micro-batch:
same global batch of 4, different layout. Rows carry different numbers of response tokens, so this also checks
that the loss is normalised by the token count of the whole step across processes.
"""

from pathlib import Path

import pytest
import torch
from ddp_train_helper import logged_losses, run_on_two_processes, train

HELPER = Path(__file__).resolve().parent / "ddp_train_helper.py"


def test_two_processes_match_one_process(tmp_path):
    two_losses, two_weights = run_on_two_processes(HELPER, tmp_path / "two")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = train(str(tmp_path / "one"), 4, 1)
    finally:
        torch.set_num_threads(threads)
    assert len(two_losses) == 4
    assert two_losses == pytest.approx(logged_losses(one), rel=1e-5)
    one_weights = one.model.state_dict()
    for name, tensor in two_weights.items():
        # Adam divides by the root of tiny second moments: float32 summation-order noise grows to ~1e-5 in 4 steps.
        torch.testing.assert_close(tensor, one_weights[name], rtol=1e-4, atol=1e-5)
