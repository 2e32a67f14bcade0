"""One fixed referee for every method: the original VGG19 as trained (zero padding, floor pooling) at a
fixed size.

- content distance: relu4_2 MSE of the output to the content, divided by the same for the style image;
- style distance: MSE of Gram/(C·H·W) to the style's over relu1_1…relu5_1, divided by the same for
  the unstyled content image.

Lower is better for both; 1.0 means "as far as the other input image".
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict

import torch

from nst_core.extractor import Extractor, load_extractor
from nst_core.image import resize
from nst_core.statistics import gram

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
        self.content = self._feats(content)
        self.style = self._feats(style)
        self.style_grams = {n: gram(self.style[n])[0] for n in STYLE_LAYERS}
        self.content_style_dist = self._style_mse(self.content)
        self.style_content_dist = self._content_mse(self.style)

    def _feats(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.ext(resize(image.to(self.ext.device)[:1], self.hw), list(STYLE_LAYERS) + [CONTENT_LAYER])

    def _style_mse(self, feats: Dict[str, torch.Tensor]) -> float:
        return sum(float((gram(feats[n])[0] - self.style_grams[n]).pow(2).mean()) for n in STYLE_LAYERS)

    def _content_mse(self, feats: Dict[str, torch.Tensor]) -> float:
        return float((feats[CONTENT_LAYER] - self.content[CONTENT_LAYER]).pow(2).mean())

    def score(self, output: torch.Tensor) -> Dict[str, float]:
        """``{"content": …, "style": …}`` distances of ``output`` (lower is better)."""
        f = self._feats(output)
        return {"content": self._content_mse(f) / self.style_content_dist,
                "style": self._style_mse(f) / self.content_style_dist}


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
