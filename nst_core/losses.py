"""Content, style and smoothness losses.

Content and style losses are divided by the magnitude of their target, so their weights mean the
same for any layer, image size or set of weights (original Caffe VGG or torchvision). The style
terms are evaluated piece by piece (:class:`GramStyle` here, :class:`.transport.W2Style`): a global
statistic gathered over the pieces, then a pull on each piece's features.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import statistics as st
from .statistics import LayerStyle
from .transport import W2Style


def content_loss(features: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None,
                 count: Optional[int] = None, norm: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Relative MSE between ``features`` ``[B,C,H,W]`` and ``target`` (same shape or batch 1).

    ``weights`` (``[B or 1,1,H,W]``) weigh each position's error (a content-strength mask). A piece of
    an image passes the whole image's ``count`` of values and target ``norm`` (its mean square): the
    pieces' losses then add up to the whole image's.
    """
    err = (features - target).pow(2)
    if weights is not None:
        err = err * weights
    if norm is None:
        norm = target.pow(2).mean().clamp_min(1e-12)
    return err.sum() / (err.numel() if count is None else count) / norm


class _Affine(torch.autograd.Function):
    """Returns 0; its backward is ``matrix @ f`` over channels, times ``weights``: a Gram's pull."""

    @staticmethod
    def forward(ctx, f: torch.Tensor, matrix: torch.Tensor,  # noqa: D102
                weights: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(f, matrix, weights)
        return f.new_zeros(())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        f, matrix, weights = ctx.saved_tensors
        g = torch.einsum("bij,bjhw->bihw", matrix, f.to(matrix.dtype)).mul_(grad)
        g = g if weights is None else g.mul_(weights)
        return g.to(f.dtype), None, None


class GramStyle:
    """One layer's Gram style loss over an image, piece by piece (the interface of :class:`.transport.W2Style`).

    :meth:`gather` sums S = Σ a·f·fᵀ over the pieces, :meth:`finish` takes the loss of the global
    statistic and K = ∂loss/∂S by autograd on the C×C matrix, and each piece's :meth:`pull` is then
    linear in its features: (K + Kᵀ)·a·F. ``weights`` (``[B or 1,1,H,W]`` on the layer's whole grid, a
    region mask) make the statistic that of √a·f, normalised by the first item's mask mass.
    """

    def __init__(self, target: LayerStyle, weights: Optional[torch.Tensor] = None) -> None:
        self.target, self.weights = target, weights
        self.matrix: Optional[torch.Tensor] = None
        self.value: Optional[torch.Tensor] = None

    def needs_gather(self, exact: bool) -> bool:  # noqa: D102 - the statistic is needed at every step
        return True

    def gather(self, acc: Optional[st.SecondMoment], f: torch.Tensor, rows: slice, cols: slice) -> st.SecondMoment:
        """``acc`` (None: a new gather) with a piece's features ``[B,C,h,w]`` at ``rows``, ``cols`` folded in."""
        w = None if self.weights is None else self.weights[..., rows, cols].flatten(2)
        return (acc or st.SecondMoment()).add(f.detach().flatten(2), w)

    def finish(self, acc: st.SecondMoment, grid: Tuple[int, int], device: torch.device) -> None:
        """The loss of the global statistic and K + Kᵀ."""
        second, mass = acc.sum.detach().requires_grad_(True), acc.mass
        if self.weights is not None:
            mass = torch.full_like(mass, float(self.weights[0].sum()))
        with torch.enable_grad():
            stat = st.gram_statistic(self.target.statistic, second, mass)
            loss = (stat - self.target.stat[0].to(stat)).pow(2).mean() / self.target.norm
            (k,) = torch.autograd.grad(loss, second)
        self.value = loss.detach().to(device, torch.float32)
        self.matrix = (k + k.transpose(-1, -2)).to(device, torch.float32)

    def pull(self, f: torch.Tensor, rows: slice, cols: slice, refreshed: bool = True) -> torch.Tensor:
        """0, with the gradient of the global Gram loss for a piece's features."""
        return _Affine.apply(f, self.matrix, None if self.weights is None else self.weights[..., rows, cols])

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """The loss of whole features ``[B,C,H,W]``."""
        whole = (slice(None), slice(None))
        self.finish(self.gather(None, features, *whole), tuple(features.shape[-2:]), features.device)
        return self.pull(features, *whole) + self.value


def style_term(target: LayerStyle, weights: Optional[torch.Tensor] = None, store_goals: bool = True):
    """The style term of one layer for ``target``'s statistic: :class:`.transport.W2Style` or :class:`GramStyle`."""
    if target.statistic == "moments":
        return W2Style(target, weights, store_goals)
    return GramStyle(target, weights)


def style_loss(features: torch.Tensor, target: LayerStyle, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Relative distance between the statistic of ``features`` and the target's, averaged over the batch.

    For ``moments`` it is the Gaussian W2 distance, with its exact gradient (see :mod:`.transport`).
    ``weights`` (``[B or 1,1,H,W]`` ≥ 0, a region mask on the layer's grid) make the statistic of the
    features a weighted one: the style is matched by the features under the mask. The value carries
    the gradient, not a graph of its own (no second derivatives).
    """
    return style_term(target, weights)(features)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Smoothness: mean squared difference between neighbouring pixels (replicate-padded)."""
    x = F.pad(image, (0, 1, 0, 1), mode="replicate")
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).mean()
