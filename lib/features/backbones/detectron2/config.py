"""detectron2 yaml configs: `_BASE_` chains over detectron2's defaults, and `Arch`, the
ResNet-FPN a config describes, checked against what this package reproduces exactly.

Torch-free: a config is refused before any weights are read.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from lib.runtime.errors import GapscopeError

STAGES = ("res2", "res3", "res4", "res5")
BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

# detector heads per meta-architecture: their checkpoint keys are dropped (listed once)
HEADS = {
    "GeneralizedRCNN": ("proposal_generator.", "roi_heads."),
    "ProposalNetwork": ("proposal_generator.",),
    "PanopticFPN": ("proposal_generator.", "roi_heads.", "sem_seg_head."),
    "RetinaNet": ("head.", "anchor_generator."),
}
BN_NORMS = ("BN", "SyncBN", "naiveSyncBN", "naiveSyncBN_N", "nnSyncBN")  # eval: same math
NORMS = ("", "FrozenBN", "GN", *BN_NORMS)

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
        "ROI_HEADS": {"IN_FEATURES": ["res4"]},
        "ROI_BOX_HEAD": {
            "POOLER_RESOLUTION": 14,
            "POOLER_SAMPLING_RATIO": 0,
            "POOLER_TYPE": "ROIAlignV2",
        },
    },
    "INPUT": {"FORMAT": "BGR", "MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333},
}
POOLER_TYPES = {"ROIAlignV2": True, "ROIAlign": False}  # → ROIAlign's `aligned`


# ----------------------------------------------------------------------------- yaml


class InertPythonTag:
    """A `!!python/...` value, kept as written and never evaluated. detectron2 reads its
    yaml unsafely, and its own Base-RetinaNet.yaml computes anchor sizes with
    `!!python/object/apply:eval`; none of the keys read here is such a value."""

    def __init__(self, tag: str, value: Any):
        self.tag, self.value = tag, value

    def __repr__(self) -> str:
        return f"!!python/{self.tag} {self.value!r}"


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that parses `!!python/...` tags into InertPythonTag."""


def _construct_python_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        value: Any = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return InertPythonTag(suffix, value)


_ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", _construct_python_tag)


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


def _read_yaml(path: Path) -> dict:
    """One config file's own mapping (its `_BASE_` still in it)."""
    if not path.is_file():
        raise GapscopeError(f"detectron2 config {path} does not exist")
    if path.suffix == ".py":
        raise GapscopeError(
            f"detectron2 config {path} is a LazyConfig (.py), which is not supported: "
            "give the detector's .yaml config"
        )
    try:
        with open(path, encoding="utf-8") as fh:
            cfg = yaml.load(fh, Loader=_ConfigLoader)  # a SafeLoader: builds plain data only
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GapscopeError(f"detectron2 config {path} is not valid YAML ({first[:160]})") from None
    if not isinstance(cfg, dict):
        raise GapscopeError(
            f"detectron2 config {path} is not a YAML mapping (it holds a "
            f"{type(cfg).__name__}): give the detector's config file"
        )
    if "MODEL" not in cfg and isinstance(cfg.get("model"), dict) and "_target_" in cfg["model"]:
        # LazyConfig.save writes lowercase `model: {_target_: ...}` trees; read as a yaml
        # config, every key would silently fall back to detectron2's defaults
        raise GapscopeError(
            f"detectron2 config {path} is a saved LazyConfig (model: _target_ ...), which is "
            "not supported: give the detector's yaml config (MODEL: ...)"
        )
    return cfg


def _base_path(path: Path, base: Any) -> Path:
    """The file a config's `_BASE_` names, relative to that config, checked to exist."""
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
    return base_path


def _load_yaml_with_base(path: Path, seen: tuple[Path, ...]) -> dict:
    path = Path(path)
    resolved = path.resolve()
    if resolved in seen:
        raise GapscopeError(f"detectron2 config {path}: _BASE_ chain loops back to itself")
    cfg = _read_yaml(path)
    base = cfg.pop("_BASE_", None)
    if base is None:
        return cfg
    base_cfg = _load_yaml_with_base(_base_path(path, base), (*seen, resolved))
    return _merge(cfg, base_cfg, path)


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


# ----------------------------------------------------------------------------- architecture


class Arch:
    """The architecture a config describes, checked against what is converted exactly.

    Checks run in a fixed order, so a config with several problems names the same one
    first every time."""

    def __init__(self, cfg: dict, source: Path):
        self.source = source
        self._read_detector(cfg)
        self._read_depth_and_strides(cfg)
        self._read_widths_and_norms(cfg)
        self._check_features(cfg)
        if self.norm == "GN" or self.fpn_norm == "GN":
            self._check_group_norm()
        self._read_input(cfg)
        self._read_box_pooler(cfg)

    # -- the parts of a config, each read and checked
    def _read_detector(self, cfg: dict) -> None:
        self.meta = self._one_of(cfg, "MODEL.META_ARCHITECTURE", tuple(HEADS))
        self.heads = HEADS[self.meta]
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

    def _read_depth_and_strides(self, cfg: dict) -> None:
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

    def _read_widths_and_norms(self, cfg: dict) -> None:
        self.norm = self._one_of(cfg, "MODEL.RESNETS.NORM", NORMS)
        self.fpn_norm = self._one_of(cfg, "MODEL.FPN.NORM", NORMS)
        self.stride_in_1x1 = self._bool(cfg, "MODEL.RESNETS.STRIDE_IN_1X1")
        self.groups = self._int(cfg, "MODEL.RESNETS.NUM_GROUPS")
        self.width_per_group = self._int(cfg, "MODEL.RESNETS.WIDTH_PER_GROUP")
        self.stem_out = self._int(cfg, "MODEL.RESNETS.STEM_OUT_CHANNELS")
        self.res2_out = self._int(cfg, "MODEL.RESNETS.RES2_OUT_CHANNELS")
        self.fpn_out = self._int(cfg, "MODEL.FPN.OUT_CHANNELS")
        self.fuse_type = self._one_of(cfg, "MODEL.FPN.FUSE_TYPE", ("sum", "avg"))

    def _check_features(self, cfg: dict) -> None:
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
        if not isinstance(in_features, list | tuple) or list(in_features) != list(STAGES):
            self._refuse(
                "MODEL.FPN.IN_FEATURES",
                in_features,
                "only FPNs over [res2, res3, res4, res5] (levels p2..p6) are converted",
            )

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

    def _read_input(self, cfg: dict) -> None:
        self.pixel_mean = self._triple(cfg, "MODEL.PIXEL_MEAN")
        self.pixel_std = self._triple(cfg, "MODEL.PIXEL_STD")
        if any(s == 0 for s in self.pixel_std):
            self._refuse("MODEL.PIXEL_STD", list(self.pixel_std), "a std of 0 divides by zero")
        self.input_format = self._one_of(cfg, "INPUT.FORMAT", ("BGR", "RGB"))

    def _read_box_pooler(self, cfg: dict) -> None:
        """What the box head pools (for per-object features) and the test-time resize.
        Read leniently: a detector without ROI heads over FPN levels (a RetinaNet, a
        C4 model) still gives its FPN levels; object mode says what is missing."""
        self.test_size = (
            self._int(cfg, "INPUT.MIN_SIZE_TEST"),
            self._int(cfg, "INPUT.MAX_SIZE_TEST"),
        )
        in_features = _get(cfg, "MODEL.ROI_HEADS.IN_FEATURES")
        kind = _get(cfg, "MODEL.ROI_BOX_HEAD.POOLER_TYPE")
        self.box_pooler = None
        if (
            self.meta != "RetinaNet"
            and isinstance(in_features, list | tuple)
            and in_features
            and set(in_features) <= {"p2", "p3", "p4", "p5", "p6"}
            and kind in POOLER_TYPES
        ):
            self.box_pooler = {
                "in_features": list(in_features),
                "resolution": self._int(cfg, "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"),
                "sampling_ratio": _get(cfg, "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO"),
                "aligned": POOLER_TYPES[kind],
                "type": kind,
            }

    # -- typed reads, each refusing with the key and value at fault
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
            "test_size": list(self.test_size),
            "roi_pooler": self.box_pooler,
        }
