"""Shared test setup: tiny models run fastest single-threaded on a shared 2-core machine."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # `from tiny import ...`
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread per test (with the CPU shared, 2 spinning OpenMP threads made a tiny step ~200x
    slower); reset after each test because code under test (e.g. run_quality) sets its own count."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)
