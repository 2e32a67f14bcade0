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
    args = dict(schedule="fast", steps=2, content_weight=1.0, style_weight=1.0, tv_weight=1.0, size=32, init="auto",
                init_seed=0, content_target=ct, style_target=st)
    args.update(kw)
    with torch.inference_mode():
        return nodes["NST_StyleTransferOptimize"].run(ext, **args)[0]


def hooks_left(ext) -> int:
    return sum(len(m._forward_hooks) for m in ext.features)


OFFLOAD = torch.device("meta")  # a stand-in offload device, distinct from the CPU the tests compute on


def _device_of(args, kwargs) -> "torch.device | None":
    """The device a ``Module.to(...)`` call asks for (None for a dtype-only call)."""
    arg = args[0] if args else kwargs.get("device")
    return torch.device(arg) if isinstance(arg, (str, torch.device)) else None


class Parking:
    """Records in order the extractor's moves, the cache empties and marked failures.

    On the CPU the compute and offload devices are the same, so the bridge's offload device becomes
    ``meta``: a move there is recorded (and really stays on the CPU), so a park is observable.
    """

    def __init__(self, monkeypatch, bridge, ext) -> None:
        self.events: List[tuple] = []
        real_to, real_empty = ext.to, bridge.empty_cache

        def to(*args, **kwargs):
            device = _device_of(args, kwargs)
            if device is not None:
                self.events.append(("to", device.type))
                if device == OFFLOAD:
                    args, kwargs = (torch.device("cpu"),) + tuple(args[1:]), {k: v for k, v in kwargs.items()
                                                                               if k != "device"}
            return real_to(*args, **kwargs)

        def empty_cache(*args, **kwargs):
            self.events.append(("empty",))
            return real_empty(*args, **kwargs)

        monkeypatch.setitem(vars(ext), "to", to)
        monkeypatch.setattr(bridge, "offload_device", lambda: OFFLOAD)
        monkeypatch.setattr(bridge, "empty_cache", empty_cache)

    def mark(self, what: str) -> None:
        self.events.append((what,))

    def after(self, what: str) -> List[tuple]:
        """The events after the last ``what`` mark (an AssertionError if there is none)."""
        assert (what,) in self.events, f"{what!r} never happened: {self.events}"
        return self.events[len(self.events) - self.events[::-1].index((what,)):]

    def parked_after(self, what: str) -> bool:
        """The extractor's last move after ``what`` went to the offload device."""
        moves = [e for e in self.after(what) if e[0] == "to"]
        return bool(moves) and moves[-1] == ("to", OFFLOAD.type)

    def emptied_after(self, what: str) -> bool:
        return ("empty",) in self.after(what)


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
            parking.mark("interrupt")
            raise InterruptProcessingException()
        return False

    monkeypatch.setattr(bridge, "check_interrupt", interrupt_on_third_step)
    parking = Parking(monkeypatch, bridge, pext)
    with Spy(pext) as spy:
        interrupted = False
        try:
            node_run(nodes, pext, ct, st, steps=10)
        except InterruptProcessingException:
            interrupted = True
        assert interrupted and len(asked) == 3
        assert spy.alive() == 0
        assert ("to", "cpu") in parking.events, "the extractor never went to the compute device"
        assert parking.parked_after("interrupt"), f"not parked after the cancel: {parking.events}"
        assert parking.emptied_after("interrupt"), f"cache not emptied after the cancel: {parking.events}"
        assert hooks_left(pext) == 0
        monkeypatch.setattr(bridge, "check_interrupt", lambda: False)
        parking.mark("second run")
        assert_image(node_run(nodes, pext, ct, st), (1, 32, 32, 3))
        assert parking.parked_after("second run")


# --------------------------------------------------------------------------- out of memory


def _oom_above(edge: int, parking: "Parking | None" = None):
    def fail(image: torch.Tensor) -> None:
        if max(image.shape[-2:]) > edge:
            if parking is not None:
                parking.mark("oom")
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 7.79 GiB total capacity)")
    return fail


def test_out_of_memory_in_the_node_is_a_clear_error_and_a_smaller_run_works(nodes, pext, bridge, monkeypatch):
    ct, st = node_targets(nodes, pext, content_hw=(48, 64))
    parking = Parking(monkeypatch, bridge, pext)
    # (the schedule's 8 px margin: a 32 px output is optimised on a 48 px canvas, a 64 px one on 80 px)
    with Spy(pext, fail=_oom_above(48, parking)) as spy:
        err = None
        try:
            node_run(nodes, pext, ct, st, size=64)
        except RuntimeError as exc:
            err = exc
        # ComfyUI's own OOM type (torch's CUDA one without ComfyUI), so that its OOM recovery runs
        assert isinstance(err, torch.cuda.OutOfMemoryError), type(err)
        message = str(err)
        assert "out of memory at size 64" in message, message
        assert "lower 'size'" in message and "--cpu" in message, message
        del err
        assert parking.emptied_after("oom"), f"cache not emptied after the out-of-memory error: {parking.events}"
        assert parking.parked_after("oom"), f"not parked after the out-of-memory error: {parking.events}"
        assert spy.alive() == 0 and hooks_left(pext) == 0
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
def test_building_a_target_runs_no_network_even_on_a_phone_photo(nodes, pext, node):
    """A 12 MP image costs no VGG pass at its full size: targets are computed at the sizes the optimiser asks for."""
    image = torch.rand(1, 3000, 4000, 3)
    with Spy(pext, fail=lambda *a: pytest.fail("the network ran while building a target")):
        with torch.inference_mode():
            if node == "NST_ContentTarget":
                target = nodes[node].build(pext, image, "relu2_1", 1.0)[0]
            else:
                target = nodes[node].build(pext, image, "relu1_1,relu2_1,relu3_1", "", "", "gram", 1.0)[0]
    assert target is not None


# --------------------------------------------------------------------------- many runs


def test_30_consecutive_runs_do_not_grow_memory(nodes, pext):
    """What a long-lived ComfyUI server does: new targets and a new optimisation each time."""

    def run(i: int) -> None:
        ct, st = node_targets(nodes, pext, seed=i)
        out = node_run(nodes, pext, ct, st, init_seed=i)
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
