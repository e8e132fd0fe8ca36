"""Debian package descriptions -> one-line synopsis: a real summarisation task that needs no network.

Every Debian/Ubuntu system has ``/var/lib/dpkg/status``: one RFC822-style stanza per installed package whose
``Description`` field holds a one-line *synopsis* (first line) and a multi-paragraph *long description*
(continuation lines). Summarising the long description into the synopsis is a small, human-written
abstractive task for LLM stitches (ROUGE against ``target``).

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

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError

__all__ = ["DEFAULT_STATUS_PATH", "PROMPT_TEMPLATE", "parse_control_stanzas", "parse_description",
           "read_debian_descriptions", "load_debian_descriptions", "in_test_split"]

DEFAULT_STATUS_PATH = "/var/lib/dpkg/status"
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


def read_debian_descriptions(path=None, min_description_chars: int = 40, max_description_chars: int = 1000,
                             template: str = PROMPT_TEMPLATE) -> list[dict[str, str]]:
    """All usable records (sorted by package) from one status/control file or a list of them."""
    paths = [DEFAULT_STATUS_PATH] if path is None else (
        [path] if isinstance(path, (str, os.PathLike)) else list(path))
    if "{description}" not in template:
        raise DataError(f"The prompt template {template!r} has no {{description}} placeholder.",
                        "Include {description} (and optionally {package}) in the template.")
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
        with_desc.append(((package, fields.get("architecture", ""), order), package, source, desc))
    if not with_desc:
        raise DataError(f"No package stanza with a Description field in {[str(p) for p in paths]}.",
                        "Pass a dpkg status file (or Translation-en file), not another kind of file.")
    records, seen = [], set()
    for _, package, source, desc in sorted(with_desc, key=lambda t: t[0]):
        if package in seen:
            continue
        seen.add(package)
        synopsis, description = parse_description(desc)
        if not synopsis or len(description) < min_description_chars:
            continue
        description = _truncate(description, max_description_chars)
        records.append({
            "package": package, "source": source, "synopsis": synopsis, "description": description,
            "prompt": template.format(description=description, package=package), "target": synopsis})
    return records


def load_debian_descriptions(split: str = "train", test_fraction: float = 0.2, limit: int | None = None,
                             path=None, min_description_chars: int = 40, max_description_chars: int = 1000,
                             template: str = PROMPT_TEMPLATE, split_by: str = "package"):
    """``datasets.Dataset`` (columns package, source, synopsis, description, prompt, target) for one split.

    ``split`` is "train", "test" or "all"; ``limit`` keeps the first N examples (by package name) of the split.
    Deterministic: same file and arguments give the same rows in the same order.
    """
    import datasets

    if split not in ("train", "test", "all"):
        raise DataError(f"split={split!r} is not a split of debian_descriptions.", "Use 'train', 'test' or 'all'.")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction={test_fraction} is outside (0, 1).", "Pass e.g. test_fraction=0.2.")
    if split_by not in ("package", "source"):
        raise DataError(f"split_by={split_by!r} is not supported.", "Use 'package' or 'source'.")
    if limit is not None and limit < 0:
        raise DataError(f"limit={limit} is negative.", "Pass limit=None (all) or a non-negative integer.")
    records = read_debian_descriptions(path, min_description_chars, max_description_chars, template)
    if split != "all":
        want_test = split == "test"
        records = [r for r in records if in_test_split(r[split_by], test_fraction) == want_test]
    if limit is not None:
        records = records[:limit]
    features = datasets.Features({c: datasets.Value("string") for c in COLUMNS})
    return datasets.Dataset.from_dict({c: [r[c] for r in records] for c in COLUMNS}, features=features)
