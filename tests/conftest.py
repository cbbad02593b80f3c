"""Shared fixtures: a tiny iLLaDA built in-process (no downloads), fp32 on CPU. Builders live in `tiny.py`."""

import pytest
import torch
from tiny import SHARP, make_config, make_model


@pytest.fixture
def tiny_config():
    return make_config()


@pytest.fixture
def tiny_model():
    return make_model()


@pytest.fixture(scope="module")
def sharp_model():
    """A tiny model whose confidences differ (see `tiny.SHARP`), shared by a test module."""
    return make_model(seed=3, **SHARP)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (use `pytestmark = pytest.mark.usefixtures("one_thread")`): tiny forwards run
    many times slower with two OpenMP threads on a shared, busy 2-core machine. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
