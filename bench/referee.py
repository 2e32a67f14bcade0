"""One fixed referee for every method: the original VGG19 as trained (zero padding, floor pooling) at a
fixed size.

- content distance: relu4_2 MSE of the output to the content, divided by the same for the style image;
- style distance: MSE of Gram/(C·H·W) to the style's over relu1_1…relu5_1, divided by the same for
  the unstyled content image.

Lower is better for both; 1.0 means "as far as the other input image". With ``border`` the style
distance is also taken inside: the output without ``border`` px on each side (at the referee's size)
against the content cut the same way, which a line along the edges does not reach.

    python -m bench.referee DIR [DIR ...] [--border 16]

scores development-set outputs (``bench.devset --out DIR``: ``content__style_SIZE.png``) again,
with the images from ``NST_BENCH_IMAGES`` (or ../shared/images).
"""

from __future__ import annotations

import argparse
import os
from functools import lru_cache
from typing import Dict, List, Optional, Sequence

import torch

from nst_core.extractor import Extractor, load_extractor
from nst_core.image import load_image, resize
from nst_core.statistics import gram

from .common import devset_outputs, image_path, print_table

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
REFEREE_SIZE = 256


class Referee:
    """Scores outputs against a content and a style image at ``REFEREE_SIZE`` (short side kept in aspect)."""

    def __init__(self, content: torch.Tensor, style: torch.Tensor, extractor: "Extractor | None" = None) -> None:
        """``extractor`` gives the device; the referee's network is always the original one."""
        device = extractor.device if extractor is not None else torch.device("cpu")
        self.ext = _original(str(device))
        self.hw = _fit(content.shape[-2:])
        self.content_image = self._image(content)
        self.content = self._run(self.content_image)
        self.style = self._feats(style)
        self.style_grams = {n: gram(self.style[n])[0] for n in STYLE_LAYERS}
        self.content_style_dist = self._style_mse(self.content)
        self.style_content_dist = self._content_mse(self.style)

    def _image(self, image: torch.Tensor) -> torch.Tensor:
        return resize(image.to(self.ext.device)[:1], self.hw)

    def _run(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.ext(image, list(STYLE_LAYERS) + [CONTENT_LAYER])

    def _feats(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self._run(self._image(image))

    def _style_mse(self, feats: Dict[str, torch.Tensor]) -> float:
        return sum(float((gram(feats[n])[0] - self.style_grams[n]).pow(2).mean()) for n in STYLE_LAYERS)

    def _content_mse(self, feats: Dict[str, torch.Tensor]) -> float:
        return float((feats[CONTENT_LAYER] - self.content[CONTENT_LAYER]).pow(2).mean())

    def score(self, output: torch.Tensor, border: int = 0) -> Dict[str, float]:
        """``{"content": …, "style": …}`` distances of ``output`` (lower is better); with ``border`` px
        also ``"style inside"``: the style distance without that border, relative to the content's."""
        image = self._image(output)
        f = self._run(image)
        out = {"content": self._content_mse(f) / self.style_content_dist,
               "style": self._style_mse(f) / self.content_style_dist}
        if border:
            if border < 0 or min(self.hw) - 2 * border < 32:
                raise ValueError(f"border must be 0..{(min(self.hw) - 32) // 2} px at the referee's "
                                 f"{self.hw[1]}×{self.hw[0]} px; got {border}")
            cut = lambda x: x[..., border:x.shape[-2] - border, border:x.shape[-1] - border]  # noqa: E731
            inside = self._style_mse(self._run(cut(image)))
            out["style inside"] = inside / self._style_mse(self._run(cut(self.content_image)))
        return out


@lru_cache(maxsize=None)
def _original(device: str) -> Extractor:
    ext = load_extractor(padding="zeros", device=device)
    for module in ext.features:
        if isinstance(module, torch.nn.MaxPool2d):
            module.ceil_mode = False  # VGG's own pooling (the pack pools in ceil mode)
    return ext


def _fit(hw) -> tuple:
    h, w = int(hw[0]), int(hw[1])
    s = REFEREE_SIZE / max(h, w)
    return max(16, round(h * s)), max(16, round(w * s))


def score_folder(folder: str, border: int = 0) -> Dict[str, Dict[str, float]]:
    """Each output ``content__style_SIZE.png`` in ``folder`` scored against its inputs, by pair."""
    scores = {}
    for path, content, style, size in devset_outputs(folder):
        c = load_image(image_path(f"{content}.jpg"), size)
        s = load_image(image_path(f"{style}.jpg"))
        scores[f"{content}×{style}"] = Referee(c, s).score(load_image(path), border)
    return scores


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print one row per pair: content / style (/ style inside) for each folder."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="development-set output folders (bench.devset --out)")
    p.add_argument("--border", type=int, default=0, help="px (at 256 px) left out of the style inside")
    args = p.parse_args(argv)
    by_folder = {os.path.basename(os.path.normpath(f)): score_folder(f, args.border) for f in args.folders}
    rows: List[Dict[str, object]] = []
    for pair in sorted({k for scores in by_folder.values() for k in scores}):
        row: Dict[str, object] = {"pair": pair}
        for name, scores in by_folder.items():
            v = scores.get(pair)
            row[name] = "" if v is None else " / ".join(f"{x:.4f}" for x in v.values())
        rows.append(row)
    print("content / style" + (f" / style inside (without {args.border} px along each edge)" if args.border else ""))
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
