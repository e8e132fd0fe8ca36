"""ProbeNet: the KLAS paper's vision probes -- a linear classifier per point, trained together on frozen
pooled features.

One cached forward pass over the calibration images gives every point's pooled feature (``pooling``:
``"cls"`` = token 0, ``"mean"`` = mean over all tokens, of the raw residual stream); each feature goes
through the anchor's frozen final LayerNorm (``normalize=True``, so every point's classifier sees features of
one scale) and its own ``Linear(hidden -> num_labels)``, zero-initialised. All point classifiers train at once
(the loss is the mean of their cross-entropies) for ``epochs`` epochs (4, as in the paper) with Adam.

Labels: ``labels="auto"`` uses a ``labels``/``label`` key of the calibration batches when present, otherwise
the anchor's own predictions (so a probe can be trained on unlabelled images -- it then measures agreement
with the anchor rather than with the ground truth); ``"anchor"`` always uses the anchor's predictions.

For causal LMs use the logit lens or the tuned lens: a per-block classifier over the vocabulary would be
``hidden x vocab`` parameters per block, which is what those lenses avoid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import CalibrationError, DataError, HfKlasError
from .base import Probe, ProbeConfig
from .tuned_lens import cache_features, frozen

LABEL_SOURCES = ("auto", "anchor")


@dataclass
class ProbeNetConfig(ProbeConfig):
    epochs: int = field(default=4, metadata={"help": "Training epochs over the cached features (paper: ~4)."})
    batch_size: int = field(default=64, metadata={"help": "Images per optimisation step."})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate."})
    normalize: bool = field(default=True, metadata={
        "help": "Apply the anchor's frozen final LayerNorm to each pooled feature before its classifier."})
    labels: str = field(default="auto", metadata={
        "help": "'auto': the batches' labels when present, else the anchor's predictions; 'anchor': always "
                "the anchor's predictions."})
    max_samples: int = field(default=50000, metadata={"help": "Cap on the cached images."})
    seed: int = field(default=0, metadata={"help": "Seed for shuffling."})

    def validate(self) -> None:
        super().validate()
        if self.labels not in LABEL_SOURCES:
            raise HfKlasError(f"Unknown ProbeNet label source {self.labels!r}.", f"Use one of {LABEL_SOURCES}.")


class ProbeNet(Probe):
    probe_type = "probenet"
    config_class = ProbeNetConfig
    trainable = True

    def __init__(self, model, config: ProbeNetConfig | None = None):
        super().__init__(model, config)
        if self.is_lm:
            raise HfKlasError(
                "ProbeNet is the paper's vision probe (a linear classifier per block); for a causal LM it would "
                "be a hidden x vocab classifier per block.",
                "Use probe='logit_lens' (default) or probe='tuned_lens' for language models.",
            )
        p, c, d = self.num_points, self.num_classes, self.hidden_size
        self.weight = nn.Parameter(torch.zeros(p, c, d))
        self.bias = nn.Parameter(torch.zeros(p, c))

    def logits(self, feats: torch.Tensor, points: Sequence[int]) -> torch.Tensor:
        idx = torch.as_tensor(list(points))
        h = feats.to(self.weight.dtype)
        if self.config.normalize:
            h = self.norm(h.to(self.norm.weight.dtype)).to(self.weight.dtype)
        return torch.baddbmm(self.bias[idx].unsqueeze(1), h, self.weight[idx].transpose(1, 2))

    def fit(self, batches: list[dict], progress: bool = True) -> dict:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        keep = () if cfg.labels == "anchor" else ("labels", "label")
        feats, extra = cache_features(self, batches, cfg.max_samples, gen, progress, "probenet: cache features",
                                      keep=keep)
        n = feats.shape[1]
        labels = extra.get("labels", extra.get("label"))
        source = "batches"
        if labels is None or len(labels) != n:
            with torch.no_grad():
                labels = self._norm_head(feats[-1]).argmax(-1)
            source = "anchor predictions"
        labels = labels.long()
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise DataError(f"Probe labels must lie in 0..{self.num_classes - 1}, got {int(labels.min())}.."
                            f"{int(labels.max())}.", "Map the labels to the anchor's classes (config.label2id).")
        if n == 0:
            raise CalibrationError("No calibration images to train ProbeNet on.", "Pass calibration images.")
        opt = torch.optim.Adam([self.weight, self.bias], lr=cfg.lr)
        points = list(range(self.num_points))
        losses = []
        with frozen(self.anchor_model):
            for _ in tqdm(range(cfg.epochs), desc="probenet: train", disable=not progress):
                order = torch.randperm(n, generator=gen)
                total, seen = 0.0, 0
                for start in range(0, n, cfg.batch_size):
                    idx = order[start:start + cfg.batch_size]
                    z = self.logits(feats[:, idx], points)  # [P, B, C]
                    y = labels[idx].repeat(len(points))
                    loss = nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                    seen += len(idx)
                losses.append(total / max(seen, 1))
            with torch.no_grad():
                acc = (self.logits(feats, points).argmax(-1) == labels).float().mean(-1)
        return {"loss_per_epoch": losses, "train_accuracy_per_point": [float(a) for a in acc],
                "samples": n, "label_source": source}
