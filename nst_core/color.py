"""Colour control (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer").

Three modes for where the result's colours come from:

- ``style``: the optimisation paints with the style's colours (the plain method).
- ``luminance``: luminance-only transfer. The content and style targets are taken from the images'
  luminance (gray RGB), the optimisation runs on that, and the content's chroma is put back at the
  end (:func:`finish_colors`).
- ``match``: each style image's colour mean and covariance are first matched to the content's, so
  the style's strokes come in the content's palette.

Colours use full-range BT.601 YCbCr (the JPEG one): Y is the luma, Cb/Cr the chroma, all in 0..1.
Everything takes and returns ``[B,3,H,W]`` RGB in 0..1.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from .extractor import Extractor
from .image import as_rgb_batch, resize
from .targets import ContentTarget, StyleTarget

COLOR_MODES = ("style", "luminance", "match")
Images = Union[torch.Tensor, Sequence[torch.Tensor]]
Styles = Union[None, StyleTarget, Sequence[StyleTarget]]

# full-range BT.601: [Y, Cb, Cr] = M @ [R, G, B] + [0, 0.5, 0.5]
_RGB_TO_YCBCR = torch.tensor([
    [0.299, 0.587, 0.114],
    [-0.168735892, -0.331264108, 0.5],
    [0.5, -0.418687589, -0.081312411],
], dtype=torch.float64)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)
_OFFSET = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)


def _check_image(image: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B,3,H,W] in 0..1; got {type(image).__name__}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"{name} must have shape [B,3,H,W]; got {list(image.shape)}")
    return image


def _apply(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """``matrix`` (3×3) applied to every pixel of ``image`` ``[B,3,H,W]``."""
    return torch.einsum("ij,bjhw->bihw", matrix.to(image.device, image.dtype), image)


def rgb_to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    """RGB ``[B,3,H,W]`` → YCbCr (full-range BT.601; Y, Cb, Cr in 0..1 for RGB in 0..1)."""
    image = _check_image(image, "image")
    return _apply(_RGB_TO_YCBCR, image) + _OFFSET.to(image.device, image.dtype).view(1, 3, 1, 1)


def ycbcr_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """YCbCr ``[B,3,H,W]`` → RGB (not clamped: out-of-gamut colours stay visible to the caller)."""
    image = _check_image(image, "image")
    return _apply(_YCBCR_TO_RGB, image - _OFFSET.to(image.device, image.dtype).view(1, 3, 1, 1))


def luminance(image: torch.Tensor) -> torch.Tensor:
    """A gray image (R = G = B = the luma Y) with ``image``'s luminance, ``[B,3,H,W]``."""
    y = rgb_to_ycbcr(image)[:, :1]
    return y.expand(-1, 3, -1, -1).clamp(0, 1).contiguous()


def with_chroma(luma_result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """``luma_result``'s luminance with ``content``'s chroma (Cb, Cr), clamped to 0..1.

    ``content`` is resized to ``luma_result``'s size; its batch is 1 or the same as the result's.
    """
    luma_result = _check_image(luma_result, "luma_result")
    content = _check_image(content, "content")
    if content.shape[0] not in (1, luma_result.shape[0]):
        raise ValueError(f"content has a batch of {content.shape[0]} but luma_result has {luma_result.shape[0]}; "
                         f"give 1 or {luma_result.shape[0]} content images")
    content = resize(content.to(luma_result.device, luma_result.dtype), tuple(luma_result.shape[-2:]))
    y = rgb_to_ycbcr(luma_result)[:, :1]
    cbcr = rgb_to_ycbcr(content)[:, 1:].expand(luma_result.shape[0], -1, -1, -1)
    return ycbcr_to_rgb(torch.cat([y, cbcr], dim=1)).clamp(0, 1)


def color_moments(image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[3]`` and covariance ``[3,3]`` (float64) of the RGB values of every pixel of ``image``."""
    image = _check_image(image, "image")
    px = image.detach().double().movedim(1, -1).reshape(-1, 3)
    mean = px.mean(0)
    centred = px - mean
    return mean, centred.T @ centred / max(px.shape[0], 1)


def _sqrtm(m: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Square root (or its inverse) of a symmetric positive semi-definite 3×3 matrix."""
    vals, vecs = torch.linalg.eigh(m)
    vals = vals.clamp_min(1e-12)
    vals = vals.rsqrt() if inverse else vals.sqrt()
    return (vecs * vals) @ vecs.T


def color_transfer_map(image: torch.Tensor, reference: torch.Tensor,
                       eps: float = 1e-5) -> Tuple[torch.Tensor, torch.Tensor]:
    """The affine colour map ``x ↦ A x + b`` (float64 ``A`` 3×3, ``b`` 3) taking ``image``'s colour
    mean and covariance to ``reference``'s.

    ``A`` is the linear optimal-transport (Monge-Kantorovich) map between the two Gaussians,
    ``Σᵢ^-½ (Σᵢ^½ Σᵣ Σᵢ^½)^½ Σᵢ^-½``: among the maps with ``A Σᵢ Aᵀ = Σᵣ`` it moves the colours the
    least. ``eps`` is added to both covariances' diagonals so that a flat or gray image stays invertible.
    """
    mi, ci = color_moments(image)
    mr, cr = color_moments(reference)
    eye = torch.eye(3, dtype=torch.float64)
    ci, cr = ci + eps * eye, cr + eps * eye
    ci_h, ci_ih = _sqrtm(ci), _sqrtm(ci, inverse=True)
    a = ci_ih @ _sqrtm(ci_h @ cr @ ci_h) @ ci_ih
    return a, mr - a @ mi


def match_colors(image: torch.Tensor, reference: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """``image`` with its RGB mean and covariance made equal to ``reference``'s (Gatys 2017, colour
    histogram matching by a linear map).

    Each image of the ``image`` batch is matched on its own to the statistics of all the pixels of
    ``reference`` (every image of its batch together). The map is affine (:func:`color_transfer_map`),
    so the picture's structure is untouched. The result is clamped to 0..1 unless ``clamp=False``;
    clamping can move the moments slightly when the map pushes colours out of the RGB cube.
    """
    image = as_rgb_batch(image, "image")
    reference = as_rgb_batch(reference, "reference").to(image.device)
    outs: List[torch.Tensor] = []
    for one in image.split(1):
        a, b = color_transfer_map(one, reference)
        outs.append((_apply(a, one.double()) + b.to(one.device).view(1, 3, 1, 1)).to(image.dtype))
    out = torch.cat(outs)
    return out.clamp(0, 1) if clamp else out


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`COLOR_MODES`, else a ValueError naming the choices."""
    if mode not in COLOR_MODES:
        raise ValueError(f"colors {mode!r} is not supported; choose one of {list(COLOR_MODES)}")
    return mode


def color_inputs(mode: str, content: torch.Tensor, styles: Images) -> Tuple[torch.Tensor, Images]:
    """The content and style images the targets are taken from in ``mode``.

    ``style``: unchanged. ``luminance``: both as gray images of their luminance. ``match``: the content
    unchanged, each style image with the content's colour mean and covariance.
    """
    check_mode(mode)
    if mode == "style":
        return content, styles
    change = luminance if mode == "luminance" else (lambda im: match_colors(im, content))
    if isinstance(styles, torch.Tensor):
        styles = change(as_rgb_batch(styles, "style image"))
    else:
        styles = [change(as_rgb_batch(s, "style image")) for s in styles]
    return (luminance(content) if mode == "luminance" else content), styles


def color_init(mode: str, init: "str | torch.Tensor") -> "str | torch.Tensor":
    """The start image for ``mode``: an init image becomes gray (its luminance) in ``luminance`` mode."""
    check_mode(mode)
    if mode == "luminance" and isinstance(init, torch.Tensor):
        return luminance(as_rgb_batch(init, "init image"))
    return init


def color_targets(mode: str, extractor: Extractor, content: Optional[ContentTarget], style: Styles
                  ) -> Tuple[Optional[ContentTarget], Styles]:
    """Targets already built (e.g. by the nodes) turned into the ones ``mode`` optimises for.

    ``style`` is a style target, a list of region targets, or None. Same layers, weights and masks
    (``with_image``/``with_images``); only the images change, as in :func:`color_inputs`. ``luminance``
    and ``match`` need a content target (the colours come from it); ``style`` returns both unchanged.
    """
    check_mode(mode)
    if mode == "style":
        return content, style
    if content is None:
        raise ValueError(f"colors {mode!r} takes the colours from the content image, but there is no content "
                         "target; link one or use colors 'style'")
    if mode == "luminance":
        change = luminance
        content = content.with_image(luminance(content.image))
    else:
        reference = content.image

        def change(im: torch.Tensor) -> torch.Tensor:
            return match_colors(im, reference)

    def one(t: StyleTarget) -> StyleTarget:
        if not isinstance(t, StyleTarget):
            raise TypeError(f"style must be a StyleTarget or a list of them; got {type(t).__name__}")
        return t.with_images(extractor, [change(im) for im in t.images])

    if isinstance(style, (list, tuple)):
        style = type(style)(one(t) for t in style)
    elif style is not None:
        style = one(style)
    return content, style


def finish_colors(mode: str, output: torch.Tensor, content_image: Optional[torch.Tensor]) -> torch.Tensor:
    """The final image of ``mode``: in ``luminance`` mode the optimised luminance with the content's
    chroma (:func:`with_chroma`, ``content_image`` is the original, coloured content); else ``output``."""
    check_mode(mode)
    if mode != "luminance":
        return output
    if content_image is None:
        raise ValueError("colors 'luminance' needs the content image to take the chroma from; got None")
    return with_chroma(output, content_image)


def color_preview(mode: str, preview: Optional[Callable[[int, torch.Tensor], None]],
                  content_image: Optional[torch.Tensor]) -> Optional[Callable[[int, torch.Tensor], None]]:
    """A preview callback that shows what :func:`finish_colors` will make of the image being optimised."""
    if preview is None or check_mode(mode) != "luminance":
        return preview

    def show(step: int, image: torch.Tensor) -> None:
        preview(step, finish_colors(mode, image, content_image))

    return show
