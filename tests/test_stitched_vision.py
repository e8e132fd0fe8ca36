"""StitchedModelForImageClassification on tiny ViT and DeiT pairs (CLS / CLS + distillation tokens)."""

from __future__ import annotations

import pytest
import torch
from tiny import vision_pair
from transformers import AutoModelForImageClassification

import hf_klas  # noqa: F401
from hf_klas import StitchedModel, StitchedModelForImageClassification


def pixels(n=4, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["vit", "deit"])
def test_identity_self_stitch_reproduces_the_anchor(family):
    small, _ = vision_pair(family)
    m = StitchedModel.from_anchors(small, front_blocks=2, back_start=2, stitch_init="identity")
    assert isinstance(m, StitchedModelForImageClassification)
    x = pixels()
    assert torch.allclose(m(pixel_values=x).logits, small(pixel_values=x).logits, atol=1e-5)


@pytest.mark.parametrize("family", ["vit", "deit"])
def test_cross_stitch_forward_loss_labels_and_reload(family, tmp_path):
    small, big = vision_pair(family)
    calib = [pixels(8, seed=s) for s in range(3)]
    m = StitchedModel.from_anchors(small, big, front_blocks=2, back_start=1, calibration=calib, progress=False)
    from hf_klas.anatomy import find_blocks

    for mine, theirs in ((m.back_blocks[0], find_blocks(big)[1]), (m.front_blocks[1], find_blocks(small)[1])):
        for (n1, p1), (n2, p2) in zip(mine.named_parameters(), theirs.named_parameters()):
            assert n1 == n2 and torch.equal(p1, p2)
    x, y = pixels(), torch.tensor([0, 1, 2, 3])
    out = m(pixel_values=x, labels=y, output_hidden_states=True)
    assert out.logits.shape == (4, 5)
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, y), atol=1e-6)
    assert len(out.hidden_states) == 2 + 3 + 1
    assert m.config.id2label == small.config.id2label
    m.save_pretrained(tmp_path)
    r = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert isinstance(r, StitchedModelForImageClassification)
    assert torch.allclose(r(pixel_values=x).logits, m(pixel_values=x).logits, atol=1e-5)
    assert r.config.id2label[3] == "class_3"
