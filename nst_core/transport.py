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
from .image import memory_format_of
from .precision import loss_dtype
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
        return goal.new_zeros(())  # (fp32: the gradient's scale is not rounded to the features' dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        f, goal, weights = ctx.saved_tensors
        return scaled_difference(f, goal, grad * ctx.scale, weights), None, None, None


#: elements per block of :func:`scaled_difference`: its fp32 temporaries stay in the cache
BLOCK_ELEMENTS = 1 << 19


def scaled_difference(f: torch.Tensor, goal: torch.Tensor, scale: torch.Tensor,
                      weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``scale·(F − Y)·a`` in ``goal``'s dtype, returned in ``f``'s dtype and memory format.

    Computed in blocks of rows: for bf16 features the cast, the difference, the products and the
    rounding back then run in the cache, about a quarter of the time of whole-tensor passes (a mixed-
    dtype ``torch.sub`` is slower still on the CPU). Each value is the one the whole-tensor passes give.
    Elsewhere (a GPU: a kernel launch per pass and block) the whole tensor is one block.
    """
    out = torch.empty_like(f)
    rows = max(1, BLOCK_ELEMENTS // max(1, f[..., :1, :].numel())) if f.device.type == "cpu" else f.shape[-2]
    for r in range(0, f.shape[-2], rows):
        block = (Ellipsis, slice(r, r + rows), slice(None))
        d = torch.sub(f[block].to(goal.dtype), goal[block]).mul_(scale)
        out[block].copy_(d if weights is None else d.mul_(weights[block]))
    return out


class W2Style:
    """One layer's W2 style loss over an image (mean over the batch, divided by the target's magnitude),
    evaluated piece by piece: the pieces are the tiles of :class:`.objective.Objective`, or one, the whole.

    A *refresh* folds every piece's features into their moments (:meth:`gather`, into an accumulator
    the caller holds), builds the transport once (:meth:`finish`: the exact value) and gives each piece
    the exact gradient (:meth:`pull`). Other steps pull toward the transported features Y kept at the
    refresh (``store_goals``; the bound of the module text, whose value is not computed: 0).
    ``weights`` (``[B or 1,1,H,W]`` ≥ 0 on the layer's whole grid, e.g. a region mask) make both the
    statistics and the pull weighted: the style is matched by the features under the mask. Called on
    whole features, ``loss(features, refresh)`` is one piece.
    """

    def __init__(self, target: LayerStyle, weights: Optional[torch.Tensor] = None, store_goals: bool = True) -> None:
        if target.statistic != "moments":
            raise ValueError(f"W2Style needs a 'moments' target, got {target.statistic!r}")
        self.target, self.weights, self.store_goals = target, weights, store_goals
        self.map: Optional[Transport] = None
        self.goal: Optional[torch.Tensor] = None  # Y on the whole grid, in the features' layout
        self.grid: Tuple[int, int] = (0, 0)
        self.scale = 0.0
        self.value: Optional[torch.Tensor] = None

    def needs_gather(self, exact: bool) -> bool:
        """Whether this step must gather the moments first (a refresh)."""
        return exact or self.map is None or not self.store_goals

    def gather(self, acc: Optional[st.Moments], f: torch.Tensor, rows: slice, cols: slice) -> st.Moments:
        """``acc`` (None: a new gather) with a piece's features ``[B,C,h,w]`` at ``rows``, ``cols`` folded in."""
        w = None if self.weights is None else self.weights[..., rows, cols].flatten(2)
        return (acc or st.Moments()).add(f.detach().flatten(2), w)

    def finish(self, acc: st.Moments, grid: Tuple[int, int], device: torch.device) -> None:
        """Build the transport from the gathered moments; set the value and the pull's scale."""
        mean, cov, _ = acc.result()
        t = transport_map(mean, cov, self.target)
        self.value = (t.w2.mean() / self.target.norm).to(device, torch.float32)
        self.map = t.to(device, torch.float32)
        b, c = mean.shape
        mass = grid[0] * grid[1] if self.weights is None else float(self.weights.sum()) / self.weights.shape[0]
        self.scale = 1.0 / (b * c * max(mass, 1e-12) * self.target.norm)
        self.grid = tuple(grid)

    def pull(self, f: torch.Tensor, rows: slice, cols: slice, refreshed: bool) -> torch.Tensor:
        """0, with the gradient of the W2 loss (refreshed) or of its bound for a piece's features."""
        if refreshed or not self.store_goals:  # Y = F − residual, formed in the features' layout
            dtype = loss_dtype(f.dtype)  # (bf16 features: Y and the residual in fp32)
            if not self.store_goals:
                goal = torch.empty_like(f, dtype=dtype)
            else:
                shape = (*f.shape[:2], *self.grid)
                if self.goal is None or tuple(self.goal.shape) != shape or self.goal.dtype != dtype:
                    self.goal = torch.empty(shape, dtype=dtype, device=f.device, memory_format=memory_format_of(f))
                goal = self.goal[..., rows, cols]
            exact = f.detach().to(dtype)
            goal.copy_(self.map.residual(exact.flatten(2)).reshape(f.shape)).neg_().add_(exact)
        else:
            goal = self.goal[..., rows, cols]
        w = None if self.weights is None else self.weights[..., rows, cols]
        return _Pull.apply(f, goal, self.scale, w)

    def __call__(self, features: torch.Tensor, refresh: bool = True) -> torch.Tensor:
        """The loss of whole features ``[B,C,H,W]``; a refresh on the first call and on a new shape."""
        whole = (slice(None), slice(None))
        if self.needs_gather(refresh) or (self.goal is not None and self.goal.shape != features.shape):
            self.finish(self.gather(None, features, *whole), tuple(features.shape[-2:]), features.device)
            return self.pull(features, *whole, True) + self.value
        return self.pull(features, *whole, False)
