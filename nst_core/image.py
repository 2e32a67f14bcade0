"""Image I/O and layout helpers: everything inside nst_core is ``[B,3,H,W]`` RGB float in 0..1."""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError


def load_image(path: str, long_edge: Optional[int] = None) -> torch.Tensor:
    """Read an image file as ``[1,3,H,W]`` RGB 0..1, upright; alpha is composited on white, gray expanded.

    The EXIF orientation tag (set by cameras and phones) is applied, as image viewers and ComfyUI's
    Load Image do, so the pixels are the way the photo is shown.
    """
    require_file(path, "image")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)  # a copy turned upright (no-op without the tag)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, rgba)
            if _is_wide_gray(im):
                arr = np.repeat(_wide_gray(im)[..., None], 3, axis=2)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, Image.DecompressionBombError) as exc:  # not an image, truncated, unreadable, too large
        raise unreadable_image(path, "image", exc) from None
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).unsqueeze(0)
    return resize_long_edge(t, long_edge) if long_edge else t


def load_mask(path: str) -> torch.Tensor:
    """Read a grayscale mask file as ``[1,1,H,W]`` in 0..1 (white = 1); a colour image is converted to gray."""
    require_file(path, "mask")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            arr = _wide_gray(im) if _is_wide_gray(im) else np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (OSError, Image.DecompressionBombError) as exc:
        raise unreadable_image(path, "mask", exc) from None
    return torch.from_numpy(np.ascontiguousarray(arr))[None, None]


def _is_wide_gray(im: Image.Image) -> bool:
    """A 16- or 32-bit gray image (PIL modes I, I;16…, F): ``convert("L")`` would clip it to white."""
    return im.mode.startswith("I") or im.mode == "F"


def _wide_gray(im: Image.Image) -> np.ndarray:
    """A 16/32-bit gray image as float32 in 0..1, scaled by its own range (16 bit: 65535; float: 1)."""
    arr = np.asarray(im, dtype=np.float32)
    wide = im.mode.startswith("I;16") or (arr.size and arr.max() > 255)
    return np.clip(arr / (1.0 if im.mode == "F" else 65535.0 if wide else 255.0), 0, 1)


def require_file(path: str, what: str) -> None:
    """Refuse a path that is not an existing file, saying what it is instead."""
    if not os.path.isfile(path):
        kind = "is a folder, not a file" if os.path.isdir(path) else "not found"
        raise FileNotFoundError(f"{what} {kind}: {path!r}")


def unreadable_image(path: str, what: str, exc: BaseException) -> ValueError:
    """The error for an image file PIL could not open or decode, naming the file and what to do."""
    if isinstance(exc, UnidentifiedImageError):
        return ValueError(f"{what} {path!r} is not an image file PIL can read (PNG, JPEG, WebP, …)")
    if isinstance(exc, Image.DecompressionBombError):
        return ValueError(f"{what} {path!r} is too large to open safely ({exc}); downscale it first")
    if isinstance(exc, PermissionError):
        return ValueError(f"{what} {path!r} cannot be read: permission denied; check the file's permissions")
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return ValueError(f"{what} {path!r} cannot be read ({detail}): the file may be truncated or damaged; "
                      "re-save or re-download it")


def probe_image(path: str, what: str = "image") -> Tuple[int, int]:
    """``(width, height)`` of an image file from its header, decoding no pixels: a cheap check that the
    file exists, is readable and is an image PIL knows, with the errors :func:`load_image` gives."""
    require_file(path, what)
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} {path!r} is an empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, Image.DecompressionBombError) as exc:
        raise unreadable_image(path, what, exc) from None
    if width < 1 or height < 1:
        raise ValueError(f"{what} {path!r} has no pixels ({width}×{height})")
    return width, height


def save_image(image: torch.Tensor, path: str) -> None:
    """Write ``[1,3,H,W]`` or ``[3,H,W]`` 0..1 as an 8-bit file (format from the extension)."""
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"save_image takes one image; got a batch of {image.shape[0]}")
        image = image[0]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    to_pil(image).save(path)


def to_pil(image: torch.Tensor) -> Image.Image:
    """``[3,H,W]`` (or ``[1,3,H,W]``) 0..1 → 8-bit PIL RGB image."""
    if image.dim() == 4:
        image = image[0]
    arr = (image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    return Image.fromarray(arr, "RGB")


def fit_long_edge(hw: Tuple[int, int], long_edge: int) -> Tuple[int, int]:
    """(H, W) scaled so the longer side is ``long_edge``, aspect kept, each side ≥ 1."""
    h, w = hw
    s = long_edge / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The memory format of ``t`` (``channels_last`` when its channels are the innermost dimension)."""
    return torch.channels_last if t.dim() == 4 and t.stride(1) == 1 and t.shape[1] > 1 else torch.contiguous_format


def resize(image: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """Resize ``[B,C,H,W]`` to ``hw`` (antialiased bicubic when shrinking), clamped to 0..1."""
    if tuple(image.shape[-2:]) == tuple(hw):
        return image
    return interpolate(image, hw, "bicubic", antialias=True).clamp(0, 1)


def interpolate(t: torch.Tensor, hw: Tuple[int, int], mode: str, antialias: bool = False) -> torch.Tensor:
    """``F.interpolate`` of ``[B,C,H,W]`` to ``hw`` on a device that has the kernel (:func:`resize_device`),
    returned on ``t``'s device."""
    where = resize_device(t.device)
    out = F.interpolate(t.to(where), size=hw, mode=mode, align_corners=False, antialias=antialias)
    return out.to(t.device)


def resize_device(device: torch.device) -> torch.device:
    """Where an antialiased bicubic resize can run: the device itself on CPU/CUDA, else the CPU (MPS, DirectML)."""
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


def resize_long_edge(image: torch.Tensor, long_edge: int) -> torch.Tensor:
    """Resize so the longer side is ``long_edge``."""
    return resize(image, fit_long_edge(tuple(image.shape[-2:]), long_edge))


def as_rgb_batch(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Validate a ``[B,C,H,W]``/``[C,H,W]`` tensor and return ``[B,3,H,W]`` float RGB in 0..1.

    One channel is expanded to gray RGB; a 4th (alpha) channel is composited over white.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B,3,H,W] in 0..1, got {type(image).__name__}")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4:
        raise ValueError(f"{name} must have shape [B,3,H,W]; got {list(image.shape)}")
    b, c, h, w = image.shape
    if b == 0 or h == 0 or w == 0:
        raise ValueError(f"{name} is empty (shape {list(image.shape)}); give at least one image of at least 1×1 pixels")
    if c not in (1, 3, 4):
        raise ValueError(f"{name} has {c} channels; accepted are 1 (gray), 3 (RGB) or 4 (RGBA)")
    image = image.float()
    if not torch.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or Inf pixels; give finite values in 0..1")
    if c == 1:
        image = image.expand(b, 3, h, w)
    elif c == 4:
        alpha = image[:, 3:4].clamp(0, 1)
        image = image[:, :3] * alpha + (1 - alpha)
    return image.clamp(0, 1)
