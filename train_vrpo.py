"""Preference optimisation of iLLaDA with VRPO (LLaDA 1.5): `python train_vrpo.py --help`.

The flags, data formats and example commands are documented in `illada/vrpo_cli.py`.
"""

from illada.vrpo_cli import main

if __name__ == "__main__":
    main()
