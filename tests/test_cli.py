"""The `nst` command: parsing, the three modes on tiny inputs, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import nst_core.cli as cli
from nst_core.cli import build_parser, main
from nst_core.cli_args import style_layers_and_weights
from nst_core.presets import get_preset
from nst_core.targets import StyleTarget


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    content = tmp_path / "content.png"
    style = tmp_path / "style.png"
    yy, xx = np.mgrid[0:48, 0:64]
    Image.fromarray(np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)).save(content)
    Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(style)
    return content, style


def _run(*args):
    return main([str(a) for a in args])


def test_parser_defaults():
    a = build_parser().parse_args(["transfer", "c.jpg", "s.jpg", "-o", "o.png"])
    assert a.size == 512 and a.preset == "quality" and a.device == "auto" and a.weights == "original"
    assert a.styles == ["s.jpg"] and a.init == "content"
    r = build_parser().parse_args(["reconstruct", "c.jpg", "-o", "o.png"])
    assert r.layer == "relu4_2" and r.init == "gray"  # faint noise: full-range noise stays in the result


def test_transfer_reconstruct_texture_write_images(images, tmp_path, capsys):
    content, style = images
    out = tmp_path / "t.png"
    assert _run("transfer", content, style, style, "--style-blend", "1", "2", "-o", out, "--size", 48,
                "--steps", 2, "--weights", "random", "--quiet", "--preset", "fast") == 0
    assert Image.open(out).size == (48, 36)
    rec = tmp_path / "r.png"
    assert _run("reconstruct", content, "--layer", "relu2_2", "-o", rec, "--size", 40, "--steps", 3,
                "--weights", "random", "--quiet") == 0
    assert Image.open(rec).size == (40, 30)
    tex = tmp_path / "x.png"
    assert _run("texture", style, "-o", tex, "--size", 32, "--steps", 2, "--weights", "random", "--quiet",
                "--save-every", 1) == 0
    assert Image.open(tex).size == (32, 32)
    assert (tmp_path / "x_00001.png").exists()


def test_checkpoint_flag_reaches_the_extractor(images, tmp_path, monkeypatch):
    from nst_core.extractor import Extractor

    seen = []
    real = Extractor.forward

    def spy(self, image, layers, checkpoint=False, compile=False):
        seen.append((checkpoint, compile))
        return real(self, image, layers, checkpoint, compile)

    monkeypatch.setattr(Extractor, "forward", spy)
    content, style = images
    assert _run("transfer", content, style, "-o", tmp_path / "c.png", "--size", 48, "--steps", 2,
                "--weights", "random", "--quiet", "--preset", "fast", "--checkpoint") == 0
    assert (True, False) in seen
    flags = build_parser().parse_args(["texture", "s.jpg", "-o", "o.png", "--compile", "--bf16"])
    assert flags.compile is True and flags.bf16 is True


@pytest.mark.parametrize("args, message", [
    (["transfer", "missing.jpg", "{style}", "-o", "{out}"], "image not found"),
    (["transfer", "{content}", "{style}", "-o", "{out}", "--content-layer", "relu4_3x"], "Did you mean"),
    (["transfer", "{content}", "{style}", "-o", "{out}", "--style-layers", ","], "layer list is empty"),
    (["transfer", "{content}", "{style}", "-o", "{out}", "--style-blend", "1", "2"], "one per image"),
    (["transfer", "{content}", "{style}", "-o", "{out}", "--weights", "nope.pth"], "not found"),
    (["reconstruct", "{content}", "-o", "{out}", "--size", "8", "--layer", "relu5_1"], "too small"),
    (["transfer", "{content}", "{style}", "-o", "{out}", "--init", "sparkles"], "--init"),
    (["transfer", "{content}", "{style}", "-o", "{out}", "--style-layer-weights", "1", "2"],
     "--style-layer-weights has 2 number(s) for 5 style layers"),
    (["texture", "{style}", "-o", "{out}", "--style-layers", "relu1_1,relu2_1", "--style-layer-weights", "1", "2",
      "3"], "--style-layer-weights has 3 number(s) for 2 style layers (relu1_1,relu2_1)"),
])
def test_bad_input_exits_2_with_one_line(images, tmp_path, capsys, args, message):
    content, style = images
    argv = [a.format(content=content, style=style, out=tmp_path / "o.png") for a in args]
    argv += ["--weights", "random"] if "--weights" not in argv else []
    assert main(argv + ["--quiet", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nst: error:") and message in err[0]
    assert not (tmp_path / "o.png").exists()


def test_negative_weight_is_rejected_by_the_parser(images, tmp_path):
    content, style = images
    with pytest.raises(SystemExit) as exc:
        main(["transfer", str(content), str(style), "-o", str(tmp_path / "o.png"), "--style-weight", "-1"])
    assert exc.value.code == 2


@pytest.mark.parametrize("argv, prog", [
    ([], "nst"),
    (["paint", "c.jpg"], "nst"),
    (["transfer", "c.jpg"], "nst transfer"),
    (["transfer", "c.jpg", "s.jpg", "-o", "o.png", "--size", "big"], "nst transfer"),
    (["transfer", "c.jpg", "s.jpg", "-o", "o.png", "--colour", "match"], "nst transfer"),
    (["reconstruct", "c.jpg", "-o", "o.png", "--layer"], "nst reconstruct"),
    (["texture", "s.jpg", "-o", "o.png", "--steps", "0"], "nst texture"),
    (["texture", "s.jpg", "-o", "o.png", "--preset", "slow"], "nst texture"),
    (["frames", "clip.mp4", "s.jpg"], "nst frames"),
    (["frames", "clip.mp4", "s.jpg", "-o", "out", "--temporal-weight", "-1"], "nst frames"),
    (["explore", "c.jpg", "-o", "g.png", "--bogus"], "nst explore"),
    (["explore", "c.jpg", "-o", "g.png", "--size", "1.5"], "nst explore"),
])
def test_argparse_errors_are_one_line_with_a_hint_to_help(argv, prog, capsys):
    """Not the 21 lines of usage: one line naming the subcommand, the problem and where the help is."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exc.value.code == 2 and captured.out == ""
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"{prog}: error: ") and lines[0].endswith(f"(see {prog} --help)"), lines[0]


def test_python_dash_m_runs_the_same_command():
    res = subprocess.run([sys.executable, "-m", "nst_core", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "transfer" in res.stdout and "reconstruct" in res.stdout


# --------------------------------------------------------------------------- --style-layer-weights


@pytest.fixture()
def style_target_weights(monkeypatch):
    """The layer weights every StyleTarget.create call receives."""
    seen = []
    real = StyleTarget.create

    def spy(extractor, images, layers, layer_weights=None, *a, **k):  # (both callers pass them by position)
        seen.append((list(layers), None if layer_weights is None else list(layer_weights)))
        return real(extractor, images, layers, layer_weights, *a, **k)

    monkeypatch.setattr(StyleTarget, "create", spy)
    return seen


@pytest.mark.parametrize("command", ["transfer", "texture"])
def test_style_layer_weights_reach_the_style_target(images, tmp_path, style_target_weights, command):
    content, style = images
    inputs = [content, style] if command == "transfer" else [style]
    common = ["-o", tmp_path / "o.png", "--size", 32, "--steps", 1, "--weights", "random", "--quiet",
              "--preset", "fast"]
    assert _run(command, *inputs, *common, "--style-layers", "relu1_1,relu2_1",
                "--style-layer-weights", "3", "0.5") == 0
    assert _run(command, *inputs, *common) == 0  # the preset's layers and weights
    assert _run(command, *inputs, *common, "--style-layers", "relu1_1,relu2_1") == 0  # other layers: equal
    preset = get_preset("fast")
    assert style_target_weights == [
        (["relu1_1", "relu2_1"], [3.0, 0.5]),
        (list(preset.style_layers), list(preset.style_layer_weights)),
        (["relu1_1", "relu2_1"], None),
    ]


def test_naming_the_preset_layers_keeps_the_preset_weights():
    """--style-layers with the preset's own layers means the same as leaving it out (as on the node)."""
    preset = get_preset("quality")
    named = build_parser().parse_args(["transfer", "c.jpg", "s.jpg", "-o", "o.png",
                                       "--style-layers", ",".join(preset.style_layers)])
    plain = build_parser().parse_args(["transfer", "c.jpg", "s.jpg", "-o", "o.png"])
    assert style_layers_and_weights(named) == style_layers_and_weights(plain) == (
        list(preset.style_layers), list(preset.style_layer_weights))


def test_a_negative_style_layer_weight_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["texture", "s.jpg", "-o", "o.png", "--style-layer-weights", "1", "-2"])
    assert exc.value.code == 2 and "--style-layer-weights" in capsys.readouterr().err


# --------------------------------------------------------------------------- the same defaults as the nodes


def _node_defaults(pack, node: str) -> dict:
    spec = pack.NODE_CLASS_MAPPINGS[node].INPUT_TYPES()
    return {k: v[1]["default"] for part in spec.values() for k, v in part.items() if "default" in v[1]}


NODES = ("NST_LoadVGGExtractor", "NST_ContentTarget", "NST_GramStyleTarget", "NST_StyleTransferOptimize")
CLI_NAME = {"schedule": "preset", "init_seed": "seed", "architecture": "arch"}  # node input -> CLI option
# node inputs whose default is spelt differently on the CLI (checked one by one below) or has no CLI option
SPELT_DIFFERENTLY = {"steps", "content_weight", "style_weight", "tv_weight", "init", "weights", "statistic",
                     "layer", "layers", "custom_layers", "layer_weights", "weight", "blend_weight", "mask_strength",
                     "tile", "style_balance", "coarse_scale"}


@pytest.mark.parametrize("command", ["transfer", "texture"])
def test_cli_defaults_are_the_nodes_defaults(pack, command):
    """`nst transfer a b -o c` (or `nst texture b -o c`) makes what a freshly added node graph makes."""
    args = build_parser().parse_args([command, *(["a.jpg"] if command == "transfer" else []), "b.jpg", "-o", "c"])
    loader, content, style, opt = (_node_defaults(pack, n) for n in NODES)
    preset = get_preset(args.preset)

    # inputs with the same meaning on both sides: equal defaults
    compared = set()
    for defaults in (loader, content, style, opt):
        for name, value in defaults.items():
            option = CLI_NAME.get(name, name)
            if name not in SPELT_DIFFERENTLY and hasattr(args, option):
                assert getattr(args, option) == value, (name, value, getattr(args, option))
                compared.add(option)
    assert {"preset", "seed", "size", "arch", "pooling", "edge_padding", "style_scale"} <= compared
    assert args.size == 512
    # the network
    assert args.weights == "original" and loader["weights"] == "original VGG19 (bundled)"
    # the optimiser: steps and weight multipliers 0 / 1.0 on the node mean the preset's, as None on the CLI
    assert args.steps is None and opt["steps"] == 0
    assert args.tile == "auto" and opt["tile"] == 0  # tiles only when the whole image does not fit
    assert args.tv_weight is None and opt["tv_weight"] == 1.0
    assert getattr(args, "style_balance", None) is None and opt["style_balance"] == 1.0  # the preset's
    assert args.coarse_scale is None and opt["coarse_scale"] == 0.0  # the preset's
    assert args.optimizer is None  # the node has no optimiser choice: the preset's
    # with its default 'auto' the node starts from the content image, or from noise for a texture
    assert opt["init"] == "auto" and args.init == ("content" if command == "transfer" else "noise")
    # the style target
    target_nodes = sys.modules[pack.__name__ + ".nodes.target_nodes"]
    node_layers, node_weights = target_nodes.resolve_layers(style["layers"], style["custom_layers"],
                                                            style["layer_weights"])
    assert style_layers_and_weights(args) == (node_layers, node_weights)
    assert node_weights == list(preset.style_layer_weights)
    assert (args.statistic or preset.statistic) == style["statistic"]
    assert args.style_blend is None and style["blend_weight"] == 1.0
    if command == "transfer":  # the content target
        assert args.content_weight is None and args.style_weight is None
        assert opt["content_weight"] == opt["style_weight"] == content["weight"] == 1.0
        assert (args.content_layer or preset.content_layer) == content["layer"]


# --------------------------------------------------------------------------- backend failures


BACKEND_ERRORS = [
    (RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
                  "asynchronously reported at some other API call, so the stacktrace below might be incorrect.\n"
                  "For debugging consider passing CUDA_LAUNCH_BLOCKING=1"), 1, "illegal memory access"),
    (NotImplementedError("The operator 'aten::_linalg_eigh.eigenvalues' is not currently implemented for the "
                         "MPS device."), 1, "no kernel"),
    (RuntimeError("The GPU device instance has been suspended. Use GetDeviceRemovedReason to determine the "
                  "appropriate action."), 1, "suspended"),  # DirectML
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total "
                                 "capacity)\nIf reserved but unallocated memory is large ..."), 3, "out of memory"),
    (RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB, max allowed: "
                  "18.13 GB). Tried to allocate 256 MB on private pool."), 3, "out of memory"),
    (RuntimeError("Could not allocate tensor with 1073741824 bytes. There is not enough GPU video memory "
                  "available!"), 3, "out of memory"),  # DirectML
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 68719476736 bytes."), 3, "out of memory"),
    (MemoryError(), 3, "out of memory"),
]


@pytest.mark.parametrize("error, status, words", BACKEND_ERRORS, ids=lambda v: type(v).__name__ if
                         isinstance(v, BaseException) else None)
def test_a_backend_failure_is_one_line_with_advice(images, tmp_path, monkeypatch, capsys, error, status, words):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "load_extractor", lambda *a, **k: None)  # no network needed: the job itself fails
    monkeypatch.setattr(cli, "transfer", fail)
    content, style = images
    out = tmp_path / "o.png"
    code = main(["transfer", str(content), str(style), "-o", str(out), "--device", "cpu", "--quiet"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == status != 0
    assert len(lines) == 1 and lines[0].startswith("nst: error: "), captured.err
    assert "Traceback" not in captured.err and words in lines[0]
    assert "try " in lines[0] or "report" in lines[0]
    if status == 3:
        assert "--size (now 512)" in lines[0] and "--checkpoint" in lines[0]
    assert not out.exists() and captured.out == ""


def test_backend_advice_names_the_switches_in_use():
    args = build_parser().parse_args(["texture", "s.jpg", "-o", "o.png", "--device", "mps", "--bf16",
                                      "--checkpoint", "--size", "1024"])
    oom = cli.backend_error_message(RuntimeError("MPS backend out of memory"), args)
    assert "on mps" in oom and "--size (now 1024)" in oom and "--checkpoint" not in oom
    assert "--device cpu" in oom and "without --bf16" in oom
    missing = cli.backend_error_message(NotImplementedError("op not implemented for 'MPS'"), args)
    assert "no kernel" in missing and "PYTORCH_ENABLE_MPS_FALLBACK=1" in missing
    cpu = build_parser().parse_args(["texture", "s.jpg", "-o", "o.png", "--device", "cpu"])
    assert "report" in cli.backend_error_message(RuntimeError("a torch bug"), cpu)


def test_style_masks_make_regions_and_a_count_mismatch_is_one_line(images, tmp_path, monkeypatch, capsys):
    content, style = images
    left = tmp_path / "left.png"
    right = tmp_path / "right.png"
    half = np.zeros((48, 64), np.uint8)
    half[:, :32] = 255
    Image.fromarray(half).save(left)
    Image.fromarray(255 - half).save(right)
    seen = []
    real = cli.transfer

    def spy(*a, **k):
        seen.append((k["style_masks"], k["content_mask"]))
        return real(*a, **k)

    monkeypatch.setattr(cli, "transfer", spy)
    out = tmp_path / "regions.png"
    common = ["--weights", "random", "--size", "32", "--steps", "1", "--quiet", "--content-layer", "relu2_1",
              "--style-layers", "relu1_1,relu2_1", "--device", "cpu"]
    assert _run("transfer", content, style, style, "--style-mask", left, right, "--content-mask", left,
                "-o", out, *common) == 0
    masks, cmask = seen[-1]
    assert [tuple(m.shape) for m in masks] == [(1, 1, 48, 64)] * 2 and float(masks[0][..., :32].min()) == 1.0
    assert cmask is not None and Image.open(out).size == (32, 24)
    assert _run("transfer", content, style, style, "--style-mask", left, "-o", out, *common) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 style masks for 2 style images" in err[0]


@pytest.mark.parametrize("flag, key, on, bad, frames", [("--style-balance", "style_balance", "0", "-1", "0.5"),
                                                         ("--coarse-scale", "coarse_scale", "1", "0.1", "0.75"),
                                                         ("--margin", "margin", "0", "-1", "4")])
def test_a_setting_flag_reaches_the_run_and_the_frames_spec(images, tmp_path, monkeypatch, flag, key, on, bad, frames):
    from nst_core.cli_frames import spec_from_args

    content, style = images
    seen = []
    real = cli.transfer

    def spy(*a, **k):
        seen.append(k.get(key))
        return real(*a, **k)

    monkeypatch.setattr(cli, "transfer", spy)
    common = ["--weights", "random", "--size", "32", "--steps", "1", "--quiet", "--content-layer", "relu2_1",
              "--style-layers", "relu1_1,relu2_1", "--device", "cpu", "-o", tmp_path / "o.png"]
    assert _run("transfer", content, style, flag, on, *common) == 0
    assert _run("transfer", content, style, *common) == 0
    assert seen == [float(on), None]  # None: the preset's
    with pytest.raises(SystemExit) as refused:
        _run("transfer", content, style, flag, bad, *common)
    assert refused.value.code == 2
    args = build_parser().parse_args(["frames", str(tmp_path), str(style), "-o", str(tmp_path / "out"), flag, frames])
    assert dict(spec_from_args(args).settings)[key] == float(frames)
