"""Debian package descriptions -> one-line synopsis: a real summarisation task that needs no network.

Every Debian/Ubuntu system has ``/var/lib/dpkg/status``: one RFC822-style stanza per installed package whose
``Description`` field holds a one-line *synopsis* (first line) and a multi-paragraph *long description*
(continuation lines). Summarising the long description into the synopsis is a small, human-written
abstractive task for LLM stitches (ROUGE against ``target``).

**Frozen data (the default).** Which packages a machine has installed differs from machine to machine, so the
records are frozen once into a versioned file shipped with hf_klas (:data:`FROZEN_FILE`, with its manifest
:data:`FROZEN_MANIFEST`: source system, date, licence, counts, split rule, SHA-256). ``load_debian_descriptions()``
reads it, so the same commit gives the same calibration data, Γ values and ROUGE tables everywhere.

**Splits (v2, the default).** Three splits, frozen in the file itself (a ``split`` field per record): ``train``
(fit, finetune), ``validation`` (choose, tune, stop) and ``test`` (final numbers only). Records are first grouped
-- one group per connected component of "same source package" *or* "near-duplicate" (:func:`near_duplicates`:
the same normalised synopsis, or word 3-shingle Jaccard >= 0.5, or character 5-shingle Jaccard >= 0.4, between
the two long descriptions, whole or cut to their first 250 characters, the cut the selection study uses) -- and a
whole group goes to one split by a stable SHA-256 of its alphabetically first source name (test fraction 0.2,
validation 0.1). So sibling binaries (libfoo1 / libfoo-dev)
and near-identical descriptions of *different* sources (libllvm14 / libllvm15, gcc / gcc-12) never straddle a
split, and no record has to be dropped. v1 (split by binary package name; 81 of its 115 test packages share a
source with a training package) stays loadable with ``version="v1"`` to reproduce older numbers. Building records
from a local dpkg database is explicit: ``load_debian_descriptions(path="/var/lib/dpkg/status")``, or
``python scripts/freeze_debian_descriptions.py`` to write a new frozen version.

Why dpkg status only: apt's ``/var/lib/apt/lists/*_Packages`` files carry only the synopsis plus a
``Description-md5`` (the long text lives in ``Translation-en`` files, usually not downloaded, and the lists are
often lz4-compressed). Uncompressed ``Translation-*`` files can still be passed via ``path``: their
``Description-en`` field is read like ``Description``.

Record construction (all documented defaults are parameters):

* long description: continuation lines after the synopsis; a line ``" ."`` separates paragraphs (rendered as
  ``"\\n"``); lines with one leading space are word-wrapped text (joined with single spaces); lines with two or
  more leading spaces are verbatim (kept on their own line, indentation kept);
* examples whose long description is shorter than ``min_description_chars`` (40) are dropped (nothing to
  summarise); longer than ``max_description_chars`` (1000) are truncated at the last whitespace before the
  limit (keeps prompts short enough for small models' contexts);
* one example per package name (the first stanza after sorting by (package, architecture));
* ``prompt = template.format(description=..., package=...)`` with :data:`PROMPT_TEMPLATE`, ``target`` = synopsis.
  For causal-LM finetuning the natural sequence is ``prompt + " " + target``;
* sorted by package name; splits as above (v2, and records built from ``path=``), or for ``version="v1"`` a
  stable hash (SHA-256) of the package name (or of the source package with ``split_by="source"``).
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import datasets
import torch

from ..errors import DataError
from .text_overlap import SHINGLE_CHARS, SHINGLE_WORDS, connected_components, jaccard_matrix, shingles, words

__all__ = ["DEFAULT_STATUS_PATH", "PROMPT_TEMPLATE", "FROZEN_FILE", "FROZEN_MANIFEST", "FROZEN_VERSION", "SPLITS",
           "NEAR_DUPLICATE_WORD_JACCARD", "NEAR_DUPLICATE_CHAR_JACCARD", "NEAR_DUPLICATE_PREFIX_CHARS",
           "parse_control_stanzas", "parse_description",
           "read_debian_descriptions", "load_debian_descriptions", "in_test_split", "near_duplicates",
           "split_groups", "assign_splits", "frozen_records", "frozen_paths", "freeze_debian_descriptions",
           "records_digest"]

DEFAULT_STATUS_PATH = "/var/lib/dpkg/status"
FROZEN_VERSION = "v2"
FROZEN_VERSIONS = ("v1", "v2")
DATA_DIR = Path(__file__).parent
FROZEN_FILE = DATA_DIR / f"debian_descriptions-{FROZEN_VERSION}.jsonl.gz"
FROZEN_MANIFEST = DATA_DIR / f"debian_descriptions-{FROZEN_VERSION}.json"
#: What a frozen record keeps: the parsed, untruncated text (filters and truncation apply when loading), and from
#: v2 on the split it belongs to.
RAW_COLUMNS = ["package", "source", "version", "synopsis", "description"]
SPLIT_COLUMNS = RAW_COLUMNS + ["split"]
SPLITS = ("train", "validation", "test")
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1
#: Near-duplicate rule (see :func:`near_duplicates`): word 3-shingle Jaccard at or above this, ...
NEAR_DUPLICATE_WORD_JACCARD = 0.5
#: ... or character 5-shingle Jaccard at or above this (one-sentence boilerplate reworded: "This is a transitional
#: package that can safely be removed." / "This is a transitional dummy package, it can be safely removed." 0.45),
NEAR_DUPLICATE_CHAR_JACCARD = 0.4
#: ... on the whole long descriptions or on their first this many characters.
NEAR_DUPLICATE_PREFIX_CHARS = 250
PROMPT_TEMPLATE = "Package description:\n{description}\nOne-line summary:"
COLUMNS = ["package", "source", "synopsis", "description", "prompt", "target"]


def parse_control_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Yield one ``{field: value}`` per stanza of a Debian control file (RFC822 style).

    A field line is ``Name: value``; lines starting with a space or tab continue the previous field and are
    appended after ``"\\n"`` with their leading whitespace kept (the description rules need it); blank lines
    end a stanza; ``#`` comment lines are skipped. Field names are case-insensitive, stored as written.
    """
    stanza: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if not line.strip():
            if stanza:
                yield stanza
            stanza, last = {}, None
            continue
        if line.startswith("#"):
            continue
        if line[0] in " \t":
            if last is not None:
                stanza[last] += "\n" + line
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue  # malformed line: skip rather than fail on a whole system file
        last = name.strip()
        stanza[last] = value.strip()
    if stanza:
        yield stanza


def parse_description(value: str) -> tuple[str, str]:
    """Split a ``Description`` field into (synopsis, long description), per Debian Policy 5.6.13."""
    lines = value.split("\n")
    synopsis = " ".join(lines[0].split())
    paragraphs: list[str] = []
    current: list[str] = []
    wrapped: list[str] = []

    def flush_wrapped():
        if wrapped:
            current.append(" ".join(" ".join(wrapped).split()))
            wrapped.clear()

    for raw in lines[1:]:
        line = raw[1:] if raw[:1] in (" ", "\t") else raw  # drop the one continuation space
        if line.strip() == ".":
            flush_wrapped()
            if current:
                paragraphs.append("\n".join(current))
            current = []
        elif line[:1] in (" ", "\t"):
            flush_wrapped()
            current.append(line.rstrip())
        elif line.strip():
            wrapped.append(line.strip())
    flush_wrapped()
    if current:
        paragraphs.append("\n".join(current))
    return synopsis, "\n".join(paragraphs)


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    return (cut[:space] if space > 0 else cut).rstrip()


def in_test_split(key: str, test_fraction: float) -> bool:
    """Stable across runs, machines and Python versions (unlike ``hash()``): SHA-256 of the key -> [0, 1)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return bucket < test_fraction


def near_duplicates(records: list[dict]) -> list[tuple[int, int]]:
    """Index pairs ``(a, b)``, ``a < b``, of near-duplicate records: the same normalised synopsis, or a Jaccard
    similarity at or above :data:`NEAR_DUPLICATE_WORD_JACCARD` between word 3-shingles, or above
    :data:`NEAR_DUPLICATE_CHAR_JACCARD` between character 5-shingles, of the long descriptions, whole or cut to
    :data:`NEAR_DUPLICATE_PREFIX_CHARS` characters (what a summariser sees under the study's cut). Two texts too
    short for a shingle are not near-duplicates by text."""
    hits = torch.zeros((len(records), len(records)), dtype=torch.bool)
    for cut in (None, NEAR_DUPLICATE_PREFIX_CHARS):
        pairs = [shingles(r["description"] if cut is None else _truncate(r["description"], cut)) for r in records]
        hits |= jaccard_matrix([w for w, _ in pairs]) >= NEAR_DUPLICATE_WORD_JACCARD
        hits |= jaccard_matrix([c for _, c in pairs]) >= NEAR_DUPLICATE_CHAR_JACCARD
    synopsis = [" ".join(words(r["synopsis"])) for r in records]
    for a in range(len(records)):
        for b in range(a + 1, len(records)):
            if synopsis[a] and synopsis[a] == synopsis[b]:
                hits[a, b] = True
    upper = torch.triu(hits | hits.t(), diagonal=1)
    return [tuple(p) for p in upper.nonzero().tolist()]


def split_groups(records: list[dict]) -> list[int]:
    """A group id per record: connected components of "same source package" or :func:`near_duplicates`."""
    first_of_source: dict[str, int] = {}
    edges = list(near_duplicates(records))
    for k, r in enumerate(records):
        edges.append((first_of_source.setdefault(r["source"], k), k))
    return connected_components(len(records), edges)


def assign_splits(records: list[dict], test_fraction: float = TEST_FRACTION,
                  validation_fraction: float = VALIDATION_FRACTION) -> list[str]:
    """The split of every record: whole :func:`split_groups` go to one split, by a stable SHA-256 of the group's
    alphabetically first source name (test below ``test_fraction``, then validation up to
    ``test_fraction + validation_fraction``, else train)."""
    if not (0.0 < test_fraction < 1.0 and 0.0 <= validation_fraction < 1.0
            and test_fraction + validation_fraction < 1.0):
        raise DataError(f"test_fraction={test_fraction}, validation_fraction={validation_fraction} do not leave a "
                        "training split.", "Pass fractions in (0, 1) that add up to less than 1, e.g. 0.2 and 0.1.")
    groups = split_groups(records)
    key: dict[int, str] = {}
    for g, r in zip(groups, records):
        key[g] = min(key.get(g, r["source"]), r["source"])
    out = []
    for g in groups:
        u = int.from_bytes(hashlib.sha256(key[g].encode("utf-8")).digest()[:8], "big") / 2.0**64
        out.append("test" if u < test_fraction else "validation" if u < test_fraction + validation_fraction
                   else "train")
    return out


def raw_records(path=None) -> list[dict[str, str]]:
    """One record per package (first stanza after sorting by package, architecture) with the parsed synopsis and
    the full long description, read from dpkg status / control files (default: this system's dpkg database)."""
    paths = [DEFAULT_STATUS_PATH] if path is None else (
        [path] if isinstance(path, (str, os.PathLike)) else list(path))
    stanzas = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise DataError(f"Debian package database {str(p)!r} not found.",
                            "Run on a Debian/Ubuntu system (dpkg keeps /var/lib/dpkg/status), or pass "
                            "path= to a copy of a dpkg status file or an uncompressed Translation-en file.")
        text = p.read_text(encoding="utf-8", errors="replace")
        for stanza in parse_control_stanzas(text):
            stanzas.append((len(stanzas), stanza))  # file order breaks ties between duplicate stanzas
    with_desc = []
    for order, s in stanzas:
        fields = {k.lower(): v for k, v in s.items()}
        desc = fields.get("description", fields.get("description-en"))
        package = fields.get("package", "").strip()
        if desc is None or not package:
            continue
        source = (fields.get("source") or package).split()[0]
        with_desc.append(((package, fields.get("architecture", ""), order), package, source,
                          fields.get("version", "").strip(), desc))
    if not with_desc:
        raise DataError(f"No package stanza with a Description field in {[str(p) for p in paths]}.",
                        "Pass a dpkg status file (or Translation-en file), not another kind of file.")
    records, seen = [], set()
    for _, package, source, version, desc in sorted(with_desc, key=lambda t: t[0]):
        if package in seen:
            continue
        seen.add(package)
        synopsis, description = parse_description(desc)
        records.append({"package": package, "source": source, "version": version, "synopsis": synopsis,
                        "description": description})
    return records


def _examples(raw: list[dict], min_description_chars: int, max_description_chars: int, template: str
              ) -> list[dict[str, str]]:
    """Task examples from raw records: filtered, truncated, with ``prompt`` and ``target``."""
    if "{description}" not in template:
        raise DataError(f"The prompt template {template!r} has no {{description}} placeholder.",
                        "Include {description} (and optionally {package}) in the template.")
    out = []
    for r in raw:
        if not r["synopsis"] or len(r["description"]) < min_description_chars:
            continue
        description = _truncate(r["description"], max_description_chars)
        out.append({"package": r["package"], "source": r["source"], "synopsis": r["synopsis"],
                    "description": description,
                    "prompt": template.format(description=description, package=r["package"]),
                    "target": r["synopsis"], "split": r.get("split")})
    return out


def read_debian_descriptions(path=None, min_description_chars: int = 40, max_description_chars: int = 1000,
                             template: str = PROMPT_TEMPLATE) -> list[dict[str, str]]:
    """All usable examples (sorted by package) from one status/control file or a list of them."""
    return _examples(raw_records(path), min_description_chars, max_description_chars, template)


def _jsonl(records: list[dict]) -> bytes:
    columns = SPLIT_COLUMNS if records and "split" in records[0] else RAW_COLUMNS
    return "".join(json.dumps({k: r.get(k) for k in columns}, ensure_ascii=False, sort_keys=True) + "\n"
                   for r in records).encode("utf-8")


def records_digest(records: list[dict]) -> str:
    """SHA-256 of the records' canonical JSON lines: equal on every machine for the same data."""
    return hashlib.sha256(_jsonl(records)).hexdigest()


def frozen_paths(version: str = FROZEN_VERSION) -> tuple[Path, Path]:
    """``(data file, manifest)`` of a shipped frozen version."""
    if version not in FROZEN_VERSIONS:
        raise DataError(f"version={version!r} is not a shipped version of debian_descriptions.",
                        f"Use one of {', '.join(FROZEN_VERSIONS)} (default {FROZEN_VERSION}).")
    if version == FROZEN_VERSION:  # the module attributes, so a test can point them at a damaged copy
        return FROZEN_FILE, FROZEN_MANIFEST
    return DATA_DIR / f"debian_descriptions-{version}.jsonl.gz", DATA_DIR / f"debian_descriptions-{version}.json"


def frozen_records(version: str = FROZEN_VERSION) -> list[dict[str, str]]:
    """The shipped frozen records of ``version``, checked against its manifest's SHA-256 (a damaged file is
    refused, never silently used)."""
    data, manifest = frozen_paths(version)
    if not data.is_file() or not manifest.is_file():
        raise DataError(f"The frozen Debian description data ({data.name}) is missing from the package.",
                        "Reinstall hf_klas, or pass path='/var/lib/dpkg/status' to build records from this system.")
    records = [json.loads(line) for line in gzip.decompress(data.read_bytes()).decode("utf-8").splitlines()]
    expected = json.loads(manifest.read_text())["sha256"]
    if records_digest(records) != expected:
        raise DataError(f"{data.name} does not match its manifest's SHA-256 (damaged or edited).",
                        "Reinstall hf_klas; to make a new version, run scripts/freeze_debian_descriptions.py.")
    return records


def with_splits(records: list[dict], test_fraction: float = TEST_FRACTION,
                validation_fraction: float = VALIDATION_FRACTION) -> list[dict]:
    """``records`` (sorted by package) with the ``split`` field :func:`assign_splits` gives them."""
    return [dict(r, split=s) for r, s in zip(records, assign_splits(records, test_fraction, validation_fraction))]


def freeze_debian_descriptions(out_dir, path=None, version: str = FROZEN_VERSION, overwrite: bool = False,
                               records: list[dict] | None = None) -> dict:
    """Write ``debian_descriptions-<version>.jsonl.gz`` + its manifest from a dpkg database (default: this
    system's), or from given raw ``records`` (e.g. ``frozen_records("v1")``, to re-split frozen text without
    changing it), with the three-way split of :func:`assign_splits` stored per record. The explicit way to make
    a frozen version; never called implicitly."""
    out_dir = Path(out_dir)
    data, manifest = (out_dir / f"debian_descriptions-{version}.jsonl.gz",
                      out_dir / f"debian_descriptions-{version}.json")
    if (data.exists() or manifest.exists()) and not overwrite:
        raise DataError(f"{data} already exists.", "Choose a new version (version=...) or pass overwrite=True.")
    raw = raw_records(path) if records is None else [{k: r[k] for k in RAW_COLUMNS} for r in records]
    raw = with_splits(sorted(raw, key=lambda r: r["package"]))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as fh:  # mtime 0: the same bytes for the same records
        fh.write(_jsonl(raw))
    out_dir.mkdir(parents=True, exist_ok=True)
    data.write_bytes(buf.getvalue())
    os_release = Path("/etc/debian_version")
    examples = _examples(raw, 40, 1000, PROMPT_TEMPLATE)
    pairs = near_duplicates(raw)
    crossing_by_package = sum(in_test_split(raw[a]["package"], TEST_FRACTION)
                              != in_test_split(raw[b]["package"], TEST_FRACTION) for a, b in pairs)
    info = {
        "name": "debian_descriptions", "version": version, "records": len(raw),
        "examples_with_defaults": {"all": len(examples),
                                   **{s: sum(e["split"] == s for e in examples) for s in SPLITS}},
        "sha256": records_digest(raw), "file": data.name, "columns": SPLIT_COLUMNS,
        "source": {"dpkg_status": None if records is not None else str(path or DEFAULT_STATUS_PATH),
                   "records_from": "given records (re-split, text unchanged)" if records is not None else "dpkg",
                   "debian_version": os_release.read_text().strip() if os_release.is_file() else None,
                   "machine": platform.machine(), "frozen_on": datetime.date.today().isoformat()},
        "licence": "Each description was written by the maintainers of the package it describes and is "
                   "distributed with that package under the package's licence (Debian main: DFSG-free licences); "
                   "the package name and version identify the source of every record.",
        "task": "long description -> one-line synopsis",
        "split_rule": {
            "groups": "connected components of 'same source package' or 'near-duplicate'; a whole group goes to "
                      "one split by a stable SHA-256 of its alphabetically first source name",
            "near_duplicate": f"same normalised synopsis, or word {SHINGLE_WORDS}-shingle Jaccard >= "
                              f"{NEAR_DUPLICATE_WORD_JACCARD}, or character {SHINGLE_CHARS}-shingle Jaccard >= "
                              f"{NEAR_DUPLICATE_CHAR_JACCARD}, between the long descriptions, whole or cut to their "
                              f"first {NEAR_DUPLICATE_PREFIX_CHARS} characters",
            "fractions": {"test": TEST_FRACTION, "validation": VALIDATION_FRACTION},
            "groups_count": len(set(split_groups(raw))), "near_duplicate_pairs": len(pairs),
            "near_duplicate_pairs_a_package_hash_split_would_cross": crossing_by_package,
            "removed": 0,
        },
    }
    manifest.write_text(json.dumps(info, indent=2) + "\n")
    return info


def load_debian_descriptions(split: str = "train", test_fraction: float | None = None, limit: int | None = None,
                             path=None, min_description_chars: int = 40, max_description_chars: int = 1000,
                             template: str = PROMPT_TEMPLATE, split_by: str | None = None,
                             version: str = FROZEN_VERSION, validation_fraction: float | None = None):
    """``datasets.Dataset`` (columns package, source, synopsis, description, prompt, target) for one split.

    ``path=None``: the frozen records shipped with hf_klas (``version``, default v2, the same everywhere; its
    splits are stored in the file); a path (``/var/lib/dpkg/status``, a control file, a list): records built from
    it and split by the same rule (:func:`assign_splits`, with ``test_fraction`` / ``validation_fraction``).
    ``split`` is "train", "validation", "test" or "all"; ``limit`` keeps the first N examples (by package name) of
    the split. ``version="v1"`` reproduces the old two-way split (``split_by`` "package" or "source",
    ``test_fraction``). Deterministic: same data and arguments give the same rows in the same order.
    """
    if split not in (*SPLITS, "all"):
        raise DataError(f"split={split!r} is not a split of debian_descriptions.",
                        "Use 'train', 'validation', 'test' or 'all'.")
    for name, value in (("test_fraction", test_fraction), ("validation_fraction", validation_fraction)):
        if value is not None and not 0.0 <= value < 1.0:
            raise DataError(f"{name}={value} is outside [0, 1).", "Pass e.g. test_fraction=0.2.")
    if limit is not None and limit < 0:
        raise DataError(f"limit={limit} is negative.", "Pass limit=None (all) or a non-negative integer.")
    legacy = path is None and version == "v1"
    if legacy:
        if split == "validation":
            raise DataError("debian_descriptions v1 has no validation split.",
                            "Use the default version='v2' (train / validation / test).")
        if split_by not in (None, "package", "source"):
            raise DataError(f"split_by={split_by!r} is not supported.", "Use 'package' or 'source'.")
    elif split_by is not None:
        raise DataError(f"split_by={split_by!r} applies only to version='v1'.",
                        "v2 (and data built from path=) splits by source-package and near-duplicate groups; "
                        "drop split_by, or pass version='v1'.")
    if path is None and not legacy and (test_fraction is not None or validation_fraction is not None):
        raise DataError(f"The frozen {version} splits are fixed; test_fraction / validation_fraction cannot move "
                        "them.", "Drop them, or pass path= to split records built from a dpkg database.")
    if path is None:
        raw = frozen_records(version)
    else:
        raw = with_splits(raw_records(path), TEST_FRACTION if test_fraction is None else test_fraction,
                          VALIDATION_FRACTION if validation_fraction is None else validation_fraction)
    records = _examples(raw, min_description_chars, max_description_chars, template)
    if split != "all":
        if legacy:
            want_test, fraction = split == "test", 0.2 if test_fraction is None else test_fraction
            records = [r for r in records if in_test_split(r[split_by or "package"], fraction) == want_test]
        else:
            records = [r for r in records if r["split"] == split]
    if limit is not None:
        records = records[:limit]
    features = datasets.Features({c: datasets.Value("string") for c in COLUMNS})
    return datasets.Dataset.from_dict({c: [r[c] for r in records] for c in COLUMNS}, features=features)
