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
