"""The canvas: the image is optimised with a margin around it, and the margin is cut off at the end.

Every convolution of the network pads its input at the image's edge, so the outer rows and columns
of every layer see a context unlike the interior's. The optimiser answers with a line along each
edge (a dark outline under a style with outlines, a band of another colour under a busy one), 1–3 px
at each pyramid scale and widened by each upscaling. With a margin of ``settings.margin`` px around
the output (at the output's size; in proportion at the smaller scales, at least 1 px), the output's
edge pixels are inside the canvas and see the same context as the rest; what the canvas's own edge
gets wrong is cut away with the margin.

In the margin the content and the init image go on across the edge with their slope (:func:`extend`)
and masks are mirrored; the style statistics are taken over the whole canvas.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .image import resize
from .targets import ContentTarget, StyleTarget, mask_at


def extend(image: torch.Tensor, margin: int, smooth: bool = True) -> torch.Tensor:
    """``[B,C,H,W]`` with ``margin`` px on each side, mirrored from the edge (repeated where the image is
    too small to mirror that far).

    ``smooth`` mirrors through the edge pixel's value too (``2·edge − mirror``, within 0..1): the slope
    goes on across the edge. A plain mirror folds it, and a fold (a vignette's dark valley, a bright
    ridge) is a structure that the style paints into a line along the edge.
    """
    if margin <= 0:
        return image
    mode = "reflect" if margin < min(image.shape[-2:]) else "replicate"
    out = F.pad(image, (margin,) * 4, mode=mode)
    if not smooth:
        return out
    h, w = image.shape[-2:]
    edge = F.pad(image, (margin,) * 4, mode="replicate")  # each margin pixel's nearest edge pixel
    inside = torch.zeros_like(edge[:1, :1], dtype=torch.bool)
    inside[..., margin:margin + h, margin:margin + w] = True
    return torch.where(inside, out, (2 * edge - out).clamp(0, 1))


@dataclass(frozen=True)
class Canvas:
    """The canvas of a run whose output is ``hw`` (H, W), with ``margin`` px around it at that size."""

    hw: Tuple[int, int]
    margin: int

    def margin_at(self, hw: Tuple[int, int]) -> int:
        """The margin at a pyramid scale whose output part is ``hw``: in proportion, at least 1 px."""
        if self.margin <= 0:
            return 0
        return max(1, round(self.margin * max(hw) / max(self.hw)))

    def around(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        """(H, W) of the canvas at a scale whose output part is ``hw``."""
        m = self.margin_at(hw)
        return hw[0] + 2 * m, hw[1] + 2 * m

    def inner(self, image: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """The output part (``hw``) of a canvas image of :meth:`around` ``(hw)``."""
        m = self.margin_at(hw)
        return image[..., m:m + hw[0], m:m + hw[1]] if m else image

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """An image (content, init) at the output's size, extended to the whole canvas."""
        return extend(resize(image, self.hw), self.margin)

    def mask(self, mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """A mask at the output's size, extended to the whole canvas (None stays None)."""
        if mask is None or self.margin <= 0:
            return mask
        return extend(mask_at(mask, self.hw, mask.device), self.margin, smooth=False)

    def targets(self, content: Optional[ContentTarget], regions: Sequence[StyleTarget]
                ) -> Tuple[Optional[ContentTarget], Tuple[StyleTarget, ...]]:
        """The content target and the regions' masks, extended to the canvas (unchanged without a margin)."""
        if self.margin <= 0:
            return content, tuple(regions)
        if content is not None:
            content = replace(content.with_image(self.image(content.image)), mask=self.mask(content.mask))
        return content, tuple(t if t.mask is None else replace(t, mask=self.mask(t.mask)) for t in regions)

    def cropping(self, fn: Optional[Callable[[torch.Tensor], torch.Tensor]],
                 hw: Tuple[int, int]) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """``fn`` applied to the output part of a canvas image of scale ``hw`` (None stays None)."""
        if fn is None or self.margin <= 0:
            return fn
        return lambda image: fn(self.inner(image, hw))
