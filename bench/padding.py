"""Time of one VGG pass (forward to relu5_1 and backward to the image) by how the convolutions pad.

    python -m bench.padding --sizes 362 512 [--rounds 7] [--no-bf16]

- ``zeros``: VGG's own zero padding (paints a frame; the speed to reach);
- ``replicate (F.pad)``: the edge repeated by torch's replication pad and its backward;
- ``replicate (EdgePad)``: the edge repeated by :class:`nst_core.extractor.EdgePad`, the pack's default.

The three run interleaved, round by round, in bf16 autocast and channels_last as the quality preset on a
CPU, on the real content image (4:3). The median round is reported, and each row's ratio to ``zeros``.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable, Dict, List
from unittest import mock

import torch
import torch.nn.functional as F

import nst_core.extractor as extractor_module
from nst_core import load_extractor
from nst_core.layers import layer_index

from .common import bench_images, describe_device, print_table
from .iteration import bare_pass

DEEPEST = "relu5_1"


def one_pass(ext, image: torch.Tensor, bf16: bool) -> float:
    """Seconds of a forward to ``DEEPEST`` and a backward to ``image`` (channels_last, bf16 autocast)."""
    x = image.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return bare_pass(ext, x, layer_index(ext.arch, DEEPEST))


def torch_pad(x: torch.Tensor) -> torch.Tensor:
    """The replication pad as torch does it (what EdgePad replaced)."""
    return F.pad(x, (1, 1, 1, 1), mode="replicate")


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[362, 512], help="long edges in px")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-bf16", action="store_true", help="fp32 network")
    args = ap.parse_args()
    bf16 = not args.no_bf16
    zeros = load_extractor(padding="zeros").to(memory_format=torch.channels_last)
    edge = load_extractor(padding="replicate").to(memory_format=torch.channels_last)
    rows: List[Dict[str, object]] = []
    for size in args.sizes:
        image, _ = bench_images(size)
        runs: Dict[str, Callable[[], float]] = {
            "zeros": lambda: one_pass(zeros, image, bf16),
            "replicate (F.pad)": lambda: _with_torch_pad(edge, image, bf16),
            "replicate (EdgePad)": lambda: one_pass(edge, image, bf16),
        }
        times: Dict[str, List[float]] = {k: [] for k in runs}
        for r in range(args.rounds + 1):
            for name, run in runs.items():
                t = run()
                if r:  # the first round warms up
                    times[name].append(t)
        base = statistics.median(times["zeros"])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append({"size": f"{image.shape[-1]}x{image.shape[-2]}", "padding": name,
                         "pass ms": round(med * 1000, 1), "÷ zeros": round(med / base, 2)})
    print(f"device: {describe_device('cpu')}; network in {'bf16' if bf16 else 'fp32'}")
    print_table(rows)


def _with_torch_pad(ext, image: torch.Tensor, bf16: bool) -> float:
    with mock.patch.object(extractor_module.EdgePad, "apply", torch_pad):
        return one_pass(ext, image, bf16)


if __name__ == "__main__":
    main()
