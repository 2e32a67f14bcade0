"""The ``nst`` command: ``transfer``, ``reconstruct``, ``texture``, ``frames`` and ``explore`` (also ``python -m nst_core``)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import List, Optional

import torch

from .extractor import PADDINGS, POOLINGS, load_extractor
from .image import load_image, load_mask, save_image
from .optimizer import Cancelled, Progress
from .memory import is_out_of_memory
from .presets import DEFAULT_PRESET, INITS, MIN_TILE, OPTIMIZERS, PRESETS, TILE_AUTO, TILE_OFF, get_preset
from .cli_args import (STYLE_BALANCE_HELP, Parser, coarse_scale, nonneg_float, nonneg_int, pick_device, positive_int,
                       style_layers_and_weights)
from .cli_checks import DEFAULT_MAX_SIZE, check_command
from .cli_plan import add_plan_option, planned
from .cli_threads import add_threads_option, resolve_threads, torch_threads
from .color import COLOR_MODES
from .statistics import STATISTICS
from .recipes import preset_settings, reconstruct, reconstruct_settings, texture, transfer


def _common(p: argparse.ArgumentParser, default_init: str) -> None:
    p.add_argument("-o", "--output", required=True, help="output image path (.png, .jpg, …)")
    p.add_argument("--size", type=positive_int, default=512, help="long edge of the output in px (default 512)")
    p.add_argument("--max-size", type=positive_int, default=DEFAULT_MAX_SIZE, metavar="PX",
                   help=f"refuse a --size above this (default {DEFAULT_MAX_SIZE}; memory grows with its square)")
    p.add_argument("--steps", type=positive_int,
                   help="iterations per pyramid scale (default: the preset's; the first scale and the scales with "
                        "a coarse copy keep the preset's ratios to it)")
    p.add_argument("--init", default=default_init,
                   help=f"start image: {', '.join(INITS)} or an image path (default {default_init})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="override the preset's optimiser")
    p.add_argument("--tv-weight", type=nonneg_float, help="smoothness weight")
    p.add_argument("--coarse-scale", type=coarse_scale, metavar="F",
                   help="at the pyramid scales after the first, blocks 3-5 of the network see the image resized by "
                        "F (0.25-1; default: the preset's, 0.5 in quality; 1: every layer at the full size, the "
                        "earlier look)")
    p.add_argument("--margin", type=nonneg_int, metavar="PX",
                   help="px around the output optimised with it and cut off, so that no line forms along its "
                        "edges (default: the preset's, 8 in quality; 0: none)")
    p.add_argument("--weights", default="original",
                   help="'original' (bundled VGG19), 'random', or a torchvision-layout .pth/.safetensors file")
    p.add_argument("--arch", choices=("vgg19", "vgg16"), default="vgg19", help="network architecture")
    p.add_argument("--pooling", choices=POOLINGS, default="max", help="pooling layers")
    p.add_argument("--edge-padding", choices=PADDINGS, default="replicate",
                   help="how every convolution pads the edges: replicate (no dark or bright frame) or zeros (VGG's own)")
    p.add_argument("--seed", type=int, default=0, help="random seed (noise init)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--save-every", type=positive_int, metavar="N", help="also save the image every N steps")
    p.add_argument("--checkpoint", action="store_true",
                   help="activation checkpointing per VGG block: less memory for large images, slower")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (slow start, for long runs)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="the network in bfloat16 (--bf16) or fp32 (--no-bf16); default: bf16 on CPUs with native "
                        "bf16 (AMX, AVX-512 BF16) with Adam, fp32 elsewhere and with L-BFGS. Losses and the W2 "
                        "algebra stay exact")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_option(p)
    add_plan_option(p)


def _tile_arg(text: str) -> "str | int":
    """``--tile``: ``auto``, ``off`` or a tile size in px (at least 16), as ``Settings.tile`` takes them."""
    if text in (TILE_AUTO, TILE_OFF):
        return text
    if not text.isdigit() or int(text) < MIN_TILE:
        raise argparse.ArgumentTypeError(f"must be 'auto', 'off' or a tile size in px (at least {MIN_TILE}); "
                                         f"got {text!r}")
    return int(text)


def _tile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=_tile_arg, default="auto", metavar="auto|off|PX",
                   help="evaluate scales larger than PX in PX-px tiles (peak memory follows the tile, not the "
                        "image); auto (default): tiles only when the whole image would not fit in free memory")


def _mask_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--style-mask", nargs="+", metavar="MASK",
                   help="one grayscale image per style image, in the same order: each style paints where its "
                        "mask is white (regions instead of a blend)")
    p.add_argument("--content-mask", metavar="MASK", help="grayscale image: hold the content harder where white")
    p.add_argument("--content-mask-strength", type=nonneg_float, default=4.0,
                   help="where the content mask is white the content loss counts 1 + this many times (default 4)")


def _style_layer_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--style-layer-weights", type=nonneg_float, nargs="+", metavar="W",
                   help="one weight per style layer (default: the preset's for its layers, equal otherwise)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nst`` command."""
    parser = Parser(prog="nst", description="Neural style transfer through a hooked VGG19.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transfer", help="paint CONTENT in the style of STYLE(s)")
    t.add_argument("content", help="content image")
    t.add_argument("styles", nargs="+", metavar="style", help="one or more style images")
    t.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    t.add_argument("--content-weight", type=nonneg_float)
    t.add_argument("--style-weight", type=nonneg_float)
    t.add_argument("--style-balance", type=nonneg_float, metavar="P", help=STYLE_BALANCE_HELP)
    t.add_argument("--style-blend", type=nonneg_float, nargs="+", metavar="W", help="one weight per style image")
    t.add_argument("--style-scale", type=float, default=1.0, help="style features scale relative to the output")
    _mask_options(t)
    t.add_argument("--content-layer", help="layer whose activations are the content target (e.g. relu4_2)")
    t.add_argument("--style-layers", help="comma list of style layers (e.g. relu1_1,relu2_1,relu3_1)")
    _style_layer_weights(t)
    t.add_argument("--statistic", choices=STATISTICS)
    t.add_argument("--colors", choices=COLOR_MODES, default="style",
                   help="style: the style's colours; luminance: transfer on the luminance only, keep the "
                        "content's colours; match: give the style the content's colour mean and covariance first")
    _tile_option(t)
    _common(t, "content")

    r = sub.add_parser("reconstruct", help="rebuild CONTENT from one layer's activations, starting from faint "
                                           "noise on gray; stops when the image stops changing (--steps: the budget)")
    r.add_argument("content", help="content image")
    r.add_argument("--layer", default="relu4_2", help="layer to reconstruct from (default relu4_2)")
    _tile_option(r)
    _common(r, "gray")

    x = sub.add_parser("texture", help="synthesise a texture from STYLE(s) alone, starting from noise")
    x.add_argument("styles", nargs="+", metavar="style", help="one or more style images")
    x.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    x.add_argument("--style-blend", type=nonneg_float, nargs="+", metavar="W")
    x.add_argument("--style-scale", type=float, default=1.0)
    x.add_argument("--style-layers", help="comma list of style layers (e.g. relu1_1,relu2_1,relu3_1)")
    _style_layer_weights(x)
    x.add_argument("--statistic", choices=STATISTICS)
    _tile_option(x)
    _common(x, "noise")

    from .cli_frames import add_frames_parser, add_ray_options  # frames, folders and --ray

    add_ray_options(t, frames=False)
    add_frames_parser(sub, _common, _style_layer_weights, _mask_options, _tile_option)
    from .cli_explore import add_explore_parser  # the layer explorer grid

    add_explore_parser(sub)
    return parser


class _Reporter:
    """Drives a tqdm bar and the --save-every snapshots."""

    def __init__(self, quiet: bool, save_every: Optional[int], output: str) -> None:
        self.bar = None
        self.quiet = quiet
        self.save_every = save_every
        self.output = output

    def progress(self, p: Progress) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, unit="it", dynamic_ncols=True, file=sys.stderr)
        self.bar.update(p.step - self.bar.n)
        if p.losses:
            self.bar.set_postfix({"scale": f"{p.size[1]}x{p.size[0]}",
                                  **{k: f"{v:.4g}" for k, v in p.losses.items()}}, refresh=False)

    def preview(self, step: int, image: torch.Tensor) -> None:
        root, ext = os.path.splitext(self.output)
        save_image(image[:1], f"{root}_{step:05d}{ext or '.png'}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _init_arg(value: str, size: int):
    """``--init``: a name, or the image file it names (checked by ``cli_checks``)."""
    return value if value in INITS else load_image(value, size)


def run(args: argparse.Namespace) -> None:
    """Execute a parsed ``nst`` command line."""
    from . import cli_frames

    if cli_frames.handles(args):  # frames, a folder of images, or --ray
        if args.command == "frames" and getattr(args, "colors", "style") != "style":
            raise ValueError(f"--colors {args.colors} is for stills; frames keep the style's colours")
        return cli_frames.run(args)
    if args.command == "explore":
        from .cli_explore import run_explore

        return run_explore(args)
    device = pick_device(args.device)
    layers, weights = style_layers_and_weights(args) if args.command != "reconstruct" else (None, None)
    # the images are read first: a damaged one is refused before the network is loaded (once: the
    # plan's timed pass and the run share it)
    network = functools.lru_cache(maxsize=1)(functools.partial(load_extractor, args.arch, args.weights, args.pooling,
                                                               args.edge_padding, device=device))
    rep = _Reporter(args.quiet, args.save_every, args.output)
    settings = dict(steps=args.steps, optimizer=args.optimizer, tv_weight=args.tv_weight, seed=args.seed,
                    coarse_scale=args.coarse_scale, margin=args.margin, preview_every=args.save_every or 0,
                    checkpoint=args.checkpoint or None, compile=args.compile or None, autocast_bf16=args.bf16,
                    max_size=args.max_size)
    callbacks = dict(progress=rep.progress, preview=rep.preview if args.save_every else None)
    init = _init_arg(args.init, args.size)
    settings["tile"] = args.tile
    try:
        if args.command == "transfer":
            content = load_image(args.content, args.size)
            styles = [load_image(s) for s in args.styles]
            masks = [load_mask(m) for m in args.style_mask] if args.style_mask else None
            cmask = load_mask(args.content_mask) if args.content_mask else None
            preset = get_preset(args.preset)
            statistic = args.statistic or preset.statistic

            def go(size=None, **over):
                return transfer(network(), content, styles, args.preset, size, args.content_layer, layers,
                                weights, args.statistic, args.style_blend, args.style_scale, init,
                                content_weight=args.content_weight, style_weight=args.style_weight,
                                style_balance=args.style_balance, colors=args.colors, style_masks=masks,
                                content_mask=cmask, content_mask_strength=args.content_mask_strength,
                                **{**callbacks, **settings, **over})

            job = (content.shape[-2:], layers + [args.content_layer or preset.content_layer], statistic, layers,
                   preset_settings(preset, statistic, **settings))
        elif args.command == "reconstruct":
            content = load_image(args.content, args.size)
            steps, rest = args.steps or 300, {k: v for k, v in settings.items() if k != "steps"}

            def go(size=None, steps=steps, **over):
                return reconstruct(network(), content, args.layer, size, steps, init,
                                   **{**callbacks, **rest, **over})

            job = (content.shape[-2:], [args.layer], "gram", [], reconstruct_settings(steps, **rest))
        else:
            styles = [load_image(s) for s in args.styles]
            statistic = args.statistic or get_preset(args.preset).statistic

            def go(size=args.size, **over):
                return texture(network(), styles, args.preset, size, style_layers=layers,
                               style_layer_weights=weights, statistic=args.statistic, style_blend=args.style_blend,
                               style_scale=args.style_scale, init=init, **{**callbacks, **settings, **over})

            job = ((args.size, args.size), layers, statistic, layers,
                   preset_settings(args.preset, statistic, **settings))
        chosen = planned(args, device, *job, go)
        if chosen is None:  # --plan: said, nothing run or written
            return
        out = go(**chosen)
    finally:
        rep.close()
    save_image(out[:1], args.output)


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def _first_line(exc: BaseException, limit: int = 240) -> str:
    """The first non-empty line of an exception's message (backend messages carry pages of hints)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"


def backend_error_message(exc: BaseException, args: argparse.Namespace) -> str:
    """One line for a failure inside torch or a device backend, with what to try instead."""
    device = args.device if args.device != "auto" else pick_device("auto").type
    tries = ["--device cpu"] if device != "cpu" else []
    tries += ["without --bf16"] if args.bf16 else []
    tries += ["without --compile"] if args.compile else []
    if is_out_of_memory(exc):
        tries = [f"a smaller --size (now {args.size})"] + ([] if args.checkpoint else ["--checkpoint"]) + tries
        return f"out of memory on {device} ({_first_line(exc)}); try {' or '.join(tries)}"
    what = ("has no kernel for an operation" if isinstance(exc, NotImplementedError) else "failed")
    advice = f"; try {' or '.join(tries)}" if tries else "; please report it with this message"
    if device == "mps" and isinstance(exc, NotImplementedError):
        advice += " (or set PYTORCH_ENABLE_MPS_FALLBACK=1)"
    return f"the {device} backend {what} ({type(exc).__name__}: {_first_line(exc)}){advice}"


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: returns 0, or prints one line saying what to fix and returns non-zero.

    Exit status 2: a bad input; 3: out of memory; 1: another backend failure; 130: interrupted.
    """
    args = build_parser().parse_args(argv)
    try:
        check_command(args)  # before anything is loaded or written
        threads, note = resolve_threads(args.threads)
        if note and not args.quiet:
            print(f"nst: {note}", file=sys.stderr)
        with torch_threads(threads):
            run(args)
    except (ValueError, TypeError, OSError, Cancelled) as exc:  # bad input, unreadable/unwritable file
        print(f"nst: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nst: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, NotImplementedError, MemoryError) as exc:  # torch / CUDA / MPS / DirectML / …
        print(f"nst: error: {backend_error_message(exc, args)}", file=sys.stderr)
        return 3 if is_out_of_memory(exc) else 1
    if not getattr(args, "plan", False):
        print(args.output)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
