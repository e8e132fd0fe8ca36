"""One streamed pass over calibration data: every probe distribution of every block, Θ for all pairs.

What happens per calibration batch:

1. each anchor runs ONCE (``hf_klas.activations.run_prefix``, stopped after its last block: the anchor's own
   head is not needed -- the probe applies it); when front and back are the same anchor (self-stitching) it
   runs once and both sides read the same block outputs;
2. the samples are selected: every non-padding token position for causal LMs, one pooled token per image for
   ViTs (the probe's ``features``);
3. the tokens are processed in chunks (default 16) and the vocabulary in tiles (default ~1 MB of float32
   ``[points, chunk, tile]``), so the working set is a few MB that stays in cache, and memory does not grow
   with the data (the reference/top-k kernels materialise ``[points, chunk, vocab]`` log-probs instead,
   bounded by ``max_chunk_bytes``);
4. for each chunk, every point's distribution is formed in float32 from the probe's logits (for the logit
   lens: final norm, then the unembedding as one batched matmul per vocabulary tile), and the KL sums of all
   point pairs are accumulated in float64.

The fused kernel (default) is an online softmax over vocabulary tiles (as in FlashAttention), in base 2. Since
``Σ_v p_a = 1``, ``Σ_v p_a log p_b = Σ_v p_a z_b - lse_b`` with logits ``z`` and ``lse = logsumexp(z)``. The features
carry the factor ``log2 e``, so each tile's GEMM yields ``z' = z · log2 e`` and the exponentials are ``exp2`` (about
three times cheaper than torch's CPU ``exp``). The exponentials ``e_a = 2^(z'_a - c_a)`` need no max pass: the shift
``c_a`` of a point and token is 0 until a tile's sums pass ``RESCALE_LIMIT`` (logits above ~55 nats), which raises it
to that tile's max and redoes the tile (exact, rare); a chunk whose unshifted denominators end below
``UNSHIFTED_MIN_SUM`` (logits all far below 0) is redone with shifts from its first tile. For every pair of points,
``U_ab += e_a @ z'_bᵀ`` -- one small batched product per tile, whose b side is padded with zero rows to a multiple of
``ROW_MULTIPLE`` (twice as fast) and, on the last side, a row of ones: that column is ``s_a = Σ_v e_a``, the softmax
denominator. At the end ``Σ_v p_a z'_b = U_ab / s_a`` and ``lse'_a = c_a + log2 s_a``; so
``KL(a ‖ b) = (C[a, a] - C[a, b]) · ln 2`` per token with ``C = Σ p z' - lse'``.
One pass yields Θ (front rows x back resume points), the back anchor's within-anchor KLs (Γ's denominator:
consecutive back points), the final-output KL between the anchors and the cross-entropies (CE baseline). The logits
never leave the cache and no ``[tokens, points, vocab]`` tensor exists. Exponents are clamped at ``EXP_FLOOR = -80``
nats below the shift (torch's CPU exponentials are much slower on underflowing inputs, and denormal results slow the
next matmul; an output that small changes no KL digit in float32: the clamped mass stays below 2^-48 of the row's).
It is the decomposition of
:class:`hf_klas.selection.divergence.KLMatrixAccumulator`, on logits; ``kernel="reference"`` runs that
accumulator itself on materialised log-probs (element-validated, handles ``-inf`` log-probs of masked
vocabularies; results agree to float32 rounding, see tests). ``topk=k`` uses
:class:`~hf_klas.selection.divergence.TopKKLMatrixAccumulator`.

Half-precision anchors run their blocks in bf16/fp16; each head tile is copied to float32 before its GEMM, so the
distributions and KLs are float32 and the sums float64. Anchors placed with an accelerate ``device_map`` (offload
included) are probed in place: block outputs are moved to the head's device, and an offloaded head is materialised
for one batch at a time. Under ``accelerate launch`` :meth:`KLEngine.run` feeds this process's share of the batches
and adds the sums up across processes (:mod:`hf_klas.selection.distributed`).

Θ convention (same as :mod:`hf_klas.selection.scoring`): ``theta[i-1, j]`` = mean KL(P^f after front block
``i`` ‖ P^g at back resume point ``j``), resume point ``j`` = back embedding output (``j = 0``) or output of back
block ``j-1``; ``within_back[j]`` = KL(P^g point ``j`` ‖ point ``j+1``) for ``j = 0..n-1``; ``final_kl`` =
KL(front's final output ‖ back's final output) (0 for self-stitching).

NaN/inf: the chunk's ``[P, P]`` result is checked (free); if it is not finite, the offending point is located
(hidden state or log-probs) and a :class:`~hf_klas.errors.NumericalError` names the anchor and the block.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
from accelerate.utils import align_module_device
from tqdm.auto import tqdm

from ..activations import run_prefix
from ..errors import CalibrationError, HfKlasError, IncompatibleAnchorsError, NumericalError
from ..families import CAUSAL_LM, family_of
from ..probes.base import Probe
from .distributed import max_across_processes, num_processes, shard, sum_across_processes
from .divergence import KLMatrixAccumulator, TopKKLMatrixAccumulator

DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20
#: Tokens per chunk (the unembedding matmul has ``chunk x points`` rows: 496 for SmolLM2).
DEFAULT_CHUNK_TOKENS = 16
#: Vocabulary tile of the fused kernel: ``[chunk, points, tile]`` float32 of about this size (fits in L2;
#: measured on SmolLM2: 1 MB tiles (512 classes) a few % faster than 2-4 MB).
DEFAULT_TILE_BYTES = 2**20
#: Lower clamp of exp() arguments in the fused kernel, in nats (see _fused_chunk).
EXP_FLOOR = -80.0
LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)
#: The same clamp for the kernel's base-2 exponentials.
EXP2_FLOOR = EXP_FLOOR * LOG2E
#: A tile whose sum of exponentials exceeds this (relative to the shift) raises the shift first; 2^80 leaves
#: 2^48 of float32 range for the sums over the vocabulary and the products with the logits.
RESCALE_LIMIT = 2.0 ** 80
#: Without a shift, a softmax denominator below this means a row whose logits all lie far below 0: the chunk is
#: redone with shifts (the clamp floor then stays below float32 resolution relative to the row's mass).
UNSHIFTED_MIN_SUM = 2.0 ** -50
#: Logit buffers have a multiple of this many point rows: the per-token products ``[P_a, w] @ [w, rows]`` run
#: about twice as fast with 32 columns as with 31 (measured with MKL on AVX-512; see docs/notes/selection_scale.md).
ROW_MULTIPLE = 16
KERNELS = ("fused", "reference")


def point_label(point: int) -> str:
    """``0`` -> "embedding output", ``k`` -> "block k-1 output" (python block index)."""
    return "embedding output" if point == 0 else f"block {point - 1} output"


@dataclass
class KLResult:
    """What one pass produced (float64 tensors; see module docstring for the conventions)."""

    theta: torch.Tensor  # [m, n]
    within_back: torch.Tensor  # [n]
    final_kl: float
    cross_entropy: torch.Tensor  # [m, n]: mean -Σ p_f log q_g (CE baseline)
    front_entropy: torch.Tensor  # [m]
    all_pairs: torch.Tensor  # [P, P] KL between every pair of stacked points (diagnostics)
    points: list[tuple[str, int]]  # (side, point) of each stacked row
    tokens: int = 0
    batches: int = 0
    chunk_tokens: int = 0
    kernel: str = "fused"
    forward_calls: dict = field(default_factory=dict)
    seconds: float = 0.0
    memory: dict = field(default_factory=dict)  # see KLEngine.memory_report


class _FusedAllPairs:
    """Float64 totals of ``Σ_t Σ_v p_a z_b`` and ``Σ_t lse_a`` for stacked points; ``log p_b = z_b - lse_b``.

    The kernel works in base 2 (``z' = z · log2 e``, see :meth:`KLEngine._fused_chunk`); the totals are kept in
    those units and converted to nats (``· ln 2``) on read-out. ``blocks`` lists the (row side, column side)
    pairs computed (self-stitching: the one side with itself; cross-model: front x front, front x back,
    back x back -- back x front is never needed and stays NaN). :meth:`state` / :meth:`load_state` expose the
    raw sums so that data-parallel processes can add them up (:mod:`hf_klas.selection.distributed`).
    """

    def __init__(self, sizes: list[int], blocks: list[tuple[int, int]]):
        self.offsets = [sum(sizes[:k]) for k in range(len(sizes))]
        self.sizes = sizes
        P = sum(sizes)
        self.cz = torch.full((P, P), float("nan"), dtype=torch.float64)
        for a, b in blocks:
            self._blk(self.cz, a, b).zero_()
        self.blocks = blocks
        self.lse = torch.zeros(P, dtype=torch.float64)
        self.count = 0

    def _blk(self, t, a, b):
        oa, ob = self.offsets[a], self.offsets[b]
        return t[oa:oa + self.sizes[a], ob:ob + self.sizes[b]]

    def update(self, pz: dict, lse: list[torch.Tensor]) -> bool:
        """``pz[(a, b)]``: ``[T, P_a, P_b]`` = Σ_v p_a z'_b per token; ``lse[s]``: ``[T, P_s]``. Returns finiteness."""
        ok = True
        for (a, b), c in pz.items():
            c = c.to(torch.float64).sum(0).cpu()
            ok &= bool(torch.isfinite(c).all())
            self._blk(self.cz, a, b).add_(c)
        for sd, lse_side in enumerate(lse):
            lsum = lse_side.to(torch.float64).sum(0).cpu()
            ok &= bool(torch.isfinite(lsum).all())
            o = self.offsets[sd]
            self.lse[o:o + self.sizes[sd]] += lsum
            count = lse_side.shape[0]
        self.count += count
        return ok

    def state(self) -> list[torch.Tensor]:
        return [self.cz, self.lse, torch.tensor([float(self.count)], dtype=torch.float64)]

    def load_state(self, tensors: list[torch.Tensor]) -> None:
        self.cz, self.lse = tensors[0].clone(), tensors[1].clone()
        self.count = int(round(float(tensors[2][0])))

    def cross(self) -> torch.Tensor:
        """Σ_t Σ_v p_a log p_b in nats (float64 [P, P]; NaN where not computed)."""
        return (self.cz - self.lse[None, :]) * LN2

    def kl(self) -> torch.Tensor:
        c = self.cross()
        d = torch.diagonal(c)
        return ((d[:, None] - c) / self.count).clamp_min(0.0)

    def ce(self) -> torch.Tensor:
        return -self.cross() / self.count

    def entropy(self) -> torch.Tensor:
        return -torch.diagonal(self.cross()) / self.count


def padded_rows(points: int, ones_row: bool) -> int:
    """Rows of a side's logit buffer: its points (+ the all-ones row) rounded up to ``ROW_MULTIPLE``."""
    need = points + (1 if ones_row else 0)
    return -(-need // ROW_MULTIPLE) * ROW_MULTIPLE


class _TileSide:
    """One anchor's state in :meth:`KLEngine._fused_chunk` for one chunk: the shift ``c`` of the exponentials and
    the tile operations, on buffers (and views of them) that live across chunks."""

    def __init__(self, probe: Probe, state, cs: int, P: int, rows: int, ones_row: bool, bufs: dict, device,
                 shift_first: bool = False):
        self.probe, self.state, self.cs, self.P, self.rows = probe, state, cs, P, rows
        ops = probe.tile_operands(state)  # (x, weight, bias, softcap) for plain heads, else None
        self.device = device
        self.ops = ops is not None
        if self.ops:
            x, self.weight, bias, cap = ops
            self.x = x.to(device).mul(LOG2E)  # base 2: the GEMM yields z' = z · log2 e (a [P*cs, d] op per chunk)
            self.bias = None if bias is None else bias.to(device, torch.float32).mul(LOG2E)
            self.cap = cap * LOG2E if cap else None
            # bf16/fp16 heads (or a head on another device): each tile is copied to float32 here first
            self.copy_tile = self.weight.dtype != torch.float32 or self.weight.device != device
        self.bufs, self.ones_row = bufs, ones_row
        self.shift_first = shift_first
        self.c: torch.Tensor | None = None  # [P, cs] shift (log2 units); None: no shift (0)
        self.cu: torch.Tensor | None = None  # c as [P, cs, 1]

    def views(self, w: int) -> dict:
        """Views of the side's buffers for tile width ``w``: ``z2 [P*cs, w]`` (GEMM output), ``z [P, cs, w]``,
        ``e [P, cs, w]``, and the per-token product operands ``et [cs, P, w]``, ``zt [cs, w, rows]``. The padding
        rows (points ``P..rows-1``) hold zeros, and ones in row ``P`` on the side that gives the sums; they are
        written again when the buffers were last used with another layout."""
        key = (self.cs, w)
        cache = self.bufs.setdefault("views", {})
        v = cache.get(key)
        if v is None:
            cs, P = self.cs, self.P
            zr = self.bufs["z"][: self.rows * cs * w].view(self.rows, cs, w)
            e = self.bufs["e"][: P * cs * w].view(P, cs, w)
            v = cache[key] = {"z2": zr[:P].view(P * cs, w), "zr": zr, "z": zr[:P], "e": e,
                              "et": e.transpose(0, 1), "zt": zr.transpose(0, 1).transpose(1, 2)}
        if self.bufs.get("layout") != key:
            v["zr"][self.P:].zero_()
            if self.ones_row:
                v["zr"][self.P].fill_(1.0)
            self.bufs["layout"] = key
        return v

    def logits(self, v0: int, v1: int) -> dict:
        """Tile logits (log2 units) into the side's buffer; returns the views of width ``v1 - v0``."""
        v = self.views(v1 - v0)
        if self.ops:
            w = self.weight[v0:v1]
            if self.copy_tile:
                wb = self.bufs["w"][: w.numel()].view(w.shape)
                wb.copy_(w)
                w = wb
            torch.mm(self.x, w.t(), out=v["z2"])
            if self.bias is not None:
                v["z2"].add_(self.bias[v0:v1])
            if self.cap:
                v["z2"].div_(self.cap).tanh_().mul_(self.cap)
        else:
            self.probe.logits_tile(self.state, v0, v1, v["z"])
            v["z"].mul_(LOG2E)
        if self.shift_first and self.c is None:  # every later exponent relative to the first tile's max
            self.set_shift(torch.amax(v["z"], -1))
        return v

    def set_shift(self, c: torch.Tensor) -> None:
        self.c, self.cu = c, c.unsqueeze(-1)

    def exp(self, v: dict) -> None:
        """``e = 2^max(z' - c, floor)`` in the side's exp buffer: two passes without a shift, three with one."""
        if self.c is None:
            torch.clamp(v["z"], min=EXP2_FLOOR, out=v["e"]).exp2_()
        else:
            torch.sub(v["z"], self.cu, out=v["e"]).clamp_min_(EXP2_FLOOR).exp2_()

    def raise_shift(self, v: dict) -> torch.Tensor:
        """Move ``c`` up to the tile's max where the tile exceeds it; returns the factor ``2^(c_old - c_new)``
        ``[P, cs]`` that rescales everything accumulated with the old shift (rare: see ``RESCALE_LIMIT``)."""
        old = self.c if self.c is not None else torch.zeros(self.P, self.cs, device=self.device)
        new = torch.maximum(old, torch.amax(v["z"], -1))
        factor = torch.exp2(old - new)
        self.set_shift(new)
        return factor



def parameter_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of a model's parameters and buffers per device type (tied tensors once; ``"offloaded"``: on the meta
    device behind accelerate hooks). Types, not indices: data-parallel ranks on cuda:0 and cuda:1 report alike."""
    out: dict[str, int] = {}
    seen = set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        key = "offloaded" if t.device.type == "meta" else t.device.type
        out[key] = out.get(key, 0) + t.numel() * t.element_size()
    return out


def _anchor_name(probe: Probe, fallback: str) -> str:
    model = probe.anchor_model
    return str(getattr(model, "name_or_path", None) or fallback)


class KLEngine:
    """Streamed Θ for one (front, back) pair of probes; ``back_probe=None`` (or the same probe) = self-stitching.

    Args:
        max_chunk_bytes: bound on the ``[points, chunk, classes]`` log-probs of the reference / top-k kernels
            (also caps the chunk of the fused kernel).
        tile_bytes: vocabulary tile of the fused kernel (``[chunk, points, tile]`` float32).
        chunk_tokens: use at most this many tokens per chunk (default 16; None: as many as ``max_chunk_bytes``
            allows).
        kernel: ``"fused"`` (default, one GEMM per chunk) or ``"reference"`` (the divergence module's
            accumulator, element-validated; slower).
        topk: approximate with the top-k union of every block (``TopKKLMatrixAccumulator``); None = exact.
        data_parallel: in :meth:`run`, under ``accelerate launch`` with several processes, feed this process's
            share of the batches and add the sums up across processes (:mod:`hf_klas.selection.distributed`).
    """

    def __init__(self, front_probe: Probe, back_probe: Probe | None = None, *, max_chunk_bytes: int =
                 DEFAULT_MAX_CHUNK_BYTES, kernel: str = "fused", topk: int | None = None, progress: bool = True,
                 front_name: str | None = None, back_name: str | None = None,
                 chunk_tokens: int | None = DEFAULT_CHUNK_TOKENS, tile_bytes: int = DEFAULT_TILE_BYTES,
                 data_parallel: bool = True):
        if kernel not in KERNELS:
            raise HfKlasError(f"Unknown KL kernel {kernel!r}.", f"Use one of {KERNELS}.")
        self.front = front_probe
        self.same = back_probe is None or back_probe is front_probe or (
            back_probe.anchor_model is front_probe.anchor_model and type(back_probe) is type(front_probe)
            and back_probe.config == front_probe.config)
        self.back = front_probe if self.same else back_probe
        if self.front.num_classes != self.back.num_classes:
            raise IncompatibleAnchorsError(
                f"The front probe has {self.front.num_classes} outputs and the back probe "
                f"{self.back.num_classes}: KL needs one vocabulary / label set.",
                "Stitch anchors that share a tokenizer (LLMs) or a label set (vision).")
        self.m = self.front.num_points - 1
        self.n = self.back.num_points - 1
        self.max_chunk_bytes = int(max_chunk_bytes)
        self.tile_bytes = int(tile_bytes)
        self.kernel = kernel
        self.topk = topk
        self.progress = progress
        self.data_parallel = bool(data_parallel)
        self.front_name = front_name or _anchor_name(self.front, "front")
        self.back_name = back_name or _anchor_name(self.back, "back")
        # stacked points: self -> 0..n of the one anchor; cross -> front 1..m, then back 0..n
        if self.same:
            self.front_points = list(range(self.n + 1))
            self.back_points: list[int] = []
            self.points = [("anchor", p) for p in self.front_points]
        else:
            self.front_points = list(range(1, self.m + 1))
            self.back_points = list(range(self.n + 1))
            self.points = [("front", p) for p in self.front_points] + [("back", p) for p in self.back_points]
        self.num_points = len(self.points)
        self.classes = self.front.num_classes
        per_token = 4 * max(len(self.front_points), len(self.back_points)) * self.classes
        self.chunk_tokens = max(1, self.max_chunk_bytes // per_token)
        if chunk_tokens is not None:
            self.chunk_tokens = max(1, min(int(chunk_tokens), self.chunk_tokens))

    def kernel_flops(self, tokens: int) -> dict[str, int]:
        """Matmul FLOPs of the fused kernel for ``tokens`` samples (2 per multiply-add, as :mod:`hf_klas.flops`
        counts): ``unembedding`` = Σ over sides of points x hidden x classes, ``products`` = Σ over blocks (a, b)
        of points_a x padded rows_b x classes. The anchors' forward passes come on top (``hf_klas.flops``)."""
        sides = [(len(self.front_points), self.front.hidden_size)]
        if not self.same:
            sides.append((len(self.back_points), self.back.hidden_size))
        last = len(sides) - 1
        rows = [padded_rows(p, k == last) for k, (p, _) in enumerate(sides)]
        blocks = [(0, 0)] if len(sides) == 1 else [(0, 0), (0, 1), (1, 1)]
        V = self.classes
        return {"unembedding": tokens * sum(2 * p * d * V for p, d in sides),
                "products": tokens * sum(2 * sides[a][0] * rows[b] * V for a, b in blocks)}

    # ---- index maps into the stacked [P, P] result ---------------------------------------------------
    def _row(self, i: int) -> int:  # front point i (1..m)
        return i if self.same else i - 1

    def _col(self, j: int) -> int:  # back point j (0..n)
        return j if self.same else self.m + j

    # ---- the pass ------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, batches: list[dict]) -> KLResult:
        """The whole pass: :meth:`reset`, :meth:`feed` every batch (tqdm), :meth:`result`.

        Under ``accelerate launch`` with several processes (and ``data_parallel``), this process feeds only its
        share of ``batches`` and the sums are added up across processes before the result (same on every rank)."""
        self.reset()
        mine = shard(batches) if self.data_parallel else list(batches)
        bar = tqdm(mine, desc="KLAS: probe distributions + Θ", disable=not self.progress, unit="batch")
        for batch in bar:
            self.feed(batch)
            bar.set_postfix(tokens=self.tokens)
        if self.data_parallel:
            self.sum_across_processes()
        return self.result()

    def sum_across_processes(self) -> None:
        """Replace this process's sums by those of all processes (float64; a no-op in a single process)."""
        if num_processes() == 1:
            return
        local = self._acc.state()
        totals = sum_across_processes(local + [torch.tensor([self.tokens, self.batches], dtype=torch.float64)])
        self._acc.load_state(totals[:len(local)])
        self.tokens, self.batches = (int(round(float(x))) for x in totals[-1])
        peak = torch.tensor([self._peak["features"], self._peak["chunk"]], dtype=torch.float64)
        self._peak["features"], self._peak["chunk"] = (int(x) for x in max_across_processes(peak))

    def reset(self) -> None:
        """Start a new pass (the chunk buffers are kept for reuse)."""
        P, V = self.num_points, self.classes
        self._t0 = time.perf_counter()
        self._seconds = 0.0
        self._fused = self.topk is None and self.kernel == "fused"
        if self.topk is not None:
            self._acc = TopKKLMatrixAccumulator(P, P, int(self.topk), front_labels=self._labels(),
                                                back_labels=self._labels(), front_name="stacked",
                                                back_name="stacked")
        elif not self._fused:
            self._acc = KLMatrixAccumulator(P, P, front_labels=self._labels(), back_labels=self._labels(),
                                            front_name="stacked", back_name="stacked",
                                            max_elements=max(P * V, self.max_chunk_bytes // 4))
        else:
            sizes = [len(self.front_points)] if self.same else [len(self.front_points), len(self.back_points)]
            self._acc = _FusedAllPairs(sizes, [(0, 0)] if self.same else [(0, 0), (0, 1), (1, 1)])
        if not hasattr(self, "_bufs"):
            self._bufs: dict[int, dict] = {}
        self.calls = {"front": 0, "back": 0}
        self.tokens = 0
        self.batches = 0
        self._peak = {"features": 0, "chunk": 0}

    def _tile_width(self, cs: int) -> int:
        pmax = max(len(self.front_points), len(self.back_points))
        w = (self.tile_bytes // (4 * max(cs, 1) * pmax)) // 64 * 64
        return int(min(self.classes, max(64, w)))

    def _buffers(self, k: int, numel: int, wnumel: int, device) -> dict:
        """Reused float32 buffers of side ``k`` on ``device`` (logits with padding rows, exponentials, one upcast
        weight tile), allocated once and grown when a chunk needs more."""
        have = self._bufs.get(k)
        if have is None or have["z"].numel() < numel or have["w"].numel() < wnumel or have["z"].device != device:
            # new buffers: views of the old ones (and their layout) go with them
            have = {"z": torch.empty(numel, device=device), "e": torch.empty(numel, device=device),
                    "w": torch.empty(wnumel, device=device)}
            self._bufs[k] = have
        return have

    def _fused_chunk(self, sides, s: int, cs: int, shift_first: bool = False):
        """Online softmax over vocabulary tiles for one chunk of tokens, in base 2.

        Layout: point-major rows (``[P, cs, w]``, the probes' tile layout). Per side ``a``, the GEMM gives the
        tile's ``z'_a = z_a · log2 e`` (the features carry the factor); the exponentials ``e_a = 2^(z'_a - c_a)``
        have no shift (``c_a = 0``, two passes: clamp, exp2) until a tile's sums pass ``RESCALE_LIMIT``, which
        raises the shift of that side to the tile's max and redoes the tile (then three passes: subtract, clamp,
        exp2). ``shift_first`` starts from the first tile's max instead (the redo of a chunk whose logits all lie
        far below 0). For every block (a, b) one batched product per tile gives, per token, ``e_a @ z'_bᵀ``; the b
        side's buffer carries zero rows up to a multiple of ``ROW_MULTIPLE`` (twice as fast a product) and, on the
        last side, a row of ones whose column is ``Σ_v e_a`` -- the softmax denominators come out of the same
        product. At the end ``Σ_v p_a z'_b = U_ab / s_a`` and ``lse'_a = c_a + log2 s_a``. No
        ``[tokens, points, vocab]`` tensor exists."""
        V = self.classes
        wt = self._tile_width(cs)
        last = len(sides) - 1
        dev = self._device
        sd = []
        for k, (probe, pts, f) in enumerate(sides):
            P, rows = len(pts), padded_rows(len(pts), k == last)
            state = probe.tile_state(f[:, s:s + cs], pts)
            wnumel = wt * probe.hidden_size if probe.head is not None else 0
            bufs = self._buffers(k, rows * cs * wt, wnumel, dev)
            sd.append(_TileSide(probe, state, cs, P, rows, k == last, bufs, dev, shift_first))
        blocks = [(0, 0)] if len(sd) == 1 else [(0, 0), (0, 1), (1, 1)]
        U = {(a, b): torch.zeros(cs, sd[a].P, sd[b].rows, device=dev) for a, b in blocks}
        T = {key: torch.empty_like(u) for key, u in U.items()}
        chunk_bytes = sum(4 * b[name].numel() for b in self._bufs.values() for name in ("z", "e", "w"))
        chunk_bytes += sum(8 * u.numel() for u in U.values()) + sum(4 * side.x.numel() for side in sd if side.ops)
        self._peak["chunk"] = max(self._peak["chunk"], chunk_bytes)
        col = sd[last].P  # the ones row of the last side: its column holds Σ_v e_a
        sums = [T[(a, last)][:, :, col] for a in range(len(sd))]  # this tile's Σ_v e_a, [cs, P_a]
        mine = [[(T[(x, b)], b) for x, b in blocks if x == a] for a in range(len(sd))]
        pairs = [(U[key], T[key]) for key in blocks]

        def products(a, views):
            for t, b in mine[a]:
                torch.bmm(views[a]["et"], views[b]["zt"], out=t)

        for v0 in range(0, V, wt):
            v1 = min(V, v0 + wt)
            views = [side.logits(v0, v1) for side in sd]
            for a, side in enumerate(sd):
                side.exp(views[a])
                products(a, views)
            for a, side in enumerate(sd):
                if not float(sums[a].max()) <= RESCALE_LIMIT:  # rare; NaN goes on to _diagnose
                    factor = side.raise_shift(views[a]).t().unsqueeze(-1)
                    for x, b in blocks:
                        if x == a:
                            U[(a, b)].mul_(factor)
                    side.exp(views[a])
                    products(a, views)
            for u, t in pairs:
                u.add_(t)
        tots = [U[(a, last)][:, :, col] for a in range(len(sd))]
        if not shift_first and any(side.c is None and not float(tot.min()) >= UNSHIFTED_MIN_SUM
                                   for side, tot in zip(sd, tots)):
            return self._fused_chunk(sides, s, cs, shift_first=True)  # rare: logits all far below 0
        pz = {(a, b): U[(a, b)][:, :, :sd[b].P] / tots[a].unsqueeze(-1) for a, b in blocks}
        lse = [torch.log2(tot) + (0.0 if side.c is None else side.c.t()) for side, tot in zip(sd, tots)]
        return pz, lse, [side.state for side in sd]

    @torch.no_grad()
    def feed(self, batch: dict) -> None:
        """Add one calibration batch (each anchor runs once on it)."""
        if not hasattr(self, "_acc"):
            self.reset()
        t0 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            # an offloaded head (accelerate device_map with offload) is materialised on its execution device for
            # this batch only; blocks stay where the device map put them
            for probe in {id(p): p for p in (self.front, self.back)}.values():
                stack.enter_context(align_module_device(probe.head))
            self._device = self.front.head.weight.device
            self._feed(batch)
        self.tokens += self._last_tokens
        self.batches += 1
        self._seconds += time.perf_counter() - t0

    def _feed(self, batch: dict) -> None:
        c, acc = self.chunk_tokens, self._acc
        feats_f, feats_g = self._features(batch, self.calls)
        N = feats_f.shape[1]
        if feats_g is not None and feats_g.shape[1] != N:
            raise IncompatibleAnchorsError(
                f"The front anchor yields {N} samples for a batch and the back anchor {feats_g.shape[1]}.",
                "Stitch anchors with the same tokenization / image layout.")
        sides = [(self.front, self.front_points, feats_f)]
        if feats_g is not None:
            sides.append((self.back, self.back_points, feats_g))
        feat_bytes = sum(f.numel() * f.element_size() for _, _, f in sides)
        self._peak["features"] = max(self._peak["features"], feat_bytes)
        for s in range(0, N, c):
            cs = min(c, N - s)
            if not self._fused:
                L = torch.cat([probe.log_probs(f[:, s:s + cs], pts).cpu() for probe, pts, f in sides])
                if not bool(torch.isfinite(L.sum())):
                    self._diagnose(L, [f[:, s:s + cs] for _, _, f in sides])
                acc.update(L, L)
                continue
            pz, lse, states = self._fused_chunk(sides, s, cs)
            if not acc.update(pz, lse):
                self._diagnose(torch.cat([probe.log_probs(f[:, s:s + cs], pts).cpu() for probe, pts, f in sides]),
                               [f[:, s:s + cs] for _, _, f in sides])
        self._last_tokens = N

    def result(self) -> KLResult:
        """Θ, within-back KLs, final KL, CE and entropies of everything fed since :meth:`reset`."""
        if self.tokens == 0:
            raise CalibrationError("The calibration batches produced no tokens (all padding or empty).",
                                   "Pass non-empty calibration data (a few sentences / images at least).")
        acc = self._acc
        if self._fused:
            kl, ce, ent = acc.kl(), acc.ce(), acc.entropy()
        else:
            kl = acc.mean()
            inner = acc._acc if hasattr(acc, "_acc") else acc
            ce, ent = inner.cross_entropy(), inner.front_entropy()
        kl = kl.clone()
        kl.fill_diagonal_(0.0)
        rows = [self._row(i) for i in range(1, self.m + 1)]
        cols = [self._col(j) for j in range(self.n)]
        theta = kl[rows][:, cols]
        within = torch.stack([kl[self._col(j), self._col(j + 1)] for j in range(self.n)])
        final = 0.0 if self.same else float(kl[self._row(self.m), self._col(self.n)])
        return KLResult(
            theta=theta, within_back=within, final_kl=final, cross_entropy=ce[rows][:, cols],
            front_entropy=ent[rows], all_pairs=kl, points=list(self.points), tokens=self.tokens,
            batches=self.batches, chunk_tokens=self.chunk_tokens,
            kernel="topk" if self.topk is not None else self.kernel, forward_calls=dict(self.calls),
            seconds=self._seconds, memory=self.memory_report())

    def memory_report(self) -> dict:
        """What the selection holds, in bytes (deterministic, so it can go into the plan): each anchor's parameters
        per device (``"offloaded"``: on disk / CPU behind accelerate hooks, materialised one module at a time), the
        largest batch of stacked probe features, and the kernel's chunk working set (tile buffers, accumulators).
        Neither of the last two grows with the amount of calibration data."""
        anchors = {"front": parameter_bytes(self.front.anchor_model)}
        if not self.same:
            anchors["back"] = parameter_bytes(self.back.anchor_model)
        peak = getattr(self, "_peak", {"features": 0, "chunk": 0})
        return {"anchors": anchors, "features_bytes": int(peak["features"]), "kernel_bytes": int(peak["chunk"]),
                "selection_bytes": int(peak["features"] + peak["chunk"])}

    def _labels(self) -> list[str]:
        return [f"{side} {point_label(p)}" for side, p in self.points]

    def _features(self, batch: dict, calls: dict):
        """Run each anchor once; stack the features of the needed points ``[P_side, N, hidden]`` on the engine's
        device (block outputs of a device-mapped anchor live on their blocks' devices)."""
        mask = batch.get("attention_mask") if self.front.is_lm else None
        mask = None if mask is None or bool(mask.bool().all()) else mask
        outs_f = run_prefix(self.front.anchor_model, batch, upto=self.m)
        calls["front"] += 1
        if self.same:
            outs_f = outs_f[: self.n + 1]
        feats_f = self._stack(self.front, outs_f, self.front_points, mask)
        feats_g = None
        if not self.same:
            outs_g = run_prefix(self.back.anchor_model, batch, upto=self.n)
            calls["back"] += 1
            feats_g = self._stack(self.back, outs_g, self.back_points, mask)
        return feats_f, feats_g

    def _stack(self, probe: Probe, outs: list, points: list[int], mask):
        dev = self._device
        return torch.stack([probe.features(outs[p], None if mask is None else mask.to(outs[p].device)).to(dev)
                            for p in points])

    def _diagnose(self, L, feats):
        """Name the anchor and block whose hidden state or logits / log-probs are NaN/inf, then raise.
        ``L``: the chunk's stacked ``[P, T, V]`` logits or log-probs; ``feats``: per side ``[P_s, T, d]``."""
        groups = [(self.front, self.front_name, self.front_points, feats[0], 0)]
        if len(feats) > 1:
            groups.append((self.back, self.back_name, self.back_points, feats[1], len(self.front_points)))
        for probe, name, points, feats, offset in groups:
            for k, p in enumerate(points):
                if not bool(torch.isfinite(feats[k]).all()):
                    raise NumericalError(
                        f"Anchor {name!r} produced NaN/inf hidden states at its {point_label(p)} (point {p}).",
                        "Run the anchor in float32 (float16 overflows in late blocks) and check its weights; "
                        "hf_klas never propagates NaN into Θ.")
                lp = L[offset + k]
                if not bool(torch.isfinite(lp).all()) or bool(torch.isneginf(lp).all(-1).any()):
                    raise NumericalError(
                        f"Anchor {name!r} produced NaN/inf logits / log-probabilities at its {point_label(p)} "
                        f"(point {p}) with the {probe.probe_type} probe.",
                        "Run the anchor in float32 (float16 overflows), and check its weights; for vocabularies "
                        "masked with -inf logits use kernel='reference' (it handles exact zeros).")
        raise NumericalError("Θ became non-finite although every hidden state and log-probability is finite "
                             "(float32 overflow in the KL sums).", "Use kernel='reference' (float64 totals).")


# ------------------------------------------------------------------------------------------------------
# Hidden-state stream for the feature baselines (CKA, MSE, block influence, LS replacement)
# ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def stream_hidden(front_model, back_model, batches: list[dict], *, same: bool, progress: bool = True,
                  desc: str = "hidden states"):
    """Yield ``(front_outputs [m+1, N, d_f], back_outputs [n+1, N, d_g] | None, calls)`` per batch.

    Each anchor runs once per batch (once in all for self-stitching, ``back_outputs`` is then None). Samples
    are every non-padding token (LLM) or every token of every image (ViT: the stitch maps every token).
    """
    is_lm = family_of(front_model.config).task == CAUSAL_LM
    m, n = front_model.config.num_hidden_layers, back_model.config.num_hidden_layers
    calls = {"front": 0, "back": 0}

    def flat(outs, mask):
        if mask is not None:
            keep = mask.bool()
            return torch.stack([h[keep] for h in outs]).float()
        return torch.stack([h.reshape(-1, h.shape[-1]) for h in outs]).float()

    for batch in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        mask = batch.get("attention_mask") if is_lm else None
        hf = flat(run_prefix(front_model, batch, upto=m), mask)
        calls["front"] += 1
        hg = None
        if not same:
            hg = flat(run_prefix(back_model, batch, upto=n), mask)
            calls["back"] += 1
        yield hf, hg, calls
