"""The caricature batch job: every (model, layer, image) combination, stored in a run.

A published run is never modified, so the job derives a new run from the latest one (hard
links, no copies), adds the caricatures (one image and one array per combination, named
`<model>_<layer>_<image>` as the original tool did) and a caricature manifest of settings
and achieved cosine similarities, and publishes it.

Models are named as everywhere in gapscope (lib.features.backbones.registry), with a NAME:
NAME=ARCH[:CHECKPOINT][@CONFIG], e.g.
- a torchvision classifier with a state dict (`syn=resnet50:syn.pth`, any head size);
- a gapscope backbone (`lite=efficientnet-lite0`, `fpn=resnet50-fpn:model.pth`);
- a detectron2 detector, `det=detectron2:model_final.pth@config.yaml`: its FPN levels
  p2..p6 and every backbone module, with the detector's own pixel mean/std and BGR input;
- a TorchScript file, `ts=torchscript:model.pt`: any module that runs in its forward.
Models whose architecture has no normalisation of its own (torchvision and TorchScript
models) take --mean/--std, ImageNet's by default.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lib.features.backbones import create_backbone, lookup, parse_model_spec
from lib.inputs.images import decode_rgb, resize_crop, thumbnail_png
from lib.runtime.errors import GapscopeError
from lib.runtime.params import REQUIRED, check_minimums, comma_floats, param
from lib.store.runs import Run, RunStore, RunWriter

log = logging.getLogger(__name__)


@dataclass
class CaricatureModel:
    name: str
    spec: str
    backbone: object  # lib.features.backbones.Backbone
    normalisation: str

    def describe(self) -> dict:
        b = self.backbone
        return {
            "spec": self.spec,
            "weights": b.weights,
            "mean": [v / 255 for v in b.pixel_mean],
            "std": [v / 255 for v in b.pixel_std],
            "channels": b.input_format,
            "normalisation": self.normalisation,
        }


def load_model(text: str, mean=None, std=None) -> CaricatureModel:
    """A named model from NAME=ARCH[:CHECKPOINT][@CONFIG]; mean/std (0..1) for models
    without a normalisation of their own."""

    spec = parse_model_spec(text, named=True)
    entry = lookup(spec.arch)
    backbone = create_backbone(spec)
    if entry.own_normalisation:
        normalisation = "the backbone's own"
    elif mean is not None and std is not None:
        scaled = {k: tuple(v * 255 for v in x) for k, x in (("mean", mean), ("std", std))}
        backbone = replace(backbone, pixel_mean=scaled["mean"], pixel_std=scaled["std"])
        normalisation = "as given (--mean/--std)"
    else:
        normalisation = "ImageNet mean/std (the default: pass --mean/--std if trained otherwise)"
    return CaricatureModel(spec.name, text, backbone, normalisation)


def list_layers(text: str) -> list[str]:
    """Layer names a model accepts: its levels, then every module (dotted). The
    architecture alone decides them, so no checkpoint is needed (a TorchScript file is
    its own architecture)."""
    from lib.analysis.caricature import layer_names

    spec = parse_model_spec(text)
    backbone = create_backbone(spec, random_weights=spec.checkpoint is None)
    return [*backbone.levels, *layer_names(backbone.module)]


@dataclass
class CaricatureJob:
    """A caricature job's settings; every field is also a `batch caricature` option."""

    models: list[str] = param(
        REQUIRED,
        "NAME=ARCH[:CHECKPOINT][@CONFIG], repeatable: a torchvision classifier with "
        "its state dict (syn=resnet50:syn.pth), a TorchScript file (ts=torchscript:model.pt), "
        "a gapscope backbone (lite=efficientnet-lite0) or "
        "det=detectron2:model_final.pth@config.yaml.",
        flag="--model",
    )
    layers: list[str] = param(
        REQUIRED,
        "Layer, repeatable: dotted (layer3.2.conv2), underscore (layer3_2_conv2) or "
        "a level (p4, c3). See `layers`.",
        flag="--layer",
    )
    images: list[Path] = param(
        [], "Input image file, repeatable. Default: from the run.", flag="--image"
    )
    from_run: int = param(
        4, "Without --image: this many of the run's images, half per domain.", minimum=1
    )
    run_id: str | None = param(None, "Base run (default: latest).", flag="--run")
    size: int = param(128, "Caricature side in pixels.", minimum=8)
    input_size: int = param(224, "Model input side in pixels.", minimum=8)
    steps: int | None = param(None, "Adam steps (default: 512; 1024 for layer4*).", minimum=1)
    lr: float = param(0.05, "Adam learning rate.")
    cossim_pow: float = param(0.0, "Objective: dot × cosine**this (0: the original's dot only).")
    seed: int = param(0, "Seed (same seed, same caricatures on CPU).")
    mean: tuple[float, float, float] | None = param(
        None,
        "Normalisation mean for models without their own (torchvision, TorchScript), "
        "e.g. 0.5,0.5,0.5",
        cli_type=str | None,
        parse=comma_floats("--mean"),
    )
    std: tuple[float, float, float] | None = param(
        None,
        "Normalisation std, e.g. 0.5,0.5,0.5",
        cli_type=str | None,
        parse=comma_floats("--std"),
    )
    device: str = param(
        "auto", "cpu, cuda, or auto: a GPU when there is one (lib.runtime.backend)."
    )

    def __post_init__(self):
        check_minimums(self)


def _pick_images(job: CaricatureJob, base: Run) -> list[tuple[str, np.ndarray, str]]:
    """(name, pixels (H, W, 3) uint8, where it came from) for every input image."""

    if job.images:
        return [(p.stem, decode_rgb(Path(p)), str(Path(p).resolve())) for p in job.images]
    picked = []
    images = base.images
    per_domain = max(1, job.from_run // 2)
    for domain in ("real", "synthetic"):
        rows = images.index[images["domain"] == domain][:per_domain]
        for row in rows:
            source = base.image_file(int(row))
            pixels = decode_rgb(source)
            picked.append((f"{domain}_{int(row)}", pixels, str(source)))
    return picked


def run_caricatures(job: CaricatureJob, store: RunStore, progress=None) -> Run:
    """Compute every combination, publish a run derived from the base run, return it."""

    base = store.open(job.run_id)
    if not job.models or not job.layers:
        raise GapscopeError("name at least one --model and one --layer")
    images = _pick_images(job, base)
    names = [n for n, _, _ in images]
    if len(set(names)) != len(names):
        raise GapscopeError("two input images share a file name: rename one")
    stack = np.stack([resize_crop(px, job.input_size) for _, px, _ in images])
    if job.device == "auto":
        from lib.runtime.backend import choose_backend

        job = replace(job, device=choose_backend("auto").device)
    loaded = _load_and_check(job)  # every model and layer checked before any long work
    with store.writing(derive_from=base) as writer:
        out = writer.new_caricatures_dir()
        _write_inputs(writer, names, stack, job.input_size)
        items = []
        for model, layers in loaded:
            items += _caricatures_of(model, layers, stack, names, job, out, progress)
        writer.caricature_manifest(
            {
                "base_run": base.id,
                "params": {**asdict(job), "images": [str(p) for p in job.images]},
                "models": {model.name: model.describe() for model, _ in loaded},
                "images": {n: src for n, _, src in images},
                "items": items,
            }
        )
        writer.manifest({**base.manifest, "derived_from": base.id}, schema=base.schema)
    return writer.published


def _write_inputs(writer: RunWriter, names: list[str], stack: np.ndarray, size: int) -> None:
    for name, model_input in zip(names, stack, strict=True):
        thumbnail_png(model_input, writer.caricature_input(name), size=size)


def _load_and_check(job: CaricatureJob) -> list[tuple[CaricatureModel, list[str]]]:
    import torch

    from lib.analysis.caricature import layer_fn, resolve_layer

    loaded, seen = [], set()
    for spec in job.models:
        model = load_model(spec, job.mean, job.std)
        if model.name in seen:
            raise GapscopeError(f"two models are named {model.name}: name each differently")
        seen.add(model.name)
        module, levels = model.backbone.module, model.backbone.levels
        layers = [resolve_layer(module, lay, levels) for lay in job.layers]
        if isinstance(module, torch.jit.ScriptModule):
            layer_fn(module, layers).close()  # a layer that never runs fails now
        loaded.append((model, layers))
    return loaded


def _caricatures_of(model, layers, stack, names, job: CaricatureJob, out: Path, progress):
    """One model's caricatures, one batch per step count (all images × all layers that
    share it); returns their manifest items."""
    from lib.analysis.caricature import (
        CaricatureParams,
        backbone_inputs,
        compute,
        default_steps,
        save,
    )

    by_steps: dict[int, list[str]] = {}
    for layer in layers:
        by_steps.setdefault(job.steps or default_steps(layer), []).append(layer)
    inputs = backbone_inputs(model.backbone)
    report = (lambda s, n: progress(model.name, s, n)) if progress else None
    items = []
    for steps, group in by_steps.items():
        params = CaricatureParams(
            size=job.size,
            input_size=job.input_size,
            steps=steps,
            lr=job.lr,
            cossim_pow=job.cossim_pow,
            seed=job.seed,
        )
        result = compute(
            inputs["model"],
            group,
            stack,
            inputs["mean"],
            inputs["std"],
            params,
            bgr=inputs["bgr"],
            levels=inputs["levels"],
            device=job.device,
            progress=report,
        )
        item_images = [names[i % len(names)] for i in range(len(result))]
        pngs = [p for p in save(result, out, model.name, None, item_images) if p.suffix == ".png"]
        for i, png in enumerate(pngs):
            items.append(
                {
                    "model": model.name,
                    "layer": result.layers[i],
                    "image": item_images[i],
                    "png": png.name,
                    "npy": png.with_suffix(".npy").name,
                    "cosine": float(result.cosine[i]),
                    "start_cosine": float(result.start_cosine[i]),
                    "steps": steps,
                }
            )
        log.info("%s: %d caricatures in %.1f s", model.name, len(result), result.seconds)
    return items
