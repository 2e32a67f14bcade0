"""Frames: per-frame time and temporal error with and without the temporal loss.

    python -m bench.frames --size 128 --frames 8 --device cpu [--weights 0 10 50 200]
    python -m bench.frames --size 128 --frames 8 --ray 2          # one process against 2 Ray workers

The clip is real motion: a window of ``--size`` × ¾ px sliding over tubingen.jpg (at twice the
window's size) by (2, 5) px a frame, stylised with starry_night.jpg (quality preset). Temporal
error: the mean squared difference between consecutive outputs after warping by the *input's*
optical flow, over the pixels the consistency mask trusts (``nst_core.frames.temporal_error``).
Content/style: the referee's distances (``bench/referee.py``), each frame against its own content,
averaged over the frames. ``--ray N`` times the clip in one process (one pass; with 1 thread and with
torch's default threads) against Ray tasks on a new local N-worker cluster (one CPU each, N chunks
with one lead-in frame).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Dict, List

import torch

from nst_core import StyleTarget, get_preset, load_extractor
from nst_core.frames import DEFAULT_TEMPORAL_WEIGHT, stylize_frames, temporal_error
from nst_core.image import load_image

from .common import describe_device, image_path, print_table
from .referee import Referee


def sliding_clip(image: torch.Tensor, hw, frames: int, step=(2, 5)) -> List[torch.Tensor]:
    """``frames`` windows of size ``hw`` moving by ``step`` (dy, dx) px a frame over ``image``."""
    h, w = hw
    return [image[..., step[0] * t: step[0] * t + h, step[1] * t: step[1] * t + w].contiguous() for t in range(frames)]


def clip(size: int, frames: int) -> List[torch.Tensor]:
    """The benchmark clip: a ``size`` × ¾ window over tubingen.jpg at long edge 2 × ``size``."""
    photo = load_image(image_path("tubingen.jpg"), 2 * size)
    return sliding_clip(photo, (round(size * 3 / 4), size), frames)


def measure(ext, frames, style_img, weight: float, steps, referees: List[Referee]) -> Dict[str, object]:
    """One run over the clip: seconds per frame, temporal error, mean referee distances."""
    p = get_preset("quality")
    s = StyleTarget.create(ext, style_img, p.style_layers, p.style_layer_weights, p.statistic)
    settings = p.settings.replace(steps=steps)
    t = time.perf_counter()
    outs = list(stylize_frames(ext, frames, s, p.content_layer, 1.0, weight, settings))
    secs = (time.perf_counter() - t) / len(frames)
    scores = [r.score(o) for r, o in zip(referees, outs)]  # each frame against its own content
    return {"temporal weight": f"{weight:g}", "s / frame": f"{secs:.1f}",
            "temporal error": f"{temporal_error(frames, outs):.5f}",
            "content": f"{sum(x['content'] for x in scores) / len(scores):.3f}",
            "style": f"{sum(x['style'] for x in scores) / len(scores):.3f}"}


def ray_speedup(size: int, frames: int, steps: int, workers: int, weight: float) -> List[Dict[str, object]]:
    """Wall time of the clip in one process (1 thread, then torch's default threads; one pass) and as
    Ray tasks on a new local ``workers``-worker cluster (one CPU each; ``workers`` chunks, lead-in 1;
    the cluster's start-up included). Each run loads the weights and builds its targets."""
    from nst_core.distributed import run_frames_ray
    from nst_core.jobs import EngineSpec, FrameFolder, run_frames_local
    from nst_core.video import to_u8

    u8 = [to_u8(f) for f in clip(size, frames)]
    spec = EngineSpec(styles=(to_u8(load_image(image_path("starry_night.jpg"))),), settings=(("steps", steps),),
                      temporal_weight=weight, device="cpu")
    chunk = -(-frames // workers)
    rows = []
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for threads in sorted({1, default_threads}):
            torch.set_num_threads(threads)
            t = time.perf_counter()
            run_frames_local(spec, u8, len(u8), FrameFolder(os.path.join(tmp, f"one{threads}")))
            rows.append({"run": f"one process, {threads} thread(s)", "seconds": time.perf_counter() - t})
        torch.set_num_threads(default_threads)
        t = time.perf_counter()
        run_frames_ray(spec, u8, len(u8), FrameFolder(os.path.join(tmp, "ray")), chunk, 1, "local",
                       num_cpus=workers)
        rows.append({"run": f"Ray, {workers} workers × 1 thread, {workers} chunks of {chunk} + 1 lead-in",
                     "seconds": time.perf_counter() - t})
    ray_s = rows[-1]["seconds"]
    return [{"run": r["run"], "seconds": f"{r['seconds']:.1f}", "Ray speed-up": f"{r['seconds'] / ray_s:.2f}"}
            for r in rows]


def main(argv=None) -> int:
    """Print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--steps", type=int, default=40, help="iterations per scale (quality preset: 40)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, DEFAULT_TEMPORAL_WEIGHT])
    ap.add_argument("--ray", type=int, metavar="N",
                    help="instead: time the clip (last --weights value) in one process and on a local N-worker Ray cluster")
    args = ap.parse_args(argv)
    frames = clip(args.size, args.frames)
    print(f"{describe_device(args.device)}; {args.frames} frames of {frames[0].shape[-1]}x{frames[0].shape[-2]}; "
          f"quality preset, {args.steps} steps; {time.strftime('%Y-%m-%d')}\n")
    if args.ray:
        print_table(ray_speedup(args.size, args.frames, args.steps, args.ray, args.weights[-1]))
        return 0
    ext = load_extractor(device=args.device)
    style_img = load_image(image_path("starry_night.jpg"))
    referees = [Referee(f, style_img, ext) for f in frames]
    rows = [measure(ext, frames, style_img, w, args.steps, referees) for w in args.weights]
    base = float(rows[0]["temporal error"])
    for r in rows:
        r["error / independent"] = f"{float(r['temporal error']) / base:.2f}" if base else ""
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
