"""Style against content, balanced for the pair: the style weight scaled by how far the style is.

A pair whose style is far from the content (a muted cubist palette over a bright photo, a busy
seascape over a portrait) starts with a large style loss, which then outweighs the content loss
and paints the photo away; a near pair (Tübingen under *The Starry Night*) barely moves. The style
loss of the *content image itself* measures that distance: the weighted style loss an unstyled
output would have. The style weight is multiplied by ``(REFERENCE_DISTANCE / distance) ** power``
(``Settings.style_balance`` is the power; 0 turns it off), so every pair starts with about the
same style pressure. Measured on the development set (``bench/devset.py``, BENCHMARKS.md): the
distance ranges from 0.23 to 1.1 there (moments, default layers), and the far pairs were the ones
that lost their content.

The distance is taken once per run, at a long edge of at most ``ANALYSIS_EDGE`` px, so it does not
depend on the output size; it costs one forward pass of the content and the style targets there.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .extractor import Extractor
from .image import resize_long_edge
from .losses import style_loss
from .targets import ContentTarget, StyleTarget

#: per style statistic: a pair at this distance keeps the preset's style weight. It sets the overall
#: strength: Tübingen × The Starry Night (0.235 with the default layers and moments) gets 1.23×
REFERENCE_DISTANCE = {"moments": 0.29, "gram": 0.49, "gram_normalized": 0.206}
ANALYSIS_EDGE = 256  # px: the long edge the distance is measured at (smaller outputs: their own size)
MAX_FACTOR = 4.0  # a near pair's style weight grows at most this much


def style_distance(extractor: Extractor, content: ContentTarget, regions: Sequence[StyleTarget],
                   long_edge: int) -> float:
    """The weighted style loss of the (first) content image against ``regions`` at ``long_edge`` px.

    Each region counts by its weight; masks are ignored (the whole content against each style).
    """
    edge = min(int(long_edge), ANALYSIS_EDGE)
    image = resize_long_edge(content.image[:1].to(extractor.device), edge)
    layers = sorted({n for r in regions for n in r.layers})
    # outside inference mode: the style targets computed here are kept (memo) for the optimisation
    with torch.inference_mode(False), torch.no_grad():
        feats = extractor(image, layers)
        total = mass = 0.0
        for r in regions:
            targets = r.at_size(extractor, edge)
            d = sum(w * float(style_loss(feats[n].float(), targets[n])) for n, w in zip(r.layers, r.layer_weights))
            total, mass = total + r.weight * d, mass + r.weight
    return total / max(mass, 1e-12)


def balance_factor(distance: float, power: float, statistic: str = "moments") -> float:
    """The style weight's factor for a pair at ``distance``: ``(REFERENCE_DISTANCE / distance) ** power``."""
    if power == 0:
        return 1.0
    return min(MAX_FACTOR, (REFERENCE_DISTANCE[statistic] / max(distance, 1e-6)) ** power)


def balanced_style_weight(extractor: Extractor, content: Optional[ContentTarget], regions: Sequence[StyleTarget],
                          style_weight: float, power: float, long_edge: int) -> float:
    """``style_weight`` scaled for the pair (unchanged without a content, a style or a power)."""
    if content is None or not regions or power == 0 or style_weight == 0:
        return style_weight
    distance = style_distance(extractor, content, regions, long_edge)
    return style_weight * balance_factor(distance, power, regions[0].statistic)
