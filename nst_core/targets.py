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
import torch.nn.functional as F

from . import statistics as st
from .extractor import Extractor
from .image import as_rgb_batch, fit_long_edge, resize
from .layers import parse_layers
from .statistics import LayerStyle


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


MEMO_BYTES = 256 * 2**20  # a target keeps at most this much of derived features (besides the newest entry)


class _Memo:
    """Derived targets a target has already computed, kept on the CPU (the target itself never changes).

    Bounded by count (``limit`` entries) and by size: the oldest entries go once the memo holds more than
    ``limit_bytes`` (:data:`MEMO_BYTES`, 256 MiB: a 2048 px pyramid's content features, where one 4096 px
    entry alone is 512 MiB); the newest entry is always kept. ComfyUI caches targets between runs, so
    this bounds what each cached target holds.
    """

    def __init__(self, limit: int = 8, limit_bytes: Optional[int] = None) -> None:
        self.limit, self.limit_bytes = limit, MEMO_BYTES if limit_bytes is None else limit_bytes
        self.items: "OrderedDict[tuple, object]" = OrderedDict()
        self.sizes: Dict[tuple, int] = {}

    def get(self, key: tuple, compute: Callable[[], object], to: Callable[[object, str], object]) -> object:
        """The value for ``key``: from the memo, or computed once and remembered."""
        if key not in self.items:
            self.items[key] = to(compute(), "cpu")
            self.sizes[key] = tensor_bytes(self.items[key])
        self.items.move_to_end(key)
        while len(self.items) > 1 and (len(self.items) > self.limit or sum(self.sizes.values()) > self.limit_bytes):
            old, _ = self.items.popitem(last=False)
            del self.sizes[old]
        return self.items[key]

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors the memo holds."""
        return sum(self.sizes.values())


def tensor_bytes(value: object) -> int:
    """Bytes of the tensors in ``value`` (a tensor, a layer's style statistics, or a dict/tuple of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, LayerStyle):
        return tensor_bytes(value.stat) + tensor_bytes(value.cov_sqrt) + tensor_bytes(value.cov_trace)
    return 0


def _features(extractor: Extractor, image: torch.Tensor, layers: Sequence[str]) -> Dict[str, torch.Tensor]:
    with torch.inference_mode(False), torch.no_grad():
        return extractor(image.to(extractor.device), list(layers))


def mask_tensor(mask: Optional[torch.Tensor], name: str) -> Optional[torch.Tensor]:
    """Validate a mask (``[H,W]``, ``[B,H,W]`` or ``[B,1,H,W]``, values in 0..1) as ``[B,1,H,W]`` float."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a tensor [B,H,W] in 0..1 (a ComfyUI MASK); got {type(mask).__name__}")
    if mask.dim() not in (2, 3, 4) or (mask.dim() == 4 and mask.shape[1] != 1) or mask.numel() == 0:
        raise ValueError(f"{name} must have shape [H,W], [B,H,W] or [B,1,H,W]; got {list(mask.shape)}")
    with torch.inference_mode(False):  # a normal tensor even inside ComfyUI's inference mode
        m = mask.detach().float().clone().reshape(-1, 1, *mask.shape[-2:])
        if not torch.isfinite(m).all():
            raise ValueError(f"{name} contains NaN or Inf values; give values in 0..1")
        return m.clamp(0, 1)


def mask_at(mask: Optional[torch.Tensor], hw: Tuple[int, int], device: torch.device) -> Optional[torch.Tensor]:
    """A mask resized to ``hw`` by area averaging (soft edges stay soft), on ``device``."""
    if mask is None:
        return None
    m = mask.to(device)
    if tuple(m.shape[-2:]) == tuple(hw):
        return m
    return F.interpolate(m, size=hw, mode="area" if m.shape[-1] >= hw[1] else "bilinear",
                         **({} if m.shape[-1] >= hw[1] else {"align_corners": False})).clamp(0, 1)


@dataclass(frozen=True)
class ContentTarget:
    """One layer of the content image(s): the activations are computed only at the sizes the optimiser asks for.

    ``mask`` (optional, ``[1 or B,1,H,W]`` in 0..1) holds the content harder where it is white: the content
    loss at a position is weighted by ``1 + mask_strength·mask``.
    """

    layer: str
    weight: float
    image: torch.Tensor  # [B,3,H,W] 0..1
    extractor_signature: str
    mask: Optional[torch.Tensor] = None
    mask_strength: float = 4.0
    _memo: _Memo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_memo", _Memo())

    @classmethod
    def create(cls, extractor: Extractor, image: torch.Tensor, layer: str = "relu4_2", weight: float = 1.0,
               mask: Optional[torch.Tensor] = None, mask_strength: float = 4.0) -> "ContentTarget":
        """Validate ``image`` (``[B,3,H,W]`` RGB 0..1) and ``layer`` for ``extractor``; no network pass yet."""
        layer = parse_layers([layer], extractor.arch)[0]
        weight = _check_weight("content weight", weight)
        with torch.inference_mode(False):
            image = as_rgb_batch(image, "content image").detach().clone()
        _check_size(extractor, image, [layer], "the content image")
        m = mask_tensor(mask, "content mask")
        if m is not None and m.shape[0] not in (1, image.shape[0]):
            raise ValueError(f"the content mask batch has {m.shape[0]} masks for {image.shape[0]} content images; give 1 or {image.shape[0]}")
        return cls(layer, weight, image, extractor.signature, m, _check_weight("content mask strength", mask_strength))

    @property
    def size(self) -> Tuple[int, int]:
        """(H, W) of the content image."""
        return tuple(self.image.shape[-2:])

    def at_size(self, extractor: Extractor, hw: Tuple[int, int]) -> torch.Tensor:
        """The target activations for an output of size ``hw`` (computed once per size, then remembered)."""

        def compute() -> torch.Tensor:
            return _features(extractor, resize(self.image.to(extractor.device), hw), [self.layer])[self.layer]

        feats = self._memo.get((extractor.signature, tuple(hw)), compute, lambda t, d: t.to(d))
        return feats.to(extractor.device)

    def weights_at(self, hw: Tuple[int, int], device: torch.device) -> Optional[torch.Tensor]:
        """Per-position content-loss weights on a (layer's) grid of ``hw`` (None without a mask)."""
        m = mask_at(self.mask, hw, device)
        return None if m is None else 1 + self.mask_strength * m

    def with_image(self, image: torch.Tensor) -> "ContentTarget":
        """The same target (layer, weight, mask) for another image, e.g. the content's luminance."""
        with torch.inference_mode(False):
            image = as_rgb_batch(image, "content image").detach().clone()
        return replace(self, image=image)

    def to(self, device: "torch.device | str") -> "ContentTarget":
        """A copy on ``device``."""
        return replace(self, image=self.image.to(device), mask=None if self.mask is None else self.mask.to(device))


@dataclass(frozen=True)
class StyleTarget:
    """Statistics of several layers of one or more style images, blended by weight.

    They are computed at the sizes the optimiser asks for (``at_size``), from the kept images. ``mask``
    (optional, ``[1,1,H,W]`` in 0..1) restricts the style to a region of the output: its statistics are
    then matched by the features under the mask (weighted moments or Grams).
    """

    layers: Tuple[str, ...]
    layer_weights: Tuple[float, ...]
    statistic: str
    images: Tuple[torch.Tensor, ...]  # each [1,3,H,W] 0..1
    blend_weights: Tuple[float, ...]
    style_scale: float
    weight: float
    extractor_signature: str
    mask: Optional[torch.Tensor] = None
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
        mask: Optional[torch.Tensor] = None,
    ) -> "StyleTarget":
        """Validate the style ``images`` (a batch, or a list of differently sized images); no network pass yet."""
        layers = tuple(parse_layers(layers, extractor.arch))
        if statistic not in st.STATISTICS:
            raise ValueError(f"statistic {statistic!r} is not supported; choose one of {list(st.STATISTICS)}")
        lw = tuple(_check_weight("layer weight", w) for w in (layer_weights or [1.0] * len(layers)))
        if len(lw) != len(layers):
            raise ValueError(f"got {len(lw)} layer weights for {len(layers)} style layers; give one per layer")
        if sum(lw) <= 0:
            raise ValueError("style layer weights are all 0; give at least one positive weight")
        imgs = _style_images(images)
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
        m = mask_tensor(mask, "style mask")
        if m is not None and m.shape[0] != 1:
            raise ValueError(f"a style target takes one region mask; got a batch of {m.shape[0]}")
        if m is not None and float(m.max()) <= 0:
            raise ValueError("the style mask is all black (0): the style would apply nowhere; give a mask with white where the style goes")
        return cls(layers, tuple(w / sum(lw) for w in lw), statistic, imgs, bw, scale,
                   _check_weight("style weight", weight), extractor.signature, m)

    def _compute(self, extractor: Extractor, long_edge: int) -> Dict[str, LayerStyle]:
        stats: List[Dict[str, st.Stat]] = []
        min_edge = extractor.min_edge(self.layers)
        for im in self.images:
            im = im.to(extractor.device)
            im = resize(im, self.style_size(tuple(im.shape[-2:]), long_edge, min_edge))
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
        """A new target mixing this one's images with ``other``'s, each of ``other``'s scaled by ``weight``.

        Both must agree on everything but their images: a blend has one set of layers, layer weights,
        statistic, style scale and region.
        """
        if not isinstance(other, StyleTarget):
            raise TypeError(f"can only blend with another StyleTarget, got {type(other).__name__}")
        for attr in ("extractor_signature", "layers", "statistic", "layer_weights", "style_scale"):
            if getattr(self, attr) != getattr(other, attr):
                raise ValueError(
                    f"cannot blend style targets with different {attr.replace('_', ' ')}: "
                    f"{getattr(self, attr)!r} vs {getattr(other, attr)!r}; build both with the same settings"
                )
        if (self.mask is None) != (other.mask is None) or (
                self.mask is not None and not torch.equal(self.mask, other.mask.to(self.mask.device))):
            raise ValueError("cannot blend style targets with different masks; use them as separate regions")
        w = _check_weight("blend weight", weight)
        images = self.images + tuple(im.to(self.images[0].device) for im in other.images)
        bw = self.blend_weights + tuple(b * w for b in other.blend_weights)
        return replace(self, images=images, blend_weights=bw)

    def with_images(self, extractor: Extractor, images: "torch.Tensor | Sequence[torch.Tensor]") -> "StyleTarget":
        """The same target (layers, weights, statistic, scale, region) for other images (e.g. recoloured)."""
        imgs = _style_images(images)
        if len(imgs) != len(self.images):
            raise ValueError(f"got {len(imgs)} style images to replace {len(self.images)}; give one per image")
        for im in imgs:
            _check_size(extractor, im, self.layers, "a style image")
        return replace(self, images=imgs)

    def to(self, device: "torch.device | str") -> "StyleTarget":
        """A copy on ``device``."""
        return replace(self, images=tuple(im.to(device) for im in self.images),
                       mask=None if self.mask is None else self.mask.to(device))


def _style_images(images: "torch.Tensor | Sequence[torch.Tensor]") -> Tuple[torch.Tensor, ...]:
    with torch.inference_mode(False):
        if isinstance(images, torch.Tensor):
            batch = as_rgb_batch(images, "style image")
            imgs = tuple(batch[i : i + 1].detach().clone() for i in range(batch.shape[0]))
        else:
            imgs = tuple(as_rgb_batch(im, "style image").detach().clone() for im in images)
    if not imgs:
        raise ValueError("no style image given; give at least one")
    return imgs


def run_layers(content: Optional[ContentTarget], regions: Sequence[StyleTarget]) -> List[str]:
    """The layers a run captures: every region's style layers, then the content layer, each once."""
    layers: List[str] = []
    for t in regions:
        layers += [n for n in t.layers if n not in layers]
    if content is not None and content.layer not in layers:
        layers.append(content.layer)
    return layers


def region_masks(regions: Sequence[StyleTarget], hw: Tuple[int, int],
                 device: torch.device) -> List[Optional[torch.Tensor]]:
    """Each region's mask at the output grid; an unmasked style among masked ones covers what they leave."""
    masks = [mask_at(t.mask, hw, device) for t in regions]
    given = [m for m in masks if m is not None]
    if not given or len(given) == len(masks):
        return masks
    rest = (1 - torch.stack([m.expand(-1, 1, -1, -1)[:1] for m in given]).sum(0)).clamp(0, 1)
    return [rest if m is None else m for m in masks]


def layer_masks(extractor: Extractor, regions: Sequence[StyleTarget], hw: Tuple[int, int],
                grids: Dict[str, Tuple[int, int]]) -> List[Dict[str, Optional[torch.Tensor]]]:
    """Each region's mask on each of its layers' grids (``grids``: layer → (h, w)); None for an unmasked run.

    A position of a deep layer sees far beyond its own cell (relu5_1: 156 px), so a mask merely resized
    to that grid lets the style pull pixels outside the mask. Where the masks leave pixels that no style
    covers, a position's weight is therefore multiplied by 1 − the most uncovered pixel of its receptive
    field (the "inside" guidance of Gatys et al. 2017): no style term reaches those pixels, and there the
    content alone rules. A region keeps the layers whose patterns fit inside it.
    """
    dev = extractor.device
    masks = region_masks(regions, hw, dev)
    given = [m for m in masks if m is not None]
    uncovered = None if not given else (1 - sum(m[:1] for m in given)).clamp(0, 1)
    reach = {}
    if uncovered is not None and float(uncovered.max()) > 1e-3:
        reach = extractor.receptive_max(uncovered, sorted({n for t in regions for n in t.layers}))
    out = []
    for t, m in zip(regions, masks):
        at = {n: mask_at(m, grids[n], dev) for n in t.layers}
        out.append({n: w * (1 - reach[n]) if n in reach else w for n, w in at.items()})
    return out
