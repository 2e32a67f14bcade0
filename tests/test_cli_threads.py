"""nst_core.cli_threads: the command's torch thread count (``--threads auto|N``), scoped to the run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import nst_core.cli as cli
import nst_core.cli_threads as cli_threads
from nst_core.cli import build_parser, main
from nst_core.cli_threads import AUTO, choose_threads


@pytest.mark.parametrize("requested, default, cpus, load, env_set, expected", [
    (3, 2, 2, 9.0, False, 3),        # --threads N is obeyed, busy or not
    (AUTO, 2, 2, 0.2, False, 2),     # a quiet 2-core machine: torch's default
    (AUTO, 2, 2, 1.3, False, 1),     # another process keeps one core busy: one thread
    (AUTO, 2, 2, 9.0, False, 1),     # a shared machine at load 9: one thread
    (AUTO, 8, 16, 3.0, False, 8),    # never above torch's default (one per physical core)
    (AUTO, 8, 8, 3.6, False, 4),     # the cores left free
    (AUTO, 2, 2, 9.0, True, 2),      # OMP_NUM_THREADS set by the user: torch already follows it
    (AUTO, 4, 4, None, False, 4),    # no load average (Windows): torch's default
])
def test_choose_threads(requested, default, cpus, load, env_set, expected):
    assert choose_threads(requested, default, cpus, load, env_set) == expected


@pytest.fixture()
def inputs(tmp_path):
    yy, xx = np.mgrid[0:24, 0:32]
    Image.fromarray(np.stack([xx * 8, yy * 10, (xx + yy) * 4], -1).astype(np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    return tmp_path


@pytest.fixture()
def two_threads():
    """Torch's default of a 2-core machine (the test session itself runs one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _seen_threads(monkeypatch) -> list:
    seen = []
    monkeypatch.setattr(cli, "run", lambda args: seen.append(torch.get_num_threads()))
    return seen


@pytest.mark.parametrize("command", [["transfer", "c.png", "s.png"], ["texture", "s.png"], ["reconstruct", "c.png"],
                                     ["explore", "c.png"]])
def test_threads_option_sets_the_count_for_the_run_and_restores_it(inputs, monkeypatch, two_threads, command):
    seen = _seen_threads(monkeypatch)
    monkeypatch.chdir(inputs)
    assert main(command + ["-o", "o.png", "--threads", "1", "--device", "cpu", "--quiet"]) == 0
    assert seen == [1] and torch.get_num_threads() == 2


def test_auto_takes_one_thread_on_a_busy_machine_and_says_so(inputs, monkeypatch, capsys, two_threads):
    seen = _seen_threads(monkeypatch)
    monkeypatch.chdir(inputs)
    for name in cli_threads.THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli_threads, "_free_cpus", lambda: (2, 4.2))
    assert main(["texture", "s.png", "-o", "o.png", "--device", "cpu"]) == 0
    note = capsys.readouterr().err.strip().splitlines()
    assert seen == [1] and torch.get_num_threads() == 2
    assert note == ["nst: the machine is busy (load 4.2 on 2 CPUs): torch runs 1 thread(s), not 2 "
                    "(--threads N to choose)"]
    monkeypatch.setattr(cli_threads, "_free_cpus", lambda: (2, 0.1))  # quiet: torch's default, no note
    assert main(["texture", "s.png", "-o", "o.png", "--device", "cpu"]) == 0
    assert seen == [1, 2] and capsys.readouterr().err == ""


def test_threads_argument_errors_are_one_line(capsys):
    for bad in ("0", "two", "-1"):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["texture", "s.png", "-o", "o.png", "--threads", bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and "--threads" in err[0] and "'auto' or a whole number" in err[0]
    assert build_parser().parse_args(["frames", "in", "s.png", "-o", "out"]).threads == AUTO
