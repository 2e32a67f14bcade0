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


# Load Image's MASK for an image without an alpha channel (a JPG, say): 64×64 zeros
NO_ALPHA_MASK_HW = (64, 64)


def check_mask(mask: object, name: str, effect: str, any_black: bool = True) -> None:
    """Refuse an all-black MASK, saying how ComfyUI makes one and how to get a real one.

    Load Image's MASK is white where its image is transparent: an image without an alpha channel
    gives an empty 64×64 mask, an opaque one a mask of zeros. ``effect`` says what black means here.
    With ``any_black=False`` only Load Image's empty 64×64 mask is refused: a black mask at the image's
    size (a detector that found nothing, say) is then a valid "nothing here".
    """
    if not isinstance(mask, torch.Tensor) or mask.numel() == 0 or bool((mask != 0).any()):
        return  # None, a usable mask, or a malformed one (the engine names that)
    no_alpha = tuple(mask.shape[-2:]) == NO_ALPHA_MASK_HW
    if not (any_black or no_alpha):
        return
    if no_alpha:
        why = ("it is the empty 64×64 mask that Load Image gives for an image without an alpha channel "
               "(a JPG, say)")
    else:
        why = "Load Image's MASK is white only where its image is transparent, and this image has no transparent pixel"
    raise ValueError(
        f"the {name} is all black (0): {effect}. Probably {why}. Use a PNG whose region is transparent (paint "
        f"it in ComfyUI's mask editor), or make the mask with a mask node such as Solid Mask, or Convert Image "
        f"to Mask on a black-and-white image"
    )


def check_extractor(extractor: object) -> Extractor:
    """The extractor input, or a clear error naming what was linked instead."""
    if not isinstance(extractor, Extractor):
        raise TypeError(f"extractor must come from an NST Load VGG Extractor node; got {type(extractor).__name__}")
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
