"""Content, style and smoothness losses.

Content and style losses are divided by the magnitude of their target, so their weights mean the
same for any layer, image size or set of weights (original Caffe VGG or torchvision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from . import statistics as st


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Relative MSE between ``features`` ``[B,C,H,W]`` and ``target`` (same shape or batch 1)."""
    return (features - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


@dataclass(frozen=True)
class LayerStyle:
    """One layer's style target, prepared for a fast loss (no graph, never mutated)."""

    statistic: str
    stat: st.Stat  # each tensor has batch dimension 1
    norm: torch.Tensor  # scalar: target magnitude the loss is divided by
    cov_sqrt: Optional[torch.Tensor] = None  # moments only: Σₛ^½
    cov_trace: Optional[torch.Tensor] = None  # moments only: tr(Σₛ)

    @classmethod
    def prepare(cls, statistic: str, stat: st.Stat) -> "LayerStyle":
        """Precompute what the loss needs from a (blended) target statistic."""
        if statistic == "moments":
            mean, second = stat
            cov = st.covariance(mean, second)
            norm = second.diagonal(dim1=-2, dim2=-1).mean()
            return cls(statistic, stat, norm.clamp_min(1e-12), st.sqrtm_psd(cov),
                       cov.diagonal(dim1=-2, dim2=-1).sum(-1))
        return cls(statistic, stat, stat[0].pow(2).mean().clamp_min(1e-12))

    def to(self, device: "torch.device | str") -> "LayerStyle":
        """A copy on ``device``."""
        return LayerStyle(
            self.statistic,
            tuple(t.to(device) for t in self.stat),
            self.norm.to(device),
            None if self.cov_sqrt is None else self.cov_sqrt.to(device),
            None if self.cov_trace is None else self.cov_trace.to(device),
        )


def style_loss(features: torch.Tensor, target: LayerStyle) -> torch.Tensor:
    """Relative distance between the statistic of ``features`` and the target's, averaged over the batch.

    For ``moments`` it is the Gaussian W2 distance, with its exact gradient (see :mod:`.transport`).
    """
    if target.statistic == "moments":
        from .transport import W2Style  # (transport builds on LayerStyle, defined above)

        return W2Style(target)(features)
    stat = st.compute(target.statistic, features)
    return (stat[0] - target.stat[0]).pow(2).mean() / target.norm


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Smoothness: mean squared difference between neighbouring pixels (replicate-padded)."""
    x = F.pad(image, (0, 1, 0, 1), mode="replicate")
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).mean()
