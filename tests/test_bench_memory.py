"""bench/bench_memory.py: the per-token activation formula fitted on one decoder layer predicts sizes outside the fit,
the LM head's bytes are linear in the vocabulary, and the parameter counts of the 8B shape match the published
7.62B total / 6.98B non-embedding (paper, model card)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_memory  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_layer_formula_predicts_sizes_outside_the_fit():
    _, checks = bench_memory.fit_layer_formula()
    for size, measured, predicted in checks:
        assert predicted == pytest.approx(measured, rel=1e-3), size


def test_head_bytes_are_linear_in_the_vocabulary():
    small, middle, large = (bench_memory.head_bytes_per_masked_token(64, vocab) for vocab in (256, 512, 768))
    assert large - middle == pytest.approx(middle - small, rel=1e-9)
    # A float32 copy of the logits and its log-softmax dominate: at least 4 bytes per vocabulary entry.
    assert (middle - small) / 256 >= 4


def test_parameter_counts_of_the_8b_shape():
    counts = bench_memory.parameter_counts(bench_memory.SHAPE_8B)
    assert counts["total"] / 1e9 == pytest.approx(7.62, abs=0.01)
    assert (counts["total"] - counts["embedding"]) / 1e9 == pytest.approx(6.98, abs=0.01)
