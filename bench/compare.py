"""Side by side, in one run, on the same images, size and device: this project's presets, the seed
baseline and the ``pastiche`` 1.6.0 command, each scored by one fixed referee (``bench.referee``).

    python -m bench.compare --size 256 --device cpu [--out DIR]

Each method runs in its own process, so its wall time and peak memory (process RSS on CPU,
``torch.cuda.max_memory_allocated`` on CUDA) are its own. Wall time is end to end: weights, targets
and the optimisation, not the interpreter start. ``quality@seed`` is the quality preset stopped at the
seed baseline's wall time (equal-time comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch

from nst_core import Cancelled, load_extractor, load_image, save_image, transfer

from .common import ROOT, bench_images, describe_device, image_path, peak_rss_mb, print_table, sync
from .referee import Referee

METHODS = ("seed", "fast", "quality", "seed-baseline", "pastiche-300", "pastiche-500")


def _peak_mb(device: str) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()


def run_one(method: str, size: int, device: str, out: str, budget: Optional[float]) -> Dict[str, float]:
    """Run one method in this process; write its image to ``out``; return time and peak memory."""
    content, style = bench_images(size)
    if method.startswith("pastiche-"):
        steps = method.split("-")[1]
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pastiche", "--content", image_path("tubingen.jpg"),
                        "--styles", image_path("starry_night.jpg"), "--output", out, "--num-steps", steps,
                        "--size", str(size), "--device", device, "--seed", "0", "--no-verbose"], check=True)
        return {"seconds": time.perf_counter() - t, "peak_mb": float("nan")}
    t = time.perf_counter()
    if method == "seed-baseline":
        from .seed_baseline import SeedBaseline

        img = SeedBaseline(device).run(content, style)
    else:
        ext = load_extractor(device=device)
        latest: List[torch.Tensor] = []

        def preview(step, image):
            latest[:] = [image.cpu()]

        def cancel() -> bool:
            return budget is not None and time.perf_counter() - t > budget

        try:
            img = transfer(ext, content, [style], method.split("@")[0], preview=preview if budget else None,
                           cancel=cancel, preview_every=1 if budget else 0)
        except Cancelled:
            img = latest[0]
    sync(torch.device(device))
    seconds = time.perf_counter() - t
    save_image(img[:1].clamp(0, 1), out)
    return {"seconds": seconds, "peak_mb": _peak_mb(device)}


def main(argv=None) -> int:
    """Run every method in a subprocess and print the comparison table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default=",".join(METHODS) + ",quality@seed")
    ap.add_argument("--out", help="folder for the output images (default: a temporary folder)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.size, args.device, args.image, args.budget)))
        return 0
    out_dir = args.out or tempfile.mkdtemp(prefix="nst-bench-")
    os.makedirs(out_dir, exist_ok=True)
    content, style = bench_images(args.size)
    referee = Referee(content, style)
    rows, times = [], {}
    for method in args.methods.split(","):
        budget = times.get(method.split("@")[1]) if "@" in method else None
        if "@" in method and budget is None:
            budget = times.get("seed-baseline")
        image = os.path.join(out_dir, f"{method.replace('@', '_at_')}_{args.size}.png")
        cmd = [sys.executable, "-m", "bench.compare", "--one", method, "--size", str(args.size),
               "--device", args.device, "--image", image] + (["--budget", str(budget)] if budget else [])
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if res.returncode != 0:
            rows.append({"method": method, "seconds": "failed", "peak MiB": "", "content dist": "",
                         "style dist": res.stderr.strip().splitlines()[-1][:80] if res.stderr else ""})
            continue
        stats = json.loads(res.stdout.strip().splitlines()[-1])
        times[method] = stats["seconds"]
        score = referee.score(load_image(image))
        rows.append({"method": method, "seconds": f"{stats['seconds']:.1f}",
                     "peak MiB": "" if stats["peak_mb"] != stats["peak_mb"] else f"{stats['peak_mb']:.0f}",
                     "content dist": f"{score['content']:.3f}", "style dist": f"{score['style']:.3f}"})
    print(f"size {args.size}, device {args.device}: {describe_device(args.device)}; images in {out_dir}")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
