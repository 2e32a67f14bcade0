"""The plan of a run, before it starts: the output size, whole image, checkpointed or tiles, the memory
it needs against what is free, where the W2 algebra runs, and a rough time.

``nst … --plan`` prints it and stops (the answer to "will it fit?"); before a large run the command
and the Optimize node say it in one line (:meth:`Plan.summary`). The decision is :func:`.memory.fit_settings`,
the same planner the run uses; the time comes from a short timed pass of the same run at a small size
(:func:`time_iterations`), scaled by the pixels and the iterations of each pyramid scale
(:func:`rough_seconds`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from .image import fit_long_edge
from .layers import min_input_edge
from .memory import (device_free_bytes, estimate_bytes, fit_settings, is_auto_tile, required_bytes, tiled_bytes,
                     usable_bytes)
from .optimizer import pyramid, steps_per_scale
from .precision import algebra_choice
from .presets import TILE_OFF, Settings

LARGE_PIXELS = 1024 * 1024  # output pixels (× batch) from which a run says its plan before it starts
TIMED_EDGE = 256  # px: long edge of the short timed pass
TIMED_STEPS = 4  # iterations of the timed pass (the first is a warm-up)
GATHER_COST = 0.4  # a tiled gathering pass (no graph) against a gradient pass of the same crops

GiB = 2**30


def _gib(n: Optional[int]) -> str:
    return "unknown" if n is None else (f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2**20:.0f} MiB")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


@dataclass(frozen=True)
class Plan:
    """What a run at ``hw`` will do and need (see the module text). ``settings`` are the run's, resolved:
    tile ``"off"`` (the whole image) or a size in px, checkpointing on or off."""

    hw: Tuple[int, int]
    batch: int
    device: torch.device
    settings: Settings
    estimate: int  # bytes at the peak, by the memory model
    free: Optional[int]  # bytes free on the device when planned (None: unknown)
    algebra: str  # where the float64 W2 algebra runs, and why
    layers: Tuple[str, ...] = ()
    arch: str = "vgg19"
    seconds: Optional[float] = None  # rough time of the run (None: not timed)
    timing: str = ""  # how the time was measured
    count: int = 1  # images or frames run with this plan, one after another

    @property
    def tile(self) -> int:
        """Tile size in px (0: the whole image at once)."""
        t = self.settings.tile
        return 0 if t == TILE_OFF or not isinstance(t, int) or max(self.hw) <= t else t

    @property
    def way(self) -> str:
        """Whole image, checkpointed, or tiles of N px."""
        if self.tile:
            return f"tiles of {self.tile} px" + (" with activation checkpointing" if self.settings.checkpoint else "")
        return "the whole image" + (" with activation checkpointing" if self.settings.checkpoint else " at once")

    @property
    def is_large(self) -> bool:
        """Large enough to say the plan before starting: many pixels, or checkpointing or tiles needed."""
        return self.hw[0] * self.hw[1] * self.batch >= LARGE_PIXELS or bool(self.tile) or self.settings.checkpoint

    def summary(self) -> str:
        """One line for the log and the node's progress text."""
        free = (f" of {_gib(self.free)} free ({_gib(usable_bytes(self.free))} usable)" if self.free is not None
                else " (free memory unknown)")
        time_part = f"; roughly {_duration(self.seconds)}" if self.seconds is not None else ""
        many = f" × {self.count}" if self.count > 1 else ""
        return (f"plan: {self.hw[1]}×{self.hw[0]} px{many} on {self.device}, {self.way}; about "
                f"{_gib(self.estimate)} at the peak{free}{time_part}")

    def lines(self) -> List[str]:
        """The ``--plan`` printout."""
        need = required_bytes(self.estimate)
        out = [f"output      {self.hw[1]}×{self.hw[0]} px" + (f", a batch of {self.batch}" if self.batch > 1 else "")
               + (f", {self.count} images or frames one after another" if self.count > 1 else ""),
               f"runs as     {self.way}",
               f"memory      about {_gib(self.estimate)} at the peak (estimated); asks for {_gib(need)} with the "
               f"margin",
               ("free        " + (f"{_gib(self.free)} on {self.device}; a plan uses at most "
                                  f"{_gib(usable_bytes(self.free))} of it (3/4, and never the last 512 MiB)"
                                  if self.free is not None else f"unknown on {self.device} (planned as the whole image)")),
               f"W2 algebra  {self.algebra}"]
        if self.seconds is not None:
            per = f" per image or frame, {_duration(self.seconds * self.count)} in all" if self.count > 1 else ""
            out.append(f"time        roughly {_duration(self.seconds)}{per} ({self.timing})")
        return out


def make_plan(hw: Tuple[int, int], layers: Sequence[str], settings: Settings, device: "torch.device | str",
              batch: int = 1, arch: str = "vgg19", statistic: str = "moments",
              style_layers: "Sequence[str] | None" = None, free_bytes: "int | None | str" = "device",
              count: int = 1) -> Plan:
    """The plan of a run at ``hw`` on ``device`` (no network is loaded): ``settings.tile`` resolved by
    :func:`.memory.fit_settings` against ``free_bytes`` (default: what the device has free now).

    A plan that cannot fit raises :class:`.memory.DoesNotFit`, naming the largest size that would.
    """
    device = torch.device(device)
    free = device_free_bytes(device) if free_bytes == "device" else free_bytes
    model = (batch, arch, statistic, style_layers)
    resolved = fit_settings(hw, layers, settings, free, *model, device=device)
    tile = resolved.tile if isinstance(resolved.tile, int) and not is_auto_tile(resolved.tile) else 0
    if tile and max(hw) > tile:
        est = tiled_bytes(hw, tile, layers, resolved, *model, device=device)
    else:
        est = estimate_bytes(hw, layers, resolved, *model, device=device)
    uses_w2 = statistic == "moments" and bool(style_layers if style_layers is not None else layers)
    algebra = algebra_choice(device).describe() if uses_w2 else "none (no W2 style loss)"
    return Plan(tuple(hw), batch, device, resolved, est, free, algebra, tuple(layers), arch, count=count)


RunFn = Callable[..., Any]  # run(size=…, progress=…, preview=…, **settings overrides): the run, at another size


def time_iterations(run: RunFn, plan: Plan, edge: int = TIMED_EDGE, steps: int = TIMED_STEPS
                    ) -> Tuple[float, Tuple[int, int]]:
    """(seconds per iteration, size) of a short pass of ``run`` at long edge ``edge``: one scale, the plan's
    switches (checkpointing, bf16) but no tiles, ``steps`` iterations of which the first is a warm-up."""
    edge = max(min(edge, max(plan.hw)), min_input_edge(plan.arch, plan.layers) if plan.layers else 16)
    stamps: List[float] = []
    run(size=edge, progress=lambda p: stamps.append(time.perf_counter()), preview=None, steps=steps,
        first_steps=steps, min_size=1 << 20, tile=TILE_OFF, checkpoint=plan.settings.checkpoint)
    if len(stamps) < 2:
        raise ValueError("the timed pass reported fewer than 2 iterations; it cannot time the run")
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1), fit_long_edge(plan.hw, edge)


def rough_seconds(plan: Plan, per_iteration: float, timed_hw: Tuple[int, int]) -> float:
    """The run's time from ``per_iteration`` seconds at ``timed_hw``: scaled by each pyramid scale's pixels
    and iterations; tiled scales pay for their halos (the crops' area over the image's) and for a
    gathering pass on the steps that refresh the global statistics."""
    from .tiles import DEFAULT_HALO, needs_goals, round_up, tile_grid

    s = plan.settings
    min_edge = min_input_edge(plan.arch, plan.layers) if plan.layers else 1
    sizes = pyramid(s, plan.hw, min_edge)
    unit = per_iteration / (timed_hw[0] * timed_hw[1])
    total = 0.0
    for hw, steps in zip(sizes, steps_per_scale(s, sizes)):
        factor = 1.0
        if plan.tile and max(hw) > plan.tile:
            tile = max(min_edge, plan.tile // min_edge * min_edge)
            crops = tile_grid(hw, tile, round_up(DEFAULT_HALO, min_edge), (0, 0), min_edge)
            area = sum((t.crop[1] - t.crop[0]) * (t.crop[3] - t.crop[2]) for t in crops) / (hw[0] * hw[1])
            gathers = 1 / s.transport_every if needs_goals(s) else 1.0
            factor = area * (1 + GATHER_COST * gathers)
        total += steps * unit * hw[0] * hw[1] * factor
    return total


def timed(plan: Plan, run: RunFn) -> Plan:
    """``plan`` with a rough time from a short timed pass of ``run`` (see :func:`time_iterations`)."""
    per, hw = time_iterations(run, plan)
    how = f"{TIMED_STEPS - 1} iterations at {hw[1]}×{hw[0]} px took {per:.2f} s each, scaled to the run"
    return replace(plan, seconds=rough_seconds(plan, per, hw), timing=how)


def says_time(plan: Plan) -> bool:
    """Whether saying the plan is worth a timed pass: on a device other than CUDA, or in tiles."""
    return plan.device.type != "cuda" or bool(plan.tile)

