"""Lines along the edges of stylised outputs, against the lines the same outputs have inside.

    python -m bench.edges DIR [DIR ...]

Each DIR holds a development-set run (``bench.devset --out DIR``: ``content__style_SIZE.png`` and the
contents in ``NST_BENCH_IMAGES``). For every output, the difference to its content (so the photo's own
edges cancel) is averaged along each edge's outer 2 rows (columns) and compared with rows 3–5 in: a
line along the edge is a large difference. The same measure taken every 24 rows and columns inside
the picture says how large such differences are where there is no edge. Printed per folder: the
edges' median, 90th percentile and largest absolute value, and the interior's.
"""

from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Sequence

import torch

from nst_core.image import load_image, resize

from .common import devset_outputs, image_path, print_table

SPACING = 24  # px between the interior rows measured


def line(profile: torch.Tensor, at: int = 0) -> float:
    """Rows ``at``, ``at``+1 of ``profile`` (``[rows, …]``) less rows ``at``+3…``at``+5, averaged."""
    return float(profile[at:at + 2].mean() - profile[at + 3:at + 6].mean())


def edge_lines(output: torch.Tensor, content: torch.Tensor) -> Dict[str, float]:
    """Each edge's line (gray levels, 0..255) in ``output`` less ``content`` resized to it."""
    d = (output - resize(content, tuple(output.shape[-2:]))).mean(1)[0] * 255
    sides = {"top": d, "bottom": d.flip(0), "left": d.t(), "right": d.t().flip(0)}
    return {k: line(t) for k, t in sides.items()}


def interior_lines(output: torch.Tensor, content: torch.Tensor) -> List[float]:
    """The same measure every :data:`SPACING` px inside the picture, both ways (no edge involved)."""
    d = (output - resize(content, tuple(output.shape[-2:]))).mean(1)[0] * 255
    return [line(t, r) for t in (d, d.flip(0), d.t(), d.t().flip(0)) for r in range(SPACING, t.shape[0] // 2, SPACING)]


def summarise(folder: str) -> Dict[str, object]:
    """One table row: the edges' and the interior's absolute lines over every output in ``folder``."""
    edges: List[float] = []
    inside: List[float] = []
    outputs = devset_outputs(folder)
    for path, content_name, _, _ in outputs:
        out, content = load_image(path), load_image(image_path(f"{content_name}.jpg"))
        edges += [abs(v) for v in edge_lines(out, content).values()]
        inside += [abs(v) for v in interior_lines(out, content)]
    e, i = torch.tensor(edges), torch.tensor(inside)
    return {"run": os.path.basename(os.path.normpath(folder)), "outputs": len(outputs),
            "edge median": round(float(e.median()), 1), "edge p90": round(float(e.quantile(0.9)), 1),
            "edge max": round(float(e.max()), 1), "interior median": round(float(i.median()), 1),
            "interior p90": round(float(i.quantile(0.9)), 1)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the table for each folder."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="development-set output folders (bench.devset --out)")
    args = p.parse_args(argv)
    print_table([summarise(f) for f in args.folders])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
