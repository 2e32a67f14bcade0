"""Frames: flicker, drift, chunk seams and new scene, against independent frames; time per frame.

    python -m bench.frames weights --size 128 --frames 8 --weights 0 50 200 400   # the temporal weight on a pan
    python -m bench.frames clips --size 96 --frames 8                           # each kind of motion
    python -m bench.frames long --size 96 --frames 48 --chunk-size 12 --lead-in 4  # a long clip, in chunks
    python -m bench.frames ray --size 128 --frames 8 --workers 2                # one process against Ray workers

Clips come from ``bench/clips.py`` (camera motions over the benchmark photos), stylised with
starry_night.jpg by the ``quality`` preset (``--steps`` iterations a scale). Columns:

- **temporal error**: the mean squared difference between consecutive outputs after warping by the
  *input's* flow, over the pixels the consistency mask trusts (``nst_core.frame_metrics``), and its
  ratio to independent frames' (each frame stylised alone, as a still);
- **drift**: the mean absolute difference (/255) between an output and the still of the same frame,
  at the first and at the last frame: a method that adds a little every frame moves away from the
  still as the clip goes on;
- **gray corr.**: the correlation of the output's gray levels with its input frame, first and last
  (how much of each frame's own content it keeps);
- **entering strip**: the horizontal detail of the 4 columns where new scene enters (right edge), over
  the interior's, averaged over the frames after the first (``strip_detail``): smeared new scene
  scores well under independent frames';
- **boundary / interior** (``long``): the temporal error of the pairs that straddle a chunk boundary
  over that of the other pairs, in chunks (as Ray makes them) and, for the same pairs, in one pass;
- **content / style**: the referee's distances (``bench/referee.py``), each frame against its own
  content, averaged over the frames.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Dict, List, Sequence

import torch

from nst_core import StyleTarget, get_preset, load_extractor
from nst_core.frame_metrics import gray_correlation, level_difference, pair_errors, strip_detail
from nst_core.frames import DEFAULT_TEMPORAL_WEIGHT, stylize_frames
from nst_core.image import load_image

from . import clips
from .common import describe_device, image_path, print_table
from .referee import Referee

STRIP = 4  # columns of new scene at the right edge of a pan


class Runner:
    """The extractor, the style target and the settings every run of one invocation shares."""

    def __init__(self, device: str, steps: int) -> None:
        self.ext = load_extractor(device=device)
        self.preset = get_preset("quality")
        p = self.preset
        self.style_img = load_image(image_path("starry_night.jpg"))
        self.style = StyleTarget.create(self.ext, self.style_img, p.style_layers, p.style_layer_weights, p.statistic)
        self.settings = p.settings.replace(steps=steps)

    def run(self, frames: Sequence[torch.Tensor], weight: float) -> Dict[str, object]:
        """Stylise ``frames`` in one pass: the outputs and the seconds a frame."""
        t = time.perf_counter()
        outs = list(stylize_frames(self.ext, frames, self.style, self.preset.content_layer, 1.0, weight,
                                   self.settings))
        return {"outs": outs, "secs": (time.perf_counter() - t) / len(frames)}


def describe(clip: Sequence[torch.Tensor], outs: Sequence[torch.Tensor], stills: Sequence[torch.Tensor],
             base_error: float = 0.0, entering: bool = False) -> Dict[str, str]:
    """The columns shared by every table, for one run over ``clip``; ``stills`` are the stills of (at
    least) its first and last frames, ``base_error`` independent frames' temporal error (0: unknown)."""
    err = sum(pair_errors(clip, outs)) / (len(clip) - 1)
    first, last = level_difference(outs[0], stills[0]), level_difference(outs[-1], stills[-1])
    row = {"temporal error": f"{err:.5f}"}
    if base_error:
        row["error / independent"] = f"{err / base_error:.2f}"
    row["drift first → last (/255)"] = f"{first:.2f} → {last:.2f}"
    row["gray corr. first → last"] = (f"{gray_correlation(outs[0], clip[0]):.3f} → "
                                      f"{gray_correlation(outs[-1], clip[-1]):.3f}")
    if entering:
        row["entering strip"] = f"{sum(strip_detail(o, 'right', STRIP) for o in outs[1:]) / (len(outs) - 1):.2f}"
    return row


def weights_table(r: Runner, size: int, frames: int, weights: List[float]) -> List[Dict[str, object]]:
    """The pan clip at each temporal weight (0 = independent frames first)."""
    clip = clips.make("pan", size, frames)
    referees = [Referee(f, r.style_img, r.ext) for f in clip]
    runs = {w: r.run(clip, w) for w in sorted(set([0.0] + weights))}
    stills = runs[0.0]["outs"]
    base = sum(pair_errors(clip, stills)) / (len(clip) - 1)
    rows = []
    for w, run in runs.items():
        scores = [ref.score(o) for ref, o in zip(referees, run["outs"])]
        rows.append({"temporal weight": f"{w:g}" + (" (independent)" if w == 0 else "")
                     + (" (default)" if w == DEFAULT_TEMPORAL_WEIGHT else ""), "s / frame": f"{run['secs']:.1f}",
                     **describe(clip, run["outs"], stills, base, True),
                     "content": f"{sum(x['content'] for x in scores) / len(scores):.3f}",
                     "style": f"{sum(x['style'] for x in scores) / len(scores):.3f}"})
    return rows


def clips_table(r: Runner, size: int, frames: int, weight: float, names: List[str]) -> List[Dict[str, object]]:
    """Independent frames against the temporal loss on each clip."""
    rows = []
    for name in names:
        clip = clips.make(name, size, frames)
        alone, temporal = r.run(clip, 0.0), r.run(clip, weight)
        base = sum(pair_errors(clip, alone["outs"])) / (len(clip) - 1)
        for label, run in (("independent", alone), (f"temporal {weight:g}", temporal)):
            rows.append({"clip": name, "frames": label, "s / frame": f"{run['secs']:.1f}",
                         **describe(clip, run["outs"], alone["outs"], base, name in ("pan", "entering"))})
    return rows


def long_table(r: Runner, size: int, frames: int, weight: float, chunk: int, lead_in: int,
               name: str = "pan") -> List[Dict[str, object]]:
    """A long clip in one pass and in chunks (as Ray and ``--chunk-size`` make it): the seams."""
    from nst_core.jobs import EngineSpec, FrameFolder, run_frames_local
    from nst_core.video import from_u8, to_u8

    clip = clips.make(name, size, frames)
    stills = [r.run([clip[0]], 0.0)["outs"][0], r.run([clip[-1]], 0.0)["outs"][0]]
    one = r.run(clip, weight)
    spec = EngineSpec(styles=(to_u8(r.style_img),), settings=(("steps", r.settings.steps),), temporal_weight=weight,
                      device=str(r.ext.device))
    with tempfile.TemporaryDirectory() as tmp:
        out = FrameFolder(os.path.join(tmp, "chunks"))
        t = time.perf_counter()
        run_frames_local(spec, [to_u8(f) for f in clip], len(clip), out, chunk, lead_in)
        secs = (time.perf_counter() - t) / len(clip)
        chunked = [from_u8(out.read(i)) for i in range(len(clip))]
    boundary = [b for b in range(chunk, len(clip), chunk)]  # pair (b-1, b) straddles a seam
    rows = []
    for label, outs, s in (("one pass", one["outs"], one["secs"]),
                           (f"chunks of {chunk}, lead-in {lead_in}", chunked, secs)):
        errors = pair_errors(clip, outs)  # errors[t-1] is the pair (t-1, t)
        seams = sum(errors[b - 1] for b in boundary) / len(boundary)
        inner = [e for t, e in enumerate(errors, 1) if t not in boundary]
        inner = sum(inner) / len(inner)
        rows.append({"clip": f"{name}, {len(clip)} frames", "run": label, "s / frame": f"{s:.1f}",
                     **describe(clip, outs, stills, entering=name in ("pan", "entering")),
                     "boundary pairs": f"{seams:.5f}", "other pairs": f"{inner:.5f}",
                     "boundary / interior": f"{seams / inner:.2f}"})
    return rows


def ray_table(size: int, frames: int, steps: int, workers: int, weight: float, lead_in: int) -> List[Dict[str, object]]:
    """Wall time of the pan in one process (1 thread, then torch's default threads; one pass) and as Ray
    tasks on a new local ``workers``-worker cluster (one CPU each; ``workers`` chunks with ``lead_in``;
    the cluster's start-up included). Each run loads the weights and builds its targets."""
    from nst_core.distributed import run_frames_ray
    from nst_core.jobs import EngineSpec, FrameFolder, run_frames_local
    from nst_core.video import to_u8

    u8 = [to_u8(f) for f in clips.make("pan", size, frames)]
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
        run_frames_ray(spec, u8, len(u8), FrameFolder(os.path.join(tmp, "ray")), chunk, lead_in, "local",
                       num_cpus=workers)
        rows.append({"run": f"Ray, {workers} workers × 1 thread, {workers} chunks of {chunk} + {lead_in} lead-in",
                     "seconds": time.perf_counter() - t})
    ray_s = rows[-1]["seconds"]
    return [{"run": r["run"], "seconds": f"{r['seconds']:.1f}", "Ray speed-up": f"{r['seconds'] / ray_s:.2f}"}
            for r in rows]


def main(argv=None) -> int:
    """Print the table of the chosen section."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=("weights", "clips", "long", "ray"))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40, help="iterations per scale (quality preset: 40)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weight", type=float, default=DEFAULT_TEMPORAL_WEIGHT, help="temporal weight (clips, long, ray)")
    ap.add_argument("--weights", type=float, nargs="+", default=[50.0, 100.0, DEFAULT_TEMPORAL_WEIGHT, 400.0])
    ap.add_argument("--clips", nargs="+", default=list(clips.CLIPS), choices=clips.CLIPS)
    ap.add_argument("--chunk-size", type=int, default=12)
    ap.add_argument("--lead-in", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    print(f"{describe_device(args.device)}; {args.section}: {args.frames} frames of long edge {args.size}; "
          f"quality preset, {args.steps} steps; {time.strftime('%Y-%m-%d')}\n")
    if args.section == "ray":
        rows = ray_table(args.size, args.frames, args.steps, args.workers, args.weight, args.lead_in)
    else:
        r = Runner(args.device, args.steps)
        if args.section == "weights":
            rows = weights_table(r, args.size, args.frames, args.weights)
        elif args.section == "clips":
            rows = clips_table(r, args.size, args.frames, args.weight, args.clips)
        else:
            rows = long_table(r, args.size, args.frames, args.weight, args.chunk_size, args.lead_in)
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
