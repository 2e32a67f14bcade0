"""Optical flow between two frames, warping by a flow, and the forward-backward consistency mask.

Flow convention: ``flow = estimate_flow(a, b)`` is ``[2,H,W]`` (x then y displacement, in pixels)
such that ``a[:, y, x] ≈ b[:, y + flow[1,y,x], x + flow[0,y,x]]``; so ``warp(b, flow)`` ≈ ``a``.
To carry frame t-1 into frame t, use ``warp(previous, estimate_flow(current, previous))``.

The flow method sits behind :func:`estimate_flow` alone (OpenCV's DIS today), so it can change.
OpenCV is imported lazily: the rest of nst_core works without it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

# Ruder et al. 2016, "Artistic style transfer for videos", section 3.2
_OCCLUSION_REL = 0.01
_OCCLUSION_ABS = 0.5
_BOUNDARY_REL = 0.01
_BOUNDARY_ABS = 0.002

INSTALL_HINT = ('optical flow needs OpenCV: pip install opencv-python (or, in a clone of this repository, '
                'pip install ".[video]")')


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return cv2


def require_opencv() -> None:
    """Raise ImportError with :data:`INSTALL_HINT` unless OpenCV can be imported (call it before any work)."""
    _cv2()


def _gray_u8(image: torch.Tensor, name: str) -> np.ndarray:
    """``[3,H,W]``/``[1,3,H,W]`` RGB 0..1 → ``H×W`` uint8 luma (BT.601)."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [3,H,W] in 0..1; got {type(image).__name__}")
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"{name} must have shape [3,H,W] or [1,3,H,W]; got {list(image.shape)}")
    r, g, b = image.detach().float().clamp(0, 1).cpu()
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    return np.ascontiguousarray(luma.mul(255).round().to(torch.uint8).numpy())


def estimate_flow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dense optical flow from ``a`` to ``b`` (each ``[3,H,W]`` or ``[1,3,H,W]`` RGB 0..1): ``[2,H,W]`` float.

    OpenCV's DIS (``PRESET_MEDIUM``) on the luma; deterministic for the same inputs.
    """
    ga, gb = _gray_u8(a, "flow frame a"), _gray_u8(b, "flow frame b")
    if ga.shape != gb.shape:
        raise ValueError(f"flow frames must have the same size; got {ga.shape[::-1]} and {gb.shape[::-1]} (W×H)")
    cv2 = _cv2()
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(ga, gb, None)  # H×W×2 float32, (dx, dy)
    return torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1).contiguous()


def _as_batch_flow(flow: torch.Tensor, batch: int) -> torch.Tensor:
    if flow.dim() == 3:
        flow = flow.unsqueeze(0)
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must have shape [2,H,W] or [B,2,H,W]; got {list(flow.shape)}")
    return flow.expand(batch, -1, -1, -1) if flow.shape[0] == 1 else flow


def _sample_at(flow: torch.Tensor, h: int, w: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """Where each pixel samples: ``(x + flow_x, y + flow_y)``, each ``[B,H,W]``."""
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(h, 1)
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, w)
    return xs + flow[:, 0], ys + flow[:, 1]


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` (``[B,C,H,W]``) at ``x + flow(x)``, bilinearly: ``[B,C,H,W]``.

    Exact for whole-pixel flows (a zero flow returns the image bit for bit). A pixel whose sample falls
    outside the image gets the nearest edge value; it has nothing to carry, and
    :func:`consistency_mask` leaves it out.
    """
    if image.dim() != 4:
        raise ValueError(f"image to warp must have shape [B,C,H,W]; got {list(image.shape)}")
    b, c, h, w = image.shape
    flow = _as_batch_flow(flow.to(image.device, image.dtype), b)
    if tuple(flow.shape[-2:]) != (h, w):
        raise ValueError(f"flow is {flow.shape[-1]}×{flow.shape[-2]} but the image is {w}×{h}; give the same size")
    x, y = _sample_at(flow, h, w)
    x, y = x.clamp(0, w - 1), y.clamp(0, h - 1)
    x0, y0 = x.floor(), y.floor()
    fx, fy = (x - x0).unsqueeze(1), (y - y0).unsqueeze(1)
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    flat = image.reshape(b, c, h * w)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat.gather(2, (yy * w + xx).view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def leaves_frame(flow: torch.Tensor) -> torch.Tensor:
    """``[1,H,W]`` bool: pixels whose flow (``[2,H,W]``) points outside the frame it samples."""
    h, w = flow.shape[-2:]
    x, y = _sample_at(_as_batch_flow(flow.float(), 1), h, w)
    return (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)


def consistency_mask(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Where frame t's pixels can trust frame t-1 warped into it: ``[1,H,W]`` of 0/1.

    ``backward`` is the flow from frame t to t-1 (the one used for warping), ``forward`` from t-1 to t.
    0 marks pixels new to frame t: those whose backward flow leaves frame t-1 (scene entering at an
    edge) and disocclusions (the forward flow, carried to frame t, is not the opposite of the backward
    flow: ``|w̃ + ŵ|² > 0.01(|w̃|² + |ŵ|²) + 0.5``); and motion boundaries
    (``|∇û|² + |∇v̂|² > 0.01|ŵ|² + 0.002``), as in Ruder et al. 2016.
    """
    if forward.shape != backward.shape or forward.dim() != 3 or forward.shape[0] != 2:
        raise ValueError(f"forward and backward flows must both be [2,H,W]; got {list(forward.shape)} "
                         f"and {list(backward.shape)}")
    carried = warp(forward.unsqueeze(0).float(), backward.float())[0]  # w̃(x) = w(x + ŵ(x))
    bwd = backward.float()
    occluded = ((carried + bwd) ** 2).sum(0) > _OCCLUSION_REL * ((carried**2).sum(0) + (bwd**2).sum(0)) + _OCCLUSION_ABS
    grad = torch.zeros_like(bwd[0])
    for comp in bwd:  # |∇û|² + |∇v̂|², forward differences
        dx = F.pad(comp[:, 1:] - comp[:, :-1], (0, 1))
        dy = F.pad(comp[1:, :] - comp[:-1, :], (0, 0, 0, 1))
        grad = grad + dx**2 + dy**2
    boundary = grad > _BOUNDARY_REL * (bwd**2).sum(0) + _BOUNDARY_ABS
    return (~(occluded | boundary | leaves_frame(bwd)[0])).float().unsqueeze(0)


def flow_and_mask(previous: torch.Tensor, current: torch.Tensor,
                  flow_fn: Optional["callable"] = None) -> "tuple[torch.Tensor, torch.Tensor]":
    """The backward flow (current → previous, for warping) and the consistency mask of ``current``."""
    flow_fn = flow_fn or estimate_flow
    backward = flow_fn(current, previous)
    forward = flow_fn(previous, current)
    return backward, consistency_mask(forward, backward)
