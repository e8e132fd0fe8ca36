"""Tuned lens: one affine translator per point before the anchor's final norm + head.

``P_p(x) = softmax(head(norm(h + h W_p + b_p)))`` with ``W_p, b_p`` zero-initialised, so an untrained tuned
lens *is* the logit lens. The translators are trained to match the anchor's own final distribution with
``KL(P_final || P_p)`` (Belrose et al., 2023), which mostly fixes the miscalibration of the logit lens in
early blocks. The last point (the final block output) is the anchor's output itself and has no translator.

Training is deliberately small by default: one pass over the calibration batches caches the block outputs
of up to ``max_tokens`` token positions, then ``max_steps`` Adam steps on random minibatches of
``tokens_per_step`` positions. No labels are needed.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..activations import run_prefix
from ..errors import CalibrationError, NumericalError
from .base import Probe, ProbeConfig

#: exp() of log-probs below about -87 underflows: torch's CPU exp takes a ~60x slower path there and the
#: denormal results slow every later op; p < 2e-35 is 0 for any float32 KL term.
EXP_FLOOR = -80.0


@dataclass
class TunedLensConfig(ProbeConfig):
    max_steps: int = field(default=50, metadata={"help": "Adam steps (few by default: it starts at the logit lens)."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the translators."})
    tokens_per_step: int = field(default=64, metadata={"help": "Token positions (LLM) / images per step."})
    max_tokens: int = field(default=2048, metadata={
        "help": "Token positions cached from the calibration pass (random subset if there are more)."})
    seed: int = field(default=0, metadata={"help": "Seed for the token subset and the minibatches."})
    max_step_bytes: int = field(default=256 * 2**20, metadata={
        "help": "Bound on the [points, tokens, classes] activations kept for one backward pass."})


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Turn off gradients of the anchor's own parameters for the duration (no wasted head gradients)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@torch.no_grad()
def cache_features(probe: Probe, batches: list[dict], max_tokens: int, generator: torch.Generator,
                   progress: bool, desc: str, keep: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict]:
    """One streamed pass: the pooled/flattened features of every point, ``[num_points, N, hidden]`` (float32),
    and any batch keys named in ``keep`` concatenated per sample."""
    model = probe.anchor_model
    parts, extras = [], {k: [] for k in keep}
    total = 0
    for batch in tqdm(batches, desc=desc, disable=not progress):
        outs = run_prefix(model, batch)
        mask = batch.get("attention_mask") if probe.is_lm else None
        parts.append(torch.stack([probe.features(h, mask).float() for h in outs]))
        for k in keep:
            if k in batch:
                extras[k].append(torch.as_tensor(batch[k]).reshape(-1))
        total += parts[-1].shape[1]
        if total >= 4 * max_tokens:  # enough to draw a uniform-ish subset from; stop paying for forwards
            break
    if not parts or total == 0:
        raise CalibrationError("The calibration batches hold no tokens to train the probe on.",
                               "Pass non-empty calibration data.")
    feats = torch.cat(parts, dim=1)
    extra = {k: torch.cat(v) for k, v in extras.items() if v}
    if feats.shape[1] > max_tokens:
        idx = torch.randperm(feats.shape[1], generator=generator)[:max_tokens].sort().values
        feats = feats[:, idx].contiguous()
        extra = {k: v[idx] for k, v in extra.items()}
    return feats, extra


class TunedLens(Probe):
    probe_type = "tuned_lens"
    config_class = TunedLensConfig
    trainable = True

    def __init__(self, model, config: TunedLensConfig | None = None):
        super().__init__(model, config)
        d, p = self.hidden_size, self.num_points - 1
        self.weight = nn.Parameter(torch.zeros(p, d, d))
        self.bias = nn.Parameter(torch.zeros(p, d))

    def translate(self, feats: torch.Tensor, points: Sequence[int]) -> torch.Tensor:
        """``h + h W_p + b_p`` for each point (identity for the last point)."""
        last = self.num_points - 1
        rows = [k for k, p in enumerate(points) if p != last]
        if not rows:
            return feats
        idx = torch.tensor([points[k] for k in rows])
        h = feats[rows].to(self.weight.dtype)
        moved = h + torch.baddbmm(self.bias[idx].unsqueeze(1), h, self.weight[idx])
        if len(rows) == len(points):
            return moved
        out = feats.to(self.weight.dtype).clone()
        out[rows] = moved
        return out

    def logits(self, feats: torch.Tensor, points: Sequence[int]) -> torch.Tensor:
        return self._norm_head(self.translate(feats, list(points)))

    @torch.no_grad()
    def tile_state(self, feats, points):
        return self._norm_head_state(self.translate(feats, list(points)))

    @torch.no_grad()
    def logits_tile(self, state, start, stop, out) -> None:
        self._norm_head_tile(state, start, stop, out)

    @torch.no_grad()
    def mean_kl_to_final(self, feats: torch.Tensor, points: Sequence[int] | None = None) -> float:
        """Mean over tokens and points of ``KL(P_final || P_p)`` on cached ``[num_points, N, hidden]`` features."""
        points = list(range(self.num_points - 1)) if points is None else list(points)
        target = self.log_probs(feats[-1:], [self.num_points - 1])[0]
        p = target.clamp_min(EXP_FLOOR).exp()
        kls = []
        for k in points:
            lp = self.log_probs(feats[k:k + 1], [k])[0]
            kls.append(float((p * (target - lp)).sum(-1).mean()))
        return sum(kls) / max(len(kls), 1)

    def fit(self, batches: list[dict], progress: bool = True) -> dict:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        feats, _ = cache_features(self, batches, cfg.max_tokens, gen, progress, "tuned lens: cache features")
        n_tok = feats.shape[1]
        points = list(range(self.num_points - 1))
        per_point = max(1, cfg.tokens_per_step) * self.num_classes * 4 * 4  # logits, log-probs, grads
        group = max(1, min(len(points), cfg.max_step_bytes // max(per_point, 1)))
        eval_idx = torch.arange(min(n_tok, 256))
        with frozen(self.anchor_model):
            before = self.mean_kl_to_final(feats[:, eval_idx])
            opt = torch.optim.Adam([self.weight, self.bias], lr=cfg.lr)
            for _ in tqdm(range(cfg.max_steps), desc="tuned lens: train", disable=not progress):
                idx = torch.randint(n_tok, (min(cfg.tokens_per_step, n_tok),), generator=gen)
                batch = feats[:, idx]
                with torch.no_grad():
                    target = self.log_probs(batch[-1:], [self.num_points - 1])[0]
                    p_t = target.clamp_min(EXP_FLOOR).exp()
                opt.zero_grad(set_to_none=True)
                for start in range(0, len(points), group):
                    pts = points[start:start + group]
                    lp = self.log_probs(batch[pts[0]:pts[-1] + 1], pts)
                    loss = (p_t * (target - lp)).sum(-1).mean(-1).sum() / len(points)
                    loss.backward()
                opt.step()
            after = self.mean_kl_to_final(feats[:, eval_idx])
        if not math.isfinite(after):

            raise NumericalError("Tuned-lens training diverged (non-finite KL).", "Lower lr or max_steps.")
        return {"kl_before": before, "kl_after": after, "steps": cfg.max_steps, "tokens": n_tok}
