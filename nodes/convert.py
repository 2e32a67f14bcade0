"""Conversions between ComfyUI IMAGE tensors ``[B,H,W,C]`` and nst_core's ``[B,3,H,W]``."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..nst_core.extractor import Extractor
from ..nst_core.image import as_rgb_batch
from . import comfy_bridge as bridge


def image_to_nst(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """IMAGE ``[B,H,W,C]`` → ``[B,3,H,W]`` RGB 0..1 (a normal, non-inference tensor)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a ComfyUI IMAGE [B,H,W,C]; got {shape}")
    with torch.inference_mode(False):
        return as_rgb_batch(image.detach().clone().movedim(-1, 1), name)


def nst_to_image(image: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` → IMAGE ``[B,H,W,C]`` float 0..1, contiguous, on ComfyUI's intermediate device."""
    return image.detach().clamp(0, 1).movedim(1, -1).contiguous().to(bridge.output_device())


@contextlib.contextmanager
def extractor_on(extractor: Extractor, device: torch.device) -> Iterator[Extractor]:
    """Move the shared extractor to ``device`` for the duration of a node call, then park it again.

    The memory for the run is asked for beforehand (see :func:`plan_run`); afterwards the network
    goes back to ComfyUI's offload device and the cache is emptied through ComfyUI, also on errors.
    """
    check_extractor(extractor)
    try:
        with torch.inference_mode(False):
            extractor.to(device)
        yield extractor
    finally:
        with torch.inference_mode(False):
            extractor.to(bridge.offload_device())
        bridge.empty_cache()


def check_extractor(extractor: object) -> Extractor:
    """The extractor input, or a clear error naming what was linked instead."""
    if not isinstance(extractor, Extractor):
        raise TypeError(f"extractor must come from a Load VGG Extractor node; got {type(extractor).__name__}")
    return extractor


@contextlib.contextmanager
def oom_advice(advice: str) -> Iterator[None]:
    """Re-raise any backend's out-of-memory error as ComfyUI's OOM type, with ``advice`` attached."""
    try:
        yield
    except Exception as exc:
        if not bridge.is_oom(exc):
            raise
        raise bridge.oom_exception(f"{advice} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
