"""Argument types and resolutions shared by the ``nst`` subcommands (cli, cli_frames, cli_explore)."""

from __future__ import annotations

import argparse
from typing import List, NoReturn, Optional, Tuple

import torch

from .jobs import resolve_device
from .layers import parse_layers
from .presets import MIN_COARSE_SCALE, get_preset

STYLE_BALANCE_HELP = ("how much the style weight adapts to the pair: far styles are painted less hard, so the "
                      "photo stays legible (default: the preset's; 0: a fixed style weight, the old look)")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``nst transfer: error: …`` and where the help is,
    instead of the whole usage (its subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:  # type: ignore[override]
        """As argparse's, but an unknown option is reported by the subcommand it was given to."""
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            chosen = next((a.choices.get(getattr(namespace, a.dest, None)) for a in self._actions
                           if isinstance(a, argparse._SubParsersAction)), None)
            (chosen or self).error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ {least}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    """``argparse`` type: a whole number ≥ 1."""
    return _whole_number(text, 1)


def nonneg_int(text: str) -> int:
    """``argparse`` type: a whole number ≥ 0."""
    return _whole_number(text, 0)


def nonneg_float(text: str) -> float:
    """``argparse`` type: a number ≥ 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number ≥ 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number ≥ 0, got {text}")
    return value


def coarse_scale(text: str) -> float:
    """``argparse`` type of ``--coarse-scale``: a fraction in [``MIN_COARSE_SCALE``, 1]."""
    value = nonneg_float(text)
    if not MIN_COARSE_SCALE <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between {MIN_COARSE_SCALE} and 1 (1: every layer at the full "
                                         f"size), got {value}")
    return value


def style_layers_and_weights(args: argparse.Namespace) -> Tuple[List[str], Optional[List[float]]]:
    """The style layers and their weights a ``transfer``/``texture`` command line means.

    As in the NST Style Target node: without ``--style-layer-weights``, the preset's layers get the
    preset's weights (also when named explicitly), other layers equal weights.
    """
    preset = get_preset(args.preset)
    layers = (parse_layers(args.style_layers, args.arch) if args.style_layers is not None
              else list(preset.style_layers))
    weights = args.style_layer_weights
    if weights is None and tuple(layers) == tuple(preset.style_layers) and preset.style_layer_weights:
        weights = list(preset.style_layer_weights)
    if weights is not None and len(weights) != len(layers):
        raise ValueError(f"--style-layer-weights has {len(weights)} number(s) for {len(layers)} style layers "
                         f"({','.join(layers)}); give one weight per layer")
    return layers, weights


def pick_device(name: str) -> torch.device:
    """Resolve ``auto``/``cpu``/``cuda``/``mps`` to an available device, with a clear error."""
    if name == "auto":
        return resolve_device(name)
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps was asked for but MPS is not available; use --device cpu")
    return resolve_device(name)
