"""Frames: the temporal loop around optimize (nst_core.frames), its resumable jobs (nst_core.jobs) and
``nst frames`` / ``nst transfer DIR``. Small sizes, few steps; one slow test with the real VGG19."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import nst_core.frames as frames_mod
from nst_core import StyleTarget, get_preset
from nst_core.cli import main
from nst_core.frames import FramesProgress, TemporalLoss, quantize, stylize_frames, temporal_error
from nst_core.image import load_image
from nst_core.jobs import ChunkTask, EngineSpec, FrameFolder, plan_chunks, run_frames_local, windows
from nst_core.optimizer import Cancelled
from nst_core.video import to_u8

from conftest import DATA, require_extra, stripes_image

require_extra("cv2", "video", "frames (OpenCV's optical flow)")


# --------------------------------------------------------------------------- clips


def texture(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth random colour texture with enough detail for optical flow everywhere."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, max(2, h // 6), max(2, w // 6), generator=g),
                                           size=(h, w), mode="bicubic", align_corners=False)
    ys = torch.arange(h, dtype=torch.float32).view(h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, w)
    return (base + 0.15 * torch.sin(2 * math.pi * (xs / 13 + ys / 19))).clamp(0, 1)


def sliding_clip(image: torch.Tensor, hw, n: int, step=(2, 5)):
    """``n`` windows of ``hw`` moving by ``step`` (dy, dx) px a frame: a camera pan over ``image``."""
    h, w = hw
    return [image[..., step[0] * t: step[0] * t + h, step[1] * t: step[1] * t + w].contiguous() for t in range(n)]


def small_clip(n: int = 4, hw=(32, 48)):
    return sliding_clip(texture(hw[0] + 3 * n, hw[1] + 5 * n), hw, n, (1, 3))


FAST = get_preset("fast").settings.replace(steps=2)  # single scale at these sizes (min_size 180)


@pytest.fixture(scope="module")
def style(rand_ext):
    return StyleTarget.create(rand_ext, stripes_image(48, 48), ["relu1_1", "relu2_1"])


def run(ext, style, clip, **kw):
    kw.setdefault("settings", FAST)
    return list(stylize_frames(ext, clip, style, "relu2_1", **kw))


# --------------------------------------------------------------------------- the loop


def test_outputs_one_frame_each_in_order(rand_ext, style):
    clip = small_clip(3)
    outs = run(rand_ext, style, clip)
    assert len(outs) == 3 and all(o.shape == (1, 3, 32, 48) for o in outs)
    assert all(float(o.min()) >= 0 and float(o.max()) <= 1 for o in outs)


def test_same_seed_gives_identical_frames(rand_ext, style):
    clip = small_clip(3)
    a = run(rand_ext, style, clip, init="noise", settings=FAST.replace(seed=5))
    b = run(rand_ext, style, clip, init="noise", settings=FAST.replace(seed=5))
    c = run(rand_ext, style, clip, init="noise", settings=FAST.replace(seed=6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_weight_zero_is_independent_frames_without_flow(rand_ext, style):
    def no_flow(a, b):
        raise AssertionError("flow must not be computed for independent frames")

    clip = small_clip(3)
    outs = run(rand_ext, style, clip, temporal_weight=0.0, flow_fn=no_flow)
    alone = [run(rand_ext, style, [f], temporal_weight=0.0)[0] for f in clip]
    assert all(torch.equal(x, y) for x, y in zip(outs, alone))


def test_later_frames_start_from_the_warped_previous_output_with_a_temporal_term(rand_ext, style, monkeypatch):
    calls = []
    real = frames_mod.optimize

    def spy(ext, content, style_, init, settings, size, progress, preview, cancel, extra_loss):
        calls.append((init, extra_loss))
        return real(ext, content, style_, init, settings, size, progress, preview, cancel, extra_loss)

    monkeypatch.setattr(frames_mod, "optimize", spy)
    run(rand_ext, style, small_clip(3), temporal_weight=50.0)
    assert calls[0] == ("content", None)
    for init, extra in calls[1:]:
        assert isinstance(init, torch.Tensor) and init.shape == (1, 3, 32, 48)
        assert isinstance(extra, TemporalLoss) and extra.weight == 50.0


def test_progress_counts_frames_times_iterations_and_previews_count_on(rand_ext, style):
    seen, previews = [], []
    run(rand_ext, style, small_clip(3), progress=seen.append, count=3,
        preview=lambda step, img: previews.append(step), settings=FAST.replace(steps=4, preview_every=2))
    assert all(isinstance(p, FramesProgress) for p in seen)
    assert [p.step for p in seen] == list(range(1, 13))
    assert seen[-1].total == 12 and seen[-1].frame == 2 and seen[-1].frame_total == 4
    assert previews == [2, 4, 6, 8, 10, 12]


def test_cancel_stops_the_run(rand_ext, style):
    asked = []

    def cancel():
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(Cancelled):
        run(rand_ext, style, small_clip(3), cancel=cancel)


def test_resume_reuses_given_outputs_without_optimising(rand_ext, style, monkeypatch):
    clip = small_clip(3)
    straight = run(rand_ext, style, clip)
    count = []
    real = frames_mod.optimize
    monkeypatch.setattr(frames_mod, "optimize", lambda *a, **k: count.append(1) or real(*a, **k))
    kept = {0: quantize(straight[0]), 1: quantize(straight[1])}
    resumed = run(rand_ext, style, clip, resume=kept.get)
    assert len(count) == 1  # only frame 2
    assert torch.equal(resumed[0], kept[0])
    assert torch.equal(quantize(resumed[2]), quantize(straight[2]))  # carried on from the 8-bit frame 1


def test_temporal_loss_resizes_and_ignores_masked_pixels():
    target = torch.rand(1, 3, 32, 48)
    mask = torch.ones(1, 1, 32, 48)
    mask[..., :, :24] = 0
    loss = TemporalLoss(target, mask, 10.0)
    image = target.clone()
    image[..., :, :24] = 1 - image[..., :, :24]  # different only where the mask frees it
    assert float(loss(image)) == pytest.approx(0.0, abs=1e-7)
    assert float(loss(torch.zeros(1, 3, 16, 24))) > 0  # a smaller pyramid scale
    assert len(loss._cache) == 2


@pytest.mark.parametrize("kwargs, frames, message", [
    ({"temporal_weight": -1.0}, None, "temporal_weight"),
    ({"temporal_weight": float("nan")}, None, "temporal_weight"),
    ({}, [torch.rand(1, 3, 32, 48), torch.rand(1, 3, 32, 40)], "same size"),
    ({}, [torch.rand(2, 3, 32, 48)], "batch of 2"),
    ({}, ["frame.png"], "torch.Tensor"),
])
def test_bad_inputs_name_what_is_wrong(rand_ext, style, kwargs, frames, message):
    with pytest.raises((ValueError, TypeError)) as info:
        run(rand_ext, style, frames or small_clip(2), **kwargs)
    assert message in str(info.value)


def test_temporal_error_is_zero_for_outputs_that_move_with_the_input():
    clip = small_clip(3, (64, 96))
    assert temporal_error(clip, clip) < 2e-3  # what is left is the flow's own error
    assert temporal_error(clip, [clip[0]] * 3) > 20 * temporal_error(clip, clip)  # frozen output
    assert temporal_error(clip, [clip[0], clip[2], clip[1]]) > 20 * temporal_error(clip, clip)
    with pytest.raises(ValueError, match="at least 2"):
        temporal_error(clip[:1], clip[:1])


# --------------------------------------------------------------------------- numbers that could fail


def _real_clip(n: int, size: int):
    """A pan over The Shipwreck (tests/data) in the style of The Starry Night."""
    h = round(size * 3 / 4)
    photo = load_image(str(DATA / "shipwreck.jpg"), 2 * size)
    style_img = load_image(str(DATA / "starry_night.jpg"), 2 * size)
    return sliding_clip(photo, (h, size), n), style_img


@pytest.mark.slow
def test_temporal_loss_at_least_halves_the_temporal_error(real_ext):
    clip, style_img = _real_clip(6, 96)
    p = get_preset("quality")
    s = StyleTarget.create(real_ext, style_img, p.style_layers, p.style_layer_weights, p.statistic)
    settings = p.settings.replace(steps=20)
    independent = list(stylize_frames(real_ext, clip, s, p.content_layer, temporal_weight=0.0, settings=settings))
    temporal = list(stylize_frames(real_ext, clip, s, p.content_layer, settings=settings))
    e0, e1 = temporal_error(clip, independent), temporal_error(clip, temporal)
    assert e1 <= 0.5 * e0, (e0, e1)
    # and the frames are still stylised: far from the input photo, like the independent ones
    away = lambda outs: float(sum(((o - c) ** 2).mean() for o, c in zip(outs, clip)))  # noqa: E731
    assert away(temporal) > 0.5 * away(independent)


# --------------------------------------------------------------------------- jobs: chunks, folders, resume


def test_plan_chunks_skips_written_frames_and_carries_on_inside_a_chunk():
    written = {0, 1, 2, 3, 5}.__contains__
    assert plan_chunks(10, 4, 2, written) == [ChunkTask(4, 8, 2), ChunkTask(8, 10, 2)]
    assert plan_chunks(10, 4, 2, {4}.__contains__)[1] == ChunkTask(5, 8, 0, carry=True)
    assert plan_chunks(10, 4, 2, {4}.__contains__)[1].input_start == 4
    assert plan_chunks(5, None, 3) == [ChunkTask(0, 5, 0)]
    assert plan_chunks(3, 2, 5) == [ChunkTask(0, 2, 0), ChunkTask(2, 3, 2)]
    assert plan_chunks(4, 2, 1, lambda i: True) == []
    with pytest.raises(ValueError, match="chunk size"):
        plan_chunks(4, 0, 1)


def test_windows_read_the_input_once_and_overlap():
    reads = []

    def source():
        for i in range(10):
            reads.append(i)
            yield i

    got = [list(w) for w in windows(source(), [(0, 4), (2, 7), (8, 10)])]
    assert got == [[0, 1, 2, 3], [2, 3, 4, 5, 6], [8, 9]]
    assert reads == list(range(10))
    with pytest.raises(ValueError, match="ended after 3 frames"):
        [list(w) for w in windows(iter(range(3)), [(0, 5)])]


def _spec(**kw) -> EngineSpec:
    kw.setdefault("settings", (("steps", 2),))
    return EngineSpec(styles=(to_u8(stripes_image(48, 48)),), preset="fast", content_layer="relu2_1",
                      style_layers=("relu1_1", "relu2_1"), weights="random", device="cpu", **kw)


def test_rerun_skips_written_frames_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    clip = [to_u8(f) for f in small_clip(4)]
    straight = FrameFolder(str(tmp_path / "straight"))
    assert run_frames_local(_spec(), clip, 4, straight) == 4

    stopped = FrameFolder(str(tmp_path / "stopped"))
    state = {}

    def progress(done, total, p):
        state["frame"] = p.frame

    with pytest.raises(Cancelled):
        run_frames_local(_spec(), clip, 4, stopped, progress=progress, cancel=lambda: state.get("frame") == 2)
    assert [stopped.has(i) for i in range(4)] == [True, True, False, False]
    before = [os.stat(stopped.frame_path(i)).st_mtime_ns for i in range(2)]

    optimised = []
    real = frames_mod.optimize
    monkeypatch.setattr(frames_mod, "optimize", lambda *a, **k: optimised.append(1) or real(*a, **k))
    assert run_frames_local(_spec(), clip, 4, stopped) == 2
    assert len(optimised) == 2  # frames 2 and 3 only; frame 1 was read back from disk
    assert [os.stat(stopped.frame_path(i)).st_mtime_ns for i in range(2)] == before
    for i in range(4):
        assert np.array_equal(stopped.read(i), straight.read(i)), f"frame {i} differs after the rerun"
    assert run_frames_local(_spec(), clip, 4, stopped) == 0


def test_chunked_run_with_lead_in_is_complete_and_resumes_exactly(tmp_path):
    clip = [to_u8(f) for f in small_clip(5)]
    out = FrameFolder(str(tmp_path / "chunks"))
    assert run_frames_local(_spec(), clip, 5, out, chunk_size=2, lead_in=1) == 5
    kept = out.read(3)
    os.remove(out.frame_path(3))
    assert run_frames_local(_spec(), clip, 5, out, chunk_size=2, lead_in=1) == 1
    assert np.array_equal(out.read(3), kept)


def test_manifest_refuses_frames_of_another_recipe(tmp_path):
    folder = FrameFolder(str(tmp_path / "o"))
    folder.check_manifest({"spec": "a", "frames": 3})
    folder.write(0, np.zeros((8, 8, 3), np.uint8))
    folder.check_manifest({"spec": "a", "frames": 3})
    with pytest.raises(ValueError, match="differs in: spec"):
        folder.check_manifest({"spec": "b", "frames": 3})
    folder.check_manifest({"spec": "b", "frames": 3}, overwrite=True)
    assert not folder.has(0)


def test_spec_key_follows_what_changes_the_output():
    assert _spec().key() == _spec().key()
    assert _spec().key() != _spec(temporal_weight=3.0).key()
    assert _spec().key() != _spec(settings=(("steps", 3),)).key()


# --------------------------------------------------------------------------- the command


@pytest.fixture()
def frame_dir(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for i, f in enumerate(small_clip(3)):
        Image.fromarray(to_u8(f)).save(d / f"shot{i + 1}.png")  # shot1 … shot3: name order
    style = tmp_path / "style.png"
    Image.fromarray(to_u8(stripes_image(48, 48))).save(style)
    return d, style


ARGS = ["--size", "48", "--steps", "2", "--weights", "random", "--quiet", "--preset", "fast",
        "--content-layer", "relu2_1", "--style-layers", "relu1_1,relu2_1", "--device", "cpu"]


def test_cli_frames_writes_one_png_per_frame_and_a_rerun_skips_them(frame_dir, tmp_path, monkeypatch, capsys):
    src, style = frame_dir
    out = tmp_path / "out"
    assert main(["frames", str(src), str(style), "-o", str(out), *ARGS]) == 0
    names = sorted(n for n in os.listdir(out) if n.endswith(".png"))
    assert names == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    assert Image.open(out / names[0]).size == (48, 32)
    monkeypatch.setattr(frames_mod, "optimize", lambda *a, **k: pytest.fail("a written frame was remade"))
    assert main(["frames", str(src), str(style), "-o", str(out), *ARGS]) == 0
    # other settings into the same folder: refused with a readable line, or remade with --overwrite
    assert main(["frames", str(src), str(style), "-o", str(out), *ARGS, "--temporal-weight", "7"]) == 2
    assert "another run" in capsys.readouterr().err


def test_cli_frames_bad_inputs_exit_2(frame_dir, tmp_path, capsys):
    src, style = frame_dir
    assert main(["frames", str(tmp_path / "nope"), str(style), "-o", str(tmp_path / "o"), *ARGS]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["frames", str(src), str(style), "-o", str(tmp_path / "o.png"), *ARGS]) == 2
    assert "names an image" in capsys.readouterr().err
    assert main(["frames", str(src), str(style), "-o", str(tmp_path / "o"), *ARGS, "--save-every", "1"]) == 2


def test_cli_transfer_on_a_folder_writes_one_image_each(frame_dir, tmp_path):
    src, style = frame_dir
    out = tmp_path / "stills"
    assert main(["transfer", str(src), str(style), "-o", str(out), *ARGS]) == 0
    assert sorted(os.listdir(out)) == ["shot1.png", "shot2.png", "shot3.png"]


# --------------------------------------------------------------------------- the ComfyUI node


@pytest.fixture(scope="module")
def node_inputs(nodes):
    ext = nodes["NST_LoadVGGExtractor"].load("original VGG19 (bundled)", "vgg19", "max", "replicate")[0]
    style_image = stripes_image(48, 48).movedim(1, -1)
    style = nodes["NST_GramStyleTarget"].build(ext, style_image, "relu1_1,relu2_1,relu3_1", "", "", "moments", 1.0)[0]
    clip = torch.cat(small_clip(3)).movedim(1, -1)  # IMAGE [3,32,48,3]
    return ext, clip, style


def _node_run(nodes, node_inputs, **kw):
    ext, clip, style = node_inputs
    args = dict(content_layer="relu2_1", content_weight=1.0, schedule="fast", steps=2, size=0,
                temporal_weight=50.0, init_seed=0)
    args.update(kw)
    return nodes["NST_StylizeFrames"].run(ext, clip, style, **args)[0]


def test_node_stylises_a_batch_frame_by_frame(nodes, node_inputs, monkeypatch, pack):
    module = sys.modules[pack.__name__ + ".nodes.frames_node"]
    calls = []
    real = module.stylize_frames

    def spy(ext, frames, *a, **k):
        frames = list(frames)
        calls.append([tuple(f.shape) for f in frames])
        return real(ext, frames, *a, **k)

    monkeypatch.setattr(module, "stylize_frames", spy)
    out = _node_run(nodes, node_inputs)
    assert out.shape == (3, 32, 48, 3) and out.dtype == torch.float32
    assert calls == [[(1, 3, 32, 48)] * 3]  # one frame at a time, never the whole batch
    assert torch.equal(out, _node_run(nodes, node_inputs))  # same seed, same frames
    assert _node_run(nodes, node_inputs, size=24).shape == (3, 16, 24, 3)


def test_node_cancel_stops_within_an_iteration(nodes, node_inputs, monkeypatch, pack):
    module = sys.modules[pack.__name__ + ".nodes.frames_node"]
    asked = []

    def interrupt():
        asked.append(1)
        if len(asked) > 3:
            raise KeyboardInterrupt("cancelled")  # stands for ComfyUI's InterruptProcessingException
        return False

    monkeypatch.setattr(module.bridge, "check_interrupt", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _node_run(nodes, node_inputs, steps=10)
    assert len(asked) == 4


def test_node_refuses_a_missing_style(nodes, node_inputs):
    ext, clip, _ = node_inputs
    with pytest.raises(ValueError, match="style_target"):
        nodes["NST_StylizeFrames"].run(ext, clip, None, "relu2_1", 1.0, "fast", 2, 0, 50.0, 0)


def test_runs_inside_inference_mode_as_a_comfyui_node_does(rand_ext, style):
    with torch.inference_mode():
        clip = [f.clone() for f in small_clip(3)]  # inference tensors, as ComfyUI hands them over
        outs = run(rand_ext, style, clip, temporal_weight=50.0)
    assert len(outs) == 3 and all(torch.isfinite(o).all() for o in outs)


def test_the_example_workflow_uses_the_default_temporal_weight():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import make_workflows as mw

    assert mw.TEMPORAL_WEIGHT == frames_mod.DEFAULT_TEMPORAL_WEIGHT


def test_ctrl_c_stops_between_iterations_and_keeps_written_frames(frame_dir, tmp_path):
    import signal
    import subprocess
    import time

    src, style = frame_dir
    out = tmp_path / "out"
    args = [a if a != "2" else "400" for a in ARGS]  # long frames: the interrupt lands inside one
    proc = subprocess.Popen([sys.executable, "-m", "nst_core", "frames", str(src), str(style), "-o", str(out), *args],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while not (out / "frame_00000.png").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (out / "frame_00000.png").exists(), proc.stderr.read() if proc.poll() is not None else "timeout"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "run the same command again" in err
    assert (out / "frame_00000.png").exists() and not (out / "frame_00002.png").exists()


def test_still_task_keeps_the_photo_colours_with_luminance():
    from nst_core.color import rgb_to_ycbcr
    from nst_core.jobs import build_engine, still_task
    from nst_core.video import from_u8

    photo = to_u8(small_clip(1)[0])
    engine = build_engine(_spec(colors="luminance"))
    out = from_u8(still_task(engine, photo))
    chroma = (rgb_to_ycbcr(out)[:, 1:] - rgb_to_ycbcr(from_u8(photo))[:, 1:]).abs().mean()
    assert float(chroma) < 0.02
