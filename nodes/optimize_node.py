"""Style Transfer Optimize."""

from __future__ import annotations

from ..nst_core.image import to_pil
from ..nst_core.optimize import optimize
from ..nst_core.presets import DEFAULT_PRESET, INITS, PRESETS, get_preset
from . import comfy_bridge as bridge
from .common import CATEGORY, CONTENT_TARGET, EXTRACTOR, STYLE_TARGET
from .convert import extractor_on, image_to_nst, nst_to_image

AUTO = "auto"
MAX_SIZE = 4096


class StyleTransferOptimizeNode:
    DESCRIPTION = (
        "Optimises an image by gradient descent through the VGG so that it matches the content target, "
        "the style target, or both (style alone = texture synthesis; content alone = reconstruction from "
        "one layer). Shows live previews; Cancel stops it within one iteration."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The result, one image per content image.",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "extractor": (EXTRACTOR, {"tooltip": "The same extractor the targets were built with."}),
                "preset": (sorted(PRESETS), {
                    "default": DEFAULT_PRESET,
                    "tooltip": " | ".join(f"{p.name}: {p.description}" for p in PRESETS.values()),
                }),
                "steps": ("INT", {
                    "default": 0, "min": 0, "max": 10000,
                    "tooltip": "Iterations at each pyramid scale (the smallest scale gets more, in the preset's "
                               "ratio); 0 = the preset's. On a CPU keep size and steps small.",
                }),
                "content_weight": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.05,
                    "tooltip": "Multiplies the preset's content weight: higher keeps more of the photo.",
                }),
                "style_weight": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.05,
                    "tooltip": "Multiplies the preset's style weight: higher paints more strongly.",
                }),
                "tv_weight": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.05,
                    "tooltip": "Multiplies the preset's smoothness weight: higher removes speckle, 0 turns it off.",
                }),
                "size": ("INT", {
                    "default": 512, "min": 0, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Long edge of the output in px; 0 = the content (or init) image's size. "
                               "Time grows with the square of the size.",
                }),
                "init": ([AUTO] + list(INITS), {
                    "default": AUTO,
                    "tooltip": "Start image when no init_image is linked. auto: the content image, or noise "
                               "for a pure texture.",
                }),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": 0xFFFFFFFF, "control_after_generate": True,
                    "tooltip": "Seed of the noise/gray start image (same seed, same result on CPU).",
                }),
            },
            "optional": {
                "content_target": (CONTENT_TARGET, {"tooltip": "From Content Target (optional)."}),
                "style_target": (STYLE_TARGET, {"tooltip": "From Gram Style Target (optional)."}),
                "init_image": ("IMAGE", {"tooltip": "Start from this image instead (resized to the output)."}),
            },
        }

    def run(self, extractor, preset, steps, content_weight, style_weight, tv_weight, size, init, seed,
            content_target=None, style_target=None, init_image=None):
        if content_target is None and style_target is None:
            raise ValueError("Style Transfer Optimize needs a content_target, a style_target, or both; link one")
        p = get_preset(preset)
        s = p.settings
        settings = s.replace(
            steps=steps or None,
            content_weight=s.content_weight * content_weight,
            style_weight=s.style_weight * style_weight,
            tv_weight=s.tv_weight * tv_weight,
            seed=seed,
        )
        settings = settings.replace(preview_every=max(1, min(20, settings.steps // 5)))
        start = image_to_nst(init_image, "init_image") if init_image is not None else (
            "noise" if init == AUTO and content_target is None else ("content" if init == AUTO else init))
        device = bridge.compute_device()
        progress = bridge.Progress(1)

        def on_progress(info):
            progress.total = info.total
            progress.update(info.step)

        def on_preview(step, image):
            pil = to_pil(image[0])
            progress.update(step, pil, min(512, max(pil.size)))

        try:
            with extractor_on(extractor, device) as ext:
                out = optimize(ext, content_target, style_target, start, settings, size or None,
                               on_progress, on_preview, bridge.check_interrupt)
        except bridge.oom_errors():
            bridge.empty_cache()
            raise RuntimeError(
                f"out of memory at size {size or 'native'} on {device}; lower 'size' (time and memory grow "
                "with its square) or run ComfyUI with --cpu"
            ) from None
        return (nst_to_image(out),)
