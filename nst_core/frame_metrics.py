"""Measures of a stylised frame sequence: temporal error (flicker), drift, and the detail of new scene.

What the frames benchmark reports and the frames tests check. All images are ``[1,3,H,W]`` (or
``[3,H,W]``) RGB in 0..1.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch

from .flow import flow_and_mask, warp
from .image import as_rgb_batch, resize

FlowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pair_errors(inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor],
                flow_fn: Optional[FlowFn] = None) -> List[float]:
    """The temporal error of each consecutive pair (t-1, t), t = 1 … n-1: the mean squared difference
    between output t and output t-1 warped by the *input's* flow, over the pixels the consistency mask
    trusts (new scene, occlusions and motion boundaries left out), in 0..1 pixel units."""
    if len(inputs) != len(outputs) or len(inputs) < 2:
        raise ValueError(f"a temporal error needs at least 2 input and output frames, as many of each; "
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
    return errors


def temporal_error(inputs: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor],
                   flow_fn: Optional[FlowFn] = None) -> float:
    """The mean of :func:`pair_errors` over all consecutive pairs."""
    errors = pair_errors(inputs, outputs, flow_fn)
    return sum(errors) / len(errors)


def _horizontal_detail(image: torch.Tensor) -> torch.Tensor:
    """Per column, the mean |∂x| of the luma between it and the column to its right: ``[W-1]``."""
    luma = _luma(image)
    return (luma[..., 1:] - luma[..., :-1]).abs().mean(dim=(0, 1))


def strip_detail(image: torch.Tensor, side: str, width: int) -> float:
    """How much horizontal detail the ``width`` columns at ``side`` (``left``/``right``) keep, against the
    frame's interior (the columns more than ``2 × width`` from either edge): 1 = as much.

    A strip of scene that has just entered the frame and was smeared (its edge column repeated) scores
    well below 1; one painted as freely as the rest scores about 1.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right'; got {side!r}")
    detail = _horizontal_detail(image)
    n = detail.shape[0]
    if width < 1 or 4 * width >= n:
        raise ValueError(f"strip width must be at least 1 and under a quarter of the width ({n + 1} px); got {width}")
    strip = detail[:width] if side == "left" else detail[-width:]
    interior = detail[2 * width: n - 2 * width]
    return float(strip.mean() / interior.mean().clamp_min(1e-8))


def _luma(image: torch.Tensor) -> torch.Tensor:
    image = as_rgb_batch(image, "image")
    return 0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]


def gray_correlation(output: torch.Tensor, frame: torch.Tensor) -> float:
    """The correlation of two images' gray levels (BT.601 luma): how much of its photo a stylised frame
    keeps. A loop that stylises each frame a little more than the one before lets it fall frame by frame."""
    a, b = _luma(output).flatten(), _luma(frame).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-12))


def level_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """The mean absolute difference of two images, in 8-bit levels (0..255)."""
    return float((as_rgb_batch(a, "image") - as_rgb_batch(b, "image")).abs().mean() * 255)
