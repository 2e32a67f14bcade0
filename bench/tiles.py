"""Tiles against the whole image: time, peak memory and quality; the halo; the largest size that fits.

    python -m bench.tiles --device cpu [--sizes 256 384] [--tile 128] [--configs whole,whole-noise,tiled]
                          [--halos 0 16 32 48 64 96] [--step-sizes 512 1024] [--ram 24] [--check 4096]

Sections (Markdown tables on stdout):

- **halo**: at a W2 refresh, the cosine and relative error of the tiled gradient of the quality
  objective against the whole image's, for each halo, with the crop area over the image area (the
  extra work a halo costs).
- **whole vs tiled**: the quality preset end to end at each size: whole, whole with 1e-4 noise on the
  content (its PSNR to the whole run is the floor a tiled run is held to), tiled with the W2 goals
  stored between refreshes (the default) and tiled with a refresh at every step. Each run is its own
  process: seconds, peak memory (process RSS on the CPU, ``max_memory_allocated`` on CUDA), the peak
  of live tensor bytes of one refresh step (construction included; the profiler's memory accounting
  on the CPU), the referee's distances and the PSNR to the whole run.
- **one step by size**: the peak of live tensor bytes of one refresh step, whole and in tiles, at
  larger square sizes (no full run): peak memory follows the tile plus a few image-sized buffers.
- **largest**: the largest square output whose run fits in ``--ram`` GiB by the memory model
  (``nst_core.memory``: whole, whole with checkpointing, and tiled with ``choose_tile``), and with
  ``--check PX`` one tiled refresh step at PX² in its own process, its peak RSS against the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

import torch

from nst_core import ContentTarget, StyleTarget, get_preset, load_extractor, load_image, save_image, transfer
from nst_core import tiles
from nst_core.image import resize
from nst_core.memory import (DoesNotFit, choose_tile, estimate_bytes, largest_edge, required_bytes,
                             tiled_bytes)
from nst_core.objective import Objective

from .common import ROOT, bench_images, describe_device, peak_rss_mb, print_table, sync
from .referee import Referee

T = TypeVar("T")
CONFIGS = ("whole", "whole-noise", "tiled", "tiled-refresh")  # whole-noise: 1e-4 noise on the content


def peak_tensor_bytes(fn: Callable[[], T], device: "str | torch.device" = "cpu") -> Tuple[T, int]:
    """(``fn()``, the peak of live tensor bytes allocated while it ran, above those live before).

    CUDA: ``max_memory_allocated``. CPU: the profiler's memory events (every allocation and free of
    the CPU allocator, in order); their running sum's maximum. Robust to the allocator's caching and
    to the interpreter's own memory, unlike the process RSS.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return out, int(torch.cuda.max_memory_allocated() - start)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return out, int(peak)


def quality_targets(ext, content: torch.Tensor, style: torch.Tensor) -> Tuple[ContentTarget, StyleTarget]:
    """The quality preset's content and style targets."""
    p = get_preset("quality")
    return (ContentTarget.create(ext, content, p.content_layer),
            StyleTarget.create(ext, style, p.style_layers, p.style_layer_weights))


def step_peak(ext, content: torch.Tensor, style: torch.Tensor, tile: int, store_goals: bool = True) -> int:
    """Peak tensor bytes of building one scale's objective at the content's size and one refresh step."""
    c, s = quality_targets(ext, content, style)
    settings = get_preset("quality").settings.replace(tile=tile)
    hw = tuple(content.shape[-2:])
    x = content.clone().to(ext.device).requires_grad_(True)

    def step() -> None:
        before, tiles.STORE_GOALS = tiles.STORE_GOALS, store_goals
        try:
            Objective(ext, settings, hw, c, (s,)).gradient(x, True)
        finally:
            tiles.STORE_GOALS = before

    return peak_tensor_bytes(step, ext.device)[1]


# --------------------------------------------------------------------------- halo


def halo_rows(ext, size: int, tile: int, halos: List[int]) -> List[Dict[str, object]]:
    """Cosine and relative error of the tiled gradient at a refresh against the whole image's, per halo."""
    content, style = bench_images(size)
    content, style = content.to(ext.device), style.to(ext.device)
    c, s = quality_targets(ext, content, style)
    settings = get_preset("quality").settings
    hw = tuple(content.shape[-2:])
    x0 = 0.6 * content + 0.4 * resize(style, hw)  # halfway: both losses have a gradient

    def grad(obj) -> torch.Tensor:
        x = x0.clone().requires_grad_(True)
        obj.gradient(x, True)
        return x.grad

    whole = grad(Objective(ext, settings, hw, c, (s,)))
    rows = []
    for halo in halos:
        obj = Objective(ext, settings.replace(tile=tile), hw, c, (s,), halo=halo)
        sync(ext.device)
        t = time.perf_counter()
        g = grad(obj)
        sync(ext.device)
        secs = time.perf_counter() - t
        area = sum((t.crop[1] - t.crop[0]) * (t.crop[3] - t.crop[2]) for t in obj.geo.tiles()) / (hw[0] * hw[1])
        cos = float((g * whole).sum() / (g.norm() * whole.norm()))
        rel = float((g - whole).norm() / whole.norm())
        rows.append({"halo px": halo, "cosine": f"{cos:.5f}", "relative error": f"{rel:.4f}",
                     "crop area / image": f"{area:.2f}", "step s": f"{secs:.1f}"})
    return rows


# --------------------------------------------------------------------------- whole vs tiled


def run_one(config: str, size: int, tile: int, device: str, out: str) -> Dict[str, float]:
    """Run the quality preset once in this process (``config`` in :data:`CONFIGS`); save the image."""
    content, style = bench_images(size)
    if config == "whole-noise":  # how far a tiny change of the input moves the output: the PSNR floor
        noise = 1e-4 * torch.randn(content.shape, generator=torch.Generator().manual_seed(0))
        content = (content + noise).clamp(0, 1)
    tiles.STORE_GOALS = config != "tiled-refresh"
    ext = load_extractor(device=device)
    t = time.perf_counter()
    tile = tile if config.startswith("tiled") else 0
    img = transfer(ext, content, [style], "quality", tile=tile)
    sync(torch.device(device))
    seconds = time.perf_counter() - t
    save_image(img[:1], out)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else peak_rss_mb()
    step = step_peak(ext, content.to(device), style.to(device), tile, config != "tiled-refresh")
    return {"seconds": seconds, "peak_mb": peak, "step_mb": step / 2**20}


def compare_rows(sizes: List[int], tile: int, device: str, out_dir: str,
                 configs: List[str]) -> List[Dict[str, object]]:
    """Each configuration at each size in its own process, scored by the referee."""
    rows = []
    for size in sizes:
        content, style = bench_images(size)
        referee = Referee(content, style)
        whole_img = None
        for config in configs:
            image = os.path.join(out_dir, f"{config}_{size}.png")
            cmd = [sys.executable, "-m", "bench.tiles", "--one", config, "--sizes", str(size), "--tile", str(tile),
                   "--device", device, "--image", image]
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if res.returncode != 0:
                rows.append({"size": size, "run": config, "seconds": "failed: " + (res.stderr.strip().splitlines()
                                                                                  or ["?"])[-1][:80]})
                continue
            stats = json.loads(res.stdout.strip().splitlines()[-1])
            img = load_image(image)
            whole_img = img if config == "whole" else whole_img
            score = referee.score(img)
            psnr = "" if config == "whole" or whole_img is None else \
                f"{float(10 * torch.log10(1 / (img - whole_img).pow(2).mean())):.1f}"
            rows.append({"size": f"{img.shape[-1]}x{img.shape[-2]}",
                         "run": f"{config} {tile}" if config.startswith("tiled") else config,
                         "seconds": f"{stats['seconds']:.1f}",
                         "peak RSS MiB": f"{stats['peak_mb']:.0f}", "step tensors MiB": f"{stats['step_mb']:.0f}",
                         "content dist": f"{score['content']:.3f}", "style dist": f"{score['style']:.3f}",
                         "PSNR to whole dB": psnr})
    return rows


def step_rows(ext, sizes: List[int], tile: int) -> List[Dict[str, object]]:
    """Peak tensor bytes of one refresh step (objective built included), whole and tiled, by size."""
    rows = []
    for size in sizes:
        content, style = bench_images(size, square=True)
        content, style = content.to(ext.device), style.to(ext.device)
        whole, tiled = (step_peak(ext, content, style, t) for t in (0, tile))
        rows.append({"size": f"{size}x{size}", "whole MiB": f"{whole / 2**20:.0f}",
                     f"tiles of {tile} MiB": f"{tiled / 2**20:.0f}", "ratio": f"{tiled / whole:.2f}",
                     "tiled bytes/pixel": f"{tiled / size**2:.0f}"})
    return rows


# --------------------------------------------------------------------------- the largest size


def largest_rows(ram_gib: float) -> List[Dict[str, object]]:
    """The memory model's largest square output that fits in ``ram_gib`` GiB: whole, checkpointed, tiled."""
    p = get_preset("quality")
    layers, style = list(p.style_layers) + [p.content_layer], list(p.style_layers)
    free = int(ram_gib * 2**30)

    def whole(settings) -> Callable[[int], Tuple[int, int]]:
        return lambda e: (0, estimate_bytes((e, e), layers, settings, style_layers=style))

    def tiled(e: int) -> Tuple[int, int]:
        try:
            tile = choose_tile((e, e), layers, p.settings, free, style_layers=style)
        except DoesNotFit:
            return 0, 1 << 62
        return tile, tiled_bytes((e, e), tile, layers, p.settings, style_layers=style) if tile else \
            estimate_bytes((e, e), layers, p.settings, style_layers=style)

    rows = []
    plans = (("whole", whole(p.settings)), ("whole, checkpointing", whole(p.settings.replace(checkpoint=True))),
             ("tiled (choose_tile)", tiled))
    for name, plan in plans:
        edge = largest_edge(lambda e: required_bytes(plan(e)[1]) <= free, 1 << 17)
        tile, need = plan(edge)
        rows.append({"run": name, "largest square px": edge, "tile px": tile or "",
                     "model GiB at that size": f"{need / 2**30:.1f}"})
    return rows


def check_one(size: int, tile: int, device: str) -> Dict[str, float]:
    """One tiled refresh step of the quality objective at ``size``² in this process: seconds, peak RSS."""
    p = get_preset("quality")
    ext = load_extractor(device=device)
    content, style = bench_images(size, square=True)
    c, s = quality_targets(ext, content.to(device), style.to(device))
    hw = (size, size)
    t = time.perf_counter()
    obj = Objective(ext, p.settings.replace(tile=tile), hw, c, (s,))
    x = resize(content, hw).to(device).requires_grad_(True)
    obj.gradient(x, True)
    sync(torch.device(device))
    model = tiled_bytes(hw, tile, list(p.style_layers) + [p.content_layer], p.settings,
                        style_layers=list(p.style_layers))
    return {"seconds": time.perf_counter() - t, "peak_mb": peak_rss_mb(), "model_mb": model / 2**20}


def main(argv: Optional[List[str]] = None) -> int:
    """Print the three sections."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 384], help="long edges for whole vs tiled")
    ap.add_argument("--tile", type=int, default=128, help="tile size of the tiled runs (px)")
    ap.add_argument("--halos", type=int, nargs="*", default=[0, 16, 32, 48, 64, 96],
                    help="halos to sweep (none: skip the sweep)")
    ap.add_argument("--halo-size", type=int, default=384, help="long edge of the halo sweep")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"runs to compare, of {','.join(CONFIGS)}")
    ap.add_argument("--step-sizes", type=int, nargs="*", default=[512, 1024],
                    help="square sizes of the one-step memory table (none: skip it)")
    ap.add_argument("--step-tile", type=int, default=256, help="tile size of the one-step memory table")
    ap.add_argument("--ram", type=float, default=24.0, help="memory for the largest-size section, GiB")
    ap.add_argument("--check", type=int, help="also run one tiled step at this square size and compare")
    ap.add_argument("--check-tile", type=int, help="the tile of --check (default: choose_tile for --ram)")
    ap.add_argument("--skip-compare", action="store_true", help="skip whole vs tiled")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="folder for the output images (default: a temporary folder)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--check-one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.sizes[0], args.tile, args.device, args.image)))
        return 0
    if args.check_one:
        print(json.dumps(check_one(args.check, args.tile, args.device)))
        return 0
    print(f"device {args.device}: {describe_device(args.device)}; {time.strftime('%Y-%m-%d')}")
    if args.halos:
        print(f"\n### halo: tiled gradient at a W2 refresh against the whole image's "
              f"({args.halo_size} px, tile {args.tile})\n")
        print_table(halo_rows(load_extractor(device=args.device), args.halo_size, args.tile, args.halos))
    if not args.skip_compare:
        out_dir = args.out or tempfile.mkdtemp(prefix="nst-tiles-")
        os.makedirs(out_dir, exist_ok=True)
        print(f"\n### whole vs tiled, quality preset end to end (images in {out_dir})\n")
        print_table(compare_rows(args.sizes, args.tile, args.device, out_dir, args.configs.split(",")))
    if args.step_sizes:
        print("\n### peak tensor memory of one refresh step (objective built included), whole and in tiles\n")
        print_table(step_rows(load_extractor(device=args.device), args.step_sizes, args.step_tile))
    print(f"\n### largest square output in {args.ram:g} GiB (memory model, quality preset)\n")
    print_table(largest_rows(args.ram))
    if args.check:
        p = get_preset("quality")
        tile = args.check_tile or choose_tile((args.check,) * 2, list(p.style_layers) + [p.content_layer], p.settings,
                                              int(args.ram * 2**30), style_layers=list(p.style_layers)) or args.tile
        cmd = [sys.executable, "-m", "bench.tiles", "--check-one", "--check", str(args.check), "--tile", str(tile),
               "--device", args.device]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"\ncheck at {args.check} px failed: {res.stderr.strip()[-300:]}")
        else:
            stats = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"\none tiled refresh step at {args.check}² px, tile {tile}: {stats['seconds']:.0f} s, peak RSS "
                  f"{stats['peak_mb']:.0f} MiB, model {stats['model_mb']:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
