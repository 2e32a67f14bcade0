"""``nst … --plan``, and the plan the command says before a large run (small hooks in cli.py, cli_frames.py).

``--plan`` prints the plan (:class:`.plan.Plan`: output size, whole image, checkpointed or tiles, the
estimated peak against the free memory, where the W2 algebra runs, a rough time) and stops: exit 0,
nothing written. Without it, a large run (:attr:`.plan.Plan.is_large`) says the plan in one line on
stderr before it starts.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

import torch

from .cli_args import pick_device
from .plan import RunFn, make_plan, says_time, timed
from .presets import Settings, get_preset

if TYPE_CHECKING:
    import numpy as np


def add_plan_option(p: argparse.ArgumentParser) -> None:
    """``--plan`` on a subcommand."""
    p.add_argument("--plan", action="store_true",
                   help="print the plan and stop, writing nothing: the output size, whole image, checkpointed or "
                        "tiles, the memory it needs against what is free, where the W2 algebra runs, and a rough "
                        "time from a short timed pass (the answer to 'will it fit?')")


def planned(args: argparse.Namespace, device: torch.device, hw: Tuple[int, int], layers: Sequence[str],
            statistic: str, style_layers: Sequence[str], settings: Settings, run: RunFn, batch: int = 1,
            count: int = 1) -> Optional[Dict[str, Any]]:
    """The plan of a command line's run at ``hw``.

    With ``--plan``: printed (after a short timed pass of ``run``), and None: the command stops there.
    Otherwise said on stderr before a large run, and returned as the settings the run takes (the
    resolved tile and checkpointing), so the run does what was said.
    """
    plan = make_plan(tuple(hw), list(layers), settings, device, batch, args.arch, statistic, list(style_layers),
                     count=count)
    if getattr(args, "plan", False):
        plan = timed(plan, run)
        print("\n".join(plan.lines()))
        return None
    if plan.is_large:
        if says_time(plan):
            plan = timed(plan, run)
        print(f"nst: {plan.summary()}", file=sys.stderr, flush=True)
    return {"tile": plan.settings.tile, "checkpoint": plan.settings.checkpoint}


def planned_job(args: argparse.Namespace, spec, first: "np.ndarray", count: int):
    """The plan of a frames or folder job (``spec``: a :class:`.jobs.EngineSpec`): one image's, the first
    (``first``, uint8 at the output size), run ``count`` times.

    Returns ``(stop, engine)``: with ``--plan`` the plan is printed and ``stop`` is True; before a large
    job it is said on stderr. ``engine`` is the engine the timed pass built (None if none ran), for the
    job to reuse.
    """
    from .jobs import build_engine
    from .optimizer import optimize
    from .targets import ContentTarget
    from .video import from_u8

    device = torch.device(pick_device(spec.device))
    hw = tuple(first.shape[:2])
    engine = None

    def run(size=None, progress=None, preview=None, **over):
        content = ContentTarget.create(engine.extractor, from_u8(first), engine.content_layer, spec.content_weight)
        return optimize(engine.extractor, content, engine.style, spec.init, engine.settings.replace(**over), size,
                        progress, preview)

    layers = list(spec.style_layers or ()) + [spec.content_layer or get_preset(spec.preset).content_layer]
    statistic = spec.statistic or get_preset(spec.preset).statistic
    plan = make_plan(hw, layers, spec.run_settings(), device, 1, spec.arch, statistic, list(spec.style_layers or ()),
                     count=count)
    stop = bool(getattr(args, "plan", False))
    if stop or (plan.is_large and says_time(plan) and not getattr(args, "ray", None)):
        engine = build_engine(spec)
        plan = timed(plan, run)
    if stop:
        print("\n".join(plan.lines()))
    elif plan.is_large and not getattr(args, "ray", None):
        print(f"nst: {plan.summary()}", file=sys.stderr, flush=True)
    return stop, engine
