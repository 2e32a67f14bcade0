"""A memory estimate for one optimisation, before any work starts (used to pick sizes and tiles)."""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

from .image import fit_long_edge
from .layers import BLOCK_CHANNELS, layer_index, layer_names
from .presets import Settings


def layer_floats(arch: str, hw: Tuple[int, int], deepest: str) -> Dict[str, int]:
    """Floats of each module's output, from the input up to ``deepest``, for one image of size ``hw``."""
    h, w = hw
    sizes = {}
    for name in layer_names(arch)[: layer_index(arch, deepest) + 1]:
        c = BLOCK_CHANNELS[int(name[4]) - 1]
        if name.startswith("pool"):
            h, w = h // 2, w // 2
        sizes[name] = c * h * w
    return sizes


def activation_floats(arch: str, hw: Tuple[int, int], deepest: str) -> int:
    """Floats of every module output from the input up to ``deepest`` for one image of size ``hw``."""
    return sum(layer_floats(arch, hw, deepest).values())


def estimate_bytes(hw: Tuple[int, int], layers: Sequence[str], settings: Settings, batch: int = 1,
                   arch: str = "vgg19", statistic: str = "moments",
                   style_layers: "Sequence[str] | None" = None) -> int:
    """Rough peak bytes of one optimisation at output size ``hw`` (fp32).

    Counts the network weights, the activations kept for the backward pass (each module output, or
    with ``settings.checkpoint`` the block outputs, the captured layers and one block recomputed at a
    time; plus their gradients while the backward runs), the image buffers of the optimiser (Adam: 2 +
    averaged iterate; L-BFGS: its bounded history), the style statistics and, for ``moments``, the
    transported features of each style layer (``style_layers``, default all of ``layers``).
    """
    deepest = max(layers, key=lambda n: layer_index(arch, n))
    weights = sum(c * c_in * 9 for c_in, c in _conv_pairs(arch, deepest))
    sizes = layer_floats(arch, hw, deepest)
    if settings.checkpoint:
        kept = sum(v for n, v in sizes.items() if n.startswith("pool") or n in layers)
        block = max(sum(v for n, v in sizes.items() if n[4] == b) for b in {n[4] for n in sizes})
        acts = (kept + 2 * block) * batch
    else:
        acts = 2 * sum(sizes.values()) * batch
    pixels = 3 * hw[0] * hw[1] * batch
    if settings.optimizer == "adam":
        opt = 5 * pixels  # image, grad, exp_avg, exp_avg_sq, averaged iterate
    else:
        opt = (3 + 2 * lbfgs_history(pixels, settings.lbfgs_history, settings.lbfgs_memory_mb)) * pixels
    style = list(layers if style_layers is None else style_layers)
    stats = sum(4 * BLOCK_CHANNELS[int(n[4]) - 1] ** 2 for n in style)
    goals = sum(sizes[n] for n in style) * batch if statistic == "moments" else 0
    # the float64 chunks of the centred moments (statistics.centred_moments: ≤ 2^24 elements, 3 buffers)
    chunks = 3 * 2 * min(max(sizes[n] for n in style) * batch, 1 << 24) if style and statistic == "moments" else 0
    return 4 * (weights + acts + opt + stats + goals + chunks)


class DoesNotFit(ValueError):
    """The optimisation cannot fit in the free memory, even with activation checkpointing."""


MARGIN = 1.2  # the estimate is rough: ask for a fifth more, plus the allocator's slack below
SLACK_BYTES = 256 * 2**20


def plan_memory(hw: Tuple[int, int], layers: Sequence[str], settings: Settings, free_bytes: int,
                batch: int = 1, arch: str = "vgg19", statistic: str = "moments",
                style_layers: "Sequence[str] | None" = None) -> Settings:
    """Settings that fit in ``free_bytes``: as given, or with activation checkpointing; else a clear error.

    The error names the largest output size (long edge) that would fit, so the user can pick it.
    """
    def need(s: Settings, size: Tuple[int, int]) -> int:
        return required_bytes(estimate_bytes(size, layers, s, batch, arch, statistic, style_layers))

    if need(settings, hw) <= free_bytes:
        return settings
    light = settings.replace(checkpoint=True)
    if need(light, hw) <= free_bytes:
        return light
    fits = largest_edge(lambda edge: need(light, fit_long_edge(hw, edge)) <= free_bytes, max(hw))
    gib = 2**30
    advice = (f"the largest that fits is about {fits} px (long edge)" if fits else
              "not even a small image fits; free memory (close other models) or run on the CPU")
    raise DoesNotFit(
        f"a {hw[1]}×{hw[0]} px optimisation needs about {need(light, hw) / gib:.1f} GiB even with activation "
        f"checkpointing, but only {free_bytes / gib:.1f} GiB is free; {advice}"
    )


def required_bytes(estimate: int) -> int:
    """What to ask the memory manager for: the estimate with a margin."""
    return int(estimate * MARGIN) + SLACK_BYTES


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


def _conv_pairs(arch: str, deepest: str):
    c_in = 3
    for name in layer_names(arch)[: layer_index(arch, deepest) + 1]:
        if name.startswith("conv"):
            c = BLOCK_CHANNELS[int(name[4]) - 1]
            yield c_in, c
            c_in = c


def tiled_bytes(hw: Tuple[int, int], tile: int, layers: Sequence[str], settings: Settings, batch: int = 1,
                arch: str = "vgg19", statistic: str = "moments", style_layers: "Sequence[str] | None" = None,
                halo: "int | None" = None) -> int:
    """Rough peak bytes of one optimisation at ``hw`` evaluated in tiles of ``tile`` px (``nst_core.tiles``).

    One crop's pass (``tile`` + 2·``halo`` px a side, counted as :func:`estimate_bytes` of the crop,
    optimiser buffers included: a margin), plus what stays image-sized: the optimiser's buffers, the
    content target's features and, for ``moments`` with steps between W2 refreshes, the stored goals
    of every style layer.
    """
    from .tiles import DEFAULT_HALO  # (tiles builds on the engine; this module stays light)

    halo = DEFAULT_HALO if halo is None else halo
    crop = (min(hw[0], tile + 2 * halo), min(hw[1], tile + 2 * halo))
    deepest = max(layers, key=lambda n: layer_index(arch, n))
    sizes = layer_floats(arch, hw, deepest)
    pixels = 3 * hw[0] * hw[1] * batch
    opt = 5 * pixels if settings.optimizer == "adam" else (
        (3 + 2 * lbfgs_history(pixels, settings.lbfgs_history, settings.lbfgs_memory_mb)) * pixels)
    style = list(layers if style_layers is None else style_layers)
    content = sum(sizes[n] for n in layers if n not in style) * batch
    refreshes_only = settings.optimizer != "adam" or settings.transport_every <= 1  # (tiles.needs_goals)
    goals = sum(sizes[n] for n in style) * batch if statistic == "moments" and not refreshes_only else 0
    return estimate_bytes(crop, layers, settings, batch, arch, statistic, style_layers) + 4 * (opt + content + goals)


def choose_tile(hw: Tuple[int, int], layers: Sequence[str], settings: Settings, free_bytes: int, batch: int = 1,
                arch: str = "vgg19", statistic: str = "moments", style_layers: "Sequence[str] | None" = None,
                align: int = 16, min_tile: int = 128) -> int:
    """The tile size for ``settings.tile = auto``: 0 (whole image) when a full-resolution pass fits in
    ``free_bytes``; else the largest tile (a multiple of ``align`` px, at least ``min_tile``) whose
    tiled run fits.

    Larger tiles waste less on halos, so the largest that fits is the fastest; below ``min_tile`` the
    halos would cost several times the work (a 64 px halo around 128 px tiles: 4×). Raises
    :class:`DoesNotFit` when not even ``min_tile`` fits (the image-sized buffers are then most of it).
    """
    def need(tile: int) -> int:
        est = (estimate_bytes(hw, layers, settings, batch, arch, statistic, style_layers) if tile == 0 else
               tiled_bytes(hw, tile, layers, settings, batch, arch, statistic, style_layers))
        return required_bytes(est)

    if need(0) <= free_bytes:
        return 0
    lowest = max(1, -(-min_tile // align))  # in units of align
    steps = largest_edge(lambda k: need(k * align) <= free_bytes, max(lowest + 1, -(-max(hw) // align)),
                         lower=lowest)
    if steps:
        return steps * align
    gib, smallest = 2**30, lowest * align
    fits = largest_edge(lambda edge: required_bytes(tiled_bytes(
        fit_long_edge(hw, edge), smallest, layers, settings, batch, arch, statistic, style_layers)) <= free_bytes,
        max(hw))
    advice = (f"the largest that fits in tiles is about {fits} px (long edge)" if fits else
              "free memory (close other models) or run on the CPU")
    raise DoesNotFit(
        f"a {hw[1]}×{hw[0]} px optimisation needs about {need(smallest) / gib:.1f} GiB even in tiles of {smallest} px "
        f"(its image-sized buffers: optimiser state, content features, W2 goals), but only "
        f"{free_bytes / gib:.1f} GiB is free; {advice}"
    )


def device_free_bytes(device) -> "int | None":
    """Free memory of ``device`` in bytes: CUDA's free memory, or the CPU's available RAM (None: unknown)."""
    import torch

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
    """``tile = auto``: :func:`choose_tile` for what ``device`` has free now (0 when that is unknown)."""
    free = device_free_bytes(device)
    if free is None:
        return 0
    return choose_tile(hw, layers, settings, free, batch, arch, statistic, style_layers)
