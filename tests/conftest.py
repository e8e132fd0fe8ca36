"""Shared test setup: tiny models run fastest single-threaded on a shared 2-core machine."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))  # `from tiny import ...`
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
torch.set_num_threads(1)
