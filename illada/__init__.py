"""The iLLaDA tools: training, preference optimisation, data, checkpoints, evaluation and the demo.

The model itself (configuration, modeling, generation, sampler, scoring and the modules they import) sits at the
repository root, as a Hub model repo needs it: transformers' remote-code loader copies those files into a package
of its own and they import one another relatively. So that a checkout imports the very same files the same way,
the root is part of this package's search path: `illada.modeling_illada` is the root's `modeling_illada.py`, and
its `from .configuration_illada import ...` resolves inside `illada` as it does inside transformers' package.
"""

from pathlib import Path

__path__.append(str(Path(__file__).resolve().parent.parent))
