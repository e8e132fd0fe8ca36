"""Real weights: a SmolLM2-135M self-stitch stitchable model with four configurations, trained as a supernet for a few
steps, saved, reloaded where hf_klas cannot be imported (trust_remote_code), and generating with each configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import pytest
import torch
from test_stitched_causal_lm import BLOCK_HF_KLAS
from transformers import TrainingArguments

from hf_klas import StitchableModelForCausalLM
from hf_klas.loading import resolve_anchor
from hf_klas.training import build_trainer, prepare_causal_lm_dataset

pytestmark = pytest.mark.integration

CONFIGS = [(26, 28), (24, 27), (20, 26), (15, 24)]  # 28, 27, 24 and 21 of SmolLM2's 30 blocks
TEXTS = ["Debian is a free operating system for your computer.",
         "The package provides a command line tool to convert images between formats.",
         "This library implements fast Fourier transforms in C.",
         "A simple text editor for the terminal, with syntax highlighting.",
         "Utilities for managing the system clock and time zones.",
         "Python bindings for the GTK widget toolkit."] * 2


def test_smollm2_stitchable_trains_saves_and_generates_each_configuration_without_hf_klas(tmp_path):
    anchor = resolve_anchor("smollm2-135m")
    tok = anchor.load_preprocessor()
    model = StitchableModelForCausalLM.from_anchors(anchor, configs=CONFIGS, max_calibration_samples=16,
                                                    max_length=64, progress=False)
    assert model.config.self_stitch and model.config.tie_word_embeddings and model.back is model.front
    assert model.active_stitch == (26, 28) and model.config.num_hidden_layers == 28
    anchor_params = sum(p.numel() for p in anchor.load_full().parameters())
    assert sum(p.numel() for p in model.parameters()) == anchor_params + len(CONFIGS) * (576 * 576 + 576)

    train = prepare_causal_lm_dataset(datasets.Dataset.from_dict({"text": TEXTS}), tok, max_length=32,
                                      vocab_size=model.config.vocab_size)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=4,
                             learning_rate=1e-3, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
                             seed=0, logging_steps=100)
    result = build_trainer(model, args, train, mode="stitch", processing_class=tok).train()
    assert result.global_step == 4 and int(model.sample_step) == 4
    assert torch.isfinite(torch.tensor(result.training_loss))
    model.eval()
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")

    prompt = tok.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    expected = {}
    for c in CONFIGS:
        model.set_stitch(c)
        out = model.generate(**prompt, max_new_tokens=10, do_sample=False)
        expected[str(c)] = out[0, prompt["input_ids"].shape[1]:].tolist()
    model.set_stitch(20, 26)
    single = model.extract(20, 26)
    assert single.generate(**prompt, max_new_tokens=10, do_sample=False)[0, prompt["input_ids"].shape[1]:].tolist() \
        == expected["(20, 26)"]

    code = BLOCK_HF_KLAS + f"""
import json
from transformers import AutoModelForCausalLM, AutoTokenizer
path = {str(tmp_path / "saved")!r}
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
assert "hf_klas" not in sys.modules and type(model).__name__ == "StitchableModelForCausalLM"
prompt = tok.apply_chat_template([{{"role": "user", "content": "Name a colour."}}], add_generation_prompt=True,
                                 return_tensors="pt", return_dict=True)
out = {{}}
default = model.active_stitch
for c in model.config.stitches:  # a configuration per call, with the shipped code alone
    new = model.generate(**prompt, stitch=c, max_new_tokens=10, do_sample=False)[0, prompt["input_ids"].shape[1]:]
    out[str(c)] = {{"ids": new.tolist(), "text": tok.decode(new, skip_special_tokens=True)}}
assert model.active_stitch == default
print(json.dumps(out))
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "instantiate a model of type" not in res.stdout + res.stderr, res.stdout[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert sorted(got) == sorted(expected)
    for c, value in got.items():
        assert value["ids"] == expected[c], c
    assert got["(26, 28)"]["text"].strip()  # the dearest configuration (two blocks skipped) still answers
