"""Does the demo model know where a `count_up` answer ends? A probe that takes the decoding order out of the question.

    python bench/demo_stop_probe.py                 # 25 held-out count_up questions, shipped model
    python bench/demo_stop_probe.py --per-task 50 --model my-demo --trust-remote-code

For each held-out `count_up` question the model sees the prompt, the whole correct list, and only masks after it
(`--masks` of them). If it had learned to stop when the list reaches the number the prompt names, it would put EOS
at the first masked position whatever the list's length, and not one number earlier (the list with its last number
left out). Two more conditions ask what it uses instead: one mask after the list, then the start of the next
conversation (as in an SFT window, where examples follow one another), with the whole list or with its last number
left out (EOS there would stop one number short). The probe records the predicted token at that mask and P(EOS),
per list length, and writes the `demo-stop` section of bench/RESULTS.md.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import markdown_table, write_section  # noqa: E402

from illada.demo.data import TASKS, make_examples  # noqa: E402
from illada.demo.loading import SHIPPED_MODEL_DIR, encode, load_model  # noqa: E402


def stop_predictions(
    model, tokenizer, examples, masks: int = 32, boundary: bool = False, drop_last: bool = False
) -> list[dict]:
    """For each example: the token predicted right after the correct answer.

    By default every later position is masked. With `boundary`, only that one position is masked and the next
    conversation of the list (the following example, wrapped round) starts right after it, as in a training window
    of SFT examples streamed one after another; `masks` masks follow. With `drop_last`, the answer's last number
    is left out, so that EOS at the probed position would stop the list one number short."""
    rows = []
    for index, example in enumerate(examples):
        prompt = encode(tokenizer, [{"role": "user", "content": example.prompt}])[0]
        numbers = example.response.split()
        shown = " ".join(numbers[:-1] if drop_last else numbers)
        answer = torch.tensor(tokenizer(shown, add_special_tokens=False).input_ids if shown else [], dtype=torch.long)
        after = [torch.full((masks,), tokenizer.mask_token_id)]
        if boundary:
            following = examples[(index + 1) % len(examples)]
            after[:0] = [
                torch.full((1,), tokenizer.mask_token_id),
                encode(tokenizer, [{"role": "user", "content": following.prompt}])[0],
            ]
        canvas = torch.cat([prompt, answer, *after])[None]
        with torch.no_grad():
            probs = model(canvas).logits[0, len(prompt) + len(answer)].float().softmax(-1)
        rows.append(
            {
                "prompt": example.prompt,
                "length": len(numbers),
                "predicted": tokenizer.decode([int(probs.argmax())]),
                "eos": int(probs.argmax()) == tokenizer.eos_token_id,
                "p_eos": float(probs[tokenizer.eos_token_id]),
            }
        )
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
    # the questions illada.demo.evaluate uses: its draw over every task, count_up's share of it
    examples = [e for e in make_examples("heldout", args.per_task * len(TASKS)) if e.task == "count_up"]
    conditions = {  # name: (boundary, drop_last)
        "masks after": (False, False),
        "masks after, last number left out": (False, True),
        "next conversation after": (True, False),
        "next conversation after, last number left out": (True, True),
    }
    results = {
        name: stop_predictions(model, tokenizer, examples, args.masks, boundary, drop_last)
        for name, (boundary, drop_last) in conditions.items()
    }
    rows = results["masks after"]
    lengths = sorted({row["length"] for row in rows})

    def median_p_eos(group: list[dict]) -> float:
        return sorted(r["p_eos"] for r in group)[len(group) // 2]

    def cell(group: list[dict]) -> str:
        return f"{sum(r['eos'] for r in group)} ({median_p_eos(group):.2f})"

    table = markdown_table(
        ["numbers in the list", "questions", *(f"EOS next: {name}" for name in conditions)],
        [
            [
                length,
                sum(r["length"] == length for r in rows),
                *(cell([r for r in result if r["length"] == length]) for result in results.values()),
            ]
            for length in lengths
        ]
        + [["all", len(rows), *(cell(result) for result in results.values())]],
    )
    summary = " ".join(
        f"{name.capitalize()}: EOS predicted next in {sum(r['eos'] for r in result)} of {len(result)} "
        f"(median P(EOS) {median_p_eos(result):.2f})."
        for name, result in results.items()
    )
    print(table + "\n\n" + summary)
    if not args.no_write:
        command = " ".join(["python bench/demo_stop_probe.py", *(sys.argv[1:] if argv is None else argv)])
        write_section(
            "demo-stop",
            f"## Demo model: does it know where `count_up` ends?\n\n`{command}` "
            f"(model `{Path(args.model).name}`; the prompt, the correct list (or the list without its last "
            f"number), then either {args.masks} masks, or one mask followed by the start of the next "
            "conversation (as SFT streams examples one after another into a window) and "
            f"{args.masks} masks; each cell: questions where EOS is the token predicted at the first mask "
            f"(median P(EOS)):\n\n{table}\n\n{summary}\n",
        )
    return rows


if __name__ == "__main__":
    main()
