"""The tile grid of one scale's objective (:class:`.objective.Objective`), and targets analysed in tiles.

An image larger than memory is cut into tiles of ``settings.tile`` px. Each tile is read with a halo
of ``halo`` px on every side, so that the features of the positions it *owns* (its interior) see
most of the context they see in the whole image; every feature position is owned by exactly one
tile, and each tile's backward pass adds into ``image.grad`` (halo pixels receive contributions from
several tiles: that is the whole image's gradient, piece by piece). Peak memory follows the crop
(tile + 2·halo), not the image. The whole image is the grid of one tile (:class:`Geometry` with
``tile`` 0).

- **Alignment.** Cuts lie on multiples of ``align`` = 2^(pools before the deepest layer) px (16 for
  relu5_1), and so does the halo, so every layer's grid of a crop is a slice of the whole image's grid:
  a crop starts on a cell boundary of every layer and ends on one, or at the image's edge, where its
  last (partial, the pooling being in ceil mode) cells are the whole image's.
- **Shift.** The grid moves by a random offset (a multiple of ``align``, from a generator seeded with
  ``settings.seed``: runs are deterministic) at every step, so no seam settles anywhere.
- **W2 goals** (:data:`STORE_GOALS`): kept between refreshes at full size, chosen by measurement
  (``bench/tiles.py``, BENCHMARKS.md; see :mod:`.objective`).
- **Halo.** :data:`DEFAULT_HALO` = 64 px, measured (``bench/tiles.py``, 384 px, tiles of 128 px):
  the tiled gradient of a refresh against the whole image's has a relative error of 45 % without a
  halo, 20 % at 16 px, 6.7 % at 32 px, 1.7 % at 48 px and 0.33 % at 64 px, where it reaches the floor
  of bf16 rounding (0.30 % at 96 px) while the crops cost 1.56× the tile's area at 512 px tiles.

Content and style *targets* are also computed tile by tile when their images exceed one crop, so no
whole-image pass runs at a tiled scale. ``compile`` is not used in tiles: crop shapes change with the
shift and would recompile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from . import statistics as st
from .extractor import Extractor
from .image import resize
from .layers import pools_before
from .presets import Settings
from .statistics import LayerStyle
from .targets import StyleTarget

DEFAULT_HALO = 64  # px on every side of a tile (rounded up to the alignment)
STORE_GOALS = True  # keep the W2 goals between refreshes (False: refresh at every step); see the module text


# --------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Tile:
    """One tile: the pixels it owns (``own``) and the pixels it reads (``crop``), each (y0, y1, x0, x1)."""

    own: Tuple[int, int, int, int]
    crop: Tuple[int, int, int, int]

    def owned(self, stride: int, hw: Tuple[int, int]) -> Tuple[Tuple[slice, slice], Tuple[slice, slice]]:
        """(global, local) (rows, cols) slices of the owned positions on a layer of ``stride`` px.

        ``hw`` is the image's size: the last tile of a row owns up to the layer grid's edge (⌈H / stride⌉).
        """
        y0, y1, x0, x1 = self.own
        cy, cx = self.crop[0] // stride, self.crop[2] // stride
        gy = slice(y0 // stride, -(-y1 // stride) if y1 == hw[0] else y1 // stride)
        gx = slice(x0 // stride, -(-x1 // stride) if x1 == hw[1] else x1 // stride)
        return (gy, gx), (slice(gy.start - cy, gy.stop - cy), slice(gx.start - cx, gx.stop - cx))


def cuts(length: int, tile: int, offset: int, align: int) -> List[int]:
    """Boundaries 0 = c₀ < c₁ < … = ``length`` of pieces of ``tile`` px shifted by ``offset``.

    Inner cuts are ``offset + k·tile``, kept only at least ``align`` px from both ends (no sliver).
    """
    inner = [c for c in range(offset % tile, length, tile) if align <= c <= length - align]
    return [0] + inner + [length]


def tile_grid(hw: Tuple[int, int], tile: int, halo: int, offset: Tuple[int, int], align: int) -> List[Tile]:
    """The tiles of an image of size ``hw``: interiors from :func:`cuts`, crops with ``halo`` px more."""
    h, w = hw
    ys, xs = cuts(h, tile, offset[0], align), cuts(w, tile, offset[1], align)
    tiles = []
    for y0, y1 in zip(ys, ys[1:]):
        for x0, x1 in zip(xs, xs[1:]):
            crop = (max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo))
            tiles.append(Tile((y0, y1, x0, x1), crop))
    return tiles


def needs_goals(settings: Settings) -> bool:
    """Whether a run has W2 steps between refreshes (Adam with ``transport_every`` > 1): only those use goals."""
    return settings.optimizer == "adam" and int(settings.transport_every) > 1


def round_up(value: int, align: int) -> int:
    """``value`` rounded up to a multiple of ``align``."""
    return -(-int(value) // align) * align


def check_tile(tile: int, halo: int) -> None:
    """A tile size is an int ≥ 0 (0: no tiles) and a halo an int ≥ 0."""
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 0:
        raise ValueError(f"tile must be a whole number of px ≥ 0 (0: no tiles); got {tile!r}")
    if not isinstance(halo, int) or isinstance(halo, bool) or halo < 0:
        raise ValueError(f"halo must be a whole number of px ≥ 0; got {halo!r}")


# --------------------------------------------------------------------------- pieces of a pass


class Geometry:
    """Strides and whole grids of the layers at one image size, and the tiles it is cut into.

    ``tile`` 0 is the whole image: one tile that owns and reads every pixel (no halo).
    """

    def __init__(self, extractor: Extractor, layers: Sequence[str], hw: Tuple[int, int], tile: int,
                 halo: int) -> None:
        check_tile(tile, halo)
        self.hw = tuple(hw)
        self.align = extractor.min_edge(layers)
        self.tile = max(self.align, tile // self.align * self.align) if tile else 0
        self.halo = round_up(halo, self.align) if tile else 0
        self.stride = {n: 2 ** pools_before(extractor.arch, n) for n in layers}
        self.grid = {n: (-(-hw[0] // s), -(-hw[1] // s)) for n, s in self.stride.items()}  # ceil-mode pooling

    @property
    def reach(self) -> int:
        """The long edge of the largest crop (an image this large is read in one piece)."""
        return self.tile + 2 * self.halo if self.tile else max(self.hw)

    def tiles(self, offset: Tuple[int, int] = (0, 0)) -> List[Tile]:
        """The tile grid shifted by ``offset`` px (the whole image: one tile)."""
        if not self.tile:
            return [Tile((0, self.hw[0], 0, self.hw[1]), (0, self.hw[0], 0, self.hw[1]))]
        return tile_grid(self.hw, self.tile, self.halo, offset, self.align)

    def owned(self, tile: Tile, name: str):
        """(global, local) slices of ``tile``'s owned positions on layer ``name``."""
        return tile.owned(self.stride[name], self.hw)


def crop(image: torch.Tensor, tile: Tile) -> torch.Tensor:
    """The pixels ``tile`` reads."""
    y0, y1, x0, x1 = tile.crop
    return image[..., y0:y1, x0:x1]


def tiled_features(extractor: Extractor, image: torch.Tensor, layers: Sequence[str], tile: int,
                   halo: int = DEFAULT_HALO) -> Dict[str, torch.Tensor]:
    """``extractor(image, layers)`` without a graph, computed tile by tile (fp32, as targets are).

    Each layer's full-size output is assembled from the owned positions of the tiles; with a halo
    that covers the image it equals the whole pass.
    """
    geo = Geometry(extractor, layers, tuple(image.shape[-2:]), tile, halo)
    out: Dict[str, torch.Tensor] = {}
    with torch.inference_mode(False), torch.no_grad():
        for t in geo.tiles():
            feats = extractor(crop(image, t), list(layers))
            for n in layers:
                f = feats[n]
                if n not in out:
                    out[n] = f.new_zeros((f.shape[0], f.shape[1], *geo.grid[n]))
                (gy, gx), (ly, lx) = geo.owned(t, n)
                out[n][..., gy, gx] = f[..., ly, lx]
    return out


def style_at(extractor: Extractor, target: StyleTarget, long_edge: int, tile: int,
             halo: int = DEFAULT_HALO) -> Dict[str, LayerStyle]:
    """``target.at_size(extractor, long_edge)``, with each style image analysed tile by tile when it
    is larger than one crop (``tile`` + 2·``halo``): no whole-image pass of a large style image."""
    min_edge = extractor.min_edge(target.layers)
    sizes = [target.style_size(tuple(im.shape[-2:]), long_edge, min_edge) for im in target.images]
    if max(max(s) for s in sizes) <= tile + 2 * halo:
        return target.at_size(extractor, long_edge)
    return tiled_style(extractor, target, sizes, tile, halo)


def tiled_style(extractor: Extractor, target: StyleTarget, sizes: Sequence[Tuple[int, int]], tile: int,
                halo: int) -> Dict[str, LayerStyle]:
    """The per-layer targets of ``target``'s images analysed at ``sizes``, gathered tile by tile."""
    stats: List[Dict[str, st.Stat]] = []
    for im, size in zip(target.images, sizes):
        image = resize(im.to(extractor.device), size)
        geo = Geometry(extractor, target.layers, size, tile, halo)
        acc = {n: st.Moments() if target.statistic == "moments" else st.SecondMoment() for n in target.layers}
        with torch.inference_mode(False), torch.no_grad():
            for t in geo.tiles():
                feats = extractor(crop(image, t), list(target.layers))
                for n in target.layers:
                    _, (ly, lx) = geo.owned(t, n)
                    acc[n].add(feats[n][..., ly, lx].float().flatten(2))
        one = {}
        for n, a in acc.items():
            if target.statistic == "moments":
                mean, cov, _ = a.result()
                one[n] = (mean, cov + mean[:, :, None] * mean[:, None, :])
            else:
                one[n] = (st.gram_statistic(target.statistic, a.sum, a.mass).float(),)
        stats.append(one)
    with torch.no_grad():
        return {n: LayerStyle.prepare(target.statistic, st.blend([s[n] for s in stats], list(target.blend_weights)))
                for n in target.layers}
