"""Faults survived: a cancel mid-run, running out of memory, and many runs in one long-lived process.

Everything runs on the CPU with random weights and 32-64 px images. The ComfyUI nodes are imported the
way ComfyUI loads the pack (without a server: the bridge falls back to plain CPU behaviour); the
server's cancel and out-of-memory exceptions are simulated by monkeypatching.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import sys
import weakref
from typing import List

import pytest
import torch

from nst_core import Cancelled, ContentTarget, Settings, StyleTarget, optimize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ["relu1_1", "relu2_1", "relu3_1"]


# --------------------------------------------------------------------------- helpers


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        pytest.skip("no way to read this process's RSS (install psutil)")


def live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


class Spy:
    """Wraps an extractor's forward: keeps weak references to every image that is being optimised."""

    def __init__(self, ext, fail=None) -> None:
        self.ext, self.fail = ext, fail
        self.refs: List[weakref.ref] = []
        self.calls = 0
        self._orig = ext.forward

    def __enter__(self) -> "Spy":
        def forward(image, layers, **kwargs):
            self.calls += 1
            if image.requires_grad:
                self.refs.append(weakref.ref(image))
            if self.fail is not None:
                self.fail(image)
            return self._orig(image, layers, **kwargs)

        self.ext.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        del self.ext.forward

    def alive(self) -> int:
        gc.collect()
        return sum(r() is not None for r in self.refs)


class OptimizerRegistry:
    """Patches torch.optim.Adam/LBFGS so that every optimiser made is weakly referenced."""

    def __init__(self, monkeypatch) -> None:
        self.refs: List[weakref.ref] = []
        registry = self
        for name in ("Adam", "LBFGS"):
            base = getattr(torch.optim, name)

            class Tracked(base):  # type: ignore[misc, valid-type]
                def __init__(self, *a, **k):
                    super().__init__(*a, **k)
                    registry.refs.append(weakref.ref(self))

            monkeypatch.setattr(torch.optim, name, Tracked)

    def alive(self) -> int:
        gc.collect()
        return sum(r() is not None for r in self.refs)


def assert_image(out: torch.Tensor, shape) -> None:
    assert tuple(out.shape) == tuple(shape)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.fixture(scope="module")
def bridge(pack):
    return sys.modules[pack.__name__ + ".nodes.comfy_bridge"]


@pytest.fixture(scope="module")
def pext(pack):
    return importlib.import_module(pack.__name__ + ".nst_core").load_extractor(weights="random", seed=0)


def node_targets(nodes, ext, content_hw=(32, 32), seed=0):
    gen = torch.Generator().manual_seed(seed)
    content = torch.rand((1, *content_hw, 3), generator=gen)
    style = torch.rand((1, 32, 32, 3), generator=gen)
    with torch.inference_mode():
        ct = nodes["NST_ContentTarget"].build(ext, content, "relu2_1", 1.0)[0]
        st = nodes["NST_GramStyleTarget"].build(ext, style, "relu1_1,relu2_1,relu3_1", "", "", "gram", 1.0)[0]
    return ct, st


def node_run(nodes, ext, ct, st, **kw):
    args = dict(preset="fast", steps=2, content_weight=1.0, style_weight=1.0, tv_weight=1.0, size=32, init="auto",
                seed=0, content_target=ct, style_target=st)
    args.update(kw)
    with torch.inference_mode():
        return nodes["NST_StyleTransferOptimize"].run(ext, **args)[0]


def hooks_left(ext) -> int:
    return sum(len(m._forward_hooks) for m in ext.features)


# --------------------------------------------------------------------------- cancel


@pytest.mark.parametrize("optimizer, cancel_at", [("adam", 3), ("adam", 6), ("lbfgs", 3)])
def test_cancel_mid_run_frees_memory_and_the_next_run_works(rand_ext, images, monkeypatch, optimizer, cancel_at):
    content = ContentTarget.create(rand_ext, images.gradient(48, 48), "relu2_1")
    style = StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, statistic="moments")
    # two pyramid scales (34 px, 48 px) of 4 steps: cancel_at=6 stops in the second, with Adam state carried over
    s = Settings(optimizer=optimizer, steps=4, min_size=32, lr=0.05, ema_decay=0.5, lbfgs_max_iter=2)
    opts = OptimizerRegistry(monkeypatch)
    asked = []

    def cancel() -> bool:
        asked.append(1)
        return len(asked) == cancel_at

    with Spy(rand_ext) as spy:
        message = None
        try:
            optimize(rand_ext, content, style, settings=s, cancel=cancel)
        except Cancelled as exc:
            message = str(exc)
        # (the exception, and the frames its traceback holds, are gone here)
        assert message == f"cancelled at step {cancel_at} of 8"
        assert spy.refs and opts.refs
        assert spy.alive() == 0, "the image being optimised is still referenced after the cancel"
        assert opts.alive() == 0, "the optimiser (and its per-pixel state) is still referenced after the cancel"
        assert hooks_left(rand_ext) == 0
        out = optimize(rand_ext, content, style, settings=s.replace(steps=1))
    assert_image(out, (1, 3, 48, 48))
    assert spy.alive() == 0 and opts.alive() == 0


def test_cancel_in_the_node_parks_the_extractor_frees_memory_and_the_next_run_works(nodes, pext, bridge,
                                                                                    monkeypatch):
    class InterruptProcessingException(Exception):
        """What ComfyUI's throw_exception_if_processing_interrupted raises."""

    ct, st = node_targets(nodes, pext)
    asked = []

    def interrupt_on_third_step() -> bool:
        asked.append(1)
        if len(asked) == 3:
            raise InterruptProcessingException()
        return False

    monkeypatch.setattr(bridge, "check_interrupt", interrupt_on_third_step)
    emptied = []
    real_empty = bridge.empty_cache
    monkeypatch.setattr(bridge, "empty_cache", lambda: (emptied.append(1), real_empty()))
    with Spy(pext) as spy:
        interrupted = False
        try:
            node_run(nodes, pext, ct, st, steps=10)
        except InterruptProcessingException:
            interrupted = True
        assert interrupted and len(asked) == 3
        assert spy.alive() == 0
        assert pext.device.type == "cpu" and hooks_left(pext) == 0 and emptied
        monkeypatch.setattr(bridge, "check_interrupt", lambda: False)
        assert_image(node_run(nodes, pext, ct, st), (1, 32, 32, 3))


# --------------------------------------------------------------------------- out of memory


def _oom_above(edge: int):
    def fail(image: torch.Tensor) -> None:
        if max(image.shape[-2:]) > edge:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 7.79 GiB total capacity)")
    return fail


def test_out_of_memory_in_the_node_is_a_clear_error_and_a_smaller_run_works(nodes, pext, bridge, monkeypatch):
    ct, st = node_targets(nodes, pext, content_hw=(48, 64))
    emptied = []
    real_empty = bridge.empty_cache
    monkeypatch.setattr(bridge, "empty_cache", lambda: (emptied.append(1), real_empty()))
    with Spy(pext, fail=_oom_above(32)) as spy:
        err = None
        try:
            node_run(nodes, pext, ct, st, size=64)
        except RuntimeError as exc:
            err = exc
        assert err is not None and not isinstance(err, torch.cuda.OutOfMemoryError)
        message = str(err)
        assert "out of memory at size 64" in message, message
        assert "lower 'size'" in message and "--cpu" in message, message
        assert err.__cause__ is None and err.__suppress_context__  # no torch traceback in the user's face
        del err
        assert emptied, "the accelerator cache was not emptied after the out-of-memory error"
        assert spy.alive() == 0 and pext.device.type == "cpu" and hooks_left(pext) == 0
        # the next, smaller run works
        assert_image(node_run(nodes, pext, ct, st, size=32), (1, 24, 32, 3))


def test_out_of_memory_in_the_engine_propagates_as_itself_and_frees_memory(rand_ext, images, monkeypatch):
    """nst_core does not swallow it (the node and the CLI turn it into advice); nothing is left held."""
    content = ContentTarget.create(rand_ext, images.gradient(48, 48), "relu2_1")
    opts = OptimizerRegistry(monkeypatch)
    with Spy(rand_ext, fail=_oom_above(32)) as spy:
        raised = False
        try:
            optimize(rand_ext, content, None, settings=Settings(steps=2, min_size=10_000), size=40)
        except torch.cuda.OutOfMemoryError:
            raised = True
        assert raised and spy.alive() == 0 and opts.alive() == 0 and hooks_left(rand_ext) == 0
        out = optimize(rand_ext, content, None, settings=Settings(steps=2, min_size=10_000), size=32)
    assert_image(out, (1, 3, 32, 32))


@pytest.mark.parametrize("node", ["NST_ContentTarget", "NST_GramStyleTarget"])
def test_out_of_memory_while_building_a_target_is_a_clear_error(nodes, pext, node):
    image = torch.rand(1, 64, 64, 3)
    with Spy(pext, fail=_oom_above(32)):
        with pytest.raises(RuntimeError) as err:
            with torch.inference_mode():
                if node == "NST_ContentTarget":
                    nodes[node].build(pext, image, "relu2_1", 1.0)
                else:
                    nodes[node].build(pext, image, "relu1_1,relu2_1,relu3_1", "", "", "gram", 1.0)
    assert not isinstance(err.value, torch.cuda.OutOfMemoryError)
    assert "out of memory" in str(err.value) and "smaller" in str(err.value)


# --------------------------------------------------------------------------- many runs


def test_30_consecutive_runs_do_not_grow_memory(nodes, pext):
    """What a long-lived ComfyUI server does: new targets and a new optimisation each time."""

    def run(i: int) -> None:
        ct, st = node_targets(nodes, pext, seed=i)
        out = node_run(nodes, pext, ct, st, seed=i)
        assert out.shape == (1, 32, 32, 3)

    for i in range(3):  # warm-up: allocator pools, autograd and library caches
        run(i)
    gc.collect()
    tensors0, rss0 = live_tensors(), rss_bytes()
    growth = []
    for i in range(30):
        run(100 + i)
        if i % 10 == 9:
            gc.collect()
            growth.append((rss_bytes() - rss0) / 2**20)
    tensors1 = live_tensors()
    assert growth[-1] < 30, f"RSS grew by {growth[-1]:.1f} MiB over 30 runs (after 10, 20, 30: {growth})"
    assert tensors1 <= tensors0, f"{tensors1 - tensors0} more live tensors after 30 runs"
    assert hooks_left(pext) == 0
