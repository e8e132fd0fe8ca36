"""Train / validation / test stay apart: the frozen splits, checked with code independent of the code that made them.

- Fashion-MNIST: the validation split is rows 55,000..59,999 of the training file (read here straight from the IDX
  bytes), no image is shared between splits, and the default vision calibration reads training images only.
- Debian descriptions v2: no source package and no near-identical description (difflib, not the shingle rule that
  built the split) crosses a split; v1, kept for old numbers, shows what the rule fixed.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoImageProcessor

from hf_klas import calibration
from hf_klas.data import debian_descriptions as dd
from hf_klas.data import fashion_mnist as fm
from hf_klas.zoo import WEIGHTS_DIR

needs_files = pytest.mark.skipif(not (fm.fashion_mnist_root() / "train-images-idx3-ubyte.gz").is_file(),
                                 reason="Debian dataset-fashion-mnist not installed")


def _raw_idx_images(name: str) -> np.ndarray:
    data = gzip.open(fm.fashion_mnist_root() / name, "rb").read()
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)


@needs_files
def test_fashion_mnist_three_splits_are_the_documented_rows_and_disjoint():
    raw_train = _raw_idx_images("train-images-idx3-ubyte.gz")
    sizes = {s: len(fm.load_fashion_mnist_arrays(s)[0]) for s in fm.SPLITS}
    assert sizes == {"train": 55_000, "validation": 5_000, "test": 10_000, "train+validation": 60_000}
    val, val_labels = fm.load_fashion_mnist_arrays("validation")
    assert np.array_equal(val, raw_train[55_000:])
    assert np.array_equal(fm.load_fashion_mnist_arrays("train", limit=3)[0], raw_train[:3])
    assert np.array_equal(fm.load_fashion_mnist_arrays("validation", limit=3)[0], raw_train[55_000:55_003])
    assert set(np.bincount(val_labels)) <= set(range(440, 540))  # every class present, roughly balanced
    digest = {s: {hashlib.sha1(im.tobytes()).hexdigest() for im in fm.load_fashion_mnist_arrays(s)[0]}
              for s in ("train", "validation", "test")}
    assert not digest["train"] & digest["validation"]
    assert not digest["train"] & digest["test"] and not digest["validation"] & digest["test"]
    assert len(fm.load_fashion_mnist("validation", limit=4)) == 4


@needs_files
def test_default_vision_calibration_comes_from_the_train_split():
    """The least-squares stitch is fitted and selection chooses on these images: they must be training images."""
    processor = AutoImageProcessor.from_pretrained(WEIGHTS_DIR / "vit-fmnist-tiny")
    pixels = torch.cat([b["pixel_values"] for b in calibration.calibration_batches(
        None, _vit_config(), processor, batch_size=64)])
    raw_train = _raw_idx_images("train-images-idx3-ubyte.gz")
    assert pixels.shape[0] == 256
    assert torch.allclose(pixels, fm.preprocess(raw_train[:256]), atol=1e-5)
    raw_test = _raw_idx_images("t10k-images-idx3-ubyte.gz")
    train_ids = {hashlib.sha1(im.tobytes()).hexdigest() for im in raw_train[:55_000]}
    test_ids = {hashlib.sha1(im.tobytes()).hexdigest() for im in raw_test}
    used = {hashlib.sha1(im.tobytes()).hexdigest() for im in raw_train[:256]}
    assert used <= train_ids and not used & test_ids


def _vit_config():
    return AutoConfig.from_pretrained(WEIGHTS_DIR / "vit-fmnist-tiny")


def test_debian_v2_splits_are_disjoint_by_source_and_free_of_near_duplicates():
    splits = {s: dd.load_debian_descriptions(s, max_description_chars=250) for s in dd.SPLITS}
    assert all(len(ds) > 0 for ds in splits.values())
    sources = {s: set(ds["source"]) for s, ds in splits.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not sources[a] & sources[b], (a, b, sorted(sources[a] & sources[b])[:5])
        assert not set(splits[a]["description"]) & set(splits[b]["description"])  # the identical-text count
        assert not set(splits[a]["target"]) & set(splits[b]["target"])


@pytest.mark.slow
def test_debian_v2_held_out_descriptions_have_no_close_training_text():
    """Independent of the shingle rule that built the split: no held-out description (at the study's 250-character
    cut) is within a difflib ratio of 0.8 of a training one (~40 s: the slow target)."""
    splits = {s: dd.load_debian_descriptions(s, max_description_chars=250) for s in dd.SPLITS}
    train = list(splits["train"]["description"])
    for held_out in ("validation", "test"):
        for text in splits[held_out]["description"]:
            m = difflib.SequenceMatcher(None, autojunk=False)
            m.set_seq2(text)  # the matcher caches what it knows of seq2
            for other in train:
                m.set_seq1(other)
                if m.real_quick_ratio() >= 0.8 and m.quick_ratio() >= 0.8:
                    assert m.ratio() < 0.8, (text, other)


def test_debian_v1_leaks_that_v2_fixes_and_v2_keeps_v1_text():
    v1_train = dd.load_debian_descriptions("train", version="v1", max_description_chars=250)
    v1_test = dd.load_debian_descriptions("test", version="v1", max_description_chars=250)
    assert len(v1_test) == 115
    assert sum(s in set(v1_train["source"]) for s in v1_test["source"]) == 81
    assert sum(d in set(v1_train["description"]) for d in v1_test["description"]) >= 20
    text = {r["package"]: (r["synopsis"], r["description"]) for r in dd.frozen_records("v1")}
    v2 = dd.frozen_records("v2")
    assert {r["package"]: (r["synopsis"], r["description"]) for r in v2} == text  # re-split, nothing edited
    assert {r["split"] for r in v2} == set(dd.SPLITS)


def test_split_groups_join_sources_and_near_duplicates():
    base = {"version": "1", "synopsis": ""}
    records = [
        dict(base, package="liba1", source="a", description="Alpha widgets for the command line, version one."),
        dict(base, package="liba-dev", source="a", description="Development files for something else entirely."),
        dict(base, package="libb", source="b", description="Alpha widgets for the command line, version two."),
        dict(base, package="libc", source="c", description="A completely unrelated text about gardening tools."),
        dict(base, package="libd", source="d", description=""),
        dict(base, package="libe", source="e", description=""),
    ]
    groups = dd.split_groups(records)
    assert groups[0] == groups[1] == groups[2]  # source a, and b's near-duplicate of liba1
    assert len({groups[0], groups[3], groups[4], groups[5]}) == 4  # empty texts are not near-duplicates
    splits = dd.assign_splits(records, test_fraction=0.5, validation_fraction=0.25)
    assert splits[0] == splits[1] == splits[2]
