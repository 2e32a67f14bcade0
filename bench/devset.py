"""The development set: 4 contents × 4 styles, each pair run with one preset and scored by the referee.

    python -m bench.devset --size 256 512 [--out DIR] [--jobs 2] [--set style_weight=40 ...]
                           [--compare-to DIR/devset_256.json]

Contents: two day photos (tubingen, golden_gate), a portrait (brad_pitt), a drawing (escher_sphere).
Styles: a busy light painting (starry_night), a dark busy one (shipwreck), flat areas with outlines
(picasso_selfport1907), muted facets (seated-nude). All come from ``../shared/images`` (or
``NST_BENCH_IMAGES``), which a clone does not have; the outputs, a JSON of the figures and one contact
sheet per size (rows: contents, columns: styles) go to ``--out``, outside the repository.

``--set KEY=VALUE`` changes a setting or a transfer argument for an experiment (``style_weight=40``,
``content_layer=relu3_1``, ``style_layer_weights=2,2,1,1,1``). ``--compare-to`` prints each pair's
change against an earlier run's JSON. Each pair runs in its own process (``--jobs`` at a time, one
thread each), so a pair's seconds are its own only with ``--jobs 1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .common import ROOT, describe_device, image_path, output_name, print_table

CONTENTS = ("tubingen", "golden_gate", "brad_pitt", "escher_sphere")
STYLES = ("starry_night", "shipwreck", "picasso_selfport1907", "seated-nude")
CELL = 192  # px: the height of one contact-sheet cell


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["k=v", …]`` → a dict of typed values: numbers, comma lists of numbers, words, true/false."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {item!r}")
        out[key] = _value(raw)
    return out


def _value(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if "," in raw:
        return tuple(_value(r) for r in raw.split(","))
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def run_pair(content: str, style: str, size: int, preset: str, overrides: Dict[str, Any],
             out: str) -> Dict[str, float]:
    """Run one pair in this process, save the output to ``out``; its seconds and referee figures."""
    import torch

    from nst_core import load_extractor, load_image, save_image, transfer

    from .referee import Referee

    torch.set_num_threads(1)
    c = load_image(image_path(content + ".jpg"), size)
    s = load_image(image_path(style + ".jpg"))
    ext = load_extractor()
    t = time.perf_counter()
    img = transfer(ext, c, [s], preset, **overrides)
    seconds = time.perf_counter() - t
    save_image(img[:1].clamp(0, 1), out)
    score = Referee(c, s, ext).score(load_image(out))
    return {"seconds": seconds, **score}


def contact_sheet(results: Dict[str, Dict[str, float]], out_dir: str, size: int) -> str:
    """One image: a row per content, a column per style, the inputs along the top and left edges."""
    from PIL import Image

    def cell(path: str) -> Image.Image:
        im = Image.open(path).convert("RGB")
        return im.resize((max(1, round(im.width * CELL / im.height)), CELL), Image.LANCZOS)

    def output(c: str, s: str) -> Image.Image:
        return cell(_output(out_dir, c, s, size)) if f"{c}×{s}" in results else Image.new("RGB", (1, CELL), "white")

    rows = [[cell(image_path(c + ".jpg"))] + [output(c, s) for s in STYLES] for c in CONTENTS]
    head = [Image.new("RGB", (CELL, CELL), "white")] + [cell(image_path(s + ".jpg")) for s in STYLES]
    grid = [head] + rows
    widths = [max(r[i].width for r in grid if i < len(r)) for i in range(len(head))]
    sheet = Image.new("RGB", (sum(widths) + 4 * len(widths), (CELL + 4) * len(grid)), "white")
    for y, row in enumerate(grid):
        x = 0
        for i, im in enumerate(row):
            sheet.paste(im, (x, y * (CELL + 4)))
            x += widths[i] + 4
    path = os.path.join(out_dir, f"contact_{size}.png")
    sheet.save(path)
    return path


def _output(out_dir: str, content: str, style: str, size: int) -> str:
    return os.path.join(out_dir, output_name(content, style, size))


def run_set(size: int, preset: str, overrides: List[str], out_dir: str, jobs: int,
            pairs: Optional[List[Tuple[str, str]]] = None) -> Dict[str, Dict[str, float]]:
    """Every pair at ``size``, ``jobs`` processes at a time; ``{"content×style": figures}``."""
    pairs = pairs or [(c, s) for c in CONTENTS for s in STYLES]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def one(pair: Tuple[str, str]) -> Tuple[str, Dict[str, float]]:
        c, s = pair
        cmd = [sys.executable, "-m", "bench.devset", "--one", c, s, "--size", str(size), "--preset", preset,
               "--image", _output(out_dir, c, s, size)] + [a for o in overrides for a in ("--set", o)]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise SystemExit(f"{c} × {s} failed:\n{res.stderr[-2000:]}")
        return f"{c}×{s}", json.loads(res.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(pool.map(one, pairs))


def _matrix(results: Dict[str, Dict[str, float]], before: Optional[Dict[str, Dict[str, float]]]) -> List[dict]:
    rows = []
    for c in CONTENTS:
        row: Dict[str, object] = {"content \\ style": c}
        for s in STYLES:
            r = results.get(f"{c}×{s}")
            text = "" if r is None else f"{r['content']:.3f} / {r['style']:.4f}"
            b = (before or {}).get(f"{c}×{s}")
            if r is not None and b is not None:
                text += f" ({r['content'] - b['content']:+.3f} / {r['style'] - b['style']:+.4f})"
            row[s] = text
        rows.append(row)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the set at each size; print the tables; write the JSON and the contact sheets."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs="+", default=[256])
    ap.add_argument("--preset", default="quality")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", help="folder for outputs, JSON and contact sheets (default: a temporary folder)")
    ap.add_argument("--jobs", type=int, default=1, help="pairs run at once, one thread each")
    ap.add_argument("--pairs", help="only these pairs: content×style,… (default: all 16)")
    ap.add_argument("--compare-to", help="an earlier run's devset_SIZE.json (SIZE is replaced by each size)")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    overrides = parse_overrides(args.set)
    if args.one:
        print(json.dumps(run_pair(*args.one, args.size[0], args.preset, overrides, args.image)))
        return 0
    _check_overrides(overrides)
    pairs = [tuple(p.split("×")) for p in args.pairs.split(",")] if args.pairs else None
    out_dir = args.out or tempfile.mkdtemp(prefix="nst-devset-")
    os.makedirs(out_dir, exist_ok=True)
    for size in args.size:
        results = run_set(size, args.preset, args.set, out_dir, args.jobs, pairs)
        with open(os.path.join(out_dir, f"devset_{size}.json"), "w") as f:
            json.dump(results, f, indent=1)
        before = None
        if args.compare_to:
            with open(args.compare_to.replace("SIZE", str(size))) as f:
                before = json.load(f)
        sheet = contact_sheet(results, out_dir, size)
        print(f"\nsize {size}, preset {args.preset} {' '.join(args.set)}; {describe_device('cpu')}, "
              f"{args.jobs} pair(s) at once; referee content / style (lower is better)"
              + ("; (change against --compare-to)" if before else ""))
        print_table(_matrix(results, before))
        for pair, r in results.items():
            if tuple(pair.split("×")) not in {(c, s) for c in CONTENTS for s in STYLES}:
                b = (before or {}).get(pair)
                print(f"{pair}: {r['content']:.3f} / {r['style']:.4f}" + (
                    f" ({r['content'] - b['content']:+.3f} / {r['style'] - b['style']:+.4f})" if b else ""))
        secs = [r["seconds"] for r in results.values()]
        print(f"seconds per pair: median {sorted(secs)[len(secs) // 2]:.1f}, max {max(secs):.1f}; "
              f"contact sheet {sheet}")
    return 0


def _check_overrides(overrides: Dict[str, Any]) -> None:
    """Refuse unknown keys before any pair runs."""
    from nst_core import Settings

    known = {f.name for f in dataclasses.fields(Settings)} | {
        "content_layer", "style_layers", "style_layer_weights", "statistic", "style_scale", "init", "colors"}
    bad = sorted(set(overrides) - known)
    if bad:
        raise SystemExit(f"--set: unknown key(s) {bad}; known: {sorted(known)}")


if __name__ == "__main__":
    raise SystemExit(main())
