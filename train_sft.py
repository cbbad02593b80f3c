"""Masked-diffusion training of iLLaDA (SFT, pre-training, full or LoRA): `python train_sft.py --help`.

The flags, data formats and example commands are documented in `illada/sft_cli.py`; the README's "Fine-tune" section
has the quick start.
"""

from illada.sft_cli import main

if __name__ == "__main__":
    main()
