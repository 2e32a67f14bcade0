"""``nst reconstruct`` before and after: start and schedule, time and error, in one run.

    python -m bench.reconstruct --size 256 --layers relu2_2 relu5_1 --out ~/nst-reconstructions

For each layer the runs alternate in one process (same photo, same seed, the extractor loaded once),
so all see the same load on a shared machine:

- ``before``: full-range noise (``init="noise"``) and every evaluation of the budget (``--steps``,
  300 by default, ``lbfgs_tolerance=0``): the old ``nst reconstruct``;
- ``noise+tol``: the old start with the stopping rule (what the schedule alone gives);
- ``after``: ``reconstruct``'s defaults: faint noise on gray (``init="gray"``) and the stopping rule,
  a scale ends once one L-BFGS outer step (``lbfgs_max_iter`` evaluations, then the clip to [0, 1])
  changes the image by less than ``RECONSTRUCT_TOLERANCE`` (RMS over its values in 0..1).

Printed per run: evaluations, seconds, the final loss, and the error against the photo (MSE and PSNR
over all pixels). The images go to ``--out`` (keep it outside the repository) to compare by eye.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Dict, List

import torch

from nst_core import load_extractor
from nst_core.image import save_image
from nst_core.recipes import RECONSTRUCT_TOLERANCE, reconstruct

from .common import bench_images, describe_device, print_table

RUNS = {"before": dict(init="noise", lbfgs_tolerance=0.0), "noise+tol": dict(init="noise"), "after": {}}


def run_once(ext, photo: torch.Tensor, layer: str, steps: int, **kw: object) -> Dict[str, object]:
    """One reconstruction: its image, evaluations, seconds and final loss."""
    losses: List[float] = []
    t = time.perf_counter()
    out = reconstruct(ext, photo, layer, steps=steps, progress=lambda p: losses.append(p.losses["total"]), **kw)
    return {"image": out, "evals": len(losses), "s": time.perf_counter() - t, "loss": losses[-1]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="brad_pitt.jpg", help="photo in the benchmark images folder")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--layers", nargs="+", default=["relu2_2", "relu5_1"])
    ap.add_argument("--steps", type=int, default=300, help="the evaluation budget (nst reconstruct's default)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the runs per layer")
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--out", help="folder for the images (outside the repository)")
    args = ap.parse_args(argv)
    photo, _ = bench_images(args.size, content=args.image)
    ext = load_extractor()
    print(f"# {describe_device('cpu')}; {args.image} at {args.size} px; budget {args.steps} evaluations; "
          f"tolerance {RECONSTRUCT_TOLERANCE:g} (RMS image change per outer step)")
    rows = []
    for layer in args.layers:
        for rep in range(args.repeats):
            for name in args.runs:
                r = run_once(ext, photo, layer, args.steps, **RUNS[name])
                mse = float((r["image"] - photo).pow(2).mean())
                rows.append({"layer": layer, "run": name, "evaluations": r["evals"], "seconds": f"{r['s']:.1f}",
                             "final loss": f"{r['loss']:.4g}", "MSE vs photo": f"{mse:.5f}",
                             "PSNR dB": f"{10 * math.log10(1 / mse):.2f}"})
                if args.out:
                    os.makedirs(args.out, exist_ok=True)
                    save_image(r["image"], os.path.join(args.out, f"{layer}_{name}_{rep}.png"))
                print(rows[-1], flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
