"""Least-squares initialisation of the stitch layer, streamed over calibration data.

SN-Net solves ``min ||[X_f 1] M - X_g||`` with a pseudo-inverse on ~100 samples. Holding every token's
activations does not scale to LLMs, so we accumulate the normal equations ``A = X~^T X~`` and
``B = X~^T Y`` (float64) batch by batch and solve once, with a ridge term for ill-conditioned cases
(few tokens, collinear features).
"""

from __future__ import annotations

import torch


class LeastSquaresAccumulator:
    """Accumulate ``[X 1]^T [X 1]`` and ``[X 1]^T Y``; ``solve()`` gives the Linear weight and bias."""

    def __init__(self, d_in: int, d_out: int, ridge: float = 1e-4):
        self.d_in, self.d_out, self.ridge = d_in, d_out, ridge
        self.A = torch.zeros(d_in + 1, d_in + 1, dtype=torch.float64)
        self.B = torch.zeros(d_in + 1, d_out, dtype=torch.float64)
        self.count = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add token rows. ``x``: [..., d_in], ``y``: [..., d_out], ``mask``: [...] (True = use)."""
        x = x.reshape(-1, self.d_in).to(torch.float64)
        y = y.reshape(-1, self.d_out).to(torch.float64)
        if mask is not None:
            keep = mask.reshape(-1).bool()
            x, y = x[keep], y[keep]
        xa = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        self.A += xa.T @ xa
        self.B += xa.T @ y
        self.count += len(x)

    def solve(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ridge solution ``(weight [d_out, d_in], bias [d_out])``.

        The ridge is relative: ``ridge * mean(diag(X^T X))`` on the weight block only (the bias is never
        shrunk), so it means the same for any activation scale.
        """
        if self.count == 0:
            raise ValueError("No calibration tokens were accumulated; cannot fit the stitch layer.")
        A = self.A.clone()
        scale = torch.diagonal(A)[:-1].mean().clamp_min(1e-12)
        idx = torch.arange(self.d_in)
        A[idx, idx] += self.ridge * scale
        try:
            M = torch.linalg.solve(A, self.B)
        except RuntimeError:
            M = torch.linalg.lstsq(A, self.B).solution
        return M[:-1].T.contiguous(), M[-1].contiguous()

    def relative_error(self, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
        """``||y - (x W^T + b)||^2 / ||y - mean(y)||^2`` on held-out rows (1.0 = no better than the mean)."""
        x = x.reshape(-1, self.d_in).double()
        y = y.reshape(-1, self.d_out).double()
        pred = x @ weight.double().T + bias.double()
        return float(((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum().clamp_min(1e-12))
