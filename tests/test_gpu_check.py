"""bench/gpu_check.py: without CUDA it skips cleanly (exit code 0); its CPU-capable checks run on tiny shapes; on a
CUDA machine the whole script runs (`gpu` mark)."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_without_cuda_everything_is_skipped_and_the_exit_code_is_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert "No CUDA device: skipped" in out and "flash-attn" in out and "8B-shaped" in out


def test_flash_check_skips_on_cpu():
    result = gpu_check.check_flash("cpu")
    assert result.status == "skipped" and "CUDA" in result.note


def test_cpu_checks_run_on_tiny_shapes():
    bf16 = gpu_check.check_bf16("cpu", "tiny", gpu_check.TINY, None, new_tokens=8)
    for key in ("top1_agreement", "generate_token_agreement", "generate_identical_rows"):
        assert 0 <= bf16.figures[key] <= 1
    assert bf16.figures["max_logit_diff"] > 0  # bf16 really ran: it differs from fp32
    assert bf16.status == ("pass" if bf16.figures["top1_agreement"] >= gpu_check.MIN_TOP1_AGREEMENT else "FAIL")
    training = gpu_check.check_training("cpu", steps=2)
    assert training.figures["all_finite"] and math.isfinite(training.figures["loss_first_quarter"])


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--layers_8b", "0"])
    assert "`--layers_8b` must be a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_checks_pass(tmp_path):
    assert gpu_check.main(["--json", str(tmp_path / "gpu.json"), "--train_steps", "100"]) == 0
