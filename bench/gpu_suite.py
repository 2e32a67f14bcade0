"""Everything measured on a CUDA machine, in one go, written into an output folder.

    python -m bench.gpu_suite --out OUT_DIR [--quick]

Sections (each also printed): per-iteration time against a bare forward+backward at 512², 1024² and
2048²; achieved TFLOP/s of the network in the loop; end-to-end time of the quality preset at 512 and
1024; peak memory per output pixel at 2048²; fast-path switches (channels_last, bf16, checkpoint, compile, exact W2) on and off;
30 consecutive runs without growth of allocated memory; determinism of two same-seed runs; frames at
512 (``bench.frames``: per-frame time, temporal error against the temporal weight); the quality preset
at 4096 px in tiles of 1024 px (time, peak memory against the memory model; not with --quick); and the
side-by-side comparison of ``bench.compare`` at 512. Meant to finish within 10 minutes on an H100.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import time
from typing import Dict, List

import torch

from nst_core import get_preset, load_extractor, transfer
from nst_core.memory import estimate_bytes, tiled_bytes

from .common import ROOT, bench_images, describe_device, print_table
from .iteration import switch_rows

MAC_PER_PIXEL_RELU5_1 = 361e3  # VGG19 up to relu5_1 (see the style-transfer reference, cost model)


def section(title: str, out: io.StringIO) -> None:
    print(f"\n## {title}\n", file=out)


TILE_4096, TILED_STEPS = 1024, 20


def tiled_4096(ext) -> Dict[str, object]:
    """The quality preset at 4096 px (long edge) in tiles: time, peak memory against the memory model."""
    c, s = bench_images(4096)
    p = get_preset("quality")
    layers, style = list(p.style_layers) + [p.content_layer], list(p.style_layers)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    y = transfer(ext, c, [s], "quality", steps=TILED_STEPS, tile=TILE_4096)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t
    hw = tuple(y.shape[-2:])
    tiled = tiled_bytes(hw, TILE_4096, layers, p.settings, style_layers=style)
    whole = estimate_bytes(hw, layers, p.settings, style_layers=style)
    return {"size": f"{hw[1]}x{hw[0]}", "seconds": f"{secs:.1f}",
            "peak MiB": f"{torch.cuda.max_memory_allocated() / 2**20:.0f}",
            "tiled model MiB": f"{tiled / 2**20:.0f}", "whole-image model MiB": f"{whole / 2**20:.0f}"}


def run_suite(quick: bool) -> str:
    """Run every section; return the Markdown report."""
    dev = "cuda"
    report = io.StringIO()
    print(f"# GPU suite\n\n{describe_device(dev)}; {time.strftime('%Y-%m-%d')}", file=report)
    ext = load_extractor(device=dev)
    sizes = [512, 1024] if quick else [512, 1024, 2048]

    section("Per-iteration time (quality preset, one scale) vs bare forward+backward to relu5_1", report)
    rows: List[Dict[str, object]] = []
    for size in sizes:
        c, s = bench_images(size, square=True)
        c, s = c.to(dev), s.to(dev)
        for row in switch_rows(ext, c, s, size, 10):
            it = float(row["iter ms"]) / 1e3
            row["network TFLOP/s"] = f"{4 * MAC_PER_PIXEL_RELU5_1 * size * size / it / 1e12:.1f}"
            rows.append(row)
    with contextlib.redirect_stdout(report):
        print_table(rows)

    section("End to end, quality preset (weights loaded once, targets included)", report)
    rows = []
    for size in [512, 1024] + ([] if quick else [2048]):
        c, s = bench_images(size)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        y = transfer(ext, c, [s], "quality")
        torch.cuda.synchronize()
        secs = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated()
        p = get_preset("quality")
        est = estimate_bytes(tuple(y.shape[-2:]), list(p.style_layers) + [p.content_layer], p.settings)
        px = y.shape[-1] * y.shape[-2]
        rows.append({"size": f"{y.shape[-1]}x{y.shape[-2]}", "seconds": f"{secs:.2f}",
                     "peak MiB": f"{peak / 2**20:.0f}", "bytes/pixel": f"{peak / px:.0f}",
                     "estimate bytes/pixel": f"{est / px:.0f}"})
    with contextlib.redirect_stdout(report):
        print_table(rows)

    if not quick:
        section(f"4096 px in tiles of {TILE_4096} px (quality preset, {TILED_STEPS} steps a scale; nst_core.tiles)",
                report)
        row = tiled_4096(ext)
        with contextlib.redirect_stdout(report):
            print_table([row])

    section("30 consecutive runs: allocated memory", report)
    c, s = bench_images(128)
    allocated = []
    for i in range(30):
        transfer(ext, c, [s], "fast", steps=5)
        torch.cuda.synchronize()
        allocated.append(torch.cuda.memory_allocated())
    print(f"after run 1: {allocated[0] / 2**20:.1f} MiB; after run 30: {allocated[-1] / 2**20:.1f} MiB; "
          f"growth {(allocated[-1] - allocated[2]) / 2**20:.2f} MiB (runs 3→30)", file=report)

    section("Determinism: two runs with the same seed", report)
    a = transfer(ext, c, [s], "fast", steps=20, init="noise", seed=3)
    b = transfer(ext, c, [s], "fast", steps=20, init="noise", seed=3)
    print(f"identical: {torch.equal(a, b)}; max abs difference {float((a - b).abs().max()):.2e}", file=report)

    section("Frames at 512: per-frame time and temporal error with and without the temporal loss (bench.frames)",
            report)
    res = subprocess.run([sys.executable, "-m", "bench.frames", "--size", "512", "--frames", "8" if quick else "16",
                          "--device", dev, "--weights", "0", "50", "200", "800"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(res.stdout or res.stderr[-2000:], file=report)

    section("Side by side at 512 (bench.compare)", report)
    res = subprocess.run([sys.executable, "-m", "bench.compare", "--size", "512", "--device", dev],
                         cwd=ROOT, capture_output=True, text=True, timeout=420)
    print(res.stdout or res.stderr[-2000:], file=report)
    return report.getvalue()


def main(argv=None) -> int:
    """Run the suite and write ``gpu_suite.md`` into ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_suite.md")
    ap.add_argument("--quick", action="store_true", help="skip 2048² and the 4096 px tiled run")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu_suite needs CUDA; use bench.iteration / bench.compare on the CPU")
    os.makedirs(args.out, exist_ok=True)
    text = run_suite(args.quick)
    with open(os.path.join(args.out, "gpu_suite.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
