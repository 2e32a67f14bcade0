"""NST Content Target and NST Style Target (ID NST_GramStyleTarget)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import List, Optional, Tuple

from ..nst_core.layers import layer_names, parse_layers
from ..nst_core.presets import DEFAULT_PRESET, get_preset
from ..nst_core.statistics import STATISTICS
from ..nst_core.optimizer import style_regions
from ..nst_core.targets import ContentTarget, StyleTarget
from .common import CATEGORY, CONTENT_TARGET, EXTRACTOR, STYLE_TARGET
from .convert import check_extractor, check_mask, image_to_nst

CUSTOM = "custom (use custom_layers)"
LAYER_SETS = {
    "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1": "Gatys et al.: all five blocks (default)",
    "relu1_1,relu2_1,relu3_1,relu4_1": "four blocks: finer texture, less large-scale structure",
    "relu2_1,relu3_1,relu4_1,relu5_1": "skip block 1: fewer colour speckles, bolder strokes",
    "relu1_1,relu2_1,relu3_1": "shallow only: colours and fine texture",
}


def parse_layer_weights(text: Optional[str]) -> Optional[List[float]]:
    """The ``layer_weights`` text: ``"4, 2, 1"`` → ``[4.0, 2.0, 1.0]``; empty (or linked: None) → None.

    Each must be a finite number ≥ 0; a clear error names the input otherwise. Whether there is one
    per layer depends on the other inputs: :func:`resolve_layers` checks that.
    """
    text = (text or "").strip()
    if not text:
        return None
    try:
        weights = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"layer_weights must be comma-separated numbers like '4,2,1,1,1'; got {text!r}") from None
    bad = [w for w in weights if not 0 <= w < math.inf]
    if bad:
        raise ValueError(f"layer_weights: each layer weight must be a finite number ≥ 0; got {bad[0]} in {text!r}")
    return weights


class ContentTargetNode:
    DESCRIPTION = (
        "Captures one layer's activations of the content image. Deeper layers keep the layout but let go "
        "of exact colours and edges (relu4_2 is the classic choice). A batch gives one output per image."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (CONTENT_TARGET,)
    RETURN_NAMES = ("content_target",)
    OUTPUT_TOOLTIPS = ("The content target, computed once and reused when only optimiser settings change.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "extractor": (EXTRACTOR, {"tooltip": "From NST Load VGG Extractor."}),
                "image": ("IMAGE", {"tooltip": "The content image (a batch gives several outputs)."}),
                "layer": (layer_names("vgg19"), {
                    "default": get_preset(DEFAULT_PRESET).content_layer,
                    "tooltip": "Layer whose activations must be matched: shallow = close to the photo, "
                               "deep = freer (relu4_2 default; conv5_1 is the seed recipe).",
                }),
                "weight": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.05,
                    "tooltip": "Multiplies the calibrated content weight: higher keeps more of the photo.",
                }),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Content strength: white holds the content harder (a face, say); "
                                             "resized to the output."}),
                "mask_strength": ("FLOAT", {
                    "default": 4.0, "min": 0.0, "max": 100.0, "step": 0.5,
                    "tooltip": "Where the mask is white the content loss counts 1 + this many times as much.",
                }),
            },
        }

    def build(self, extractor, image, layer, weight, mask=None, mask_strength=4.0):
        # validation only: the activations are computed by the optimiser, at the sizes it needs
        img = image_to_nst(image, "content image")
        check_mask(mask, "content mask", "it would hold nothing harder; disconnect it, or give white where the "
                                         "content must hold", any_black=False)
        target = ContentTarget.create(check_extractor(extractor), img, layer, weight, mask, mask_strength)
        return (target.to("cpu"),)


class GramStyleTargetNode:
    DESCRIPTION = (
        "The style as statistics of several VGG layers of the style image(s): by default their mean and "
        "covariance, matched with a Wasserstein-2 loss (statistic = moments); Gram matrices with statistic = "
        "gram. A batch counts as several style images; chain nodes through add_to to blend styles, or give "
        "each a mask to paint regions."
    )
    SEARCH_ALIASES = ["Gram Style Target", "style target", "Gram", "Wasserstein"]  # newer ComfyUI's node search
    CATEGORY = CATEGORY
    RETURN_TYPES = (STYLE_TARGET,)
    RETURN_NAMES = ("style_target",)
    OUTPUT_TOOLTIPS = ("The style target; feed it to NST Style Transfer Optimize or to another NST Style "
                       "Target's add_to.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "extractor": (EXTRACTOR, {"tooltip": "From NST Load VGG Extractor."}),
                "image": ("IMAGE", {"tooltip": "Style image(s); every image of a batch is blended equally."}),
                "layers": (list(LAYER_SETS) + [CUSTOM], {
                    "default": next(iter(LAYER_SETS)),
                    "tooltip": "Which layers' statistics define the style. " +
                               " | ".join(f"{k}: {v}" for k, v in LAYER_SETS.items()),
                }),
                "custom_layers": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "With layers = custom: a comma list such as relu1_1,relu3_1,relu5_1.",
                }),
                "layer_weights": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Comma list, one weight per layer (e.g. 4,2,1,1,1). Empty: the preset's weights "
                               "for the default layers, equal weights otherwise.",
                }),
                "statistic": (list(STATISTICS), {
                    "default": get_preset(DEFAULT_PRESET).statistic,
                    "tooltip": "moments (default): mean and covariance with a Wasserstein-2 loss (best "
                               "quality); gram: Gram/(CHW), Gatys et al.; gram_normalized: the seed notebook's "
                               "cosine Gram.",
                }),
                "style_scale": ("FLOAT", {
                    "default": 1.0, "min": 0.05, "max": 8.0, "step": 0.05,
                    "tooltip": "Size of the style's brush strokes relative to the output: below 1 finer, "
                               "above 1 coarser (needs a large enough style image).",
                }),
            },
            "optional": {
                "add_to": (STYLE_TARGET, {"tooltip": "Another style target: without masks the two blend (they must "
                                                     "share layers, weights, statistic and scale); with a mask on "
                                                     "either, each paints its own region."}),
                "blend_weight": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05,
                    "tooltip": "Weight of this node's image(s) relative to add_to's (1 = equal mix; for a "
                               "masked region, the region's style strength).",
                }),
                "mask": ("MASK", {"tooltip": "Region of the output this style paints (white); resized to the "
                                             "output. Chain masked targets through add_to for one style per region."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, layer_weights):
        # ComfyUI (2024-03 and 2025 alike) files a failed VALIDATE_INPUTS once on every input it names:
        # naming only layer_weights reports its error once, on it. ComfyUI checks the layers combo itself;
        # custom_layers and the count of weights are checked when the node runs (resolve_layers).
        try:
            parse_layer_weights(layer_weights)
        except ValueError as exc:
            return str(exc)
        return True

    def build(self, extractor, image, layers, custom_layers, layer_weights, statistic, style_scale,
              add_to=None, blend_weight=1.0, mask=None):
        # validation only: the statistics are computed by the optimiser, at the sizes it needs
        names, weights = resolve_layers(layers, custom_layers, layer_weights)
        img = image_to_nst(image, "style image")
        check_mask(mask, "style mask", "the style would paint nowhere")
        target = StyleTarget.create(check_extractor(extractor), img, names, weights, statistic, None,
                                    style_scale, mask=mask).to("cpu")
        return (combine_styles(add_to, target, blend_weight),)


def combine_styles(existing, new: StyleTarget, weight: float):
    """``add_to`` + this node's target: a blend when neither has a mask, else one more region."""
    if existing is None:
        return new
    regions = style_regions(existing)
    if new.mask is None:
        unmasked = [i for i, r in enumerate(regions) if r.mask is None]
        if unmasked:  # blend into the one unmasked style
            i = unmasked[0]
            merged = regions[:i] + (regions[i].blend(new, weight),) + regions[i + 1 :]
            return merged[0] if len(merged) == 1 else merged
    return regions + (replace(new, weight=new.weight * weight),)


def resolve_layers(layers: str, custom_layers: str, layer_weights: str) -> Tuple[List[str], Optional[List[float]]]:
    """The node's layer choice → (names, weights or None), validated: a clear error names the wrong input."""
    preset = get_preset(DEFAULT_PRESET)
    if layers == CUSTOM:
        if not (custom_layers or "").strip():
            raise ValueError("layers is 'custom' but custom_layers is empty; give e.g. relu1_1,relu3_1,relu5_1")
        try:
            names = parse_layers(custom_layers)
        except ValueError as exc:
            raise ValueError(f"custom_layers: {exc}") from None
    else:
        names = parse_layers(layers)
    weights = parse_layer_weights(layer_weights)
    if weights is None and tuple(names) == preset.style_layers:
        weights = list(preset.style_layer_weights) if preset.style_layer_weights else None
    if weights is not None and len(weights) != len(names):
        raise ValueError(f"layer_weights has {len(weights)} numbers for {len(names)} layers; give one per layer")
    return names, weights
