"""The ``nst frames`` command and the folder/Ray side of ``nst transfer``.

``nst frames IN STYLE -o OUT``: IN is a folder of frames (name order) or a video file; OUT is a
folder (``frame_00000.png`` …) or a video file. Finished frames are PNGs in the folder (for a video
output, ``OUT.frames/`` beside it, removed once the video is written unless ``--keep-frames``); a
rerun makes only the missing ones. Ctrl-C stops between iterations, keeping what is written.

``nst transfer DIR STYLE -o OUT_DIR`` stylises every image of DIR into ``OUT_DIR/<name>.png``.
``--ray auto|ADDRESS`` runs either job as Ray tasks (``nst_core.distributed``, imported only then).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import threading
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np

from .frames import DEFAULT_TEMPORAL_WEIGHT, METHOD, FramesProgress
from .jobs import (EngineSpec, FrameFolder, build_engine, load_still, run_frames_local, still_output,
                   still_task, write_png_atomic)
from .optimizer import Cancelled
from .presets import DEFAULT_PRESET, INITS, PRESETS, Settings
from .statistics import STATISTICS
from .image import load_image, load_mask
from .video import IMAGE_EXTENSIONS, is_video_path, list_images, open_frames, to_u8, write_video
from .cli_args import STYLE_BALANCE_HELP, nonneg_float, pick_device, positive_int, style_layers_and_weights
from .cli_plan import planned_job

DEFAULT_CHUNK = 24  # frames per Ray task: a 4-frame lead-in costs a sixth more
DEFAULT_LEAD_IN = 4  # frames a chunk (or a rerun without a kept path) runs before its first one, outputs dropped


def add_ray_options(p: argparse.ArgumentParser, frames: bool) -> None:
    """``--ray`` (and, for frames, the chunking) on a subcommand."""

    p.add_argument("--ray", metavar="ADDRESS",
                   help="run as Ray tasks: 'auto' (this machine's cluster, or a new local one), 'local', "
                        "or an existing cluster's address such as ray://HOST:10001 (needs Ray: pip install ray, or "
                        "pip install '.[ray]' in a clone of this repository)")
    p.add_argument("--max-retries", type=int, default=3, help="with --ray: retries of a task whose worker died")
    if frames:
        p.add_argument("--chunk-size", type=positive_int, metavar="N",
                       help=f"frames per task (default: {DEFAULT_CHUNK} with --ray, all frames in one pass without)")
        p.add_argument("--lead-in", type=int, metavar="N",
                       help=f"frames a chunk runs before its first one, outputs dropped, so it joins the chunk "
                            f"before without a jump (default {DEFAULT_LEAD_IN})")


def add_frames_parser(sub: "argparse._SubParsersAction", common: Callable[[argparse.ArgumentParser, str], None],
                      style_layer_weights: Optional[Callable[[argparse.ArgumentParser], None]] = None,
                      masks: Optional[Callable[[argparse.ArgumentParser], None]] = None,
                      tile: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> None:
    """The ``frames`` subcommand; ``common`` adds the options every command shares, and the others
    the options ``transfer`` has too (style layer weights, region masks, tiles)."""

    f = sub.add_parser("frames", help="stylise a sequence (a folder of frames or a video) without flicker")
    f.add_argument("input", help="a folder of frames (name order) or a video file")
    f.add_argument("styles", nargs="+", metavar="style", help="one or more style images")
    f.add_argument("--temporal-weight", type=nonneg_float, default=DEFAULT_TEMPORAL_WEIGHT,
                   help=f"pull of each frame toward the previous one carried along the motion "
                        f"(default {DEFAULT_TEMPORAL_WEIGHT:g}; 0 = independent frames)")
    f.add_argument("--fps", type=float, help="frame rate of a video output from a folder (default: the input's, or 25)")
    f.add_argument("--keep-frames", action="store_true", help="with a video output: keep the PNG frames folder")
    f.add_argument("--overwrite", action="store_true", help="remake every frame even if the output folder has some")
    f.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    f.add_argument("--content-weight", type=nonneg_float)
    f.add_argument("--style-weight", type=nonneg_float)
    f.add_argument("--style-balance", type=nonneg_float, metavar="P", help=STYLE_BALANCE_HELP)
    f.add_argument("--style-blend", type=nonneg_float, nargs="+", metavar="W", help="one weight per style image")
    f.add_argument("--style-scale", type=float, default=1.0)
    f.add_argument("--content-layer", help="layer whose activations are the content target (e.g. relu4_2)")
    f.add_argument("--style-layers", help="comma list of style layers (e.g. relu1_1,relu2_1,relu3_1)")
    for add in (style_layer_weights, masks, tile):
        if add is not None:
            add(f)
    f.add_argument("--statistic", choices=STATISTICS)
    common(f, "content")
    f._option_string_actions["-o"].help = ("output folder (frame_00000.png …) or video file "
                                           "(.mp4, .mkv, .mov, .webm, .avi)")
    add_ray_options(f, frames=True)


def handles(args: argparse.Namespace) -> bool:
    """Whether this module runs ``args``: ``frames``, or ``transfer`` on a folder or with ``--ray``."""
    return args.command == "frames" or (
        args.command == "transfer" and (bool(getattr(args, "ray", None)) or os.path.isdir(args.content)))


def spec_from_args(args: argparse.Namespace) -> EngineSpec:
    """The job's :class:`EngineSpec` from a ``frames``/``transfer`` command line."""

    if getattr(args, "save_every", None):
        raise ValueError("--save-every is for single images; frames and folders write each finished image")
    if args.init not in INITS:
        raise ValueError(f"--init {args.init!r}: frames and folders take one of {list(INITS)}")
    layers, weights = style_layers_and_weights(args)
    settings = dict(steps=args.steps, optimizer=args.optimizer, tv_weight=args.tv_weight, seed=args.seed,
                    coarse_scale=args.coarse_scale, margin=args.margin, content_weight=args.content_weight,
                    style_weight=args.style_weight, style_balance=args.style_balance,
                    checkpoint=args.checkpoint or None, compile=args.compile or None, autocast_bf16=args.bf16,
                    max_size=None if args.max_size == Settings.max_size else args.max_size)
    style_masks = getattr(args, "style_mask", None)
    if style_masks is not None and len(style_masks) != len(args.styles):
        raise ValueError(f"got {len(style_masks)} --style-mask file(s) for {len(args.styles)} style image(s); "
                         "give one mask per style image, in the same order")
    content_mask = getattr(args, "content_mask", None)
    return EngineSpec(
        styles=tuple(to_u8(load_image(s)) for s in args.styles),
        preset=args.preset,
        settings=tuple(sorted((k, v) for k, v in settings.items() if v is not None)),
        content_layer=args.content_layer,
        style_layers=tuple(layers),
        style_layer_weights=tuple(weights) if weights is not None else None,
        statistic=args.statistic,
        style_blend=tuple(args.style_blend) if args.style_blend else None,
        style_scale=args.style_scale,
        style_masks=tuple(_mask_u8(m) for m in style_masks) if style_masks is not None else None,
        content_mask=_mask_u8(content_mask) if content_mask is not None else None,
        content_mask_strength=getattr(args, "content_mask_strength", 4.0),
        tile=getattr(args, "tile", 0),
        temporal_weight=getattr(args, "temporal_weight", 0.0),
        size=args.size,
        init=args.init,
        colors=getattr(args, "colors", "style"),
        arch=args.arch,
        weights=args.weights,
        pooling=args.pooling,
        padding=getattr(args, "edge_padding", "replicate"),
        device=args.device,
    )


def _mask_u8(path: str) -> np.ndarray:
    """A mask file as an H×W uint8 array (white = 255), for the job's spec."""
    return load_mask(path).squeeze().mul(255).round().byte().numpy()


class _Bar:
    """A tqdm bar (unless quiet) whose total is learnt from the first report."""

    def __init__(self, quiet: bool, unit: str) -> None:
        self.quiet, self.unit, self.bar = quiet, unit, None

    def update(self, done: int, total: int, losses: Optional[Dict[str, float]] = None, **info: Any) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=self.unit, dynamic_ncols=True, file=sys.stderr)
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if losses or info:
            self.bar.set_postfix({**info, **{k: f"{v:.4g}" for k, v in (losses or {}).items()}}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def ctrl_c_cancels() -> Iterator[Callable[[], bool]]:
    """A cancel callable that turns true on the first Ctrl-C (the run stops at its next iteration, or
    tile of a tiled scale); a second Ctrl-C interrupts at once. The previous SIGINT handler comes back afterwards."""
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit.is_set
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):  # noqa: ARG001
        if hit.is_set():
            raise KeyboardInterrupt
        hit.set()
        print("\nnst: stopping after this iteration or tile (Ctrl-C again to stop now)", file=sys.stderr)

    signal.signal(signal.SIGINT, handler)
    try:
        yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def _work_folder(output: str) -> str:
    return output + ".frames" if is_video_path(output) else output


def run_frames(args: argparse.Namespace) -> None:
    """``nst frames``: make the missing frames, then (for a video output) encode them."""
    if os.path.splitext(args.output)[1].lower() in IMAGE_EXTENSIONS:
        raise ValueError(f"-o {args.output!r} names an image; give a folder (for frame_00000.png …) or a video file")
    if args.lead_in is not None and args.lead_in < 0:
        raise ValueError(f"--lead-in must be ≥ 0 frames; got {args.lead_in}")
    source = open_frames(args.input, args.fps)
    spec = spec_from_args(args)
    stop, engine = planned_job(args, spec, next(iter(source.frames(args.size))), source.count)
    if stop:  # --plan: said, nothing written
        return
    out = FrameFolder(_work_folder(args.output))
    recipe = {"input": source.digest(), "frames": source.count, "method": METHOD, **spec.describe(),
              "spec": spec.key()}
    out.check_manifest(recipe, args.overwrite)
    frames = source.frames(args.size)
    lead_in = DEFAULT_LEAD_IN if args.lead_in is None else args.lead_in
    bar = _Bar(args.quiet, "frame" if args.ray else "it")
    try:
        if args.ray:
            from .distributed import run_frames_ray

            run_frames_ray(spec, frames, source.count, out, args.chunk_size or DEFAULT_CHUNK, lead_in, args.ray,
                           args.max_retries, progress=lambda done, total: bar.update(done, total))
        else:
            with ctrl_c_cancels() as cancel:
                def on_progress(done: int, total: int, p: FramesProgress) -> None:
                    bar.update(done, total, p.losses, frame=p.frame)

                try:
                    run_frames_local(engine or spec, frames, source.count, out, args.chunk_size, lead_in,
                                     on_progress, cancel)
                except Cancelled:
                    bar.close()
                    done = sum(out.has(i) for i in range(source.count))
                    print(f"nst: stopped; {done} of {source.count} frames are in {out.path}: run the same command "
                          "again to finish", file=sys.stderr)
                    raise KeyboardInterrupt from None
    finally:
        bar.close()
    missing = [i for i in range(source.count) if not out.has(i)]
    if missing:
        raise ValueError(f"{len(missing)} frame(s) are still missing (first: {missing[0]}); run the command again")
    if is_video_path(args.output):
        audio = args.input if is_video_path(args.input) else None  # the input's sound goes along
        write_video(args.output, (out.read(i) for i in range(source.count)), source.fps, audio_from=audio)
        if not args.keep_frames:
            shutil.rmtree(out.path)


def run_transfer_folder(args: argparse.Namespace) -> None:
    """``nst transfer DIR STYLE -o OUT_DIR`` (in this process, or with ``--ray`` as Ray tasks)."""
    files = list_images(args.content) if os.path.isdir(args.content) else [args.content]
    if not files:
        raise ValueError(f"content folder {args.content!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if os.path.splitext(args.output)[1].lower() in IMAGE_EXTENSIONS:
        raise ValueError(f"-o {args.output!r} names an image; with a folder or --ray, -o is an output folder")
    spec = spec_from_args(args)
    stop, engine = planned_job(args, spec, load_still(files[0], spec.size), len(files))
    if stop:  # --plan: said, nothing written
        return
    bar = _Bar(args.quiet, "image")
    try:
        if args.ray:
            from .distributed import run_stills_ray

            run_stills_ray(spec, files, args.output, args.ray, args.max_retries,
                           progress=lambda done, total: bar.update(done, total))
            return

        pick_device(args.device)
        todo = [f for f in files if not os.path.isfile(still_output(args.output, f))]
        engine = (engine or build_engine(spec)) if todo else None
        with ctrl_c_cancels() as cancel:
            for k, path in enumerate(todo):
                try:
                    out = still_task(engine, load_still(path, spec.size), cancel=cancel)
                except Cancelled:
                    raise KeyboardInterrupt from None
                write_png_atomic(out, still_output(args.output, path))
                bar.update(k + 1, len(todo))
    finally:
        bar.close()


def run(args: argparse.Namespace) -> None:
    """Run a ``frames`` or folder/Ray ``transfer`` command line (missing optional packages: a ValueError)."""
    try:
        run_frames(args) if args.command == "frames" else run_transfer_folder(args)
    except ImportError as exc:
        raise ValueError(str(exc)) from None
