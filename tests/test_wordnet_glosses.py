"""hf_klas.data.wordnet_glosses: parsing WordNet data lines, the frozen sample and its leak-free splits."""

from __future__ import annotations

import difflib
import gzip
import json

import pytest

from hf_klas.data import get_dataset
from hf_klas.data import wordnet_glosses as wg
from hf_klas.errors import DataError

HEADER = "  1 This software and database is being provided to you, the LICENSEE, by Princeton University\n"
NOUNS = HEADER + (
    "00217499 04 n 01 disaster 0 001 @ 00217014 n 0000 | an act that has disastrous consequences  \n"
    "00217593 04 n 01 kill 1 002 @ 00217014 n 0000 + 00355365 v 0101 | the destruction of an enemy plane or ship; "
    '"the pilot reported two kills during the mission"  \n'
    "00217773 04 n 05 laying_waste 0 ruin 0 ruining 0 ruination 0 wrecking 0 000 | destruction achieved by causing "
    'something to be wrecked; "the ruin of the city"; "total ruin"  \n')


def test_parse_data_lines():
    synsets = wg.parse_wordnet_data(NOUNS, "n")
    assert [s["synset"] for s in synsets] == ["n:00217499", "n:00217593", "n:00217773"]
    assert synsets[0] == {"synset": "n:00217499", "lemma": "disaster",
                          "definition": "an act that has disastrous consequences", "examples": []}
    assert synsets[1]["examples"] == ["the pilot reported two kills during the mission"]
    assert synsets[2]["lemma"] == "laying waste" and synsets[2]["examples"] == ["the ruin of the city", "total ruin"]
    with pytest.raises(DataError, match="Not a WordNet data line"):
        wg.parse_wordnet_data("00217499 04 n zz disaster 0 | gloss\n", "n")


def test_reading_keeps_synsets_with_examples_and_freezing_is_deterministic(tmp_path):
    root = tmp_path / "wn"
    root.mkdir()
    for name in wg.POS_FILES.values():
        (root / name).write_text(NOUNS if name == "data.noun" else HEADER)
    records = wg.read_wordnet_glosses(root, size=None)
    assert [r["text"] for r in records] == [
        "kill: the destruction of an enemy plane or ship. the pilot reported two kills during the mission.",
        "laying waste: destruction achieved by causing something to be wrecked. the ruin of the city. total ruin."]
    a = wg.freeze_wordnet_glosses(tmp_path / "a", root, size=2)
    b = wg.freeze_wordnet_glosses(tmp_path / "b", root, size=2)
    assert a["sha256"] == b["sha256"]
    assert (tmp_path / "a" / wg.FROZEN_FILE.name).read_bytes() == (tmp_path / "b" / wg.FROZEN_FILE.name).read_bytes()
    with pytest.raises(DataError, match="already exists"):
        wg.freeze_wordnet_glosses(tmp_path / "a", root, size=2)
    with pytest.raises(DataError, match="wordnet-base"):
        wg.read_wordnet_glosses(tmp_path / "missing")


def test_frozen_file_matches_its_manifest_and_a_damaged_copy_is_refused(monkeypatch, tmp_path):
    manifest = json.loads(wg.FROZEN_MANIFEST.read_text())
    records = wg.frozen_records()
    assert len(records) == manifest["records"] == wg.FROZEN_SIZE
    assert {s: sum(r["split"] == s for r in records) for s in wg.SPLITS} == manifest["splits"]
    assert "Princeton" in manifest["licence"]
    damaged = tmp_path / wg.FROZEN_FILE.name
    lines = gzip.decompress(wg.FROZEN_FILE.read_bytes()).decode().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps(dict(first, text=first["text"] + " (edited)"))
    damaged.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    monkeypatch.setattr(wg, "FROZEN_FILE", damaged)
    with pytest.raises(DataError, match="SHA-256"):
        wg.frozen_records()


def test_splits_are_disjoint_by_lemma_and_have_no_close_text():
    """Checked independently of the shingle rule that built them: no held-out text is within a difflib ratio of
    0.8 of a text in another split, and no lemma is in two splits."""
    splits = {s: wg.load_wordnet_glosses(s) for s in wg.SPLITS}
    assert len(splits["validation"]) > 250 and len(splits["test"]) > 250
    lemmas = {s: {x.lower() for x in ds["lemma"]} for s, ds in splits.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not lemmas[a] & lemmas[b]
        for text in splits[b]["text"]:
            m = difflib.SequenceMatcher(None, autojunk=False)
            m.set_seq2(text)
            for other in splits[a]["text"]:
                m.set_seq1(other)
                if m.real_quick_ratio() >= 0.8 and m.quick_ratio() >= 0.8:
                    assert m.ratio() < 0.8, (text, other)
    assert get_dataset("wordnet_glosses", "test")["text"] == splits["test"]["text"]
    with pytest.raises(DataError, match="not a split"):
        wg.load_wordnet_glosses("dev")
