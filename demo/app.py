"""The Gradio app: a run picker and banner over one tab per module (demo.overlap,
demo.atlas, demo.report, demo.whatif, demo.retrieval, demo.caricatures), each building its
own gr.Blocks, rendered here.

The app reads published runs only. Switching runs calls each tab's `on_run`; the tabs'
own events take the run from a hidden textbox the tab keeps, so no state is global.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import gradio as gr

from demo import (
    atlas,
    calibration,
    caricatures,
    compare,
    detections,
    overlap,
    report,
    retrieval,
    whatif,
)
from demo.api import add_endpoints, keep_private
from demo.curation import Editing
from demo.runs import ASSETS, banner, open_id, open_run, run_choices
from demo.static_paths import set_static_paths
from lib.store.runs import RunStore

CSS = """
#banner {border-left: 4px solid #2ca02c; padding-left: 12px;}
#neighbours .caption-label {font-size: 11px;}
"""
CONCURRENT_EVENTS = 8  # see README, Security and reliability: the load measured
QUEUE_SIZE = 256  # events waiting beyond this are answered "queue full" (HTTP 503) at once
# seconds between queue-position messages to waiting browsers; "auto" (Gradio's default)
# sends every waiting event a message whenever one finishes: 64 waiting clicks, 64² a round
STATUS_EVERY_S = 2.0
TITLE = "# gapscope — does your model see synthetic images like real ones?"


# The tabs, in order: each builds its own gr.Blocks for a run as
# build(store, first run, servable roots, editing) and returns a demo.runs.Tab.
TABS = {
    "Overlap": lambda store, first, roots, editing: overlap.build(store, roots, first, editing),
    "Atlas": lambda store, first, roots, editing: atlas.build(store, first, editing),
    "Gap report": lambda store, first, roots, editing: report.build(store, first, editing),
    "What if": lambda store, first, roots, editing: whatif.build(store, first),
    "Compare": lambda store, first, roots, editing: compare.build(store, first),
    "Retrieval": lambda store, first, roots, editing: retrieval.build(store, first),
    "Detections": lambda store, first, roots, editing: detections.build(store, first),
    "Does it matter?": lambda store, first, roots, editing: calibration.build(store, first),
    "Caricatures": lambda store, first, roots, editing: caricatures.build(store, first),
}


def allowed_paths(store: RunStore, originals: bool = False) -> list[str]:
    """The folders the demo may serve files from: the runs (thumbnails, web copies,
    plots, caricatures: what the batch job published) and the demo's own assets; with
    `originals`, also the folders the runs' images came from."""
    paths = {str(store.runs_dir.resolve()), str(ASSETS)}
    if originals:
        paths.update(image_roots(store))
    return sorted(paths)


def image_roots(store: RunStore) -> list[str]:
    """The folders the published runs' images came from."""
    return sorted(
        {str(p) for i in store.run_ids() for p in open_run(str(store.runs_dir / i)).image_roots()}
    )


def refresh(store: RunStore, shown: str):
    """On page load: list the runs published since the app started and switch to the
    latest (the tabs follow through the picker's change event)."""
    return gr.update(choices=run_choices(store), value=store.latest_id() or shown)


def show_banner(store: RunStore, run_id: str) -> str:
    return banner(open_id(store, run_id))


def build_app(
    results: Path,
    roots: list[str] | None = None,
    queue_size: int = QUEUE_SIZE,
    editing: Editing | None = None,
) -> gr.Blocks:
    """The app over the run store at `results`; `roots`: the folders it may serve files
    from (default: `allowed_paths`, computed here); `queue_size`: events that may wait;
    `editing`: whether users may write annotations (default: read-only)."""
    store = RunStore(results)
    roots = roots if roots is not None else allowed_paths(store)
    set_static_paths(roots)
    choices = run_choices(store)
    if not choices:
        with gr.Blocks(title="gapscope") as app:
            gr.Markdown(TITLE)
            gr.Markdown(
                f"No published run in `{results}` yet: run `make batch` (or `make demo`, "
                "which builds the bundled example first)."
            )
        return app
    first = open_id(store, store.latest_id() or choices[0][1])
    tabs = {name: build(store, first, roots, editing) for name, build in TABS.items()}
    # Gradio's cache of returned files (downloads): emptied of files older than an hour
    with gr.Blocks(title="gapscope", delete_cache=(3600, 3600)) as app:
        gr.Markdown(TITLE)
        # allow_custom_value: runs published after start-up (nightly) are valid choices too
        run_dd = gr.Dropdown(choices=choices, value=first.id, label="Run", allow_custom_value=True)
        shown = gr.Markdown(banner(first), elem_id="banner")
        for name, tab in tabs.items():
            with gr.Tab(name):
                tab.blocks.render()
        run_dd.change(partial(show_banner, store), run_dd, shown)
        for tab in tabs.values():
            run_dd.change(partial(tab.on_run, store), [run_dd, *tab.inputs], tab.outputs)
        app.load(partial(refresh, store), run_dd, run_dd)
        add_endpoints(store)
    keep_private(app)
    # every event only reads published runs: run them side by side rather than one at a
    # time, and answer "queue full" rather than let a crowd wait without end
    app.queue(
        default_concurrency_limit=CONCURRENT_EVENTS,
        max_size=queue_size,
        status_update_rate=STATUS_EVERY_S,
    )
    return app
