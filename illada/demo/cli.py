"""Ask the small iLLaDA demo model shipped in `illada-demo/` a few questions and watch it denoise the answers.

The model loads through the Hub code path (`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`
and `AutoTokenizer`), answers with variable-length masked-diffusion generation (one block of masks at a time; a
block stops being decoded once every position before its EOS is committed), and for every answer prints the
text, the number of forward passes (nfe) and the answer length. While it decodes, a live view shows the answer
canvas filling in (`░` = still masked, `.` = decoded after EOS, not part of the answer); a PNG shows which
answer position was committed at which step. Then the same questions are answered with each generation preset
(`GENERATION_PRESETS`: exact, default, lossless-fast, fast), side by side with their forward passes.

Commands (from the repository root):

    python demo.py                                   # 4 random held-out questions, live view, outputs/denoising.png
    python demo.py "What is 12 + 30?" "Say backwards: red sun"    # your own prompts (one answer each)
    python demo.py --chat                            # interactive: one question per line; `exit` or Ctrl-D ends
    python demo.py --threshold 0.9 --no-live         # fewer forward passes (confidence threshold), plain output
    python demo.py --no-presets                      # skip the side-by-side run of the presets
    python demo.py --model path/to/folder --trust-remote-code   # another model folder (or set ILLADA_DEMO_MODEL)
    python demo.py --help                            # every option

When stdout is not a terminal (a pipe, a log file, CI), the live view prints a few frames one under the other.
"""

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from illada.demo.evaluate import RESULTS_FILE  # the file `python -m illada.demo.evaluate` writes into the model folder
from illada.demo.loading import encode, load_model
from illada.generation_config_illada import GENERATION_PRESETS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = "illada-demo"  # relative to the repository root
MODEL_ENV_VAR = "ILLADA_DEMO_MODEL"
DEFAULT_PLOT = "outputs/denoising.png"
# Built-in questions: drawn at random (seeded, not chosen by hand) from the held-out split, never seen in training.
DEFAULT_QUESTIONS = 4
QUESTION_SEED = 0
QUESTION_POOL_PER_TASK = 10  # held-out questions per task the random draw picks from
MASK_SYMBOL = "░"  # one per still-masked position in the live view
FALLBACK_MASK_SYMBOL = "_"  # when the terminal's encoding has no `░`
AFTER_STOP_SYMBOL = "."  # a position after the answer's stop token: decoded, but not part of the answer
PLAIN_FRAMES = 4  # frames printed per answer when stdout is not a terminal
FRAME_DELAY_S = 0.04  # pause after each live frame, so that a fast model's denoising stays visible
EXIT_WORDS = ("exit", "quit")
DEFAULT_THREADS = 1
# ANSI: move the cursor to the start of the line `n` lines up, and clear from the cursor to the end of the screen.
CURSOR_UP, CLEAR_BELOW = "\x1b[{}F", "\x1b[J"


@dataclass
class Answer:
    """One generated answer.

    Args:
        prompt (`str`): The user's question.
        text (`str`): The answer, decoded up to (without) the first stop token.
        token_ids (`list[int]`): The answer's token ids, without the stop token.
        stopped (`bool`): Whether the answer ended with a stop token (EOS) within the budget.
        nfe (`int`): Forward passes of the model spent on the answer.
        history (`list[int]`): Step at which each answer position (the stop token included) was committed.
        labels (`list[str]`): Display text of each of those positions, for the plot.
        expected (`str`, *optional*): The correct answer, for the built-in held-out questions.
    """

    prompt: str
    text: str
    token_ids: list[int]
    stopped: bool
    nfe: int
    history: list[int]
    labels: list[str]
    expected: str | None = None

    @property
    def right(self) -> bool | None:
        """Whether the answer equals `expected` (spaces around either ignored, as `illada.demo.evaluate` counts);
        `None` without an expected answer."""
        return None if self.expected is None else self.text.strip() == self.expected.strip()


# --------------------------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
    )
    parser.add_argument("prompts", nargs="*", help="Questions to answer after the built-in ones.")
    parser.add_argument(
        "--model",
        default=None,
        help=f"Model folder; default: ${MODEL_ENV_VAR} or {DEFAULT_MODEL_DIR}/ in the repository root.",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help=f"Needed for any folder but the shipped {DEFAULT_MODEL_DIR}/: loading a model folder runs "
        "its Python files.",
    )
    parser.add_argument("--chat", action="store_true", help="Interactive mode: read questions from stdin.")
    parser.add_argument(
        "--chat-history",
        type=int,
        default=0,
        metavar="N",
        help="Chat: earlier exchanges kept in the prompt (default 0: the demo model was trained on single questions).",
    )
    parser.add_argument("--no-builtin", action="store_true", help="Skip the built-in held-out questions.")
    parser.add_argument(
        "--questions",
        type=int,
        default=DEFAULT_QUESTIONS,
        help=f"Built-in held-out questions to draw at random (default {DEFAULT_QUESTIONS}).",
    )
    parser.add_argument(
        "--question-seed",
        type=int,
        default=QUESTION_SEED,
        help=f"Seed of that draw (default {QUESTION_SEED}); another seed shows other questions.",
    )
    parser.add_argument("--no-live", action="store_true", help="Do not show the denoising canvas.")
    parser.add_argument(
        "--no-presets", action="store_true", help="Do not answer the questions again with each generation preset."
    )
    parser.add_argument(
        "--plot",
        default=DEFAULT_PLOT,
        help=f"PNG of the commit step of every answer position (default {DEFAULT_PLOT}); 'none' disables it.",
    )
    parser.add_argument("--max-new-tokens", type=int, help="Answer budget (default: the model's generation config).")
    parser.add_argument("--block-length", type=int, help="Tokens decoded per block.")
    parser.add_argument("--steps", type=int, help="Forward passes per block (default: one token per step).")
    parser.add_argument("--threshold", type=float, help="Also commit every position at least this confident.")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default); above 0 samples.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling noise (temperature > 0).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device.")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"CPU threads of torch (default {DEFAULT_THREADS}: the demo model's matrices are so small "
        "that more threads only add overhead, and many times so on a busy machine).",
    )
    return parser


def generation_overrides(args: argparse.Namespace) -> dict:
    """The generation settings given on the command line (the others stay the model's)."""
    names = ("max_new_tokens", "block_length", "steps", "threshold", "temperature")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def resolve_model_dir(model: str | None) -> Path:
    """`--model`, else `$ILLADA_DEMO_MODEL`, else `illada-demo/` in the repository root; it must exist."""
    folder = Path(model or os.environ.get(MODEL_ENV_VAR) or REPO_ROOT / DEFAULT_MODEL_DIR)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"No model folder at {folder} (no config.json). Build it with `python -m "
            f"illada.demo.build_demo_model`, or pass `--model` / set ${MODEL_ENV_VAR}."
        )
    return folder


# --------------------------------------------------------------------------------------------- model


def generation_settings(model: PreTrainedModel, overrides: dict) -> GenerationConfig:
    """The settings `generate` will use: the model's generation config updated by `overrides` (the model resolves
    them, token ids included), validated before any forward pass.

    Raises:
        ValueError: A setting is out of range (the message names it).
    """
    return model.resolve_generation_config(**overrides, return_dict_in_generate=True, output_history=True)


def check_prompt_fits(input_ids: torch.Tensor, settings: GenerationConfig, model: PreTrainedModel) -> None:
    """Raises `ValueError` when the prompt plus the answer budget exceeds the model's context."""
    limit = model.config.max_position_embeddings
    if input_ids.shape[1] + settings.max_new_tokens > limit:
        raise ValueError(
            f"The prompt has {input_ids.shape[1]} tokens; with `max_new_tokens`="
            f"{settings.max_new_tokens} it exceeds the model's {limit} positions. Shorten it."
        )


# --------------------------------------------------------------------------------------------- live view


def mask_symbol(stream: TextIO) -> str:
    """`░`, or `_` when `stream` cannot encode it."""
    try:
        MASK_SYMBOL.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return FALLBACK_MASK_SYMBOL
    return MASK_SYMBOL


def render_tokens(
    tokenizer: PreTrainedTokenizerBase,
    token_ids: list[int],
    mask_token_id: int,
    symbol: str,
    stop_ids: set[int] = frozenset(),
) -> str:
    """One line of text: runs of committed tokens decoded together, one `symbol` per masked position.

    Positions after the first committed stop token are decoded too (the block is finished) but are not part of the
    answer: each shows as `AFTER_STOP_SYMBOL` (or `symbol` while still masked).
    """
    first_stop = next((i for i, token in enumerate(token_ids) if token in stop_ids), len(token_ids))
    parts, run = [], []
    for token_id in token_ids[: first_stop + 1] + [mask_token_id]:  # a trailing mask flushes the last run
        if token_id != mask_token_id:
            run.append(token_id)
            continue
        if run:
            parts.append(tokenizer.decode(run, skip_special_tokens=False).replace("\n", "\\n"))
            run = []
        parts.append(symbol)
    tail = [symbol if token == mask_token_id else AFTER_STOP_SYMBOL for token in token_ids[first_stop + 1 :]]
    return "".join(parts[:-1] + tail)


class CanvasView:
    """The `step_callback` of `generate`: draws the answer canvas after every denoising step.

    On a terminal each frame replaces the previous one (ANSI cursor movement); otherwise the frames are kept and
    `close()` prints `PLAIN_FRAMES` of them, evenly spaced, the last one included.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_len: int,
        mask_token_id: int,
        stop_ids: set[int] = frozenset(),
        stream: TextIO | None = None,
        delay: float | None = None,
    ) -> None:
        self.tokenizer, self.prompt_len, self.mask_token_id = tokenizer, prompt_len, mask_token_id
        self.stop_ids = stop_ids
        self.stream = sys.stdout if stream is None else stream
        self.live = self.stream.isatty()
        self.symbol = mask_symbol(self.stream)
        self.delay = FRAME_DELAY_S if delay is None else delay
        self.frames: list[str] = []
        self.lines_drawn = 0

    def __call__(self, step: int, canvas: torch.Tensor, logits: torch.Tensor) -> None:
        answer = canvas[0, self.prompt_len :].tolist()
        text = render_tokens(self.tokenizer, answer, self.mask_token_id, self.symbol, self.stop_ids)
        frame = f"step {step:3d} | {text}"
        self.frames.append(frame)
        if self.live:
            self._redraw(frame)

    def _redraw(self, frame: str) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)
        lines = [frame[i : i + width] for i in range(0, len(frame), width)]  # hard wrap: a known line count
        erase = CURSOR_UP.format(self.lines_drawn) + CLEAR_BELOW if self.lines_drawn else ""
        self.stream.write(erase + "\n".join(lines) + "\n")
        self.stream.flush()
        self.lines_drawn = len(lines)
        time.sleep(self.delay)

    def close(self) -> None:
        """Prints the selected frames (plain mode); on a terminal the last frame simply stays."""
        if self.live or not self.frames:
            return
        count = min(PLAIN_FRAMES, len(self.frames))
        picks = sorted({round(i * (len(self.frames) - 1) / max(count - 1, 1)) for i in range(count)})
        for index in picks:
            print(self.frames[index], file=self.stream)


# --------------------------------------------------------------------------------------------- answering


def generate_answer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    settings: GenerationConfig,
    live: bool,
    generator: torch.Generator | None = None,
) -> Answer:
    """Answers the last user message of `messages` (batch of one), showing the canvas when `live`."""
    input_ids = encode(tokenizer, messages).to(model.device)
    check_prompt_fits(input_ids, settings, model)
    prompt_len = input_ids.shape[1]
    view = CanvasView(tokenizer, prompt_len, settings.mask_token_id, set(settings.stop_ids)) if live else None
    out = model.generate(input_ids, generation_config=settings, step_callback=view, generator=generator)
    if view is not None:
        view.close()
    return to_answer(tokenizer, messages[-1]["content"], out, prompt_len)


def to_answer(tokenizer: PreTrainedTokenizerBase, prompt: str, out: ModelOutput, prompt_len: int) -> Answer:
    """Collects what the printout and plot need from `generate`'s output (its answer length and stop reason)."""
    length, stopped = int(out.answer_lengths[0]), bool(out.stopped[0])
    kept = length + stopped  # the stop token was committed too: it belongs in the plot
    generated = out.sequences[0, prompt_len : prompt_len + kept].tolist()
    answer_ids = generated[:length]
    labels = [token_label(tokenizer, token) for token in generated]
    return Answer(
        prompt=prompt,
        text=tokenizer.decode(answer_ids, skip_special_tokens=False).strip(),
        token_ids=answer_ids,
        stopped=stopped,
        nfe=int(out.nfe),
        history=out.history[0, prompt_len : prompt_len + kept].tolist(),
        labels=labels,
    )


def token_label(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """One token as a visible plot label: spaces as `␣`, newlines as `↵` (both in matplotlib's DejaVu font)."""
    return tokenizer.decode([token_id], skip_special_tokens=False).replace(" ", "␣").replace("\n", "↵")


def print_answer(answer: Answer, budget: int) -> None:
    """The answer, its nfe and its length (and, for a built-in question, whether it is right)."""
    print(f"iLLaDA> {answer.text}")
    end = "stopped at EOS" if answer.stopped else "no EOS: budget reached"
    print(
        f"        forward passes (nfe): {answer.nfe} | answer length: {len(answer.token_ids)} tokens "
        f"(budget {budget}) | {end}"
    )
    if answer.expected is not None:
        print(f"        expected: {answer.expected} ({'right' if answer.right else 'wrong'})")
    sys.stdout.flush()


def ask(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    settings: GenerationConfig,
    live: bool,
    generator: torch.Generator | None,
    expected: str | None = None,
) -> Answer:
    """Prints the question, answers it, prints the answer."""
    print(f"\nuser> {messages[-1]['content']}", flush=True)
    answer = generate_answer(model, tokenizer, messages, settings, live, generator)
    answer.expected = expected
    print_answer(answer, settings.max_new_tokens)
    return answer


# --------------------------------------------------------------------------------------------- modes


def builtin_questions(count: int = DEFAULT_QUESTIONS, seed: int = QUESTION_SEED) -> list[tuple[str, str]]:
    """(prompt, expected answer) of `count` held-out questions (see `demo/data.py`) drawn at random with `seed` from
    a pool of `QUESTION_POOL_PER_TASK` per task, so that what the demo shows is a fair sample, not a chosen one."""
    import random

    from illada.demo.data import TASKS, make_examples

    pool = make_examples("heldout", QUESTION_POOL_PER_TASK * len(TASKS), seed=seed)
    return [(e.prompt, e.response) for e in random.Random(seed).sample(pool, min(count, len(pool)))]


def measured_accuracy(folder: Path) -> str | None:
    """A line with the exact match `python -m illada.demo.evaluate` measured for the model in `folder`, with the command
    that measured it; `None` when the folder has no `eval_results.json` (or one that cannot be read)."""
    try:
        results = json.loads((folder / RESULTS_FILE).read_text())
        overall = results["summary"]["all"]
        return (
            f"Measured on {overall['questions']} held-out questions: {overall['exact_match']:.1%} exact match "
            f"(`{results['command']}`, {folder / RESULTS_FILE})."
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[tuple[str, str | None]],
    settings: GenerationConfig,
    live: bool,
    generator: torch.Generator | None,
) -> list[Answer]:
    """Answers each (prompt, expected-or-None) question on its own."""
    return [
        ask(model, tokenizer, [{"role": "user", "content": prompt}], settings, live, generator, expected)
        for prompt, expected in questions
    ]


def chat_messages(exchanges: list[tuple[str, str]], question: str, keep: int) -> list[dict[str, str]]:
    """The last `keep` (question, answer) exchanges and the new question, as chat messages."""
    messages = []
    for user, assistant in exchanges[len(exchanges) - keep :] if keep else []:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages + [{"role": "user", "content": question}]


def run_chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: GenerationConfig,
    live: bool,
    generator: torch.Generator | None,
    keep: int,
) -> list[Answer]:
    """Reads one question per stdin line until `exit`, `quit` or end of input; answers each."""
    print("Chat with the iLLaDA demo model: one question per line; `exit` or Ctrl-D ends.", flush=True)
    answers, exchanges = [], []
    while True:
        print("\nyou> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip().lower() in EXIT_WORDS:
            print()
            return answers
        question = line.strip()
        if not question:
            continue
        try:
            answer = ask(model, tokenizer, chat_messages(exchanges, question, keep), settings, live, generator)
        except ValueError as error:  # a question too long for the context: say so and go on
            print(f"error: {error}", flush=True)
            continue
        answers.append(answer)
        exchanges.append((question, answer.text))


# --------------------------------------------------------------------------------------------- presets


def compare_presets(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, questions: list[str], overrides: dict
) -> dict[str, list[Answer]]:
    """Every question answered with every preset of `GENERATION_PRESETS` (over the command line's settings)."""
    results = {}
    for name, preset in GENERATION_PRESETS.items():
        settings = generation_settings(model, {**overrides, **preset})
        messages = [[{"role": "user", "content": question}] for question in questions]
        results[name] = [generate_answer(model, tokenizer, m, settings, live=False) for m in messages]
    return results


def print_presets(questions: list[str], results: dict[str, list[Answer]]) -> None:
    """One line per question: each preset's answer and its forward passes; then each preset's total."""
    width = max(len(q) for q in questions) + 2
    print("\nThe same questions with each preset (answer [forward passes]; GENERATION_PRESETS):")
    rows = [["", *results]]
    for i, question in enumerate(questions):
        rows.append([question, *(f"{short(answers[i].text)} [{answers[i].nfe}]" for answers in results.values())])
    rows.append(["total", *(f"{sum(a.nfe for a in answers)} forwards" for answers in results.values())])
    for row in rows:
        print((f"{row[0]:<{width}}" + "".join(f"{cell:<22}" for cell in row[1:])).rstrip())
    sys.stdout.flush()


def short(text: str, limit: int = 16) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------- picture


def commit_grid(history: list[int]) -> torch.Tensor:
    """`(steps, positions)` grid: 2 where a position is committed at that step, 1 once committed, 0 while masked."""
    committed_at = torch.tensor(history)  # [P]
    steps = torch.arange(int(committed_at.max()) + 1)[:, None]  # [S, 1]
    return (steps >= committed_at).long() + (steps == committed_at).long()  # [S, P]


def plot_history(answers: list[Answer], path: Path) -> Path:
    """Writes a PNG with one panel per answer: answer positions across, denoising steps down.

    Uses matplotlib's object API on the Agg canvas (no pyplot, no display, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    answers = [answer for answer in answers if answer.history]
    if not answers:
        raise ValueError("No answer has a committed position to plot.")
    width = min(24, max(6, 0.35 * max(len(a.history) for a in answers)))
    figure = Figure(figsize=(width, 2.6 * len(answers)), layout="constrained")
    FigureCanvasAgg(figure)
    colours = ListedColormap(["#f2f2f2", "#9ecae1", "#08519c"])  # masked, committed earlier, committed now
    for axes, answer in zip(figure.subplots(len(answers), 1, squeeze=False)[:, 0], answers):
        axes.imshow(
            commit_grid(answer.history).numpy(), cmap=colours, vmin=0, vmax=2, aspect="auto", interpolation="nearest"
        )
        axes.set_xticks(range(len(answer.labels)), answer.labels, rotation=90, fontsize=8)
        axes.set_ylabel("step")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(
            f"{answer.prompt}  ({answer.nfe} forward passes, {len(answer.token_ids)} tokens)", fontsize=9, loc="left"
        )
    figure.suptitle(
        "iLLaDA denoising: the step at which each answer position was committed\n"
        "(dark: this step, light: an earlier step, grey: still masked)",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> list[Answer]:
    """Runs the demo (see the module docstring); returns the answers."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("chat_history", "threads", "questions"):
        minimum = 0 if name == "chat_history" else 1
        if getattr(args, name) < minimum:
            parser.error(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(args, name)}.")
    if any(not prompt.strip() for prompt in args.prompts):
        parser.error("a prompt given on the command line is empty.")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(parser, args)
    finally:
        torch.set_num_threads(threads)  # main() may run inside a larger program (tests, a notebook)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Answer]:
    """Loads the model and runs the chosen mode; returns the answers."""
    try:
        folder = resolve_model_dir(args.model)
        model, tokenizer = load_model(folder, args.device, trust_remote_code=args.trust_remote_code)
        overrides = generation_overrides(args)
        settings = generation_settings(model, overrides)
    except ValueError as error:
        parser.error(str(error))
    print(
        f"Loaded {folder} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) on {args.device}; "
        f"budget {settings.max_new_tokens} tokens, blocks of {settings.block_length}."
    )
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    live = not args.no_live
    if args.chat:
        answers = run_chat(model, tokenizer, settings, live, generator, args.chat_history)
    else:
        builtin = [] if args.no_builtin else builtin_questions(args.questions, args.question_seed)
        questions = builtin + [(p, None) for p in args.prompts]
        answers = run_prompts(model, tokenizer, questions, settings, live, generator)
        if builtin:
            right = sum(bool(answer.right) for answer in answers[: len(builtin)])
            print(
                f"\n{right} of {len(builtin)} held-out questions right here "
                f"(drawn with --question-seed {args.question_seed})."
            )
            print(
                measured_accuracy(folder)
                or "No measured accuracy for this model: run `python -m illada.demo.evaluate`."
            )
        if questions and not args.no_presets:
            prompts = [prompt for prompt, _ in questions]
            print_presets(prompts, compare_presets(model, tokenizer, prompts, overrides))
    if args.plot.lower() != "none" and any(answer.history for answer in answers):
        print(f"\nDenoising picture written to {plot_history(answers, Path(args.plot))}")
    return answers


if __name__ == "__main__":
    main()
