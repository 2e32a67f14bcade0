"""Per-iteration time of each preset against a bare forward+backward of the same network.

    python -m bench.iteration --size 256 --device cpu

The bare pass runs the VGG from the input up to the deepest layer the preset uses and back to the
input, nothing else. A preset iteration adds hooks, the losses, the optimiser step and the averaged
iterate. The two are interleaved: after each preset iteration the progress callback runs one bare pass,
so both see the same load on a shared machine. A round is ``--iters`` consecutive iterations (a window
that covers the preset's periodic work, such as the W2 transport refresh every 10 steps); each round
gives a ratio of the mean times, and the median round is reported. The last line is ``ratio X.XX``: the
quality preset's per-iteration time over the bare one. ``--switches`` adds a table of the quality preset
with each fast-path switch on.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Dict, List, Optional, Tuple

import torch

from nst_core import ContentTarget, StyleTarget, get_preset, load_extractor, optimize
from nst_core.layers import layer_index

from .common import bench_images, print_table, sync


def bare_pass(ext, x: torch.Tensor, deepest: int) -> float:
    """Seconds of one forward+backward of ``features[:deepest+1]`` w.r.t. the input ``x``."""
    sync(ext.device)
    t = time.perf_counter()
    y = ext.features[: deepest + 1](ext.preprocess(x))
    y.sum().backward()
    x.grad = None
    sync(ext.device)
    return time.perf_counter() - t


SWITCHES = (
    ("default (channels_last, fp32)", {"autocast_bf16": False}),
    ("channels_last off", {"channels_last": False, "autocast_bf16": False}),
    ("bf16 autocast", {"autocast_bf16": True}),
    ("checkpoint", {"checkpoint": True}),
    ("compile", {"compile": True}),
    ("exact W2 every step", {"transport_every": 1}),
)


def interleaved_round(ext, content: torch.Tensor, style: torch.Tensor, preset: str, deepest: int, iters: int,
                      warmup: int = 2, warm: Optional[List[float]] = None,
                      **overrides) -> Tuple[List[float], List[float]]:
    """(bare, preset) seconds of ``iters`` iterations each, one bare pass after every preset iteration.

    The preset runs ``optimize`` at the content's size (one scale); its progress callback times the
    iteration that just ended, then runs one bare pass, so both see the same machine load. ``warm``,
    if given, receives the seconds of the warm-up iterations (where ``compile`` compiles).
    """
    p = get_preset(preset)
    c = ContentTarget.create(ext, content, p.content_layer)
    s = StyleTarget.create(ext, style, p.style_layers, p.style_layer_weights, p.statistic)
    x = content.clone().requires_grad_(True)
    bare: List[float] = []
    it: List[float] = []
    began = [time.perf_counter()]
    start = [0.0]

    def progress(info) -> None:
        sync(ext.device)
        ended = time.perf_counter()
        if info.step == warmup and warm is not None:
            warm.append(ended - start[0])
        if info.step > warmup:
            it.append(ended - began[0])
            bare.append(bare_pass(ext, x, deepest))
        began[0] = time.perf_counter()

    settings = p.settings.replace(steps=warmup + iters, first_steps=None, min_size=1 << 30,
                                  lbfgs_max_iter=warmup + iters, **overrides)
    for _ in range(2):  # the bare pass's own warm-up
        bare_pass(ext, x, deepest)
    start[0] = began[0] = time.perf_counter()
    optimize(ext, c, s, "content", settings, None, progress)
    return bare, it


def compare_iteration(ext, content, style, preset: str, deepest: int, iters: int, rounds: int = 3,
                      warm: Optional[List[float]] = None, **overrides) -> Tuple[float, float, float]:
    """(bare, preset, ratio): per-iteration seconds and their ratio, the median over ``rounds``.

    Each round runs ``iters`` preset iterations (a window that covers the periodic work, such as the
    W2 transport refresh every 10 steps) with a bare pass after each; a round's figures are the means
    over its window. Interleaving makes the ratio robust on a shared, noisy machine.
    """
    samples = []
    for _ in range(rounds):
        bare, it = interleaved_round(ext, content, style, preset, deepest, iters, warm=warm, **overrides)
        b, i = statistics.fmean(bare), statistics.fmean(it)
        samples.append((i / b, b, i))
    ratio, b, i = sorted(samples)[len(samples) // 2]
    return b, i, ratio


def switch_rows(ext, content, style, size: int, iters: int, rounds: int = 2) -> List[Dict[str, object]]:
    """The quality preset with each fast-path switch on, against the bare pass (one row per switch)."""
    p = get_preset("quality")
    deepest = max(layer_index("vgg19", n) for n in list(p.style_layers) + [p.content_layer])
    rows: List[Dict[str, object]] = []
    for label, extra in SWITCHES:
        warm: List[float] = []
        bare, it, ratio = compare_iteration(ext, content, style, "quality", deepest, iters, rounds, warm, **extra)
        rows.append({"size": f"{size}²", "switch": label, "bare ms": f"{bare * 1e3:.1f}",
                     "iter ms": f"{it * 1e3:.1f}", "ratio": f"{ratio:.2f}",
                     "first 2 iters s": f"{warm[0]:.1f}"})
    return rows


def main(argv=None) -> int:
    """Print the per-iteration table and the quality/bare ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="square edge in px (default 256)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=10, help="iterations per round (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per preset; the median is reported (default 5)")
    ap.add_argument("--presets", default="seed,fast,quality")
    ap.add_argument("--switches", action="store_true",
                    help="also time the quality preset with each fast-path switch on (channels_last, bf16, "
                         "checkpoint, compile, exact W2)")
    args = ap.parse_args(argv)
    ext = load_extractor(device=args.device)
    content, style = bench_images(args.size, square=True)
    content, style = content.to(args.device), style.to(args.device)
    rows: List[Dict[str, object]] = []
    ratio = None
    for name in args.presets.split(","):
        p = get_preset(name)
        deepest = max(layer_index("vgg19", n) for n in list(p.style_layers) + [p.content_layer])
        bare, it, r = compare_iteration(ext, content, style, name, deepest, args.iters, args.rounds)
        rows.append({"preset": name, "size": f"{args.size}x{args.size}", "device": args.device,
                     "deepest layer": ext.names[deepest], "bare fwd+bwd ms": f"{bare * 1e3:.1f}",
                     "preset iter ms": f"{it * 1e3:.1f}", "ratio": f"{r:.2f}"})
        if name == "quality":
            ratio = r
    print_table(rows)
    if args.switches:
        print()
        print_table(switch_rows(ext, content, style, args.size, args.iters, args.rounds))
    if ratio is not None:
        print(f"ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
