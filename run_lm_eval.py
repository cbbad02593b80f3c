"""lm-evaluation-harness's command line with iLLaDA's model `illada` registered: `python run_lm_eval.py --help`.

lm-eval finds models only in its own registry, and a checkout of this repository is not an installed package, so
`lm_eval --model illada` cannot see it; this script registers `illada` and hands every argument to lm-eval unchanged:

    python run_lm_eval.py --model illada --tasks arc_challenge --batch_size 16 \\
        --model_args pretrained=GSAI-ML/iLLaDA-8B-Base,trust_remote_code=True,dtype=bfloat16
    python run_lm_eval.py --model illada --device cpu --include_path eval_tasks \\
        --tasks illada_demo_gen,illada_demo_mc --apply_chat_template \\
        --model_args pretrained=illada-demo,trust_remote_code=True

The model arguments (`method`, `mc_num`, `cfg_scale`, `max_new_tokens`, ...) are documented in
`illada/lm_eval_model.py`.
"""

from illada.lm_eval_model import main

if __name__ == "__main__":
    main()
