"""The objective of one pyramid scale: content, style (per region) and smoothness losses, and their gradient.

The image is evaluated in tiles (:mod:`.tiles`); the whole image is the grid of one tile without a
halo. Each tile owns some feature positions of every layer (each position exactly one tile's) and
its losses are taken on those alone. Every term is written once, for a piece:

- **Style** (:mod:`.losses`, :mod:`.transport`). A style statistic is a mean over all positions, so
  its term first *gathers* the statistic over the pieces (masked: weighted), merged with Chan's
  update in float64 (W2 moments) or summed (Σ a·f·fᵀ for Grams). Given the global statistic, the
  gradient of the loss with respect to a piece's features is an affine function of those features
  alone, its *pull*: W2, 2·s·a·((I − T)(F − μ) + (μ − μₛ)) with T built once per layer; Gram,
  (K + Kᵀ)·a·F with K = ∂loss/∂(Σ a·f·fᵀ). With several tiles the gather is a no-grad pass of its
  own; with one tile it reads the features of the step's pass.
- **W2 between refreshes.** A refresh (every ``transport_every`` steps) keeps each position's
  transported feature Y = μₛ + T(F − μ) on the layer's whole grid, in the features' layout; the steps
  between pull toward Y (the bound of :mod:`.transport`): one forward and backward, no gather. In
  tiles the goals cost 122 floats per output pixel for relu1_1…relu5_1, a fifth or less of a
  whole-image pass, and keep the whole image's iterates; a refresh at every step would be another
  algorithm (exact W2 descent, which kept much less of the photo: BENCHMARKS.md). Runs whose every
  step is a refresh (L-BFGS, ``transport_every=1``) store no goals.
- **Content** is local: each piece's squared error over its owned positions, divided by the whole
  image's count and target magnitude. **Smoothness** and the caller's ``extra_loss`` take the whole
  image: one backward pass with the rest for the whole image, a backward of their own after the tiles
  (their image-sized graph never meets a tile's).
- **Regions** weigh each layer's positions by :func:`.targets.layer_masks` (with pixels no mask covers,
  only the positions whose receptive field stays on covered pixels); a layer left without a position
  has no term.

``between_tiles`` (the run's cancel check) is called before each tile when there are several, so a
Cancel stops within one tile; the half-accumulated gradient is dropped with the run.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Set, Tuple

import torch

from .extractor import Extractor
from .image import resize
from .losses import content_loss, style_term, tv_loss
from .precision import autocast, use_bf16
from .presets import Settings
from . import tiles
from .targets import ContentTarget, StyleTarget, layer_masks, run_layers
from .tiles import Geometry, Tile, crop, needs_goals, style_at, tiled_features

ExtraLossFn = Callable[[torch.Tensor], torch.Tensor]  # image [B,3,h,w] at the current scale -> weighted scalar loss
Key = Tuple[int, str]  # (region, layer)


class Objective:
    """The weighted losses of an image at one scale and their gradient, whole or in tiles.

    The scale is tiled when ``settings.tile`` is set and smaller than its long edge; ``halo`` (default
    :data:`.tiles.DEFAULT_HALO`) is rounded up to the alignment and ``store_goals`` (default: when some
    steps are not refreshes) keeps the W2 goals between refreshes. The style statistics are those of an
    output of long edge ``style_edge`` (default the image's; a canvas gives its output part's, so the
    margin does not change the strokes' size).
    """

    def __init__(self, extractor: Extractor, settings: Settings, hw: Tuple[int, int],
                 content: Optional[ContentTarget], regions: Tuple[StyleTarget, ...],
                 extra_loss: Optional[ExtraLossFn] = None, halo: Optional[int] = None,
                 store_goals: Optional[bool] = None, style_edge: Optional[int] = None) -> None:
        self.extractor, self.settings, self.hw = extractor, settings, tuple(hw)
        self.content, self.regions, self.extra_loss = content, regions, extra_loss
        self.bf16 = use_bf16(settings, extractor.device)
        self.layers = run_layers(content, regions)
        self.tiled = bool(settings.tile) and max(self.hw) > settings.tile
        self.geo = Geometry(extractor, self.layers, self.hw, int(settings.tile) if self.tiled else 0,
                            tiles.DEFAULT_HALO if halo is None else halo)
        self.gen = torch.Generator().manual_seed(int(settings.seed))
        if store_goals is None:
            store_goals = tiles.STORE_GOALS and needs_goals(settings)
        dev = extractor.device
        if content is not None:
            grid = self.geo.grid[content.layer]
            if max(self.hw) <= self.geo.reach:
                self.content_feats = content.at_size(extractor, self.hw).clone()
            else:
                image = resize(content.image.to(dev), self.hw)
                self.content_feats = tiled_features(extractor, image, [content.layer], self.geo.tile,
                                                    self.geo.halo)[content.layer]
            self.content_norm = self.content_feats.pow(2).mean().clamp_min(1e-12)
            self.content_count = self.content_feats.shape[1] * grid[0] * grid[1]
            self.content_weights = content.weights_at(grid, dev)
        masks = layer_masks(extractor, regions, self.hw, self.geo.grid)
        self.terms: Dict[Key, object] = {}
        edge = style_edge or max(self.hw)
        for k, t in enumerate(regions):
            targets = (style_at(extractor, t, edge, self.geo.tile, self.geo.halo) if self.tiled
                       else t.at_size(extractor, edge))
            for n in t.layers:  # (a layer whose patterns the region cannot hold has no position left)
                if masks[k][n] is None or float(masks[k][n].max()) > 0:
                    self.terms[(k, n)] = style_term(targets[n], masks[k][n], store_goals)

    def _offset(self) -> Tuple[int, int]:
        """This step's random shift of the tile grid (multiples of the alignment below the tile size)."""
        if not self.tiled:
            return 0, 0
        steps = self.geo.tile // self.geo.align
        oy, ox = torch.randint(0, steps, (2,), generator=self.gen).tolist()
        return oy * self.geo.align, ox * self.geo.align

    def _forward(self, image: torch.Tensor, tile: Tile) -> Dict[str, torch.Tensor]:
        s = self.settings
        x = crop(image, tile) if self.tiled else image
        if s.channels_last and x.device.type in ("cpu", "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, self.bf16):
            return self.extractor(x, self.layers, checkpoint=s.checkpoint, compile=s.compile and not self.tiled)

    def _owned(self, feats: Dict[str, torch.Tensor], tile: Tile,
               names: Optional[Set[str]] = None) -> Dict[str, Tuple[torch.Tensor, slice, slice]]:
        """Per layer (of ``names``, default all): the features of ``tile``'s positions, in the network's
        dtype (bf16 stays bf16: each term computes in fp32 or better), and their (rows, cols) on the
        layer's whole grid."""
        out = {}
        for n, f in feats.items():
            if names is None or n in names:
                (gy, gx), (ly, lx) = self.geo.owned(tile, n)
                out[n] = (f[..., ly, lx] if self.tiled else f, gy, gx)  # (one tile owns all: no slice)
        return out

    def _gather(self, stats: Dict[Key, object], owned: Dict[str, Tuple[torch.Tensor, slice, slice]]) -> None:
        for key in stats:
            stats[key] = self.terms[key].gather(stats[key], *owned[key[1]])

    def gradient(self, image: torch.Tensor, exact: bool = True,
                 between_tiles: Optional[Callable[[], None]] = None) -> Dict[str, torch.Tensor]:
        """Accumulate the total loss's gradient into ``image.grad``; return the (detached) loss parts.

        ``exact`` refreshes the W2 transport: on the other steps its value is 0 (read the losses only
        from exact calls) and its gradient that of the bound. ``between_tiles`` runs before each tile
        when there are several (it may raise to stop: what the step gathered and accumulated is dropped).
        """
        grid = self.geo.tiles(self._offset())
        stats = {key: None for key, term in self.terms.items() if term.needs_gather(exact)}  # gathered here
        check = between_tiles if self.tiled else None
        if stats and self.tiled:  # a no-grad pass over the tiles first
            with torch.no_grad():
                for t in grid:
                    if check is not None:
                        check()
                    feats = self._forward(image.detach(), t)
                    self._gather(stats, self._owned(feats, t, {n for _, n in stats}))
            self._finish(stats, image.device)
        content = image.new_zeros(())
        for t in grid:
            if check is not None:
                check()
            owned = self._owned(self._forward(image, t), t)
            if stats and not self.tiled:  # one tile: the statistics of this very pass
                self._gather(stats, owned)
                self._finish(stats, image.device)
            loss, c = self._pieces_loss(image, owned, stats)
            content = content + c
            if not self.tiled:  # the whole image: one backward pass for every term
                loss, local = self._local(image, loss)
            if loss.requires_grad:
                loss.backward()
            del owned, loss
        if self.tiled:  # after the tiles: the image-sized graph never meets a tile's
            loss, local = self._local(image, image.new_zeros(()))
            if loss.requires_grad:
                loss.backward()
        return self._parts(content, local, stats)

    def _pieces_loss(self, image: torch.Tensor, owned: Dict[str, Tuple[torch.Tensor, slice, slice]],
                     refreshed: Dict[Key, object]) -> Tuple[torch.Tensor, torch.Tensor]:
        """A tile's weighted content and style loss (its gradient), and its content loss (detached)."""
        s = self.settings
        loss = image.new_zeros(())
        content = image.new_zeros(())
        if self.content is not None:
            f, gy, gx = owned[self.content.layer]
            weights = None if self.content_weights is None else self.content_weights[..., gy, gx]
            c = content_loss(f, self.content_feats[..., gy, gx], weights, self.content_count * f.shape[0],
                             self.content_norm)
            content = c.detach()
            loss = loss + s.content_weight * self.content.weight * c
        if self.regions:
            sl = sum(r.weight * sum(w * self.terms[(k, n)].pull(*owned[n], (k, n) in refreshed)
                                    for n, w in zip(r.layers, r.layer_weights) if (k, n) in self.terms)
                     for k, r in enumerate(self.regions))
            loss = loss + s.style_weight * sl
        return loss, content

    def _finish(self, accs: Dict[Key, object], device: torch.device) -> None:
        for key, acc in accs.items():
            self.terms[key].finish(acc, self.geo.grid[key[1]], device)

    def _local(self, image: torch.Tensor, loss: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``loss`` plus the image-sized terms (smoothness, extra), and those terms."""
        s = self.settings
        local: Dict[str, torch.Tensor] = {}
        if s.tv_weight > 0:
            local["tv"] = tv_loss(image)
            loss = loss + s.tv_weight * local["tv"]
        if self.extra_loss is not None:
            local["extra"] = self.extra_loss(image)
            loss = loss + local["extra"]
        return loss, local

    def _parts(self, content: torch.Tensor, local: Dict[str, torch.Tensor], refreshed) -> Dict[str, torch.Tensor]:
        """The weighted loss parts (style: the refreshed terms' values) and their total, detached."""
        s = self.settings
        parts: Dict[str, torch.Tensor] = {}
        total = content.new_zeros(())
        if self.content is not None:
            parts["content"] = content
            total = total + s.content_weight * self.content.weight * content
        if self.regions:
            parts["style"] = sum(r.weight * sum(w * self.terms[(k, n)].value for n, w in zip(r.layers, r.layer_weights)
                                                if (k, n) in refreshed)
                                 for k, r in enumerate(self.regions)) + content.new_zeros(())
            total = total + s.style_weight * parts["style"]
        if "tv" in local:
            parts["tv"] = local["tv"].detach()
            total = total + s.tv_weight * parts["tv"]
        if "extra" in local:
            parts["extra"] = local["extra"].detach()
            total = total + parts["extra"]
        parts["total"] = total
        return parts

