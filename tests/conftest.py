"""Shared fixtures: a tiny iLLaDA built in-process (no downloads), fp32 on CPU. Builders live in `tiny.py`."""

import pytest

from tiny import make_config, make_model


@pytest.fixture
def tiny_config():
    return make_config()


@pytest.fixture
def tiny_model():
    return make_model()
