"""The caricature batch job: every (model, layer, image) combination, stored in a run.

A published run is never modified, so the job derives a new run from the latest one (hard
links, no copies), adds `caricatures/` with one `<model>_<layer>_<image>.png/.npy` per
combination and a `caricatures/manifest.json` of settings and achieved cosine
similarities, and publishes it.

Models are given as NAME=ARCH[:CHECKPOINT]:
- a torchvision classification architecture (`resnet50`, `vgg16`, ...) with a state dict:
  any module can be a layer; the head may have any size; normalisation from --mean/--std;
- a gapscope backbone (`efficientnet-lite0`, `resnet50-fpn`): its levels and its own
  normalisation;
- a detectron2 detector, `NAME=detectron2:model_final.pth@config.yaml`: its FPN levels
  p2..p6 and every backbone module, with the detector's own pixel mean/std and BGR input;
- a TorchScript file, `NAME=torchscript:model.pt`: any module that runs in its forward;
  normalisation from --mean/--std, as for torchvision classifiers.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lib.errors import GapscopeError
from lib.store import Run, RunStore

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LoadedModel:
    name: str
    spec: str
    module: object  # torch.nn.Module
    mean: tuple[float, float, float]  # 0..1 units
    std: tuple[float, float, float]
    bgr: bool = False
    levels: tuple[str, ...] = ()
    weights: str = ""
    normalisation: str = ""


def parse_model_spec(text: str) -> tuple[str, str, Path | None]:
    """'NAME=ARCH[:CHECKPOINT]' → (name, arch, checkpoint)."""
    if "=" not in text:
        raise GapscopeError(
            f"model {text!r}: write NAME=ARCH[:CHECKPOINT], e.g. mixed=resnet50:m.pth"
        )
    name, rest = text.split("=", 1)
    arch, _, ckpt = rest.partition(":")
    if not name or not arch:
        raise GapscopeError(f"model {text!r}: write NAME=ARCH[:CHECKPOINT]")
    return name, arch, Path(ckpt) if ckpt else None


def load_model(text: str, mean=None, std=None) -> LoadedModel:
    import torchvision

    from lib.backbones import REGISTRY, create_backbone
    from lib.backbones.base import file_sha256, load_into, load_state_dict
    from lib.caricature import backbone_inputs

    name, arch, ckpt = parse_model_spec(text)
    classifiers = set(torchvision.models.list_models(module=torchvision.models))
    if arch in classifiers or arch == "torchscript":
        if ckpt is None:
            raise GapscopeError(f"model {name}: {arch} needs a file ({name}={arch}:PATH)")
        if arch == "torchscript":
            from lib.backbones.torchscript import load_torchscript

            net = load_torchscript(ckpt)
        else:
            net = getattr(torchvision.models, arch)(weights=None)
            state = load_state_dict(ckpt)
            load_into(net, state, str(ckpt), ignore_prefixes=("fc.", "classifier."))
        given = mean is not None and std is not None
        return LoadedModel(
            name=name,
            spec=text,
            module=net.eval(),
            mean=tuple(mean) if given else IMAGENET_MEAN,
            std=tuple(std) if given else IMAGENET_STD,
            weights=f"{ckpt} (sha256 {file_sha256(ckpt)[:12]})",
            normalisation="as given (--mean/--std)"
            if given
            else "ImageNet mean/std (the default: pass --mean/--std if trained otherwise)",
        )
    if arch in REGISTRY:
        config = None
        if arch == "detectron2":
            if ckpt is None or "@" not in str(ckpt):
                raise GapscopeError(
                    f"model {name}: write {name}=detectron2:model_final.pth@config.yaml"
                )
            ckpt, config = (Path(part) for part in str(ckpt).split("@", 1))
        backbone = create_backbone(arch, ckpt, config=config)
        inputs = backbone_inputs(backbone)
        return LoadedModel(
            name=name,
            spec=text,
            module=inputs["model"],
            mean=inputs["mean"],
            std=inputs["std"],
            bgr=inputs["bgr"],
            levels=inputs["levels"],
            weights=backbone.weights,
            normalisation="the backbone's own",
        )
    raise GapscopeError(
        f"model {name}: unknown architecture {arch!r} (a torchvision classifier such as "
        f"resnet50, torchscript:FILE, or one of {', '.join(sorted(REGISTRY))})"
    )


def list_layers(text: str) -> list[str]:
    """Layer names a model accepts: its levels, then every module (dotted). The
    architecture alone decides them, so no checkpoint is needed (a TorchScript file is
    its own architecture)."""
    import torchvision

    from lib.backbones import REGISTRY, create_backbone
    from lib.caricature import layer_names

    spec = text if "=" in text else f"m={text}"
    _, arch, ckpt = parse_model_spec(spec)
    if arch in torchvision.models.list_models(module=torchvision.models):  # as load_model
        return layer_names(getattr(torchvision.models, arch)(weights=None))
    if arch in REGISTRY:
        backbone = create_backbone(arch, ckpt, random_weights=ckpt is None)
        return [*backbone.levels, *layer_names(backbone.module)]
    return layer_names(load_model(spec).module)  # raises the unknown-architecture error


@dataclass
class CaricatureJob:
    models: list[str]
    layers: list[str]
    images: list[Path] = field(default_factory=list)  # empty: some from the run itself
    from_run: int = 4  # images taken from the run when none are given (half per domain)
    run_id: str | None = None  # base run; None: latest
    size: int = 128
    input_size: int = 224
    steps: int | None = None  # None: 512, 1024 for layer4*
    lr: float = 0.05
    cossim_pow: float = 0.0
    seed: int = 0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    device: str = "cpu"


def _pick_images(job: CaricatureJob, base: Run) -> list[tuple[str, np.ndarray, str]]:
    """(name, pixels (H, W, 3) uint8, where it came from) for every input image."""
    from lib.images import decode_rgb

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
    import torch

    from lib.caricature import (
        CaricatureParams,
        compute,
        default_steps,
        layer_fn,
        resolve_layer,
        save,
    )

    base = store.open(job.run_id)
    if not job.models or not job.layers:
        raise GapscopeError("name at least one --model and one --layer")
    images = _pick_images(job, base)
    names = [n for n, _, _ in images]
    if len(set(names)) != len(names):
        raise GapscopeError("two input images share a file name: rename one")
    from lib.images import resize_crop, thumbnail_png

    stack = np.stack([resize_crop(px, job.input_size) for _, px, _ in images])
    writer = store.derive(base)
    try:
        out = writer.path("caricatures/inputs")
        out.mkdir(parents=True, exist_ok=True)
        for name, model_input in zip(names, stack, strict=True):
            thumbnail_png(model_input, out / f"{name}.png", size=job.input_size)
        items, models = [], {}
        loaded = []  # load every model and check every layer before any long work
        for spec in job.models:
            model = load_model(spec, job.mean, job.std)
            if model.name in models:
                raise GapscopeError(f"two models are named {model.name}: name each differently")
            layers = [resolve_layer(model.module, lay, model.levels) for lay in job.layers]
            if isinstance(model.module, torch.jit.ScriptModule):
                layer_fn(model.module, layers).close()  # a layer that never runs fails now
            models[model.name] = {
                "spec": spec,
                "weights": model.weights,
                "mean": list(model.mean),
                "std": list(model.std),
                "channels": "BGR" if model.bgr else "RGB",
                "normalisation": model.normalisation,
            }
            loaded.append((model, layers))
        for model, layers in loaded:
            # one batch per step count: all images × all layers that share it
            by_steps: dict[int, list[str]] = {}
            for layer in layers:
                by_steps.setdefault(job.steps or default_steps(layer), []).append(layer)
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
                    model.module, group, stack, model.mean, model.std, params,
                    bgr=model.bgr, levels=model.levels, device=job.device,
                    progress=(lambda s, n, m=model.name: progress(m, s, n)) if progress else None,
                )  # fmt: skip
                item_images = [names[i % len(names)] for i in range(len(result))]
                paths = save(result, writer.path("caricatures"), model.name, None, item_images)
                pngs = [p for p in paths if p.suffix == ".png"]
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
        writer.write_json(
            "caricatures/manifest.json",
            {
                "base_run": base.id,
                "params": {**asdict(job), "images": [str(p) for p in job.images]},
                "models": models,
                "images": {n: src for n, _, src in images},
                "items": items,
            },
        )
        manifest = dict(base.manifest)
        manifest.update(run_id=writer.id, derived_from=base.id)
        writer.write_json("manifest.json", manifest)
        return store.publish(writer)
    except BaseException:
        writer.discard()
        raise
