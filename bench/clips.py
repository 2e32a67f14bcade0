"""Clips with known camera motion, cut from the benchmark photos (there is no video footage here).

    python -m bench.clips OUT_DIR [--size 128] [--frames 48]     # writes OUT_DIR/<clip>/frame_000.png …

Each clip is a list of ``[1,3,H,W]`` frames, ``size`` × ¾ px (landscape), made by moving a window
over a photo loaded at twice that size:

- ``static``: the same window every frame, with a little sensor noise (σ = 1.5/255, a new draw each
  frame), as a camera on a tripod gives;
- ``pan``: the window slides right by 5 px and down by 1 px a frame, along the town's houses: new
  scene enters at the right;
- ``zoom``: a slow zoom in (the window shrinks 1 % a frame, resized back to the frame size);
- ``entering``: a still camera on tubingen while a disc cut from golden_gate slides in from the right
  edge, 4 px a frame, covering the background ahead of it and uncovering it behind.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Dict, List

import torch

from nst_core.image import fit_long_edge, load_image, resize, save_image

from .common import image_path

CLIPS = ("static", "pan", "zoom", "entering")
PAN_STEP = (1, 5)  # (dy, dx) px a frame
NOISE = 1.5 / 255
ENTER_SPEED = 4  # px a frame


def _photo(name: str, size: int) -> torch.Tensor:
    return load_image(image_path(name), 2 * size)


def _frame_hw(size: int):
    return fit_long_edge((3, 4), size)


def static(size: int, frames: int, seed: int = 0) -> List[torch.Tensor]:
    """One window of tubingen.jpg, with fresh sensor noise on every frame."""
    h, w = _frame_hw(size)
    base = _photo("tubingen.jpg", size)[..., 20:20 + h, 40:40 + w]
    gen = torch.Generator().manual_seed(seed)
    return [(base + NOISE * torch.randn(base.shape, generator=gen)).clamp(0, 1) for _ in range(frames)]


def pan(size: int, frames: int) -> List[torch.Tensor]:
    """A window sliding right and down over tubingen.jpg by :data:`PAN_STEP` a frame."""
    h, w = _frame_hw(size)
    photo = _photo("tubingen.jpg", size)
    dy, dx = PAN_STEP
    grow = max((dy * (frames - 1) + h) / (0.6 * photo.shape[-2]), (dx * (frames - 1) + w) / photo.shape[-1])
    if grow > 1:  # a long pan: the photo at a larger size (the motion stays 5 px a frame)
        photo = load_image(image_path("tubingen.jpg"), int(2 * size * grow) + 1)
    y = round(0.4 * photo.shape[-2]) - h // 2  # the houses, not the sky
    return [photo[..., y + dy * t: y + dy * t + h, dx * t: dx * t + w].contiguous() for t in range(frames)]


def zoom(size: int, frames: int, rate: float = 0.01) -> List[torch.Tensor]:
    """A slow zoom into tubingen.jpg: the window shrinks by ``rate`` a frame about its centre."""
    h, w = _frame_hw(size)
    photo = _photo("tubingen.jpg", size)
    cy, cx = photo.shape[-2] // 2, photo.shape[-1] // 2
    out = []
    for t in range(frames):
        s = 1.5 * (1 - rate) ** t  # the window is 1.5× the frame at first
        hh, ww = round(h * s / 2), round(w * s / 2)
        out.append(resize(photo[..., cy - hh: cy + hh, cx - ww: cx + ww], (h, w)))
    return out


def entering(size: int, frames: int) -> List[torch.Tensor]:
    """A disc of golden_gate.jpg sliding in from the right edge over a fixed window of tubingen.jpg."""
    h, w = _frame_hw(size)
    back = _photo("tubingen.jpg", size)[..., 20:20 + h, 40:40 + w]
    r = h // 3
    obj = resize(load_image(image_path("golden_gate.jpg")), (2 * r, 2 * r))
    ys, xs = torch.meshgrid(torch.arange(2 * r), torch.arange(2 * r), indexing="ij")
    disc = (((ys - r + 0.5) ** 2 + (xs - r + 0.5) ** 2) <= r * r).float()
    out = []
    for t in range(frames):
        frame = back.clone()
        x0 = w - ENTER_SPEED * (t + 1)  # the disc's left edge
        y0 = h // 2 - r
        a, b = max(x0, 0), min(x0 + 2 * r, w)
        if a < b:
            m = disc[:, a - x0: b - x0]
            frame[..., y0:y0 + 2 * r, a:b] = m * obj[..., :, a - x0: b - x0] + (1 - m) * frame[..., y0:y0 + 2 * r, a:b]
        out.append(frame)
    return out


MAKERS: Dict[str, Callable[[int, int], List[torch.Tensor]]] = {
    "static": static, "pan": pan, "zoom": zoom, "entering": entering}


def make(name: str, size: int, frames: int) -> List[torch.Tensor]:
    """The clip ``name`` (one of :data:`CLIPS`) of ``frames`` frames with long edge ``size``, in 8-bit levels."""
    if name not in MAKERS:
        raise SystemExit(f"unknown clip {name!r}; choose from {', '.join(CLIPS)}")
    return [f.clamp(0, 1).mul(255).round().div(255) for f in MAKERS[name](size, frames)]  # 8-bit, as video is


def main(argv=None) -> int:
    """Write every clip as a folder of PNG frames."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--clips", nargs="+", default=list(CLIPS), choices=CLIPS)
    args = ap.parse_args(argv)
    for name in args.clips:
        folder = os.path.join(args.out, name)
        for t, frame in enumerate(make(name, args.size, args.frames)):
            save_image(frame, os.path.join(folder, f"frame_{t:03d}.png"))
        print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
