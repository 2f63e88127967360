"""TorchScript models: layer outputs read from the graph equal the eager module's, and
caricatures of a scripted model equal those of the module it was scripted from."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from lib.caricature import CaricatureParams, compute, layer_fn, resolve_layer
from lib.errors import GapscopeError
from lib.backbones.torchscript import ScriptLayerFn, load_torchscript
from tests.conftest import one_line
from tests.test_caricature import HALF, MILD, smooth_images, tiny_cnn


def save_script(module: nn.Module, path) -> torch.jit.ScriptModule:
    """Script and save as a user's training code would, then load it back as gapscope does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream
        torch.jit.save(torch.jit.script(module.eval()), str(path))
    return load_torchscript(path)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(3)
    net = torchvision.models.resnet18(num_classes=5).eval()
    return net, save_script(net, tmp_path_factory.mktemp("ts") / "resnet18.pt")


def eager_outputs(net: nn.Module, layers: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    """What forward hooks see on the eager module (last call of a module that runs twice)."""
    seen, handles = {}, []
    for name in layers:

        def keep(_module, _inputs, output, name=name):
            seen[name] = output.clone()

        handles.append(net.get_submodule(name).register_forward_hook(keep))
    with torch.no_grad():
        net(x)
    for handle in handles:
        handle.remove()
    return [seen[name] for name in layers]


def test_layer_outputs_equal_the_eager_modules(resnet):
    net, scripted = resnet
    layers = ["conv1", "layer1.0.bn2", "layer1.0.relu", "layer2.1", "layer3", "avgpool", "fc"]
    fn = ScriptLayerFn(scripted, layers)
    for shape in [(2, 3, 64, 64), (3, 3, 48, 40)]:  # batch and size are not baked in
        x = torch.rand(*shape)
        with torch.no_grad():
            got = fn(x)
        for name, a, b in zip(layers, got, eager_outputs(net, layers, x), strict=True):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6), name
    # bn2 is followed by an in-place add and ReLU: the tapped copy keeps its negatives
    assert (fn(torch.rand(1, 3, 32, 32))[1] < 0).any()


def test_gradients_reach_the_input_and_not_the_weights(resnet):
    _, scripted = resnet
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    (act,) = ScriptLayerFn(scripted, ["layer2"])(x)
    act.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in scripted.parameters())


def test_caricatures_of_a_scripted_model_equal_the_eager_ones(tmp_path):
    eager = tiny_cnn()
    scripted = save_script(tiny_cnn(), tmp_path / "tiny.pt")
    imgs = smooth_images(2)
    p = CaricatureParams(size=32, input_size=32, steps=40, cossim_pow=1, **MILD)
    a = compute(eager, ["2", "4"], imgs, HALF, HALF, p)
    b = compute(scripted, ["2", "4"], imgs, HALF, HALF, p)
    assert b.layers == a.layers == ("2", "2", "4", "4")
    np.testing.assert_allclose(b.images, a.images, atol=1e-5)
    np.testing.assert_allclose(b.cosine, a.cosine, atol=1e-5)
    assert (b.cosine > b.start_cosine + 0.2).all()


class Branchy(nn.Module):
    """A module with one submodule it never calls and one that returns a tuple."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.unused = nn.Conv2d(4, 4, 1)
        self.split = Split()

    def forward(self, x):
        a, b = self.split(self.stem(x))
        return a + b


class Split(nn.Module):
    def forward(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :2], x[:, 2:]


def test_layers_that_cannot_be_read_are_clear_errors(tmp_path, resnet):
    scripted = save_script(Branchy(), tmp_path / "branchy.pt")
    assert resolve_layer(scripted, "stem_0") == "stem.0"  # underscore names work too
    (out,) = layer_fn(scripted, "stem_0")(torch.rand(1, 3, 8, 8))
    assert out.shape == (1, 4, 6, 6)
    with pytest.raises(GapscopeError) as e:
        layer_fn(scripted, "unused")
    assert "never runs" in one_line(e)
    with pytest.raises(GapscopeError) as e:
        layer_fn(scripted, "split")
    assert "Tensor, Tensor rather than one tensor" in one_line(e)
    with pytest.raises(GapscopeError) as e:
        layer_fn(resnet[1], "layer3.1.conv9")
    assert "layer3.1.conv1" in one_line(e)


def test_files_that_are_not_torchscript_are_clear_errors(tmp_path):
    state = tmp_path / "weights.pth"
    torch.save(tiny_cnn().state_dict(), state)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model at all")
    for path, words in [
        (state, "not a TorchScript file"),
        (garbage, "not a TorchScript file"),
        (tmp_path / "missing.pt", "does not exist"),
    ]:
        with pytest.raises(GapscopeError) as e:
            load_torchscript(path)
        assert words in one_line(e) and str(path) in one_line(e)
