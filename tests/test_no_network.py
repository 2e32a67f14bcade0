"""No network: with every socket entry point blocked, the engine and the node pack import, load the bundled
original VGG19 and run a transfer, and nothing ever tries to connect, resolve a name or download."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent(
    r"""
    import json, os, socket, sys

    attempts = []

    def refuse(name):
        def blocked(*args, **kwargs):
            attempts.append(name)
            raise OSError(f"network access blocked by the test ({name})")
        return blocked

    for name in ("connect", "connect_ex", "sendto", "sendmsg"):
        setattr(socket.socket, name, refuse("socket." + name))
    for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        setattr(socket, name, refuse(name))

    # self-check: the block is live
    try:
        socket.create_connection(("example.com", 80), timeout=1)
    except OSError:
        pass
    assert attempts == ["create_connection"], attempts
    attempts.clear()

    root = sys.argv[1]
    sys.path.insert(0, root)
    import torch
    torch.set_num_threads(1)

    def comfy_modules():
        return sorted(m for m in sys.modules if m.split(".")[0].startswith("comfy") or m == "folder_paths")

    before = set(sys.modules)
    import nst_core  # the engine alone
    after_core = comfy_modules()
    assert nst_core.__file__.startswith(root), nst_core.__file__

    g = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, 32, 32, generator=g), torch.rand(1, 3, 32, 32, generator=g)
    ext = nst_core.load_extractor()  # the bundled original VGG19
    assert ext.weights_name == "original"
    out = nst_core.transfer(ext, content, style, preset="fast", content_layer="relu2_1",
                            style_layers=["relu1_1", "relu2_1"], steps=2, min_size=10000)
    core_ok = tuple(out.shape) == (1, 3, 32, 32) and bool(torch.isfinite(out).all())

    # the node pack, loaded the way ComfyUI loads a custom node folder
    import importlib, importlib.util
    spec = importlib.util.spec_from_file_location("nst_pack_offline", os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["nst_pack_offline"] = pack
    spec.loader.exec_module(pack)
    nodes = {k: v() for k, v in pack.NODE_CLASS_MAPPINGS.items()}
    with torch.inference_mode():
        (pext,) = nodes["NST_LoadVGGExtractor"].load("original VGG19 (bundled)", "vgg19", "max", "replicate")
        (ct,) = nodes["NST_ContentTarget"].build(pext, content.movedim(1, -1), "relu2_1", 1.0)
        (st,) = nodes["NST_GramStyleTarget"].build(pext, style.movedim(1, -1), "relu1_1,relu2_1,relu3_1", "", "",
                                                    "gram", 1.0)
        (img,) = nodes["NST_StyleTransferOptimize"].run(pext, "fast", 2, 1.0, 1.0, 1.0, 32, "auto", 0,
                                                        content_target=ct, style_target=st)
    node_ok = tuple(img.shape) == (1, 32, 32, 3) and bool(torch.isfinite(img).all())

    print(json.dumps({"attempts": attempts, "comfy_after_core": after_core, "comfy_after_pack": comfy_modules(),
                      "core_ok": core_ok, "node_ok": node_ok,
                      "url_modules": sorted(m for m in set(sys.modules) - before
                                            if m in ("requests", "urllib3", "httpx", "aiohttp"))}))
    """
)


def test_no_network_import_and_transfer_with_sockets_blocked(tmp_path):
    caches = {name: tmp_path / name for name in ("torch_home", "xdg_cache", "hf_home")}
    for path in caches.values():
        path.mkdir()
    env = dict(os.environ, TORCH_HOME=str(caches["torch_home"]), XDG_CACHE_HOME=str(caches["xdg_cache"]),
               HF_HOME=str(caches["hf_home"]), OMP_NUM_THREADS="1",
               # a proxy that does not exist: any HTTP client that slipped past the socket block would fail loudly
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, ROOT], capture_output=True, text=True, timeout=180,
                          env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempts"] == [], f"network access was attempted: {report['attempts']}"
    assert report["comfy_after_core"] == [], f"`import nst_core` imported {report['comfy_after_core']}"
    assert report["comfy_after_pack"] == []  # outside ComfyUI the bridge's import fails cleanly
    assert report["core_ok"] and report["node_ok"]
    assert report["url_modules"] == [], f"an HTTP client was imported: {report['url_modules']}"
    for name, path in caches.items():
        assert not any(path.iterdir()), f"something was written to the {name} cache: {list(path.iterdir())}"
