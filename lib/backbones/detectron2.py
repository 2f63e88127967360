"""A user's detectron2 ResNet-FPN detector, without detectron2: its `backbone(images)`.

Given the detector's yaml config (with `_BASE_` inheritance over detectron2's defaults)
and its checkpoint (`model_final.pth`, a Detectron2 model-zoo `.pkl`, or a Caffe2
Detectron `.pkl`), build a plain torch module whose state-dict names are detectron2's
own (`backbone.` removed: `bottom_up.stem.conv1.norm.running_var`, `fpn_lateral2.weight`,
...), load it strictly, and return p2..p6 exactly as detectron2's
`model.backbone(preprocessed images)` computes them:

- ResNet (`build_resnet_backbone`): BasicStem (7×7/2 conv, norm, relu, 3×3/2 max pool),
  res2..res5 of BottleneckBlocks (stride on the 1×1 or the 3×3 conv, ResNeXt groups),
  every conv bias-free and followed by its norm (FrozenBN, BN/SyncBN in eval, GN, none).
- FPN (`build_resnet_fpn_backbone`): 1×1 laterals and 3×3 outputs (with bias when
  FPN.NORM is ""), nearest 2× top-down, "sum" or "avg" fusion, p6 = LastLevelMaxPool
  (max_pool2d kernel 1, stride 2) of p5.
- Preprocessing as GeneralizedRCNN does it: channels in INPUT.FORMAT order, then
  (x - PIXEL_MEAN) / PIXEL_STD, then zero padding to the backbone's size divisibility (32).

Anything it cannot reproduce exactly is refused with the config key and value at fault
(deformable convs, dilated res5, P6/P7 RetinaNet backbones, BasicBlock ResNets, ...).
Pickled `.pkl` files go through a restricted unpickler that builds numpy arrays and
nothing else; `.pth` files load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lib.backbones.base import Backbone, file_sha256, load_into
from lib.errors import GapscopeError

log = logging.getLogger(__name__)

LEVELS = ("p2", "p3", "p4", "p5", "p6")
STAGES = ("res2", "res3", "res4", "res5")
BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
SIZE_DIVISIBILITY = 32  # FPN over res2..res5: the stride of its coarsest input, res5
EPS = 1e-5  # FrozenBatchNorm2d, BatchNorm2d, SyncBatchNorm and GroupNorm all use 1e-5

# detector heads per meta-architecture: their checkpoint keys are dropped (listed once)
HEADS = {
    "GeneralizedRCNN": ("proposal_generator.", "roi_heads."),
    "ProposalNetwork": ("proposal_generator.",),
    "PanopticFPN": ("proposal_generator.", "roi_heads.", "sem_seg_head."),
    "RetinaNet": ("head.", "anchor_generator."),
}
BN_NORMS = ("BN", "SyncBN", "naiveSyncBN", "naiveSyncBN_N", "nnSyncBN")  # eval: same math
NORMS = ("", "FrozenBN", "GN", *BN_NORMS)
# Caffe2 blob names that, once renamed, belong to the backbone (anything else is a head)
C2_BACKBONE = re.compile(r"^(stem\.|res\d|conv1\.|fpn)")

# detectron2/config/defaults.py: the defaults of the MODEL.RESNETS/FPN/BACKBONE and INPUT keys
DEFAULTS: dict[str, Any] = {
    "MODEL": {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "PIXEL_MEAN": [103.530, 116.280, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 2},
        "RESNETS": {
            "DEPTH": 50,
            "OUT_FEATURES": ["res4"],
            "NUM_GROUPS": 1,
            "NORM": "FrozenBN",
            "WIDTH_PER_GROUP": 64,
            "STRIDE_IN_1X1": True,
            "RES5_DILATION": 1,
            "RES2_OUT_CHANNELS": 256,
            "STEM_OUT_CHANNELS": 64,
            "DEFORM_ON_PER_STAGE": [False, False, False, False],
            "DEFORM_MODULATED": False,
            "DEFORM_NUM_GROUPS": 1,
        },
        "FPN": {"IN_FEATURES": [], "OUT_CHANNELS": 256, "NORM": "", "FUSE_TYPE": "sum"},
    },
    "INPUT": {"FORMAT": "BGR"},
}


# ----------------------------------------------------------------------------- config


def _merge(a: dict, b: dict, source: Path) -> dict:
    """detectron2's merge_a_into_b: a's values win; mappings merge key by key."""
    for key, value in a.items():
        if isinstance(value, dict) and key in b:
            if not isinstance(b[key], dict):
                raise GapscopeError(
                    f"detectron2 config {source}: {key} is a mapping here but "
                    f"{b[key]!r} in its _BASE_"
                )
            _merge(value, b[key], source)
        else:
            b[key] = value
    return b


def _load_yaml_with_base(path: Path, seen: tuple[Path, ...]) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise GapscopeError(f"detectron2 config {path} does not exist")
    if path.suffix == ".py":
        raise GapscopeError(
            f"detectron2 config {path} is a LazyConfig (.py), which is not supported: "
            "give the detector's .yaml config"
        )
    resolved = path.resolve()
    if resolved in seen:
        raise GapscopeError(f"detectron2 config {path}: _BASE_ chain loops back to itself")
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh)
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GapscopeError(f"detectron2 config {path} is not valid YAML ({first[:160]})") from None
    if not isinstance(cfg, dict):
        raise GapscopeError(
            f"detectron2 config {path} is not a YAML mapping (it holds a "
            f"{type(cfg).__name__}): give the detector's config file"
        )
    base = cfg.pop("_BASE_", None)
    if base is None:
        return cfg
    if not isinstance(base, str) or not base:
        raise GapscopeError(f"detectron2 config {path}: _BASE_ = {base!r} is not a file path")
    if base.startswith(("http://", "https://")):
        raise GapscopeError(
            f"detectron2 config {path}: _BASE_ = {base} is a URL, which is not fetched: "
            "download it next to the config and point _BASE_ at the file"
        )
    base_path = Path(os.path.expanduser(base))
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    if not base_path.is_file():
        raise GapscopeError(
            f"detectron2 config {path}: _BASE_ = {base} does not exist ({base_path}): "
            "keep the config's _BASE_ files next to it, as in detectron2's configs/"
        )
    return _merge(cfg, _load_yaml_with_base(base_path, (*seen, resolved)), path)


def load_config(path: Path) -> dict:
    """A detectron2 yaml config as a dict: `_BASE_` files first (paths relative to the
    file that names them, recursively), the file's own keys over them, all over
    detectron2's defaults for the keys this converter reads. Other keys are kept as
    they are and otherwise ignored."""
    cfg = _load_yaml_with_base(Path(path), ())
    return _merge(cfg, copy.deepcopy(DEFAULTS), Path(path))


def _get(cfg: dict, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


class _Arch:
    """The architecture a config describes, checked against what is converted exactly."""

    def __init__(self, cfg: dict, source: Path):
        self.source = source
        self.meta = self._one_of(cfg, "MODEL.META_ARCHITECTURE", tuple(HEADS))
        name = _get(cfg, "MODEL.BACKBONE.NAME")
        if name == "build_retinanet_resnet_fpn_backbone":
            self._refuse(
                "MODEL.BACKBONE.NAME",
                name,
                "its top block (LastLevelP6P7) makes P6/P7 from res5 with extra convs; "
                "only build_resnet_fpn_backbone (p2..p6, LastLevelMaxPool) is converted",
            )
        if name != "build_resnet_fpn_backbone":
            self._refuse(
                "MODEL.BACKBONE.NAME",
                name,
                "only build_resnet_fpn_backbone (ResNet + FPN p2..p6) is converted",
            )
        self.depth = self._int(cfg, "MODEL.RESNETS.DEPTH")
        if self.depth in (18, 34):
            self._refuse(
                "MODEL.RESNETS.DEPTH",
                self.depth,
                "ResNet-18/34 use BasicBlocks; only bottleneck ResNets (50, 101, 152) "
                "are converted",
            )
        if self.depth not in BLOCKS_PER_STAGE:
            self._refuse("MODEL.RESNETS.DEPTH", self.depth, "detectron2 has 50, 101 and 152")
        deform = _get(cfg, "MODEL.RESNETS.DEFORM_ON_PER_STAGE")
        if not isinstance(deform, list | tuple) or any(deform):
            self._refuse(
                "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
                deform,
                "deformable convolutions are not converted (all four must be False)",
            )
        self.res5_dilation = self._int(cfg, "MODEL.RESNETS.RES5_DILATION")
        if self.res5_dilation == 2:
            self._refuse(
                "MODEL.RESNETS.RES5_DILATION",
                2,
                "a dilated res5 keeps stride 16, and detectron2's FPN itself refuses "
                "in-feature strides that are not log2-contiguous",
            )
        if self.res5_dilation != 1:
            self._refuse(
                "MODEL.RESNETS.RES5_DILATION", self.res5_dilation, "detectron2 allows 1 or 2"
            )
        self.norm = self._one_of(cfg, "MODEL.RESNETS.NORM", NORMS)
        self.fpn_norm = self._one_of(cfg, "MODEL.FPN.NORM", NORMS)
        self.stride_in_1x1 = self._bool(cfg, "MODEL.RESNETS.STRIDE_IN_1X1")
        self.groups = self._int(cfg, "MODEL.RESNETS.NUM_GROUPS")
        self.width_per_group = self._int(cfg, "MODEL.RESNETS.WIDTH_PER_GROUP")
        self.stem_out = self._int(cfg, "MODEL.RESNETS.STEM_OUT_CHANNELS")
        self.res2_out = self._int(cfg, "MODEL.RESNETS.RES2_OUT_CHANNELS")
        self.fpn_out = self._int(cfg, "MODEL.FPN.OUT_CHANNELS")
        self.fuse_type = self._one_of(cfg, "MODEL.FPN.FUSE_TYPE", ("sum", "avg"))
        out_features = _get(cfg, "MODEL.RESNETS.OUT_FEATURES")
        if (
            not isinstance(out_features, list | tuple)
            or not set(STAGES) <= set(out_features)
            or not set(out_features) <= {"stem", *STAGES}
        ):
            self._refuse(
                "MODEL.RESNETS.OUT_FEATURES",
                out_features,
                "an FPN backbone needs res2, res3, res4 and res5",
            )
        in_features = _get(cfg, "MODEL.FPN.IN_FEATURES")
        if list(in_features or []) != list(STAGES):
            self._refuse(
                "MODEL.FPN.IN_FEATURES",
                in_features,
                "only FPNs over [res2, res3, res4, res5] (levels p2..p6) are converted",
            )
        if self.norm == "GN" or self.fpn_norm == "GN":
            self._check_group_norm()
        self.pixel_mean = self._triple(cfg, "MODEL.PIXEL_MEAN")
        self.pixel_std = self._triple(cfg, "MODEL.PIXEL_STD")
        if any(s == 0 for s in self.pixel_std):
            self._refuse("MODEL.PIXEL_STD", list(self.pixel_std), "a std of 0 divides by zero")
        self.input_format = self._one_of(cfg, "INPUT.FORMAT", ("BGR", "RGB"))
        self.heads = HEADS[self.meta]

    # -- checks
    def _refuse(self, key: str, value: Any, why: str):
        raise GapscopeError(
            f"detectron2 config {self.source}: {key} = {value!r} is not supported: {why}"
        )

    def _one_of(self, cfg: dict, key: str, allowed: tuple) -> Any:
        value = _get(cfg, key)
        if value not in allowed:
            self._refuse(key, value, f"choose one of {', '.join(repr(a) for a in allowed)}")
        return value

    def _int(self, cfg: dict, key: str) -> int:
        value = _get(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            self._refuse(key, value, "it must be a positive integer")
        return value

    def _bool(self, cfg: dict, key: str) -> bool:
        value = _get(cfg, key)
        if not isinstance(value, bool):
            self._refuse(key, value, "it must be true or false")
        return value

    def _triple(self, cfg: dict, key: str) -> tuple[float, float, float]:
        value = _get(cfg, key)
        ok = isinstance(value, list | tuple) and len(value) == 3
        if not ok or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            self._refuse(key, value, "it must list 3 numbers (one per image channel)")
        return tuple(float(v) for v in value)

    def _check_group_norm(self) -> None:
        """nn.GroupNorm(32, C) needs C divisible by 32; detectron2 fails to build otherwise."""
        checks = [("MODEL.FPN.OUT_CHANNELS", self.fpn_out, self.fpn_norm, self.fpn_out)]
        for key, value, channels in (
            ("MODEL.RESNETS.STEM_OUT_CHANNELS", self.stem_out, self.stem_out),
            ("MODEL.RESNETS.RES2_OUT_CHANNELS", self.res2_out, self.res2_out),
            (
                "MODEL.RESNETS.WIDTH_PER_GROUP",
                self.width_per_group,
                self.groups * self.width_per_group,
            ),
        ):
            checks.append((key, value, self.norm, channels))
        for key, value, norm, channels in checks:
            if norm == "GN" and channels % 32:
                self._refuse(
                    key, value, "GN (GroupNorm with 32 groups) needs channel counts divisible by 32"
                )

    def info(self) -> dict:
        return {
            "config": str(self.source),
            "architecture": f"detectron2 {'X' if self.groups > 1 else 'R'}-{self.depth}-FPN "
            "(converted; detectron2 not needed)",
            "meta_architecture": self.meta,
            "depth": self.depth,
            "stride_in_1x1": self.stride_in_1x1,
            "norm": self.norm,
            "groups": self.groups,
            "width_per_group": self.width_per_group,
            "res5_dilation": self.res5_dilation,
            "stem_out_channels": self.stem_out,
            "res2_out_channels": self.res2_out,
            "fpn_out_channels": self.fpn_out,
            "fpn_norm": self.fpn_norm,
            "fuse_type": self.fuse_type,
            "strides": [4, 8, 16, 32, 64],
        }


# ----------------------------------------------------------------------------- modules


class FrozenBatchNorm2d(nn.Module):
    """detectron2's FrozenBatchNorm2d: fixed affine + statistics, initialised to identity
    (running_var = 1 - eps, as detectron2 does); forward is F.batch_norm(training=False)."""

    def __init__(self, num_features: int, eps: float = EPS):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x):
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class EvalBatchNorm2d(FrozenBatchNorm2d):
    """BatchNorm2d / SyncBatchNorm as they compute in eval mode, whatever the module's
    mode (features never come from batch statistics). Keeps BN's num_batches_tracked."""

    def __init__(self, num_features: int, eps: float = EPS):
        super().__init__(num_features, eps)
        self.running_var.fill_(1.0)  # torch's BatchNorm initialisation
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))


def get_norm(norm: str, channels: int) -> nn.Module | None:
    if norm == "":
        return None
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "GN":
        return nn.GroupNorm(32, channels, eps=EPS)
    if norm in BN_NORMS:
        return EvalBatchNorm2d(channels)
    raise ValueError(norm)  # _Arch has refused it already


class Conv2d(nn.Conv2d):
    """detectron2.layers.Conv2d: a conv followed by its optional `norm` submodule."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x):
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        return x


class BottleneckBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, bottleneck: int, stride: int, arch: _Arch):
        super().__init__()
        norm = arch.norm
        if in_ch != out_ch:
            self.shortcut = Conv2d(
                in_ch, out_ch, 1, stride=stride, bias=False, norm=get_norm(norm, out_ch)
            )
        else:
            self.shortcut = None
        stride_1x1, stride_3x3 = (stride, 1) if arch.stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_ch, bottleneck, 1, stride=stride_1x1, bias=False, norm=get_norm(norm, bottleneck)
        )
        self.conv2 = Conv2d(
            bottleneck,
            bottleneck,
            3,
            stride=stride_3x3,
            padding=1,
            groups=arch.groups,
            bias=False,
            norm=get_norm(norm, bottleneck),
        )
        self.conv3 = Conv2d(bottleneck, out_ch, 1, bias=False, norm=get_norm(norm, out_ch))

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        out += shortcut
        return F.relu_(out)


class BasicStem(nn.Module):
    def __init__(self, out_ch: int, norm: str):
        super().__init__()
        self.conv1 = Conv2d(
            3, out_ch, 7, stride=2, padding=3, bias=False, norm=get_norm(norm, out_ch)
        )

    def forward(self, x):
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    def __init__(self, arch: _Arch):
        super().__init__()
        self.stem = BasicStem(arch.stem_out, arch.norm)
        in_ch, out_ch = arch.stem_out, arch.res2_out
        bottleneck = arch.groups * arch.width_per_group
        for idx, (name, n) in enumerate(zip(STAGES, BLOCKS_PER_STAGE[arch.depth], strict=True)):
            first_stride = 1 if idx == 0 else 2
            blocks = []
            for i in range(n):
                stride = first_stride if i == 0 else 1
                blocks.append(BottleneckBlock(in_ch, out_ch, bottleneck, stride, arch))
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*blocks))
            out_ch *= 2
            bottleneck *= 2
        self.out_channels = in_ch

    def forward(self, x) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        out = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            out[name] = x
        return out


class Detectron2FPN(nn.Module):
    """detectron2's FPN(bottom_up=ResNet, in_features=res2..res5, top_block=LastLevelMaxPool):
    forward(images) → {p2..p6}."""

    def __init__(self, arch: _Arch):
        super().__init__()
        self.bottom_up = ResNet(arch)
        self.fuse_type = arch.fuse_type
        use_bias = arch.fpn_norm == ""
        in_channels = [arch.res2_out * 2**i for i in range(4)]
        for stage, cin in zip((2, 3, 4, 5), in_channels, strict=True):
            lateral = Conv2d(
                cin, arch.fpn_out, 1, bias=use_bias, norm=get_norm(arch.fpn_norm, arch.fpn_out)
            )
            output = Conv2d(
                arch.fpn_out,
                arch.fpn_out,
                3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(arch.fpn_norm, arch.fpn_out),
            )
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)

    def forward(self, x) -> dict[str, torch.Tensor]:
        feats = self.bottom_up(x)
        prev = self.fpn_lateral5(feats["res5"])
        results = {"p5": self.fpn_output5(prev)}
        for stage in (4, 3, 2):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = getattr(self, f"fpn_lateral{stage}")(feats[f"res{stage}"]) + top_down
            if self.fuse_type == "avg":
                prev = prev / 2
            results[f"p{stage}"] = getattr(self, f"fpn_output{stage}")(prev)
        results["p6"] = F.max_pool2d(results["p5"], kernel_size=1, stride=2, padding=0)
        return {lv: results[lv] for lv in LEVELS}


def _random_init(module: Detectron2FPN, seed: int = 0) -> None:
    """detectron2's initialisation (c2_msra_fill for ResNet convs, c2_xavier_fill for the
    FPN, identity norms), from a fixed seed so random-weight features are reproducible."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in module.named_modules():
            if isinstance(m, nn.Conv2d):
                if name.startswith("bottom_up."):
                    nn.init.kaiming_normal_(
                        m.weight, mode="fan_out", nonlinearity="relu", generator=gen
                    )
                else:
                    nn.init.kaiming_uniform_(m.weight, a=1, generator=gen)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- checkpoints


def _numpy_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy(._)core.multiarray._reconstruct
    scalar = np.float32(0).__reduce__()[0]  # numpy(._)core.multiarray.scalar
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5: numpy(._)core.numeric._frombuffer
    import _codecs
    from collections import OrderedDict

    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, latin1)
        ("_codecs", "encode"): _codecs.encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other global,
    so nothing named in the file is imported or called."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused persistent id (not a model-zoo pickle)")


def _first_line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [""])[0] or type(exc).__name__)[:200]


def _read_pkl(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        msg = _first_line(exc)
        if msg.startswith("refused"):
            raise GapscopeError(
                f"checkpoint {path} is not a plain model-zoo pickle ({msg}); nothing in it "
                "was run: give the detector's model_final.pth or a model-zoo .pkl"
            ) from None
        raise GapscopeError(f"checkpoint {path} is truncated or corrupt ({msg})") from None
    except Exception as exc:  # noqa: BLE001 - any failure of a user's file is a user error
        raise GapscopeError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _read_pth(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        refused = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln]
        reason = (refused or lines or [type(exc).__name__])[0].split(". ")[0][:200]
        raise GapscopeError(
            f"checkpoint {path} cannot be read as a PyTorch checkpoint with weights_only=True "
            f"({reason}); nothing in it was run: is it truncated, or not a detectron2 "
            "model_final.pth?"
        ) from None


def _c2_name(name: str) -> str:
    """detectron2's convert_basic_c2_names + the FPN renames of convert_c2_detectron_names
    (the parts that concern the backbone; head names are only recognised as heads)."""
    k = {"pred_b": "linear_b", "pred_w": "linear_w"}.get(name, name)
    k = k.replace("_", ".")
    for pattern, repl in (
        (r"\.b$", ".bias"),
        (r"\.w$", ".weight"),
        (r"bn\.s$", "norm.weight"),
        (r"bn\.bias$", "norm.bias"),
        (r"bn\.rm", "norm.running_mean"),
        (r"bn\.running.mean$", "norm.running_mean"),
        (r"bn\.riv$", "norm.running_var"),
        (r"bn\.running.var$", "norm.running_var"),
        (r"bn\.gamma$", "norm.weight"),
        (r"bn\.beta$", "norm.bias"),
        (r"gn\.s$", "norm.weight"),
        (r"gn\.bias$", "norm.bias"),
        (r"^res\.conv1\.norm\.", "conv1.norm."),
        (r"^conv1\.", "stem.conv1."),
    ):
        k = re.sub(pattern, repl, k)
    for old, new in (
        (".branch1.", ".shortcut."),
        (".branch2a.", ".conv1."),
        (".branch2b.", ".conv2."),
        (".branch2c.", ".conv3."),
    ):
        k = k.replace(old, new)
    splits = k.split(".")
    norm = ".norm" if "norm" in splits else ""
    if k.startswith("fpn.inner.") and len(splits) > 3:
        return f"fpn_lateral{splits[2][len('res') :]}{norm}.{splits[-1]}"
    if k.startswith("fpn.res") and len(splits) > 2:
        return f"fpn_output{splits[1][len('res') :]}{norm}.{splits[-1]}"
    return k


def _to_tensor(key: str, value: Any, path: Path) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray | np.generic) and np.asarray(value).dtype.kind in "fiub":
        return torch.from_numpy(np.array(value, copy=True))
    raise GapscopeError(
        f"checkpoint {path}: {key} holds a {type(value).__name__}, not an array of numbers"
    )


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], str, int]:
    """A detectron2 model's state dict, named as detectron2 names it (`backbone.` kept),
    the format it came in ("pth", "detectron2-pkl" or "caffe2-pkl", renamed here), and
    how many Caffe2 head blobs were dropped."""
    path = Path(path)
    if not path.is_file():
        raise GapscopeError(f"checkpoint {path} does not exist")
    with open(path, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    heuristics = False
    if path.suffix.lower() == ".pkl" and not is_zip:
        data = _read_pkl(path)
        if not isinstance(data, dict):
            raise GapscopeError(f"checkpoint {path} holds a {type(data).__name__}, not a dict")
        if "model" in data and "__author__" in data:
            fmt, model = "detectron2-pkl", data["model"]
            heuristics = bool(data.get("matching_heuristics", False))
            if heuristics and data["__author__"] == "Caffe2":  # detectron2's c2_conversion
                fmt = "caffe2-pkl"
        else:  # Caffe2 / Detectron1 model zoo: weights under "blobs" (detection models)
            model = data.get("blobs", data)
            fmt = "caffe2-pkl"
            if isinstance(model, dict):
                model = {k: v for k, v in model.items() if not str(k).endswith("_momentum")}
    else:  # detectron2 loads .pth checkpoints with its name-matching heuristics
        data = _read_pth(path)
        fmt, heuristics = "pth", True
        model = data.get("model", data) if isinstance(data, dict) else data
    if not isinstance(model, dict) or not model:
        raise GapscopeError(f"checkpoint {path} holds no state dict of weights")
    if not all(isinstance(k, str) for k in model):
        raise GapscopeError(f"checkpoint {path}: its state dict has non-string keys")
    heads: list[str] = []
    if fmt == "caffe2-pkl":
        renamed = {_c2_name(k): k for k in model}
        if len(renamed) != len(model):
            raise GapscopeError(f"checkpoint {path}: two Caffe2 names map to one detectron2 name")
        # the backbone's blobs are renamed as detectron2 renames them; everything else
        # (RPN, box, mask, keypoint, classifier blobs) belongs to heads and is dropped
        heads = sorted(old for new, old in renamed.items() if not C2_BACKBONE.match(new))
        renamed = {new: old for new, old in renamed.items() if C2_BACKBONE.match(new)}
        log.info(
            "%s: renamed %d Caffe2 backbone weights to detectron2 names; ignoring %d head "
            "blobs (%s, ...)",
            path,
            len(renamed),
            len(heads),
            heads[0] if heads else "-",
        )
        state = {new: _to_tensor(old, model[old], path) for new, old in renamed.items()}
        heuristics = True
    else:
        state = {k: _to_tensor(k, v, path) for k, v in model.items()}
    if all(k.startswith("module.") for k in state):  # fvcore strips DataParallel's prefix
        state = {k[len("module.") :]: v for k, v in state.items()}
    if heuristics:  # name-matched checkpoints may omit the nesting (suffix matching)
        state = {
            (f"backbone.bottom_up.{k}" if re.match(r"(stem|res\d)\.", k) else k): v
            for k, v in state.items()
        }
        state = {
            (f"backbone.{k}" if re.match(r"fpn_(lateral|output)\d", k) else k): v
            for k, v in state.items()
        }
    return state, fmt, len(heads)


def _check_pixel_stats(state: dict, arch: _Arch, path: Path) -> None:
    """Older detectron2 stored MODEL.PIXEL_MEAN/STD in the checkpoint. They must agree
    with the config: a mismatch means the config is not the one the model was trained with."""
    for key, want, cfg_key in (
        ("pixel_mean", arch.pixel_mean, "MODEL.PIXEL_MEAN"),
        ("pixel_std", arch.pixel_std, "MODEL.PIXEL_STD"),
    ):
        if key not in state:
            continue
        got = state.pop(key).detach().double().flatten()
        expected = torch.tensor(want, dtype=torch.float64)
        if got.numel() != 3 or not torch.allclose(got, expected, rtol=1e-4, atol=1e-3):
            shown = [round(v, 3) for v in got.tolist()]
            raise GapscopeError(
                f"checkpoint {path} stores {key} {shown} but {arch.source} sets "
                f"{cfg_key} = {list(want)}: use the config the model was trained with"
            )


def _depth_hint(state: dict, arch: _Arch) -> str:
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"bottom_up\.res4\.(\d+)\.", k))}
    n = max(blocks) + 1 if blocks else 0
    depth = {6: 50, 23: 101, 36: 152}.get(n)
    if depth and depth != arch.depth:
        return (
            f" (the checkpoint has {n} res4 blocks, a ResNet-{depth}, but the config sets "
            f"MODEL.RESNETS.DEPTH = {arch.depth})"
        )
    return ""


def load_detectron2_weights(module: Detectron2FPN, arch: _Arch, path: Path) -> dict:
    state, fmt, c2_heads = read_checkpoint(path)
    _check_pixel_stats(state, arch, path)
    if any(k.startswith("backbone.") for k in state):
        state = {
            (k[len("backbone.") :] if k.startswith("backbone.") else k): v for k, v in state.items()
        }
    if fmt == "caffe2-pkl":  # Caffe2 folded BN into an affine: detectron2 leaves the
        own = module.state_dict()  # statistics at their identity initialisation
        filled = [k for k in own if k.endswith(("running_mean", "running_var")) and k not in state]
        for k in filled:
            state[k] = own[k].clone()
        if filled:
            log.info(
                "%s: %d BN statistics absent (Caffe2 affine), left at identity", path, len(filled)
            )
    try:
        load_into(module, state, str(path), ignore_prefixes=arch.heads)
    except GapscopeError as exc:
        raise GapscopeError(f"{exc}{_depth_hint(state, arch)}") from None
    n_heads = c2_heads + sum(1 for k in state if k.startswith(arch.heads))
    return {"checkpoint_format": fmt, "head_keys_ignored": n_heads}


# ----------------------------------------------------------------------------- entry point


def detectron2_backbone(
    config: Path | None = None, checkpoint: Path | None = None, random_weights: bool = False
) -> Backbone:
    """p2..p6 of a detectron2 ResNet-FPN detector, from its yaml config and checkpoint."""
    if config is None:
        raise GapscopeError(
            "the detectron2 backbone needs the detector's config: --detectron2-config "
            "PATH.yaml (with its _BASE_ files next to it)"
        )
    config = Path(config)
    arch = _Arch(load_config(config), config)
    if checkpoint is None and not random_weights:
        raise GapscopeError(
            "detectron2 needs --checkpoint PATH (model_final.pth or a model-zoo .pkl), or "
            "--random-weights to use untrained weights on purpose"
        )
    module = Detectron2FPN(arch)
    info = arch.info()
    if checkpoint is None:
        _random_init(module)
        weights = "RANDOM WEIGHTS (asked for with --random-weights)"
    else:
        checkpoint = Path(checkpoint)
        info.update(load_detectron2_weights(module, arch, checkpoint))
        weights = f"{checkpoint} (sha256 {file_sha256(checkpoint)[:12]})"
    return Backbone(
        name="detectron2",
        module=module.eval(),
        levels=LEVELS,
        weights=weights,
        random_weights=checkpoint is None,
        pixel_mean=arch.pixel_mean,
        pixel_std=arch.pixel_std,
        input_format=arch.input_format,
        size_divisibility=SIZE_DIVISIBILITY,
        info=info,
    )
