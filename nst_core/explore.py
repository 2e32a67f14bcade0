"""Layer explorer: what each VGG layer keeps of an image, as one labelled grid.

Row 1 rebuilds the content image from faint noise using one layer at a time (deeper layers keep the
layout but lose the pixels); row 2, with a style image, synthesises a texture from a growing set of
style layers (relu1_1; relu1_1+relu2_1; … up to relu5_1: larger and larger structures appear).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .extractor import Extractor
from .image import as_rgb_batch, fit_long_edge, to_pil
from .layers import parse_layers
from .optimizer import CancelFn, Progress
from .memory import estimate_bytes
from .recipes import preset_settings, reconstruct, reconstruct_settings, texture

CONTENT_LAYERS = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# 10 cells at 128 px in about 1 minute on a quiet 2-core CPU (see README), with a clear depth trend
DEFAULT_STEPS = 100
GAP = 4  # px of background between cells and around the grid
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


@dataclass(frozen=True)
class ExploreProgress:
    """What the explorer's progress callback receives: steps over all cells."""

    step: int  # 1-based, over all cells
    total: int
    cell: int  # 0-based index of the cell being made
    cells: int
    label: str  # the cell's label, e.g. "content relu3_2"
    losses: Optional[Dict[str, float]]  # the current cell's losses when read, else None


ExploreProgressFn = Callable[[ExploreProgress], None]
GridPreviewFn = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class _Cell:
    row: int
    col: int
    label: str
    hw: Tuple[int, int]  # (h, w) of its image
    make: Callable[..., torch.Tensor]  # (progress, cancel) -> [1,3,h,w]


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _line_height(font) -> int:
    box = font.getbbox("Ag_|")
    return box[3] - box[1] + 3


def wrap_label(label: str, width: int, font=None) -> List[str]:
    """``label`` broken into lines at most ``width`` px wide, at spaces and after ``+`` (a longer word
    keeps its own line)."""
    font = font or _font()
    words: List[str] = []
    for part in label.split(" "):
        pieces = part.split("+")
        words += [p + "+" for p in pieces[:-1]] + [pieces[-1]]
    lines: List[str] = []
    for word in words:
        if lines:
            joined = lines[-1] + ("" if lines[-1].endswith("+") else " ") + word
            if font.getlength(joined) <= width:
                lines[-1] = joined
                continue
        lines.append(word)
    return lines


def strip_height(labels: Sequence[str], cell: int, font=None) -> int:
    """Height in px of a label strip with room for the longest of ``labels`` wrapped to ``cell`` px."""
    font = font or _font()
    lines = max((len(wrap_label(t, cell - 4, font)) for t in labels), default=1)
    return lines * _line_height(font) + 4


Box = Tuple[int, int, int, int]  # (y, x, h, w) in the grid


def layout(cells: Sequence[Tuple[int, int, str, Tuple[int, int]]], cell: int
           ) -> Tuple[Tuple[int, int], List[Tuple[Box, Box]]]:
    """(H, W) of the grid, and per cell its (label strip, image) boxes.

    ``cells`` are ``(row, col, label, (h, w) of its image)``. Columns are ``cell`` px wide; a row is as
    tall as its tallest image, under a label strip with room for the row's longest label
    (:func:`strip_height`); images are centred in their slot; ``GAP`` px between and around everything.
    """
    rows = max(c[0] for c in cells) + 1
    cols = max(c[1] for c in cells) + 1
    strips = [strip_height([c[2] for c in cells if c[0] == r], cell) for r in range(rows)]
    heights = [max((c[3][0] for c in cells if c[0] == r), default=cell) for r in range(rows)]
    tops = [GAP + sum(strips[i] + heights[i] + GAP for i in range(r)) for r in range(rows)]
    boxes = []
    for row, col, _, (h, w) in cells:
        x = GAP + col * (cell + GAP)
        y = tops[row]
        boxes.append(((y, x, strips[row], cell),
                      (y + strips[row] + (heights[row] - h) // 2, x + (cell - w) // 2, h, w)))
    return (tops[-1] + strips[-1] + heights[-1] + GAP, cols * cell + (cols + 1) * GAP), boxes


def compose_grid(cells: Sequence[Tuple[int, int, str, Tuple[int, int], Optional[torch.Tensor]]],
                 cell: int) -> torch.Tensor:
    """Draw ``(row, col, label, (h, w), image or None)`` cells into one ``[1,3,H,W]`` grid (:func:`layout`).

    A cell without an image (not made yet) shows only its label.
    """
    font = _font()
    (h, w), boxes = layout([c[:4] for c in cells], cell)
    canvas = Image.new("RGB", (w, h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    line_h = _line_height(font)
    for (row, col, label, hw, image), ((sy, sx, _, _), (iy, ix, ih, iw)) in zip(cells, boxes):
        for i, line in enumerate(wrap_label(label, cell - 4, font)):
            draw.text((sx + 2, sy + 2 + i * line_h), line, fill=TEXT, font=font)
        if image is not None:
            pil = to_pil(image[:1])
            if pil.size != (iw, ih):
                pil = pil.resize((iw, ih), Image.BICUBIC)
            canvas.paste(pil, (ix, iy))
    t = torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255
    return t.unsqueeze(0)


def peak_bytes(content_hw: Tuple[int, int], cell: int = 128, steps: int = DEFAULT_STEPS,
               layers: Sequence[str] = CONTENT_LAYERS, style_layers: Sequence[str] = STYLE_LAYERS,
               with_style: bool = True, arch: str = "vgg19", device: "torch.device | str | None" = None) -> int:
    """The memory model's peak (:func:`.memory.estimate_bytes`) of the explorer's largest cell: the cells
    run one after another, so the grid needs what its largest cell needs."""
    hw = fit_long_edge(content_hw, cell)
    rebuild = reconstruct_settings(steps)
    peaks = [estimate_bytes(hw, [n], rebuild, arch=arch, statistic="gram", style_layers=[], device=device)
             for n in layers]
    if with_style and style_layers:  # the last texture uses every style layer
        textures = preset_settings("quality", steps=steps, min_size=cell)
        peaks.append(estimate_bytes((cell, cell), list(style_layers), textures, arch=arch, device=device))
    return max(peaks)


def check_grid(cell: int, steps: int) -> None:
    """Refuse a cell size outside 16–1024 px or fewer than one step per cell (cheap: before any work)."""
    if isinstance(cell, bool) or not isinstance(cell, int) or not 16 <= cell <= 1024:
        raise ValueError(f"cell (the long edge of each grid cell in px) must be an integer from 16 to 1024; "
                         f"got {cell!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps (iterations per cell) must be an integer ≥ 1; got {steps!r}")


def explore(
    extractor: Extractor,
    content: torch.Tensor,
    style: "Optional[torch.Tensor | Sequence[torch.Tensor]]" = None,
    layers: "str | Sequence[str]" = CONTENT_LAYERS,
    cell: int = 128,
    steps: int = DEFAULT_STEPS,
    style_layers: "str | Sequence[str]" = STYLE_LAYERS,
    seed: int = 0,
    progress: Optional[ExploreProgressFn] = None,
    preview: Optional[GridPreviewFn] = None,
    cancel: Optional[CancelFn] = None,
) -> torch.Tensor:
    """A labelled grid ``[1,3,H,W]`` of what each layer keeps.

    Row 1: ``content`` (its first image) rebuilt from faint noise on gray from each of ``layers`` alone
    (:func:`nst_core.recipes.reconstruct`: L-BFGS, at most ``steps`` evaluations, at long edge ``cell``).
    Row 2, when ``style`` is given: ``cell``×``cell`` textures synthesised from noise from the growing
    sets ``style_layers[:1]``, ``style_layers[:2]``, … (:func:`nst_core.recipes.texture`, the
    ``quality`` losses, Adam, ``steps`` iterations). ``progress`` gets the steps over all cells,
    ``preview`` the grid so far after each cell (after the last: the whole grid, which a node keeps
    showing), ``cancel`` is asked every iteration.
    The geometry is :func:`layout`: columns ``cell`` px wide, a label strip above each row.
    """
    check_grid(cell, steps)
    layers = parse_layers(layers, extractor.arch)
    style_layers = parse_layers(style_layers, extractor.arch)
    if not layers:
        raise ValueError("layers is empty; give at least one layer to reconstruct from (e.g. relu2_2)")
    content = as_rgb_batch(content, "content image")[:1]
    content_hw = fit_long_edge(tuple(content.shape[-2:]), cell)
    plan: List[_Cell] = []
    for col, layer in enumerate(layers):
        plan.append(_Cell(0, col, f"content {layer}", content_hw, lambda pr, ca, layer=layer: reconstruct(
            extractor, content, layer, size=cell, steps=steps, progress=pr, cancel=ca, seed=seed)))
    if style is not None:
        if not style_layers:
            raise ValueError("style_layers is empty; give at least one style layer (e.g. relu1_1)")
        for k in range(1, len(style_layers) + 1):
            plan.append(_Cell(1, k - 1, "style " + "+".join(style_layers[:k]), (cell, cell),
                              lambda pr, ca, k=k: texture(extractor, style, "quality", cell,
                                                          style_layers=list(style_layers[:k]), init="noise",
                                                          progress=pr, cancel=ca, steps=steps, min_size=cell,
                                                          seed=seed)))
    done: Dict[int, torch.Tensor] = {}
    total = steps * len(plan)

    def cells() -> List[Tuple[int, int, str, Tuple[int, int], Optional[torch.Tensor]]]:
        return [(c.row, c.col, c.label, c.hw, done.get(i)) for i, c in enumerate(plan)]

    for i, c in enumerate(plan):
        def on_progress(p: Progress, i: int = i, c: _Cell = c) -> None:
            if progress is not None:
                progress(ExploreProgress(i * steps + min(p.step, steps), total, i, len(plan), c.label, p.losses))

        done[i] = c.make(on_progress, cancel)
        if progress is not None:  # an L-BFGS cell can stop early: report the cell as complete
            progress(ExploreProgress((i + 1) * steps, total, i, len(plan), c.label, None))
        grid = compose_grid(cells(), cell)
        if preview is not None:  # after the last cell too: a node keeps showing its last preview
            preview(grid)
    return grid
