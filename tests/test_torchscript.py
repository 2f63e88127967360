"""TorchScript models: layer outputs read from the graph equal the eager module's, and
caricatures of a scripted model equal those of the module it was scripted from."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from lib.analysis.caricature import CaricatureParams, compute, layer_fn, resolve_layer
from lib.features.backbones.torchscript import ScriptLayerFn, load_torchscript
from lib.runtime.errors import GapscopeError
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


class Gate(nn.Module):
    """Control flow the layer owns: the if is part of its call, its output is readable."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        if x.mean() > 0.1:
            x = self.conv(x)
        return x.relu()


class Flow(nn.Module):
    """Layers called only inside an if (`inner`), last inside a loop of run-time length
    (`block`), inside an if then again after it (`twice`), in a loop of fixed length, which
    freezing unrolls (`unrolled`), and one that holds an if (`gate`)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.gate = Gate()
        self.inner = nn.Conv2d(4, 4, 1)
        self.twice = nn.Conv2d(4, 4, 1)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.unrolled = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = self.gate(self.stem(x))
        if x.sum() > 0:
            x = self.twice(self.inner(x))
        x = self.twice(x)
        for _ in range(2):
            x = self.unrolled(x)
        x = self.block(x)
        for _ in range(x.size(0)):
            x = self.block(x)
        return x


def test_layers_inside_an_if_or_a_loop_are_read_or_refused(tmp_path):
    torch.manual_seed(5)
    net = Flow().eval()
    scripted = save_script(net, tmp_path / "flow.pt")
    layers = ["stem", "gate", "twice", "unrolled"]
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        got = layer_fn(scripted, layers)(x)
    for name, a, b in zip(layers, got, eager_outputs(net, layers, x), strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6), name
    # the last call runs in a nested block: an earlier call's value would be wrong
    for layer, holder in [("inner", ""), ("block", ""), ("gate.conv", "'gate'")]:
        with pytest.raises(GapscopeError) as e:
            layer_fn(scripted, layer)
        assert f"layer '{layer}' runs inside an if or a loop" in one_line(e)
        assert (f"such as {holder}" in one_line(e)) == bool(holder)


class Counted(nn.Module):
    """Changes an attribute in forward: freezing keeps it, and the output depends on it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x) * self.calls


class RunningMean(nn.Module):
    """Updates a buffer in place in forward, outside any `if self.training`."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1))

    def forward(self, x):
        self.mean.mul_(0.5).add_(x.mean())
        return x - self.mean


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch.jit is deprecated upstream

    @torch.jit.interface
    class AnyConv(nn.Module):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            pass


class PickedHead(nn.Module):
    """Picks a submodule at run time, which torch cannot freeze."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList([nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 3)])

    def forward(self, x):
        head: AnyConv = self.heads[x.size(0) % 2]
        return head.forward(x)


def test_models_that_change_their_state_are_refused_and_train_mode_is_eval(tmp_path):
    torch.manual_seed(6)
    x = torch.rand(2, 3, 8, 8)
    stateful = [
        (Counted(), "conv", "'calls'"),
        (nn.Sequential(RunningMean(), nn.Conv2d(3, 4, 1)), "1", "'0.mean'"),
    ]
    for net, layer, state in stateful:
        scripted = save_script(net, tmp_path / "stateful.pt")
        with pytest.raises(GapscopeError) as e:
            layer_fn(scripted, layer)
        assert f"changes its own state ({state}" in one_line(e)
    with pytest.raises(GapscopeError) as e:
        layer_fn(save_script(PickedHead(), tmp_path / "picked.pt"), "heads.0")
    assert "cannot freeze" in one_line(e) and "ModuleContainerIndex" in one_line(e)
    # `if self.training` updates (BatchNorm's statistics, dropout) fold away in eval mode:
    # a model saved in train mode gives the eval values and keeps its state and mode
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5))
    net[1].running_mean.fill_(0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net.train())
    before = scripted[1].running_mean.clone()
    with torch.no_grad():
        bn, drop = ScriptLayerFn(scripted, ["1", "2"])(x)
        assert torch.equal(scripted[1].running_mean, before) and scripted[1].training
        assert torch.allclose(bn, net.eval()[:2](x), atol=1e-6) and torch.equal(bn, drop)


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
