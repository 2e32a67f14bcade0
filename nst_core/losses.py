"""Content, style and smoothness losses.

Content and style losses are divided by the magnitude of their target, so their weights mean the
same for any layer, image size or set of weights (original Caffe VGG or torchvision).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from . import statistics as st
from .statistics import LayerStyle
from .transport import W2Style


def content_loss(features: torch.Tensor, target: torch.Tensor,
                 weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Relative MSE between ``features`` ``[B,C,H,W]`` and ``target`` (same shape or batch 1).

    ``weights`` (``[B or 1,1,H,W]``) weigh each position's error (a content-strength mask).
    """
    err = (features - target).pow(2)
    if weights is not None:
        err = err * weights
    return err.mean() / target.pow(2).mean().clamp_min(1e-12)


def style_loss(features: torch.Tensor, target: LayerStyle, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Relative distance between the statistic of ``features`` and the target's, averaged over the batch.

    For ``moments`` it is the Gaussian W2 distance, with its exact gradient (see :mod:`.transport`).
    ``weights`` (``[B or 1,1,H,W]`` ≥ 0, a region mask on the layer's grid) make the statistic of the
    features a weighted one: the style is matched by the features under the mask.
    """
    if target.statistic == "moments":
        return W2Style(target)(features, weights=weights)
    if weights is not None:
        # weighted Gram: Σ a·f·fᵀ / Σ a, through the same statistic of √a·f
        features = features * weights.sqrt()
        stat = st.compute(target.statistic, features)
        if target.statistic == "gram":
            stat = (stat[0] * (weights[0].numel() / weights[0].sum().clamp_min(1e-12)),)
    else:
        stat = st.compute(target.statistic, features)
    return (stat[0] - target.stat[0]).pow(2).mean() / target.norm


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Smoothness: mean squared difference between neighbouring pixels (replicate-padded)."""
    x = F.pad(image, (0, 1, 0, 1), mode="replicate")
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.pow(2) + dy.pow(2)).mean()
