"""The ``nst explore`` command: the layer explorer grid (``nst_core.explore``) as a PNG/JPEG file.

``nst explore CONTENT [--style STYLE] [--size CELL_PX] -o grid.png``
"""

from __future__ import annotations

import argparse
import sys

from .explore import CONTENT_LAYERS, DEFAULT_STEPS, STYLE_LAYERS, ExploreProgress, explore
from .extractor import PADDINGS, POOLINGS, load_extractor
from .image import load_image, save_image
from .cli_args import pick_device, positive_int
from .cli_threads import add_threads_option


def add_explore_parser(sub: "argparse._SubParsersAction") -> None:
    """The ``explore`` subcommand."""

    e = sub.add_parser("explore", help="a grid: CONTENT rebuilt from each layer, and textures of STYLE "
                                       "from growing sets of style layers")
    e.add_argument("content", help="content image")
    e.add_argument("--style", help="style image: adds a row of textures from relu1_1, relu1_1+relu2_1, …")
    e.add_argument("-o", "--output", required=True, help="output image path (.png, .jpg, …)")
    e.add_argument("--size", type=positive_int, default=128, help="long edge of each cell in px (default 128)")
    e.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS,
                   help=f"iterations per cell (default {DEFAULT_STEPS})")
    e.add_argument("--layers", default=",".join(CONTENT_LAYERS),
                   help=f"comma list of layers to rebuild the content from (default {','.join(CONTENT_LAYERS)})")
    e.add_argument("--style-layers", default=",".join(STYLE_LAYERS),
                   help="comma list of style layers; cell k uses the first k (default relu1_1,…,relu5_1)")
    e.add_argument("--weights", default="original",
                   help="'original' (bundled VGG19), 'random', or a torchvision-layout .pth/.safetensors file")
    e.add_argument("--arch", choices=("vgg19", "vgg16"), default="vgg19", help="network architecture")
    e.add_argument("--pooling", choices=POOLINGS, default="max", help="pooling layers")
    e.add_argument("--edge-padding", choices=PADDINGS, default="replicate", help="how every convolution pads the edges")
    e.add_argument("--seed", type=int, default=0, help="random seed of the noise start images")
    e.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_option(e)
    # read by the shared error reporting of `nst` (cli.main)
    e.set_defaults(bf16=None, compile=False, checkpoint=False)


class _Bar:
    """A tqdm bar over all cells, labelled with the cell being made."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.bar = quiet, None

    def __call__(self, p: ExploreProgress) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, unit="it", dynamic_ncols=True, file=sys.stderr)
        self.bar.update(p.step - self.bar.n)
        self.bar.set_description(f"{p.cell + 1}/{p.cells} {p.label}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_explore(args: argparse.Namespace) -> None:
    """Execute a parsed ``nst explore`` command line."""

    device = pick_device(args.device)
    content = load_image(args.content)
    style = load_image(args.style) if args.style else None
    ext = load_extractor(args.arch, args.weights, args.pooling, args.edge_padding, device=device)
    bar = _Bar(args.quiet)
    try:
        grid = explore(ext, content, style, args.layers, args.size, args.steps, args.style_layers, args.seed,
                       progress=bar)
    finally:
        bar.close()
    save_image(grid, args.output)
