"""Building from checkpoints on disk reads only the tensors the stitched model needs."""

from __future__ import annotations

import torch
from tiny import llama_pair

from hf_klas import StitchedModel
from hf_klas.building import build_stitched
from hf_klas.loading import TensorReader, resolve_anchor


def test_lazy_build_reads_only_needed_tensors_from_shards(tmp_path, monkeypatch):
    f, b = llama_pair()
    f.save_pretrained(tmp_path / "front", max_shard_size="40KB")
    b.save_pretrained(tmp_path / "back", max_shard_size="40KB")
    assert (tmp_path / "back" / "model.safetensors.index.json").is_file()  # really sharded
    reads: dict[str, list[str]] = {}
    original = TensorReader.get

    def spy(self, name, out=None):
        reads.setdefault(self.directory.name, []).append(name)
        return original(self, name, out=out)

    monkeypatch.setattr(TensorReader, "get", spy)
    m = build_stitched(resolve_anchor(tmp_path / "front"), resolve_anchor(tmp_path / "back"), 2, 3)
    front_layers = {int(n.split(".")[2]) for n in reads["front"] if n.startswith("model.layers.")}
    back_layers = {int(n.split(".")[2]) for n in reads["back"] if n.startswith("model.layers.")}
    assert front_layers == {0, 1}
    assert back_layers == {3, 4, 5}
    assert "model.norm.weight" not in reads["front"]  # the front's final norm is never run
    # tied back anchor: no lm_head on disk, the head is read from its input embedding
    assert "model.embed_tokens.weight" in reads["back"]
    every = set(TensorReader(tmp_path / "back").keys())
    assert len(set(reads["back"])) < len(every)
    # and the lazily built model equals one built from the in-memory anchors
    ref = build_stitched(resolve_anchor(f), resolve_anchor(b), 2, 3)
    x = torch.randint(3, 128, (2, 9))
    assert torch.allclose(m(x).logits, ref(x).logits, atol=1e-6)


def test_from_paths_with_least_squares_equals_in_memory(tmp_path):
    f, b = llama_pair()
    f.save_pretrained(tmp_path / "front")
    b.save_pretrained(tmp_path / "back")
    calib = [torch.randint(3, 128, (16,)) for _ in range(6)]
    on_disk = StitchedModel.from_anchors(str(tmp_path / "front"), str(tmp_path / "back"), front_blocks=3,
                                         back_start=2, calibration=calib, progress=False)
    in_mem = StitchedModel.from_anchors(f, b, front_blocks=3, back_start=2, calibration=calib, progress=False)
    assert torch.allclose(on_disk.stitch.weight, in_mem.stitch.weight, atol=1e-5)
    assert on_disk.config.anchors["front"]["name_or_path"] == str(tmp_path / "front")
