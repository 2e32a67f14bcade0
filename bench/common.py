"""Helpers shared by the benchmark scripts: images, device sync, memory, tables."""

from __future__ import annotations

import glob
import os
import platform
import resource
from typing import Dict, List, Tuple

import torch

from nst_core.image import load_image, resize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = os.environ.get("NST_BENCH_IMAGES", os.path.join(ROOT, "..", "shared", "images"))


def image_path(name: str) -> str:
    """Path of a benchmark image (``NST_BENCH_IMAGES`` or ../shared/images), or a clear error."""
    path = os.path.join(IMAGES, name)
    if not os.path.isfile(path):
        raise SystemExit(f"benchmark image {name!r} not found in {IMAGES}; set NST_BENCH_IMAGES to a folder with it")
    return path


def output_name(content: str, style: str, size: int) -> str:
    """The file name of a development-set output (``bench.devset --out``)."""
    return f"{content}__{style}_{size}.png"


def devset_outputs(folder: str) -> List[Tuple[str, str, str, int]]:
    """(path, content, style, size) of each :func:`output_name` file in ``folder``, or a clear error."""
    found = []
    for path in sorted(glob.glob(os.path.join(folder, "*__*_*.png"))):
        content, rest = os.path.basename(path)[:-len(".png")].split("__", 1)
        style, size = rest.rsplit("_", 1)
        found.append((path, content, style, int(size)))
    if not found:
        raise SystemExit(f"no outputs (content__style_SIZE.png) in {folder}")
    return found


def bench_images(size: int, square: bool = False,
                 content: str = "tubingen.jpg", style: str = "starry_night.jpg") -> Tuple[torch.Tensor, torch.Tensor]:
    """The real content and style images, content at long edge ``size`` (or ``size``² if ``square``)."""
    c = load_image(image_path(content), size)
    if square:
        c = resize(load_image(image_path(content)), (size, size))
    return c, load_image(image_path(style))


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def describe_device(device: str) -> str:
    """A one-line description of the device and the versions."""
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{name}; torch {torch.__version__}; python {platform.python_version()}"


def print_table(rows: List[Dict[str, object]]) -> None:
    """A Markdown table of ``rows`` (all rows share the first row's keys)."""
    if not rows:
        return
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
