"""demo.py: the README's first command, run in-process on the shipped demo model, and its output checked.

The model folder is `$ILLADA_DEMO_MODEL` if set, else `illada-demo/`; tests that need a model skip without one.
`demo.py` runs `illada.demo.cli`, which the tests import; one test runs `demo.py` itself in a subprocess.
"""

import importlib
import io
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")  # the demo model is tiny: one thread is fastest

REPO = Path(__file__).resolve().parents[1]
DEMO_SCRIPT = REPO / "demo.py"
SHIPPED_MODEL = REPO / "illada-demo"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ANSWER_LINE = re.compile(r"^iLLaDA> (.*)$", re.MULTILINE)
STATS_LINE = re.compile(
    r"forward passes \(nfe\): (\d+) \| answer length: (\d+) tokens \(budget (\d+)\) \| (stopped at EOS|no EOS)"
)


def _model_dir() -> Path:
    return Path(os.environ.get("ILLADA_DEMO_MODEL", SHIPPED_MODEL))


def _model_args() -> list[str]:
    """`--model DIR`, plus `--trust-remote-code` for any folder but the shipped one."""
    trust = [] if _model_dir().resolve() == SHIPPED_MODEL.resolve() else ["--trust-remote-code"]
    return ["--model", str(_model_dir()), *trust]


needs_model = pytest.mark.skipif(
    not (_model_dir() / "config.json").is_file(),
    reason=f"no demo model at {_model_dir()}: build it with `python -m illada.demo.build_demo_model` (or set "
    "ILLADA_DEMO_MODEL)",
)


@pytest.fixture(scope="module")
def cli():
    """The demo's module (`illada.demo.cli`, which demo.py runs); `load_model` memoised after its first (real) call,
    so each test does not reload."""
    module = importlib.import_module("illada.demo.cli")
    real_load, loaded = module.load_model, {}

    def load_once(folder, device, trust_remote_code=False):
        key = (str(folder), device)
        if key not in loaded:
            loaded[key] = real_load(folder, device, trust_remote_code=trust_remote_code)
        return loaded[key]

    module.load_model = load_once
    yield module
    module.load_model = real_load


@pytest.fixture(scope="module")
def reference():
    """The model and tokenizer loaded by the test itself, for an independent run of `generate`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _model_dir()
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    return model, AutoTokenizer.from_pretrained(folder, trust_remote_code=True)


class FakeTokenizer:
    """Decodes id `i` as `<i>`: enough to check how the live view lays out runs and masks."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f"<{i}>" for i in ids)


class TerminalBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


def _answers(output: str) -> list[tuple[str, tuple[int, int, int, bool]]]:
    texts, stats = ANSWER_LINE.findall(output), STATS_LINE.findall(output)
    assert len(texts) == len(stats), output
    return [(text, (int(n), int(k), int(b), s == "stopped at EOS")) for text, (n, k, b, s) in zip(texts, stats)]


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0
    from matplotlib.image import imread

    assert imread(path).shape[:2] == (height, width)


# --------------------------------------------------------------------------------------------- without a model


def test_missing_model_folder_is_a_clear_error(cli, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["--model", str(tmp_path / "absent")])
    assert raised.value.code == 2
    assert "No model folder" in capsys.readouterr().err


def test_other_model_folder_needs_trust_remote_code(cli, tmp_path, capsys, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    for argv, env in ((["--model", str(tmp_path)], None), ([], str(tmp_path))):
        if env is not None:
            monkeypatch.setenv(cli.MODEL_ENV_VAR, env)
        with pytest.raises(SystemExit) as raised:
            cli.main(argv)
        assert raised.value.code == 2
        assert "--trust-remote-code" in capsys.readouterr().err


def test_empty_prompt_is_rejected(cli, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--model", "unused", "  "])
    assert "empty" in capsys.readouterr().err


def test_render_tokens_decodes_runs_and_marks_masks(cli):
    mask = 5
    text = cli.render_tokens(FakeTokenizer(), [7, 8, mask, mask, 9, mask], mask, "#")
    assert text == "<7><8>##<9>#"
    assert cli.render_tokens(FakeTokenizer(), [mask, mask], mask, "#") == "##"
    # After the first stop token (2): committed positions are dots, masked ones stay masks.
    text = cli.render_tokens(FakeTokenizer(), [7, mask, 2, 8, mask, 2, 9], mask, "#", stop_ids={2})
    assert text == "<7>#<2>" + cli.AFTER_STOP_SYMBOL + "#" + cli.AFTER_STOP_SYMBOL * 2


def test_commit_grid_by_hand(cli):
    # Position 0 committed at step 1, position 1 at step 0, position 2 at step 2.
    grid = cli.commit_grid([1, 0, 2])
    assert grid.tolist() == [[0, 2, 0], [2, 1, 0], [1, 1, 2]]


def test_canvas_view_plain_prints_a_few_frames_then_live_redraws(cli):
    mask, steps = 5, 9
    canvases = [torch.tensor([[1, 1] + [11] * s + [mask] * (steps - s)]) for s in range(1, steps + 1)]
    plain = io.StringIO()
    view = cli.CanvasView(FakeTokenizer(), 2, mask, {2}, stream=plain, delay=0)
    for step, canvas in enumerate(canvases):
        view(step, canvas, None)
    assert plain.getvalue() == ""  # nothing until close()
    view.close()
    lines = plain.getvalue().splitlines()
    assert len(lines) == cli.PLAIN_FRAMES and lines[0].startswith("step   0") and lines[-1].startswith("step   8")
    assert lines[-1].endswith("<11>" * steps) and "<1>" not in lines[0]  # the prompt is not drawn
    terminal = TerminalBuffer()
    view = cli.CanvasView(FakeTokenizer(), 2, mask, {2}, stream=terminal, delay=0)
    for step, canvas in enumerate(canvases):
        view(step, canvas, None)
    view.close()
    drawn = terminal.getvalue()
    assert drawn.count("step ") == steps
    assert drawn.count(cli.CLEAR_BELOW) == steps - 1  # every frame after the first erases the previous one


def test_chat_messages_keep_the_last_exchanges(cli):
    exchanges = [("q1", "a1"), ("q2", "a2")]
    assert cli.chat_messages(exchanges, "q3", 0) == [{"role": "user", "content": "q3"}]
    assert [m["content"] for m in cli.chat_messages(exchanges, "q3", 1)] == ["q2", "a2", "q3"]
    assert [m["content"] for m in cli.chat_messages(exchanges, "q3", 5)] == ["q1", "a1", "q2", "a2", "q3"]


# --------------------------------------------------------------------------------------------- on the model


@needs_model
def test_demo_answers_builtin_and_command_line_prompts(cli, reference, tmp_path, capsys):
    prompt, plot = "What is 12 + 30?", tmp_path / "denoising.png"
    answers = cli.main([*_model_args(), "--plot", str(plot), prompt])
    output = capsys.readouterr().out
    printed = _answers(output)
    assert len(printed) == len(answers) == cli.DEFAULT_QUESTIONS + 1
    model, tokenizer = reference
    settings = json.loads((_model_dir() / "generation_config.json").read_text())
    for (text, (nfe, length, budget, stopped)), answer in zip(printed, answers):
        assert text.strip(), output  # non-empty
        for leftover in (tokenizer.mask_token, cli.MASK_SYMBOL, tokenizer.eos_token):
            assert leftover not in answer.text
        assert model.config.mask_token_id not in answer.token_ids
        assert budget == settings["max_new_tokens"] and length == len(answer.token_ids)
        if settings["steps"] is None and settings["tokens_per_step"] is None and settings["threshold"] is None:
            # One token per step: every position up to EOS is committed, and (the default) none after it; with
            # `decode_after_stop=True` every block opened up to the one that holds EOS is decoded in full.
            block = settings["block_length"]
            whole = min(budget, (length // block + 1) * block)
            expected = (whole if settings["decode_after_stop"] else length + 1) if stopped else budget
            assert nfe == expected
        assert nfe > 0 and len(answer.history) == length + stopped and max(answer.history) < nfe
    if _model_dir() == SHIPPED_MODEL:
        assert all(stats[3] for _, stats in printed), "the shipped model must end every built-in answer with EOS"
    assert "step   0 |" in output  # plain frames of the live view (stdout is not a terminal here)
    _check_png(plot)
    _check_against_own_generate(reference, prompt, answers[-1])
    _check_presets(output, [answer.text for answer in answers], reference)


def _check_presets(output: str, texts: list[str], reference) -> None:
    """The side-by-side table: one row per question with each preset's answer and forward passes; `lossless-fast`
    answers as `default` in at most as many forwards, and each cell is what an independent `generate` gives."""
    from illada.generation_config_illada import GENERATION_PRESETS

    table = output.split("The same questions with each preset")[1].splitlines()[1:]
    assert table[0].split() == list(GENERATION_PRESETS)
    width = len(table[0]) - len(table[0].lstrip())  # the question column
    cells = [
        [re.fullmatch(r"(.*) \[(\d+)\]", line[i : i + 22].strip()).groups() for i in range(width, len(line), 22)]
        for line in table[1 : 1 + len(texts)]
    ]
    assert [len(row) for row in cells] == [len(GENERATION_PRESETS)] * len(texts)
    column = {name: i for i, name in enumerate(GENERATION_PRESETS)}
    for row in cells:
        default, lossless = row[column["default"]], row[column["lossless-fast"]]
        assert default[0] == lossless[0] and int(lossless[1]) <= int(default[1])
    model, tokenizer = reference
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12 + 30?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    for name, preset in GENERATION_PRESETS.items():
        out = model.generate(ids, return_dict_in_generate=True, **preset)
        text = tokenizer.decode(out.sequences[0, ids.shape[1] :], skip_special_tokens=True).strip()
        assert cells[-1][column[name]] == (text[:15] + "…" if len(text) > 16 else text, str(out.nfe))
    total = re.findall(r"(\d+) forwards", table[1 + len(texts)])
    assert [int(t) for t in total] == [sum(int(row[i][1]) for row in cells) for i in range(len(GENERATION_PRESETS))]


def _check_against_own_generate(reference, prompt: str, answer) -> None:
    """The demo's answer is the row of `generate` up to the first EOS, and nothing but padding follows EOS."""
    model, tokenizer = reference
    input_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    row = model.generate(input_ids)[0, input_ids.shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    if eos in row:
        end = row.index(eos)
        assert all(token == model.config.pad_token_id for token in row[end + 1 :])
        row = row[:end]
    assert answer.token_ids == row
    assert answer.text == tokenizer.decode(row, skip_special_tokens=False).strip()  # the leading space stripped


def test_builtin_questions_are_a_seeded_random_sample_of_the_heldout_split(cli):
    from illada.demo.data import TASKS, example_is_heldout, make_examples

    pool = make_examples("heldout", cli.QUESTION_POOL_PER_TASK * len(TASKS), seed=0)
    by_prompt = {example.prompt: example for example in pool}
    drawn = cli.builtin_questions(8, seed=0)
    assert drawn == cli.builtin_questions(8, seed=0)  # fixed seed: the same questions every run
    assert len({prompt for prompt, _ in drawn}) == 8
    assert all(prompt in by_prompt and by_prompt[prompt].response == answer for prompt, answer in drawn)
    assert all(example_is_heldout(by_prompt[prompt]) for prompt, _ in drawn)
    assert [prompt for prompt, _ in drawn] != [example.prompt for example in pool[:8]]  # not the pool's order
    assert cli.builtin_questions(8, seed=1) != drawn


@needs_model
def test_demo_marks_each_answer_and_agrees_with_the_measured_accuracy(cli, reference, capsys):
    """Each verdict is what an independent `generate` + compare gives; the printed accuracy is the one
    `illada.demo.evaluate` measured (eval_results.json), and the demo's own share of right answers is consistent with
    it."""
    count = 12
    answers = cli.main(
        [*_model_args(), "--no-live", "--plot", "none", "--questions", str(count), "--question-seed", "3"]
    )
    output = capsys.readouterr().out
    verdicts = re.findall(r"^        expected: (.*) \((right|wrong)\)$", output, re.MULTILINE)
    assert len(verdicts) == len(answers) == count
    questions = cli.builtin_questions(count, seed=3)
    model, tokenizer = reference
    for (prompt, expected), (printed_expected, verdict), answer in zip(questions, verdicts, answers):
        assert printed_expected == expected
        _check_against_own_generate(reference, prompt, answer)
        assert verdict == ("right" if answer.text == expected else "wrong")
    right = sum(verdict == "right" for _, verdict in verdicts)
    assert f"{right} of {count} held-out questions right here" in output
    results_file = _model_dir() / "eval_results.json"
    if not results_file.is_file():
        assert "No measured accuracy" in output
        return
    measured = json.loads(results_file.read_text())["summary"]["all"]
    assert (
        f"Measured on {measured['questions']} held-out questions: {measured['exact_match']:.1%} exact match" in output
    )
    # The sample agrees with the measured rate (3 binomial standard deviations, plus one question of rounding).
    p = measured["exact_match"]
    assert abs(right / count - p) <= 3 * (p * (1 - p) / count) ** 0.5 + 1 / count, (right, count, p)


@needs_model
def test_chat_mode_answers_piped_lines_until_end_of_input(cli, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2 + 3?\nSay backwards: red sun\n"))
    plot = tmp_path / "chat.png"
    answers = cli.main([*_model_args(), "--chat", "--no-live", "--plot", str(plot)])
    output = capsys.readouterr().out
    assert [a.prompt for a in answers] == ["What is 2 + 3?", "Say backwards: red sun"]
    assert output.count("you> ") == 3  # two questions, then the end of input
    assert all(text.strip() and nfe > 0 for text, (nfe, *_) in _answers(output))
    assert "step " not in output  # --no-live
    _check_png(plot)


@needs_model
def test_chat_mode_stops_at_exit(cli, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\nWhat is 1 + 1?\nexit\nWhat is 5 + 5?\n"))
    answers = cli.main([*_model_args(), "--chat", "--no-live", "--plot", "none"])
    assert [a.prompt for a in answers] == ["What is 1 + 1?"]
    assert "Denoising picture" not in capsys.readouterr().out


@needs_model
def test_live_view_redraws_in_place_on_a_terminal(cli, capsys, monkeypatch):
    terminal = TerminalBuffer()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(cli, "FRAME_DELAY_S", 0)
    (answer,) = cli.main([*_model_args(), "--no-builtin", "--plot", "none", "What is 2 + 3?"])
    drawn = terminal.getvalue()
    assert drawn.count("step ") == answer.nfe  # one frame per forward pass
    assert drawn.count(cli.CLEAR_BELOW) == answer.nfe - 1
    assert cli.MASK_SYMBOL in drawn  # the first frames still hold masks


@needs_model
def test_bad_generation_setting_is_rejected_before_generating(cli, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main([*_model_args(), "--steps", "0"])
    assert raised.value.code == 2
    error = capsys.readouterr()
    assert "`steps`" in error.err and "iLLaDA>" not in error.out


@needs_model
def test_readme_command_runs_as_a_script(cli, tmp_path):
    """`python demo.py` itself (one subprocess): `import illada.demo.data` must find the package next to the script."""
    plot = tmp_path / "denoising.png"
    result = subprocess.run(
        [sys.executable, str(DEMO_SCRIPT), *_model_args(), "--plot", str(plot)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(_answers(result.stdout)) == cli.DEFAULT_QUESTIONS and "Denoising picture written" in result.stdout
    _check_png(plot)
