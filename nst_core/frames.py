"""Frames: a loop around :func:`optimize` that keeps consecutive stylised frames consistent.

Every frame is optimised exactly as a still is: from its own content (``init``), with the still's
schedule, so its result does not depend on how many frames came before it. What ties it to the frame
before is the temporal loss: at every iteration k, the image is pulled toward the previous frame's
image at *its* iteration k, carried along the optical flow between the two input frames, wherever
that flow can be trusted (Ruder, Dosovitskiy and Brox 2016's consistency check; pixels new to the
frame stay free). The two optimisations walk the same path, so strokes are laid where they were a
frame earlier; and a static shot gives the still itself, frame after frame, because two equal paths
pull on each other with zero force. (Pulling toward the previous *result* instead, or starting from
it, lets the style loss add a little more every frame: the picture drifts.)

A frame leaves its path (its iterates, in float16) to the next: :class:`FrameState`. The style target
is built once by the caller and shared; each frame gets its own content target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .extractor import Extractor
from .flow import flow_and_mask, require_opencv, warp
from .image import as_rgb_batch, resize, resize_long_edge
from .optimizer import (CancelFn, Init, PreviewFn, Progress, optimize, pyramid,
                        steps_per_scale, style_regions, validate_settings)
from .presets import Settings
from .targets import ContentTarget, StyleTarget

# Weight of the temporal loss (mean squared difference to the previous frame's path, pixels in 0..1).
# On a pan over a photograph it keeps the temporal error at most half of independent frames' while
# each frame keeps its own content as a still does (tests/test_frames.py; the long clip in
# BENCHMARKS.md); higher weights steady the frames further.
DEFAULT_TEMPORAL_WEIGHT = 200.0
# Changes whenever the frames a given recipe makes change (output folders record it, so frames of an
# older method are never mixed with new ones).
METHOD = "path-pull-1"

FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PATH_DTYPE = torch.float16  # the stored iterates: half the memory of float32, compared at this precision


@dataclass(frozen=True)
class FramesProgress:
    """What the frames progress callback receives; ``step``/``total`` count frames × iterations."""

    frame: int  # 0-based index of the frame being optimised
    frames: Optional[int]  # number of frames, when known
    step: int  # iterations done over all frames so far
    total: Optional[int]  # frames × iterations per frame, when the number of frames is known
    frame_step: int  # iterations done on this frame
    frame_total: int  # iterations per frame
    inner: Optional[Progress] = field(default=None, repr=False, compare=False)  # optimize's own report

    @property
    def losses(self) -> Optional[Dict[str, float]]:
        """This frame's loss parts (read from the device only when asked, on exact steps), else None."""
        return self.inner.losses if self.inner is not None else None


FramesProgressFn = Callable[[FramesProgress], None]


@dataclass
class FrameState:
    """What a finished frame leaves for the next one: its input, its output and its path.

    ``path`` holds the image at every evaluation of the frame's objective, in order, as float16
    ``[1,3,h,w]`` tensors at the pyramid scale of that evaluation (empty when the temporal loss is off).
    """

    frame: torch.Tensor  # the input frame [1,3,H,W] (at the output size)
    output: torch.Tensor  # the stylised frame [1,3,H,W] on the CPU
    path: List[torch.Tensor]


class TemporalLoss:
    """``weight × mean(mask · (x_k − warp(p_k))²)``: the k-th evaluation of this frame's objective is
    pulled toward the previous frame's k-th image ``p_k``, warped by ``flow`` (this frame → the previous
    one, ``[2,H,W]`` at the output size) where ``mask`` (``[1,H,W]``, 1 = trusted) allows.

    It also records this frame's own path (:attr:`path`) for the next frame. ``x_k`` is compared at the
    path's precision (a straight-through rounding), so two equal paths pull with exactly zero force.
    The mean runs over all pixels (Ruder et al.'s 1/D): the weight does not depend on how much of the
    frame is new. Flow and mask are resized to each pyramid scale once.
    """

    def __init__(self, previous: Optional[Sequence[torch.Tensor]], flow: Optional[torch.Tensor],
                 mask: Optional[torch.Tensor], weight: float) -> None:
        if previous is not None and (flow is None or mask is None):
            raise ValueError("a temporal loss toward a previous path needs the flow and the mask")
        self.previous, self.flow, self.mask, self.weight = previous, flow, mask, float(weight)
        self.path: List[torch.Tensor] = []
        self._at: Dict[Tuple[int, int, str], Tuple[torch.Tensor, torch.Tensor]] = {}

    def _flow_mask(self, hw: Tuple[int, int], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        key = (hw[0], hw[1], str(device))
        if key not in self._at:
            flow, mask = self.flow.to(device).float(), self.mask.to(device).float().unsqueeze(0)
            h, w = flow.shape[-2:]
            if (h, w) != tuple(hw):  # a flow in pixels shrinks with the image
                flow = F.interpolate(flow.unsqueeze(0), size=hw, mode="bilinear", align_corners=False)[0]
                flow = flow * torch.tensor([hw[1] / w, hw[0] / h], device=device).view(2, 1, 1)
                mask = F.interpolate(mask, size=hw, mode="area" if hw[0] < h else "bilinear")
            self._at[key] = (flow, mask)
        return self._at[key]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        k = len(self.path)
        stored = image.detach().to(PATH_DTYPE)
        self.path.append(stored)
        if not self.previous or self.weight == 0:
            return image.new_zeros(())
        hw = tuple(image.shape[-2:])
        target = self.previous[min(k, len(self.previous) - 1)].to(image.device).float()
        if tuple(target.shape[-2:]) != hw:  # (paths of different schedules: only by misuse)
            target = resize(target, hw)
        flow, mask = self._flow_mask(hw, image.device)
        target = warp(target, flow)
        rounded = image + (stored.float() - image).detach()
        return self.weight * (mask * (rounded - target) ** 2).mean()


def _check_weight(value: float) -> float:
    value = float(value)
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"temporal_weight must be a finite number ≥ 0 (0 = independent frames); got {value}")
    return value


def steps_per_frame(extractor: Extractor, settings: Settings, hw: Tuple[int, int], layers: Sequence[str]) -> int:
    """Iterations ``optimize`` runs for one frame of size ``hw`` (all its pyramid scales)."""
    sizes = pyramid(settings, tuple(hw), extractor.min_edge(list(layers)))
    return sum(steps_per_scale(settings, sizes))


def _prepare(frame: torch.Tensor, index: int, size: Optional[int]) -> torch.Tensor:
    frame = as_rgb_batch(frame, f"frame {index}")
    if frame.shape[0] != 1:
        raise ValueError(f"frame {index} is a batch of {frame.shape[0]}; give one image [1,3,H,W] per frame")
    return resize_long_edge(frame, size) if size else frame


def stylize_frames(
    extractor: Extractor,
    frames: Iterable[torch.Tensor],
    style: "Optional[StyleTarget | Sequence[StyleTarget]]",
    content_layer: str = "relu4_2",
    content_weight: float = 1.0,
    temporal_weight: float = DEFAULT_TEMPORAL_WEIGHT,
    settings: Optional[Settings] = None,
    size: Optional[int] = None,
    init: Init = "content",
    progress: Optional[FramesProgressFn] = None,
    preview: Optional[PreviewFn] = None,
    cancel: Optional[CancelFn] = None,
    count: Optional[int] = None,
    previous: Optional[FrameState] = None,
    flow_fn: Optional[FlowFn] = None,
    content_mask: Optional[torch.Tensor] = None,
    content_mask_strength: float = 4.0,
    on_state: Optional[Callable[[FrameState], None]] = None,
) -> Iterator[torch.Tensor]:
    """Stylise ``frames`` (each ``[1,3,H,W]`` RGB 0..1, same size) in order; yields ``[1,3,h,w]`` on CPU.

    Each frame runs the still's optimisation (from ``init``, with ``settings``); ``style`` (a target, or
    one per masked region) is built once and shared, and each frame gets a content target at
    ``content_layer`` (with ``content_mask``, as :meth:`ContentTarget.create` takes it).
    ``temporal_weight`` W > 0 adds the temporal loss toward the previous frame's path
    (:class:`TemporalLoss`; the flow is the input's, frame t → t-1); W = 0: independent frames, no
    flow. ``size`` resizes each frame to that long edge first. ``count`` (the number of frames, if
    known) only sizes the progress totals. ``on_state(state)`` receives each frame's :class:`FrameState`
    before the frame is yielded; ``previous``, such a state of the frame before the first one, carries
    on from it exactly. ``preview(step, image)`` counts ``step`` over all frames. ``cancel`` is asked
    every iteration. ``flow_fn(a, b)`` replaces :func:`nst_core.flow.estimate_flow`.
    """
    settings = settings or Settings()
    validate_settings(settings)
    weight = _check_weight(temporal_weight)
    if count is not None and count < 0:
        raise ValueError(f"count (the number of frames) must be ≥ 0; got {count}")
    if weight > 0 and flow_fn is None:
        require_opencv()  # before any work, not after the first frame
    layers = [name for region in style_regions(style) for name in region.layers] + [content_layer]
    per_frame: Optional[int] = None
    done = 0
    for i, raw in enumerate(frames):
        with torch.inference_mode(False):  # a ComfyUI node runs in inference mode: these tensors need autograd
            frame = _prepare(raw, i, size)
            hw = tuple(frame.shape[-2:])
            if previous is not None and tuple(previous.frame.shape[-2:]) != hw:
                before = previous.frame
                raise ValueError(f"frame {i} is {hw[1]}×{hw[0]} px but the frame before it is "
                                 f"{before.shape[-1]}×{before.shape[-2]}; all frames must have the same size")
            if per_frame is None:
                per_frame = steps_per_frame(extractor, settings, hw, layers)
            total = count * per_frame if count is not None else None
            temporal = None
            if weight > 0:
                if previous is not None and previous.path:
                    backward, mask = flow_and_mask(previous.frame, frame, flow_fn)
                    temporal = TemporalLoss(previous.path, backward, mask, weight)
                else:
                    temporal = TemporalLoss(None, None, None, weight)  # records the path for the next frame

            def on_progress(p: Progress, i=i, base=done, total=total) -> None:
                if progress is not None:
                    progress(FramesProgress(i, count, base + p.step, total, p.step, p.total, p))

            def on_preview(step: int, image: torch.Tensor, base=done) -> None:
                preview(base + step, image)

            content = ContentTarget.create(extractor, frame, content_layer, content_weight, content_mask,
                                           content_mask_strength)
            out = optimize(extractor, content, style, init, settings, None, on_progress,
                           on_preview if preview is not None else None, cancel, temporal)
            done += per_frame
            previous = FrameState(frame, out, temporal.path if temporal is not None else [])
            if on_state is not None:
                on_state(previous)
        yield out
