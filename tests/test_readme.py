"""README.md is the Hub model card: short, a snippet on its first screen, every Python block runs as written against
the shipped `illada-demo/`, every relative link in it and in docs/ resolves, and its two set-up commands are the ones
CI runs (`.ci/run`)."""

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DEMO = REPO / "illada-demo"
MAX_LINES = 300
FIRST_SNIPPET_BY_LINE = 60
DEMO_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python demo.py"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def _ci_steps() -> list[str]:
    """The command lines of `.ci/run` after its preamble (shebang, comments, `set`, `cd`)."""
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    return [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]


def test_readme_is_a_short_model_card():
    text = _readme()
    assert len(text.splitlines()) <= MAX_LINES
    front_matter = text.split("---\n")[1]  # the Hub's YAML metadata comes first
    assert text.startswith("---\n") and "library_name: transformers" in front_matter
    assert "custom_code" in front_matter and "pipeline_tag: text-generation" in front_matter
    first = next(number for number, line in enumerate(text.splitlines(), 1) if line.startswith("```python"))
    assert first <= FIRST_SNIPPET_BY_LINE
    assert "ILLADA.md" not in text


def test_setup_commands_are_the_ones_ci_runs():
    """The test command is `.ci/run`'s steps joined by `&&`; the demo command installs the same way, from the
    runtime requirements that the test requirements include."""
    text = _readme()
    steps = _ci_steps()
    test_command = " && ".join(steps)
    assert text.count(test_command) == 1, test_command
    assert text.count(DEMO_COMMAND) == 1
    venv, install, demo = DEMO_COMMAND.split(" && ")
    assert venv == steps[0] and install == steps[1].replace("requirements-test.txt", "requirements.txt")
    assert (REPO / demo.split()[-1]).is_file()
    assert "-r requirements.txt" in (REPO / "requirements-test.txt").read_text().splitlines()
    assert any(line.startswith("ruff==") for line in (REPO / "requirements-test.txt").read_text().splitlines())


@pytest.mark.parametrize("page", [README, *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    targets = [t for t in LINK.findall(page.read_text(encoding="utf-8")) if not re.match(r"[a-z]+:|#", t)]
    missing = [t for t in targets if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"
    assert "ILLADA.md" not in page.read_text(encoding="utf-8")


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t).resolve() for t in LINK.findall(_readme())}
    assert not [p.name for p in (REPO / "docs").glob("*.md") if p.resolve() not in linked]


@pytest.mark.skipif(not (DEMO / "config.json").is_file(), reason="no illada-demo/ folder")
@pytest.mark.usefixtures("one_thread")
def test_every_python_block_runs(tmp_path, monkeypatch):
    """The README's Python blocks run in order in one namespace, as a reader pastes them, from an empty folder that
    holds only the demo model: what they print and return is what the README's comments say."""
    blocks = _python_blocks(_readme())
    assert len(blocks) >= 4
    (tmp_path / "illada-demo").symlink_to(DEMO, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace, printed = {"__name__": "__readme__"}, []
    for number, block in enumerate(blocks):
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        printed.append(stdout.getvalue())

    assert printed[0].strip() == "sun red"  # the quick start's comment
    quick = namespace["tokenizer"].apply_chat_template(
        [{"role": "user", "content": "Say backwards: red sun"}], add_generation_prompt=True, return_tensors="pt"
    )
    assert torch.equal(namespace["inputs"]["input_ids"], quick["input_ids"])
    generated = namespace["out"]  # the "Generate" block's output object
    assert bool(generated.stopped.all()) and generated.nfe >= 1 and int(generated.answer_lengths[0]) > 0
    scores = namespace["scores"]
    assert scores.best == 0 and len(scores.scores) == 3  # "42" of "42", "41", "43"
    assert len(namespace["likelihood"].scores) == 2
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2 and (tmp_path / "out" / "adapter_config.json").is_file()
    assert type(namespace["merged"]).__name__ == "ILLaDAForCausalLM"
    assert not any("lora" in name for name, _ in namespace["merged"].named_parameters())
