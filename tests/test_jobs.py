"""Jobs over files (nst_core.jobs): the settings a job runs with, and the files it leaves behind.

The chunking, resuming and manifest tests of frame jobs are in test_frames.py, beside the loop they
drive; Ray's are in test_distributed.py.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch

import nst_core.jobs as jobs_mod
from nst_core.jobs import EngineSpec, FrameFolder, build_engine, run_frames_local, still_task, write_png_atomic
from nst_core.presets import settings_for
from nst_core.video import list_images, to_u8

from conftest import stripes_image


def _spec(**kw) -> EngineSpec:
    kw.setdefault("settings", (("steps", 2),))
    return EngineSpec(styles=(to_u8(stripes_image(48, 48)),), preset="fast", content_layer="relu2_1",
                      style_layers=("relu1_1", "relu2_1"), weights="random", device="cpu", **kw)


def _photo(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((32, 48, 3)) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- the settings of a job


@pytest.mark.parametrize("statistic", ["gram", "gram_normalized", "moments", None])
def test_a_job_weighs_the_losses_as_a_single_image_does(statistic):
    spec = EngineSpec(styles=(to_u8(stripes_image(48, 48)),), statistic=statistic)
    expected = settings_for("quality", statistic)
    got = spec.run_settings()
    assert (got.content_weight, got.style_weight) == (expected.content_weight, expected.style_weight)
    if statistic == "gram":
        assert got.style_weight == 1e3  # not the quality preset's 25, meant for mean and covariance
    overridden = EngineSpec(styles=spec.styles, statistic=statistic, settings=(("style_weight", 7.0),))
    assert overridden.run_settings().style_weight == 7.0


def test_masks_and_tiles_reach_every_frame_and_still(monkeypatch):
    mask = np.zeros((32, 48), np.uint8)
    mask[:, :24] = 255
    spec = _spec(style_masks=(mask,), content_mask=255 - mask, content_mask_strength=2.0, tile=32)
    engine = build_engine(spec)
    assert len(engine.style) == 1 and engine.style[0].mask is not None
    seen = []
    real = jobs_mod.optimize

    def spy(ext, content, style, init, settings, *a, **k):
        seen.append((content, style, settings))
        return real(ext, content, style, init, settings, *a, **k)

    monkeypatch.setattr(jobs_mod, "optimize", spy)
    out = still_task(engine, _photo())
    content, style, settings = seen[0]
    assert settings.tile == 32 and style[0].mask is not None
    assert content.mask is not None and content.mask_strength == 2.0
    plain = still_task(build_engine(_spec()), _photo())
    assert out.shape == plain.shape and not np.array_equal(out, plain)  # the masks changed the picture
    assert _spec(style_masks=(mask,)).key() != _spec(style_masks=(255 - mask,)).key()
    assert _spec(tile=32).key() != _spec().key()


def test_frames_of_a_job_get_the_masks_and_the_tile(tmp_path, monkeypatch):
    import nst_core.frames as frames_mod

    mask = np.full((32, 48), 255, np.uint8)
    seen = []
    real = frames_mod.optimize
    monkeypatch.setattr(frames_mod, "optimize",
                        lambda ext, content, style, init, settings, *a: seen.append((content, style, settings))
                        or real(ext, content, style, init, settings, *a))
    clip = [_photo(k) for k in range(2)]
    run_frames_local(_spec(style_masks=(mask,), content_mask=mask, tile=32), clip, 2, FrameFolder(str(tmp_path / "o")))
    assert len(seen) == 2
    assert all(s.tile == 32 and st[0].mask is not None and c.mask is not None for c, st, s in seen)


@pytest.mark.parametrize("tile", ["auto", 0, "off", 32])
def test_the_tile_of_a_job_is_the_settings_tile_that_optimize_plans(tile):
    """'auto' (or 0) stays for optimize to resolve on the worker, at each image's size, as for a still."""
    assert build_engine(_spec(tile=tile)).settings.tile == tile
    assert _spec(tile=tile).run_settings().tile == tile


# --------------------------------------------------------------------------- the files a job leaves


def test_frames_and_stills_are_readable_by_others_under_the_usual_umask(tmp_path):
    old = os.umask(0o022)
    try:
        folder = FrameFolder(str(tmp_path / "frames"))
        folder.check_manifest({"spec": "a"})
        folder.write(0, _photo())
        write_png_atomic(_photo(), str(tmp_path / "stills" / "a.png"))
    finally:
        os.umask(old)
    for path in (folder.frame_path(0), os.path.join(folder.path, "nst_frames.json"), tmp_path / "stills" / "a.png"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path  # as a plain open() gives, not 0600


def test_unfinished_files_are_hidden_and_a_new_run_removes_them(tmp_path):
    folder = FrameFolder(str(tmp_path / "o"))
    folder.check_manifest({"spec": "a"})
    folder.write(0, _photo())
    stale = tmp_path / "o" / ".tmp_1234_abcd_frame_00001.png"  # what a killed writer leaves
    stale.write_bytes(b"\x89PNG partial")
    assert [os.path.basename(p) for p in list_images(folder.path)] == ["frame_00000.png"]
    assert not folder.has(1)
    folder.check_manifest({"spec": "a"})  # a new run starts
    assert not stale.exists() and folder.has(0)
    stale.write_bytes(b"x")
    assert jobs_mod.remove_stale_temporaries(folder.path) == 1
    assert sorted(os.listdir(folder.path)) == ["frame_00000.png", "nst_frames.json"]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    def boom(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        jobs_mod.write_atomic(str(tmp_path / "a.png"), boom)
    assert os.listdir(tmp_path) == []


def test_the_bar_of_a_rerun_starts_where_the_written_frames_leave_off(tmp_path):
    clip = [_photo(k) for k in range(4)]
    out = FrameFolder(str(tmp_path / "o"))
    run_frames_local(_spec(), clip, 4, out)
    os.remove(out.frame_path(3))
    seen = []
    run_frames_local(_spec(), clip, 4, out, lead_in=1, progress=lambda done, total, p: seen.append((done, total, p)))
    per = seen[0][2].frame_total
    assert seen[0][0] == 3 * per + 1 and seen[-1][0] == seen[-1][1]  # from 3 frames done (of 4 + 1 lead-in)
    assert [p.frame for _, _, p in seen][::per] == [2, 3]  # the clip's frame numbers, the lead-in's first
    assert not any(n.startswith(".path_") for n in os.listdir(out.path))  # a finished run keeps no path
