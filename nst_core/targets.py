"""Content and style targets: values computed once from images, with no graph, never mutated.

A target keeps its source images so the optimiser can derive the same target at another scale of
the pyramid (``at_size``) without touching the original.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import math

import torch

from . import statistics as st
from .extractor import Extractor
from .image import as_rgb_batch, fit_long_edge, resize
from .layers import parse_layers
from .losses import LayerStyle


def _check_weight(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0) or value == float("inf"):
        raise ValueError(f"{name} must be a finite number ≥ 0; got {value}")
    return value


def _check_size(extractor: Extractor, image: torch.Tensor, layers: Sequence[str], what: str) -> None:
    need = extractor.min_edge(layers)
    h, w = image.shape[-2:]
    if min(h, w) < need:
        raise ValueError(
            f"{what} is {w}×{h} px, too small for layer {max(layers, key=lambda n: extractor.min_edge([n]))}: "
            f"it needs at least {need} px on each side. Use a larger image or a shallower layer."
        )


REFERENCE_EDGE = 512  # the statistics a target stores at construction use at most this long edge


class _Memo:
    """Derived targets a target has already computed, kept on the CPU (the target itself never changes)."""

    def __init__(self, limit: int = 8) -> None:
        self.limit = limit
        self.items: "OrderedDict[tuple, object]" = OrderedDict()

    def get(self, key: tuple, compute: Callable[[], object], to: Callable[[object, str], object]) -> object:
        """The value for ``key``: from the memo, or computed once and remembered."""
        if key not in self.items:
            self.items[key] = to(compute(), "cpu")
            while len(self.items) > self.limit:
                self.items.popitem(last=False)
        self.items.move_to_end(key)
        return self.items[key]


def _features(extractor: Extractor, image: torch.Tensor, layers: Sequence[str]) -> Dict[str, torch.Tensor]:
    with torch.inference_mode(False), torch.no_grad():
        return extractor(image.to(extractor.device), list(layers))


@dataclass(frozen=True)
class ContentTarget:
    """The activations of one layer of the content image(s)."""

    layer: str
    weight: float
    image: torch.Tensor  # [B,3,H,W] 0..1
    features: torch.Tensor  # activations of `image` at `layer`
    extractor_signature: str
    _memo: _Memo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_memo", _Memo())

    @classmethod
    def create(cls, extractor: Extractor, image: torch.Tensor, layer: str = "relu4_2", weight: float = 1.0) -> "ContentTarget":
        """Capture ``layer`` of ``image`` (``[B,3,H,W]`` RGB 0..1) with ``extractor``."""
        layer = parse_layers([layer], extractor.arch)[0]
        weight = _check_weight("content weight", weight)
        with torch.inference_mode(False):
            image = as_rgb_batch(image, "content image").detach().clone()
        _check_size(extractor, image, [layer], "the content image")
        feats = _features(extractor, image, [layer])[layer]
        return cls(layer, weight, image, feats, extractor.signature)

    @property
    def size(self) -> Tuple[int, int]:
        """(H, W) of the content image."""
        return tuple(self.image.shape[-2:])

    def at_size(self, extractor: Extractor, hw: Tuple[int, int]) -> torch.Tensor:
        """The target activations for an output of size ``hw`` (computed once per size, then remembered)."""
        if tuple(hw) == self.size:
            return self.features.to(extractor.device)

        def compute() -> torch.Tensor:
            return _features(extractor, resize(self.image.to(extractor.device), hw), [self.layer])[self.layer]

        feats = self._memo.get((extractor.signature, tuple(hw)), compute, lambda t, d: t.to(d))
        return feats.to(extractor.device)

    def to(self, device: "torch.device | str") -> "ContentTarget":
        """A copy on ``device``."""
        return replace(self, image=self.image.to(device), features=self.features.to(device))


@dataclass(frozen=True)
class StyleTarget:
    """Statistics of several layers of one or more style images, blended by weight."""

    layers: Tuple[str, ...]
    layer_weights: Tuple[float, ...]
    statistic: str
    images: Tuple[torch.Tensor, ...]  # each [1,3,H,W] 0..1
    blend_weights: Tuple[float, ...]
    style_scale: float
    weight: float
    extractor_signature: str
    targets: Dict[str, LayerStyle] = field(repr=False, compare=False)  # at the reference size
    _memo: _Memo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_memo", _Memo())

    @classmethod
    def create(
        cls,
        extractor: Extractor,
        images: "torch.Tensor | Sequence[torch.Tensor]",
        layers: "str | Sequence[str]" = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
        layer_weights: Optional[Sequence[float]] = None,
        statistic: str = "moments",
        blend_weights: Optional[Sequence[float]] = None,
        style_scale: float = 1.0,
        weight: float = 1.0,
    ) -> "StyleTarget":
        """Compute the style statistics of ``images`` (a batch, or a list of differently sized images)."""
        layers = tuple(parse_layers(layers, extractor.arch))
        if statistic not in st.STATISTICS:
            raise ValueError(f"statistic {statistic!r} is not supported; choose one of {list(st.STATISTICS)}")
        lw = tuple(_check_weight("layer weight", w) for w in (layer_weights or [1.0] * len(layers)))
        if len(lw) != len(layers):
            raise ValueError(f"got {len(lw)} layer weights for {len(layers)} style layers; give one per layer")
        if sum(lw) <= 0:
            raise ValueError("style layer weights are all 0; give at least one positive weight")
        with torch.inference_mode(False):
            if isinstance(images, torch.Tensor):
                batch = as_rgb_batch(images, "style image")
                imgs = tuple(batch[i : i + 1].detach().clone() for i in range(batch.shape[0]))
            else:
                imgs = tuple(as_rgb_batch(im, "style image").detach().clone() for im in images)
        if not imgs:
            raise ValueError("no style image given; give at least one")
        bw = tuple(_check_weight("style blend weight", w) for w in (blend_weights or [1.0] * len(imgs)))
        if len(bw) != len(imgs):
            raise ValueError(f"got {len(bw)} style blend weights for {len(imgs)} style images; give one per image")
        if sum(bw) <= 0:
            raise ValueError("style blend weights are all 0; give at least one positive weight")
        scale = float(style_scale)
        if not (0.05 <= scale <= 8):
            raise ValueError(f"style scale must be between 0.05 and 8; got {style_scale}")
        for im in imgs:
            _check_size(extractor, im, layers, "a style image")
        made = cls(layers, tuple(w / sum(lw) for w in lw), statistic, imgs, bw, scale,
                   _check_weight("style weight", weight), extractor.signature, {})
        object.__setattr__(made, "targets", made._compute(extractor, None))
        return made

    def _compute(self, extractor: Extractor, long_edge: Optional[int]) -> Dict[str, LayerStyle]:
        stats: List[Dict[str, st.Stat]] = []
        min_edge = extractor.min_edge(self.layers)
        for im in self.images:
            im = im.to(extractor.device)
            hw = tuple(im.shape[-2:])
            if long_edge is None:  # reference statistics: the image itself, at most REFERENCE_EDGE
                im = resize(im, fit_long_edge(hw, min(max(hw), REFERENCE_EDGE)))
            else:
                im = resize(im, self.style_size(hw, long_edge, min_edge))
            feats = _features(extractor, im, self.layers)
            with torch.no_grad():
                stats.append({n: st.compute(self.statistic, feats[n].float()) for n in self.layers})
        with torch.no_grad():
            return {
                n: LayerStyle.prepare(self.statistic, st.blend([s[n] for s in stats], list(self.blend_weights)))
                for n in self.layers
            }

    def style_size(self, style_hw: Tuple[int, int], output_long_edge: int, min_edge: int = 1) -> Tuple[int, int]:
        """(H, W) a style image is analysed at for an output whose long edge is ``output_long_edge``.

        ``style_scale`` × the output size; a style image is never enlarged unless ``style_scale`` > 1,
        and never shrunk below what the deepest layer needs.
        """
        want = round(output_long_edge * self.style_scale)
        if self.style_scale <= 1:
            want = min(want, max(style_hw))
        want = max(want, math.ceil(min_edge * max(style_hw) / min(style_hw)))
        return fit_long_edge(style_hw, want)

    def at_size(self, extractor: Extractor, long_edge: int) -> Dict[str, LayerStyle]:
        """The per-layer targets for an output whose long edge is ``long_edge`` (computed once per size)."""
        found = self._memo.get((extractor.signature, int(long_edge)), lambda: self._compute(extractor, long_edge),
                               lambda d, dev: {n: t.to(dev) for n, t in d.items()})
        return {n: t.to(extractor.device) for n, t in found.items()}

    def blend(self, other: "StyleTarget", weight: float = 1.0) -> "StyleTarget":
        """A new target mixing this one's images with ``other``'s, each of ``other``'s scaled by ``weight``."""
        if not isinstance(other, StyleTarget):
            raise TypeError(f"can only blend with another StyleTarget, got {type(other).__name__}")
        for attr in ("extractor_signature", "layers", "statistic"):
            if getattr(self, attr) != getattr(other, attr):
                raise ValueError(
                    f"cannot blend style targets with different {attr.replace('_', ' ')}: "
                    f"{getattr(self, attr)!r} vs {getattr(other, attr)!r}; build both with the same settings"
                )
        w = _check_weight("blend weight", weight)
        images = self.images + tuple(im.to(self.images[0].device) for im in other.images)
        bw = self.blend_weights + tuple(b * w for b in other.blend_weights)
        merged = replace(self, images=images, blend_weights=bw, targets={})
        parts = [self.targets, {n: t.to(self.targets[n].norm.device) for n, t in other.targets.items()}]
        totals = [sum(self.blend_weights), sum(other.blend_weights) * w]
        object.__setattr__(merged, "targets", {
            n: LayerStyle.prepare(self.statistic, st.blend([p[n].stat for p in parts], totals)) for n in self.layers
        })
        return merged

    def to(self, device: "torch.device | str") -> "StyleTarget":
        """A copy on ``device``."""
        return replace(
            self,
            images=tuple(im.to(device) for im in self.images),
            targets={n: t.to(device) for n, t in self.targets.items()},
        )
