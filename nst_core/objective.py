"""The objective of one pyramid scale: content, style (per region) and smoothness losses of an image."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from .extractor import Extractor
from .losses import content_loss, style_loss, tv_loss
from .precision import autocast, use_bf16
from .presets import Settings
from .targets import ContentTarget, StyleTarget, mask_at, region_masks, run_layers
from .transport import W2Style

ExtraLossFn = Callable[[torch.Tensor], torch.Tensor]  # image [B,3,h,w] at the current scale -> weighted scalar loss


class Objective:
    """Computes the weighted losses of an image at one scale."""

    def __init__(self, extractor: Extractor, settings: Settings, hw: Tuple[int, int],
                 content: Optional[ContentTarget], regions: Tuple[StyleTarget, ...],
                 extra_loss: Optional[ExtraLossFn] = None) -> None:
        self.extractor = extractor
        self.settings = settings
        self.hw = hw
        self.content = content
        self.regions = regions
        self.extra_loss = extra_loss
        self.bf16 = use_bf16(settings, extractor.device)
        dev = extractor.device
        self.content_feats = content.at_size(extractor, hw).clone() if content is not None else None
        self.content_weights: Dict[Tuple[int, int], Optional[torch.Tensor]] = {}
        self.region_masks = region_masks(regions, hw, dev)
        self.style_targets = [t.at_size(extractor, max(hw)) for t in regions]
        self.layers = run_layers(content, regions)
        self.w2: Dict[Tuple[int, str], W2Style] = {}  # moments: keeps each layer's transport between refreshes
        self.grid_masks: Dict[Tuple[int, Tuple[int, int]], Optional[torch.Tensor]] = {}

    def _mask(self, k: int, grid: Tuple[int, int]) -> Optional[torch.Tensor]:
        key = (k, grid)
        if key not in self.grid_masks:
            self.grid_masks[key] = mask_at(self.region_masks[k], grid, self.extractor.device)
        return self.grid_masks[key]

    def _style(self, k: int, name: str, feats: torch.Tensor, exact: bool) -> torch.Tensor:
        target = self.style_targets[k][name]
        weights = self._mask(k, tuple(feats.shape[-2:]))
        if target.statistic == "moments":
            if (k, name) not in self.w2:
                self.w2[(k, name)] = W2Style(target)
            return self.w2[(k, name)](feats, refresh=exact, weights=weights)
        return style_loss(feats, target, weights)

    def __call__(self, image: torch.Tensor, exact: bool = True) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Total loss and its parts. With ``exact=False`` the W2 style loss reuses its last transport:
        its gradient is approximate and its value is 0 (read the losses only from exact calls)."""
        s = self.settings
        nhwc = s.channels_last and image.device.type in ("cpu", "cuda")
        x = image.contiguous(memory_format=torch.channels_last) if nhwc else image
        with autocast(x.device, self.bf16):
            feats = self.extractor(x, self.layers, checkpoint=s.checkpoint, compile=s.compile)
        parts: Dict[str, torch.Tensor] = {}
        total = image.new_zeros(())
        if self.content is not None:
            f = feats[self.content.layer].float()
            grid = tuple(f.shape[-2:])
            if grid not in self.content_weights:
                self.content_weights[grid] = self.content.weights_at(grid, f.device)
            weights = self.content_weights[grid]
            c = content_loss(f, self.content_feats, weights)
            parts["content"] = c
            total = total + s.content_weight * self.content.weight * c
        if self.regions:
            sl = sum(t.weight * sum(w * self._style(k, n, feats[n].float(), exact)
                                    for n, w in zip(t.layers, t.layer_weights))
                     for k, t in enumerate(self.regions))
            parts["style"] = sl
            total = total + s.style_weight * sl
        if s.tv_weight > 0:
            tv = tv_loss(image)
            parts["tv"] = tv
            total = total + s.tv_weight * tv
        if self.extra_loss is not None:
            extra = self.extra_loss(image)
            parts["extra"] = extra
            total = total + extra
        parts["total"] = total
        return total, parts

    def gradient(self, image: torch.Tensor, exact: bool = True) -> Dict[str, torch.Tensor]:
        """Accumulate the total loss's gradient into ``image.grad``; return the (detached) loss parts.

        This is the objective's interface to the optimisers: a tiled objective (``nst_core.tiles``)
        implements the same call piece by piece.
        """
        total, parts = self(image, exact)
        total.backward()
        return {k: v.detach() for k, v in parts.items()}


def make_objective(extractor: Extractor, settings: Settings, hw: Tuple[int, int], content: Optional[ContentTarget],
                   regions: Tuple[StyleTarget, ...], extra_loss: Optional[ExtraLossFn] = None):
    """The objective for one pyramid scale: whole-image, or tiled when ``settings.tile`` is smaller than it."""
    if settings.tile and max(hw) > settings.tile:
        from .tiles import TiledObjective  # (lazy: the tiles are the rarer case)

        return TiledObjective(extractor, settings, hw, content, regions, extra_loss)
    return Objective(extractor, settings, hw, content, regions, extra_loss)
