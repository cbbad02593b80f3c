"""Runs `train_sft.py` / `train_vrpo.py` under `accelerate launch --config_file configs/accelerate/fsdp2.yaml` on CPU.

accelerate turns FSDP on only for accelerator devices: on CPU the same launch becomes plain data parallel
(MULTI_CPU), while torch's FSDP2 (`fully_shard`) itself runs on CPU over gloo. This test-only launcher makes
accelerate's process state FSDP where it would be MULTI_CPU, with the FSDP plugin that accelerate built from the
launcher's environment (the config file's settings), then runs the script with the remaining arguments, unchanged:

    accelerate launch --config_file configs/accelerate/fsdp2.yaml --num_processes 2 --mixed_precision no \\
        tests/fsdp_cpu_launch.py train_sft.py <arguments> --use_cpu
"""

import os
import runpy
import sys
from pathlib import Path

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_initialise_state = AcceleratorState.__init__


def _fsdp_on_cpu(state: AcceleratorState, *args, fsdp_plugin=None, **kwargs) -> None:
    _initialise_state(state, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate does on GPUs


if __name__ == "__main__":
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        raise SystemExit("tests/fsdp_cpu_launch.py runs under `accelerate launch` with an FSDP config file.")
    AcceleratorState.__init__ = _fsdp_on_cpu
    script = Path(sys.argv[1]).resolve()
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")
