"""Analytic FLOPs/params of a configuration agree with what the real stitched model computes."""

from __future__ import annotations

import pytest
import torch
from tiny import llama_pair, vision_pair
from torch.utils.flop_counter import FlopCounterMode

from hf_klas import StitchedModel
from hf_klas.flops import stitch_flops, stitch_params


@pytest.mark.parametrize("i,j", [(1, 0), (2, 3), (4, 5)])
def test_causal_lm_flops_match_flop_counter(i, j):
    f, b = llama_pair()
    m = StitchedModel.from_anchors(f, b, front_blocks=i, back_start=j, stitch_init="identity")
    m.set_attn_implementation("eager")  # CPU sdpa has no FlopCounter formula (see hf_klas.flops)
    x = torch.randint(3, 128, (1, 32))
    with FlopCounterMode(display=False) as counter:
        m(x, use_cache=False)
    expected = stitch_flops(f.config, b.config, i, j, seq_len=32).total
    assert abs(counter.get_total_flops() - expected) <= 0.02 * expected
    assert stitch_params(f.config, b.config, i, j).total == sum(p.numel() for p in m.parameters())


def test_vision_flops_match_flop_counter():
    s, l_ = vision_pair()
    m = StitchedModel.from_anchors(s, l_, front_blocks=2, back_start=1, stitch_init="identity")
    m.set_attn_implementation("eager")
    with FlopCounterMode(display=False) as counter:
        m(pixel_values=torch.randn(1, 1, 8, 8))
    expected = stitch_flops(s.config, l_.config, 2, 1).total
    assert abs(counter.get_total_flops() - expected) <= 0.02 * expected
    assert m.config.stitch_info["flops"] == expected
