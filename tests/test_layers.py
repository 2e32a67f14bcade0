"""nst_core.layers: paper names of the VGG ``features`` modules, their indices and validation."""

from __future__ import annotations

import pytest
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from nst_core import layer_names
from nst_core.layers import layer_channels, layer_index, min_input_edge, parse_layers, pools_before

TV_CFG = {"vgg19": "E", "vgg16": "D"}


def test_layer_counts():
    assert len(layer_names("vgg19")) == 37
    assert len(layer_names("vgg16")) == 31
    assert layer_names() == layer_names("vgg19")


@pytest.mark.parametrize("arch", ["vgg19", "vgg16"])
def test_names_are_unique_and_well_formed(arch):
    names = layer_names(arch)
    assert len(set(names)) == len(names)
    assert names[0] == "conv1_1" and names[-1] == "pool5"
    assert sum(n.startswith("pool") for n in names) == 5
    # every conv is directly followed by its relu
    for i, n in enumerate(names):
        if n.startswith("conv"):
            assert names[i + 1] == "relu" + n[4:]


@pytest.mark.parametrize(
    "name, index",
    [("conv1_1", 0), ("relu1_1", 1), ("pool1", 4), ("relu2_1", 6), ("relu3_1", 11), ("relu4_1", 20),
     ("relu4_2", 22), ("conv5_1", 28), ("relu5_1", 29), ("relu5_4", 35), ("pool5", 36)],
)
def test_vgg19_indices(name, index):
    assert layer_index("vgg19", name) == index
    assert layer_names("vgg19")[index] == name


@pytest.mark.parametrize("name, index", [("relu4_2", 20), ("conv5_1", 24), ("relu5_3", 29), ("pool5", 30)])
def test_vgg16_indices(name, index):
    assert layer_index("vgg16", name) == index


@pytest.mark.parametrize("arch", ["vgg19", "vgg16"])
def test_positions_match_torchvision(arch):
    """Each name sits where torchvision's ``features`` has a module of that kind and width."""
    tv = make_layers(cfgs[TV_CFG[arch]])
    names = layer_names(arch)
    assert len(tv) == len(names)
    for name, module in zip(names, tv):
        kind = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d}[name[:4]]
        assert isinstance(module, kind), name
        if isinstance(module, nn.Conv2d):
            assert module.out_channels == layer_channels(name)


@pytest.mark.parametrize(
    "bad, nearest",
    [("relu4_3x", "relu4_3"), ("rleu4_2", "relu4_2"), ("relu42", "relu4_2"), ("pool6", "pool5"), ("Conv1_1", "conv1_1")],
)
def test_misspelt_names_suggest_the_nearest(bad, nearest):
    with pytest.raises(ValueError, match=rf"unknown layer '{bad}'.*Did you mean '{nearest}'"):
        layer_index("vgg19", bad)


def test_unknown_name_without_close_match():
    with pytest.raises(ValueError, match=r"unknown layer 'banana'.*conv1_1, relu4_2, pool5") as err:
        layer_index("vgg19", "banana")
    assert "Did you mean" not in str(err.value)


def test_vgg19_only_layers_are_unknown_for_vgg16():
    layer_index("vgg19", "relu4_4")
    with pytest.raises(ValueError, match="vgg16"):
        layer_index("vgg16", "relu4_4")


def test_non_string_layer_raises_value_error():
    with pytest.raises(ValueError):
        layer_index("vgg19", 22)


def test_unknown_arch():
    with pytest.raises(ValueError, match="vgg11"):
        layer_names("vgg11")


def test_parse_layers_accepts_strings_and_lists():
    assert parse_layers("relu1_1, relu2_1;relu3_1,") == ["relu1_1", "relu2_1", "relu3_1"]
    assert parse_layers([" relu4_2 ", "conv5_1"]) == ["relu4_2", "conv5_1"]


@pytest.mark.parametrize("empty", ["", " , ;", [], ()])
def test_parse_layers_rejects_empty(empty):
    with pytest.raises(ValueError, match="empty"):
        parse_layers(empty)


def test_parse_layers_rejects_a_misspelt_entry():
    with pytest.raises(ValueError, match="relu2_1"):
        parse_layers("relu1_1,rleu2_1")


@pytest.mark.parametrize(
    "layers, edge",
    [(["relu5_1"], 16), (["conv5_1"], 16), (["relu1_1"], 1), (["pool1"], 2), (["relu2_1"], 2),
     (["relu4_2"], 8), (["pool5"], 32), (["relu1_1", "relu5_1", "relu3_1"], 16), ([], 1)],
)
def test_min_input_edge(layers, edge):
    assert min_input_edge("vgg19", layers) == edge


def test_pools_before():
    assert pools_before("vgg19", "relu1_2") == 0
    assert pools_before("vgg19", "pool1") == 1
    assert pools_before("vgg19", "relu5_1") == 4
    assert pools_before("vgg16", "pool5") == 5
