"""Ray (nst_core.distributed) on a local two-worker cluster: chunks of frames and folders of stills.

The cluster is this machine only (``ray.init(num_cpus=2)``, no dashboard, no usage report). Small
frames, random weights, two steps: what is tested is the plumbing, not the pictures.
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np
import pytest
from PIL import Image

from nst_core.cli import main
from nst_core.jobs import EngineSpec, FrameFolder, frames_task, run_frames_local
from nst_core.video import to_u8

from conftest import require_extra, stripes_image

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = require_extra("ray", "ray", "the Ray tests")
require_extra("cv2", "video", "frames (OpenCV's optical flow)")

from nst_core.distributed import Cluster, run_frames_ray  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from test_frames import small_clip  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with two CPU workers for this module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # crash_once travels by value
    yield ray
    ray.shutdown()


def spec() -> EngineSpec:
    return EngineSpec(styles=(to_u8(stripes_image(48, 48)),), preset="fast", settings=(("steps", 2),),
                      content_layer="relu2_1", style_layers=("relu1_1", "relu2_1"), weights="random", device="cpu")


CLIP = [to_u8(f) for f in small_clip(6)]


def crash_once(marker: str, *args, **kwargs):
    """The task body, except that the first attempt at the chunk starting at frame 3 kills its worker."""
    task = args[1]
    if task.first == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return frames_task(*args, **kwargs)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The same clip and chunking (chunks of 3, lead-in 1) made in this process."""
    out = FrameFolder(str(tmp_path_factory.mktemp("single")))
    assert run_frames_local(spec(), CLIP, len(CLIP), out, chunk_size=3, lead_in=1) == 6
    return out


def frames_of(folder: FrameFolder):
    return [folder.read(i) for i in range(len(CLIP))]


def test_two_workers_make_the_frames_of_a_single_process_run(cluster, single_process, tmp_path):
    out = FrameFolder(str(tmp_path / "ray"))
    seen = []
    assert run_frames_ray(spec(), CLIP, len(CLIP), out, 3, 1, progress=lambda d, t: seen.append((d, t))) == 6
    assert seen[-1] == (6, 6)
    for i, (a, b) in enumerate(zip(frames_of(out), frames_of(single_process))):
        assert np.array_equal(a, b), f"frame {i} differs from the single-process run"


def test_a_killed_worker_is_retried_and_the_output_is_complete(cluster, single_process, tmp_path):
    marker = str(tmp_path / "crashed")
    out = FrameFolder(str(tmp_path / "ray"))
    made = run_frames_ray(spec(), CLIP, len(CLIP), out, 3, 1, max_retries=2,
                          task_fn=functools.partial(crash_once, marker))
    assert os.path.exists(marker), "the first attempt did not run (no crash happened)"
    assert made == 6
    for a, b in zip(frames_of(out), frames_of(single_process)):
        assert np.array_equal(a, b)


def test_a_rerun_makes_only_the_missing_frames(cluster, single_process, tmp_path):
    out = FrameFolder(str(tmp_path / "ray"))
    for i in (0, 2, 3, 5):
        out.write(i, single_process.read(i))
    assert run_frames_ray(spec(), CLIP, len(CLIP), out, 3, 1) == 2  # frames 1 and 4, carried on from 0 and 3
    for a, b in zip(frames_of(out), frames_of(single_process)):
        assert np.array_equal(a, b)
    assert run_frames_ray(spec(), CLIP, len(CLIP), out, 3, 1) == 0


def test_an_error_in_a_task_reaches_the_caller_as_itself(cluster, tmp_path):
    bad = EngineSpec(styles=(to_u8(stripes_image(48, 48)),), settings=(("steps", 2),), weights="random",
                     device="cpu", content_layer="relu9_9")
    with pytest.raises(ValueError, match="relu9_9"):
        run_frames_ray(bad, CLIP, len(CLIP), FrameFolder(str(tmp_path / "o")), 3, 1, max_retries=0)


ARGS = ["--size", "48", "--steps", "2", "--weights", "random", "--quiet", "--preset", "fast",
        "--content-layer", "relu2_1", "--style-layers", "relu1_1,relu2_1", "--device", "cpu"]


def test_cli_transfer_folder_and_frames_with_ray(cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, f in enumerate(CLIP[:3]):
        Image.fromarray(f).save(src / f"img{i}.png")
    style = tmp_path / "style.png"
    Image.fromarray(to_u8(stripes_image(48, 48))).save(style)

    assert main(["transfer", str(src), str(style), "-o", str(tmp_path / "ray"), "--ray", "auto", *ARGS]) == 0
    assert main(["transfer", str(src), str(style), "-o", str(tmp_path / "here"), *ARGS]) == 0
    for name in ("img0.png", "img1.png", "img2.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "ray" / name)),
                              np.asarray(Image.open(tmp_path / "here" / name)))

    out = tmp_path / "frames"
    assert main(["frames", str(src), str(style), "-o", str(out), "--ray", "auto", "--chunk-size", "2", *ARGS]) == 0
    assert sorted(n for n in os.listdir(out) if n.endswith(".png")) == [f"frame_{i:05d}.png" for i in range(3)]
    assert ray.is_initialized()  # a session the caller opened stays open


def test_cluster_refuses_a_gpu_it_does_not_have(cluster):
    with Cluster("auto") as c:
        assert c.placement("auto") == ({"num_cpus": 1}, "cpu")
        with pytest.raises(ValueError, match="no GPU"):
            c.placement("cuda")
