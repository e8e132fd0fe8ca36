"""Resume: a run interrupted after a checkpoint ends with the same weights as an uninterrupted one; checkpoints of a
different stitch configuration are refused before anything is loaded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from tiny import llama_pair
from transformers import TrainerCallback, TrainingArguments

import hf_klas  # noqa: F401
from hf_klas import StitchedModel, StitchedModelForCausalLM
from hf_klas.errors import CheckpointError
from hf_klas.training import TRAINING_INFO_FILE, StitchedSupernet, build_trainer, resolve_checkpoint

STEPS, SAVE_EVERY, CRASH_AFTER = 6, 2, 5


@pytest.fixture(scope="module")
def pair():
    return llama_pair()


def data(n=24, length=10):
    rows = [[3 + (7 * k + 3 * t) % 120 for t in range(length)] for k in range(n)]
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})


def stitched(pair, i=2, j=3):
    f, b = pair
    calib = [torch.randint(3, 128, (16,), generator=torch.Generator().manual_seed(0)) for _ in range(3)]
    return StitchedModel.from_anchors(f, b, front_blocks=i, back_start=j, calibration=calib, progress=False)


def supernet(pair):
    f, b = pair
    return StitchedSupernet.from_anchors(f, b, configs=[(1, 2), (2, 3), (4, 1)], progress=False, seed=5)


def args(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=STEPS, learning_rate=5e-3,
                save_strategy="steps", save_steps=SAVE_EVERY, report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                logging_steps=100, warmup_steps=2, weight_decay=0.01, dataloader_num_workers=0)
    base.update(kw)
    return TrainingArguments(**base)


class Crash(TrainerCallback):
    """Simulates a killed job: raises after step ``at`` (the checkpoint of step at-1 is on disk)."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt(f"killed after step {self.at}")
        return control


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        return control


def weights(model):
    from hf_klas.training.unwrap import unwrap_model as _unwrap

    return {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}


def same(a, b):
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0)]
    assert not bad, bad[:5]


@pytest.mark.parametrize("kind", ["full", "lora", "supernet"])
def test_interrupted_run_resumes_to_the_same_weights(pair, tmp_path, kind):
    make = (lambda: supernet(pair)) if kind == "supernet" else (lambda: stitched(pair))
    mode = "full" if kind == "supernet" else kind
    ds = data()
    ref = build_trainer(make(), args(tmp_path / "ref"), ds, mode=mode, lora_r=2)
    ref.train()
    want = weights(ref.model)

    run = tmp_path / "run"
    crashing = build_trainer(make(), args(run), ds, mode=mode, lora_r=2, callbacks=[Crash(CRASH_AFTER)])
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    assert resolve_checkpoint(True, run).endswith(f"checkpoint-{CRASH_AFTER - 1}")
    info = json.loads((run / f"checkpoint-{CRASH_AFTER - 1}" / TRAINING_INFO_FILE).read_text())
    assert info["kind"] == ("supernet" if kind == "supernet" else "stitched")

    counter = CountSteps()
    resumed = build_trainer(make(), args(run), ds, mode=mode, lora_r=2, callbacks=[counter])  # as a new process
    out = resumed.train(resume_from_checkpoint=True)
    assert out.global_step == STEPS and counter.steps == STEPS - (CRASH_AFTER - 1)  # really resumed, not restarted
    same(weights(resumed.model), want)
    if kind == "supernet":
        assert int(resumed.model.sample_step) == STEPS


def test_checkpoint_of_another_stitch_configuration_is_refused(pair, tmp_path):
    ds = data(8)
    first = build_trainer(stitched(pair, 2, 3), args(tmp_path / "run", max_steps=2), ds, mode="stitch")
    first.train()
    ckpt = tmp_path / "run" / "checkpoint-2"
    assert ckpt.is_dir()
    other = build_trainer(stitched(pair, 1, 2), args(tmp_path / "run", max_steps=4), ds, mode="stitch")
    with pytest.raises(CheckpointError) as err:
        other.train(resume_from_checkpoint=True)
    assert "front_blocks=2, back_start=3" in err.value.cause and "front_blocks=1, back_start=2" in err.value.cause
    assert "fresh output_dir" in err.value.fix
    # without hf_klas_training.json (a checkpoint from a plain Trainer) the config.json is compared
    (ckpt / TRAINING_INFO_FILE).unlink()
    with pytest.raises(CheckpointError, match="front_blocks=2, back_start=3"):
        other.train(resume_from_checkpoint=str(ckpt))
    # a supernet's checkpoint is not a single stitch's either
    with pytest.raises(CheckpointError, match="supernet"):
        sn = build_trainer(supernet(pair), args(tmp_path / "sn", max_steps=2), ds, mode="stitch")
        sn.train()
        build_trainer(stitched(pair), args(tmp_path / "sn", max_steps=4), ds).train(resume_from_checkpoint=True)


def test_resume_without_or_with_incomplete_checkpoints(pair, tmp_path):
    ds = data(8)
    trainer = build_trainer(stitched(pair), args(tmp_path / "empty", max_steps=2), ds, mode="stitch")
    with pytest.raises(CheckpointError, match="No complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "nope"))
    trainer.train()
    # a kill while saving leaves a checkpoint without trainer_state.json: it is skipped
    broken = tmp_path / "empty" / "checkpoint-9"
    shutil.copytree(tmp_path / "empty" / "checkpoint-2", broken)
    (broken / "trainer_state.json").unlink()
    assert resolve_checkpoint(True, tmp_path / "empty").endswith("checkpoint-2")
    with pytest.raises(CheckpointError, match="incomplete"):
        resolve_checkpoint(str(broken), tmp_path / "empty")
    # ... or with trainer_state.json cut short (killed mid-write): skipped as well
    (broken / "trainer_state.json").write_text('{"global_step": 9, "log_hist')
    assert resolve_checkpoint(True, tmp_path / "empty").endswith("checkpoint-2")
    with pytest.raises(CheckpointError, match="incomplete"):
        resolve_checkpoint(str(broken), tmp_path / "empty")
    # a kill while our callback writes hf_klas_training.json: the checkpoint's config.json is checked instead
    ckpt = tmp_path / "empty" / "checkpoint-2"
    assert json.loads((ckpt / TRAINING_INFO_FILE).read_text())["front_blocks"] == 2
    assert not list(ckpt.glob("*.tmp")), "the info file is written by write-then-rename"
    (ckpt / TRAINING_INFO_FILE).write_text("")
    shutil.rmtree(broken)
    assert trainer.train(resume_from_checkpoint=True).global_step == 2
    (ckpt / TRAINING_INFO_FILE).write_text("")
    with pytest.raises(CheckpointError, match="front_blocks=2, back_start=3"):
        build_trainer(stitched(pair, 1, 2), args(tmp_path / "empty", max_steps=2), ds,
                      mode="stitch").train(resume_from_checkpoint=True)


def _cli(model_dir, data_file, out, steps):
    return [sys.executable, "-m", "hf_klas.cli", "finetune", "--model", str(model_dir), "--dataset", str(data_file),
            "--mode", "full", "--max_steps", str(steps), "--save_steps", "5", "--save_total_limit", "3",
            "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--output_dir", str(out), "--use_cpu",
            "--progress", "false", "--seed", "0"]


def test_killed_process_resumes_from_its_last_checkpoint(pair, tmp_path):
    """SIGKILL a real ``hf-klas finetune`` process after a checkpoint, resume it, compare with an unbroken run."""
    steps = 200
    model = stitched(pair)
    model.save_pretrained(tmp_path / "model")
    data_file = tmp_path / "train.jsonl"
    with open(data_file, "w") as fh:
        for row in data(64):
            fh.write(json.dumps({"input_ids": row["input_ids"]}) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    from hf_klas.cli import main

    assert main(_cli(tmp_path / "model", data_file, tmp_path / "ref", steps)[3:]) == 0  # unbroken run, in-process
    proc = subprocess.Popen(_cli(tmp_path / "model", data_file, tmp_path / "run", steps), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in (tmp_path / "run").glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
        if done:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; raise the step count"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "model.safetensors").exists()
    resumed = subprocess.run(_cli(tmp_path / "model", data_file, tmp_path / "run", steps)
                             + ["--resume_from_checkpoint", "last"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, f"the resumed run failed:\n{resumed.stderr[-4000:]}"
    a = StitchedModelForCausalLM.from_pretrained(tmp_path / "ref").state_dict()
    b = StitchedModelForCausalLM.from_pretrained(tmp_path / "run").state_dict()
    same(a, b)
