"""Data-parallel selection: ``accelerate launch`` with 2 CPU processes (gloo) gives the plan of one process -- from
``compute_plan`` and from ``hf-klas select`` -- each rank scoring only its share of the calibration batches. This file
is also the worker script the launcher runs (``python test_selection_distributed.py FRONT BACK CALIB OUT``).

Launched like tests/test_accelerate.py (examples/accelerate_config_cpu2.yaml, the torchrun-based launcher):
``accelerate launch --cpu`` starts a single process, so it cannot test two.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "accelerate_config_cpu2.yaml"
BATCH_SIZE = 2


def worker(front: str, back: str, calib: str, out_dir: str) -> None:
    import torch

    from hf_klas.calibration import calibration_from_path
    from hf_klas.cli import main
    from hf_klas.selection.api import compute_plan
    from hf_klas.selection.distributed import process_state

    torch.set_num_threads(1)
    out = Path(out_dir)
    state = process_state()
    plan, info = compute_plan(front, back, calibration_from_path(calib), cache=False, progress=False,
                              batch_size=BATCH_SIZE)
    rc = main(["select", "--front", front, "--back", back, "--calibration", calib, "--out_dir", str(out / "cli"),
               "--use_cache", "false", "--progress", "false", "--batch_size", str(BATCH_SIZE), "--budget", "0.8"])
    report = {
        "rank": state.process_index, "processes": state.num_processes, "backend": state.backend,
        "theta": plan.theta.tolist(), "score": plan.score.tolist(),
        "candidates": [c.to_dict() for c in plan.candidates], "tokens": plan.extra["tokens"],
        "within_back_kl": plan.extra["within_back_kl"], "memory": plan.extra["memory"],
        "forward_calls": info["forward_calls"], "cli_rc": rc,
    }
    (out / f"rank{state.process_index}.json").write_text(json.dumps(report))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def saved_pair(tmp_path):
    from tiny import llama_pair

    front, back = llama_pair()
    paths = []
    for name, model in (("front", front), ("back", back)):
        model.save_pretrained(tmp_path / name)
        paths.append(str(tmp_path / name))
    rows = [[3 + (5 * k + 7 * t) % 120 for t in range(6 + k)] for k in range(5)]  # uneven lengths: padding
    calib = tmp_path / "calib.jsonl"
    calib.write_text("".join(json.dumps({"input_ids": r}) + "\n" for r in rows))
    return paths[0], paths[1], str(calib)


def test_two_processes_give_the_one_process_plan(saved_pair, tmp_path, monkeypatch):
    from hf_klas.calibration import calibration_from_path
    from hf_klas.selection.api import compute_plan

    front, back, calib = saved_pair
    monkeypatch.setenv("HF_KLAS_CACHE", str(tmp_path / "cache"))
    ref, _ = compute_plan(front, back, calibration_from_path(calib), cache=False, progress=False,
                          batch_size=BATCH_SIZE)  # 3 batches: the ranks get 2 and 1
    out = tmp_path / "dp"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "ACCELERATE_DISABLE_RICH": "1", "TOKENIZERS_PARALLELISM": "false", "HF_KLAS_CACHE": str(tmp_path / "c2")}
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(CONFIG),
           "--main_process_port", str(_free_port()), str(Path(__file__).resolve()), front, back, calib, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    ref_theta = ref.theta.tolist()
    ref_cands = [c.to_dict() for c in ref.candidates]
    for rep in reports:
        assert rep["processes"] == 2 and rep["backend"] == "gloo" and rep["cli_rc"] == 0
        assert rep["tokens"] == ref.extra["tokens"]
        for row, ref_row in zip(rep["theta"], ref_theta):
            for x, y in zip(row, ref_row):
                assert abs(x - y) <= 1e-6 * abs(y) + 1e-12
        assert rep["candidates"] == ref_cands
        assert rep["memory"] == reports[0]["memory"]
    # each rank ran its anchors only on its share of the batches
    assert sorted(r["forward_calls"]["front"] for r in reports) == [1, 2]
    assert sorted(r["forward_calls"]["back"] for r in reports) == [1, 2]
    # hf-klas select: one rank wrote the plan, and it is the one-process plan
    from hf_klas.selection.plan import StitchPlan

    written = StitchPlan.load(out / "cli")
    assert [c.to_dict() for c in written.candidates] == ref_cands
    assert float((written.theta - ref.theta).abs().max()) <= 1e-6 * float(ref.theta.abs().max())


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    worker(*sys.argv[1:5])
