"""Frames: a loop around :func:`optimize` that keeps consecutive stylised frames consistent.

Each frame after the first starts from the previous *stylised* frame warped by the optical flow
between the two input frames, and a temporal loss pulls it toward that warped frame wherever the
flow can be trusted (Ruder, Dosovitskiy and Brox 2016, "Artistic style transfer for videos"). The
style target is built once by the caller and shared; each frame gets its own content target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .extractor import Extractor
from .flow import flow_and_mask, warp
from .image import as_rgb_batch, resize, resize_long_edge
from .optimizer import (CancelFn, Init, PreviewFn, Progress, optimize, pyramid_sizes, smallest_scale,
                       steps_per_scale, style_regions, validate_settings)
from .presets import Settings
from .targets import ContentTarget, StyleTarget

# Weight of the temporal loss (mean squared difference to the warped previous frame, pixels in
# 0..1). Chosen by measurement (bench/frames.py, BENCHMARKS.md): on a pan over a photograph it cuts
# the temporal error of independent frames to about a tenth for a few per cent of style distance;
# higher weights steady the frames further and cost more style.
DEFAULT_TEMPORAL_WEIGHT = 50.0

FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ResumeFn = Callable[[int], Optional[torch.Tensor]]


@dataclass(frozen=True)
class FramesProgress:
    """What the frames progress callback receives; ``step``/``total`` count frames × iterations."""

    frame: int  # 0-based index of the frame being optimised
    frames: Optional[int]  # number of frames, when known
    step: int  # iterations done over all frames so far (a reused frame counts as all its iterations)
    total: Optional[int]  # frames × iterations per frame, when the number of frames is known
    frame_step: int  # iterations done on this frame
    frame_total: int  # iterations per frame
    inner: Optional[Progress] = field(default=None, repr=False, compare=False)  # optimize's own report

    @property
    def losses(self) -> Optional[Dict[str, float]]:
        """This frame's loss parts (read from the device only when asked, on exact steps), else None."""
        return self.inner.losses if self.inner is not None else None


FramesProgressFn = Callable[[FramesProgress], None]


def quantize(image: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels: the previous frame a run carries on from is exactly what a PNG holds,
    so a resumed run (which reads it back from disk) continues exactly as an uninterrupted one."""
    return image.clamp(0, 1).mul(255).round().div(255)


class TemporalLoss:
    """``weight × mean(mask · (image − target)²)`` at whatever pyramid scale ``optimize`` is at.

    ``target`` (``[1,3,H,W]``) and ``mask`` (``[1,1,H,W]``, 1 = trusted) are resized to each scale
    once and cached. The mean runs over all pixels (Ruder et al.'s 1/D), so the weight does not
    depend on how much of the frame is occluded.
    """

    def __init__(self, target: torch.Tensor, mask: torch.Tensor, weight: float) -> None:
        self.target, self.mask, self.weight = target.detach(), mask.detach(), float(weight)
        self._cache: Dict[Tuple[int, int, str], Tuple[torch.Tensor, torch.Tensor]] = {}

    def _at(self, hw: Tuple[int, int], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        key = (hw[0], hw[1], str(device))
        if key not in self._cache:
            target = resize(self.target.to(device), hw)
            mask = self.mask.to(device)
            if tuple(mask.shape[-2:]) != tuple(hw):
                mask = F.interpolate(mask, size=hw, mode="area" if hw[0] < mask.shape[-2] else "bilinear")
            self._cache[key] = (target, mask)
        return self._cache[key]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        target, mask = self._at(tuple(image.shape[-2:]), image.device)
        return self.weight * (mask * (image - target) ** 2).mean()


def _check_weight(value: float) -> float:
    value = float(value)
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"temporal_weight must be a finite number ≥ 0 (0 = independent frames); got {value}")
    return value


def steps_per_frame(extractor: Extractor, settings: Settings, hw: Tuple[int, int], layers: Sequence[str]) -> int:
    """Iterations ``optimize`` runs for one frame of size ``hw`` (all its pyramid scales)."""
    sizes = pyramid_sizes(tuple(hw), smallest_scale(settings, tuple(hw)), extractor.min_edge(list(layers)))
    return sum(steps_per_scale(settings, len(sizes)))


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
    previous: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    resume: Optional[ResumeFn] = None,
    flow_fn: Optional[FlowFn] = None,
) -> Iterator[torch.Tensor]:
    """Stylise ``frames`` (each ``[1,3,H,W]`` RGB 0..1, same size) in order; yields ``[1,3,h,w]`` on CPU.

    ``style`` (a target, or one per masked region) is built once and shared; each frame gets a content
    target at ``content_layer``.
    ``temporal_weight`` W > 0: frame t starts from stylised frame t-1 warped by the input's flow
    (t → t-1) and the loss gains ``W × mean(mask · (x − warped)²)``; W = 0: independent frames, each
    from ``init``. ``size`` resizes each frame to that long edge first. ``count`` (the number of
    frames, if known) only sizes the progress totals. ``previous`` = (input frame, stylised frame)
    before the first one, to carry on from (e.g. a run that stopped). ``resume(i)`` may return frame
    i's finished output (e.g. read back from disk): that frame is not optimised, and is yielded as
    given. ``preview(step, image)`` counts ``step`` over all frames. ``cancel`` is asked every iteration.
    """
    settings = settings or Settings()
    validate_settings(settings)
    weight = _check_weight(temporal_weight)
    if count is not None and count < 0:
        raise ValueError(f"count (the number of frames) must be ≥ 0; got {count}")
    layers = [name for region in style_regions(style) for name in region.layers] + [content_layer]
    prev_in: Optional[torch.Tensor] = None
    prev_out: Optional[torch.Tensor] = None
    if previous is not None:
        prev_in = _prepare(previous[0], -1, size)
        prev_out = quantize(as_rgb_batch(previous[1], "previous stylised frame"))
    per_frame: Optional[int] = None
    done = 0
    for i, raw in enumerate(frames):
        with torch.inference_mode(False):  # a ComfyUI node runs in inference mode: these tensors need autograd
            frame = _prepare(raw, i, size)
            hw = tuple(frame.shape[-2:])
            if prev_in is not None and tuple(prev_in.shape[-2:]) != hw:
                raise ValueError(f"frame {i} is {hw[1]}×{hw[0]} px but the frame before it is "
                                 f"{prev_in.shape[-1]}×{prev_in.shape[-2]}; all frames must have the same size")
            if per_frame is None:
                per_frame = steps_per_frame(extractor, settings, hw, layers)
            total = count * per_frame if count is not None else None
            reused = resume(i) if resume is not None else None
            if reused is not None:
                out = as_rgb_batch(reused, f"reused output of frame {i}").cpu()
                if tuple(out.shape[-2:]) != hw:
                    raise ValueError(f"the reused output of frame {i} is {out.shape[-1]}×{out.shape[-2]} px but "
                                     f"the frame is {hw[1]}×{hw[0]}; remove it so it is made again")
                if progress is not None:
                    progress(FramesProgress(i, count, done + per_frame, total, per_frame, per_frame))
            else:
                start, extra = init, None
                if weight > 0 and prev_in is not None:
                    backward, mask = flow_and_mask(prev_in, frame, flow_fn)
                    warped = warp(prev_out, backward)
                    # trusted pixels start from the warped frame, the rest from the content
                    start = mask * warped + (1 - mask) * frame
                    extra = TemporalLoss(warped, mask.unsqueeze(0), weight)

                def on_progress(p: Progress, i=i, base=done, total=total) -> None:
                    if progress is not None:
                        progress(FramesProgress(i, count, base + p.step, total, p.step, p.total, p))

                def on_preview(step: int, image: torch.Tensor, base=done) -> None:
                    preview(base + step, image)

                content = ContentTarget.create(extractor, frame, content_layer, content_weight)
                out = optimize(extractor, content, style, start, settings, None, on_progress,
                               on_preview if preview is not None else None, cancel, extra)
            done += per_frame
            prev_in, prev_out = frame, quantize(out)
        yield out


def temporal_error(inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor],
                   flow_fn: Optional[FlowFn] = None) -> float:
    """Mean squared difference between consecutive outputs after warping by the *input's* flow,
    over the pixels the consistency mask trusts (occlusions and motion boundaries left out).

    ``inputs`` and ``outputs`` are equally long lists of ``[1,3,H,W]`` (or ``[3,H,W]``) images of one
    size; the mean runs over all consecutive pairs, in 0..1 pixel units.
    """
    if len(inputs) != len(outputs) or len(inputs) < 2:
        raise ValueError(f"temporal_error needs at least 2 input and output frames, as many of each; "
                         f"got {len(inputs)} inputs and {len(outputs)} outputs")
    errors: List[float] = []
    for t in range(1, len(inputs)):
        a, b = as_rgb_batch(inputs[t - 1], "input frame"), as_rgb_batch(inputs[t], "input frame")
        prev, cur = as_rgb_batch(outputs[t - 1], "output frame"), as_rgb_batch(outputs[t], "output frame")
        if prev.shape[-2:] != a.shape[-2:]:
            prev, cur = resize(prev, tuple(a.shape[-2:])), resize(cur, tuple(a.shape[-2:]))
        backward, mask = flow_and_mask(a, b, flow_fn)
        sq = (cur - warp(prev, backward)) ** 2 * mask
        errors.append(float(sq.sum() / (mask.sum() * 3).clamp_min(1)))
    return sum(errors) / len(errors)
