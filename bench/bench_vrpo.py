"""Variance of the VRPO loss and of its gradient: antithetic masks (VRPO) versus independent masks.

    python bench/bench_vrpo.py                   # the demo model and the demo preference pairs (docs/vrpo.md)
    python bench/bench_vrpo.py --draws 32 --pairs 4

The policy is the demo model after VRPO (`--policy`, default `outputs/illada-demo-vrpo`, or `illada-demo` itself
when that folder does not exist: then policy == reference) and the reference is `illada-demo/`. For a fixed batch
of `--pairs` preference pairs, the sigmoid loss and its gradient are computed `--draws` times with fresh masks:
either the reference on the same masks as the policy (antithetic), or on masks of its own (independent). Reported:
the variance of the loss, and the total variance of the gradient (the mean squared distance of the gradients to
their mean), for each β. Writes the `vrpo` section of bench/RESULTS.md.
"""

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import environment, markdown_table, write_section  # noqa: E402
from datasets import load_dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from illada.modeling_illada import ILLaDAForCausalLM  # noqa: E402
from illada.utils import mask_seed  # noqa: E402
from illada.vrpo import (  # noqa: E402
    PreferenceCollator,
    VRPOConfig,
    build_preference_dataset,
    draw_answer_masks,
    elbo_estimates,
    preference_losses,
)

BETAS = (0.1, 1.0, 5.0)
READING = (
    "Variances over the draws: of the batch's mean loss, and of its gradient (sum over parameters). The policy "
    "is the 1e-4 VRPO run of the demo model in docs/vrpo.md (outputs/illada-demo-vrpo). Sharing the masks removes "
    "the Monte-Carlo noise that the policy's "
    "and the reference's estimates have in common (with policy == reference the loss variance is exactly 0); the "
    "gradient gains less than the loss because the noise of the policy's own ELBO gradient is untouched: only the "
    "sigmoid's weight σ(-βΔ) steadies, which matters more as β grows."
)


def load(folder: str) -> ILLaDAForCausalLM:
    return ILLaDAForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def loss_and_gradient(policy, reference, batch: dict, seeds: tuple[list[int], list[int]], beta: float, samples: int):
    """Sigmoid VRPO loss of the batch with the policy on masks `seeds[0]` and the reference on `seeds[1]`."""
    rows = (batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"], batch["answer_lengths"])
    mask_id = policy.config.mask_token_id
    policy_masks = draw_answer_masks(rows[3], samples, seeds[0])
    reference_masks = policy_masks if seeds[1] == seeds[0] else draw_answer_masks(rows[3], samples, seeds[1])
    policy.zero_grad()
    policy_elbo = elbo_estimates(policy, *rows, *policy_masks, mask_id)
    with torch.no_grad():
        reference_elbo = elbo_estimates(reference, *rows, *reference_masks, mask_id)
    args = VRPOConfig("unused", beta=beta, use_cpu=True, report_to="none")
    losses, *_ = preference_losses(*policy_elbo.chunk(2), *reference_elbo.chunk(2), args, *rows[3].chunk(2))
    losses.mean().backward()
    gradient = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    return losses.mean().item(), gradient


def variances(policy, reference, batch: dict, beta: float, draws: int, samples: int) -> dict[str, tuple[float, float]]:
    index = batch["index"].tolist()
    results = {}
    for mode in ("antithetic", "independent"):
        losses, gradients = [], []
        for draw in range(draws):
            seeds = [mask_seed(0, draw, i, a) for a in (0, 1) for i in index]
            other = seeds if mode == "antithetic" else [mask_seed(1, draw, i, a) for a in (0, 1) for i in index]
            loss, gradient = loss_and_gradient(policy, reference, batch, (seeds, other), beta, samples)
            losses.append(loss)
            gradients.append(gradient)
        stacked = torch.stack(gradients).double()
        gradient_variance = (stacked - stacked.mean(0)).pow(2).sum(1).mean().item()
        results[mode] = (torch.tensor(losses).double().var().item(), gradient_variance)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default=str(ROOT / "outputs" / "illada-demo-vrpo"))
    parser.add_argument("--reference", default=str(ROOT / "illada-demo"))
    parser.add_argument("--data", default=str(ROOT / "outputs" / "preferences.jsonl"))
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8, help="Monte-Carlo samples n per ELBO.")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy_folder = args.policy if Path(args.policy).is_dir() else args.reference
    policy, reference = load(policy_folder), load(args.reference)
    tokenizer = AutoTokenizer.from_pretrained(args.reference, config=reference.config)  # no remote-code prompt
    raw = load_dataset("json", data_files=args.data, split="train").select(range(args.pairs))
    data = build_preference_dataset(raw, tokenizer, policy.config.max_position_embeddings, policy.config.mask_token_id)
    batch = PreferenceCollator(tokenizer.pad_token_id)([data[i] for i in range(args.pairs)])
    rows = []
    for beta in BETAS:
        result = variances(policy, reference, batch, beta, args.draws, args.samples)
        (loss_a, grad_a), (loss_i, grad_i) = result["antithetic"], result["independent"]
        ratio = grad_i / grad_a
        rows.append([beta, f"{loss_a:.3g}", f"{loss_i:.3g}", f"{grad_a:.4g}", f"{grad_i:.4g}", f"{ratio:.3f}"])
    table = markdown_table(
        [
            "β",
            "loss var. antithetic",
            "loss var. independent",
            "grad var. antithetic",
            "grad var. independent",
            "grad ratio indep./anti.",
        ],
        rows,
    )
    body = (
        f"## VRPO: antithetic versus independent masks\n\n`python bench/bench_vrpo.py --pairs {args.pairs} "
        f"--draws {args.draws} --samples {args.samples}`; policy `{Path(policy_folder).name}`, reference "
        f"`{Path(args.reference).name}`, {args.pairs} pairs of `{Path(args.data).name}`, n = {args.samples}; "
        f"{environment()}.\n\n{table}\n\n{READING}\n"
    )
    print(body)
    write_section("vrpo", body)


if __name__ == "__main__":
    main()
