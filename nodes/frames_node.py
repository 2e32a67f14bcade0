"""NST Stylize Frames: an IMAGE batch of video frames, stylised one frame at a time without flicker."""

from __future__ import annotations

import torch

from ..nst_core.flow import require_opencv
from ..nst_core.frames import DEFAULT_TEMPORAL_WEIGHT, stylize_frames
from ..nst_core.image import to_pil
from ..nst_core.layers import layer_names
from ..nst_core.optimizer import style_regions, validate_settings
from ..nst_core.presets import DEFAULT_PRESET, PRESETS, get_preset, settings_for
from ..nst_core.targets import ContentTarget
from . import comfy_bridge as bridge
from .common import CATEGORY, EXTRACTOR, STYLE_TARGET
from .convert import check_extractor, extractor_on, image_to_nst, nst_to_image, oom_advice
from .optimize_node import MAX_SIZE, StyleTransferOptimizeNode, schedule_tooltip


# the one install line that works in ComfyUI's own Python (shown only where cv2 is missing)
OPENCV_HINT = (
    "NST Stylize Frames needs OpenCV (the cv2 module) for the optical flow between frames, and the Python "
    "that runs ComfyUI has none. Install it into that Python, then restart ComfyUI: "
    "python -m pip install opencv-python (Windows portable build, from its folder: "
    "python_embeded\\python.exe -m pip install opencv-python). With temporal_weight 0 the frames are "
    "stylised independently and need no OpenCV."
)


def check_opencv(temporal_weight: float) -> None:
    """Refuse before any work when the temporal loss needs OpenCV and this Python has none."""
    if temporal_weight > 0:
        try:
            require_opencv()
        except ImportError:
            raise ImportError(OPENCV_HINT) from None


class StylizeFramesNode:
    DESCRIPTION = (
        "Stylises a batch of frames (e.g. from a video loader) one frame at a time, in batch order; needs "
        "OpenCV (opencv-python) for the optical flow. Every frame is optimised as a still would be, and a "
        "temporal loss pulls it, step by step, toward the previous frame's optimisation carried along the "
        "motion, wherever that motion is reliable (Ruder et al. 2016's check), so the result does not flicker "
        "and does not drift: a static shot gives the still. The style target is shared. Progress covers "
        "frames × iterations; Cancel stops within one iteration."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The stylised frames, one per input frame, in the same order.",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "extractor": (EXTRACTOR, {"tooltip": "The same extractor the style target was built with."}),
                "frames": ("IMAGE", {"tooltip": "The frames, as one IMAGE batch in playing order (all one size). "
                                                "Needs OpenCV (opencv-python) unless temporal_weight is 0."}),
                "style_target": (STYLE_TARGET, {"tooltip": "From NST Style Target; built once, used for every frame."}),
                "content_layer": (layer_names("vgg19"), {
                    "default": get_preset(DEFAULT_PRESET).content_layer,
                    "tooltip": "Layer of each frame whose activations are matched (relu4_2 is the classic choice).",
                }),
                "content_weight": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.05,
                    "tooltip": "Multiplies the calibrated content weight: higher keeps more of each frame.",
                }),
                "schedule": (list(PRESETS), {"default": DEFAULT_PRESET, "tooltip": schedule_tooltip()}),
                "steps": ("INT", {
                    "default": 0, "min": 0, "max": 10000,
                    "tooltip": "Iterations at each pyramid scale, for every frame; 0 = the schedule's. Time is "
                               "frames × steps: on a CPU keep size, steps and the number of frames small.",
                }),
                "size": ("INT", {
                    "default": 512, "min": 0, "max": MAX_SIZE, "step": 8,
                    "tooltip": "Long edge of the output frames in px; 0 = the frames' own size.",
                }),
                "temporal_weight": ("FLOAT", {
                    "default": DEFAULT_TEMPORAL_WEIGHT, "min": 0.0, "max": 100000.0, "step": 10.0,
                    "tooltip": "How strongly each frame keeps to the previous one carried along the motion "
                               "(optical flow by OpenCV, which must be installed; new scene, occlusions and motion "
                               "boundaries stay free). 0 = independent frames (flicker), no OpenCV needed.",
                }),
                "init_seed": ("INT", {
                    "default": 0, "min": 0, "max": 0xFFFFFFFF,
                    "tooltip": "Seed of any noise the run uses (same seed, same frames). The frames start from "
                               "the content, so it rarely changes anything.",
                }),
            },
        }

    def run(self, extractor, frames, style_target, content_layer, content_weight, schedule, steps, size,
            temporal_weight, init_seed):
        check_opencv(temporal_weight)
        check_extractor(extractor)
        regions = style_regions(style_target)
        if not regions:
            raise ValueError("NST Stylize Frames needs a style_target; link an NST Style Target")
        clip = image_to_nst(frames, "frames")
        base = settings_for(schedule, regions[0].statistic)
        settings = base.replace(steps=steps or None, seed=init_seed)  # content_weight goes on each frame's target
        settings = settings.replace(preview_every=max(1, min(20, settings.steps // 5)))
        validate_settings(settings)
        device = bridge.compute_device()
        first = ContentTarget.create(extractor, clip[:1], content_layer, content_weight)  # no network pass
        settings = StyleTransferOptimizeNode.fit_memory(extractor, settings, first, regions, "content", size, device)
        bar = bridge.ProgressBar(clip.shape[0])

        def on_progress(info):
            bar.total = info.total or bar.total
            bar.update(info.step)

        def on_preview(step, image):
            pil = to_pil(image[0])
            bar.update(step, pil, min(512, max(pil.size)))

        advice = (f"out of memory at size {size or 'native'} on {device}; lower 'size' (time and memory grow "
                  "with its square), or run ComfyUI with --cpu")
        with oom_advice(advice), extractor_on(extractor, device) as ext:
            outs = list(stylize_frames(ext, (clip[i:i + 1] for i in range(clip.shape[0])), regions, content_layer,
                                       content_weight, temporal_weight, settings, size or None, "content",
                                       on_progress, on_preview, bridge.check_interrupt, count=clip.shape[0]))
        return (nst_to_image(torch.cat(outs)),)
