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

INSTALL_HINT = ('optical flow needs OpenCV: pip install "vgg-style-transfer-nodes[video]" '
                "(or opencv-python-headless / opencv-python)")


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return cv2


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


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` (``[B,C,H,W]``) at ``x + flow(x)`` (bilinear, edges repeated): ``[B,C,H,W]``."""
    if image.dim() != 4:
        raise ValueError(f"image to warp must have shape [B,C,H,W]; got {list(image.shape)}")
    b, _, h, w = image.shape
    flow = _as_batch_flow(flow.to(image.device, image.dtype), b)
    if tuple(flow.shape[-2:]) != (h, w):
        raise ValueError(f"flow is {flow.shape[-1]}×{flow.shape[-2]} but the image is {w}×{h}; give the same size")
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=image.dtype),
                            torch.arange(w, device=image.device, dtype=image.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) * (2 / max(w - 1, 1)) - 1
    gy = (ys + flow[:, 1]) * (2 / max(h - 1, 1)) - 1
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def consistency_mask(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Where frame t's pixels can trust frame t-1 warped into it: ``[1,H,W]`` of 0/1.

    ``backward`` is the flow from frame t to t-1 (the one used for warping), ``forward`` from t-1 to t.
    0 marks disocclusions (the forward flow, carried to frame t, is not the opposite of the backward
    flow: ``|w̃ + ŵ|² > 0.01(|w̃|² + |ŵ|²) + 0.5``) and motion boundaries
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
    return (~(occluded | boundary)).float().unsqueeze(0)


def flow_and_mask(previous: torch.Tensor, current: torch.Tensor,
                  flow_fn: Optional["callable"] = None) -> "tuple[torch.Tensor, torch.Tensor]":
    """The backward flow (current → previous, for warping) and the consistency mask of ``current``."""
    flow_fn = flow_fn or estimate_flow
    backward = flow_fn(current, previous)
    forward = flow_fn(previous, current)
    return backward, consistency_mask(forward, backward)
