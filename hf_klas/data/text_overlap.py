"""Near-duplicate text detection and grouping, shared by the frozen datasets' split rules: two splits must never
hold near-copies of one text (a leak that makes held-out numbers look better than they are)."""

from __future__ import annotations

import re
import warnings

import torch

__all__ = ["SHINGLE_WORDS", "SHINGLE_CHARS", "words", "shingles", "jaccard_matrix", "connected_components"]

SHINGLE_WORDS = 3
SHINGLE_CHARS = 5


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words (the normal form every comparison uses)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def shingles(text: str) -> tuple[set, set]:
    """Word 3-shingles and character 5-shingles of the normalised text (lower-case words joined by one space)."""
    ws = words(text)
    joined = " ".join(ws)
    return ({("w",) + tuple(ws[k:k + SHINGLE_WORDS]) for k in range(len(ws) - SHINGLE_WORDS + 1)},
            {joined[k:k + SHINGLE_CHARS] for k in range(len(joined) - SHINGLE_CHARS + 1)})


def jaccard_matrix(sets: list[set]) -> torch.Tensor:
    """Pairwise Jaccard similarity of ``sets`` as one sparse product (0 where either set is empty)."""
    vocab: dict = {}
    rows, cols = [], []
    for r, items in enumerate(sets):
        for item in items:
            rows.append(r)
            cols.append(vocab.setdefault(item, len(vocab)))
    n = len(sets)
    x = torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1), torch.ones(len(rows)),
                                (n, max(1, len(vocab))), check_invariants=False).coalesce()
    with warnings.catch_warnings():  # torch calls its sparse product "beta"; the counts are exact small integers
        warnings.simplefilter("ignore", UserWarning)
        inter = torch.sparse.mm(x, x.t()).to_dense()
    sizes = torch.tensor([float(len(items)) for items in sets])
    union = sizes[:, None] + sizes[None, :] - inter
    nonempty = (sizes[:, None] > 0) & (sizes[None, :] > 0)
    return torch.where(nonempty, inter / union.clamp_min(1.0), torch.zeros(()))


def connected_components(n: int, edges) -> list[int]:
    """A component id (the root's index) for each of ``n`` items joined by ``edges`` (union-find)."""
    parent = list(range(n))

    def root(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a, b in edges:
        parent[root(a)] = root(b)
    return [root(k) for k in range(n)]
