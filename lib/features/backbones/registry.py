"""The model registry: architectures register themselves with a decorator (timm's
`register_model` pattern), and one grammar names a model everywhere:

    [NAME=]ARCH[:CHECKPOINT][@CONFIG]

`batch run --backbone`, `batch caricature --model` and `batch layers` all go through
`parse_model_spec` and `lib.features.backbones.create_backbone`. NAME is how a caricature job labels
a model; CONFIG is a detectron2 YAML (split off at the last '@' when what follows ends in
.yaml, .yml or .py, so a checkpoint path may contain '@').
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lib.runtime.errors import GapscopeError

CONFIG_SUFFIXES = (".yaml", ".yml", ".py")
_NAME = re.compile(r"[\w.-]+")  # a model's NAME: no ':' or '/', so no path


@dataclass(frozen=True)
class Entry:
    """One architecture. The factory is called as factory(checkpoint=..., random_weights=...,
    [config=...]) and returns a `lib.features.backbones.Backbone`."""

    name: str
    factory: Callable
    description: str = ""
    takes_config: bool = False  # reads a detectron2 config (@CONFIG)
    own_normalisation: bool = True  # False: the user may give --mean/--std (caricatures)


_ENTRIES: dict[str, Entry] = {}
# Families registered by a predicate (every torchvision classifier): looked up by name
# only after the explicit entries, and never listed one by one.
_FAMILIES: list[tuple[str, Callable[[str], bool], Callable[[str], Entry]]] = []


def register_backbone(
    name: str,
    description: str = "",
    takes_config: bool = False,
    own_normalisation: bool = True,
) -> Callable[[Callable], Callable]:
    """Decorator: `@register_backbone("resnet50-fpn", "...")` above a factory."""

    def add(factory: Callable) -> Callable:
        if name in _ENTRIES:
            raise RuntimeError(f"backbone {name!r} is registered twice")
        _ENTRIES[name] = Entry(name, factory, description, takes_config, own_normalisation)
        return factory

    return add


def register_family(
    description: str, contains: Callable[[str], bool], entry: Callable[[str], Entry]
) -> None:
    """A family of architectures too large to list (all torchvision classifiers)."""
    _FAMILIES.append((description, contains, entry))


def lookup(arch: str) -> Entry:
    if arch in _ENTRIES:
        return _ENTRIES[arch]
    for _, contains, entry in _FAMILIES:
        if contains(arch):
            return entry(arch)
    families = "; ".join(description for description, _, _ in _FAMILIES)
    raise GapscopeError(
        f"unknown backbone {arch!r}: choose one of {', '.join(names())}"
        + (f"; or {families}" if families else "")
    )


def names() -> list[str]:
    return sorted(_ENTRIES)


def entries() -> Iterable[Entry]:
    return (_ENTRIES[n] for n in names())


def families() -> list[str]:
    return [description for description, _, _ in _FAMILIES]


@dataclass(frozen=True)
class ModelSpec:
    """How a model is built (create_backbone's arguments): what the CLI's
    `[NAME=]ARCH[:CHECKPOINT][@CONFIG]` names, and whether its weights are random on
    purpose. A built backbone carries its own (`Backbone.spec`, paths absolute), which is
    how a Dask worker builds the same model again."""

    arch: str
    checkpoint: Path | None = None
    config: Path | None = None
    name: str | None = None
    random_weights: bool = False

    @property
    def label(self) -> str:
        return self.name or self.arch


def parse_model_spec(text: str, named: bool = False) -> ModelSpec:
    """'[NAME=]ARCH[:CHECKPOINT][@CONFIG]' → ModelSpec. `named`: NAME= is required."""
    example = "mixed=resnet50:mixed.pth" if named else "resnet50-fpn:model.pth"
    name, has_name, rest = text.partition("=")
    if not has_name or not _NAME.fullmatch(name):  # '=' inside a path (epoch=10.ckpt)
        name, has_name, rest = "", "", text
    if (named and not name) or (has_name and not name) or not rest:
        form = "NAME=ARCH[:CHECKPOINT][@CONFIG]" if named else "ARCH[:CHECKPOINT][@CONFIG]"
        raise GapscopeError(f"model {text!r}: write {form}, e.g. {example}")
    config = None
    head, at, tail = rest.rpartition("@")
    if at and tail.lower().endswith(CONFIG_SUFFIXES):
        rest, config = head, Path(tail)
    arch, _, checkpoint = rest.partition(":")
    if not arch:
        raise GapscopeError(f"model {text!r}: name an architecture before ':', e.g. {example}")
    return ModelSpec(arch, Path(checkpoint) if checkpoint else None, config, name or None)
