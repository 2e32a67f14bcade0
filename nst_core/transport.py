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
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import statistics as st
from .losses import LayerStyle


def transported_features(f: torch.Tensor, target: LayerStyle) -> Tuple[torch.Tensor, torch.Tensor]:
    """(W2² per batch item divided by C, Y = μₛ + T·(F − μ)) for flat features ``[B,C,N]``; no graph."""
    with torch.no_grad():
        c = f.shape[1]
        mean, second = st.moments(f.unsqueeze(-1))  # [B,C,N,1]: moments over the N positions
        cov = st.covariance(mean, second)
        a = target.cov_sqrt
        m = a @ cov @ a
        vals, vecs = st.eigh(0.5 * (m + m.transpose(-1, -2)))
        vals = vals.clamp_min(1e-12 * vals.abs().amax(-1, keepdim=True).clamp_min(1e-30))
        w = (a @ vecs) * vals.pow(-0.25).unsqueeze(-2)  # T = A·V·Λ^(−½)·Vᵀ·A = W·Wᵀ
        t = w @ w.transpose(-1, -2)
        t_mean = target.stat[0]
        shift = t_mean - (t @ mean.unsqueeze(-1)).squeeze(-1)
        y = torch.baddbmm(shift.unsqueeze(-1), t, f)
        trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1)
        w2 = (mean - t_mean).pow(2).mean(-1) + (trace + target.cov_trace - 2 * vals.sqrt().sum(-1)) / c
        return w2, y


class _Pull(torch.autograd.Function):
    """Returns 0; its backward is the gradient of ``scale·|F − Y|²``: ``2·scale·(F − Y)``, in two passes."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, goal: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(f, goal)
        ctx.scale = 2.0 * scale
        return f.new_zeros(())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        f, goal = ctx.saved_tensors
        return torch.sub(f, goal).mul_(grad * ctx.scale), None, None


class W2Style:
    """One layer's W2 style loss (mean over the batch, divided by the target's magnitude).

    A call with ``refresh=True`` (always the first) recomputes the transported features and returns
    the exact W2 loss and gradient. Other calls return 0 with the gradient of the upper bound described
    in the module text (its value is not computed: it would cost a pass over the features).
    """

    def __init__(self, target: LayerStyle) -> None:
        if target.statistic != "moments":
            raise ValueError(f"W2Style needs a 'moments' target, got {target.statistic!r}")
        self.target = target
        self.goal: Optional[torch.Tensor] = None

    def __call__(self, features: torch.Tensor, refresh: bool = True) -> torch.Tensor:
        """The loss of ``features`` ``[B,C,H,W]``."""
        value = None
        if refresh or self.goal is None or self.goal.shape != features.shape:
            b, c = features.shape[:2]
            w2, goal = transported_features(features.reshape(b, c, -1), self.target)
            # the goal takes the features' layout (NHWC or not): the pull is then a plain subtraction
            self.goal = torch.empty_like(features).copy_(goal.reshape(features.shape))
            value = w2.mean() / self.target.norm
        pull = _Pull.apply(features, self.goal, 1.0 / features.numel()) / self.target.norm
        return pull if value is None else pull + value
