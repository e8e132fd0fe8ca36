"""``accelerate launch`` with 2 CPU processes (gloo): a stitched model and a supernet train under DDP and both ranks
end with identical weights. This file is also the worker script the launcher runs (``python test_accelerate.py OUT``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "accelerate_config_cpu2.yaml"


def _state_hash(model) -> str:
    from hf_klas.training.unwrap import unwrap_model as _unwrap

    h = hashlib.sha256()
    for key, value in sorted(_unwrap(model).state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def worker(out_dir: str) -> None:
    import datasets
    import torch
    from tiny import llama_pair
    from transformers import TrainingArguments

    import hf_klas  # noqa: F401
    from hf_klas import StitchedModel
    from hf_klas.training import StitchedSupernet, build_trainer, train_supernet

    torch.set_num_threads(1)
    out = Path(out_dir)
    f, b = llama_pair()  # seeded: identical on both ranks, as anchors loaded from the Hub would be
    calib = [torch.randint(3, 128, (16,), generator=torch.Generator().manual_seed(0)) for _ in range(3)]
    rows = [[3 + (7 * k + 3 * t) % 120 for t in range(10)] for k in range(16)]
    ds = datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})

    def args(name):
        return TrainingArguments(output_dir=str(out / name), per_device_train_batch_size=2, max_steps=4,
                                 learning_rate=5e-3, save_strategy="no", report_to=[], use_cpu=True,
                                 disable_tqdm=True, seed=0, logging_steps=100, ddp_backend="gloo",
                                 dataloader_num_workers=0)

    model = StitchedModel.from_anchors(f, b, front_blocks=2, back_start=3, calibration=calib, progress=False)
    initial = _state_hash(model)
    trainer = build_trainer(model, args("stitched"), ds, mode="full")
    trainer.train()
    net = StitchedSupernet.from_anchors(f, b, configs=[(1, 2), (2, 3), (4, 1)], calibration=calib, progress=False)
    sn_initial = _state_hash(net)
    sn_trainer, _ = train_supernet(net, args("supernet"), ds, mode="full")
    report = {
        "rank": trainer.args.process_index,
        "world_size": trainer.args.world_size,
        "num_processes": trainer.accelerator.num_processes,
        "wrapped": type(trainer.model_wrapped).__name__,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "steps": trainer.state.global_step,
        "initial": initial,
        "final": _state_hash(trainer.model),
        "supernet_initial": sn_initial,
        "supernet_final": _state_hash(net),
        "supernet_sample_step": int(net.sample_step),
        "supernet_wrapped": type(sn_trainer.model_wrapped).__name__,
    }
    (out / f"rank{report['rank']}.json").write_text(json.dumps(report))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_end_with_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "ACCELERATE_DISABLE_RICH": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(CONFIG),
           "--main_process_port", str(_free_port()), str(Path(__file__).resolve()), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rep in reports:
        assert rep["world_size"] == 2 and rep["num_processes"] == 2 and rep["backend"] == "gloo"
        assert rep["wrapped"] == "DistributedDataParallel" and rep["supernet_wrapped"] == "DistributedDataParallel"
        assert rep["steps"] == 4 and rep["supernet_sample_step"] == 4
        assert rep["final"] != rep["initial"] and rep["supernet_final"] != rep["supernet_initial"]
    assert reports[0]["initial"] == reports[1]["initial"]
    assert reports[0]["final"] == reports[1]["final"]
    assert reports[0]["supernet_final"] == reports[1]["supernet_final"]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    worker(sys.argv[1])
