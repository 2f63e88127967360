"""The caricature view: plain functions of a run's caricatures/manifest.json.

No model is loaded here: everything comes from the run store.
"""

from __future__ import annotations

from lib.store import Run

HOW_TO = (
    "This run has no caricatures. Compute some with e.g. `python -m batch caricature "
    "--model synthetic=resnet50:syn.pth --model mixed=resnet50:mixed.pth --layer layer3 "
    "--layer layer4.2` (see the README); they are published as a new run."
)


def choices(run: Run) -> tuple[list[str], list[str], list[str]]:
    """(models, layers, images) present in the run, in the order they were computed."""
    items = (run.caricatures or {}).get("items", [])

    def unique(key):
        return list(dict.fromkeys(item[key] for item in items))

    return unique("model"), unique("layer"), unique("image")


def _item(run: Run, model: str, layer: str, image: str) -> dict | None:
    for item in (run.caricatures or {}).get("items", []):
        if (item["model"], item["layer"], item["image"]) == (model, layer, image):
            return item
    return None


def label(item: dict) -> str:
    return (
        f"{item['model']} · {item['layer']} · cosine {item['cosine']:.2f} "
        f"(start {item['start_cosine']:.2f})"
    )


def input_image(run: Run, image: str) -> str:
    return str(run.dir / "caricatures" / "inputs" / f"{image}.png")


def side_by_side(run: Run, image: str, layer: str, model_a: str, model_b: str):
    """[(path, label) or None] for model A and model B at one layer and image."""
    out = []
    for model in (model_a, model_b):
        item = _item(run, model, layer, image)
        out.append(
            None if item is None else (str(run.dir / "caricatures" / item["png"]), label(item))
        )
    return out


def across_layers(run: Run, image: str, model: str) -> list[tuple[str, str]]:
    """One model's caricatures of one image at every layer, in computation order."""
    _, layers, _ = choices(run)
    items = [_item(run, model, layer, image) for layer in layers]
    return [(str(run.dir / "caricatures" / i["png"]), label(i)) for i in items if i]
