"""The default transfer in fp32 and with the network in bf16, in one run, on the same images and device.

    python -m bench.precision --size 512 --device cpu

Prints wall time and the referee's distances for each, and whether this CPU has native bf16 (then bf16
is the default there). Runs alternate (fp32, bf16, fp32, bf16, …) so both see the same machine load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


from nst_core import load_extractor, save_image, transfer
from nst_core.precision import cpu_has_native_bf16

from .common import bench_images, describe_device, print_table, sync
from .referee import Referee


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", help="folder for the output images (default: none written)")
    args = ap.parse_args(argv)
    ext = load_extractor(device=args.device)
    content, style = bench_images(args.size)
    referee = Referee(content, style, ext)
    times = {False: [], True: []}
    scores = {}
    for _ in range(args.rounds):
        for bf16 in (False, True):
            sync(ext.device)
            t = time.perf_counter()
            out = transfer(ext, content.to(ext.device), style.to(ext.device), autocast_bf16=bf16)
            sync(ext.device)
            times[bf16].append(time.perf_counter() - t)
            scores[bf16] = referee.score(out)
            if args.out:
                save_image(out, os.path.join(args.out, f"quality_{args.size}_{'bf16' if bf16 else 'fp32'}.png"))
    print(f"size {args.size}, {describe_device(args.device)}; native bf16 on this CPU: {cpu_has_native_bf16()}")
    rows = [{"network": "bf16" if bf16 else "fp32", "seconds": f"{statistics.median(times[bf16]):.1f}",
             "content dist": f"{scores[bf16]['content']:.3f}", "style dist": f"{scores[bf16]['style']:.3f}"}
            for bf16 in (False, True)]
    rows.append({"network": "ratio bf16/fp32", "seconds": f"{statistics.median(times[True]) / statistics.median(times[False]):.2f}",
                 "content dist": "", "style dist": ""})
    print_table(rows)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
