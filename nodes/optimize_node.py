"""NST Style Transfer Optimize."""

from __future__ import annotations

from typing import Optional

from ..nst_core.color import COLOR_MODES, color_init, color_preview, color_targets, finish_colors
from ..nst_core.image import to_pil
from ..nst_core.memory import estimate_bytes, is_auto_tile, required_bytes
from ..nst_core.optimizer import check_max_size, optimize, output_size, run_statistic, style_regions, validate_settings
from ..nst_core.plan import Plan, make_plan, says_time, timed
from ..nst_core.presets import DEFAULT_PRESET, INITS, PRESETS, TILE_AUTO, settings_for
from . import comfy_bridge as bridge
from .common import CATEGORY, CONTENT_TARGET, EXTRACTOR, STYLE_TARGET
from .convert import check_extractor, extractor_on, image_to_nst, nst_to_image, oom_advice

AUTO = "auto"
MAX_SIZE = 4096


def schedule_tooltip() -> str:
    """What each schedule sets (the optimiser and the pyramid; the loss weights follow the style target)."""
    def one(p) -> str:
        s = p.settings
        scales = "one scale" if s.min_size >= 1 << 20 else f"pyramid from {s.pyramid_start:g}× the size"
        first = f", {s.first_steps} at the first scale" if s.first_steps else ""
        return f"{p.name}: {s.optimizer}, {s.steps} steps a scale{first}, {scales}"
    return ("How the image is optimised. " + " | ".join(one(p) for p in PRESETS.values()) +
            ". The content/style weights are those calibrated for the style target's statistic.")


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
                "schedule": (list(PRESETS), {"default": DEFAULT_PRESET, "tooltip": schedule_tooltip()}),
                "steps": ("INT", {
                    "default": 0, "min": 0, "max": 10000,
                    "tooltip": "Iterations at each pyramid scale after the first (the first scale and the "
                               "later ones whose deep layers see a coarse copy keep the schedule's ratios to "
                               "it: quality 80, first 70, coarse 45); 0 = the schedule's. On a CPU keep size "
                               "and steps small.",
                }),
                "content_weight": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.05,
                    "tooltip": "Multiplies the calibrated content weight: higher keeps more of the photo.",
                }),
                "style_weight": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.05,
                    "tooltip": "Multiplies the calibrated style weight: higher paints more strongly.",
                }),
                "tv_weight": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.05,
                    "tooltip": "Multiplies the schedule's smoothness weight: higher removes speckle, 0 turns it off.",
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
                "init_seed": ("INT", {
                    "default": 0, "min": 0, "max": 0xFFFFFFFF,
                    "tooltip": "Seed of the noise/gray start image (same seed, same result). It does nothing "
                               "when the run starts from the content image.",
                }),
            },
            "optional": {
                "content_target": (CONTENT_TARGET, {"tooltip": "From NST Content Target (optional)."}),
                "style_target": (STYLE_TARGET, {"tooltip": "From NST Style Target (optional; chained masked "
                                                           "targets give one style per region)."}),
                "init_image": ("IMAGE", {"tooltip": "Start from this image instead (resized to the output)."}),
                # a widget, optional so that API prompts written before it existed stay valid
                "colors": (list(COLOR_MODES), {
                    "default": "style",
                    "tooltip": "style: paint with the style's colours. luminance: transfer on the luminance "
                               "only and keep the content's colours (Gatys 2017). match: give the style "
                               "images the content's colour mean and covariance first.",
                }),
                "tile": ("INT", {
                    "default": 0, "min": 0, "max": MAX_SIZE, "step": 16,
                    "tooltip": "0 = automatic: the whole image at once, or tiles when it would not fit in free "
                               "memory. N: evaluate the scales larger than N px in N-px tiles (with a halo, the "
                               "grid shifted every step): memory follows the tile, not the image; slower.",
                }),
                "style_balance": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 4.0, "step": 0.25,
                    "tooltip": "Multiplies the schedule's balance for the pair: a style far from the photo is "
                               "painted less hard, so the photo stays legible. 0 = a fixed style weight (the "
                               "earlier look; with layer_weights 4,2,1,1,1 on the style target).",
                }),
                "coarse_scale": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "0 = the schedule's (0.5 in quality). At the pyramid scales after the first, the "
                               "network's blocks 3-5 see the image at this fraction of its size: large "
                               "strokes stay as the first scale set them, and a step is faster. 1 = every layer "
                               "at the full size (the earlier look); at least 0.25.",
                }),
            },
        }

    def run(self, extractor, schedule, steps, content_weight, style_weight, tv_weight, size, init, init_seed,
            colors="style", content_target=None, style_target=None, init_image=None, tile=0, style_balance=1.0,
            coarse_scale=0.0):
        if content_target is None and style_target is None:
            raise ValueError("NST Style Transfer Optimize needs a content_target, a style_target, or both; link one")
        check_extractor(extractor)
        regions = style_regions(style_target)
        content_image = content_target.image if content_target is not None else None
        content_target, regions = color_targets(colors, extractor, content_target, regions)
        statistic = regions[0].statistic if regions else None
        base = settings_for(schedule, statistic)
        settings = base.replace(
            steps=steps or None,
            content_weight=base.content_weight * content_weight,
            style_weight=base.style_weight * style_weight,
            tv_weight=base.tv_weight * tv_weight,
            style_balance=base.style_balance * style_balance,
            coarse_scale=coarse_scale or None,  # 0: the schedule's
            seed=init_seed,
            tile=int(tile) or TILE_AUTO,  # the widget's 0 is Settings' "auto" (0 means that there too)
        )
        settings = settings.replace(preview_every=max(1, min(20, settings.steps // 5)))
        validate_settings(settings)
        start = image_to_nst(init_image, "init_image") if init_image is not None else (
            "noise" if init == AUTO and content_target is None else ("content" if init == AUTO else init))
        start = color_init(colors, start)
        device = bridge.compute_device()
        plan = self.plan_run(extractor, settings, content_target, regions, start, size, device)
        settings = plan.settings
        progress = bridge.ProgressBar(1)

        def on_progress(info):  # reads no losses: the bar shows none, and reading them syncs the device
            progress.total = info.total
            progress.update(info.step)

        def on_preview(step, image):
            pil = to_pil(image[0])
            progress.update(step, pil, min(512, max(pil.size)))

        advice = (f"out of memory at size {size or 'native'} on {device}; lower 'size' (time and memory grow "
                  "with its square), or run ComfyUI with --cpu")
        with oom_advice(advice), extractor_on(extractor, device) as ext:
            if plan.is_large:  # say the plan and a rough time before a long run
                if says_time(plan):
                    plan = timed(plan, lambda size=None, progress=None, preview=None, **over: optimize(
                        ext, content_target, regions, start, settings.replace(**over), size, progress, None,
                        bridge.check_interrupt))
                bridge.say(plan.summary())
            out = optimize(ext, content_target, regions, start, settings, size or None,
                           on_progress, color_preview(colors, on_preview, content_image), bridge.check_interrupt)
        return (nst_to_image(finish_colors(colors, out, content_image)),)

    @staticmethod
    def plan_run(extractor, settings, content, regions, start, size: int, device) -> Plan:
        """Ask ComfyUI for the run's memory, then plan it (``nst_core.memory.fit_settings``): the whole image,
        checkpointing, then tiles, or a refusal with a size that fits, in the usable share of what is free.

        A ``tile`` set on the node is kept, and ComfyUI is asked for what that tiled run needs.
        """
        hw = output_size(content, start, size or None)
        check_max_size(hw, settings.max_size)
        layers = [n for t in regions for n in t.layers] + ([content.layer] if content is not None else [])
        style_layers = [n for t in regions for n in t.layers]
        batch = content.image.shape[0] if content is not None else 1
        model = (batch, extractor.arch, run_statistic(regions), style_layers)
        if not is_auto_tile(settings.tile):
            plan = make_plan(hw, layers, settings, device, *model, free_bytes=None)
            bridge.make_room(required_bytes(plan.estimate), device)
            return plan
        bridge.make_room(required_bytes(estimate_bytes(hw, layers, settings, *model, device=device)), device)
        return make_plan(hw, layers, settings, device, *model, free_bytes=bridge.free_bytes(device))

    @classmethod
    def fit_memory(cls, extractor, settings, content, regions, start, size: int, device):
        """The settings :meth:`plan_run` plans (tile ``"off"``: the whole image; or a size in px)."""
        return cls.plan_run(extractor, settings, content, regions, start, size, device).settings
