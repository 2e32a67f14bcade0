"""The optimisation loop: losses, optimisers (Adam + averaged iterate, L-BFGS), pyramid, callbacks."""

from __future__ import annotations

import math
import shutil
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .extractor import Extractor
from .image import as_rgb_batch, fit_long_edge, resize
from .losses import LayerStyle, content_loss, style_loss, tv_loss
from .presets import INITS, OPTIMIZERS, Settings
from .targets import ContentTarget, StyleTarget
from .transport import W2Style


class Cancelled(RuntimeError):
    """Raised when the cancel callback asks the run to stop."""


class NonFiniteLoss(FloatingPointError, ValueError):
    """The loss or the image became NaN/Inf (weights or learning rate far too large): a ValueError."""


@dataclass(frozen=True)
class Progress:
    """What the progress callback receives."""

    step: int  # 1-based, over all scales
    total: int
    scale: int  # 0-based pyramid scale index
    scales: int
    size: Tuple[int, int]  # (H, W) of the current scale
    losses: Optional[Dict[str, float]]  # read every ``loss_every`` steps, else None


ProgressFn = Callable[[Progress], None]
PreviewFn = Callable[[int, torch.Tensor], None]
CancelFn = Callable[[], bool]
ExtraLossFn = Callable[[torch.Tensor], torch.Tensor]  # image [B,3,h,w] at the current scale -> weighted scalar loss
Init = Union[str, torch.Tensor]


def pyramid_sizes(final_hw: Tuple[int, int], min_size: int, min_edge: int = 1) -> List[Tuple[int, int]]:
    """Scales from small to ``final_hw`` in √2 steps of the long edge, none below ``min_size``."""
    long_edge = max(final_hw)
    edges = [long_edge]
    while True:
        nxt = round(edges[-1] / math.sqrt(2))
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


def steps_per_scale(settings: Settings, scales: int) -> List[int]:
    """Iterations at each scale: ``first_steps`` at the smallest, ``steps`` at the others."""
    first = settings.first_steps if settings.first_steps is not None else settings.steps
    return [first] + [settings.steps] * (scales - 1) if scales > 1 else [settings.steps]


def lbfgs_history(numel: int, requested: int, memory_mb: int) -> int:
    """L-BFGS keeps 2 image-sized fp32 vectors per history entry: bound it by a memory budget."""
    fits = int(memory_mb * 2**20 // (2 * 4 * max(numel, 1)))
    return max(3, min(requested, fits))


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


def _validate(settings: Settings, content: Optional[ContentTarget], style: Optional[StyleTarget],
              extractor: Extractor) -> None:
    if content is None and style is None:
        raise ValueError("nothing to optimise for: give a content target, a style target, or both")
    if content is not None and not isinstance(content, ContentTarget):
        raise TypeError(f"content must be a ContentTarget (ContentTarget.create or a Content Target node); "
                        f"got {type(content).__name__}")
    if style is not None and not isinstance(style, StyleTarget):
        raise TypeError(f"style must be a StyleTarget (StyleTarget.create or a Gram Style Target node); "
                        f"got {type(style).__name__}")
    for name, t in (("content", content), ("style", style)):
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
    for name in ("steps", "min_size", "lbfgs_max_iter", "lbfgs_history", "loss_every", "transport_every"):
        if int(getattr(settings, name)) < 1:
            raise ValueError(f"{name} must be at least 1; got {getattr(settings, name)}")
    if settings.first_steps is not None and settings.first_steps < 1:
        raise ValueError(f"first_steps must be at least 1; got {settings.first_steps}")
    for name in ("content_weight", "style_weight", "tv_weight", "lr"):
        v = float(getattr(settings, name))
        if not (v >= 0) or math.isinf(v):
            raise ValueError(f"{name} must be a finite number ≥ 0; got {v}")
    if not (0 <= settings.pyramid_start <= 1):
        raise ValueError(f"pyramid_start must be in [0, 1] (a fraction of the output size); got {settings.pyramid_start}")
    if not (0 <= settings.ema_decay < 1):
        raise ValueError(f"ema_decay must be in [0, 1); got {settings.ema_decay}")


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
                   device: torch.device, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(init, torch.Tensor):
        img = as_rgb_batch(init, "init image").detach().clone()
        if img.shape[0] not in (1, batch):
            raise ValueError(f"the init batch has {img.shape[0]} images but the content batch has {batch}; give 1 or {batch}")
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


def _resize_state(t: torch.Tensor, hw: Tuple[int, int], mode: str) -> torch.Tensor:
    return F.interpolate(t, size=hw, mode=mode, align_corners=False)


class _Objective:
    """Computes the weighted losses of an image at one scale."""

    def __init__(self, extractor: Extractor, settings: Settings, content: Optional[ContentTarget],
                 content_feats: Optional[torch.Tensor], style: Optional[StyleTarget],
                 style_targets: Optional[Dict[str, LayerStyle]],
                 extra_loss: Optional[ExtraLossFn] = None) -> None:
        self.extractor = extractor
        self.extra_loss = extra_loss
        self.settings = settings
        self.content = content
        self.content_feats = content_feats
        self.style = style
        self.style_targets = style_targets
        layers = list(style.layers) if style is not None else []
        if content is not None and content.layer not in layers:
            layers.append(content.layer)
        self.layers = layers
        # moments: one W2Style per layer keeps its transport between refresh steps
        self.w2 = ({n: W2Style(t) for n, t in style_targets.items()}
                   if style is not None and style.statistic == "moments" else {})

    def _style_loss(self, name: str, feats: torch.Tensor, exact: bool) -> torch.Tensor:
        if name in self.w2:
            return self.w2[name](feats, refresh=exact)
        return style_loss(feats, self.style_targets[name])

    def __call__(self, image: torch.Tensor, exact: bool = True) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Total loss and its parts. With ``exact=False`` the W2 style loss reuses its last transport:
        its gradient is approximate and its value is 0 (read the losses only from exact calls)."""
        s = self.settings
        nhwc = s.channels_last and image.device.type in ("cpu", "cuda")
        x = image.contiguous(memory_format=torch.channels_last) if nhwc else image
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bool(s.autocast_bf16)):
            feats = self.extractor(x, self.layers, checkpoint=s.checkpoint, compile=s.compile)
        parts: Dict[str, torch.Tensor] = {}
        total = image.new_zeros(())
        if self.content is not None:
            c = content_loss(feats[self.content.layer].float(), self.content_feats)
            parts["content"] = c
            total = total + s.content_weight * self.content.weight * c
        if self.style is not None:
            sl = sum(w * self._style_loss(n, feats[n].float(), exact)
                     for n, w in zip(self.style.layers, self.style.layer_weights))
            parts["style"] = sl
            total = total + s.style_weight * self.style.weight * sl
        if s.tv_weight > 0:
            tv = tv_loss(image)
            parts["tv"] = tv
            total = total + s.tv_weight * tv
        if self.extra_loss is not None:
            extra = self.extra_loss(image)
            parts["extra"] = extra
            total = total + extra
        parts["total"] = total
        return total, parts


def optimize(
    extractor: Extractor,
    content: Optional[ContentTarget] = None,
    style: Optional[StyleTarget] = None,
    init: Init = "content",
    settings: Optional[Settings] = None,
    size: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
    preview: Optional[PreviewFn] = None,
    cancel: Optional[CancelFn] = None,
    extra_loss: Optional[ExtraLossFn] = None,
) -> torch.Tensor:
    """Optimise an image to match ``content`` and/or ``style``; returns ``[B,3,H,W]`` in 0..1 on CPU.

    ``init`` is ``"content"``, ``"noise"``, ``"gray"`` or an image tensor. ``size`` is the output's
    long edge (default: the content's size). A content batch of B gives B outputs. ``cancel`` is called
    every iteration; if it returns True the run raises :class:`Cancelled` (its own exceptions propagate).
    ``extra_loss(image)`` adds a term of the caller's (e.g. a temporal loss): it gets the image being
    optimised at the current pyramid scale, ``[B,3,h,w]``, and returns a weighted scalar.
    """
    settings = settings or Settings()
    _validate(settings, content, style, extractor)
    if isinstance(init, str) and init not in INITS:
        raise ValueError(f"init {init!r} is not supported; choose one of {list(INITS)} or pass an image tensor")
    check_size(size)
    final_hw = output_size(content, init, size)
    check_max_size(final_hw, settings.max_size)
    layers = list(style.layers if style else []) + ([content.layer] if content else [])
    min_edge = extractor.min_edge(layers)
    if min(final_hw) < min_edge:
        raise ValueError(
            f"the output would be {final_hw[1]}×{final_hw[0]} px, too small for the layers used "
            f"(at least {min_edge} px on each side); use a larger size or shallower layers"
        )
    batch = content.image.shape[0] if content is not None else (
        init.shape[0] if isinstance(init, torch.Tensor) and init.dim() == 4 else 1)
    sizes = pyramid_sizes(final_hw, smallest_scale(settings, final_hw), min_edge)
    plan = steps_per_scale(settings, len(sizes))
    check_compile(settings, extractor.device)
    run = _Run(extractor, settings, content, style, progress, preview, cancel, sum(plan), extra_loss)
    if extractor.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
        torch.backends.cudnn.benchmark = True
    with torch.inference_mode(False), torch.enable_grad():
        try:
            x = _initial_image(init, content, batch, sizes[0], extractor.device, settings.seed)
            for i, (hw, n) in enumerate(zip(sizes, plan)):
                x = run.scale(i, len(sizes), hw, n, x)
            return x.detach().clamp(0, 1).cpu()
        except BaseException as exc:
            # the traceback would keep the image, gradients and optimiser state alive
            traceback.clear_frames(exc.__traceback__.tb_next)
            raise
        finally:
            x = None
            run.release()


class _Run:
    """State of one optimisation; ``release`` drops every tensor so a failed run frees its memory."""

    def __init__(self, extractor, settings, content, style, progress, preview, cancel, total,
                 extra_loss=None) -> None:
        self.extractor, self.settings = extractor, settings
        self.extra_loss = extra_loss
        self.content, self.style = content, style
        self.progress, self.preview, self.cancel = progress, preview, cancel
        self.total, self.step = total, 0
        self.adam_state: Optional[Tuple[torch.Tensor, torch.Tensor, int]] = None
        self.objective: Optional[_Objective] = None

    def release(self) -> None:
        """Forget tensors held between scales and empty the accelerator cache."""
        self.adam_state = None
        self.objective = None
        if self.extractor.device.type == "cuda":
            torch.cuda.empty_cache()

    def _reads_losses(self, step: int) -> bool:
        return self.progress is not None and (step % self.settings.loss_every == 0 or step == self.total)

    def _tick(self, scale: int, scales: int, hw, parts: Dict[str, torch.Tensor], image_fn) -> None:
        self.step += 1
        s = self.settings
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"cancelled at step {self.step} of {self.total}")
        if self.progress is not None:
            losses = {k: float(v.detach()) for k, v in parts.items()} if self._reads_losses(self.step) else None
            if losses is not None and not math.isfinite(losses["total"]):
                raise NonFiniteLoss(
                    f"the loss became {losses['total']} at step {self.step}; lower the learning rate or the weights"
                )
            self.progress(Progress(self.step, self.total, scale, scales, tuple(hw), losses))
        if self.preview is not None and s.preview_every > 0 and self.step % s.preview_every == 0:
            self.preview(self.step, image_fn().detach())

    def scale(self, i: int, scales: int, hw: Tuple[int, int], steps: int, x: torch.Tensor) -> torch.Tensor:
        """Optimise at one pyramid scale, starting from ``x`` resized to ``hw``."""
        ext, s = self.extractor, self.settings
        x = resize(x, hw).detach().clone()
        content_feats = self.content.at_size(ext, hw).clone() if self.content is not None else None
        style_targets = self.style.at_size(ext, max(hw)) if self.style is not None else None
        self.objective = _Objective(ext, s, self.content, content_feats, self.style, style_targets, self.extra_loss)
        x.requires_grad_(True)
        out = self._adam(i, scales, hw, steps, x) if s.optimizer == "adam" else self._lbfgs(i, scales, hw, steps, x)
        if not bool(torch.isfinite(out).all()):  # one sync per scale
            raise NonFiniteLoss(f"the image became NaN/Inf at {hw[1]}×{hw[0]} px; lower the learning rate or the weights")
        return out

    def _adam(self, i, scales, hw, steps, x) -> torch.Tensor:
        s = self.settings
        opt = torch.optim.Adam([x], lr=s.lr, betas=(0.9, 0.99))
        if self.adam_state is not None:
            exp_avg, exp_avg_sq, count = self.adam_state
            opt.state[x] = {
                "step": torch.tensor(float(count)),
                "exp_avg": _resize_state(exp_avg, hw, "bicubic"),
                "exp_avg_sq": _resize_state(exp_avg_sq, hw, "bilinear").clamp_min(0),
            }
        ema = AveragedIterate(x, s.ema_decay)
        for k in range(steps):
            opt.zero_grad(set_to_none=True)
            exact = k % s.transport_every == 0 or self._reads_losses(self.step + 1)
            loss, parts = self.objective(x, exact)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            ema.update(x)
            self._tick(i, scales, hw, parts, ema.value)
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
            loss, parts = self.objective(x)
            loss.backward()
            done += 1
            self._tick(i, scales, hw, parts, lambda: x.clamp(0, 1))
            return loss

        while done < steps:
            left = min(s.lbfgs_max_iter, steps - done)
            opt.param_groups[0].update(max_iter=left, max_eval=left + 1)  # k evaluations, k updates
            before = done
            opt.step(closure)
            with torch.no_grad():
                x.clamp_(0, 1)
            if done == before:
                break
        return x.detach().clamp(0, 1)
