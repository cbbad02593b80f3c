"""Does the demo model know where a `count_up` answer ends? A probe that takes the decoding order out of the question.

    python bench/demo_stop_probe.py                 # 25 held-out count_up questions, shipped model
    python bench/demo_stop_probe.py --per-task 50 --model my-demo --trust-remote-code

For each held-out `count_up` question the model sees the prompt, the whole correct list, and only masks after it
(`--masks` of them). If it had learned to stop when the list reaches the number the prompt names, it would put EOS
at the first masked position whatever the list's length. The probe records the predicted token there and P(EOS),
per list length, and writes the `demo-stop` section of bench/RESULTS.md.
"""

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import markdown_table, write_section  # noqa: E402
from demo.data import TASKS, make_examples  # noqa: E402
from demo.loading import SHIPPED_MODEL_DIR, encode, load_model  # noqa: E402


def stop_predictions(model, tokenizer, examples, masks: int = 32) -> list[dict]:
    """For each example: the token predicted right after the full correct answer (all later positions masked)."""
    rows = []
    for example in examples:
        prompt = encode(tokenizer, [{"role": "user", "content": example.prompt}])[0]
        answer = torch.tensor(tokenizer(example.response, add_special_tokens=False).input_ids)
        canvas = torch.cat([prompt, answer, torch.full((masks,), tokenizer.mask_token_id)])[None]
        with torch.no_grad():
            probs = model(canvas).logits[0, len(prompt) + len(answer)].float().softmax(-1)
        rows.append({"prompt": example.prompt, "length": len(example.response.split()),
                     "predicted": tokenizer.decode([int(probs.argmax())]),
                     "eos": int(probs.argmax()) == tokenizer.eos_token_id,
                     "p_eos": float(probs[tokenizer.eos_token_id])})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL_DIR))
    parser.add_argument("--trust-remote-code", action="store_true", help="Needed for any folder but illada-demo/.")
    parser.add_argument("--per-task", type=int, default=25, help="Held-out count_up questions (default 25).")
    parser.add_argument("--masks", type=int, default=32, help="Masked positions after the answer (default 32).")
    parser.add_argument("--no-write", action="store_true", help="Print only; leave RESULTS.md alone.")
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.model, trust_remote_code=args.trust_remote_code)
    # the questions demo.evaluate uses: its draw over every task, count_up's share of it
    examples = [e for e in make_examples("heldout", args.per_task * len(TASKS)) if e.task == "count_up"]
    rows = stop_predictions(model, tokenizer, examples, args.masks)
    by_length = defaultdict(list)
    for row in rows:
        by_length[row["length"]].append(row)
    table = markdown_table(
        ["numbers in the list", "questions", "EOS predicted next", "median P(EOS)"],
        [[length, len(group), sum(r["eos"] for r in group),
          f"{sorted(r['p_eos'] for r in group)[len(group) // 2]:.2f}"] for length, group in sorted(by_length.items())],
    )
    total = sum(row["eos"] for row in rows)
    median = sorted(row["p_eos"] for row in rows)[len(rows) // 2]
    summary = (f"EOS predicted right after the full correct list in {total} of {len(rows)} held-out count_up "
               f"questions (median P(EOS) {median:.2f}).")
    print(table + "\n\n" + summary)
    if not args.no_write:
        command = " ".join(["python bench/demo_stop_probe.py", *(sys.argv[1:] if argv is None else argv)])
        write_section("demo-stop", f"## Demo model: does it know where `count_up` ends?\n\n`{command}` "
                      f"(model `{Path(args.model).name}`; prompt + the whole correct list + {args.masks} masks; "
                      f"the token predicted at the first mask):\n\n{table}\n\n{summary}\n")
    return rows


if __name__ == "__main__":
    main()
