"""The Wasserstein-2 style loss of one layer, minimised through transported feature targets.

For Gaussians N(μ, Σ) and N(μₛ, Σₛ), with A = Σₛ^½ and M = A·Σ·A,

    W2² = |μ − μₛ|² + tr Σ + tr Σₛ − 2·tr √M,

and T = A·M^(−½)·A is the linear optimal-transport map from N(μ, Σ) to N(μₛ, Σₛ). It needs an
eigendecomposition of M. A *refresh* computes T at the current features F and stores each position's
transported feature, Y = μₛ + T·(F − μ). Until the next refresh the loss is the plain mean squared
distance of the features to Y. That is an upper bound of W2² (Gelbrich's bound: the Gaussian W2 is the
least cost of any coupling with these moments), equal to it, with the same gradient, at the refresh
point; minimising it therefore lowers W2² (a majorise-minimise step). Between refreshes each
iteration costs one subtraction per layer: no Gram matrix, no eigensolver.

Precision: the C×C algebra (covariance, Σₛ^½, A·Σ·A, its eigendecomposition, T) runs in float64 on
the algebra device (:mod:`.precision`); the covariance comes from centred features; and the pull's
residual is formed directly as F − Y = (I − T)(F − μ) + (μ − μₛ), so its rounding error (TF32 on a GPU)
is relative to the residual rather than to F.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from . import statistics as st
from .statistics import LayerStyle


@dataclass(frozen=True)
class Transport:
    """One layer's W2 transport at given moments: the value and the affine map F ↦ F − Y, no graph.

    ``w2`` ``[B]`` is W2² divided by C (float64); ``keep`` ``[B,C,C]`` is I − T; ``mean`` ``[B,C]`` the
    moments' mean μ; ``shift`` ``[B,C]`` is μ − μₛ. A tiled objective gathers the moments over all tiles,
    builds the map once and applies it to each tile's features (:func:`transport_map`).
    """

    w2: torch.Tensor
    keep: torch.Tensor
    mean: torch.Tensor
    shift: torch.Tensor

    def residual(self, f: torch.Tensor) -> torch.Tensor:
        """F − Y = (I − T)(F − μ) + (μ − μₛ) for flat features ``[B,C,N]``, in their dtype and device."""
        with torch.no_grad():
            centred = f - self.mean.to(f.device, f.dtype).unsqueeze(-1)
            return torch.baddbmm(self.shift.to(f.device, f.dtype).unsqueeze(-1),
                                 self.keep.to(f.device, f.dtype), centred)

    def to(self, device: torch.device, dtype: torch.dtype) -> "Transport":
        """The map cast once for features of ``dtype`` on ``device`` (the value stays float64)."""
        return Transport(self.w2, self.keep.to(device, dtype), self.mean.to(device, dtype),
                         self.shift.to(device, dtype))


def transport_map(mean: torch.Tensor, cov: torch.Tensor, target: LayerStyle) -> Transport:
    """The transport from N(``mean`` ``[B,C]``, ``cov`` ``[B,C,C]``) to the target's Gaussian (float64 algebra)."""
    with torch.no_grad():
        c = cov.shape[-1]
        a = target.cov_sqrt
        dev = a.device
        mean64, cov64 = mean.to(dev, torch.float64), st.regularised(cov.to(dev, torch.float64))
        m = a @ cov64 @ a
        vals, vecs = st.eigh(0.5 * (m + m.transpose(-1, -2)))
        vals = vals.clamp_min(1e-12 * vals.abs().amax(-1, keepdim=True).clamp_min(1e-30))
        w = (a @ vecs) * vals.pow(-0.25).unsqueeze(-2)  # T = A·V·Λ^(−½)·Vᵀ·A = W·Wᵀ
        eye = torch.eye(c, dtype=torch.float64, device=dev)
        t_mean = target.stat[0]
        trace = cov64.diagonal(dim1=-2, dim2=-1).sum(-1)
        w2 = (mean64 - t_mean).pow(2).mean(-1) + (trace + target.cov_trace - 2 * vals.sqrt().sum(-1)) / c
        keep = eye - w @ w.transpose(-1, -2)  # I − T
        return Transport(w2, keep, mean, mean64 - t_mean)


def transport_residual(f: torch.Tensor, target: LayerStyle,
                       weights: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(W2² per batch item divided by C, float64; residual F − Y ``[B,C,N]``) for flat features, no graph.

    ``weights`` ``[B or 1,1,N]`` make the statistics of the current features weighted (a masked region).
    """
    with torch.no_grad():
        mean, cov, _ = st.centred_moments(f, weights)
        t = transport_map(mean, cov, target)
        return t.w2, t.residual(f)


class _Pull(torch.autograd.Function):
    """Returns 0; its backward is the gradient of ``scale·Σ a·|F − Y|²``: ``2·scale·a·(F − Y)``."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, goal: torch.Tensor, scale: float,
                weights: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(f, goal, weights)
        ctx.scale = 2.0 * scale
        return f.new_zeros(())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        f, goal, weights = ctx.saved_tensors
        g = torch.sub(f, goal).mul_(grad * ctx.scale)
        return (g if weights is None else g.mul_(weights)), None, None, None


class W2Style:
    """One layer's W2 style loss (mean over the batch, divided by the target's magnitude).

    A call with ``refresh=True`` (always the first) recomputes the transported features and returns
    the exact W2 loss and gradient. Other calls return 0 with the gradient of the upper bound described
    in the module text (its value is not computed: it would cost a pass over the features).
    ``weights`` (``[B or 1,1,H,W]`` ≥ 0, e.g. a region mask on the layer's grid) make both the statistics
    of the features and the pull weighted: the style is matched by the features under the mask.
    """

    def __init__(self, target: LayerStyle) -> None:
        if target.statistic != "moments":
            raise ValueError(f"W2Style needs a 'moments' target, got {target.statistic!r}")
        self.target = target
        self.goal: Optional[torch.Tensor] = None
        self.scale = 0.0

    def __call__(self, features: torch.Tensor, refresh: bool = True,
                 weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The loss of ``features`` ``[B,C,H,W]``."""
        value = None
        b, c = features.shape[:2]
        if refresh or self.goal is None or self.goal.shape != features.shape:
            flat_w = None if weights is None else weights.reshape(weights.shape[0], 1, -1)
            w2, residual = transport_residual(features.detach().reshape(b, c, -1), self.target, flat_w)
            # the goal Y = F − residual takes the features' layout (NHWC or not): a plain subtraction
            self.goal = torch.empty_like(features).copy_(residual.reshape(features.shape))
            self.goal.neg_().add_(features.detach())
            mass = features[0, 0].numel() if weights is None else float(weights.sum()) / weights.shape[0]
            self.scale = 1.0 / (b * c * max(mass, 1e-12) * self.target.norm)
            value = (w2.mean() / self.target.norm).to(features.device, torch.float32)
        pull = _Pull.apply(features, self.goal, self.scale, weights)
        return pull if value is None else pull + value
