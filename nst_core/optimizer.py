"""The optimisation loop: losses, optimisers (Adam + averaged iterate, L-BFGS), pyramid, callbacks."""

from __future__ import annotations

import math
import shutil
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .balance import balanced_style_weight
from .canvas import Canvas
from .extractor import Extractor
from .image import as_rgb_batch, fit_long_edge, interpolate, resize
from .memory import check_tile_setting, device_free_bytes, fit_settings, is_auto_tile, lbfgs_history
from .coarse import has_coarse_copy, scale_objective
from .objective import ExtraLossFn
from .presets import INITS, MIN_COARSE_SCALE, OPTIMIZERS, TILE_OFF, Settings
from .targets import ContentTarget, StyleTarget


class Cancelled(RuntimeError):
    """Raised when the cancel callback asks the run to stop."""


class NonFiniteLoss(FloatingPointError, ValueError):
    """The loss or the image became NaN/Inf (weights or learning rate far too large): a ValueError."""


@dataclass(frozen=True)
class Progress:
    """What the progress callback receives.

    ``losses`` is read from the device only when a callback asks for it (a sync), and only on steps
    whose losses are exact (W2 refresh steps; every step for the other statistics); else it is None.
    """

    step: int  # 1-based, over all scales
    total: int
    scale: int  # 0-based pyramid scale index
    scales: int
    size: Tuple[int, int]  # (H, W) of the current scale
    parts: Optional[Dict[str, torch.Tensor]] = field(default=None, repr=False, compare=False)

    @property
    def losses(self) -> Optional[Dict[str, float]]:
        """The weighted loss parts as floats, or None on a step without exact losses."""
        if self.parts is None:
            return None
        return {k: float(v.detach()) for k, v in self.parts.items()}


ProgressFn = Callable[[Progress], None]
PreviewFn = Callable[[int, torch.Tensor], None]
CancelFn = Callable[[], bool]
Init = Union[str, torch.Tensor]
Styles = Union[StyleTarget, Sequence[StyleTarget], None]


def pyramid_sizes(final_hw: Tuple[int, int], min_size: int, min_edge: int = 1,
                  step: float = math.sqrt(2)) -> List[Tuple[int, int]]:
    """Scales from small to ``final_hw``, each long edge ``step`` times the one before, none below ``min_size``."""
    long_edge = max(final_hw)
    edges = [long_edge]
    while True:
        nxt = round(edges[-1] / step)
        hw = fit_long_edge(final_hw, nxt)
        if nxt < min_size or nxt >= edges[-1] or min(hw) < min_edge:  # (round(1/√2) is 1 again)
            break
        edges.append(nxt)
    return [fit_long_edge(final_hw, e) if e != long_edge else tuple(final_hw) for e in reversed(edges)]


def smallest_scale(settings: Settings, final_hw: Tuple[int, int]) -> int:
    """Long edge of the pyramid's smallest scale: ``min_size`` or ``pyramid_start`` × the output's, the larger.

    Starting at a fixed fraction keeps large outputs from being laid out at a scale too coarse for
    the content layer to hold the picture together.
    """
    return max(settings.min_size, round(settings.pyramid_start * max(final_hw)))


def pyramid(settings: Settings, final_hw: Tuple[int, int], min_edge: int = 1) -> List[Tuple[int, int]]:
    """The run's scales for an output of ``final_hw``: :func:`pyramid_sizes` from :func:`smallest_scale`
    in ``settings.pyramid_step`` steps."""
    return pyramid_sizes(final_hw, smallest_scale(settings, final_hw), min_edge, settings.pyramid_step)


def steps_per_scale(settings: Settings, sizes: Sequence[Tuple[int, int]]) -> List[int]:
    """Iterations at each scale of ``sizes``: ``first_steps`` at the smallest, ``coarse_steps`` at the others
    whose deep layers see a coarse copy (:func:`.coarse.has_coarse_copy`), ``steps`` at the rest."""
    if len(sizes) == 1:
        return [settings.steps]
    first = settings.first_steps if settings.first_steps is not None else settings.steps
    later = settings.coarse_steps if settings.coarse_steps is not None else settings.steps
    return [first] + [later if has_coarse_copy(settings, hw) else settings.steps for hw in sizes[1:]]


class AveragedIterate:
    """Bias-corrected exponential moving average of the image (the Adam output)."""

    def __init__(self, like: torch.Tensor, decay: float) -> None:
        self.decay = decay
        self.avg = torch.zeros_like(like)
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        """Fold in the current iterate."""
        self.count += 1
        self.avg.mul_(self.decay).add_(x.detach(), alpha=1 - self.decay)

    def value(self) -> torch.Tensor:
        """The averaged image."""
        return self.avg / (1 - self.decay**self.count) if self.count else self.avg.clone()


def check_size(size: Optional[int]) -> None:
    """``size`` (the output's long edge) is None or at least 1."""
    if size is not None and size < 1:
        raise ValueError(f"size (the output's long edge in px) must be at least 1; got {size}")


def check_max_size(hw: Tuple[int, int], max_size: int) -> None:
    """Refuse an output whose long edge is above ``max_size`` (cheap: call it before any network work)."""
    if max(hw) > max_size:
        raise ValueError(
            f"the output would be {hw[1]}×{hw[0]} px, above the maximum long edge of "
            f"{max_size} px; use a smaller size (or raise max_size if you have the memory)"
        )


def style_regions(style: Styles) -> Tuple[StyleTarget, ...]:
    """``style`` as a tuple of style targets (one per region); a single target is a tuple of one."""
    if style is None:
        return ()
    if isinstance(style, StyleTarget):
        regions: Tuple[StyleTarget, ...] = (style,)
    elif isinstance(style, (list, tuple)):
        regions = tuple(style)
    else:
        regions = (style,)
    for t in regions:
        if not isinstance(t, StyleTarget):
            raise TypeError(f"style must be a StyleTarget (StyleTarget.create or an NST Style Target node) or a "
                            f"list of them; got {type(t).__name__}")
    if sum(t.mask is None for t in regions) > 1:
        raise ValueError("more than one style target without a mask: blend them into one (StyleTarget.blend or "
                         "add_to), or give each a region mask")
    return regions


def _validate(settings: Settings, content: Optional[ContentTarget], regions: Tuple[StyleTarget, ...],
              extractor: Extractor) -> None:
    if content is None and not regions:
        raise ValueError("nothing to optimise for: give a content target, a style target, or both")
    if content is not None and not isinstance(content, ContentTarget):
        raise TypeError(f"content must be a ContentTarget (ContentTarget.create or an NST Content Target node); "
                        f"got {type(content).__name__}")
    for name, t in [("content", content)] + [("style", r) for r in regions]:
        if t is not None and t.extractor_signature != extractor.signature:
            raise ValueError(
                f"the {name} target was made with extractor {t.extractor_signature!r} but is used with "
                f"{extractor.signature!r}; build the targets with the same extractor you optimise with"
            )
    validate_settings(settings)


def validate_settings(settings: Settings) -> None:
    """Check the settings alone (no network): what optimize() would refuse."""
    if settings.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {settings.optimizer!r} is not supported; choose one of {list(OPTIMIZERS)}")
    for name in ("steps", "min_size", "coarse_min_size", "lbfgs_max_iter", "lbfgs_history", "transport_every"):
        if int(getattr(settings, name)) < 1:
            raise ValueError(f"{name} must be at least 1; got {getattr(settings, name)}")
    if int(settings.margin) != settings.margin or settings.margin < 0:
        raise ValueError(f"margin must be a whole number of px ≥ 0 (0: none); got {settings.margin}")
    for name in ("first_steps", "coarse_steps"):
        if getattr(settings, name) is not None and getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1; got {getattr(settings, name)}")
    for name in ("content_weight", "style_weight", "tv_weight", "lr", "lbfgs_tolerance"):
        v = float(getattr(settings, name))
        if not (v >= 0) or math.isinf(v):
            raise ValueError(f"{name} must be a finite number ≥ 0; got {v}")
    if not (0 <= settings.pyramid_start <= 1):
        raise ValueError(f"pyramid_start must be in [0, 1] (a fraction of the output size); got {settings.pyramid_start}")
    if not (1 < settings.pyramid_step < math.inf):
        raise ValueError(f"pyramid_step must be a finite ratio > 1 between consecutive scales; got {settings.pyramid_step}")
    if settings.style_balance < 0:
        raise ValueError(f"style_balance must be at least 0 (0: a fixed style weight); got {settings.style_balance}")
    if not (0 < settings.lr_decay <= 1):
        raise ValueError(f"lr_decay must be in (0, 1] (a factor per larger scale); got {settings.lr_decay}")
    if not (0 <= settings.ema_decay < 1):
        raise ValueError(f"ema_decay must be in [0, 1); got {settings.ema_decay}")
    if not (MIN_COARSE_SCALE <= settings.coarse_scale <= 1):
        raise ValueError(f"coarse_scale must be in [{MIN_COARSE_SCALE}, 1] (1: every layer at the full size); got "
                         f"{settings.coarse_scale}")
    check_tile_setting(settings.tile)


def check_compile(settings: Settings, device: torch.device) -> None:
    """``compile`` on the CPU needs a C++ compiler; say so before any work rather than deep in inductor."""
    if settings.compile and device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        raise ValueError("compile=True needs a C++ compiler (g++ or clang++) on the CPU; install one or turn compile off")


def output_size(content: Optional[ContentTarget], init: Init, size: Optional[int]) -> Tuple[int, int]:
    """(H, W) of the result: the content's (or init image's) aspect at long edge ``size``."""
    if content is not None:
        base = content.size
    elif isinstance(init, torch.Tensor):
        base = tuple(init.shape[-2:])
    else:
        base = (size or 512, size or 512)
    return fit_long_edge(base, size) if size else tuple(base)


def _initial_image(init: Init, content: Optional[ContentTarget], batch: int, hw: Tuple[int, int],
                   device: torch.device, seed: int, canvas: Optional[Canvas] = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(init, torch.Tensor):
        img = as_rgb_batch(init, "init image").detach().clone()
        if img.shape[0] not in (1, batch):
            raise ValueError(f"the init batch has {img.shape[0]} images but the content batch has {batch}; give 1 or {batch}")
        if canvas is not None:
            img = canvas.image(img)
        return resize(img, hw).expand(batch, -1, -1, -1).to(device).contiguous()
    if init == "content":
        if content is None:
            init = "noise"
        else:
            return resize(content.image.to(device), hw).contiguous()
    if init == "noise":
        return torch.rand((batch, 3, *hw), generator=gen).to(device)
    if init == "gray":
        return (0.5 + 0.05 * torch.randn((batch, 3, *hw), generator=gen)).clamp(0, 1).to(device)
    raise ValueError(f"init {init!r} is not supported; choose one of {list(INITS)} or pass an image tensor")


def run_statistic(regions: Sequence[StyleTarget]) -> str:
    """The statistic the memory model counts for a run's regions (W2 if any region uses it)."""
    stats = {t.statistic for t in regions}
    return "moments" if "moments" in stats else (stats.pop() if stats else "gram")


def resolve_tile(settings: Settings, extractor: Extractor, hw: Tuple[int, int], content: Optional[ContentTarget],
                 regions: Tuple[StyleTarget, ...], batch: int) -> Settings:
    """The settings a run uses: an automatic tile planned for what the device has free now
    (:func:`.memory.fit_settings`), and the tile as the objective reads it (0: the whole image)."""
    if is_auto_tile(settings.tile):
        layers = [n for t in regions for n in t.layers] + ([content.layer] if content is not None else [])
        style = [n for t in regions for n in t.layers]
        settings = fit_settings(hw, layers, settings, device_free_bytes(extractor.device), batch, extractor.arch,
                                run_statistic(regions), style, extractor.device)
    return settings.replace(tile=0) if settings.tile == TILE_OFF else settings


def carry_adam_state(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                     hw: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Adam's moments of one scale, resized to the next and rescaled to its gradient units.

    Every loss is a mean over positions, so a pixel's gradient scales with 1 / (number of pixels):
    without the rescale the carried second moment would be too large by that ratio squared, and the
    effective step would shrink at every scale (to about a third at the last).
    """
    ratio = (exp_avg.shape[-2] * exp_avg.shape[-1]) / (hw[0] * hw[1])
    m = interpolate(exp_avg, hw, "bicubic") * ratio
    v = interpolate(exp_avg_sq, hw, "bilinear").clamp_min(0) * ratio**2
    return m, v


def optimize(
    extractor: Extractor,
    content: Optional[ContentTarget] = None,
    style: Styles = None,
    init: Init = "content",
    settings: Optional[Settings] = None,
    size: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
    preview: Optional[PreviewFn] = None,
    cancel: Optional[CancelFn] = None,
    extra_loss: Optional[ExtraLossFn] = None,
) -> torch.Tensor:
    """Optimise an image to match ``content`` and/or ``style``; returns ``[B,3,H,W]`` in 0..1 on CPU.

    ``style`` is a style target, or several with region masks (one of them may be unmasked: it covers
    what the masks leave). ``init`` is ``"content"``, ``"noise"``, ``"gray"`` or an image tensor.
    ``size`` is the output's long edge (default: the content's size). A content batch of B gives B
    outputs. ``cancel`` is called every iteration, and before each tile of a tiled scale; if it returns
    True the run raises :class:`Cancelled` (its own exceptions propagate) and drops the step in
    progress. ``extra_loss(image)`` adds a term of the caller's (e.g. a temporal loss): it gets the
    image being optimised at the current pyramid scale, ``[B,3,h,w]``, and returns a weighted scalar.
    No process-wide setting is changed.
    """
    settings = settings or Settings()
    regions = style_regions(style)
    _validate(settings, content, regions, extractor)
    if isinstance(init, str) and init not in INITS:
        raise ValueError(f"init {init!r} is not supported; choose one of {list(INITS)} or pass an image tensor")
    check_size(size)
    final_hw = output_size(content, init, size)
    check_max_size(final_hw, settings.max_size)
    layers = [n for t in regions for n in t.layers] + ([content.layer] if content else [])
    min_edge = extractor.min_edge(layers)
    if min(final_hw) < min_edge:
        raise ValueError(
            f"the output would be {final_hw[1]}×{final_hw[0]} px, too small for the layers used "
            f"(at least {min_edge} px on each side); use a larger size or shallower layers"
        )
    batch = content.image.shape[0] if content is not None else (
        init.shape[0] if isinstance(init, torch.Tensor) and init.dim() == 4 else 1)
    sizes = pyramid(settings, final_hw, min_edge)
    plan = steps_per_scale(settings, sizes)
    check_compile(settings, extractor.device)
    canvas = Canvas(final_hw, settings.margin)
    settings = resolve_tile(settings, extractor, final_hw, content, regions, batch)
    settings = settings.replace(style_weight=balanced_style_weight(
        extractor, content, regions, settings.style_weight, settings.style_balance, max(final_hw)))
    with torch.inference_mode(False):
        content, regions = canvas.targets(content, regions)
    run = _Run(extractor, settings, content, regions, progress, preview, cancel, sum(plan), extra_loss, canvas)
    with torch.inference_mode(False), torch.enable_grad():
        x = None
        try:
            x = _initial_image(init, content, batch, canvas.around(sizes[0]), extractor.device, settings.seed, canvas)
            for i, (hw, n) in enumerate(zip(sizes, plan)):
                x = run.scale(i, len(sizes), hw, n, x)
            return canvas.inner(x, final_hw).detach().clamp(0, 1).cpu()
        except BaseException as exc:
            # the traceback would keep the image, gradients and optimiser state alive
            traceback.clear_frames(exc.__traceback__.tb_next)
            raise
        finally:
            x = None
            run.release()


class _Run:
    """State of one optimisation; ``release`` drops every tensor so a failed run frees its memory."""

    def __init__(self, extractor, settings, content, regions, progress, preview, cancel, total,
                 extra_loss, canvas: Canvas) -> None:
        self.extractor, self.settings = extractor, settings
        self.extra_loss, self.canvas = extra_loss, canvas
        self.content, self.regions = content, regions
        self.progress, self.preview, self.cancel = progress, preview, cancel
        self.total, self.step = total, 0
        self.adam_state: Optional[Tuple[torch.Tensor, torch.Tensor, int]] = None
        self.objective = None  # the current scale's objective (whole-image or tiled)

    def release(self) -> None:
        """Forget the tensors held between scales (caches are the caller's: see the nodes' bridge)."""
        self.adam_state = None
        self.objective = None

    def _between_tiles(self) -> None:
        """The cancel check inside a tiled step: a Cancel stops within one tile (the step is dropped)."""
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"cancelled during step {self.step + 1} of {self.total}")

    def _tick(self, scale: int, scales: int, hw, parts: Dict[str, torch.Tensor], exact: bool, image_fn) -> None:
        self.step += 1
        s = self.settings
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"cancelled at step {self.step} of {self.total}")
        if self.progress is not None:
            self.progress(Progress(self.step, self.total, scale, scales, tuple(hw), parts if exact else None))
        if self.preview is not None and s.preview_every > 0 and self.step % s.preview_every == 0:
            self.preview(self.step, self.canvas.inner(image_fn().detach(), hw))

    def scale(self, i: int, scales: int, hw: Tuple[int, int], steps: int, x: torch.Tensor) -> torch.Tensor:
        """Optimise at one pyramid scale whose output part is ``hw``, starting from the canvas ``x``
        (the previous scale's, or the initial image) resized to this scale's canvas."""
        s = self.settings
        whole = self.canvas.around(hw)
        x = resize(x, whole).detach().clone()
        self.objective = scale_objective(self.extractor, s, whole, self.content, self.regions, i == 0,
                                         self.canvas.cropping(self.extra_loss, hw), output_hw=hw)
        x.requires_grad_(True)
        out = self._adam(i, scales, hw, steps, x) if s.optimizer == "adam" else self._lbfgs(i, scales, hw, steps, x)
        if not bool(torch.isfinite(out).all()):  # one sync per scale
            raise NonFiniteLoss(f"the image became NaN/Inf at {hw[1]}×{hw[0]} px; lower the learning rate or the weights")
        return out

    def _adam(self, i, scales, hw, steps, x) -> torch.Tensor:
        s = self.settings
        opt = torch.optim.Adam([x], lr=s.lr * s.lr_decay**i, betas=(0.9, 0.99))
        if self.adam_state is not None:
            exp_avg, exp_avg_sq, count = self.adam_state
            m, v = carry_adam_state(exp_avg, exp_avg_sq, tuple(x.shape[-2:]))
            opt.state[x] = {"step": torch.tensor(float(count)), "exp_avg": m, "exp_avg_sq": v}
        ema = AveragedIterate(x, s.ema_decay)
        for k in range(steps):
            opt.zero_grad(set_to_none=True)
            exact = k % s.transport_every == 0  # the schedule alone: watching changes nothing
            parts = self.objective.gradient(x, exact, self._between_tiles)
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            ema.update(x)
            self._tick(i, scales, hw, parts, exact, ema.value)
        st = opt.state[x]
        self.adam_state = (st["exp_avg"].detach(), st["exp_avg_sq"].detach(), int(float(st["step"])))
        return ema.value().clamp(0, 1)

    def _lbfgs(self, i, scales, hw, steps, x) -> torch.Tensor:
        s = self.settings
        history = lbfgs_history(x.numel(), s.lbfgs_history, s.lbfgs_memory_mb)
        opt = torch.optim.LBFGS([x], lr=1, max_iter=s.lbfgs_max_iter, history_size=history,
                                tolerance_grad=0.0, tolerance_change=0.0)
        done = 0

        def closure() -> torch.Tensor:
            nonlocal done
            opt.zero_grad(set_to_none=True)
            parts = self.objective.gradient(x, True, self._between_tiles)
            done += 1
            self._tick(i, scales, hw, parts, True, lambda: x.clamp(0, 1))
            return parts["total"]

        while done < steps:
            left = min(s.lbfgs_max_iter, steps - done)
            opt.param_groups[0].update(max_iter=left, max_eval=left + 1)  # k evaluations, k updates
            before = done
            start = x.detach().clone() if s.lbfgs_tolerance > 0 else None
            opt.step(closure)
            with torch.no_grad():
                x.clamp_(0, 1)
                # the image stopped changing: an outer step moved it by less than the tolerance (RMS)
                settled = start is not None and float((x - start).pow(2).mean().sqrt()) < s.lbfgs_tolerance
            if done == before or settled:
                break
        return x.detach().clamp(0, 1)
