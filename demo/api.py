"""The demo's API for clients (`gradio_client`): a few named endpoints over the Python
API (lib/__init__.py), answering JSON. The page's own events (run switches, lasso,
gallery clicks) are private: they are not listed and a client cannot call them; the
endpoints a client may call are `PUBLIC`.

    from gradio_client import Client
    client = Client("http://127.0.0.1:7970/")
    run_id = client.predict(api_name="/list_runs")[0]["id"]
    rows = client.predict(run_id, api_name="/gap_table")
    near = client.predict(run_id, "c3", 0, api_name="/neighbours")
"""

from __future__ import annotations

import gradio as gr

import lib as gapscope
from demo import markup
from demo.runs import open_id, run_choices
from lib.store.runs import RunStore

# the UI's events a client may call too, by name (the curation ones only where the demo
# may write), and this module's own
PUBLIC = {
    "select_point",
    "find_image",
    "tag",
    "untag",
    "flag_removal",
    "save_label",
    "undo",
    "export",
    "list_runs",
    "gap_table",
    "neighbours",
}


def list_runs(store: RunStore) -> list[dict]:
    """Every published run, newest first: {"id", "label"}."""
    return [{"id": run_id, "label": label} for label, run_id in run_choices(store)]


def gap_table(store: RunStore, run_id: str) -> list[dict]:
    """The run's gap, one record per level and metric: level, metric, value, lo, hi,
    n_real, n_synthetic."""
    table = gapscope.gap_table(open_id(store, run_id))
    return table.astype(object).where(table.notna(), None).to_dict(orient="records")


def neighbours(store: RunStore, run_id: str, level: str, image: int) -> list[dict]:
    """Row `image`'s nearest rows at `level`, nearest first: id, distance, domain and
    the file's path inside its input folder."""
    try:
        found = gapscope.neighbours(open_id(store, run_id), level, int(image))
    except gapscope.GapscopeError as exc:
        raise markup.error(exc) from None
    return found.astype(object).where(found.notna(), None).to_dict(orient="records")


def add_endpoints(store: RunStore) -> None:
    """The endpoints above over `store`, in the Blocks being built (typed signatures of
    their own: Gradio derives each endpoint's parameters from them)."""

    def runs() -> list[dict]:
        return list_runs(store)

    def gap(run_id: str) -> list[dict]:
        return gap_table(store, run_id)

    def near(run_id: str, level: str, image: int) -> list[dict]:
        return neighbours(store, run_id, level, image)

    for endpoint, fn in ((runs, list_runs), (gap, gap_table), (near, neighbours)):
        gr.api(endpoint, api_name=fn.__name__, api_description=fn.__doc__)


def keep_private(app: gr.Blocks) -> None:
    """Every event not in PUBLIC hidden from clients (the page still calls them)."""
    for fn in app.fns.values():
        if fn.api_name not in PUBLIC:
            fn.api_visibility = "private"
