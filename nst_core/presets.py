"""Named settings (``seed``, ``fast``, ``quality``): data that the CLI, the nodes and the benchmarks read."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Optional, Tuple, Union

OPTIMIZERS = ("adam", "lbfgs")
INITS = ("content", "noise", "gray")
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
TILE_AUTO, TILE_OFF = "auto", "off"  # Settings.tile's words (0 is TILE_AUTO too, as on the node)
MIN_TILE = 16  # px: the smallest tile size a user may set
MIN_COARSE_SCALE = 0.25  # Settings.coarse_scale's lower bound


@dataclass(frozen=True)
class Settings:
    """How the image is optimised. Every field has a sensible default; presets override a few."""

    optimizer: str = "adam"
    steps: int = 200  # iterations at each pyramid scale after the first (L-BFGS: function evaluations)
    first_steps: Optional[int] = None  # iterations at the smallest scale (default: ``steps``)
    # iterations at the later scales whose deep layers see a coarse copy (coarse.py; default: ``steps``)
    coarse_steps: Optional[int] = None
    min_size: int = 128  # smallest pyramid long edge; ≥ the output size means a single scale
    pyramid_start: float = 0.0  # smallest scale as a fraction of the output's long edge (the larger wins)
    pyramid_step: float = math.sqrt(2)  # the ratio of consecutive scales' long edges (> 1)
    lr: float = 0.02  # Adam learning rate at the first scale (image values are in 0..1)
    lr_decay: float = 1.0  # Adam: the learning rate is multiplied by this at each larger scale
    ema_decay: float = 0.99  # Adam: the output is the bias-corrected running average of the iterates
    content_weight: float = 1.0
    style_weight: float = 1.0
    tv_weight: float = 0.0
    # the style weight × (reference distance / this pair's content-to-style distance) ** style_balance
    # (balance.py): far pairs are painted less hard, so they keep their content; 0: a fixed weight
    style_balance: float = 0.0
    lbfgs_max_iter: int = 20  # L-BFGS iterations between clips to [0,1]
    # L-BFGS: a scale stops early once one outer step (lbfgs_max_iter evaluations, then the clip) moves
    # the image by less than this RMS change (values in 0..1); 0: always use every step given
    lbfgs_tolerance: float = 0.0
    lbfgs_history: int = 100  # upper bound; also bounded by image size (``lbfgs_memory_mb``)
    lbfgs_memory_mb: int = 1024
    seed: int = 0
    # at the pyramid scales after the first, blocks 3–5 (relu3_1 on, relu4_2 content) see the image
    # resized by this factor, to a long edge of at least coarse_min_size (coarse.py); 1: every layer at
    # the full size
    coarse_scale: float = 1.0
    coarse_min_size: int = 256
    # px around the output (at its size; in proportion at the smaller scales) optimised with it and cut
    # off at the end, so that no line forms along the output's edges (canvas.py); 0: none
    margin: int = 0
    transport_every: int = 1  # Adam + moments: recompute each layer's W2 transport every N steps (1: exact)
    preview_every: int = 0  # call the preview callback every N steps (0: never)
    max_size: int = 4096  # refuse outputs whose long edge is larger (memory and time grow with its square)
    channels_last: bool = True  # NHWC network on CPU and CUDA (measured faster on the CPU; see BENCHMARKS.md)
    autocast_bf16: Optional[bool] = None  # network in bf16; None: Adam on CPUs with native bf16 only. Losses stay fp32
    # tiles (tiles.py): "auto" or 0 (the default): only when the whole image would not fit in the usable
    # free memory (memory.fit_settings: checkpointing first, then the largest tile that fits); "off":
    # never; N px (≥ 16): the scales whose long edge is above N run in tiles of N px
    tile: Union[int, str] = 0
    checkpoint: bool = False  # recompute each VGG block in the backward pass: less memory, ~1 more forward
    compile: bool = False  # torch.compile the network pieces (compiled once per size; pays off on long runs)

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes`` applied; ``None`` values are ignored (handy for CLI flags).

        Changing ``steps`` alone scales ``first_steps`` and ``coarse_steps`` by the same factor.
        """
        known = {f.name for f in fields(self)}
        bad = sorted(k for k in changes if k not in known)
        if bad:
            raise ValueError(f"unknown setting(s) {bad}; known settings are {sorted(known)}")
        changes = {k: v for k, v in changes.items() if v is not None}
        for name in ("first_steps", "coarse_steps"):
            if "steps" in changes and name not in changes and getattr(self, name) is not None:
                # keep the preset's ratio between these scales and the others
                changes[name] = max(1, round(getattr(self, name) * int(changes["steps"]) / max(self.steps, 1)))
        return replace(self, **changes)


@dataclass(frozen=True)
class Preset:
    """Target choices plus optimisation settings."""

    name: str
    description: str
    content_layer: str = "relu4_2"
    style_layers: Tuple[str, ...] = DEFAULT_STYLE_LAYERS
    style_layer_weights: Optional[Tuple[float, ...]] = None
    statistic: str = "moments"
    settings: Settings = field(default_factory=Settings)


#: relu1_1…relu5_1 of the quality and fast presets. relu5_1 counts a quarter: its statistic, taken
#: over few positions, copies the style's objects (faces, boats) into the picture; at 0.25 every pair
#: of the development set kept more of its content with a style no weaker (bench/devset.py)
STYLE_LAYER_WEIGHTS = (4.0, 2.0, 1.0, 1.0, 0.25)

PRESETS: Dict[str, Preset] = {
    "seed": Preset(
        name="seed",
        description="The original notebook's recipe: normalised Gram on relu1_1…relu5_1, conv5_1 content, "
        "L-BFGS 10×20 iterations with a clip to [0,1] after each, content init, one scale.",
        content_layer="conv5_1",
        statistic="gram_normalized",
        settings=Settings(optimizer="lbfgs", steps=200, min_size=1 << 30, content_weight=1.0,
                          style_weight=1e3, lbfgs_max_iter=20, lbfgs_history=100,
                          channels_last=False),  # its normalised Gram copies NHWC features: slower
    ),
    "fast": Preset(
        name="fast",
        description="A quick look at what quality gives: the same losses, a shorter pyramid (from 0.7× "
        "the output size, at least 180 px) and fewer iterations.",
        style_layer_weights=STYLE_LAYER_WEIGHTS,
        settings=Settings(optimizer="adam", steps=30, first_steps=60, min_size=180, pyramid_start=0.7, lr=0.06,
                          lr_decay=0.6, ema_decay=0.85, content_weight=0.25, style_weight=25.0, tv_weight=2.0,
                          style_balance=1.0, transport_every=7, margin=8),
    ),
    "quality": Preset(
        name="quality",
        description="The default: mean/covariance (W2) style loss with a style weight balanced for the "
        "pair, relu4_2 content, Adam with an averaged iterate over a pyramid of ×2 steps from half the "
        "output size (at least 128 px), blocks 3–5 at half size (at least 256 px) after the first scale, an "
        "8 px margin around the output cut off at the end, content init; "
        "strong style, legible content.",
        style_layer_weights=STYLE_LAYER_WEIGHTS,
        settings=Settings(optimizer="adam", steps=80, first_steps=70, min_size=128, pyramid_start=0.5,
                          pyramid_step=2.0, lr=0.05, lr_decay=0.6, ema_decay=0.9, content_weight=0.25,
                          style_weight=25.0, tv_weight=2.0, style_balance=1.0, transport_every=7,
                          coarse_scale=0.5, coarse_steps=45, margin=8),
    ),
}

DEFAULT_PRESET = "quality"

#: (content weight, style weight) calibrated for each style statistic: the presets' values for the
#: statistic they use. A preset run with another statistic takes that statistic's pair.
LOSS_WEIGHTS: Dict[str, Tuple[float, float]] = {
    "moments": (0.25, 25.0),
    "gram_normalized": (1.0, 1e3),
    "gram": (1.0, 1e3),
}


def settings_for(preset: "Preset | str", statistic: Optional[str] = None) -> Settings:
    """A preset's settings with the loss weights calibrated for ``statistic`` (default: the preset's own)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    if statistic is None or statistic == p.statistic:
        return p.settings
    if statistic not in LOSS_WEIGHTS:
        raise ValueError(f"statistic {statistic!r} is not supported; choose one of {sorted(LOSS_WEIGHTS)}")
    content_weight, style_weight = LOSS_WEIGHTS[statistic]
    return p.settings.replace(content_weight=content_weight, style_weight=style_weight)


def get_preset(name: str) -> Preset:
    """Look a preset up by name, with a clear error listing the choices."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
