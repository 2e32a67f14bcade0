"""The ``nst`` command's torch thread count (``--threads``).

The command owns its process, so it may choose: with torch's default (one intra-op thread per core)
a machine that is already busy is several times slower than with one thread, because the OpenMP team
waits for its slowest thread (``bench/threads.py``). ``auto`` gives torch only the cores the load
average leaves free. The engine (nst_core's functions) and the ComfyUI nodes never change the count.
Results are bit-identical only for the same thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Iterator, Optional, Tuple, Union

import torch

AUTO = "auto"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # set by the user: torch already follows it


def threads_arg(text: str) -> Union[int, str]:
    """``--threads``: ``auto`` or a whole number ≥ 1."""
    if text == AUTO:
        return AUTO
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a whole number ≥ 1, got {text!r}")
    return int(text)


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """``--threads auto|N`` on a subcommand."""
    p.add_argument("--threads", type=threads_arg, default=AUTO, metavar="auto|N",
                   help="torch threads on the CPU; auto (default): the cores the load average leaves free (one on "
                        "a busy machine), or OMP_NUM_THREADS if set. Results are bit-identical only for the same "
                        "count")


def _free_cpus() -> Tuple[int, Optional[float]]:
    """(CPUs this process may use, the 1-minute load average or None where the OS has none)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    try:
        load: Optional[float] = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        load = None
    return cpus, load


def choose_threads(requested: Union[int, str], default: int, cpus: int, load: Optional[float],
                   env_set: bool) -> int:
    """The intra-op thread count for ``--threads requested``.

    ``auto``: ``default`` (torch's, one per core, or the environment's) when the environment sets it or the
    load is unknown; otherwise the CPUs the load average leaves free, rounded, at least one, at most ``default``.
    """
    if requested != AUTO:
        return int(requested)
    if env_set or load is None:
        return default
    return max(1, min(default, int(cpus - load + 0.5)))


def resolve_threads(requested: Union[int, str]) -> Tuple[int, str]:
    """:func:`choose_threads` for this process and machine now, and a note when ``auto`` chose fewer than
    torch's default (empty otherwise)."""
    cpus, load = _free_cpus()
    default = torch.get_num_threads()
    count = choose_threads(requested, default, cpus, load, any(os.environ.get(v) for v in THREAD_ENV))
    note = (f"the machine is busy (load {load:.1f} on {cpus} CPUs): torch runs {count} thread(s), not {default} "
            "(--threads N to choose)") if requested == AUTO and count < default else ""
    return count, note


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[int]:
    """Run the block with ``count`` intra-op threads; the previous count comes back afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)
