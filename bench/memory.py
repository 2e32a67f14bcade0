"""The memory model against measured peaks: whole, checkpointed and tiled runs, fp32 and bf16, W2 and Gram.

    python -m bench.memory [--device cpu] [--sizes 256 512 1024 2048] [--modes whole,checkpoint,tiled]
                           [--precisions fp32,bf16] [--statistics moments,gram] [--tile PX] [--steps 2]
                           [--max-estimate-gib 12]
    python -m bench.memory --plan-check 768 [--device cpu]

Each case runs the quality schedule's objective at one scale (the output size: the pyramid's last
scale, where the peak is) for ``--steps`` Adam steps (the first is a W2 refresh), with the bundled VGG19
and the real images tubingen.jpg (content, squared) and starry_night.jpg (style), in its own process.

- **estimate**: ``nst_core.memory.estimate_bytes`` (``tiled_bytes`` for tiles) of that run.
- **measured**: the peak of live tensor bytes during the run. CUDA: ``torch.cuda.max_memory_allocated``
  (the allocator's own count, weights included). CPU: the bytes live before the run (the network's
  weights and the images) plus the peak of the running sum of the profiler's memory events (every
  allocation and free of the CPU allocator, in order).
- **RSS Δ** (CPU): the process's peak resident memory during the run (``VmHWM``, reset before it) above
  its resident memory before: a cross-check that includes what the profiler cannot see (oneDNN's own
  buffers) and excludes what the C allocator reuses.

A case whose estimate is above ``--max-estimate-gib`` is skipped (the machine's RAM is shared).

``--plan-check PX``: the estimate ``nst transfer … --size PX --plan`` prints for the quality preset
(tubingen.jpg × starry_night.jpg) against the measured peak of that transfer, run with 8 iterations a
scale (two W2 refreshes at each scale; the peak of a step does not depend on how many there are).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

from nst_core import ContentTarget, StyleTarget, get_preset, load_extractor, optimize, transfer
from nst_core.memory import estimate_bytes, tiled_bytes
from nst_core.plan import make_plan
from nst_core.presets import settings_for
from nst_core.recipes import preset_settings

from .common import bench_images, describe_device, print_table
from .tiles import peak_tensor_bytes

MODES = ("whole", "checkpoint", "tiled")
MiB = 2**20


def case_settings(mode: str, statistic: str, bf16: bool, steps: int, tile: int):
    """The quality schedule at one scale, ``steps`` steps, with the case's switches.

    Whole and checkpointed cases refresh W2 at every step, so the second step's refresh meets the
    first one's goals (the worst step of any W2 schedule); tiled cases keep the schedule's
    ``transport_every`` = 7 (a refresh, then a step on the stored goals: tiles rewrite their goals in place).
    """
    return settings_for("quality", statistic).replace(
        min_size=1 << 20, steps=steps, first_steps=steps, autocast_bf16=bf16, checkpoint=mode == "checkpoint",
        tile=tile if mode == "tiled" else "off", transport_every=7 if mode == "tiled" else 1)


def case_estimate(size: int, mode: str, statistic: str, bf16: bool, steps: int, tile: int,
                  device: str = "cpu") -> int:
    """The memory model's bytes for one case."""
    p = get_preset("quality")
    layers, style = list(p.style_layers) + [p.content_layer], list(p.style_layers)
    s = case_settings(mode, statistic, bf16, steps, tile)
    hw = (size, size)
    if mode == "tiled":
        return tiled_bytes(hw, tile, layers, s, statistic=statistic, style_layers=style, device=device)
    return estimate_bytes(hw, layers, s, statistic=statistic, style_layers=style, device=device)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure(size: int, mode: str, statistic: str, bf16: bool, steps: int, tile: int, device: str) -> Dict:
    """Run one case in this process: measured peak bytes, RSS delta, seconds."""
    p = get_preset("quality")
    ext = load_extractor(device=device)
    content, style = bench_images(size, square=True)
    content, style = content.to(device), style.to(device)
    c = ContentTarget.create(ext, content, p.content_layer)
    s = StyleTarget.create(ext, style, p.style_layers, p.style_layer_weights, statistic)
    settings = case_settings(mode, statistic, bf16, steps, tile)
    live = sum(t.numel() * t.element_size() for t in list(ext.parameters()) + list(ext.buffers()))
    rss = None
    if torch.device(device).type == "cpu" and os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        rss = _status_kib("VmRSS")
    t0 = time.perf_counter()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        optimize(ext, c, s, "content", settings, size)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = live + peak_tensor_bytes(lambda: optimize(ext, c, s, "content", settings, size), device)[1]
    seconds = time.perf_counter() - t0
    out = {"measured": int(peak), "seconds": seconds}
    if rss is not None:
        out["rss_delta"] = (_status_kib("VmHWM") - rss) * 1024
    return out


def plan_check(size: int, device: str, steps: int = 8) -> Dict:
    """``nst transfer tubingen.jpg starry_night.jpg --size SIZE --plan``'s estimate against the measured peak
    of that run (the quality preset's pyramid with ``steps`` iterations a scale: two W2 refreshes each)."""
    p = get_preset("quality")
    content, style = bench_images(size)
    settings = preset_settings(p, p.statistic, tile="auto")
    layers, style_layers = list(p.style_layers) + [p.content_layer], list(p.style_layers)
    plan = make_plan(tuple(content.shape[-2:]), layers, settings, device, style_layers=style_layers)
    ext = load_extractor(device=device)
    live = sum(t.numel() * t.element_size() for t in list(ext.parameters()) + list(ext.buffers()))
    t0 = time.perf_counter()
    run = lambda: transfer(ext, content, [style], "quality", steps=steps, tile=plan.settings.tile,  # noqa: E731
                           checkpoint=plan.settings.checkpoint)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        run()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = live + peak_tensor_bytes(run, device)[1]
    return {"size": f"{content.shape[-1]}x{content.shape[-2]}", "way": plan.way, "estimate": plan.estimate,
            "measured": int(peak), "seconds": time.perf_counter() - t0}


def rows(cases: List[Dict], device: str, max_estimate: float) -> List[Dict[str, object]]:
    """Each case in its own process; a table row per case."""
    table = []
    for case in cases:
        est = case_estimate(**case, device=device)
        row = {"mode": case["mode"] + (f" {case['tile']}" if case["mode"] == "tiled" else ""),
               "size": f"{case['size']}²", "precision": "bf16" if case["bf16"] else "fp32",
               "statistic": "W2" if case["statistic"] == "moments" else "Gram",
               "estimate MiB": f"{est / MiB:.0f}"}
        if est > max_estimate:
            table.append({**row, "measured MiB": "skipped", "ratio": "", "RSS Δ MiB": "", "s": ""})
            continue
        cmd = [sys.executable, "-m", "bench.memory", "--one", json.dumps({**case, "device": device})]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        if done.returncode != 0:
            raise SystemExit(f"case {case} failed:\n{done.stderr[-3000:]}")
        got = json.loads(done.stdout.strip().splitlines()[-1])
        table.append({**row, "measured MiB": f"{got['measured'] / MiB:.0f}",
                      "ratio": f"{est / got['measured']:.2f}",
                      "RSS Δ MiB": f"{got['rss_delta'] / MiB:.0f}" if "rss_delta" in got else "",
                      "s": f"{got['seconds']:.0f}"})
        print(" | ".join(str(v) for v in table[-1].values()), file=sys.stderr, flush=True)
    return table


def main(argv: Optional[List[str]] = None) -> int:
    """Print the calibration table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--statistics", default="moments,gram")
    ap.add_argument("--tile", type=int, default=0, help="tile size of the tiled cases in px (0: half the size)")
    ap.add_argument("--steps", type=int, default=2, help="Adam steps a case runs (the first refreshes W2)")
    ap.add_argument("--max-estimate-gib", type=float, default=12.0, help="skip cases estimated above this")
    ap.add_argument("--plan-check", type=int, metavar="PX",
                    help="instead: the --plan estimate of a quality transfer at PX against that run's measured peak")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a case as JSON: run it here, print JSON
    args = ap.parse_args(argv)
    if args.one:
        case = json.loads(args.one)
        print(json.dumps(measure(**case)))
        return 0
    if args.plan_check:
        got = plan_check(args.plan_check, args.device)
        print(f"device: {describe_device(args.device)}\n")
        print_table([{"run": f"quality transfer, tubingen × starry_night, {got['size']}", "plan": got["way"],
                      "--plan estimate MiB": f"{got['estimate'] / MiB:.0f}",
                      "measured MiB": f"{got['measured'] / MiB:.0f}",
                      "ratio": f"{got['estimate'] / got['measured']:.2f}", "s": f"{got['seconds']:.0f}"}])
        return 0
    cases = [dict(size=size, mode=mode, statistic=stat, bf16=prec == "bf16", steps=args.steps,
                  tile=args.tile or size // 2)
             for size in args.sizes for mode in args.modes.split(",") for prec in args.precisions.split(",")
             for stat in args.statistics.split(",")
             if not (mode == "tiled" and size <= (args.tile or size // 2))]
    print(f"device: {describe_device(args.device)}\n")
    print_table(rows(cases, args.device, args.max_estimate_gib * 2**30))
    return 0


if __name__ == "__main__":
    sys.exit(main())
