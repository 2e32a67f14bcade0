"""NST Layer Explorer: a labelled grid of what each VGG layer keeps."""

from __future__ import annotations

import torch

from ..nst_core.explore import DEFAULT_STEPS, explore, peak_bytes
from ..nst_core.image import to_pil
from ..nst_core.memory import required_bytes
from . import comfy_bridge as bridge
from .common import CATEGORY, EXTRACTOR
from .convert import check_extractor, extractor_on, image_to_nst, nst_to_image, oom_advice


class LayerExplorerNode:
    DESCRIPTION = (
        "A grid for learning what the layers see. Row 1: the content image rebuilt from faint noise from one "
        "layer at a time (relu1_2 … relu5_2: deeper layers keep the layout, lose the pixels). Row 2, with a "
        "style image: textures from growing sets of style layers (relu1_1, +relu2_1, … +relu5_1: larger "
        "and larger structures). Shows the grid as it fills; Cancel stops it within one iteration."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)
    OUTPUT_TOOLTIPS = ("The labelled grid, one image.",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "extractor": (EXTRACTOR, {"tooltip": "From NST Load VGG Extractor."}),
                "content": ("IMAGE", {"tooltip": "The image to rebuild from each layer (the first of a batch)."}),
                "cell_size": ("INT", {
                    "default": 128, "min": 16, "max": 512, "step": 8,
                    "tooltip": "Long edge of each cell in px. 10 cells at 128 px take about a minute on a "
                               "2-core CPU; time grows with the square of the size.",
                }),
                "steps": ("INT", {
                    "default": DEFAULT_STEPS, "min": 1, "max": 5000,
                    "tooltip": "Iterations per cell: more gives cleaner reconstructions and textures.",
                }),
            },
            "optional": {
                "style": ("IMAGE", {"tooltip": "Adds the row of textures from this style image (optional)."}),
            },
        }

    def run(self, extractor, content, cell_size, steps, style=None):
        check_extractor(extractor)
        content_img = image_to_nst(content, "content")
        style_img = image_to_nst(style, "style") if style is not None else None
        device = bridge.compute_device()
        need = peak_bytes(tuple(content_img.shape[-2:]), int(cell_size), int(steps), with_style=style_img is not None,
                          arch=extractor.arch, device=device)
        bridge.make_room(required_bytes(need), device)  # ComfyUI offloads its models until the largest cell fits
        progress = bridge.ProgressBar(1)
        step = [0]

        def on_progress(info):
            progress.total, step[0] = info.total, info.step
            progress.update(info.step)

        def on_preview(grid):  # the grid so far, after each cell
            pil = to_pil(grid[0])
            progress.update(step[0], pil, max(pil.size))

        advice = f"out of memory at cell size {cell_size} on {device}; lower 'cell_size' or run ComfyUI with --cpu"
        with oom_advice(advice), extractor_on(extractor, device) as ext, torch.inference_mode(False):
            grid = explore(ext, content_img, style_img, cell=int(cell_size), steps=int(steps),
                           progress=on_progress, preview=on_preview, cancel=bridge.check_interrupt)
        return (nst_to_image(grid),)
