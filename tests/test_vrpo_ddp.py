"""Two CPU processes (`torchrun --nproc_per_node 2`, gloo) train VRPO exactly like one process with the same global
batch: 1 pair per process and 2 accumulation steps against 4 pairs in one micro-batch. The masks are seeded by
example, so they do not depend on the split; the loss is normalised by the pairs of the whole step.
"""

from pathlib import Path

import pytest
import torch
from ddp_train_helper import run_on_two_processes
from vrpo_helper import logged_losses, make_trainer

HELPER = Path(__file__).resolve().parent / "vrpo_helper.py"


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    two_losses, two_weights = run_on_two_processes(HELPER, tmp_path / "two")

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
