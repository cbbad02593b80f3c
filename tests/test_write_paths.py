"""Nothing is lost (issue 25): neither CLI nor trainer overwrites a model, checkpoint or data file that the run did not
create, unless told to (`--overwrite_output_dir`), and training in place is refused even then.

For each CLI (`train_sft.py`, `train_vrpo.py`) and each folder a careless user points `--output_dir` at (a folder
holding a finished model, one holding an earlier run's checkpoints, the base model's own folder, the data's folder),
every file of the folder is hashed before and after: a refused run changes nothing. The flag that allows the run
is then checked to work, so that the refusals are not of everything.
"""

import hashlib
import json
from pathlib import Path

import pytest
from datasets import Dataset
from tiny import make_config, make_model
from tiny_tokenizer import make_tiny_tokenizer
from vrpo_helper import make_trainer, preference_rows

from illada import sft_cli, vrpo_cli
from illada.checkpoints import check_output_dir
from illada.trainer import DiffusionSFTConfig, DiffusionSFTTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the SHA-256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A base model folder (weights and tokenizer), SFT rows and preference pairs."""
    root = tmp_path_factory.mktemp("inputs")
    make_model(seed=1).save_pretrained(root / "base")
    make_tiny_tokenizer(chat_template=True).save_pretrained(root / "base")
    sft = [{"prompt": f"count {i} {i + 1}", "completion": f" {i + 2}"} for i in range(8)]
    (root / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in sft))
    prefs = preference_rows(4, conversational=False)
    (root / "prefs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in prefs))
    return {"base": root / "base", "sft": root / "sft.jsonl", "prefs": root / "prefs.jsonl"}


COMMON = ["--use_cpu", "--report_to", "none", "--max_steps", "1", "--per_device_train_batch_size", "2"]
COMMON += ["--save_strategy", "no", "--disable_tqdm", "true", "--learning_rate", "1e-3"]


def run_cli(cli: str, inputs: dict[str, Path], output_dir: Path | str, *extra: str, data: Path | None = None) -> None:
    if cli == "sft":
        flags = ["--train_files", str(data or inputs["sft"]), "--min_lr", "1e-4", "--max_seq_length", "32"]
        main = sft_cli.main
    else:
        flags = ["--train_files", str(data or inputs["prefs"]), "--num_mc_samples", "2"]
        main = vrpo_cli.main
    main(["--model_name_or_path", str(inputs["base"]), "--output_dir", str(output_dir), *flags, *COMMON, *extra])


def finished_model(folder: Path) -> Path:
    """A folder holding a finished model (weights, config, tokenizer, card), as a completed run leaves it."""
    make_model(seed=7).save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    (folder / "README.md").write_text("my model card")
    return folder


def earlier_checkpoints(folder: Path) -> Path:
    """A folder holding an earlier run's checkpoint (refused before any completeness check reads it)."""
    (folder / "checkpoint-4").mkdir(parents=True)
    make_model(seed=8).save_pretrained(folder / "checkpoint-4")
    return folder


CLIS = ("sft", "vrpo")


@pytest.mark.parametrize("cli", CLIS)
def test_a_folder_holding_a_model_is_kept_without_the_flag(cli, inputs, tmp_path):
    out = finished_model(tmp_path / "out")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"already holds a saved model.*`--overwrite_output_dir`"):
        run_cli(cli, inputs, out)
    # `--resume` with no checkpoint to resume from would start afresh over it: refused too.
    with pytest.raises(ValueError, match=r"no checkpoint to resume from"):
        run_cli(cli, inputs, out, "--resume")
    assert snapshot(out) == before
    run_cli(cli, inputs, out, "--overwrite_output_dir")  # told to: the run replaces the model
    after = snapshot(out)
    assert after["model.safetensors"] != before["model.safetensors"]
    assert after.get("README.md") != before["README.md"]  # the old card is replaced (SFT) or deleted (VRPO)


@pytest.mark.parametrize("cli", CLIS)
def test_a_folder_holding_checkpoints_is_kept_without_the_flag(cli, inputs, tmp_path):
    out = earlier_checkpoints(tmp_path / "out")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"holds checkpoints of an earlier run \(checkpoint-4\)"):
        run_cli(cli, inputs, out)
    assert snapshot(out) == before
    with pytest.raises(ValueError, match=r"`--resume` continues .* `--overwrite_output_dir` deletes it"):
        run_cli(cli, inputs, out, "--resume", "--overwrite_output_dir")  # contradictory: neither is done
    assert snapshot(out) == before
    run_cli(cli, inputs, out, "--overwrite_output_dir")
    assert not (out / "checkpoint-4").exists() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("cli", CLIS)
@pytest.mark.parametrize("flag", [[], ["--overwrite_output_dir"]])
def test_the_base_model_folder_is_never_trained_in_place(cli, flag, inputs):
    before = snapshot(inputs["base"])
    with pytest.raises(ValueError, match=r"is the folder of `model_name_or_path`.*training in place"):
        run_cli(cli, inputs, inputs["base"], *flag)
    with pytest.raises(ValueError, match=r"is the folder of `model_name_or_path`"):
        run_cli(cli, inputs, str(inputs["base"]) + "/./", *flag)  # the same folder spelled differently
    assert snapshot(inputs["base"]) == before


@pytest.mark.parametrize("cli", CLIS)
def test_the_data_folder_is_never_the_output(cli, inputs, tmp_path):
    data = tmp_path / "data" / inputs["sft" if cli == "sft" else "prefs"].name
    data.parent.mkdir()
    data.write_bytes(inputs["sft" if cli == "sft" else "prefs"].read_bytes())
    before = snapshot(data.parent)
    with pytest.raises(ValueError, match=r"`train_files` .* lies in `output_dir`"):
        run_cli(cli, inputs, data.parent, "--overwrite_output_dir", data=data)
    assert snapshot(data.parent) == before


@pytest.mark.parametrize("cli", CLIS)
@pytest.mark.parametrize("output_dir", ["", "  "])
def test_an_empty_output_dir_is_refused(cli, output_dir, inputs):
    with pytest.raises(ValueError, match=r"`output_dir` must be a folder path"):
        run_cli(cli, inputs, output_dir)


@pytest.mark.parametrize("cli", CLIS)
def test_a_resume_of_another_kind_of_checkpoint_is_refused_before_loading(cli, inputs, tmp_path):
    """A full-model checkpoint resumed with `--use_lora`, and a checkpoint of another shape: named, not torch's size
    mismatch."""
    out = tmp_path / "out"
    run_cli(cli, inputs, out, "--save_strategy", "steps", "--save_steps", "1")
    with pytest.raises(ValueError, match=r"`--resume`: .*checkpoint-1 holds full model weights.*`--use_lora`"):
        run_cli(cli, inputs, out, "--resume", "--max_steps", "2", "--use_lora")
    config = json.loads((out / "checkpoint-1" / "config.json").read_text())
    (out / "checkpoint-1" / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    with pytest.raises(ValueError, match=r"`--resume`: .* hidden_size=64, this run's model has hidden_size=32"):
        run_cli(cli, inputs, out, "--resume", "--max_steps", "2")


def test_check_output_dir_allows_a_fresh_or_resumed_folder(tmp_path):
    check_output_dir(tmp_path / "new")  # does not exist yet
    check_output_dir(tmp_path)  # exists, empty
    (tmp_path / "notes.txt").write_text("a file the run never writes")
    check_output_dir(tmp_path)


# ------------------------------------------------------------------------------------------------ trainers


def sft_trainer(output_dir: Path, model, **overrides) -> DiffusionSFTTrainer:
    args = DiffusionSFTConfig(
        str(output_dir), use_cpu=True, report_to="none", max_steps=1, max_length=32, save_strategy="no", **overrides
    )
    rows = Dataset.from_list([{"text": "the cat sat on the mat"}] * 4)
    return DiffusionSFTTrainer(model, args=args, train_dataset=rows, processing_class=make_tiny_tokenizer())


def test_trainers_refuse_to_train_a_model_in_its_own_folder(tmp_path):
    folder = tmp_path / "model"
    make_model(seed=1).save_pretrained(folder)
    model = type(make_model()).from_pretrained(folder)
    before = snapshot(folder)
    with pytest.raises(ValueError, match=r"is the folder of `model`"):
        sft_trainer(folder, model).train()
    with pytest.raises(ValueError, match=r"is the folder of `model`"):
        make_trainer(str(folder), model=model).train()
    assert snapshot(folder) == before


def test_trainers_refuse_another_runs_checkpoints_unless_told(tmp_path):
    out = earlier_checkpoints(tmp_path / "out")
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"holds checkpoints of another run \(checkpoint-4"):
        sft_trainer(out, make_model()).train()
    with pytest.raises(ValueError, match=r"holds checkpoints of another run"):
        make_trainer(str(out)).train()
    assert snapshot(out) == before
    sft_trainer(out, make_model(), overwrite_output_dir=True).train()  # told to


def test_config_folder_is_an_input_too(tmp_path):
    folder = tmp_path / "config"
    make_config().save_pretrained(folder)
    with pytest.raises(ValueError, match=r"is the folder of `config_name`"):
        check_output_dir(folder, models={"config_name": str(folder / "config.json")})
