"""WordNet glosses: short, human-written general-English text for measuring what depth pruning costs a language
model *outside* the task it is finetuned on.

Pruning papers report retention on general benchmarks; the Debian synopsis task measures one narrow skill. A
model healed on Debian descriptions can look fine there and still have lost general English, so the depth-pruning
benchmark also scores perplexity on these glosses. Every record is one WordNet 3.0 synset:
``"<lemma>: <definition>. <example sentences>"`` (only synsets with at least one example sentence, so every text
holds natural sentences, not only dictionary phrasing).

**Frozen data (the default).** A seeded sample of :data:`FROZEN_SIZE` synsets is frozen once into a versioned file
shipped with hf_klas (:data:`FROZEN_FILE`, with its manifest: source files, licence notice, counts, split rule,
SHA-256); :func:`load_wordnet_glosses` reads it, checking the digest. Building from a local WordNet is explicit:
``python scripts/freeze_wordnet_glosses.py`` (Debian package ``wordnet-base``).

**Splits.** ``train`` / ``validation`` / ``test`` (0.6 / 0.2 / 0.2). Records are grouped -- connected components of
"same first lemma" (the senses of one word) or "near-duplicate" (word 3-shingle Jaccard >= 0.5 or character
5-shingle Jaccard >= 0.4 between the texts) -- and a whole group goes to one split by a stable SHA-256 of its
alphabetically first lemma, so no split holds a near-copy of another's text.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
from pathlib import Path

import datasets

from ..errors import DataError
from .text_overlap import connected_components, jaccard_matrix, shingles

__all__ = ["WORDNET_DIR", "FROZEN_FILE", "FROZEN_MANIFEST", "FROZEN_SIZE", "SPLITS", "parse_wordnet_data",
           "read_wordnet_glosses", "assign_splits", "freeze_wordnet_glosses", "frozen_records",
           "load_wordnet_glosses", "records_digest"]

WORDNET_DIR = "/usr/share/wordnet"
POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
FROZEN_VERSION = "v1"
FROZEN_SIZE = 1500
DATA_DIR = Path(__file__).parent
FROZEN_FILE = DATA_DIR / f"wordnet_glosses-{FROZEN_VERSION}.jsonl.gz"
FROZEN_MANIFEST = DATA_DIR / f"wordnet_glosses-{FROZEN_VERSION}.json"
SPLITS = ("train", "validation", "test")
FRACTIONS = {"test": 0.2, "validation": 0.2}
WORD_JACCARD, CHAR_JACCARD = 0.5, 0.4
COLUMNS = ["synset", "lemma", "text", "split"]
LICENCE = ("WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Permission to use, copy, "
           "modify and distribute this software and database and its documentation for any purpose and without fee "
           "or royalty is hereby granted, provided that the copyright notice and statements, including the "
           "disclaimer, appear on all copies (WordNet 3.0 licence; full text in the Debian package wordnet-base, "
           "/usr/share/doc/wordnet-base/copyright). THE DATABASE IS PROVIDED \"AS IS\" AND PRINCETON UNIVERSITY "
           "MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED.")


def parse_wordnet_data(text: str, pos: str) -> list[dict]:
    """Synsets of one WordNet ``data.<pos>`` file: ``{"synset", "lemma", "definition", "examples"}``.

    A data line is ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``; the gloss is the definition
    followed by ``; "example"`` parts. Licence header lines start with two spaces and are skipped."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("  ") or " | " not in line:
            continue
        head, gloss = line.split(" | ", 1)
        fields = head.split()
        try:
            count = int(fields[3], 16)
        except (IndexError, ValueError) as err:
            raise DataError(f"Not a WordNet data line: {line[:80]!r}.",
                            "Pass the data.noun / data.verb / data.adj / data.adv files of WordNet 3.0.") from err
        lemmas = [fields[4 + 2 * k].replace("_", " ") for k in range(count)]
        parts = [p.strip() for p in gloss.strip().split(";")]
        definition = parts[0]
        examples = [p.strip('"').strip() for p in parts[1:] if p.startswith('"')]
        out.append({"synset": f"{pos}:{fields[0]}", "lemma": lemmas[0].split("(")[0], "definition": definition,
                    "examples": examples})
    return out


def read_wordnet_glosses(wordnet_dir=WORDNET_DIR, size: int | None = FROZEN_SIZE) -> list[dict]:
    """Records ``{"synset", "lemma", "text"}`` of every synset with an example sentence, or a stable sample of
    ``size`` of them (the smallest SHA-256 of the synset id), sorted by synset id."""
    root = Path(wordnet_dir)
    records = []
    for pos, name in POS_FILES.items():
        path = root / name
        if not path.is_file():
            raise DataError(f"WordNet data file {path} not found.",
                            "Install the Debian package wordnet-base (apt-get install wordnet-base), or pass the "
                            "directory that holds data.noun, data.verb, data.adj and data.adv.")
        for s in parse_wordnet_data(path.read_text(encoding="utf-8", errors="replace"), pos):
            if s["examples"] and s["definition"]:
                text = f"{s['lemma']}: {s['definition']}. " + " ".join(
                    e if e.endswith((".", "!", "?")) else e + "." for e in s["examples"])
                records.append({"synset": s["synset"], "lemma": s["lemma"], "text": text})
    if size is not None:
        records = sorted(records, key=lambda r: hashlib.sha256(r["synset"].encode()).hexdigest())[:size]
    return sorted(records, key=lambda r: r["synset"])


def _unit(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_groups(records: list[dict]) -> tuple[list[int], int]:
    """A group id per record (same first lemma, or near-duplicate text) and the number of near-duplicate pairs."""
    pairs = [shingles(r["text"]) for r in records]
    hits = (jaccard_matrix([w for w, _ in pairs]) >= WORD_JACCARD) | (jaccard_matrix([c for _, c in pairs])
                                                                      >= CHAR_JACCARD)
    near = [(a, b) for a, b in hits.triu(diagonal=1).nonzero().tolist()]
    first: dict[str, int] = {}
    edges = near + [(first.setdefault(r["lemma"].lower(), k), k) for k, r in enumerate(records)]
    return connected_components(len(records), edges), len(near)


def assign_splits(records: list[dict]) -> list[str]:
    """The split of every record: whole :func:`split_groups` go to one split by a SHA-256 of the group's
    alphabetically first lemma (test below 0.2, validation below 0.4, else train)."""
    groups, _ = split_groups(records)
    key: dict[int, str] = {}
    for g, r in zip(groups, records):
        key[g] = min(key.get(g, r["lemma"].lower()), r["lemma"].lower())
    out = []
    for g in groups:
        u = _unit(key[g])
        out.append("test" if u < FRACTIONS["test"] else "validation"
                   if u < FRACTIONS["test"] + FRACTIONS["validation"] else "train")
    return out


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps({k: r[k] for k in COLUMNS}, ensure_ascii=False, sort_keys=True) + "\n"
                   for r in records).encode("utf-8")


def records_digest(records: list[dict]) -> str:
    """SHA-256 of the records' canonical JSON lines: equal on every machine for the same data."""
    return hashlib.sha256(_jsonl(records)).hexdigest()


def freeze_wordnet_glosses(out_dir, wordnet_dir=WORDNET_DIR, size: int = FROZEN_SIZE, overwrite: bool = False
                           ) -> dict:
    """Write ``wordnet_glosses-v1.jsonl.gz`` and its manifest from a local WordNet 3.0 (never called implicitly)."""
    out_dir = Path(out_dir)
    data, manifest = out_dir / FROZEN_FILE.name, out_dir / FROZEN_MANIFEST.name
    if (data.exists() or manifest.exists()) and not overwrite:
        raise DataError(f"{data} already exists.", "Pass overwrite=True, or write to another directory.")
    records = read_wordnet_glosses(wordnet_dir, size)
    records = [dict(r, split=s) for r, s in zip(records, assign_splits(records))]
    groups, near = split_groups(records)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as fh:  # mtime 0: the same bytes for the same records
        fh.write(_jsonl(records))
    out_dir.mkdir(parents=True, exist_ok=True)
    data.write_bytes(buf.getvalue())
    info = {
        "name": "wordnet_glosses", "version": FROZEN_VERSION, "records": len(records),
        "splits": {s: sum(r["split"] == s for r in records) for s in SPLITS},
        "sha256": records_digest(records), "file": data.name, "columns": COLUMNS,
        "source": {"wordnet_dir": str(wordnet_dir), "files": list(POS_FILES.values()), "wordnet": "3.0",
                   "frozen_on": datetime.date.today().isoformat()},
        "record": "one synset with at least one example sentence: '<first lemma>: <definition>. <examples>'",
        "sample": f"the {size} synsets with the smallest SHA-256 of their id ('<pos>:<offset>')",
        "licence": LICENCE,
        "split_rule": {"groups": "connected components of 'same first lemma' or 'near-duplicate'; a whole group "
                                 "goes to one split by a stable SHA-256 of its alphabetically first lemma",
                       "near_duplicate": f"word 3-shingle Jaccard >= {WORD_JACCARD} or character 5-shingle "
                                         f"Jaccard >= {CHAR_JACCARD} between the texts",
                       "fractions": FRACTIONS, "groups_count": len(set(groups)), "near_duplicate_pairs": near,
                       "removed": 0},
    }
    manifest.write_text(json.dumps(info, indent=2) + "\n")
    return info


def frozen_records() -> list[dict]:
    """The shipped records, checked against the manifest's SHA-256 (a damaged file is refused)."""
    if not FROZEN_FILE.is_file() or not FROZEN_MANIFEST.is_file():
        raise DataError(f"The frozen WordNet gloss data ({FROZEN_FILE.name}) is missing from the package.",
                        "Reinstall hf_klas, or write it with scripts/freeze_wordnet_glosses.py.")
    records = [json.loads(line) for line in gzip.decompress(FROZEN_FILE.read_bytes()).decode("utf-8").splitlines()]
    if records_digest(records) != json.loads(FROZEN_MANIFEST.read_text())["sha256"]:
        raise DataError(f"{FROZEN_FILE.name} does not match its manifest's SHA-256 (damaged or edited).",
                        "Reinstall hf_klas; to make a new version, run scripts/freeze_wordnet_glosses.py.")
    return records


def load_wordnet_glosses(split: str = "validation", limit: int | None = None):
    """``datasets.Dataset`` (columns synset, lemma, text) of one frozen split ("train", "validation", "test",
    "all"), in synset order; ``limit`` keeps the first N."""
    if split not in (*SPLITS, "all"):
        raise DataError(f"split={split!r} is not a split of wordnet_glosses.",
                        "Use 'train', 'validation', 'test' or 'all'.")
    if limit is not None and limit < 0:
        raise DataError(f"limit={limit} is negative.", "Pass limit=None (all) or a non-negative integer.")
    records = [r for r in frozen_records() if split == "all" or r["split"] == split][:limit]
    cols = ["synset", "lemma", "text"]
    return datasets.Dataset.from_dict({c: [r[c] for r in records] for c in cols},
                                      features=datasets.Features({c: datasets.Value("string") for c in cols}))
