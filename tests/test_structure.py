"""The shape of the code: no import cycles, no function shadowing its module, no process-wide switches."""

from __future__ import annotations

import ast
import os
import re
from typing import Dict, List, Set

import nst_core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("nst_core", "nodes")


def _sources() -> Dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        for name in sorted(os.listdir(os.path.join(ROOT, pkg))):
            if name.endswith(".py"):
                with open(os.path.join(ROOT, pkg, name), encoding="utf-8") as f:
                    out[f"{pkg}.{name[:-3]}"] = f.read()
    return out


def _imports(module: str, source: str) -> Set[str]:
    """Every sibling module ``module`` imports, at the top or inside a function (a lazy import is still a cycle)."""
    pkg = module.split(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(f"{pkg}.{node.module.split('.')[0]}")
            else:
                found.update(f"{pkg}.{a.name}" for a in node.names)
    return found


def test_no_import_cycles_inside_a_package():
    sources = _sources()
    graph = {m: {d for d in _imports(m, s) if d in sources and d != m} for m, s in sources.items()}
    graph = {m: {d for d in deps if not d.endswith("__init__")} for m, deps in graph.items() if not m.endswith("__init__")}

    def cycle_from(start: str) -> List[str]:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return []

    cycles = [c for c in (cycle_from(m) for m in graph) if c]
    assert not cycles, f"import cycles: {cycles}"


def test_no_public_function_shadows_its_module():
    modules = {name[:-3] for name in os.listdir(os.path.join(ROOT, "nst_core")) if name.endswith(".py")}
    clash = sorted(n for n in nst_core.__all__ if n in modules)
    assert not clash, f"nst_core.{clash} are both a module and a function exported by nst_core"


def test_one_progress_name():
    sources = _sources()
    defined = [m for m, s in sources.items() if re.search(r"^class Progress\b", s, re.M)]
    assert defined == ["nst_core.optimizer"] or len(defined) == 1, defined


def test_no_process_wide_switch_outside_precision():
    """TF32 flags, cuDNN autotuning, the default dtype, thread counts and raw CUDA cache calls are the host's.

    The one exception: the ``nst`` command owns its process and sets torch's thread count
    (``nst_core.cli_threads``, scoped to the run); no engine function and no node does.
    """
    banned = re.compile(r"torch\.backends\.[\w.]+\s*=(?!=)|set_default_dtype|set_float32_matmul_precision|"
                        r"torch\.cuda\.empty_cache|torch\.set_num_threads")
    threads = re.compile(r"torch\.set_num_threads")
    offenders = [m for m, s in _sources().items() if m != "nst_core.precision" and banned.search(
        threads.sub("", s) if m == "nst_core.cli_threads" else s)]
    assert not offenders, offenders
    users = sorted(m for m, s in _sources().items() if threads.search(s))
    assert users == ["nst_core.cli_threads", "nst_core.precision"], users
