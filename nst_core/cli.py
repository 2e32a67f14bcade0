"""The ``nst`` command: ``transfer``, ``reconstruct`` and ``texture`` (also ``python -m nst_core``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import torch

from .extractor import load_extractor
from .image import load_image, save_image
from .layers import parse_layers
from .optimize import Cancelled, Progress
from .presets import DEFAULT_PRESET, INITS, OPTIMIZERS, PRESETS
from .statistics import STATISTICS
from .transfer import reconstruct, texture, transfer


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _nonneg_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number ≥ 0, got {text}")
    return value


def _common(p: argparse.ArgumentParser, default_init: str) -> None:
    p.add_argument("-o", "--output", required=True, help="output image path (.png, .jpg, …)")
    p.add_argument("--size", type=_positive_int, default=512, help="long edge of the output in px (default 512)")
    p.add_argument("--steps", type=_positive_int, help="iterations per pyramid scale (default: the preset's)")
    p.add_argument("--init", default=default_init,
                   help=f"start image: {', '.join(INITS)} or an image path (default {default_init})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="override the preset's optimiser")
    p.add_argument("--tv-weight", type=_nonneg_float, help="smoothness weight")
    p.add_argument("--weights", default="original",
                   help="'original' (bundled VGG19), 'random', or a torchvision-layout .pth/.safetensors file")
    p.add_argument("--arch", choices=("vgg19", "vgg16"), default="vgg19", help="network architecture")
    p.add_argument("--pooling", choices=("max", "avg"), default="max", help="pooling layers")
    p.add_argument("--seed", type=int, default=0, help="random seed (noise init)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--save-every", type=_positive_int, metavar="N", help="also save the image every N steps")
    p.add_argument("--checkpoint", action="store_true",
                   help="activation checkpointing per VGG block: less memory for large images, slower")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (slow start, for long runs)")
    p.add_argument("--bf16", action="store_true",
                   help="run the network in bfloat16 (CUDA, or a CPU with native bf16 such as AMX); losses stay fp32")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nst`` command."""
    parser = argparse.ArgumentParser(prog="nst", description="Neural style transfer through a hooked VGG19.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transfer", help="paint CONTENT in the style of STYLE(s)")
    t.add_argument("content", help="content image")
    t.add_argument("styles", nargs="+", metavar="style", help="one or more style images")
    t.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    t.add_argument("--content-weight", type=_nonneg_float)
    t.add_argument("--style-weight", type=_nonneg_float)
    t.add_argument("--style-blend", type=_nonneg_float, nargs="+", metavar="W", help="one weight per style image")
    t.add_argument("--style-scale", type=float, default=1.0, help="style features scale relative to the output")
    t.add_argument("--content-layer", help="layer whose activations are the content target (e.g. relu4_2)")
    t.add_argument("--style-layers", help="comma list of style layers (e.g. relu1_1,relu2_1,relu3_1)")
    t.add_argument("--statistic", choices=STATISTICS)
    _common(t, "content")

    r = sub.add_parser("reconstruct", help="rebuild CONTENT from one layer's activations, starting from noise")
    r.add_argument("content", help="content image")
    r.add_argument("--layer", default="relu4_2", help="layer to reconstruct from (default relu4_2)")
    _common(r, "noise")

    x = sub.add_parser("texture", help="synthesise a texture from STYLE(s) alone, starting from noise")
    x.add_argument("styles", nargs="+", metavar="style", help="one or more style images")
    x.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET)
    x.add_argument("--style-blend", type=_nonneg_float, nargs="+", metavar="W")
    x.add_argument("--style-scale", type=float, default=1.0)
    x.add_argument("--style-layers")
    x.add_argument("--statistic", choices=STATISTICS)
    _common(x, "noise")
    return parser


def pick_device(name: str) -> torch.device:
    """Resolve ``auto``/``cpu``/``cuda``/``mps`` to an available device, with a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps was asked for but MPS is not available; use --device cpu")
    return torch.device(name)


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
    if value in INITS:
        return value
    if os.path.isfile(value):
        return load_image(value, size)
    raise ValueError(f"--init {value!r} is neither one of {list(INITS)} nor an existing image file")


def run(args: argparse.Namespace) -> None:
    """Execute a parsed ``nst`` command line."""
    device = pick_device(args.device)
    ext = load_extractor(args.arch, args.weights, args.pooling, device=device)
    rep = _Reporter(args.quiet, args.save_every, args.output)
    settings = dict(steps=args.steps, optimizer=args.optimizer, tv_weight=args.tv_weight, seed=args.seed,
                    preview_every=args.save_every or 0, checkpoint=args.checkpoint or None,
                    compile=args.compile or None, autocast_bf16=args.bf16 or None)
    callbacks = dict(progress=rep.progress, preview=rep.preview if args.save_every else None)
    init = _init_arg(args.init, args.size)
    try:
        if args.command == "transfer":
            content = load_image(args.content, args.size)
            styles = [load_image(s) for s in args.styles]
            layers = parse_layers(args.style_layers, args.arch) if args.style_layers is not None else None
            out = transfer(ext, content, styles, args.preset, None, args.content_layer, layers, None,
                           args.statistic, args.style_blend, args.style_scale, init,
                           content_weight=args.content_weight, style_weight=args.style_weight,
                           **callbacks, **settings)
        elif args.command == "reconstruct":
            content = load_image(args.content, args.size)
            out = reconstruct(ext, content, args.layer, None, args.steps or 300, init, **callbacks,
                              **{k: v for k, v in settings.items() if k != "steps"})
        else:
            styles = [load_image(s) for s in args.styles]
            layers = parse_layers(args.style_layers, args.arch) if args.style_layers is not None else None
            out = texture(ext, styles, args.preset, args.size, layers, args.statistic, args.style_blend,
                          args.style_scale, init, **callbacks, **settings)
    finally:
        rep.close()
    save_image(out[:1], args.output)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point: returns 0, or prints one line saying what to fix and returns non-zero."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, TypeError, FileNotFoundError, Cancelled) as exc:
        print(f"nst: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nst: interrupted", file=sys.stderr)
        return 130
    except torch.cuda.OutOfMemoryError:
        print("nst: error: out of GPU memory; try a smaller --size or --device cpu", file=sys.stderr)
        return 3
    print(args.output)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
