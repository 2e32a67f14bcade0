"""Per-iteration time of each preset against a bare forward+backward of the same network.

    python -m bench.iteration --size 256 --device cpu

The bare pass runs the VGG from the input up to the deepest layer the preset uses and back to the
input, nothing else. Both are measured in alternating rounds and the fastest iteration of each is
reported (the least disturbed on a shared machine). A preset iteration adds hooks, the losses, the optimiser step and the averaged
iterate. The last line is ``ratio X.XX``: the quality preset's per-iteration time over the bare one.
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, List, Tuple

import torch

from nst_core import ContentTarget, StyleTarget, get_preset, load_extractor, optimize
from nst_core.layers import layer_index

from .common import bench_images, print_table, sync


def bare_iteration(ext, image: torch.Tensor, deepest: int, iters: int, warmup: int = 2) -> List[float]:
    """Seconds of each forward+backward of ``features[:deepest+1]`` w.r.t. the input image."""
    x = image.clone().requires_grad_(True)
    times: List[float] = []
    for i in range(warmup + iters):
        sync(ext.device)
        t = time.perf_counter()
        y = ext.features[: deepest + 1](ext.preprocess(x))
        y.sum().backward()
        x.grad = None
        sync(ext.device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def preset_iteration(ext, content: torch.Tensor, style: torch.Tensor, preset: str, iters: int,
                     warmup: int = 2, **overrides) -> List[float]:
    """Seconds of each iteration of ``preset`` at the content's size (one scale, after a warm-up)."""
    p = get_preset(preset)
    c = ContentTarget.create(ext, content, p.content_layer)
    s = StyleTarget.create(ext, style, p.style_layers, p.style_layer_weights, p.statistic)
    stamps: List[float] = []

    def progress(info) -> None:
        sync(ext.device)
        stamps.append(time.perf_counter())

    settings = p.settings.replace(steps=warmup + iters + 1, first_steps=None, min_size=1 << 30,
                                  lbfgs_max_iter=warmup + iters + 1, loss_every=1 << 30, **overrides)
    optimize(ext, c, s, "content", settings, None, progress)
    return [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]


def compare_iteration(ext, content, style, preset: str, deepest: int, iters: int, rounds: int = 3,
                      **overrides) -> Tuple[float, float]:
    """(bare, preset) seconds per iteration, measured in alternating rounds; the fastest of each.

    On a shared, noisy machine the fastest iteration is the one least disturbed by other work.
    """
    bare: List[float] = []
    it: List[float] = []
    for _ in range(rounds):
        bare += bare_iteration(ext, content, deepest, iters)
        it += preset_iteration(ext, content, style, preset, iters, **overrides)
    return min(bare), min(it)


def main(argv=None) -> int:
    """Print the per-iteration table and the quality/bare ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="square edge in px (default 256)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--presets", default="seed,fast,quality")
    args = ap.parse_args(argv)
    ext = load_extractor(device=args.device)
    content, style = bench_images(args.size, square=True)
    content, style = content.to(args.device), style.to(args.device)
    rows: List[Dict[str, object]] = []
    ratio = None
    for name in args.presets.split(","):
        p = get_preset(name)
        deepest = max(layer_index("vgg19", n) for n in list(p.style_layers) + [p.content_layer])
        bare, it = compare_iteration(ext, content, style, name, deepest, args.iters)
        rows.append({"preset": name, "size": f"{args.size}x{args.size}", "device": args.device,
                     "deepest layer": ext.names[deepest], "bare fwd+bwd ms": f"{bare * 1e3:.1f}",
                     "preset iter ms": f"{it * 1e3:.1f}", "ratio": f"{it / bare:.2f}"})
        if name == "quality":
            ratio = it / bare
    print_table(rows)
    if ratio is not None:
        print(f"ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
