"""Runs the lm-evaluation-harness command line with iLLaDA's model `illada` registered.

lm-eval finds models only in its own registry, and a checkout of this repository is not an installed
package, so `lm_eval --model illada` cannot see it. This script imports `lm_eval_illada` (which registers
`illada`) and hands its arguments to lm-eval unchanged: every `lm_eval` option works.

    python run_lm_eval.py --model illada --tasks arc_challenge --batch_size 16 \\
        --model_args pretrained=GSAI-ML/iLLaDA-8B-Base,trust_remote_code=True,dtype=bfloat16
    python run_lm_eval.py --model illada --device cpu --include_path eval_tasks \\
        --tasks illada_demo_gen,illada_demo_mc --apply_chat_template \\
        --model_args pretrained=illada-demo,trust_remote_code=True

See `lm_eval_illada.py` for the model arguments (`method`, `mc_num`, `cfg_scale`, `max_new_tokens`, ...).
"""

import sys

from lm_eval.__main__ import cli_evaluate

import lm_eval_illada  # noqa: F401  (registers the `illada` model)


def main(argv: list[str] | None = None) -> None:
    """Runs lm-eval on `argv` (defaults to the command line)."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
