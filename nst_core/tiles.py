"""Tiled evaluation of one scale's objective: the same losses as :class:`.objective.Objective`, in pieces.

An image larger than memory is cut into tiles of ``settings.tile`` px. Each tile is read with a halo
of ``halo`` px on every side, so that the features of the positions it *owns* (its interior) see
most of the context they see in the whole image; every feature position is owned by exactly one
tile. The losses are computed on owned positions only, and each tile's backward pass adds into
``image.grad`` (halo pixels receive contributions from several tiles: that is the whole image's
gradient, piece by piece). Peak memory follows the crop (tile + 2·halo), not the image.

- **Alignment.** Cuts lie on multiples of ``align`` = 2^(pools before the deepest layer) px (16 for
  relu5_1), and so does the halo, so every layer's grid of a crop is a slice of the whole image's grid.
- **Shift.** The grid moves by a random offset (a multiple of ``align``, from a generator seeded with
  ``settings.seed``: runs are deterministic) at every step, so no seam settles anywhere.
- **Global statistics.** A style statistic is a mean over all positions. A no-grad pass over the tiles
  gathers each layer's (masked: weighted) statistic over the owned positions: the mean and covariance
  merged with Chan's update in float64 (W2), or the raw second moment Σ a·f·fᵀ (Grams). Given the
  global statistic, the gradient of the global loss with respect to a tile's features is an affine
  function of those features alone:
  W2: 2·s·a·((I − T)(F − μ) + (μ − μₛ)) with T built once per layer from the global moments;
  Gram: (K + Kᵀ)·a·F with K = ∂loss/∂(Σ a·f·fᵀ), from autograd on the C×C statistic.
  Each tile then backpropagates that affine pull. Content and smoothness are local: sums over owned
  positions divided by the whole image's counts (means over the whole image, as in the objective).
- **W2 between refreshes.** The whole-image objective keeps each position's transported feature
  Y = μₛ + T(F − μ) for ``transport_every`` steps. Here those goals are stored at full size per layer,
  on the device (:data:`STORE_GOALS`): 122 floats per output pixel for relu1_1…relu5_1, about 8× the
  optimiser's image buffers but a fifth or less of a whole-image pass. Chosen by measurement
  (``bench/tiles.py``, BENCHMARKS.md): it keeps the whole objective's iterates (the tiled run is as
  close to the whole run as 1e-4 noise on the content moves it) and its speed, with a gather pass
  only on refresh steps. A refresh at every step instead needs no goals, but it is another algorithm, exact
  W2 descent: with the presets' weights it kept much less of the photo (referee content distance
  0.75 against 0.47 for the whole image at 160 px, where the whole image with ``transport_every=1``
  behaves the same), and it costs a no-grad pass over all tiles at every step. Runs whose every step
  is a refresh (L-BFGS, ``transport_every=1``) store no goals.
- **Halo.** :data:`DEFAULT_HALO` = 64 px, measured (``bench/tiles.py``, 384 px, tiles of 128 px):
  the tiled gradient of a refresh against the whole image's has a relative error of 45 % without a
  halo, 20 % at 16 px, 6.7 % at 32 px, 1.7 % at 48 px and 0.33 % at 64 px, where it reaches the floor
  of bf16 rounding (0.30 % at 96 px) while the crops cost 1.56× the tile's area at 512 px tiles.

Content and style *targets* are also computed tile by tile when their images exceed one crop, so no
whole-image pass runs at this scale. ``extra_loss`` and the smoothness term take the whole image
(they are image-sized, not feature-sized). ``compile`` is not used in tiles: crop shapes change with
the shift and would recompile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import statistics as st
from .extractor import Extractor
from .image import resize
from .layers import layer_channels, pools_before
from .losses import tv_loss
from .precision import autocast, use_bf16
from .presets import Settings
from .statistics import LayerStyle
from .targets import ContentTarget, StyleTarget, mask_at, region_masks, run_layers
from .transport import Transport, _Pull, transport_map

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

        ``hw`` is the image's size: the last tile of a row owns up to the layer grid's edge (H // stride).
        """
        y0, y1, x0, x1 = self.own
        cy, cx = self.crop[0] // stride, self.crop[2] // stride
        gy = slice(y0 // stride, hw[0] // stride if y1 == hw[0] else y1 // stride)
        gx = slice(x0 // stride, hw[1] // stride if x1 == hw[1] else x1 // stride)
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


class _Geometry:
    """Strides and full-size grids of the layers at one image size, and the tile grid parameters."""

    def __init__(self, extractor: Extractor, layers: Sequence[str], hw: Tuple[int, int], tile: int,
                 halo: int) -> None:
        check_tile(tile, halo)
        self.hw = tuple(hw)
        self.align = extractor.min_edge(layers)
        self.tile = max(self.align, tile // self.align * self.align)
        self.halo = round_up(halo, self.align)
        self.stride = {n: 2 ** pools_before(extractor.arch, n) for n in layers}
        self.grid = {n: (hw[0] // s, hw[1] // s) for n, s in self.stride.items()}

    def tiles(self, offset: Tuple[int, int] = (0, 0)) -> List[Tile]:
        """The tile grid shifted by ``offset`` px."""
        return tile_grid(self.hw, self.tile, self.halo, offset, self.align)

    def owned(self, tile: Tile, name: str):
        """(global, local) slices of ``tile``'s owned positions on layer ``name``."""
        return tile.owned(self.stride[name], self.hw)


def _crop(image: torch.Tensor, tile: Tile) -> torch.Tensor:
    y0, y1, x0, x1 = tile.crop
    return image[..., y0:y1, x0:x1]


def _at(t: Optional[torch.Tensor], rows: slice, cols: slice) -> Optional[torch.Tensor]:
    return None if t is None else t[..., rows, cols]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], -1)


def tiled_features(extractor: Extractor, image: torch.Tensor, layers: Sequence[str], tile: int,
                   halo: int = DEFAULT_HALO) -> Dict[str, torch.Tensor]:
    """``extractor(image, layers)`` without a graph, computed tile by tile (fp32, as targets are).

    Each layer's full-size output is assembled from the owned positions of the tiles; with a halo
    that covers the image it equals the whole pass.
    """
    geo = _Geometry(extractor, layers, tuple(image.shape[-2:]), tile, halo)
    out: Dict[str, torch.Tensor] = {}
    with torch.inference_mode(False), torch.no_grad():
        for t in geo.tiles():
            feats = extractor(_crop(image, t), list(layers))
            for n in layers:
                f = feats[n]
                if n not in out:
                    out[n] = f.new_zeros((f.shape[0], f.shape[1], *geo.grid[n]))
                (gy, gx), (ly, lx) = geo.owned(t, n)
                out[n][..., gy, gx] = f[..., ly, lx]
    return out


class _Moments:
    """Mean, covariance and mass of weighted positions, merged over pieces with Chan's update (float64)."""

    def __init__(self) -> None:
        self.mass: Optional[torch.Tensor] = None
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None

    def add(self, f: torch.Tensor, weights: Optional[torch.Tensor]) -> None:
        """Fold in flat features ``[B,C,N]`` with optional weights ``[B or 1,1,N]``."""
        if f.shape[-1] == 0:
            return
        mean, cov, mass = st.centred_moments(f, weights)
        m2 = cov * mass[:, None, None]
        if self.mass is None:
            self.mass, self.mean, self.m2 = mass, mean, m2
            return
        total = self.mass + mass
        delta = mean - self.mean
        share = mass / total.clamp_min(1e-30)
        self.mean = self.mean + delta * share[:, None]
        self.m2 = self.m2 + m2 + delta[:, :, None] * delta[:, None, :] * (self.mass * share)[:, None, None]
        self.mass = total

    def result(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean ``[B,C]``, covariance ``[B,C,C]``, mass ``[B]``)."""
        return self.mean, self.m2 / self.mass.clamp_min(1e-30)[:, None, None], self.mass


class _Second:
    """Σ a·f·fᵀ ``[B,C,C]`` (float64) and Σ a ``[B]`` over pieces: what a Gram is made of."""

    def __init__(self) -> None:
        self.sum: Optional[torch.Tensor] = None
        self.mass: Optional[torch.Tensor] = None

    def add(self, f: torch.Tensor, weights: Optional[torch.Tensor]) -> None:
        """Fold in flat features ``[B,C,N]`` with optional weights ``[B or 1,1,N]``."""
        fw = f if weights is None else f * weights
        s = (fw @ f.transpose(-1, -2)).to(st.precise_dtype(f.device))
        m = (torch.full((f.shape[0],), float(f.shape[-1]), device=f.device) if weights is None
             else weights.expand(f.shape[0], 1, -1).sum((-1, -2)))
        m = m.to(s.dtype)
        self.sum = s if self.sum is None else self.sum + s
        self.mass = m if self.mass is None else self.mass + m


def gram_statistic(statistic: str, second: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """The (differentiable) Gram statistic from S = Σ a·f·fᵀ and Σ a, as :func:`.losses.style_loss` forms it.

    ``gram``: S / (C·Σ a); ``gram_normalized``: S / (‖f_i‖·‖f_j‖) with ‖f_i‖ = √S_ii (weights enter
    through √a·f, so an unweighted and a weighted one differ only in S).
    """
    c = second.shape[-1]
    if statistic == "gram":
        return second / (c * mass.clamp_min(1e-12)[:, None, None])
    if statistic == "gram_normalized":
        norms = second.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt().clamp_min(1e-8)
        return second / (norms[:, :, None] * norms[:, None, :])
    raise ValueError(f"statistic {statistic!r} is not a Gram statistic; choose 'gram' or 'gram_normalized'")


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
        geo = _Geometry(extractor, target.layers, size, tile, halo)
        acc = {n: _Moments() if target.statistic == "moments" else _Second() for n in target.layers}
        with torch.inference_mode(False), torch.no_grad():
            for t in geo.tiles():
                feats = extractor(_crop(image, t), list(target.layers))
                for n in target.layers:
                    _, (ly, lx) = geo.owned(t, n)
                    acc[n].add(_flat(feats[n][..., ly, lx].float()), None)
        one = {}
        for n, a in acc.items():
            if target.statistic == "moments":
                mean, cov, _ = a.result()
                one[n] = (mean, cov + mean[:, :, None] * mean[:, None, :])
            else:
                one[n] = (gram_statistic(target.statistic, a.sum, a.mass).float(),)
        stats.append(one)
    with torch.no_grad():
        return {n: LayerStyle.prepare(target.statistic, st.blend([s[n] for s in stats], list(target.blend_weights)))
                for n in target.layers}


# --------------------------------------------------------------------------- style terms


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
        g = torch.einsum("bij,bjhw->bihw", matrix, f).mul_(grad)
        return (g if weights is None else g.mul_(weights)), None, None


class _W2Term:
    """One layer's W2 loss over the whole image, evaluated tile by tile (see the module text)."""

    def __init__(self, target: LayerStyle, weights: Optional[torch.Tensor], store_goals: bool) -> None:
        self.target = target
        self.weights = weights  # the region mask on the layer's full grid, or None
        self.store_goals = store_goals
        self.map: Optional[Transport] = None
        self.goal: Optional[torch.Tensor] = None
        self.acc: Optional[_Moments] = None
        self.scale = 0.0
        self.value: Optional[torch.Tensor] = None

    def needs_gather(self, exact: bool) -> bool:
        """Whether this step must gather the global moments first."""
        return exact or self.map is None or not self.store_goals

    def gather(self, f: torch.Tensor, rows: slice, cols: slice) -> None:
        """Fold in a tile's owned features ``[B,C,h,w]`` (no graph)."""
        if self.acc is None:
            self.acc = _Moments()
        w = _at(self.weights, rows, cols)
        self.acc.add(_flat(f), None if w is None else _flat(w))

    def finish(self, grid: Tuple[int, int], like: torch.Tensor) -> None:
        """Build the transport from the gathered moments; set the value and the pull's scale."""
        mean, cov, _ = self.acc.result()
        self.acc = None
        t = transport_map(mean, cov, self.target)
        self.value = (t.w2.mean() / self.target.norm).to(like.device, torch.float32)
        self.map = t.to(like.device, like.dtype)
        b, c = mean.shape
        mass = grid[0] * grid[1] if self.weights is None else float(self.weights.sum()) / self.weights.shape[0]
        self.scale = 1.0 / (b * c * max(mass, 1e-12) * self.target.norm)

    def pull(self, f: torch.Tensor, rows: slice, cols: slice, refreshed: bool) -> torch.Tensor:
        """0, with the gradient of the W2 loss (or its stored-goal bound) for a tile's owned features."""
        if refreshed or not self.store_goals:
            goal = f.detach() - self.map.residual(_flat(f.detach())).reshape(f.shape)
            if self.store_goals:  # (allocated by the objective before a refresh)
                self.goal[..., rows, cols] = goal
        else:
            goal = self.goal[..., rows, cols]
        return _Pull.apply(f, goal, self.scale, _at(self.weights, rows, cols))


class _GramTerm:
    """One layer's Gram loss over the whole image: the global statistic from a gather, then linear pulls."""

    def __init__(self, target: LayerStyle, weights: Optional[torch.Tensor]) -> None:
        self.target = target
        self.weights = weights
        self.acc: Optional[_Second] = None
        self.matrix: Optional[torch.Tensor] = None
        self.value: Optional[torch.Tensor] = None

    def needs_gather(self, exact: bool) -> bool:  # noqa: D102 - the statistic is needed at every step
        return True

    def gather(self, f: torch.Tensor, rows: slice, cols: slice) -> None:
        """Fold in a tile's owned features ``[B,C,h,w]`` (no graph)."""
        if self.acc is None:
            self.acc = _Second()
        w = _at(self.weights, rows, cols)
        self.acc.add(_flat(f), None if w is None else _flat(w))

    def finish(self, grid: Tuple[int, int], like: torch.Tensor) -> None:
        """The loss of the global statistic and K + Kᵀ, K = ∂loss/∂(Σ a·f·fᵀ)."""
        second = self.acc.sum.detach().requires_grad_(True)
        mass = self.acc.mass
        if self.weights is not None:  # style_loss rescales by the first item's mask mass
            mass = torch.full_like(mass, float(self.weights[0].sum()))
        self.acc = None
        with torch.enable_grad():
            stat = gram_statistic(self.target.statistic, second, mass)
            loss = (stat - self.target.stat[0].to(stat)).pow(2).mean() / self.target.norm
            (k,) = torch.autograd.grad(loss, second)
        self.value = loss.detach().to(like.device, torch.float32)
        self.matrix = (k + k.transpose(-1, -2)).to(like.device, like.dtype)

    def pull(self, f: torch.Tensor, rows: slice, cols: slice, refreshed: bool) -> torch.Tensor:
        """0, with the gradient of the global Gram loss for a tile's owned features."""
        return _Affine.apply(f, self.matrix, _at(self.weights, rows, cols))


# --------------------------------------------------------------------------- the objective


class TiledObjective:
    """The objective of one pyramid scale (:class:`.objective.Objective`), evaluated in tiles.

    ``halo`` (default :data:`DEFAULT_HALO`) is rounded up to the alignment; ``store_goals`` (default
    :data:`STORE_GOALS`) keeps the W2 goals between refreshes at full size (see the module text).
    """

    def __init__(self, extractor: Extractor, settings: Settings, hw: Tuple[int, int],
                 content: Optional[ContentTarget], regions: Tuple[StyleTarget, ...],
                 extra_loss: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, halo: Optional[int] = None,
                 store_goals: Optional[bool] = None) -> None:
        self.extractor, self.settings, self.hw = extractor, settings, tuple(hw)
        self.content, self.regions, self.extra_loss = content, regions, extra_loss
        self.bf16 = use_bf16(settings, extractor.device)
        self.layers = run_layers(content, regions)
        halo = DEFAULT_HALO if halo is None else halo
        if store_goals is None:  # goals only help when some steps are not refreshes
            store_goals = STORE_GOALS and needs_goals(settings)
        self.geo = _Geometry(extractor, self.layers, self.hw, int(settings.tile), halo)
        self.gen = torch.Generator().manual_seed(int(settings.seed))
        dev = extractor.device
        reach = self.geo.tile + 2 * self.geo.halo  # the largest crop
        if content is not None:
            grid = self.geo.grid[content.layer]
            if max(self.hw) <= reach:
                self.content_feats = content.at_size(extractor, self.hw).clone()
            else:
                image = resize(content.image.to(dev), self.hw)
                self.content_feats = tiled_features(extractor, image, [content.layer], self.geo.tile,
                                                    self.geo.halo)[content.layer]
            self.content_norm = self.content_feats.pow(2).mean().clamp_min(1e-12)
            self.content_weights = content.weights_at(grid, dev)
        masks = region_masks(regions, self.hw, dev)
        self.terms: Dict[Tuple[int, str], object] = {}
        for k, t in enumerate(regions):
            targets = style_at(extractor, t, max(self.hw), self.geo.tile, self.geo.halo)
            for n in t.layers:
                weights = mask_at(masks[k], self.geo.grid[n], dev)
                self.terms[(k, n)] = (_W2Term(targets[n], weights, store_goals) if t.statistic == "moments"
                                      else _GramTerm(targets[n], weights))

    # -- one tile's network pass

    def _forward(self, image: torch.Tensor, tile: Tile) -> Dict[str, torch.Tensor]:
        s = self.settings
        x = _crop(image, tile)
        if s.channels_last and x.device.type in ("cpu", "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, self.bf16):
            return self.extractor(x, self.layers, checkpoint=s.checkpoint)

    def _offset(self) -> Tuple[int, int]:
        """This step's random shift of the grid (multiples of the alignment below the tile size)."""
        steps = self.geo.tile // self.geo.align
        oy, ox = torch.randint(0, steps, (2,), generator=self.gen).tolist()
        return oy * self.geo.align, ox * self.geo.align

    def _gather(self, image: torch.Tensor, tiles: List[Tile], terms: List[Tuple[int, str]]) -> None:
        """A no-grad pass over the tiles: the global statistics of ``terms``' layers."""
        with torch.no_grad():
            for t in tiles:
                feats = self._forward(image.detach(), t)
                for key in terms:
                    n = key[1]
                    (gy, gx), (ly, lx) = self.geo.owned(t, n)
                    self.terms[key].gather(feats[n][..., ly, lx].float(), gy, gx)
                del feats
        like = image.new_zeros(())
        for key in terms:
            self.terms[key].finish(self.geo.grid[key[1]], like)

    def _allocate_goals(self, image: torch.Tensor, keys: List[Tuple[int, str]]) -> None:
        for key in keys:
            term = self.terms[key]
            if isinstance(term, _W2Term) and term.store_goals and term.goal is None:
                c = layer_channels(key[1])
                term.goal = image.new_zeros((image.shape[0], c, *self.geo.grid[key[1]]))

    def gradient(self, image: torch.Tensor, exact: bool = True) -> Dict[str, torch.Tensor]:
        """Accumulate the total loss's gradient into ``image.grad`` tile by tile; return the loss parts.

        Same contract as :meth:`.objective.Objective.gradient`: ``exact`` refreshes the W2 transport
        (its value is 0 on the other steps, only its gradient counts).
        """
        s = self.settings
        tiles = self.geo.tiles(self._offset())
        refresh = [key for key, term in self.terms.items() if term.needs_gather(exact)]
        if refresh:
            self._allocate_goals(image, refresh)
            self._gather(image, tiles, refresh)
        refreshed = set(refresh)
        content_sum = image.new_zeros(())
        c_count = None
        for t in tiles:
            feats = self._forward(image, t)
            loss = image.new_zeros(())
            if self.content is not None:
                n = self.content.layer
                (gy, gx), (ly, lx) = self.geo.owned(t, n)
                f = feats[n][..., ly, lx].float()
                err = (f - self.content_feats[..., gy, gx]).pow(2)
                if self.content_weights is not None:
                    err = err * self.content_weights[..., gy, gx]
                if c_count is None:
                    c_count = f.shape[0] * f.shape[1] * self.geo.grid[n][0] * self.geo.grid[n][1]
                c = err.sum() / (c_count * self.content_norm)
                content_sum = content_sum + c.detach()
                loss = loss + s.content_weight * self.content.weight * c
            for (k, n), term in self.terms.items():
                region = self.regions[k]
                weight = region.weight * region.layer_weights[region.layers.index(n)]
                (gy, gx), (ly, lx) = self.geo.owned(t, n)
                f = feats[n][..., ly, lx].float()
                loss = loss + s.style_weight * weight * term.pull(f, gy, gx, (k, n) in refreshed)
            if loss.requires_grad:
                loss.backward()
            del feats, loss
        return self._parts(image, content_sum, refreshed)

    def _parts(self, image: torch.Tensor, content: torch.Tensor, refreshed) -> Dict[str, torch.Tensor]:
        """The whole-image terms (smoothness, extra) with their backward, and the loss parts."""
        s = self.settings
        parts: Dict[str, torch.Tensor] = {}
        total = image.new_zeros(())
        if self.content is not None:
            parts["content"] = content
            total = total + s.content_weight * self.content.weight * content
        if self.regions:
            sl = image.new_zeros(())
            for (k, n), term in self.terms.items():
                if (k, n) in refreshed:
                    region = self.regions[k]
                    sl = sl + region.weight * region.layer_weights[region.layers.index(n)] * term.value
            parts["style"] = sl
            total = total + s.style_weight * sl
        local = image.new_zeros(())
        if s.tv_weight > 0:
            tv = tv_loss(image)
            parts["tv"] = tv.detach()
            local = local + s.tv_weight * tv
        if self.extra_loss is not None:
            extra = self.extra_loss(image)
            parts["extra"] = extra.detach()
            local = local + extra
        if local.requires_grad:
            local.backward()
        parts["total"] = (total + local).detach()
        return parts
