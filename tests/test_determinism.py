"""Determinism on the CPU: the same seed gives a bit-identical output, in one process and across processes,
whatever the global random state, through the engine and through the ComfyUI node."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nst_core import ContentTarget, Settings, StyleTarget, optimize, texture, transfer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ["relu1_1", "relu2_1", "relu3_1"]
PACK = "nst_pack_determinism"


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def scramble_global_rng(seed: int) -> None:
    """Change every global random state the engine could accidentally depend on."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    torch.rand(17)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@pytest.fixture(scope="module")
def targets(rand_ext, images):
    return (ContentTarget.create(rand_ext, images.gradient(32, 40), "relu2_1"),
            StyleTarget.create(rand_ext, images.checkerboard(32, 32), LAYERS, statistic="moments"))


@pytest.mark.parametrize("optimizer, init", [("adam", "noise"), ("adam", "gray"), ("lbfgs", "noise"),
                                             ("lbfgs", "content")])
def test_same_seed_same_output(rand_ext, targets, optimizer, init):
    content, style = targets
    # two pyramid scales, so resizing and the carried-over optimiser state are covered too
    s = Settings(optimizer=optimizer, steps=3, min_size=24, lr=0.05, ema_decay=0.5, lbfgs_max_iter=2, seed=1234,
                 tv_weight=0.5)
    scramble_global_rng(1)
    a = optimize(rand_ext, content, style, init=init, settings=s)
    scramble_global_rng(2)
    b = optimize(rand_ext, content, style, init=init, settings=s)
    assert torch.equal(a, b)
    if init != "content":  # the seed is what picks the start image
        c = optimize(rand_ext, content, style, init=init, settings=s.replace(seed=1235))
        assert not torch.equal(a, c)


def test_same_seed_same_output_through_transfer_and_texture(rand_ext, images):
    c_img, s_img = images.gradient(32, 32), images.stripes(32, 32)
    kw = dict(content_layer="relu2_1", style_layers=LAYERS, steps=2, min_size=10_000, seed=7, init="noise")
    scramble_global_rng(3)
    a = transfer(rand_ext, c_img, s_img, **kw)
    scramble_global_rng(4)
    assert torch.equal(a, transfer(rand_ext, c_img, s_img, **kw))
    tkw = dict(size=24, style_layers=LAYERS, steps=2, min_size=16, seed=7)
    assert torch.equal(texture(rand_ext, s_img, **tkw), texture(rand_ext, s_img, **tkw))


def test_same_seed_same_output_through_the_node(images):
    spec = importlib.util.spec_from_file_location(PACK, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = pack
    try:
        spec.loader.exec_module(pack)
        ext = importlib.import_module(PACK + ".nst_core").load_extractor(weights="random", seed=0)
        nodes = {k: v() for k, v in pack.NODE_CLASS_MAPPINGS.items()}
        style = images.checkerboard(32, 32).movedim(1, -1)
        with torch.inference_mode():
            st = nodes["NST_GramStyleTarget"].build(ext, style, "relu1_1,relu2_1,relu3_1", "", "", "gram", 1.0)[0]

            def run(seed):
                return nodes["NST_StyleTransferOptimize"].run(ext, "fast", 2, 1.0, 1.0, 1.0, 24, "auto", seed,
                                                              style_target=st)[0]

            scramble_global_rng(5)
            a = run(42)
            scramble_global_rng(6)
            b = run(42)
            c = run(43)
        assert a.shape == (1, 24, 24, 3)
        assert torch.equal(a, b) and not torch.equal(a, c)
    finally:
        for key in [k for k in sys.modules if k == PACK or k.startswith(PACK + ".")]:
            del sys.modules[key]


CHILD = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[2])
    import nst_core
    from conftest import gradient_image, checkerboard_image
    torch.manual_seed(999)  # a different global state from the parent's
    ext = nst_core.load_extractor(weights="random", seed=0)
    out = nst_core.transfer(ext, gradient_image(32, 32), checkerboard_image(32, 32), content_layer="relu2_1",
                            style_layers=["relu1_1", "relu2_1", "relu3_1"], steps=3, min_size=10000, seed=11,
                            init="noise")
    print(json.dumps(hashlib.sha256(out.numpy().tobytes()).hexdigest()))
    """
)


def test_same_seed_same_output_in_a_fresh_process(rand_ext, images):
    here = transfer(rand_ext, images.gradient(32, 32), images.checkerboard(32, 32), content_layer="relu2_1",
                    style_layers=LAYERS, steps=3, min_size=10_000, seed=11, init="noise")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="123")
    proc = subprocess.run([sys.executable, "-c", CHILD, ROOT, os.path.join(ROOT, "tests")], capture_output=True,
                          text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == digest(here)
