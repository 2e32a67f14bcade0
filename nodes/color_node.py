"""NST Match Colors: give an image another image's colour mean and covariance."""

from __future__ import annotations

import torch

from ..nst_core.color import match_colors
from .common import CATEGORY
from .convert import image_to_nst, nst_to_image


class MatchColorsNode:
    DESCRIPTION = (
        "Gives 'image' the colour mean and covariance of 'reference' with one affine colour map (Gatys et "
        "al. 2017 colour matching); the picture itself is untouched. Before a style target: the style in "
        "the content's palette. After a transfer, or with any image node: a quick colour grade."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("'image' recoloured, same size and batch.",)
    FUNCTION = "match"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The image(s) to recolour; each of a batch is matched on its own."}),
                "reference": ("IMAGE", {"tooltip": "Whose colours to take (all images of its batch together)."}),
            },
        }

    def match(self, image, reference):
        with torch.inference_mode(False):
            out = match_colors(image_to_nst(image, "image"), image_to_nst(reference, "reference"))
        return (nst_to_image(out),)
