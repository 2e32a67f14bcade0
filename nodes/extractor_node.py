"""NST Load VGG Extractor."""

from __future__ import annotations

import os

from ..nst_core.extractor import PADDINGS, POOLINGS, load_extractor
from . import comfy_bridge as bridge
from .common import CATEGORY, EXTRACTOR

BUNDLED = "original VGG19 (bundled)"


class LoadVGGExtractor:
    DESCRIPTION = (
        "Loads a frozen VGG classifier whose inner layers become style-transfer targets. The bundled "
        "original VGG19 needs no download; torchvision-layout VGG19/VGG16 files in models/vgg are listed too."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (EXTRACTOR,)
    RETURN_NAMES = ("extractor",)
    OUTPUT_TOOLTIPS = ("The hooked VGG network, shared by the target and optimise nodes.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "weights": ([BUNDLED] + bridge.vgg_files(), {
                    "default": BUNDLED,
                    "tooltip": "The bundled original VGG19 (Caffe weights, the classic look), or a "
                               "torchvision-layout .pth/.safetensors state dict from models/vgg.",
                }),
                "architecture": (["vgg19", "vgg16"], {
                    "default": "vgg19",
                    "tooltip": "Network layout; must match the weights file (the bundled weights are VGG19).",
                }),
                "pooling": (list(POOLINGS), {
                    "default": "max",
                    "tooltip": "max: crisper detail; avg (rescaled): smoother, softer results.",
                }),
                "edge_padding": (list(PADDINGS), {
                    "default": "replicate",
                    "tooltip": "How each convolution pads the image's edges. replicate (the default) repeats the edge pixels, so the output has no dark or bright frame; zeros is VGG's own padding (the classic look, with a frame).",
                }),
            }
        }

    @classmethod
    def IS_CHANGED(cls, weights, **kwargs):
        if weights == BUNDLED:
            return weights
        try:
            path = bridge.vgg_path(weights)
            return f"{path}:{os.path.getmtime(path)}"
        except (ValueError, OSError):
            return float("nan")

    def load(self, weights, architecture, pooling, edge_padding="replicate"):
        source = "original" if weights == BUNDLED else bridge.vgg_path(weights)
        ext = load_extractor(architecture, source, pooling, edge_padding, device=bridge.offload_device())
        return (ext,)
