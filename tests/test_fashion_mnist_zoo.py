"""Fashion-MNIST loader (Debian IDX files) and the shipped ViT zoo (hf_klas/zoo/weights/vit-fmnist-*)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_klas.data.fashion_mnist import (
    DEFAULT_ROOT,
    ENV_VAR,
    FASHION_MNIST_LABELS,
    load_fashion_mnist,
    load_fashion_mnist_arrays,
    make_image_processor,
    preprocess,
    to_pixel_values,
    with_pixel_values,
)
from hf_klas.errors import DataError

WEIGHTS = Path(__file__).resolve().parents[1] / "hf_klas" / "zoo" / "weights"
ZOO_JSON = WEIGHTS / "vit-fmnist-zoo.json"
HAVE_FILES = (Path(DEFAULT_ROOT) / "t10k-images-idx3-ubyte.gz").is_file()
needs_files = pytest.mark.skipif(not HAVE_FILES, reason="needs `apt-get install dataset-fashion-mnist`")


def _zoo():
    return json.loads(ZOO_JSON.read_text())["models"]


# --- (a) loader on the real files -------------------------------------------------------------------------


@needs_files
@pytest.mark.parametrize("split", ["train", "test"])
def test_loader_shapes_and_labels(split):
    import datasets

    ds = load_fashion_mnist(split, limit=16)
    assert isinstance(ds, datasets.Dataset) and len(ds) == 16
    assert ds.column_names == ["image", "label"]
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == FASHION_MNIST_LABELS and len(FASHION_MNIST_LABELS) == 10
    img = ds[0]["image"]
    assert img.mode == "L" and img.size == (28, 28)
    assert all(0 <= y < 10 for y in ds["label"])
    images, labels = load_fashion_mnist_arrays(split, limit=16)
    assert images.shape == (16, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.array_equal(np.asarray(img), images[0]) and ds["label"] == labels.tolist()


@needs_files
def test_known_first_labels_and_full_sizes():
    # First test labels of Fashion-MNIST: Ankle boot, Pullover, Trouser, Trouser, Shirt.
    _, labels = load_fashion_mnist_arrays("test")
    assert len(labels) == 10000 and labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert np.bincount(labels).tolist() == [1000] * 10


@needs_files
def test_preprocess_matches_image_processor_and_pixel_values_dataset():
    ds = load_fashion_mnist("test", limit=8)
    proc = make_image_processor()
    ref = to_pixel_values(ds[:8], proc)
    assert ref.shape == (8, 3, 28, 28) and ref.dtype == torch.float32
    assert torch.equal(ref[:, 0], ref[:, 2])  # gray on three equal channels
    assert torch.allclose(ref, preprocess(load_fashion_mnist_arrays("test", limit=8)[0]), atol=1e-6)
    assert torch.allclose(ref, to_pixel_values(ds[:8]), atol=1e-6)
    pv = with_pixel_values(ds)
    assert pv.column_names == ["pixel_values", "label"]
    assert torch.allclose(pv[:8]["pixel_values"], ref, atol=1e-6)


# --- (b) errors ---------------------------------------------------------------------------------------------


def test_missing_root_names_path_and_apt_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_fashion_mnist("test", root=missing)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and str(missing) in msg


def test_env_var_overrides_root(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        load_fashion_mnist_arrays("train")
    assert str(tmp_path) in str(err.value)


def _write_idx(path, magic, dims, payload):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    with gzip.open(path, "wb") as fh:
        fh.write(header + np.asarray(payload, dtype=np.uint8).tobytes())


def test_idx_magic_and_size_validation(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 2051, [3, 28, 28], rng.integers(0, 256, 3 * 784))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2049, [3], [4, 0, 9])
    images, labels = load_fashion_mnist_arrays("test", root=tmp_path)
    assert images.shape == (3, 28, 28) and labels.tolist() == [4, 0, 9]
    ds = load_fashion_mnist("test", root=tmp_path, limit=2)
    assert ds["label"] == [4, 0]
    # swapped files -> wrong magic
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2051, [3], [4, 0, 9])
    with pytest.raises(DataError, match="magic number"):
        load_fashion_mnist_arrays("test", root=tmp_path)
    # truncated payload
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2049, [5], [4, 0, 9])
    with pytest.raises(DataError, match="declares shape"):
        load_fashion_mnist_arrays("test", root=tmp_path)
    with pytest.raises(DataError):
        load_fashion_mnist("valid", root=tmp_path)
    with pytest.raises(DataError):
        load_fashion_mnist("test", root=tmp_path, limit=0)


# --- (c) shipped models reproduce their recorded accuracy --------------------------------------------------


@pytest.mark.integration
@needs_files
@pytest.mark.parametrize("name", ["vit-fmnist-tiny", "vit-fmnist-small", "vit-fmnist-base"])
def test_shipped_model_accuracy_matches_record(name):
    """The validation (5,000 images) and full 10k-image test accuracies the record (and the model card) state,
    through the saved processor."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    record = {m["name"]: m for m in _zoo()}[name]
    path = WEIGHTS / record["path"]
    model = AutoModelForImageClassification.from_pretrained(path).eval()
    processor = AutoImageProcessor.from_pretrained(path)
    assert model.config.id2label == dict(enumerate(FASHION_MNIST_LABELS))
    for split in ("validation", "test"):
        ds = load_fashion_mnist(split)
        correct = 0
        with torch.no_grad():
            for s in range(0, len(ds), 1000):
                batch = ds[s:s + 1000]
                pixels = processor(images=batch["image"], return_tensors="pt")["pixel_values"]
                assert pixels.shape == (len(batch["label"]), 3, 28, 28)
                preds = model(pixel_values=pixels).logits.argmax(-1)
                correct += int((preds == torch.tensor(batch["label"])).sum())
        assert len(ds) == record[f"{split}_examples"]
        assert correct / len(ds) == pytest.approx(record[f"{split}_accuracy"], abs=1e-4), (name, split)
        assert f"{record[f'{split}_accuracy'] * 100:.2f}%" in (path / "README.md").read_text()


# --- (d) the zoo is stitchable and ordered by size ----------------------------------------------------------


def test_zoo_shares_token_layout_and_grows():
    from transformers import AutoConfig

    models = _zoo()
    assert [m["name"] for m in models] == ["vit-fmnist-tiny", "vit-fmnist-small", "vit-fmnist-base"]
    configs = [AutoConfig.from_pretrained(WEIGHTS / m["path"]) for m in models]
    for m, cfg in zip(models, configs):
        assert cfg.model_type == "vit" and cfg.architectures == ["ViTForImageClassification"]
        assert (cfg.image_size, cfg.patch_size, cfg.num_channels) == (28, 7, 3)
        assert (cfg.hidden_size, cfg.num_hidden_layers) == (m["hidden"], m["layers"])
        assert cfg.num_labels == 10 and cfg.label2id == {n: i for i, n in enumerate(FASHION_MNIST_LABELS)}
        folder = WEIGHTS / m["path"]
        for f in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
            assert (folder / f).is_file(), folder / f
        assert "library_name: transformers" in (folder / "README.md").read_text()
    for a, b in zip(configs, configs[1:]):
        assert a.hidden_size < b.hidden_size and a.num_hidden_layers <= b.num_hidden_layers
    params = [m["params"] for m in models]
    assert params == sorted(params) and len(set(params)) == 3
    total_bytes = sum((WEIGHTS / m["path"] / "model.safetensors").stat().st_size for m in models)
    assert total_bytes < 12 * 2**20


def test_zoo_is_converged_with_real_gaps():
    """Zoo v3's promise, read from the validation split (every choice is; test is for the final numbers only):
    trained on the train split only; the recorded convergence flag is the stated rule (the last fifth of training
    -- the cosine schedule's annealing to zero -- moved validation accuracy by less than 0.5 points), and no anchor
    is far from it (< 1 point; vit-fmnist-small records +0.50, flagged not converged, README says so); >= 1 point
    between neighbours and >= 3 points between the cheapest and the dearest."""
    summary = json.loads(ZOO_JSON.read_text())
    assert summary["recipe"]["train_limit"] <= 55_000  # the train split: the validation rows are never trained on
    models = summary["models"]
    assert all(len(m["validation_accuracy_per_epoch"]) == summary["recipe"]["epochs"] for m in models)
    assert all(m["validation_accuracy_per_epoch"][-1] == m["validation_accuracy"] for m in models)
    accs = [m["validation_accuracy"] for m in models]
    rule = summary["recipe"]["plateau_points"]
    assert all(m["plateau"] == (abs(m["last_fifth_change_points"]) < rule) for m in models), models
    assert all(abs(m["last_fifth_change_points"]) < 1.0 for m in models), models
    assert all(b - a >= 0.01 for a, b in zip(accs, accs[1:])) and accs[-1] - accs[0] >= 0.03, accs
    flops = [m["forward_flops"] for m in models]
    assert flops == sorted(flops) and len(set(flops)) == len(flops)


@needs_files
def test_pipeline_classifies_grayscale_pil_images_for_an_anchor_and_a_saved_stitch(tmp_path):
    from transformers import pipeline

    from hf_klas import StitchedModel

    ds = load_fashion_mnist("test", limit=4)
    images = list(ds["image"])
    assert images[0].mode == "L"
    anchor = pipeline("image-classification", model=str(WEIGHTS / "vit-fmnist-tiny"), device="cpu")
    out = anchor(images, top_k=1)
    assert len(out) == 4 and all(o[0]["label"] in FASHION_MNIST_LABELS for o in out)
    stitch = StitchedModel.from_anchors("vit-fmnist-tiny", "vit-fmnist-small", front_blocks=2, back_start=2,
                                        stitch_init="identity", progress=False)
    stitch.save_pretrained(tmp_path / "stitch")
    assert (tmp_path / "stitch" / "preprocessor_config.json").is_file()
    out = pipeline("image-classification", model=str(tmp_path / "stitch"), device="cpu")(images[0])
    assert out[0]["label"] in FASHION_MNIST_LABELS


def test_zoo_anchors_are_read_lazily_without_a_warning(caplog):
    """The zoo's checkpoints have the layout transformers saves (encoder.layer.*.attention.attention.query); the
    family's name mapping reads them tensor by tensor -- no whole-model load, no warning."""
    import logging

    from hf_klas.building import load_anchor_weights
    from hf_klas.loading import resolve_anchor

    front, back = resolve_anchor("vit-fmnist-tiny"), resolve_anchor("vit-fmnist-small")
    with caplog.at_level(logging.INFO):
        from hf_klas import StitchedModel

        model = StitchedModel.from_anchors(front, back, front_blocks=2, back_start=1, stitch_init="identity",
                                           progress=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "hf_klas" in r.name]
    read = load_anchor_weights(model, model.config, front, back)
    stored = set(front.state_dict_source().keys())
    assert read["front"] and set(read["front"]) <= stored and any(".attention.attention.query." in n
                                                                 for n in read["front"])
    # only the blocks this stitch runs: 2 of tiny's blocks, 3 of small's
    assert not any(".layer.2." in n or ".layer.3." in n for n in read["front"])
    assert not any(".layer.0." in n for n in read["back"])
