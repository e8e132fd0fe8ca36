"""Debian package descriptions -> one-line synopsis: a real summarisation task that needs no network.

Every Debian/Ubuntu system has ``/var/lib/dpkg/status``: one RFC822-style stanza per installed package whose
``Description`` field holds a one-line *synopsis* (first line) and a multi-paragraph *long description*
(continuation lines). Summarising the long description into the synopsis is a small, human-written
abstractive task for LLM stitches (ROUGE against ``target``).

**Frozen data (the default).** Which packages a machine has installed differs from machine to machine, so the
records are frozen once into a versioned file shipped with hf_klas (:data:`FROZEN_FILE`, with its manifest
:data:`FROZEN_MANIFEST`: source system, date, licence, counts, SHA-256). ``load_debian_descriptions()`` reads
it, so the same commit gives the same calibration data, Γ values and ROUGE tables everywhere. Building records
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
* sorted by package name; the train/test split is a stable hash (SHA-256) of the package name (or of the
  source package with ``split_by="source"``, which keeps sibling binaries of one source - e.g. libfoo1 and
  libfoo-dev, whose descriptions overlap - on the same side).
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

from ..errors import DataError

__all__ = ["DEFAULT_STATUS_PATH", "PROMPT_TEMPLATE", "FROZEN_FILE", "FROZEN_MANIFEST", "parse_control_stanzas",
           "parse_description", "read_debian_descriptions", "load_debian_descriptions", "in_test_split",
           "frozen_records", "freeze_debian_descriptions", "records_digest"]

DEFAULT_STATUS_PATH = "/var/lib/dpkg/status"
FROZEN_VERSION = "v1"
FROZEN_FILE = Path(__file__).parent / f"debian_descriptions-{FROZEN_VERSION}.jsonl.gz"
FROZEN_MANIFEST = Path(__file__).parent / f"debian_descriptions-{FROZEN_VERSION}.json"
#: What a frozen record keeps: the parsed, untruncated text (filters and truncation apply when loading).
RAW_COLUMNS = ["package", "source", "version", "synopsis", "description"]
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
                    "target": r["synopsis"]})
    return out


def read_debian_descriptions(path=None, min_description_chars: int = 40, max_description_chars: int = 1000,
                             template: str = PROMPT_TEMPLATE) -> list[dict[str, str]]:
    """All usable examples (sorted by package) from one status/control file or a list of them."""
    return _examples(raw_records(path), min_description_chars, max_description_chars, template)


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps({k: r.get(k) for k in RAW_COLUMNS}, ensure_ascii=False, sort_keys=True) + "\n"
                   for r in records).encode("utf-8")


def records_digest(records: list[dict]) -> str:
    """SHA-256 of the records' canonical JSON lines: equal on every machine for the same data."""
    return hashlib.sha256(_jsonl(records)).hexdigest()


def frozen_records() -> list[dict[str, str]]:
    """The shipped frozen records, checked against the manifest's SHA-256 (a damaged file is refused)."""
    if not FROZEN_FILE.is_file() or not FROZEN_MANIFEST.is_file():
        raise DataError(f"The frozen Debian description data ({FROZEN_FILE.name}) is missing from the package.",
                        "Reinstall hf_klas, or pass path='/var/lib/dpkg/status' to build records from this system.")
    records = [json.loads(line) for line in gzip.decompress(FROZEN_FILE.read_bytes()).decode("utf-8").splitlines()]
    expected = json.loads(FROZEN_MANIFEST.read_text())["sha256"]
    if records_digest(records) != expected:
        raise DataError(f"{FROZEN_FILE.name} does not match its manifest's SHA-256 (damaged or edited).",
                        "Reinstall hf_klas; to make a new version, run scripts/freeze_debian_descriptions.py.")
    return records


def freeze_debian_descriptions(out_dir, path=None, version: str = FROZEN_VERSION, overwrite: bool = False) -> dict:
    """Write ``debian_descriptions-<version>.jsonl.gz`` + its manifest from a dpkg database (default: this
    system's). The explicit way to make a frozen version; never called implicitly."""
    out_dir = Path(out_dir)
    data, manifest = (out_dir / f"debian_descriptions-{version}.jsonl.gz",
                      out_dir / f"debian_descriptions-{version}.json")
    if (data.exists() or manifest.exists()) and not overwrite:
        raise DataError(f"{data} already exists.", "Choose a new version (version=...) or pass overwrite=True.")
    records = raw_records(path)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as fh:  # mtime 0: the same bytes for the same records
        fh.write(_jsonl(records))
    out_dir.mkdir(parents=True, exist_ok=True)
    data.write_bytes(buf.getvalue())
    os_release = Path("/etc/debian_version")
    examples = _examples(records, 40, 1000, PROMPT_TEMPLATE)
    test = sum(in_test_split(r["package"], 0.2) for r in examples)
    info = {
        "name": "debian_descriptions", "version": version, "records": len(records),
        "examples_with_defaults": {"all": len(examples), "train": len(examples) - test, "test": test},
        "sha256": records_digest(records), "file": data.name, "columns": RAW_COLUMNS,
        "source": {"dpkg_status": str(path or DEFAULT_STATUS_PATH),
                   "debian_version": os_release.read_text().strip() if os_release.is_file() else None,
                   "machine": platform.machine(), "frozen_on": datetime.date.today().isoformat()},
        "licence": "Each description was written by the maintainers of the package it describes and is "
                   "distributed with that package under the package's licence (Debian main: DFSG-free licences); "
                   "the package name and version identify the source of every record.",
        "task": "long description -> one-line synopsis; split by a stable SHA-256 of the package name "
                "(in_test_split), test fraction 0.2 by default",
    }
    manifest.write_text(json.dumps(info, indent=2) + "\n")
    return info


def load_debian_descriptions(split: str = "train", test_fraction: float = 0.2, limit: int | None = None,
                             path=None, min_description_chars: int = 40, max_description_chars: int = 1000,
                             template: str = PROMPT_TEMPLATE, split_by: str = "package"):
    """``datasets.Dataset`` (columns package, source, synopsis, description, prompt, target) for one split.

    ``path=None``: the frozen records shipped with hf_klas (the same everywhere); a path (``/var/lib/dpkg/status``,
    a control file, a list): records built from it. ``split`` is "train", "test" or "all"; ``limit`` keeps the
    first N examples (by package name) of the split. Deterministic: same data and arguments give the same rows
    in the same order.
    """
    if split not in ("train", "test", "all"):
        raise DataError(f"split={split!r} is not a split of debian_descriptions.", "Use 'train', 'test' or 'all'.")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction={test_fraction} is outside (0, 1).", "Pass e.g. test_fraction=0.2.")
    if split_by not in ("package", "source"):
        raise DataError(f"split_by={split_by!r} is not supported.", "Use 'package' or 'source'.")
    if limit is not None and limit < 0:
        raise DataError(f"limit={limit} is negative.", "Pass limit=None (all) or a non-negative integer.")
    raw = frozen_records() if path is None else raw_records(path)
    records = _examples(raw, min_description_chars, max_description_chars, template)
    if split != "all":
        want_test = split == "test"
        records = [r for r in records if in_test_split(r[split_by], test_fraction) == want_test]
    if limit is not None:
        records = records[:limit]
    features = datasets.Features({c: datasets.Value("string") for c in COLUMNS})
    return datasets.Dataset.from_dict({c: [r[c] for r in records] for c in COLUMNS}, features=features)
