"""How much memory one optimisation needs, how to fit it in what is free, and out-of-memory errors.

The model (:func:`estimate_bytes`, :func:`tiled_bytes`) counts the tensors a run keeps alive at its
peak, as they were measured on the CPU with the profiler's memory events (``bench/memory.py``, the
calibration table in BENCHMARKS.md: within 0.75–1.5× of the measured peak from 256 to 2048 px, whole,
checkpointed and tiled, fp32 and bf16, W2 and Gram):

- **fixed**: the network's weights (the whole ``features`` stack the extractor holds; with bf16 also the
  bf16 copies autocast makes of the used ones), twice the largest used conv weight (the copies a
  convolution's backward makes) and the style statistics (C×C, float64 for W2);
- **persistent**: the optimiser's image buffers (Adam: image, gradient, two moments, the averaged
  iterate, and the moments carried from the previous scale; L-BFGS: its bounded history), the content
  features (the target and its memo), the smoothness term's differences and, for W2, the transported
  feature goals of every style layer (kept between refreshes, fp32);
- **saved for the backward pass**: the input's preprocessing copies, two tensors per conv (its output,
  which its in-place ReLU shares, and its edge-padded input), each pooling's output and indices
  (int64) and the clone of a captured conv output (the losses read the features in the network's dtype).
  With checkpointing only the pieces' outputs (captured layers and poolings) stay, and one piece at a
  time is recomputed;
- **the peak** is the larger of two moments: the backward pass's start (every style and content
  gradient at once; with checkpointing, the deepest point of the walk back through the pieces) and,
  for W2, a refresh (the float64 copy of a layer and its centred copy, in chunks of at most 2^24
  elements, or the residual and the new goal, and in bf16 the layer's fp32 copy, next to the previous
  goals).

A tiled run (``nst_core.tiles``) keeps the image-sized buffers (optimiser, content features, W2 goals,
smoothness) and runs one crop (tile + 2·halo) at a time: the larger of its gradient pass and its
gathering pass (no graph; the float64 moments of the tile's own positions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .image import fit_long_edge
from .layers import BLOCK_CHANNELS, layer_index, layer_names
from .precision import precise_dtype, use_bf16
from .presets import MIN_TILE, TILE_AUTO, TILE_OFF, Settings

CHUNK_ELEMENTS = 1 << 24  # statistics.centred_moments' chunk of positions × channels


def layer_floats(arch: str, hw: Tuple[int, int], deepest: str) -> Dict[str, int]:
    """Floats of each module's output, from the input up to ``deepest``, for one image of size ``hw``."""
    h, w = hw
    sizes = {}
    for name in layer_names(arch)[: layer_index(arch, deepest) + 1]:
        c = BLOCK_CHANNELS[int(name[4]) - 1]
        if name.startswith("pool"):
            h, w = (h + 1) // 2, (w + 1) // 2  # ceil mode
        sizes[name] = c * h * w
    return sizes


def activation_floats(arch: str, hw: Tuple[int, int], deepest: str) -> int:
    """Floats of every module output from the input up to ``deepest`` for one image of size ``hw``."""
    return sum(layer_floats(arch, hw, deepest).values())


def _conv_weights(arch: str, deepest: Optional[str] = None) -> List[int]:
    """Floats of each conv's weight and bias, up to ``deepest`` (default: the whole stack)."""
    names = layer_names(arch)
    names = names[: layer_index(arch, deepest) + 1] if deepest else names
    out, c_in = [], 3
    for name in names:
        if name.startswith("conv"):
            c = BLOCK_CHANNELS[int(name[4]) - 1]
            out.append(c * c_in * 9 + c)
            c_in = c
    return out


@dataclass(frozen=True)
class _Pass:
    """Bytes of one gradient pass over an image: what it saves for the backward pass, and its peaks."""

    saved: int  # kept from the end of the forward pass into the backward pass
    backward: int  # the backward pass's peak, above ``saved``
    refresh: int  # a W2 refresh's peak, above ``saved`` (0 without W2)


def _pass(hw: Tuple[int, int], layers: Sequence[str], style: Sequence[str], batch: int, arch: str,
          act: int, checkpoint: bool, statistic: str, refresh_dtype: int, pooling: str = "max") -> _Pass:
    """The tensors one forward+backward pass through the VGG and the losses keeps (see the module text).

    ``act``: bytes of an activation (4 fp32, 2 bf16); ``refresh_dtype``: bytes of the float64 (or, on a
    device without it, float32) reductions of a W2 refresh.
    """
    deepest = max(layers, key=lambda n: layer_index(arch, n))
    elems = {n: v * batch for n, v in layer_floats(arch, hw, deepest).items()}
    captured = set(layers)
    pixels = hw[0] * hw[1] * batch
    bf16 = act < 4
    inputs = 4 * 3 * pixels * 4 + (3 * pixels * act if bf16 else 0)  # channels_last, ×scale, −mean, flip; cast
    clones = sum(elems[n] * act for n in captured if n.startswith("conv"))  # a hooked conv output is cloned

    names = list(elems)
    padded = {n: elems[names[i - 1]] for i, n in enumerate(names) if i and n.startswith("conv")}

    def saved_by(name: str) -> int:  # what a module keeps for its backward (ReLU: shares the conv's)
        if name.startswith("conv"):  # its output, and its edge-padded input (EdgeConv2d)
            return (elems[name] + padded.get(name, 0)) * act
        if name.startswith("pool"):
            return elems[name] * (act + 8) if pooling == "max" else 2 * elems[name] * act
        return 0

    grads = sum(elems[n] * 4 for n in captured)  # every loss's gradient at the backward pass's start
    if not checkpoint:
        saved = inputs + clones + sum(saved_by(n) for n in names)
        backward = grads
    else:  # pieces end at the captured layers and the poolings (Extractor._cuts)
        ends = [i for i, n in enumerate(names) if n in captured or n.startswith("pool")]
        pieces, start = [], 0
        for end in ends:
            pieces.append(names[start : end + 1])
            start = end + 1
        outputs = [elems[p[-1]] * act for p in pieces]
        saved = inputs + clones + sum(outputs)
        backward = grads
        for k in range(len(pieces) - 1, -1, -1):  # the walk back: piece k recomputed, deeper ones freed
            kept = inputs + clones + sum(outputs[: k + 1])
            pending = sum(elems[n] * 4 for p in pieces[: k + 1] for n in p if n in captured)
            here = sum(saved_by(n) for n in pieces[k]) + 2 * max(elems[n] for n in pieces[k]) * act
            backward = max(backward, kept + pending + here - saved)
    refresh = 0
    if statistic == "moments" and style:
        refresh = max(max(2 * min(elems[n], CHUNK_ELEMENTS) * refresh_dtype, (3 if bf16 else 2) * elems[n] * 4)
                      for n in style)
    return _Pass(saved, backward, refresh)


def _fixed_bytes(layers: Sequence[str], style: Sequence[str], arch: str, statistic: str, bf16: bool) -> int:
    """Weights (the whole stack; bf16 copies of the used ones), a conv backward's weight copies, statistics."""
    deepest = max(layers, key=lambda n: layer_index(arch, n))
    used = _conv_weights(arch, deepest)
    weights = 4 * sum(_conv_weights(arch)) + (2 * sum(used) if bf16 else 0)
    stats = sum((4 * 8 if statistic == "moments" else 3 * 4) * BLOCK_CHANNELS[int(n[4]) - 1] ** 2 for n in style)
    return weights + 2 * 4 * max(used) + stats


def _image_bytes(hw: Tuple[int, int], settings: Settings, batch: int) -> int:
    """The optimiser's image-sized buffers and the smoothness term's."""
    pixels = 3 * hw[0] * hw[1] * batch
    if settings.optimizer == "adam":  # image, grad, exp_avg, exp_avg_sq, averaged iterate; moments carried up
        opt = 5 * pixels + pixels
    else:
        opt = (3 + 2 * lbfgs_history(pixels, settings.lbfgs_history, settings.lbfgs_memory_mb)) * pixels
    tv = 3 * pixels if settings.tv_weight > 0 else 0  # the padded image and its two differences
    return 4 * (opt + tv)


def _split(layers: Sequence[str], style_layers: "Sequence[str] | None") -> Tuple[List[str], List[str]]:
    style = list(layers if style_layers is None else style_layers)
    return style, [n for n in layers if n not in style]


def _act_bytes(settings: Settings, device) -> int:
    return 2 if use_bf16(settings, torch.device(device if device is not None else "cpu")) else 4


def _refresh_bytes(device) -> int:
    return 8 if precise_dtype(torch.device(device if device is not None else "cpu")) == torch.float64 else 4


def canvas_hw(hw: Tuple[int, int], settings: Settings) -> Tuple[int, int]:
    """(H, W) that a run at output size ``hw`` optimises: the output and its margin (:mod:`.canvas`)."""
    from .canvas import Canvas  # (the canvas builds on the targets; this module stays light)

    return Canvas(tuple(hw), int(settings.margin)).around(tuple(hw))


def estimate_bytes(hw: Tuple[int, int], layers: Sequence[str], settings: Settings, batch: int = 1,
                   arch: str = "vgg19", statistic: str = "moments",
                   style_layers: "Sequence[str] | None" = None, device: "torch.device | str | None" = None,
                   pooling: str = "max") -> int:
    """Peak bytes of one optimisation at output size ``hw`` (with ``settings.margin`` around it) on
    ``device`` (default: the CPU).

    ``layers`` are every captured layer (style and content), ``style_layers`` the style ones (default:
    all of ``layers``). bf16 follows ``settings.autocast_bf16`` and the device (:func:`.precision.use_bf16`);
    ``settings.checkpoint`` switches to the checkpointed pass. See the module text for what is counted.
    """
    hw = canvas_hw(hw, settings)
    style, content = _split(layers, style_layers)
    act = _act_bytes(settings, device)
    run = _pass(hw, layers, style, batch, arch, act, settings.checkpoint, statistic, _refresh_bytes(device), pooling)
    feats = layer_floats(arch, hw, max(layers, key=lambda n: layer_index(arch, n)))
    content_bytes = 2 * 4 * sum(feats[n] for n in content) * batch  # the target (memo and clone)
    goals = 4 * sum(feats[n] for n in style) * batch if statistic == "moments" else 0
    persistent = _image_bytes(hw, settings, batch) + content_bytes + goals
    return (_fixed_bytes(layers, style, arch, statistic, act < 4) + persistent + run.saved
            + max(run.backward, run.refresh))


def tiled_bytes(hw: Tuple[int, int], tile: int, layers: Sequence[str], settings: Settings, batch: int = 1,
                arch: str = "vgg19", statistic: str = "moments", style_layers: "Sequence[str] | None" = None,
                halo: "int | None" = None, device: "torch.device | str | None" = None, pooling: str = "max") -> int:
    """Peak bytes of one optimisation at output size ``hw`` (with ``settings.margin`` around it) evaluated
    in tiles of ``tile`` px (``nst_core.tiles``).

    What stays image-sized (the optimiser's buffers, the content features, the smoothness term and, for
    W2 with steps between refreshes, the goals of every style layer), plus one crop (``tile`` + 2·``halo``
    px a side) at a time: its gradient pass, or the pass that gathers the global statistics.
    """
    from .tiles import DEFAULT_HALO, needs_goals  # (tiles builds on the engine; this module stays light)

    halo = DEFAULT_HALO if halo is None else halo
    hw = canvas_hw(hw, settings)
    crop = (min(hw[0], tile + 2 * halo), min(hw[1], tile + 2 * halo))
    own = (min(hw[0], tile), min(hw[1], tile))
    style, content = _split(layers, style_layers)
    act = _act_bytes(settings, device)
    deepest = max(layers, key=lambda n: layer_index(arch, n))
    feats = layer_floats(arch, hw, deepest)
    content_bytes = 2 * 4 * sum(feats[n] for n in content) * batch
    goals = 4 * sum(feats[n] for n in style) * batch if statistic == "moments" and needs_goals(settings) else 0
    image = _image_bytes(hw, settings, batch) + content_bytes + goals
    run = _pass(crop, layers, style, batch, arch, act, settings.checkpoint, "gram", 8, pooling)
    mine = layer_floats(arch, own, deepest)
    biggest = max(layer_floats(arch, crop, deepest).values()) * batch
    gather = 4 * 3 * crop[0] * crop[1] * batch * 4 + 2 * biggest * act + max(
        mine[n] * batch * 4 + 2 * min(mine[n] * batch, CHUNK_ELEMENTS) * _refresh_bytes(device) for n in style) \
        if style else 0
    return _fixed_bytes(layers, style, arch, statistic, act < 4) + image + max(run.saved + run.backward, gather)


# --------------------------------------------------------------------------- fitting a run in free memory


class DoesNotFit(ValueError):
    """The optimisation cannot fit in the free memory, even with activation checkpointing."""


MARGIN = 1.1  # what is asked for: the estimate plus a tenth (its error, measured: BENCHMARKS.md) …
SLACK_BYTES = 256 * 2**20  # … plus the allocator's slack (fragmentation, caches)
USABLE_FRACTION = 0.75  # a plan uses at most this share of the free memory …
HEADROOM_BYTES = 512 * 2**20  # … and leaves at least this much free for the rest of the process or server


def required_bytes(estimate: int) -> int:
    """What to ask the memory manager for: the estimate with a margin (:data:`MARGIN`, :data:`SLACK_BYTES`)."""
    return int(estimate * MARGIN) + SLACK_BYTES


def usable_bytes(free_bytes: int) -> int:
    """The share of ``free_bytes`` a plan may use: 3/4 of it, and never the last 512 MiB.

    The rest of the server (a ComfyUI holding models in RAM, other processes, the allocator's caches)
    keeps its room: a plan never counts on nearly all the free memory.
    """
    return max(0, min(int(free_bytes * USABLE_FRACTION), int(free_bytes) - HEADROOM_BYTES))


def plan_memory(hw: Tuple[int, int], layers: Sequence[str], settings: Settings, free_bytes: int,
                batch: int = 1, arch: str = "vgg19", statistic: str = "moments",
                style_layers: "Sequence[str] | None" = None, device: "torch.device | str | None" = None) -> Settings:
    """Settings that fit in the usable share of ``free_bytes`` (:func:`usable_bytes`): as given, or with
    activation checkpointing; else a clear error naming the largest output size (long edge) that fits."""
    budget = usable_bytes(free_bytes)

    def need(s: Settings, size: Tuple[int, int]) -> int:
        return required_bytes(estimate_bytes(size, layers, s, batch, arch, statistic, style_layers, device))

    if need(settings, hw) <= budget:
        return settings
    light = settings.replace(checkpoint=True)
    if need(light, hw) <= budget:
        return light
    fits = largest_edge(lambda edge: need(light, fit_long_edge(hw, edge)) <= budget, max(hw))
    gib = 2**30
    advice = (f"the largest that fits is about {fits} px (long edge)" if fits else
              "not even a small image fits; free memory (close other models) or run on the CPU")
    raise DoesNotFit(
        f"a {hw[1]}×{hw[0]} px optimisation needs about {need(light, hw) / gib:.1f} GiB even with activation "
        f"checkpointing, but only {budget / gib:.1f} GiB of the {free_bytes / gib:.1f} GiB free may be used "
        f"(3/4, leaving room for the rest); {advice}"
    )


def largest_edge(fits, upper: int, lower: int = 16) -> int:
    """The largest long edge in [lower, upper) for which ``fits(edge)`` holds (0 if none): a bisection."""
    if not fits(lower):
        return 0
    lo, hi = lower, upper
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def lbfgs_history(numel: int, requested: int, memory_mb: int) -> int:
    """L-BFGS keeps 2 image-sized fp32 vectors per history entry: bound it by a memory budget."""
    fits = int(memory_mb * 2**20 // (2 * 4 * max(numel, 1)))
    return max(3, min(requested, fits))


def choose_tile(hw: Tuple[int, int], layers: Sequence[str], settings: Settings, free_bytes: int, batch: int = 1,
                arch: str = "vgg19", statistic: str = "moments", style_layers: "Sequence[str] | None" = None,
                align: int = 16, min_tile: int = 128, device: "torch.device | str | None" = None) -> int:
    """The tile size when the whole image does not fit: 0 (whole image) when a full-resolution pass fits
    in the usable share of ``free_bytes``; else the largest tile (a multiple of ``align`` px, at least
    ``min_tile``) whose tiled run fits.

    Larger tiles waste less on halos, so the largest that fits is the fastest; below ``min_tile`` the
    halos would cost several times the work (a 64 px halo around 128 px tiles: 4×). Raises
    :class:`DoesNotFit` when not even ``min_tile`` fits (the image-sized buffers are then most of it).
    """
    budget = usable_bytes(free_bytes)

    def need(tile: int) -> int:
        est = (estimate_bytes(hw, layers, settings, batch, arch, statistic, style_layers, device) if tile == 0 else
               tiled_bytes(hw, tile, layers, settings, batch, arch, statistic, style_layers, device=device))
        return required_bytes(est)

    if need(0) <= budget:
        return 0
    lowest = max(1, -(-min_tile // align))  # in units of align
    steps = largest_edge(lambda k: need(k * align) <= budget, max(lowest + 1, -(-max(hw) // align)),
                         lower=lowest)
    if steps:
        return steps * align
    gib, smallest = 2**30, lowest * align
    fits = largest_edge(lambda edge: required_bytes(tiled_bytes(
        fit_long_edge(hw, edge), smallest, layers, settings, batch, arch, statistic, style_layers,
        device=device)) <= budget, max(hw))
    advice = (f"the largest that fits in tiles is about {fits} px (long edge)" if fits else
              "free memory (close other models) or run on the CPU")
    raise DoesNotFit(
        f"a {hw[1]}×{hw[0]} px optimisation needs about {need(smallest) / gib:.1f} GiB even in tiles of {smallest} px "
        f"(its image-sized buffers: optimiser state, content features, W2 goals), but only "
        f"{budget / gib:.1f} GiB of the {free_bytes / gib:.1f} GiB free may be used (3/4, leaving room for the "
        f"rest); {advice}"
    )


MIN_AUTO_TILE = 128  # px: automatic tiles are at least this large (smaller ones cost several times the work)


def is_auto_tile(tile: "int | str") -> bool:
    """Whether a ``Settings.tile`` value asks the planner (``"auto"`` or 0)."""
    return tile == TILE_AUTO or (isinstance(tile, int) and not isinstance(tile, bool) and tile == 0)


def check_tile_setting(tile: "int | str") -> None:
    """``Settings.tile`` is ``"auto"`` or 0, ``"off"``, or a tile size of at least 16 px."""
    if is_auto_tile(tile) or tile == TILE_OFF:
        return
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < MIN_TILE:
        raise ValueError(f"tile must be 'auto' (or 0: tiles only when the whole image would not fit in memory), "
                         f"'off' (never) or a tile size of at least {MIN_TILE} px; got {tile!r}")


def fit_settings(hw: Tuple[int, int], layers: Sequence[str], settings: Settings, free_bytes: "int | None",
                 batch: int = 1, arch: str = "vgg19", statistic: str = "moments",
                 style_layers: "Sequence[str] | None" = None, device: "torch.device | str | None" = None,
                 min_tile: int = MIN_AUTO_TILE) -> Settings:
    """``settings`` with an automatic tile resolved for an output of ``hw`` and ``free_bytes`` free.

    The one planner of the CLI, the nodes and ``optimize``: the whole image when it fits in the usable
    share of the free memory (:func:`usable_bytes`), else with activation checkpointing, else in the
    largest tile (≥ ``min_tile`` px) that fits; :class:`DoesNotFit` when not even that fits. The result's
    tile is ``"off"`` (whole image) or a size in px. A tile set by the user, or ``"off"``, is kept; an
    unknown free memory (None) means the whole image.
    """
    if not is_auto_tile(settings.tile):
        return settings
    if free_bytes is None:
        return settings.replace(tile=TILE_OFF)
    model = (batch, arch, statistic, style_layers)
    try:
        return plan_memory(hw, layers, settings, free_bytes, *model, device=device).replace(tile=TILE_OFF)
    except DoesNotFit:
        if max(hw) <= min_tile:  # smaller tiles would cost more in halos than they save
            raise
    return settings.replace(tile=choose_tile(hw, layers, settings, free_bytes, *model, min_tile=min_tile,
                                             device=device))


def device_free_bytes(device) -> "int | None":
    """Free memory of ``device`` in bytes: CUDA's free memory, or the CPU's available RAM (None: unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:  # Linux: MemAvailable counts reclaimable cache, as psutil does
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def auto_tile(hw: Tuple[int, int], layers: Sequence[str], settings: Settings, device, batch: int = 1,
              arch: str = "vgg19", statistic: str = "moments",
              style_layers: "Sequence[str] | None" = None) -> int:
    """:func:`choose_tile` for what ``device`` has free now (0, the whole image, when that is unknown)."""
    free = device_free_bytes(device)
    if free is None:
        return 0
    return choose_tile(hw, layers, settings, free, batch, arch, statistic, style_layers, device=device)


# --------------------------------------------------------------------------- out of memory

# substrings of out-of-memory messages: CUDA/ROCm/MPS/XPU ("out of memory"), the CPU allocator,
# DirectML ("not enough GPU video memory"), cuBLAS/cuDNN/cuSOLVER ("ALLOC_FAILED")
OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "not enough gpu video memory",
                "alloc_failed", "outofmemory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means that a backend ran out of memory (whatever the backend's exception type)."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)
