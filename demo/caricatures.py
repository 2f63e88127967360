"""The caricature tab: plain functions of a run's caricature manifest, and the tab.

No model is loaded here: everything comes from the run store.
"""

from __future__ import annotations

from functools import partial

import gradio as gr

from demo.runs import Tab, open_id
from lib.store.runs import Run, RunStore

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
    return str(run.caricature_input(image))


def side_by_side(run: Run, image: str, layer: str, model_a: str, model_b: str):
    """[(path, label) or None] for model A and model B at one layer and image."""
    out = []
    for model in (model_a, model_b):
        item = _item(run, model, layer, image)
        out.append(None if item is None else (str(run.caricature_file(item["png"])), label(item)))
    return out


def across_layers(run: Run, image: str, model: str) -> list[tuple[str, str]]:
    """One model's caricatures of one image at every layer, in computation order."""
    _, layers, _ = choices(run)
    items = [_item(run, model, layer, image) for layer in layers]
    return [(str(run.caricature_file(i["png"])), label(i)) for i in items if i]


# ---- the tab ----------------------------------------------------------------------------


def show(store: RunStore, run_id: str, image: str, layer: str, model_a: str, model_b: str):
    run = open_id(store, run_id)
    if not image or not layer or not model_a:
        return None, None, None, []
    left, right = side_by_side(run, image, layer, model_a, model_b)
    return (
        input_image(run, image),
        gr.update(value=left[0], label=left[1]) if left else None,
        gr.update(value=right[0], label=right[1]) if right else None,
        across_layers(run, image, model_a),
    )


def on_run(store: RunStore, run_id: str):
    """Fill the pickers from the run, then show the first pair."""
    run = open_id(store, run_id)
    models, layers, images = choices(run)
    if not models:
        empty = gr.update(choices=[], value=None)
        return run.id, HOW_TO, empty, empty, empty, empty, None, None, None, []
    a, b = models[0], models[min(1, len(models) - 1)]
    return (
        run.id,
        f"{len(run.caricatures['items'])} caricatures: {len(models)} models × "
        f"{len(layers)} layers × {len(images)} images",
        gr.update(choices=images, value=images[0]),
        gr.update(choices=layers, value=layers[-1]),
        gr.update(choices=models, value=a),
        gr.update(choices=models, value=b),
        *show(store, run.id, images[0], layers[-1], a, b),
    )


def build(store: RunStore, first: Run) -> Tab:
    with gr.Blocks() as blocks:
        run_id = gr.Textbox(first.id, visible=False)
        note = gr.Markdown(elem_id="caricature_note")
        with gr.Row():
            pickers = [
                gr.Dropdown(label=name, allow_custom_value=True)
                for name in ("Image", "Layer", "Model 1", "Model 2")
            ]
        with gr.Row():
            views = [
                gr.Image(label="Input image", height=256),
                gr.Image(label="Model 1", height=256, elem_id="caricature_left"),
                gr.Image(label="Model 2", height=256, elem_id="caricature_right"),
            ]
        grid = gr.Gallery(
            label="Model 1 at every layer",
            columns=6,
            height=300,
            object_fit="contain",
            elem_id="caricature_grid",
        )
        gr.on([p.input for p in pickers], partial(show, store), [run_id, *pickers], [*views, grid])
        outputs = [run_id, note, *pickers, *views, grid]
        blocks.load(partial(on_run, store), run_id, outputs)
    return Tab(blocks, run_id, on_run, [], outputs)
