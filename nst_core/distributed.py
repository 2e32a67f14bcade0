"""Ray at the command's edge: chunks of frames, or a folder of stills, as Ray tasks.

The only module that imports Ray, and only when called (``pip install ray``, or ``pip install ".[ray]"``
in a clone of the repository).
A task is a call of :func:`nst_core.jobs.frames_task` or :func:`nst_core.jobs.still_task` on plain
values: the driver reads the inputs and sends them as uint8 arrays, the tasks send their outputs
back, and the driver writes them as they land (so the workers need no shared disk, only the same
packages and, for a weights file, that file). Each task asks for one GPU where the cluster has GPUs,
one CPU otherwise. A task whose worker dies is retried (``max_retries``); what was written stays
written, and a rerun makes only the missing frames.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from .jobs import (ChunkTask, EngineSpec, FrameFolder, frames_task, load_still, plan_chunks, still_output,
                   still_task, windows, write_png_atomic)

INSTALL_HINT = 'the --ray option needs Ray: pip install ray (or, in a clone of this repository, pip install ".[ray]")'
DEFAULT_MAX_RETRIES = 3

FramesFn = Callable[..., List[np.ndarray]]
DoneFn = Callable[[int, int], None]  # (items written so far in this run, items to write in this run)


def _ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
    try:
        import ray
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return ray


class Cluster:
    """A Ray connection for one job: ``auto`` (this machine's running cluster, or a new local one),
    ``local`` (a new local one), or an address (``ray://host:10001``, ``host:6379``).

    Disconnects (and stops a cluster it started) on exit; a Ray session already open in this
    process is used as it is and left open.
    """

    def __init__(self, address: str = "auto", **init_kwargs: Any) -> None:
        if not isinstance(address, str) or not address:
            raise ValueError(f"the Ray address must be 'auto', 'local', ray://HOST:PORT or HOST:PORT; got {address!r}")
        self.address, self.init_kwargs = address, init_kwargs
        self.ray = _ray()
        self.owned = False

    def __enter__(self) -> "Cluster":
        ray = self.ray
        if ray.is_initialized():
            return self
        start = dict(include_dashboard=False, log_to_driver=True, configure_logging=False)
        start.update(self.init_kwargs)  # e.g. num_cpus: only for a cluster this call starts
        join = dict(log_to_driver=True, configure_logging=False)
        if self.address == "local":
            ray.init(**start)
        elif self.address == "auto":
            try:
                ray.init(address="auto", **join)
            except ConnectionError:  # no running cluster on this machine: start one
                ray.init(**start)
        else:
            try:
                ray.init(address=self.address, **join)
            except ConnectionError as exc:
                raise ValueError(f"cannot reach the Ray cluster at {self.address!r}: {exc}") from None
        self.owned = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            self.ray.shutdown()

    def placement(self, device: str) -> Tuple[Dict[str, float], str]:
        """Resources of one task and the device it runs on: a GPU each where the cluster has GPUs."""
        gpus = self.ray.cluster_resources().get("GPU", 0)
        if gpus and device in ("auto", "cuda"):
            return {"num_gpus": 1, "num_cpus": 1}, "cuda"
        if device not in ("auto", "cpu"):
            raise ValueError(f"--device {device} was asked for, but the Ray cluster has no GPU; use auto or cpu")
        return {"num_cpus": 1}, "cpu"

    def slots(self, resources: Dict[str, float]) -> int:
        """How many tasks run at once (tasks in flight are kept to twice that)."""
        have = self.ray.cluster_resources()
        key = "GPU" if resources.get("num_gpus") else "CPU"
        return max(1, int(have.get(key, 1)))


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """The body of every task: ``fn(*args)`` (``fn`` travels with the task, so any callable works)."""
    return fn(*args)


def _drain(ray, pending: Dict[Any, Any], keep: int, on_result: Callable[[Any, Any], None]) -> None:
    """Wait for tasks until at most ``keep`` are in flight, handing each result over as it lands."""
    while len(pending) > keep:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            item = pending.pop(ref)
            on_result(item, ray.get(ref))


def _cancel(ray, pending: Dict[Any, Any]) -> None:
    for ref in pending:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # already finished or gone
            pass


def run_frames_ray(spec: EngineSpec, frames: Iterable[np.ndarray], count: int, out: FrameFolder,
                   chunk_size: int, lead_in: int, address: str = "auto",
                   max_retries: int = DEFAULT_MAX_RETRIES, progress: Optional[DoneFn] = None,
                   task_fn: Optional[FramesFn] = None, **init_kwargs: Any) -> int:
    """Make the missing frames of a sequence as Ray tasks, one per chunk; returns how many were written.

    ``frames`` are the ``count`` inputs (uint8, at the output size), read once by the driver. Each
    chunk of ``chunk_size`` frames starts ``lead_in`` frames early (outputs dropped), exactly as a
    local run with the same chunk size does, so both give the same frames. ``progress(done, count)``
    counts the clip's frames, those already written included. ``task_fn`` replaces
    :func:`nst_core.jobs.frames_task` as the task body (same arguments; for tests).
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be ≥ 0; got {max_retries}")
    tasks = plan_chunks(count, chunk_size, lead_in, out.has, out.has_path)
    if not tasks:
        out.clear_paths()
        return 0
    landed = count - sum(t.stop - t.first for t in tasks)  # written before this run
    written = 0

    def on_result(task: ChunkTask, outputs: List[np.ndarray]) -> None:
        nonlocal landed, written
        if len(outputs) != task.stop - task.first:
            raise RuntimeError(f"the task for frames {task.first}–{task.stop - 1} returned {len(outputs)} frames")
        for i, u8 in zip(range(task.first, task.stop), outputs):
            if not out.has(i):
                out.write(i, u8)
                written += 1
            landed += 1
        if progress is not None:
            progress(landed, count)

    with Cluster(address, **init_kwargs) as cluster:
        ray = cluster.ray
        resources, device = cluster.placement(spec.device)
        spec_ref = ray.put(dataclasses.replace(spec, device=device))
        remote = ray.remote(_call).options(max_retries=max_retries, **resources)
        body = task_fn or frames_task
        in_flight = 2 * cluster.slots(resources)
        pending: Dict[Any, ChunkTask] = {}
        try:
            for task, window in zip(tasks, windows(frames, [(t.input_start, t.stop) for t in tasks])):
                previous = out.read_path(task.first - 1) if task.carry else None
                pending[remote.remote(body, spec_ref, task, list(window), previous)] = task
                _drain(ray, pending, in_flight - 1, on_result)
            _drain(ray, pending, 0, on_result)
        except BaseException:
            _cancel(ray, pending)
            raise
    out.clear_paths()
    return written


def run_stills_ray(spec: EngineSpec, files: List[str], out_dir: str, address: str = "auto",
                   max_retries: int = DEFAULT_MAX_RETRIES, progress: Optional[DoneFn] = None,
                   **init_kwargs: Any) -> int:
    """Stylise each image of ``files`` into ``out_dir/<name>.png`` as a Ray task (existing outputs are
    kept); returns how many were written."""
    if max_retries < 0:
        raise ValueError(f"max_retries must be ≥ 0; got {max_retries}")
    todo = [f for f in files if not os.path.isfile(still_output(out_dir, f))]
    written = 0

    def on_result(path: str, output: np.ndarray) -> None:
        nonlocal written
        write_png_atomic(output, still_output(out_dir, path))
        written += 1
        if progress is not None:
            progress(written, len(todo))

    if not todo:
        return 0
    with Cluster(address, **init_kwargs) as cluster:
        ray = cluster.ray
        resources, device = cluster.placement(spec.device)
        spec_ref = ray.put(dataclasses.replace(spec, device=device))
        remote = ray.remote(_call).options(max_retries=max_retries, **resources)
        in_flight = 2 * cluster.slots(resources)
        pending: Dict[Any, str] = {}
        try:
            for path in todo:
                pending[remote.remote(still_task, spec_ref, load_still(path, spec.size))] = path
                _drain(ray, pending, in_flight - 1, on_result)
            _drain(ray, pending, 0, on_result)
        except BaseException:
            _cancel(ray, pending)
            raise
    return written
