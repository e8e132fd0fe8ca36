"""hf_klas.data.debian_descriptions: RFC822 parsing, filtering, prompts, deterministic splits."""

from __future__ import annotations

import os

import pytest

from hf_klas.data.debian_descriptions import (
    PROMPT_TEMPLATE,
    SPLITS,
    load_debian_descriptions,
    parse_control_stanzas,
    parse_description,
)
from hf_klas.errors import DataError

FIXTURE = """\
Package: zeta-tool
Status: install ok installed
Architecture: amd64
Version: 1.0
Description: frobnicate zeta files quickly
 Zeta-tool reads zeta files and frobnicates
 them  in place.
 .
 Features:
   * fast
   * safe
Homepage: https://example.org

Package: alpha
Source: alpha-src (1.2-1)
Architecture: amd64
Conffiles:
 /etc/alpha.conf 0123
Description: the first package
 Alpha is the first package of this fixture, with a long enough
 description to pass the filter.

Package: alpha
Architecture: i386
Description: duplicate for another architecture
 This stanza has the same package name and must be dropped in favour of amd64.

Package: short
Description: too short
 Tiny.

Package: nodesc
Version: 2
"""


@pytest.fixture
def status_file(tmp_path):
    path = tmp_path / "status"
    path.write_text(FIXTURE)
    return path


def test_parse_stanzas_and_description():
    stanzas = list(parse_control_stanzas(FIXTURE))
    assert [s["Package"] for s in stanzas] == ["zeta-tool", "alpha", "alpha", "short", "nodesc"]
    assert stanzas[1]["Conffiles"] == "\n /etc/alpha.conf 0123"
    synopsis, desc = parse_description(stanzas[0]["Description"])
    assert synopsis == "frobnicate zeta files quickly"
    assert desc == "Zeta-tool reads zeta files and frobnicates them in place.\nFeatures:\n  * fast\n  * safe"


def test_dataset_from_fixture(status_file):
    ds = load_debian_descriptions(split="all", path=status_file)
    assert ds.column_names == ["package", "source", "synopsis", "description", "prompt", "target"]
    assert list(ds["package"]) == ["alpha", "zeta-tool"]  # sorted; short/nodesc filtered; duplicate dropped
    assert list(ds["source"]) == ["alpha-src", "zeta-tool"]
    assert list(ds["target"]) == list(ds["synopsis"]) == ["the first package", "frobnicate zeta files quickly"]
    assert ds[0]["prompt"] == PROMPT_TEMPLATE.format(description=ds[0]["description"])
    assert ds[0]["prompt"].startswith("Package description:\nAlpha is") and ds[0]["prompt"].endswith("summary:")
    cut = load_debian_descriptions(split="all", path=status_file, max_description_chars=30)
    assert all(len(d) <= 30 for d in cut["description"]) and cut[0]["description"] == "Alpha is the first package of"
    assert len(load_debian_descriptions(split="all", path=status_file, limit=1)) == 1
    parts = [load_debian_descriptions(split=s, path=status_file, test_fraction=0.5) for s in SPLITS]
    assert sorted(p for part in parts for p in part["package"]) == ["alpha", "zeta-tool"]


def test_errors(tmp_path, status_file):
    with pytest.raises(DataError, match="not found"):
        load_debian_descriptions(path=tmp_path / "missing")
    with pytest.raises(DataError, match="not a split"):
        load_debian_descriptions(split="valid", path=status_file)
    with pytest.raises(DataError, match="no validation split"):
        load_debian_descriptions(split="validation", version="v1")
    with pytest.raises(DataError, match="only to version='v1'"):
        load_debian_descriptions(split="test", split_by="source")
    with pytest.raises(DataError, match="splits are fixed"):
        load_debian_descriptions(split="test", test_fraction=0.3)
    with pytest.raises(DataError, match="not a shipped version"):
        load_debian_descriptions(split="test", version="v9")
    with pytest.raises(DataError, match="do not leave a training split"):
        load_debian_descriptions(split="test", path=status_file, test_fraction=0.6, validation_fraction=0.5)
    (tmp_path / "other").write_text("just some text\n")
    with pytest.raises(DataError, match="Description"):
        load_debian_descriptions(path=tmp_path / "other")


def test_frozen_data_is_the_same_everywhere(monkeypatch, tmp_path):
    """The default data is the shipped frozen file: its checksum is the manifest's, its counts and split are fixed,
    and it does not read this machine's dpkg database."""
    import hashlib
    import json

    from hf_klas.data import debian_descriptions as dd

    manifest = json.loads(dd.FROZEN_MANIFEST.read_text())
    records = dd.frozen_records()
    assert dd.records_digest(records) == manifest["sha256"] and len(records) == manifest["records"]
    monkeypatch.setattr(dd, "DEFAULT_STATUS_PATH", str(tmp_path / "no-dpkg-here"))
    train, test = load_debian_descriptions("train"), load_debian_descriptions("test")
    assert [len(load_debian_descriptions(s)) for s in SPLITS] == [manifest["examples_with_defaults"][s]
                                                                   for s in SPLITS]
    assert set(train["package"]).isdisjoint(test["package"])
    digest = hashlib.sha256("\n".join(test["package"]).encode()).hexdigest()
    assert digest == hashlib.sha256("\n".join(sorted(test["package"])).encode()).hexdigest()  # sorted, stable
    # damaged data is refused, never silently used
    bad = tmp_path / "bad.jsonl.gz"
    import gzip

    bad.write_bytes(gzip.compress(dd.FROZEN_FILE.read_bytes()[:0] + b'{"package": "x"}\n'))
    monkeypatch.setattr(dd, "FROZEN_FILE", bad)
    with pytest.raises(DataError, match="SHA-256"):
        load_debian_descriptions("test")


def test_freezing_is_explicit_deterministic_and_never_overwrites(status_file, tmp_path):
    from hf_klas.data.debian_descriptions import freeze_debian_descriptions

    a = freeze_debian_descriptions(tmp_path / "a", status_file, version="t1")
    b = freeze_debian_descriptions(tmp_path / "b", status_file, version="t1")
    assert a["sha256"] == b["sha256"] and a["records"] == 3  # one per package with a description (short stays raw)
    data = (tmp_path / "a" / "debian_descriptions-t1.jsonl.gz").read_bytes()
    assert data == (tmp_path / "b" / "debian_descriptions-t1.jsonl.gz").read_bytes()
    with pytest.raises(DataError, match="already exists"):
        freeze_debian_descriptions(tmp_path / "a", status_file, version="t1")


@pytest.mark.skipif(not os.path.exists("/var/lib/dpkg/status"), reason="not a Debian system")
def test_real_dpkg_status_is_deterministic():
    train = load_debian_descriptions(split="train", path="/var/lib/dpkg/status")
    test = load_debian_descriptions(split="test", path="/var/lib/dpkg/status")
    assert len(train) + len(test) >= 50 and len(test) > 0
    assert set(train["package"]).isdisjoint(test["package"])
    assert all(p.strip() and t.strip() for p, t in zip(train["prompt"], train["target"]))
    assert list(train["package"]) == sorted(train["package"])
    again = load_debian_descriptions(split="test", path="/var/lib/dpkg/status")
    assert list(again["package"]) == list(test["package"]) and list(again["prompt"]) == list(test["prompt"])
    assert 0.1 < len(test) / (len(train) + len(test)) < 0.35
    assert set(train["source"]).isdisjoint(test["source"])  # built from path=: the v2 rule, by source group
    by_source = load_debian_descriptions(split="test", split_by="source", version="v1")
    train_src = load_debian_descriptions(split="train", split_by="source", version="v1")
    assert set(by_source["source"]).isdisjoint(train_src["source"])
