"""Torch threads on the CPU: per-iteration time of the quality preset with 1, 2, … intra-op threads.

    python -m bench.threads --size 256 --threads 1 2 --busy 0 1 2

For each ``--busy`` level, that many competing processes (one busy loop each, standing for other users of
the machine) run while the thread counts are timed in alternation, round after round, in one process, so
each count sees the same load; the median round is reported, with the ratio to the first count. The last
column compares each count's image after the same iterations with the first count's: torch's CPU kernels
split their sums by thread, so results are bit-identical only for the same count. The ``nst`` command's
``--threads auto`` (``nst_core.cli_threads``) is judged by this table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
from typing import Dict, List

import torch

from nst_core import ContentTarget, StyleTarget, get_preset, load_extractor, optimize

from .common import bench_images, describe_device, print_table


def _spin() -> None:  # pragma: no cover - a competitor process
    while True:
        pass


def timed_run(ext, content, style, iters: int, warmup: int) -> "tuple[float, torch.Tensor]":
    """(mean seconds per iteration after ``warmup``, the image) of ``warmup + iters`` quality iterations."""
    p = get_preset("quality")
    c = ContentTarget.create(ext, content, p.content_layer)
    s = StyleTarget.create(ext, style, p.style_layers, p.style_layer_weights, p.statistic)
    stamps: List[float] = []
    settings = p.settings.replace(steps=warmup + iters, first_steps=warmup + iters, min_size=10_000)
    out = optimize(ext, c, s, init="content", settings=settings,
                   progress=lambda pr: stamps.append(time.perf_counter()))
    times = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    return statistics.mean(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--busy", type=int, nargs="+", default=[0], help="competing busy-loop processes per level")
    ap.add_argument("--iters", type=int, default=14, help="timed iterations a run (two W2 refresh periods)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    content, style = bench_images(args.size)
    ext = load_extractor()
    print(f"# {describe_device('cpu')}; {os.cpu_count()} CPUs; content {tuple(content.shape[-2:])}, quality preset, "
          f"one scale; {args.rounds} rounds of {args.iters} iterations")
    rows: List[Dict[str, object]] = []
    for busy in args.busy:
        competitors = [mp.Process(target=_spin, daemon=True) for _ in range(busy)]
        for proc in competitors:
            proc.start()
        try:
            time.sleep(2.0 if busy else 0.0)
            load_before = os.getloadavg()[0]
            per: Dict[int, List[float]] = {n: [] for n in args.threads}
            images: Dict[int, torch.Tensor] = {}
            for _ in range(args.rounds):
                for n in args.threads:  # alternate: every count sees the same load
                    torch.set_num_threads(n)
                    seconds, images[n] = timed_run(ext, content, style, args.iters, args.warmup)
                    per[n].append(seconds)
            load_after = os.getloadavg()[0]
        finally:
            for proc in competitors:
                proc.terminate()
                proc.join()
        first = statistics.median(per[args.threads[0]])
        for n in args.threads:
            med = statistics.median(per[n])
            rows.append({"competitors": busy, "load (1 min)": f"{load_before:.1f}–{load_after:.1f}",
                         "threads": n, "s / iteration": f"{med:.3f}",
                         "rounds (s)": " ".join(f"{t:.2f}" for t in per[n]),
                         f"× {args.threads[0]} thread(s)": f"{med / first:.2f}",
                         "max |Δ| vs first": f"{(images[n] - images[args.threads[0]]).abs().max().item():.1e}"})
    print_table(rows)


if __name__ == "__main__":
    main()
