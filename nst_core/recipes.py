"""The three uses in one call each: style transfer, single-layer reconstruction, texture synthesis."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from .color import color_init, color_inputs, color_preview, finish_colors
from .extractor import Extractor
from .image import as_rgb_batch, fit_long_edge, resize_long_edge
from .layers import parse_layers
from .optimizer import Init, PreviewFn, ProgressFn, CancelFn, check_max_size, check_size, optimize, validate_settings
from .presets import DEFAULT_PRESET, Preset, Settings, get_preset, settings_for
from .targets import ContentTarget, StyleTarget


def preset_settings(preset: "Preset | str", statistic: Optional[str] = None, **settings: Any) -> Settings:
    """The settings :func:`transfer` and :func:`texture` run with: the preset's, with the loss weights of
    ``statistic``, and ``settings`` overriding (None values are ignored)."""
    return settings_for(preset, statistic).replace(**settings)


def reconstruct_settings(steps: int = 300, **settings: Any) -> Settings:
    """The settings :func:`reconstruct` runs with: L-BFGS on one scale (the ``seed`` preset), content only."""
    return get_preset("seed").settings.replace(steps=steps, content_weight=1.0, tv_weight=0.0,
                                               lbfgs_tolerance=RECONSTRUCT_TOLERANCE).replace(**settings)


def _prepare_content(content: torch.Tensor, size: Optional[int], max_size: int) -> torch.Tensor:
    """Validate the content image and bring it to long edge ``size`` (None or 0: the content's own size);
    refuse negative and too large sizes first."""
    check_size(size or None)
    content = as_rgb_batch(content, "content image")
    hw = tuple(content.shape[-2:])
    check_max_size(fit_long_edge(hw, size) if size else hw, max_size)
    return resize_long_edge(content, size) if size else content


def transfer(
    extractor: Extractor,
    content: torch.Tensor,
    styles: "torch.Tensor | Sequence[torch.Tensor]",
    preset: str = DEFAULT_PRESET,
    size: Optional[int] = None,
    content_layer: Optional[str] = None,
    style_layers: "Optional[str | Sequence[str]]" = None,
    style_layer_weights: Optional[Sequence[float]] = None,
    statistic: Optional[str] = None,
    style_blend: Optional[Sequence[float]] = None,
    style_scale: float = 1.0,
    init: Init = "content",
    progress: Optional[ProgressFn] = None,
    preview: Optional[PreviewFn] = None,
    cancel: Optional[CancelFn] = None,
    colors: str = "style",
    style_masks: Optional[Sequence[torch.Tensor]] = None,
    content_mask: Optional[torch.Tensor] = None,
    content_mask_strength: float = 4.0,
    **settings: Any,
) -> torch.Tensor:
    """Stylise ``content`` (``[B,3,H,W]`` 0..1) with ``styles``; extra keywords override the preset's settings.

    ``style_masks`` (one ``[H,W]``/``[1,1,H,W]`` mask in 0..1 per style image, any size) give each style
    its own region of the output instead of blending them (``style_blend`` then weighs the regions);
    where no mask covers, the content alone rules. ``content_mask`` holds the content harder where it is
    white (the content loss there counts ``1 + content_mask_strength`` times).

    ``colors`` (``nst_core.color``): ``style`` paints with the style's colours; ``match`` first gives each
    style image the content's colour mean and covariance; ``luminance`` is Gatys et al. 2017's
    luminance-only transfer. We chose to *optimise* the luminance rather than only swap the channels
    afterwards: the content and style targets are taken from gray images of the luminances, the image
    is optimised in gray through the VGG, and the content's chroma (YCbCr Cb/Cr) is put back at the end.
    That keeps the style's luminance statistics intact, whereas optimising in colour and swapping later
    mixes the style's colours into the luma. Previews show the final colours.
    """
    p = get_preset(preset)
    run_settings = preset_settings(p, statistic, **settings)
    validate_settings(run_settings)
    content = _prepare_content(content, size, run_settings.max_size)
    layers = parse_layers(p.style_layers if style_layers is None else style_layers, extractor.arch)
    weights = style_layer_weights
    if weights is None and style_layers is None:
        weights = p.style_layer_weights
    target_content, styles = color_inputs(colors, content, styles)
    c = ContentTarget.create(extractor, target_content, content_layer or p.content_layer, 1.0, content_mask,
                             content_mask_strength)
    s = style_targets(extractor, styles, layers, weights, statistic or p.statistic, style_blend, style_scale,
                      style_masks)
    preview = color_preview(colors, preview, content)
    out = optimize(extractor, c, s, color_init(colors, init), run_settings, None, progress, preview, cancel)
    return finish_colors(colors, out, content)


def style_targets(extractor: Extractor, styles: "torch.Tensor | Sequence[torch.Tensor]", layers: Sequence[str],
                  weights: Optional[Sequence[float]], statistic: str, blend: Optional[Sequence[float]],
                  scale: float, masks: Optional[Sequence[torch.Tensor]] = None):
    """One blended style target, or, with ``masks``, one masked target per style image (regions)."""
    if masks is None:
        return StyleTarget.create(extractor, styles, layers, weights, statistic, blend, scale)
    images = list(styles) if not isinstance(styles, torch.Tensor) else [styles[i : i + 1] for i in range(styles.shape[0])]
    if len(masks) != len(images):
        raise ValueError(f"got {len(masks)} style masks for {len(images)} style images; give one mask per style "
                         "image, in the same order")
    region_weights = list(blend) if blend is not None else [1.0] * len(images)
    if len(region_weights) != len(images):
        raise ValueError(f"got {len(region_weights)} style blend weights for {len(images)} style images; give one per image")
    return [StyleTarget.create(extractor, im, layers, weights, statistic, None, scale, w, mask=m)
            for im, m, w in zip(images, masks, region_weights)]


#: ``reconstruct`` stops once 20 evaluations (an L-BFGS outer step) change the image by less than this
#: RMS (values in 0..1: two grey levels): see bench/reconstruct.py and BENCHMARKS.md
RECONSTRUCT_TOLERANCE = 2 / 255


def reconstruct(
    extractor: Extractor,
    content: torch.Tensor,
    layer: str = "relu4_2",
    size: Optional[int] = None,
    steps: int = 300,
    init: Init = "gray",
    progress: Optional[ProgressFn] = None,
    preview: Optional[PreviewFn] = None,
    cancel: Optional[CancelFn] = None,
    **settings: Any,
) -> torch.Tensor:
    """Rebuild an image from one layer's activations alone, starting from faint noise (L-BFGS, one scale).

    The start is mid-gray with faint noise (``init="gray"``, like jcjohnson's 0.001-amplitude random
    init): what the layer cannot see of the start stays in the result, so full-range noise (``"noise"``)
    left speckle and, clipped to [0, 1] at every outer step, cyan rings on bright skin. ``steps`` is a
    budget of evaluations: the run stops earlier once the image stops changing (an outer step of
    ``lbfgs_max_iter`` evaluations moves it by less than ``RECONSTRUCT_TOLERANCE`` RMS;
    ``lbfgs_tolerance=0`` uses them all).
    """
    run_settings = reconstruct_settings(steps, **settings)
    validate_settings(run_settings)
    content = _prepare_content(content, size, run_settings.max_size)
    c = ContentTarget.create(extractor, content, layer)
    return optimize(extractor, c, None, init, run_settings, None, progress, preview, cancel)


def texture(
    extractor: Extractor,
    styles: "torch.Tensor | Sequence[torch.Tensor]",
    preset: str = DEFAULT_PRESET,
    size: int = 512,
    style_layers: "Optional[str | Sequence[str]]" = None,
    style_layer_weights: Optional[Sequence[float]] = None,
    statistic: Optional[str] = None,
    style_blend: Optional[Sequence[float]] = None,
    style_scale: float = 1.0,
    init: Init = "noise",
    progress: Optional[ProgressFn] = None,
    preview: Optional[PreviewFn] = None,
    cancel: Optional[CancelFn] = None,
    **settings: Any,
) -> torch.Tensor:
    """Synthesise a ``size``×``size`` texture from the style image(s) alone, starting from noise."""
    p = get_preset(preset)
    run_settings = preset_settings(p, statistic, **settings)
    validate_settings(run_settings)
    check_size(size)
    check_max_size((size, size), run_settings.max_size)
    weights = style_layer_weights
    if weights is None and style_layers is None:
        weights = p.style_layer_weights
    s = StyleTarget.create(extractor, styles, p.style_layers if style_layers is None else style_layers, weights,
                           statistic or p.statistic, style_blend, style_scale)
    return optimize(extractor, None, s, init, run_settings, size, progress, preview, cancel)
