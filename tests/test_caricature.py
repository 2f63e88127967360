"""Caricatures: parametrisation, transforms, objective, layer names, optimisation, files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from lib.analysis.caricature import (
    COLOR_CORRELATION,
    CaricatureParams,
    FeatureTap,
    backbone_inputs,
    caricatures,
    compute,
    correlate_colors,
    decorrelate_colors,
    default_steps,
    frozen,
    image_param,
    layer_fn,
    layer_names,
    normalizer,
    objective,
    resolve_layer,
    save,
    spectrum_scale,
    target_batch,
    transforms,
)
from lib.features.backbones.base import Backbone
from lib.runtime.errors import GapscopeError
from tests.conftest import one_line

HALF = (0.5, 0.5, 0.5)
# lucid's transforms are sized for 128-px images; these keep the same shape at 32–48 px
MILD = dict(pad=2, jitter=2, jitter_after=1, scales=(0.95, 1.0, 1.05), angles=(-5, 0, 5))


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, 2, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, 1, 1, bias=False),
    ).eval()


def smooth_images(n: int, side: int = 48, seed: int = 0) -> np.ndarray:
    """Random smooth colour patterns (products of low-frequency sines), uint8 NHWC."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, side)
    out = []
    for _ in range(n):
        f, ph = rng.uniform(1, 4, (3, 2)), rng.uniform(0, 6, (3, 2))
        chans = [
            np.sin(2 * np.pi * f[c, 0] * x[:, None] + ph[c, 0])
            * np.cos(2 * np.pi * f[c, 1] * x[None, :] + ph[c, 1])
            for c in range(3)
        ]
        out.append(((np.stack(chans, -1) + 1) / 2 * 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def cnn():
    return tiny_cnn()


@pytest.fixture(scope="module")
def imgs():
    return smooth_images(3)


# --- parametrisation ----------------------------------------------------------------------


@pytest.mark.parametrize("fft", [True, False])
@pytest.mark.parametrize("decorrelate", [True, False])
def test_image_param_shape_and_range(fft, decorrelate):
    gen = torch.Generator().manual_seed(0)
    params, to_rgb = image_param(4, 33, fft, decorrelate, gen)
    x = to_rgb()
    assert x.shape == (4, 3, 33, 33)
    x = x.detach()
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert abs(float(x.mean()) - 0.5) < 0.05  # lucid's start: grey plus faint noise
    assert all(p.requires_grad for p in params)
    assert torch.equal(x[0], x[3])  # one draw shared by every item
    with torch.no_grad():  # large parameters still map into [0, 1]
        params[0].mul_(1e4)
    x = to_rgb().detach()
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and x.std() > 0.1


def test_spectrum_scale():
    s = spectrum_scale(16, 16)
    assert s.shape == (16, 9)  # rfft2 layout
    assert float(s[0, 0]) == pytest.approx(16.0)  # DC: 1 / (1 / max(h, w))
    assert float(s[0, 1]) == pytest.approx(16.0)  # frequency 1/16 gives the same
    assert float(s[0, 8]) == pytest.approx(2.0)  # Nyquist, 1/0.5
    assert float(s[8, 8]) == pytest.approx(1 / np.sqrt(0.5))
    assert spectrum_scale(15, 15).shape == (15, 8)
    assert torch.allclose(spectrum_scale(16, 16, decay_power=2), s**2)


def test_color_decorrelation_round_trip():
    assert np.linalg.norm(COLOR_CORRELATION, axis=0).max() == pytest.approx(1.0)
    assert COLOR_CORRELATION[0, 0] == pytest.approx(0.26 / np.linalg.norm([0.26, 0.27, 0.27]))
    x = torch.randn(2, 3, 5, 7)
    assert torch.allclose(correlate_colors(decorrelate_colors(x)), x, atol=1e-5)
    assert torch.allclose(decorrelate_colors(correlate_colors(x)), x, atol=1e-5)
    e0 = torch.zeros(1, 3, 1, 1)
    e0[0, 0] = 1  # the first decorrelated channel is the (roughly grey) first column
    col = decorrelate_colors(e0).flatten()
    assert torch.allclose(col, torch.tensor(COLOR_CORRELATION[:, 0]))


# --- transforms ---------------------------------------------------------------------------


def test_transform_shapes():
    x = torch.rand(5, 3, 128, 128)
    gen = torch.Generator().manual_seed(0)
    assert transforms(x, CaricatureParams(), gen).shape == (5, 3, 128, 128)  # cropped back
    y = transforms(x, CaricatureParams(crop=False), gen)
    assert y.shape == (5, 3, 128 + 24 - 8 - 4, 128 + 24 - 8 - 4)  # lucid's sizes
    small = CaricatureParams(size=32, crop=False, **MILD)
    assert transforms(torch.rand(2, 3, 32, 32), small, gen).shape == (2, 3, 33, 33)
    rect = torch.rand(1, 3, 40, 50)
    assert transforms(rect, CaricatureParams(**MILD), gen).shape == (1, 3, 40, 50)
    ident = CaricatureParams(pad=0, jitter=0, jitter_after=0, scales=(1.0,), angles=(0,))
    assert torch.equal(transforms(x, ident, gen), x)


def test_transforms_deterministic_per_seed():
    x = torch.rand(2, 3, 64, 64)
    p = CaricatureParams(size=64)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return [transforms(x, p, gen) for _ in range(4)]

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert any(not torch.equal(u, v) for u, v in zip(a, c, strict=True))
    assert not torch.equal(a[0], a[1])  # each call draws anew


def test_transform_uses_no_global_rng():
    x = torch.rand(1, 3, 32, 32)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    transforms(x, CaricatureParams(size=32), torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.random.get_rng_state())


# --- objective ----------------------------------------------------------------------------


def test_objective_values():
    act = torch.tensor([[1.0, 2.0, 2.0], [1.0, 0.0, 0.0]]).view(2, 3, 1, 1)
    target = torch.tensor([[2.0, 0.0, 0.0], [-3.0, 0.0, 4.0]]).view(2, 3, 1, 1)
    dot = torch.tensor([2.0, -3.0])
    assert torch.allclose(objective(act, target, 0), dot)
    cos0 = 2.0 / (3.0 * 2.0)  # item 0: |act| = 3, |target| = 2
    # item 1: cos = -3/5 < 0 is floored at 0.1, as lucid's _dot_cossim does
    got = objective(act, target, 1)
    assert torch.allclose(got, torch.tensor([2.0 * cos0, -3.0 * 0.1]), atol=1e-4)
    assert torch.allclose(objective(act, target, 2), torch.tensor([2 * cos0**2, -0.03]), atol=1e-4)
    assert torch.isfinite(objective(act, target, 0.5)).all()  # no NaN from a negative cosine
    # sums over C·H·W, not per position
    a, t = torch.rand(3, 4, 5, 6), torch.rand(3, 4, 5, 6)
    assert torch.allclose(objective(a, t, 0), (a * t).sum((1, 2, 3)))


# --- layer names --------------------------------------------------------------------------


def test_layer_names_resolve():
    net = torchvision.models.resnet18(weights=None)
    names = layer_names(net)
    assert "" not in names and "layer3.1.conv2" in names and "fc" in names
    assert resolve_layer(net, "layer3.1.conv2") == "layer3.1.conv2"
    assert resolve_layer(net, "layer3_1_conv2") == "layer3.1.conv2"
    assert resolve_layer(net, "layer2_0_downsample_0") == "layer2.0.downsample.0"
    with pytest.raises(GapscopeError) as exc:
        resolve_layer(net, "layer3_1_conv7")
    text = one_line(exc)
    assert "layer3_1_conv7" in text and "layer3.1.conv2" in text
    with pytest.raises(GapscopeError) as exc:
        resolve_layer(net, "zzzzqqq")
    assert "conv1" in one_line(exc)  # with nothing close, a few names are shown


def test_underscore_names_that_are_ambiguous_or_levels():
    net = nn.Module()
    net.a_b = nn.Conv2d(3, 3, 1)
    net.a = nn.Module()
    net.a.b = nn.Conv2d(3, 3, 1)
    assert resolve_layer(net, "a.b") == "a.b" and resolve_layer(net, "a_b") == "a_b"
    net2 = nn.Module()
    net2.x_y = nn.Sequential(nn.Conv2d(3, 3, 1))
    net2.x = nn.Module()
    net2.x.y_0 = nn.Conv2d(3, 3, 1)
    with pytest.raises(GapscopeError) as exc:
        resolve_layer(net2, "x_y_0")
    assert "ambiguous" in one_line(exc)
    assert resolve_layer(net, "p4", levels=("p3", "p4")) == "p4"


def test_default_steps():
    assert default_steps("layer4_2") == 1024 and default_steps("layer4.2") == 1024
    assert default_steps("layer3_3") == 512 and default_steps("p4") == 512


# --- taps ---------------------------------------------------------------------------------


class Pyramid(nn.Module):
    """A Backbone-like module returning {level: map}."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.down = nn.Conv2d(8, 8, 3, 2, 1, bias=False)

    def forward(self, x):
        c3 = torch.relu(self.stem(x))
        return {"c3": c3, "c4": self.down(c3)}


def test_feature_tap_module_and_level():
    net = Pyramid()
    x = torch.rand(2, 3, 16, 16)
    with FeatureTap(net, "down") as tap, FeatureTap(net, "c3", levels=("c3", "c4")) as lv:
        out = net(x)
    assert torch.equal(tap.output, out["c4"]) and torch.equal(lv.output, out["c3"])
    assert not net._forward_hooks and not net.down._forward_hooks  # removed on exit


def test_layer_fn_clones_stops_early_and_keeps_last_call():
    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(1, 3, 32, 32)
    ran = []
    net.layer4.register_forward_hook(lambda *a: ran.append("layer4"))
    with torch.no_grad(), layer_fn(net, ["layer1.0.bn2", "layer1.0.relu"]) as fn:
        first = fn(x)
        assert ran == ["layer4"]  # the first call runs everything and counts calls
        again = fn(x)
        assert ran == ["layer4"]  # later calls stop after layer1
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    bn2, relu = first
    assert (bn2 < 0).any()  # the in-place ReLU after bn2 did not touch the tapped copy
    # layer1.0.relu runs twice per block: the tap keeps the block's output (second call)
    with torch.no_grad():
        block = []
        net.layer1[0].register_forward_hook(lambda m, i, o: block.append(o.clone()))
        fn2 = layer_fn(net, "layer1_0_relu")
        (out,) = fn2(x)
        fn2.close()
    assert torch.equal(out, block[-1])


def test_layer_fn_refuses_inlined_modules():
    from torchvision.models.feature_extraction import create_feature_extractor

    body = create_feature_extractor(
        torchvision.models.resnet18(weights=None), return_nodes={"layer2": "layer2"}
    ).eval()
    with torch.no_grad(), layer_fn(body, ["layer2.0"]) as fn, pytest.raises(GapscopeError) as e:
        fn(torch.rand(1, 3, 32, 32))
    assert "never ran" in one_line(e)
    with torch.no_grad(), layer_fn(body, ["layer2.0.conv1", "layer2"], levels=("layer2",)) as fn:
        conv, stage = fn(torch.rand(1, 3, 32, 32))
    assert conv.shape == stage.shape == (1, 128, 4, 4)


def test_frozen_restores_flags():
    net = tiny_cnn().train()
    net[2].weight.requires_grad_(False)
    net[4].eval()
    with frozen(net):
        assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.training and not net[4].training
    assert [p.requires_grad for p in net.parameters()] == [True, False, True]


# --- optimisation -------------------------------------------------------------------------


def test_deterministic_for_a_seed(cnn, imgs):
    p = CaricatureParams(size=32, input_size=32, steps=20, **MILD)
    a = compute(cnn, "4", imgs[:2], HALF, HALF, p)
    b = compute(cnn, "4", imgs[:2], HALF, HALF, p)
    c = compute(cnn, "4", imgs[:2], HALF, HALF, dataclasses.replace(p, seed=1))
    assert a.images.tobytes() == b.images.tobytes()
    assert a.cosine.tobytes() == b.cosine.tobytes()
    assert not np.array_equal(a.images, c.images)


def test_caricature_reaches_its_target(cnn, imgs):
    """Measured: start 0.27/0.26/0.31, end 0.88/0.84/0.85 (300 steps, cossim_pow 4)."""
    p = CaricatureParams(size=48, input_size=48, steps=300, cossim_pow=4, **MILD)
    r = compute(cnn, "4", imgs, HALF, HALF, p)
    assert r.images.shape == (3, 48, 48, 3) and r.images.dtype == np.float32
    assert r.images.min() >= 0 and r.images.max() <= 1
    assert (r.start_cosine < 0.45).all(), r.start_cosine
    assert (r.cosine > 0.75).all(), r.cosine
    assert (r.cosine - r.start_cosine > 0.4).all()
    assert (r.objective > 0).all() and r.layers == ("4", "4", "4")
    # the parameters, not the model, were optimised; the model is as it was
    assert all(p.grad is None and p.requires_grad for p in cnn.parameters())


def test_batch_items_match_single_runs(cnn, imgs):
    """Items share their start and transforms, and Adam is element-wise: an item's result
    does not depend on its batch (up to float rounding of batched kernels)."""
    p = CaricatureParams(size=32, input_size=32, steps=60, cossim_pow=1, **MILD)
    together = compute(cnn, "4", imgs, HALF, HALF, p)
    for i in (0, 2):
        alone = compute(cnn, "4", imgs[i : i + 1], HALF, HALF, p)
        np.testing.assert_allclose(alone.images[0], together.images[i], atol=1e-4)
        assert alone.cosine[0] == pytest.approx(together.cosine[i], abs=1e-4)
    both = compute(cnn, ["2", "4"], imgs, HALF, HALF, p)  # layers × images in one batch
    assert both.layers == ("2",) * 3 + ("4",) * 3
    np.testing.assert_allclose(both.images[3:], together.images, atol=1e-4)
    assert (both.cosine > both.start_cosine + 0.2).all()


def test_caricatures_with_a_model_fn_and_progress():
    net = tiny_cnn()
    normalize = normalizer(HALF, HALF)
    targets = torch.randn(2, 32, 8, 8)
    steps = []
    with frozen(net):
        r = caricatures(
            lambda x: net(x),
            targets,
            CaricatureParams(size=32, input_size=32, steps=5, **MILD),
            normalize,
            progress=lambda i, n: steps.append((i, n)),
        )
    assert steps == [(i, 5) for i in range(1, 6)] and len(r) == 2 and r.layers == ()
    with pytest.raises(ValueError):  # a target the layer cannot produce
        caricatures(
            net,
            torch.randn(2, 5, 8, 8),
            CaricatureParams(size=32, input_size=32, steps=1),
            normalize,
        )


def test_resnet_by_underscore_name(imgs):
    net = torchvision.models.resnet18(weights=None)
    p = CaricatureParams(size=32, input_size=32, steps=10, cossim_pow=1, **MILD)
    r = compute(net, "layer2_0_conv2", imgs[:1], HALF, HALF, p)
    assert r.layers == ("layer2.0.conv2",) and r.images.shape == (1, 32, 32, 3)
    assert np.isfinite(r.cosine).all() and np.isfinite(r.objective).all()
    assert net.training  # built in train mode, run in eval mode, restored


def test_backbone_levels_and_bgr_normalisation():
    bb = Backbone(
        name="tiny",
        module=Pyramid().eval(),
        levels=("c3", "c4"),
        weights="random",
        pixel_mean=(103.53, 116.28, 123.675),
        pixel_std=(1.0, 1.0, 1.0),
        input_format="BGR",
    )
    kw = backbone_inputs(bb)
    assert kw["bgr"] and kw["levels"] == ("c3", "c4") and kw["mean"][0] == pytest.approx(0.406)
    images = smooth_images(2, side=32)
    # the target `compute` builds is what the backbone itself computes for the image
    with torch.no_grad(), layer_fn(bb.module, "c4", bb.levels) as fn:
        normalize = normalizer(kw["mean"], kw["std"], kw["bgr"])
        (target,) = fn(normalize(target_batch(images, 32)))
    assert torch.allclose(target, bb(images)["c4"], atol=1e-4)
    p = CaricatureParams(size=32, input_size=32, steps=30, cossim_pow=1, **MILD)
    r = compute(**kw, layer="c4", images=images, params=p)
    assert r.layers == ("c4", "c4") and (r.cosine > r.start_cosine).all()


# --- files --------------------------------------------------------------------------------


def test_save_names_and_round_trip(tmp_path, cnn, imgs):
    p = CaricatureParams(size=32, input_size=32, steps=2, **MILD)
    r = compute(cnn, ["2", "4"], imgs[:2], HALF, HALF, p)
    paths = save(r.take([0, 1]), tmp_path, "resnet50", "layer3.2.conv2", ["a.png", "dir/b.jpg"])
    names = sorted(x.name for x in paths)
    assert names == [
        "resnet50_layer3_2_conv2_a.npy",
        "resnet50_layer3_2_conv2_a.png",
        "resnet50_layer3_2_conv2_b.npy",
        "resnet50_layer3_2_conv2_b.png",
    ]
    arr = np.load(tmp_path / "resnet50_layer3_2_conv2_b.npy")
    assert arr.shape == (32, 32, 3) and arr.dtype == np.float32
    assert np.array_equal(arr, r.images[1])
    png = np.asarray(Image.open(tmp_path / "resnet50_layer3_2_conv2_a.png"))
    assert png.shape == (32, 32, 3) and np.abs(png / 255 - r.images[0]).max() <= 0.5 / 255 + 1e-6
    per_item = save(r, tmp_path / "all", "m", None, ["a", "b", "a", "b"])
    assert {x.name for x in per_item} >= {"m_2_a.png", "m_4_b.npy"}
    with pytest.raises(GapscopeError):
        save(r, tmp_path, "m", None, ["a"])
