"""detectron2 ResNet-FPN detectors without detectron2: configs, checkpoints, exact p2..p6.

The suite builds its own evidence. `d2_state` writes detectron2-named weights from the
architecture rules of detectron2's resnet.py / fpn.py (not from our module), with
non-identity FrozenBN statistics, detector-head keys and the pixel_mean/pixel_std buffers
older detectron2 stores. `reference_fpn` recomputes p2..p6 from those raw tensors, walking
the state dict's own keys with torch.nn.functional and plain tensor ops, and every
supported configuration must agree with the converted backbone.
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from lib.features.backbones.detectron2 import detectron2_backbone, load_config
from lib.runtime.errors import GapscopeError
from tests.conftest import one_line

LEVELS = ("p2", "p3", "p4", "p5", "p6")
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
BN_EPS = 1e-5
IMAGENET_STD_BGR = [57.375, 57.120, 58.395]

# detectron2's configs/Base-RCNN-FPN.yaml (abridged: keys we do not read are kept on purpose)
BASE_RCNN_FPN = """\
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  BACKBONE:
    NAME: "build_resnet_fpn_backbone"
  RESNETS:
    OUT_FEATURES: ["res2", "res3", "res4", "res5"]
  FPN:
    IN_FEATURES: ["res2", "res3", "res4", "res5"]
  ANCHOR_GENERATOR:
    SIZES: [[32], [64], [128], [256], [512]]
    ASPECT_RATIOS: [[0.5, 1.0, 2.0]]
  RPN:
    IN_FEATURES: ["p2", "p3", "p4", "p5", "p6"]
    PRE_NMS_TOPK_TRAIN: 2000
    PRE_NMS_TOPK_TEST: 1000
  ROI_HEADS:
    NAME: "StandardROIHeads"
    IN_FEATURES: ["p2", "p3", "p4", "p5"]
  ROI_BOX_HEAD:
    NAME: "FastRCNNConvFCHead"
    NUM_FC: 2
    POOLER_RESOLUTION: 7
DATASETS:
  TRAIN: ("coco_2017_train",)
  TEST: ("coco_2017_val",)
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.02
INPUT:
  MIN_SIZE_TRAIN: (640, 672, 704, 736, 768, 800)
VERSION: 2
"""

# detectron2's configs/Base-RetinaNet.yaml (abridged), with its `!!python/object/apply:eval`
# anchor sizes, which detectron2 evaluates with yaml.unsafe_load
BASE_RETINANET = """\
MODEL:
  META_ARCHITECTURE: "RetinaNet"
  BACKBONE:
    NAME: "build_retinanet_resnet_fpn_backbone"
  RESNETS:
    OUT_FEATURES: ["res3", "res4", "res5"]
  ANCHOR_GENERATOR:
    SIZES:
      !!python/object/apply:eval [
        "[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64, 128, 256, 512 ]]",
      ]
  FPN:
    IN_FEATURES: ["res3", "res4", "res5"]
  RETINANET:
    IOU_THRESHOLDS: [0.4, 0.5]
    IOU_LABELS: [0, -1, 1]
    SMOOTH_L1_LOSS_BETA: 0.0
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.01
VERSION: 2
"""

# detectron2's configs/COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml (abridged)
BASE_PANOPTIC_FPN = """\
_BASE_: "Base-RCNN-FPN.yaml"
MODEL:
  META_ARCHITECTURE: "PanopticFPN"
  MASK_ON: True
  SEM_SEG_HEAD:
    LOSS_WEIGHT: 0.5
DATALOADER:
  FILTER_EMPTY_ANNOTATIONS: False
"""

# channel counts detectron2's keys allow shrinking, to keep the suite fast
SMALL = {
    "RESNETS": {"STEM_OUT_CHANNELS": 8, "RES2_OUT_CHANNELS": 32, "WIDTH_PER_GROUP": 8},
    "FPN": {"OUT_CHANNELS": 16},
}


@dataclass(frozen=True)
class Spec:
    """What the test's own checkpoint writer and reference forward assume."""

    depth: int = 50
    stride_in_1x1: bool = True
    groups: int = 1
    width: int = 8
    stem: int = 8
    res2_out: int = 32
    norm: str = "FrozenBN"
    fpn_out: int = 16
    fpn_norm: str = ""
    fuse: str = "sum"
    pixel_mean: tuple = (103.530, 116.280, 123.675)
    pixel_std: tuple = (1.0, 1.0, 1.0)

    def model_yaml(self) -> dict:
        """The MODEL overrides of the child config that describes this spec."""
        return {
            "RESNETS": {
                "DEPTH": self.depth,
                "STRIDE_IN_1X1": self.stride_in_1x1,
                "NUM_GROUPS": self.groups,
                "WIDTH_PER_GROUP": self.width,
                "STEM_OUT_CHANNELS": self.stem,
                "RES2_OUT_CHANNELS": self.res2_out,
                "NORM": self.norm,
            },
            "FPN": {"OUT_CHANNELS": self.fpn_out, "NORM": self.fpn_norm, "FUSE_TYPE": self.fuse},
            "PIXEL_MEAN": list(self.pixel_mean),
            "PIXEL_STD": list(self.pixel_std),
        }


# ----------------------------------------------------------------------------- fixtures


def write_configs(
    root: Path, model: dict | None = None, extra: dict | None = None, name="faster_rcnn.yaml"
) -> Path:
    """Base-RCNN-FPN.yaml plus a child config (`_BASE_` relative) with these overrides."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Base-RCNN-FPN.yaml").write_text(BASE_RCNN_FPN)
    child = {"_BASE_": "Base-RCNN-FPN.yaml", "MODEL": {"MASK_ON": False, **(model or {})}}
    child.update(extra or {})
    path = root / name
    path.write_text(yaml.safe_dump(child, sort_keys=False))
    return path


def d2_state(spec: Spec, seed: int = 0) -> dict[str, torch.Tensor]:
    """A whole detector's state dict, named and shaped as detectron2 names and shapes it."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def rand(*shape, lo=-1.0, hi=1.0):
        return torch.rand(*shape, generator=gen) * (hi - lo) + lo

    def norm(prefix: str, c: int, kind: str):
        if kind == "":
            return
        state[f"{prefix}.weight"] = rand(c, lo=0.5, hi=1.5)
        state[f"{prefix}.bias"] = rand(c, lo=-0.2, hi=0.2)
        if kind != "GN":  # FrozenBN and BN carry statistics that are not the identity
            state[f"{prefix}.running_mean"] = rand(c, lo=-0.3, hi=0.3)
            state[f"{prefix}.running_var"] = rand(c, lo=0.5, hi=2.0)
        if kind in ("BN", "SyncBN"):
            state[f"{prefix}.num_batches_tracked"] = torch.tensor(90000)

    def conv(prefix, cout, cin, k, kind, bias=False, gain=1.0):
        std = gain * math.sqrt(2.0 / (cin * k * k))
        state[f"{prefix}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * std
        if bias:
            state[f"{prefix}.bias"] = rand(cout, lo=-0.1, hi=0.1)
        norm(f"{prefix}.norm", cout, kind)

    conv("backbone.bottom_up.stem.conv1", spec.stem, 3, 7, spec.norm, gain=0.05)
    cin, cout, mid = spec.stem, spec.res2_out, spec.groups * spec.width
    for stage, n in zip((2, 3, 4, 5), BLOCKS[spec.depth], strict=True):
        for b in range(n):
            p = f"backbone.bottom_up.res{stage}.{b}"
            if cin != cout:
                conv(f"{p}.shortcut", cout, cin, 1, spec.norm)
            conv(f"{p}.conv1", mid, cin, 1, spec.norm)
            conv(f"{p}.conv2", mid, mid // spec.groups, 3, spec.norm)
            conv(f"{p}.conv3", cout, mid, 1, spec.norm, gain=0.3)
            cin = cout
        cout, mid = cout * 2, mid * 2
    bias = spec.fpn_norm == ""
    for stage in (2, 3, 4, 5):
        c = spec.res2_out * 2 ** (stage - 2)
        conv(f"backbone.fpn_lateral{stage}", spec.fpn_out, c, 1, spec.fpn_norm, bias, gain=0.5)
        conv(f"backbone.fpn_output{stage}", spec.fpn_out, spec.fpn_out, 3, spec.fpn_norm, bias)
    # heads (ignored) and the pixel statistics older detectron2 kept as buffers
    state["proposal_generator.rpn_head.conv.weight"] = torch.randn(spec.fpn_out, spec.fpn_out, 3, 3)
    state["roi_heads.box_head.fc1.weight"] = torch.randn(32, spec.fpn_out * 49)
    state["pixel_mean"] = torch.tensor(spec.pixel_mean).view(3, 1, 1)
    state["pixel_std"] = torch.tensor(spec.pixel_std).view(3, 1, 1)
    return state


def save_pth(path: Path, state: dict) -> Path:
    torch.save({"model": state, "__author__": "test", "iteration": 1}, path)
    return path


def reference_fpn(state: dict, x: torch.Tensor, spec: Spec) -> dict[str, torch.Tensor]:
    """p2..p6 from the raw tensors: the state dict's own keys decide the blocks."""
    sd = {k[len("backbone.") :]: v.float() for k, v in state.items() if k.startswith("backbone.")}

    def norm(y, p, kind):
        if f"{p}.weight" not in sd:
            return y
        w, b = sd[f"{p}.weight"], sd[f"{p}.bias"]
        if kind == "GN":
            return F.group_norm(y, 32, w, b, BN_EPS)
        scale = w * (sd[f"{p}.running_var"] + BN_EPS).rsqrt()  # y * scale + shift
        shift = b - sd[f"{p}.running_mean"] * scale
        return y * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def conv(y, p, stride=1, padding=0, groups=1, kind=spec.norm):
        y = F.conv2d(y, sd[f"{p}.weight"], sd.get(f"{p}.bias"), stride, padding, 1, groups)
        return norm(y, f"{p}.norm", kind)

    y = F.relu(conv(x, "bottom_up.stem.conv1", 2, 3))
    y = F.max_pool2d(y, kernel_size=3, stride=2, padding=1)
    feats = {}
    for stage in (2, 3, 4, 5):
        prefix = f"bottom_up.res{stage}."
        blocks = sorted({int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix)})
        for b in blocks:
            p = f"{prefix}{b}"
            stride = 2 if stage > 2 and b == 0 else 1
            s1, s3 = (stride, 1) if spec.stride_in_1x1 else (1, stride)
            out = F.relu(conv(y, f"{p}.conv1", s1))
            out = F.relu(conv(out, f"{p}.conv2", s3, 1, spec.groups))
            out = conv(out, f"{p}.conv3")
            short = conv(y, f"{p}.shortcut", stride) if f"{p}.shortcut.weight" in sd else y
            y = F.relu(out + short)
        feats[stage] = y
    res = {}
    prev = conv(feats[5], "fpn_lateral5", kind=spec.fpn_norm)
    res["p5"] = conv(prev, "fpn_output5", 1, 1, kind=spec.fpn_norm)
    for stage in (4, 3, 2):
        up = prev.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 2×
        prev = conv(feats[stage], f"fpn_lateral{stage}", kind=spec.fpn_norm) + up
        if spec.fuse == "avg":
            prev = prev / 2
        res[f"p{stage}"] = conv(prev, f"fpn_output{stage}", 1, 1, kind=spec.fpn_norm)
    res["p6"] = res["p5"][:, :, ::2, ::2]  # LastLevelMaxPool: max_pool2d(k=1, s=2)
    return res


def assert_levels_close(got: dict, want: dict, rtol: float = 1e-4) -> None:
    assert list(got) == list(LEVELS)
    for lv in LEVELS:
        assert got[lv].shape == want[lv].shape, lv
        scale = want[lv].abs().max().item()
        assert scale > 0, f"{lv} is all zeros: the test would prove nothing"
        torch.testing.assert_close(got[lv], want[lv], rtol=rtol, atol=rtol * scale, msg=lv)


def build(tmp_path: Path, spec: Spec, state: dict | None = None, **extra):
    config = write_configs(tmp_path, spec.model_yaml(), extra or None)
    ckpt = save_pth(tmp_path / "model_final.pth", d2_state(spec) if state is None else state)
    return config, ckpt


# ----------------------------------------------------------------------------- exact outputs

CASES = {
    "R50-msra-frozenbn": Spec(),
    "R50-stride-in-3x3": Spec(stride_in_1x1=False, pixel_std=tuple(IMAGENET_STD_BGR)),
    "X50-4x8d": Spec(groups=4, width=8, stride_in_1x1=False),
    "R101": Spec(depth=101),
    "R152": Spec(depth=152, stem=8, res2_out=16, width=4, fpn_out=8),
    "fuse-avg": Spec(fuse="avg"),
    "GN-resnet-and-fpn": Spec(norm="GN", fpn_norm="GN", stem=32, res2_out=64, width=32, fpn_out=32),
    "SyncBN": Spec(norm="SyncBN", stride_in_1x1=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_p2_to_p6_match_reference(tmp_path, case):
    spec = CASES[case]
    config, ckpt = build(tmp_path, spec)
    bb = detectron2_backbone(config, ckpt)
    state = d2_state(spec)
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        got = bb.module(x)
    want = reference_fpn(state, x, spec)
    assert_levels_close(got, want)
    assert got["p2"].shape == (2, spec.fpn_out, 16, 24)
    assert got["p6"].shape == (2, spec.fpn_out, 1, 2)
    assert bb.info["depth"] == spec.depth and bb.info["norm"] == spec.norm
    assert bb.info["stride_in_1x1"] == spec.stride_in_1x1 and bb.info["groups"] == spec.groups
    assert bb.info["fuse_type"] == spec.fuse and bb.info["head_keys_ignored"] == 2


def test_module_stays_in_eval_math_in_train_mode(tmp_path):
    """BN checkpoints are used with their running statistics, whatever the module's mode."""
    spec = Spec(norm="BN")
    bb = detectron2_backbone(*build(tmp_path, spec))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = bb.module.train()(x)
    assert_levels_close(got, reference_fpn(d2_state(spec), x, spec))


def test_backbone_call_bgr_mean_std_and_padding(tmp_path):
    """RGB uint8 images in → BGR, (x - PIXEL_MEAN) / PIXEL_STD, zero-padded to 32."""
    spec = Spec(pixel_std=tuple(IMAGENET_STD_BGR))
    bb = detectron2_backbone(*build(tmp_path, spec))
    assert bb.name == "detectron2" and bb.levels == LEVELS
    assert bb.input_format == "BGR" and bb.size_divisibility == 32
    assert bb.pixel_mean == spec.pixel_mean and bb.pixel_std == spec.pixel_std
    assert "sha256" in bb.weights and not bb.random_weights
    rgb = np.random.default_rng(0).integers(0, 256, (2, 72, 88, 3), dtype=np.uint8)
    got = bb(rgb)

    x = torch.from_numpy(rgb[..., ::-1].copy()).permute(0, 3, 1, 2).float()  # BGR, NCHW
    x = (x - torch.tensor(spec.pixel_mean).view(1, 3, 1, 1)) / torch.tensor(spec.pixel_std).view(
        1, 3, 1, 1
    )
    padded = torch.zeros(2, 3, 96, 96)
    padded[:, :, :72, :88] = x
    assert_levels_close(got, reference_fpn(d2_state(spec), padded, spec))
    assert got["p2"].shape[-2:] == (24, 24) and got["p6"].shape[-2:] == (2, 2)


def test_rgb_input_format_is_not_flipped(tmp_path):
    spec = Spec()
    config, ckpt = build(tmp_path, spec, INPUT={"FORMAT": "RGB"})
    bb = detectron2_backbone(config, ckpt)
    assert bb.input_format == "RGB"
    rgb = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float()
    x = x - torch.tensor(spec.pixel_mean).view(1, 3, 1, 1)
    assert_levels_close(bb(rgb), reference_fpn(d2_state(spec), x, spec))


def torchvision_to_detectron2(key: str) -> str:
    """torchvision ResNet-50-FPN names → detectron2 names (same tensors, same math)."""
    import re

    key = key.replace("body.conv1.", "bottom_up.stem.conv1.")
    key = key.replace("body.bn1.", "bottom_up.stem.conv1.norm.")
    if m := re.match(r"body\.layer(\d)\.(\d+)\.(.*)", key):
        stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
        rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
        rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        key = f"bottom_up.res{stage}.{block}.{rest}"
    if m := re.match(r"fpn\.(inner|layer)_blocks\.(\d)\.0\.(.*)", key):
        kind = "lateral" if m.group(1) == "inner" else "output"
        key = f"fpn_{kind}{int(m.group(2)) + 2}.{m.group(3)}"
    return "backbone." + key


def test_matches_torchvision_resnet50_fpn(tmp_path):
    """An independent implementation of the same network: torchvision's ResNet-50-FPN
    (stride on the 3×3 conv, FrozenBN, sum fusion, LastLevelMaxPool) equals detectron2's
    R-50-FPN with STRIDE_IN_1X1: False, full size, once its tensors are renamed."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(0)
    tv = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=5
    ).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, FrozenBatchNorm2d):
                n = m.weight.numel()
                m.running_mean.copy_((torch.rand(n, generator=gen) - 0.5) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_((torch.rand(n, generator=gen) - 0.5) * 0.2)
    state = {torchvision_to_detectron2(k): v for k, v in tv.state_dict().items()}
    config = write_configs(tmp_path, {"RESNETS": {"DEPTH": 50, "STRIDE_IN_1X1": False}})
    ckpt = save_pth(tmp_path / "tv.pth", state)
    bb = detectron2_backbone(config, ckpt)
    ckpt.unlink()  # 100 MB: not for pytest's kept temp dirs
    x = torch.randn(1, 3, 64, 96, generator=gen)
    with torch.inference_mode():
        want = dict(zip(LEVELS, tv(x).values(), strict=True))
        assert_levels_close(bb.module(x), want)


# ----------------------------------------------------------------------------- strict loading


def test_extra_backbone_key_is_an_error(tmp_path):
    state = d2_state(Spec())
    state["backbone.bottom_up.res2.0.conv4.weight"] = torch.zeros(1)
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(*build(tmp_path, Spec(), state))
    msg = one_line(exc)
    assert "1 unexpected keys" in msg and "bottom_up.res2.0.conv4.weight" in msg


def test_missing_key_is_an_error(tmp_path):
    state = d2_state(Spec())
    del state["backbone.bottom_up.res3.1.conv2.norm.running_var"]
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(*build(tmp_path, Spec(), state))
    msg = one_line(exc)
    assert "1 missing keys" in msg and "bottom_up.res3.1.conv2.norm.running_var" in msg


def test_depth_mismatch_names_the_depth(tmp_path):
    config = write_configs(tmp_path, replace(Spec(), depth=101).model_yaml())
    ckpt = save_pth(tmp_path / "r50.pth", d2_state(Spec()))
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(config, ckpt)
    msg = one_line(exc)
    assert "missing keys" in msg and "bottom_up.res4.6." in msg
    assert "ResNet-50" in msg and "MODEL.RESNETS.DEPTH = 101" in msg


def test_channel_mismatch_is_a_shape_error(tmp_path):
    config = write_configs(tmp_path, replace(Spec(), fpn_out=32).model_yaml())
    ckpt = save_pth(tmp_path / "fpn16.pth", d2_state(Spec()))
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(config, ckpt)
    msg = one_line(exc)
    assert "shape mismatches" in msg and "fpn_lateral" in msg


def test_pixel_stats_in_checkpoint_must_match_config(tmp_path):
    spec = Spec()
    state = d2_state(replace(spec, pixel_std=tuple(IMAGENET_STD_BGR)))
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(*build(tmp_path, spec, state))
    msg = one_line(exc)
    assert "pixel_std" in msg and "MODEL.PIXEL_STD" in msg


@pytest.mark.parametrize("strip", ["backbone.", "backbone.bottom_up."])
def test_checkpoints_without_pixel_stats_or_prefix_load(tmp_path, strip):
    """Newer detectron2 keeps pixel_mean/std out of checkpoints; a backbone's own state dict
    has no `backbone.` prefix, and detectron2's suffix matching also takes `stem.`/`res2.`
    names (as converted ImageNet weights have them)."""
    spec = Spec()
    full = d2_state(spec)
    bare = {
        k.replace(strip, "", 1) if k.startswith(strip) else k.replace("backbone.", "", 1): v
        for k, v in full.items()
        if k.startswith("backbone.")
    }
    assert ("stem.conv1.weight" in bare) == (strip == "backbone.bottom_up.")
    config = write_configs(tmp_path, spec.model_yaml())
    bb = detectron2_backbone(config, save_pth(tmp_path / "bare.pth", bare))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert_levels_close(bb.module(x), reference_fpn(full, x, spec))


def test_random_weights_and_full_size_names(tmp_path):
    """Full-size R-50-FPN: detectron2's own names and shapes (as its loading logs show)."""
    config = write_configs(tmp_path, {"RESNETS": {"DEPTH": 50}})
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(config)
    assert "--random-weights" in one_line(exc)
    bb = detectron2_backbone(config, random_weights=True)
    assert bb.random_weights and "RANDOM" in bb.weights
    shapes = {k: tuple(v.shape) for k, v in bb.module.state_dict().items()}
    assert shapes["bottom_up.stem.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["bottom_up.stem.conv1.norm.running_var"] == (64,)
    assert shapes["bottom_up.res2.0.shortcut.weight"] == (256, 64, 1, 1)
    assert shapes["bottom_up.res2.0.shortcut.norm.bias"] == (256,)
    assert shapes["bottom_up.res3.0.conv1.weight"] == (128, 256, 1, 1)
    assert shapes["bottom_up.res4.5.conv2.weight"] == (256, 256, 3, 3)
    assert shapes["bottom_up.res5.2.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["fpn_lateral5.weight"] == (256, 2048, 1, 1)
    assert shapes["fpn_output2.bias"] == (256,)
    assert "bottom_up.res4.6.conv1.weight" not in shapes
    assert len(shapes) == 53 * 5 + 8 * 2  # 53 convs with 4 FrozenBN buffers; 8 FPN convs
    again = detectron2_backbone(config, random_weights=True)
    assert bb.fingerprint() == again.fingerprint()
    out = bb(np.zeros((1, 64, 64, 3), dtype=np.uint8))
    assert [tuple(v.shape) for v in out.values()] == [
        (1, 256, 16, 16),
        (1, 256, 8, 8),
        (1, 256, 4, 4),
        (1, 256, 2, 2),
        (1, 256, 1, 1),
    ]


# ----------------------------------------------------------------------------- .pkl files


def to_numpy(state: dict) -> dict:
    return {k: v.numpy() for k, v in state.items()}


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_detectron2_model_zoo_pkl_matches_pth(tmp_path, protocol):
    spec = Spec(stride_in_1x1=False)
    config, pth = build(tmp_path, spec)
    pkl = tmp_path / "model_final_abc123.pkl"
    with open(pkl, "wb") as fh:
        data = {"model": to_numpy(d2_state(spec)), "__author__": "Detectron2 Model Zoo"}
        pickle.dump(data, fh, protocol=protocol)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        from_pth = detectron2_backbone(config, pth).module(x)
        bb = detectron2_backbone(config, pkl)
        from_pkl = bb.module(x)
    assert bb.info["checkpoint_format"] == "detectron2-pkl"
    for lv in LEVELS:
        torch.testing.assert_close(from_pkl[lv], from_pth[lv], rtol=0, atol=0)


def caffe2_names(state: dict, spec: Spec) -> dict[str, np.ndarray]:
    """The same detector as Caffe2 Detectron would have saved it: Caffe2 blob names, BN
    folded into an affine (`_bn_s`, `_bn_b`, no statistics), heads, momentum blobs."""
    out = {}
    last = {s: n - 1 for s, n in zip((2, 3, 4, 5), BLOCKS[spec.depth], strict=True)}
    branch = {"shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c"}
    for key, v in state.items():
        if not key.startswith("backbone.") or key.endswith(("running_mean", "running_var")):
            continue
        parts = key[len("backbone.") :].split(".")
        if parts[0] == "bottom_up":
            if parts[1] == "stem":
                name = "conv1" if parts[3] != "norm" else "res_conv1"
            else:
                name = f"{parts[1]}_{parts[2]}_{branch[parts[3]]}"
        else:
            stage = int(parts[0][-1])
            name = (
                f"fpn_inner_res{stage}_{last[stage]}_sum" + ("_lateral" if stage < 5 else "")
                if parts[0].startswith("fpn_lateral")
                else f"fpn_res{stage}_{last[stage]}_sum"
            )
        if "norm" in parts:
            prefix = key[: key.rindex(".")]
            scale = state[f"{prefix}.weight"] * (state[f"{prefix}.running_var"] + BN_EPS).rsqrt()
            if parts[-1] == "weight":
                out[f"{name}_bn_s"] = scale.numpy()
            else:
                out[f"{name}_bn_b"] = (v - state[f"{prefix}.running_mean"] * scale).numpy()
        else:
            out[f"{name}_{'w' if parts[-1] == 'weight' else 'b'}"] = v.numpy()
    out["conv_rpn_fpn2_w"] = np.zeros((spec.fpn_out, spec.fpn_out, 3, 3), np.float32)
    out["rpn_cls_logits_fpn2_b"] = np.zeros(3, np.float32)
    out["fc6_w"] = np.zeros((32, 64), np.float32)
    out["bbox_pred_w"] = np.zeros((8, 32), np.float32)
    out["conv1_w_momentum"] = np.zeros(1, np.float32)
    return out


def test_caffe2_detectron_pkl_is_renamed_and_matches(tmp_path):
    spec = Spec(depth=50)
    state = d2_state(spec)
    config = write_configs(tmp_path, spec.model_yaml())
    pkl = tmp_path / "model_final.pkl"
    blobs = caffe2_names(state, spec)
    assert "res2_0_branch2a_w" in blobs and "fpn_inner_res5_2_sum_w" in blobs
    assert "fpn_inner_res4_5_sum_lateral_b" in blobs and "res_conv1_bn_s" in blobs
    with open(pkl, "wb") as fh:
        pickle.dump({"blobs": blobs, "cfg": "MODEL: {}"}, fh, protocol=2)
    bb = detectron2_backbone(config, pkl)
    assert bb.info["checkpoint_format"] == "caffe2-pkl"
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert_levels_close(bb.module(x), reference_fpn(state, x, spec))


class Pwned:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_pickle_with_a_forbidden_global_runs_nothing(tmp_path, suffix):
    marker = tmp_path / "pwned"
    config = write_configs(tmp_path, Spec().model_yaml())
    bad = tmp_path / f"evil{suffix}"
    with open(bad, "wb") as fh:
        model = {"backbone.bottom_up.stem.conv1.weight": Pwned(marker)}
        # protocol 2, as torch.save writes: torch's weights-only unpickler reads it up to
        # the global it refuses
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo"}, fh, protocol=2)
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(config, bad)
    msg = one_line(exc)
    assert str(bad) in msg and "posix.system" in msg and "nothing in it was run" in msg
    assert not marker.exists()


def test_truncated_files_are_one_line_errors(tmp_path):
    spec = Spec()
    config, pth = build(tmp_path, spec)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(config, cut)
    assert str(cut) in one_line(exc)
    pkl = tmp_path / "cut.pkl"
    data = pickle.dumps({"model": to_numpy(d2_state(spec)), "__author__": "x"})
    pkl.write_bytes(data[: len(data) // 2])
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(config, pkl)
    assert "truncated or corrupt" in one_line(exc)
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(config, tmp_path / "absent.pth")
    assert "does not exist" in one_line(exc)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("model", "key", "value"),
    [
        ({"BACKBONE": {"NAME": "build_retinanet_resnet_fpn_backbone"}}, "MODEL.BACKBONE.NAME", ""),
        ({"BACKBONE": {"NAME": "build_resnet_backbone"}}, "MODEL.BACKBONE.NAME", ""),
        (
            {"RESNETS": {"DEFORM_ON_PER_STAGE": [False, True, True, True]}},
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
            "[False, True, True, True]",
        ),
        ({"RESNETS": {"DEPTH": 18}}, "MODEL.RESNETS.DEPTH", "18"),
        ({"RESNETS": {"DEPTH": 34}}, "MODEL.RESNETS.DEPTH", "34"),
        ({"RESNETS": {"DEPTH": 200}}, "MODEL.RESNETS.DEPTH", "200"),
        ({"RESNETS": {"RES5_DILATION": 2}}, "MODEL.RESNETS.RES5_DILATION", "2"),
        ({"RESNETS": {"NORM": "LN"}}, "MODEL.RESNETS.NORM", "LN"),
        ({"RESNETS": {"OUT_FEATURES": ["res4"]}}, "MODEL.RESNETS.OUT_FEATURES", "res4"),
        ({"FPN": {"IN_FEATURES": ["res3", "res4", "res5"]}}, "MODEL.FPN.IN_FEATURES", "res3"),
        ({"FPN": {"FUSE_TYPE": "max"}}, "MODEL.FPN.FUSE_TYPE", "max"),
        ({"RESNETS": {"NORM": "GN"}}, "MODEL.RESNETS.STEM_OUT_CHANNELS", "8"),
        ({"META_ARCHITECTURE": "SemanticSegmentor"}, "MODEL.META_ARCHITECTURE", ""),
        ({"PIXEL_MEAN": [0.5]}, "MODEL.PIXEL_MEAN", "0.5"),
        ({"RESNETS": {"STRIDE_IN_1X1": "yes"}}, "MODEL.RESNETS.STRIDE_IN_1X1", "yes"),
    ],
)
def test_unsupported_configs_are_refused(tmp_path, model, key, value):
    merged = {k: dict(v) for k, v in SMALL.items()}
    for k, v in model.items():
        merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
    config = write_configs(tmp_path, merged)
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(config, random_weights=True)
    msg = one_line(exc)
    assert f"{key} = " in msg and value in msg and "not supported" in msg
    assert str(config) in msg


def test_input_format_other_than_rgb_bgr_is_refused(tmp_path):
    config = write_configs(tmp_path, SMALL, {"INPUT": {"FORMAT": "L"}})
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(config, random_weights=True)
    assert "INPUT.FORMAT = 'L'" in one_line(exc)


def test_retinanet_meta_architecture_with_plain_fpn_is_accepted(tmp_path):
    spec = Spec()
    state = {k: v for k, v in d2_state(spec).items() if not k.startswith(("roi_", "proposal_"))}
    state["head.cls_score.weight"] = torch.zeros(9, 16, 3, 3)
    config = write_configs(tmp_path, {**spec.model_yaml(), "META_ARCHITECTURE": "RetinaNet"})
    bb = detectron2_backbone(config, save_pth(tmp_path / "retina.pth", state))
    assert bb.info["meta_architecture"] == "RetinaNet" and bb.info["head_keys_ignored"] == 1


def test_bad_config_files(tmp_path):
    missing_base = tmp_path / "child.yaml"
    missing_base.write_text('_BASE_: "../nowhere/Base-RCNN-FPN.yaml"\nMODEL: {}\n')
    with pytest.raises(GapscopeError) as exc:
        load_config(missing_base)
    msg = one_line(exc)
    assert "_BASE_" in msg and "nowhere/Base-RCNN-FPN.yaml" in msg and str(missing_base) in msg

    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- MODEL\n- INPUT\n")
    with pytest.raises(GapscopeError) as exc:
        load_config(not_mapping)
    assert "not a YAML mapping" in one_line(exc) and str(not_mapping) in one_line(exc)

    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL: [unclosed\n")
    with pytest.raises(GapscopeError) as exc:
        load_config(broken)
    assert "not valid YAML" in one_line(exc)

    loop = tmp_path / "loop.yaml"
    loop.write_text('_BASE_: "loop.yaml"\n')
    with pytest.raises(GapscopeError) as exc:
        load_config(loop)
    assert "loops" in one_line(exc)

    with pytest.raises(GapscopeError) as exc:
        load_config(tmp_path / "absent.yaml")
    assert "does not exist" in one_line(exc)

    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(None, random_weights=True)
    assert "--detectron2-config" in one_line(exc)


# ----------------------------------------------------------------------------- _BASE_


def test_base_inheritance_and_defaults(tmp_path):
    configs = tmp_path / "configs"
    (configs / "COCO-Detection").mkdir(parents=True)
    (configs / "Base-Root.yaml").write_text(
        "MODEL:\n  PIXEL_MEAN: [1.0, 2.0, 3.0]\n  FPN:\n    OUT_CHANNELS: 64\n"
        "    FUSE_TYPE: avg\n  RESNETS:\n    DEPTH: 101\n"
    )
    (configs / "Base-RCNN-FPN.yaml").write_text('_BASE_: "Base-Root.yaml"\n' + BASE_RCNN_FPN)
    child = configs / "COCO-Detection" / "faster_rcnn_X_101_32x8d_FPN_3x.yaml"
    child.write_text(
        '_BASE_: "../Base-RCNN-FPN.yaml"\n'
        "MODEL:\n  MASK_ON: False\n  PIXEL_MEAN: [103.53, 116.28, 123.675]\n"
        "  RESNETS:\n    STRIDE_IN_1X1: False\n    NUM_GROUPS: 32\n    WIDTH_PER_GROUP: 8\n"
        "    DEPTH: 101\n  FPN:\n    FUSE_TYPE: sum\n"
    )
    cfg = load_config(child)
    m = cfg["MODEL"]
    assert m["PIXEL_MEAN"] == [103.53, 116.28, 123.675]  # child over base over root
    assert m["FPN"]["FUSE_TYPE"] == "sum" and m["FPN"]["OUT_CHANNELS"] == 64  # root kept
    assert m["FPN"]["IN_FEATURES"] == ["res2", "res3", "res4", "res5"]  # middle kept
    assert m["RESNETS"]["NUM_GROUPS"] == 32 and m["RESNETS"]["STRIDE_IN_1X1"] is False
    assert m["PIXEL_STD"] == [1.0, 1.0, 1.0]  # detectron2 defaults fill the rest
    assert cfg["INPUT"]["FORMAT"] == "BGR" and m["RESNETS"]["NORM"] == "FrozenBN"
    assert m["RESNETS"]["STEM_OUT_CHANNELS"] == 64 and m["FPN"]["NORM"] == ""
    assert m["ROI_HEADS"]["NAME"] == "StandardROIHeads"  # unknown keys kept, ignored
    assert "_BASE_" not in cfg


# ----------------------------------------------------------------------------- meta-architectures


def forward_both(bb, state: dict, spec: Spec, seed: int = 5):
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return bb.module(x), reference_fpn(state, x, spec)


def test_proposal_network_rpn_only_checkpoint(tmp_path):
    """An RPN-only detector (rpn_R_50_FPN_1x): backbone + proposal_generator, no roi_heads."""
    spec = Spec()
    state = {k: v for k, v in d2_state(spec).items() if not k.startswith("roi_heads.")}
    state["proposal_generator.rpn_head.objectness_logits.weight"] = torch.randn(3, 16, 1, 1)
    state["proposal_generator.rpn_head.anchor_deltas.weight"] = torch.randn(12, 16, 1, 1)
    model = {**spec.model_yaml(), "META_ARCHITECTURE": "ProposalNetwork"}
    config = write_configs(tmp_path, model, name="rpn_R_50_FPN_1x.yaml")
    bb = detectron2_backbone(config, save_pth(tmp_path / "rpn.pth", state))
    assert bb.info["meta_architecture"] == "ProposalNetwork"
    assert bb.info["head_keys_ignored"] == 3
    assert_levels_close(*forward_both(bb, state, spec))

    # a ProposalNetwork has no ROI heads: such keys mean another detector, not a head to drop
    state["roi_heads.box_head.fc1.weight"] = torch.zeros(4, 4)
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(config, save_pth(tmp_path / "rcnn.pth", state))
    msg = one_line(exc)
    assert "1 unexpected keys" in msg and "roi_heads.box_head.fc1.weight" in msg


def sem_seg_head(spec: Spec, conv_dims: int = 32, classes: int = 54) -> dict[str, torch.Tensor]:
    """SemSegFPNHead's keys (one GN conv per level, a 1×1 predictor), as PanopticFPN saves them."""
    state = {}
    for stage in (2, 3, 4, 5):
        p = f"sem_seg_head.p{stage}.0"
        state[f"{p}.weight"] = torch.randn(conv_dims, spec.fpn_out, 3, 3)
        state[f"{p}.norm.weight"] = torch.ones(conv_dims)
        state[f"{p}.norm.bias"] = torch.zeros(conv_dims)
    state["sem_seg_head.predictor.weight"] = torch.randn(classes, conv_dims, 1, 1)
    state["sem_seg_head.predictor.bias"] = torch.zeros(classes)
    return state


def test_panoptic_fpn_checkpoint_ignores_sem_seg_head(tmp_path):
    spec = Spec(stride_in_1x1=False)
    state = {**d2_state(spec), **sem_seg_head(spec)}
    n_sem = sum(k.startswith("sem_seg_head.") for k in state)
    (tmp_path / "Base-Panoptic-FPN.yaml").write_text(BASE_PANOPTIC_FPN)
    config = write_configs(tmp_path, spec.model_yaml(), name="panoptic_fpn_R_50_1x.yaml")
    text = config.read_text().replace("Base-RCNN-FPN.yaml", "Base-Panoptic-FPN.yaml")
    config.write_text(text)
    assert load_config(config)["MODEL"]["META_ARCHITECTURE"] == "PanopticFPN"
    ckpt = save_pth(tmp_path / "panoptic.pth", state)
    bb = detectron2_backbone(config, ckpt)
    assert bb.info["meta_architecture"] == "PanopticFPN"
    assert bb.info["head_keys_ignored"] == 2 + n_sem  # rpn + box head + the sem-seg head
    assert_levels_close(*forward_both(bb, state, spec))

    # the sem-seg head is a head only for PanopticFPN: a Faster R-CNN config refuses it
    rcnn = write_configs(tmp_path / "rcnn", spec.model_yaml())
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(rcnn, ckpt)
    msg = one_line(exc)
    assert f"{n_sem} unexpected keys" in msg and "sem_seg_head." in msg


# ----------------------------------------------------------------------------- FPN norms


@pytest.mark.parametrize("fpn_norm", ["BN", "SyncBN"])
def test_fpn_batch_norm_uses_running_statistics(tmp_path, fpn_norm):
    """FPN.NORM BN/SyncBN: bias-free lateral/output convs, each followed by a BatchNorm
    whose weight, bias, running_mean and running_var come from the checkpoint; features
    are eval-mode BN math even with the module in train mode, and no statistic moves."""
    spec = Spec(fpn_norm=fpn_norm)
    state = d2_state(spec)
    for stage in (2, 3, 4, 5):
        for conv in ("lateral", "output"):
            p = f"backbone.fpn_{conv}{stage}"
            assert f"{p}.bias" not in state
            for buf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                assert f"{p}.norm.{buf}" in state
    bb = detectron2_backbone(*build(tmp_path, spec))
    assert bb.info["fpn_norm"] == fpn_norm and bb.info["norm"] == "FrozenBN"
    before = {k: v.clone() for k, v in bb.module.state_dict().items()}
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got = bb.module.train()(x)
    assert_levels_close(got, reference_fpn(state, x, spec))
    after = bb.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the norms matter: the same convs without them give other features
    plain = {k: v for k, v in state.items() if ".norm." not in k or "bottom_up" in k}
    assert not torch.allclose(got["p3"], reference_fpn(plain, x, spec)["p3"], rtol=1e-2)


# ----------------------------------------------------------------------------- RetinaNet


def retinanet_state(spec: Spec) -> dict[str, torch.Tensor]:
    """A RetinaNet as detectron2 saves it: FPN over res3..res5, LastLevelP6P7 on res5
    (`backbone.top_block.p6/p7`, 3×3/2 convs with bias), `head.` and no RPN/ROI heads."""
    gen = torch.Generator().manual_seed(7)
    state = {
        k: v
        for k, v in d2_state(spec).items()
        if not k.startswith(("backbone.fpn_lateral2", "backbone.fpn_output2", "roi_", "proposal_"))
    }
    res5 = spec.res2_out * 8
    state["backbone.top_block.p6.weight"] = torch.randn(spec.fpn_out, res5, 3, 3, generator=gen)
    state["backbone.top_block.p6.bias"] = torch.zeros(spec.fpn_out)
    state["backbone.top_block.p7.weight"] = torch.randn(
        spec.fpn_out, spec.fpn_out, 3, 3, generator=gen
    )
    state["backbone.top_block.p7.bias"] = torch.zeros(spec.fpn_out)
    state["head.cls_subnet.0.weight"] = torch.randn(spec.fpn_out, spec.fpn_out, 3, 3)
    state["head.cls_score.weight"] = torch.randn(9 * 80, spec.fpn_out, 3, 3)
    state["head.bbox_pred.weight"] = torch.randn(9 * 4, spec.fpn_out, 3, 3)
    return state


def test_genuine_retinanet_config_is_refused_for_its_p6p7_backbone(tmp_path):
    """detectron2's own Base-RetinaNet.yaml + retinanet_R_50_FPN_1x.yaml: the refusal names
    the backbone builder (LastLevelP6P7, levels p3..p7), not the yaml's python tag."""
    spec = Spec()
    (tmp_path / "Base-RetinaNet.yaml").write_text(BASE_RETINANET)
    config = tmp_path / "retinanet_R_50_FPN_1x.yaml"
    child = {"_BASE_": "Base-RetinaNet.yaml", "MODEL": spec.model_yaml()}
    config.write_text(yaml.safe_dump(child, sort_keys=False))
    cfg = load_config(config)
    assert cfg["MODEL"]["FPN"]["IN_FEATURES"] == ["res3", "res4", "res5"]
    sizes = cfg["MODEL"]["ANCHOR_GENERATOR"]["SIZES"]
    assert not isinstance(sizes, list) and "apply:eval" in repr(sizes)  # kept, not evaluated
    ckpt = save_pth(tmp_path / "retinanet.pth", retinanet_state(spec))
    for checkpoint in (ckpt, None):
        with pytest.raises(GapscopeError) as exc:
            detectron2_backbone(config, checkpoint, random_weights=checkpoint is None)
        msg = one_line(exc)
        assert str(config) in msg and "not valid YAML" not in msg
        assert "MODEL.BACKBONE.NAME = 'build_retinanet_resnet_fpn_backbone'" in msg
        assert "LastLevelP6P7" in msg and "not supported" in msg


def test_retinanet_checkpoint_with_a_plain_fpn_config_is_named(tmp_path):
    """A RetinaNet checkpoint given with a Faster R-CNN config: a strict-load error that
    says the weights are a P6/P7 RetinaNet backbone."""
    spec = Spec()
    config = write_configs(tmp_path, {**spec.model_yaml(), "META_ARCHITECTURE": "RetinaNet"})
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(config, save_pth(tmp_path / "retina.pth", retinanet_state(spec)))
    msg = one_line(exc)
    assert "missing keys" in msg and "fpn_lateral2" in msg
    assert "unexpected keys" in msg and "top_block.p" in msg
    assert "RetinaNet backbone" in msg and "LastLevelP6P7" in msg


def test_python_yaml_tags_are_never_run(tmp_path):
    marker = tmp_path / "pwned"
    config = write_configs(tmp_path, SMALL)
    text = (
        config.read_text()
        + f'DATASETS:\n  TEST: !!python/object/apply:os.system ["touch {marker}"]\n'
    )
    config.write_text(text)
    bb = detectron2_backbone(config, random_weights=True)
    assert bb.levels == LEVELS and not marker.exists()


# ----------------------------------------------------------------------------- LazyConfig

LAZY_CONFIG = """\
from ..common.optim import SGD as optimizer
from ..common.coco_schedule import lr_multiplier_1x as lr_multiplier
from ..common.data.coco_panoptic_separated import dataloader
from ..common.models.panoptic_fpn import model
from ..common.train import train

model.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
"""

SAVED_LAZY_CONFIG = """\
model:
  _target_: detectron2.modeling.GeneralizedRCNN
  backbone:
    _target_: detectron2.modeling.FPN
    in_features: [res2, res3, res4, res5]
    out_channels: 256
  pixel_mean: [103.53, 116.28, 123.675]
train:
  init_checkpoint: detectron2://ImageNetPretrained/MSRA/R-50.pkl
"""


def test_lazy_configs_are_refused(tmp_path):
    lazy = tmp_path / "panoptic_fpn_R_50_1x.py"
    lazy.write_text(LAZY_CONFIG)
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(lazy, random_weights=True)
    msg = one_line(exc)
    assert str(lazy) in msg and "LazyConfig (.py)" in msg and ".yaml config" in msg

    child = tmp_path / "child.yaml"  # a yaml whose _BASE_ is a LazyConfig
    child.write_text(f'_BASE_: "{lazy.name}"\nMODEL: {{}}\n')
    with pytest.raises(GapscopeError) as exc:
        load_config(child)
    assert "LazyConfig (.py)" in one_line(exc)

    # what LazyConfig.save writes: read as a yaml config, every key would be a default
    saved = tmp_path / "config.yaml"
    saved.write_text(SAVED_LAZY_CONFIG)
    with pytest.raises(GapscopeError) as exc:
        detectron2_backbone(saved, random_weights=True)
    msg = one_line(exc)
    assert str(saved) in msg and "saved LazyConfig" in msg and "MODEL" in msg
