"""The overlap tab: a run's projections as an interactive scatter (3D; 2D for t-SNE), and
the nearest neighbours of the image a user clicks.

Clicking a point reaches Python through a hidden textbox that a small script fills (gr.Plot
has no point-click event; see ../shared/notes/gradio-plotly-click.md). The script selects
the point whose tooltip is showing when the button is pressed and released without a drag:
plotly's own 3D click fires only within a few pixels of a point, while its hover picks
from further away, so a click where a tooltip shows did not always select it. The same
`select_point` serves the browser and the API (`/select_point`).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import gradio as gr
import numpy as np

from demo.runs import (
    METHOD_LABELS,
    Tab,
    caption,
    cluster_names,
    default_level,
    level_dropdown,
    open_id,
    picture,
    score_values,
)
from lib.images import THUMB_SIZE
from lib.plots import STYLE, direction_title
from lib.store import Run, RunStore

DIRECTIONS = {  # label → the domain the projection was fitted on
    direction_title("real"): "real",
    direction_title("synthetic"): "synthetic",
}
COLOR_BY = ("domain", "category", "cluster", "realism", "p(synthetic)")
SCORE_COLUMNS = {"realism": "realism", "p(synthetic)": "p_synthetic"}
CATEGORY_COLORS = (
    "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf "
    "#393b79 #637939 #8c6d31 #843c39 #7b4173 #3182bd #e6550d #31a354 #756bb1 #636363"
).split()
MARKERS = {"real": "x", "synthetic": "circle"}

SELECT_ON_CLICK_JS = r"""
() => {
  if (window.__gapscopeSelect) return;  // once per page: one set of listeners
  const state = window.__gapscopeSelect = {hovered: null, down: null};
  const send = (id) => {
    const box = document.querySelector('#click_box textarea, #click_box input');
    // the timestamp makes a second click on the same point still count as a change
    box.value = JSON.stringify({id: id, t: Date.now()});
    box.dispatchEvent(new Event('input', {bubbles: true}));
  };
  const bind = () => {  // each plot element Gradio mounts, once
    const gd = document.querySelector('#overlap_plot .js-plotly-plot');
    if (!gd || gd.__gapscopeBound || typeof gd.on !== 'function') return;
    gd.__gapscopeBound = true;
    gd.on('plotly_hover', (ev) => {
      const pt = ev.points && ev.points[0];
      const id = pt ? pt.customdata : undefined;  // row ids only: never a trace position
      state.hovered = id === undefined ? null : (Array.isArray(id) ? id[0] : id);
    });
    gd.on('plotly_unhover', () => { state.hovered = null; });
    gd.addEventListener('pointerdown', (e) => {
      state.down = [e.clientX, e.clientY, state.hovered];
    }, true);
  };
  // on the window: a 2D plot covers the page while the button is down, so the release
  // lands on plotly's drag cover, not on the plot
  window.addEventListener('pointerup', (e) => {
    if (!state.down) return;
    const [x, y, id] = state.down;
    state.down = null;
    if (id === null || Math.hypot(e.clientX - x, e.clientY - y) > 4) return;  // a drag
    send(id);
  }, true);
  new MutationObserver(bind).observe(document.body, {childList: true, subtree: true});
  bind();
}
"""


def methods(run: Run) -> list[tuple[str, str]]:
    """(label, name) of the projections a run holds, UMAP first."""
    present = set(run.projections["method"])
    order = [*METHOD_LABELS, *sorted(present - set(METHOD_LABELS))]
    return [(METHOD_LABELS.get(m, m), m) for m in order if m in present]


def overlap_figure(
    run: Run, level: str, fit_on: str, color_by: str = "domain", method: str = "umap"
):
    """Interactive scatter of one level, projection and direction (3D; 2D for t-SNE);
    customdata holds row ids. A joint projection (t-SNE) has one view, whatever `fit_on`."""
    import plotly.graph_objects as go

    images = run.images
    proj = run.projections
    proj = proj[(proj["level"] == level) & (proj["method"] == method)]
    if (proj["fit_on"] == "both").any():
        fit_on = "both"
    proj = proj[proj["fit_on"] == fit_on]
    flat = bool(proj["z"].isna().all())
    label = METHOD_LABELS.get(method, method)
    merged = proj.merge(images, left_on="id", right_on="id", how="left")
    if color_by == "category" and merged["category"].nunique() > 1:
        groups = [(str(c), g) for c, g in merged.groupby("category", sort=True)]
    elif color_by == "cluster" and run.scores is not None:
        names = cluster_names(run, level, merged["id"].to_numpy())
        groups = [(n, merged[names == n]) for n in sorted(set(names), key=_cluster_order)]
    else:
        first = fit_on if fit_on != "both" else "real"
        order = [first] + [d for d in merged["domain"].unique() if d != first]
        groups = [(d, merged[merged["domain"] == d]) for d in order]
    fig = go.Figure()
    scale_shown = False
    for i, (name, g) in enumerate(groups):
        marker = _marker(run, level, name, g, color_by, i)
        if "colorscale" in marker:
            marker["showscale"] = not scale_shown  # one colour bar for all traces
            scale_shown = True
        if flat:
            marker["size"] = marker["size"] + 3
        trace, coords = (go.Scattergl, {}) if flat else (go.Scatter3d, {"z": g["z"]})
        fig.add_trace(
            trace(
                x=g["x"],
                y=g["y"],
                **coords,
                mode="markers",
                name=name,
                customdata=g["id"].to_numpy(),
                text=[
                    f"#{j} {d} · {c or '–'} · {p}"
                    for j, d, c, p in zip(
                        g["id"], g["domain"], g["category"], g["relpath"], strict=True
                    )
                ],
                hovertemplate="%{text}<extra></extra>",
                marker=marker,
            )
        )
    where = "both domains together" if fit_on == "both" else direction_title(fit_on)
    axes = {f"{axis}axis_title": f"{label} {i}" for i, axis in enumerate("xyz", start=1)}
    if flat:
        axes.pop("zaxis_title")
    fig.update_layout(
        title=f"{level} · {label}: {where}",
        **(axes if flat else {"scene": axes}),
        uirevision=f"{run.id}-{level}-{method}-{fit_on}",  # keep the camera while recolouring
        margin={"l": 0, "r": 0, "t": 40, "b": 0},
        height=620,
        legend={"itemsizing": "constant"},
    )
    return fig


def _marker(run: Run, level: str, name: str, g, color_by: str, i: int) -> dict:
    """Marker style for one trace: by domain, by category, or by a per-image score."""
    marker = {"size": 3, "opacity": 0.75, "symbol": MARKERS.get(name, "circle")}
    if color_by in SCORE_COLUMNS and run.scores is not None:
        values = score_values(run, level, g["id"].to_numpy(), SCORE_COLUMNS[color_by])
        if np.isnan(values).all():  # real images have no realism score
            return {**marker, "color": "lightgrey"}
        if color_by == "realism":  # ≥ 1 is inside the real manifold: centre the scale there
            style = {"colorscale": "RdYlGn", "cmin": 0.0, "cmax": 2.0}
        else:
            style = {"colorscale": "RdBu_r", "cmin": 0.0, "cmax": 1.0}
        return {**marker, **style, "color": values, "colorbar": {"title": color_by}}
    if color_by in ("category", "cluster"):
        symbols = [MARKERS.get(d, "circle") for d in g["domain"]]
        if name == "noise":
            return {**marker, "symbol": symbols, "color": "lightgrey"}
        return {**marker, "symbol": symbols, "color": CATEGORY_COLORS[i % len(CATEGORY_COLORS)]}
    return {**marker, "color": STYLE.get(name, {"c": "grey"})["c"]}


def _cluster_order(name: str) -> tuple[int, str]:
    return (name == "noise", name)


def neighbour_gallery(run: Run, level: str, row: int) -> list[tuple[str, str]]:
    """(thumbnail path, caption) of the row's nearest neighbours in feature space."""
    idx, dist = run.neighbors(level)
    return [
        (picture(run.thumb(int(j))), caption(run, int(j), float(d)))
        for j, d in zip(idx[row], dist[row], strict=True)
    ]


def parse_click(payload: str) -> int | None:
    """The row id from the browser's click payload ('{"id": 12, "t": ...}' or '12')."""
    if not payload:
        return None
    try:
        value = json.loads(payload)
    except json.JSONDecodeError:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def shown_image(run: Run, row: int, roots: list[str]) -> Path | None:
    """The image to show large: the original when the demo may serve it and it is larger
    than a thumbnail, else the (upscaled) thumbnail."""
    image = run.image_file(row)
    r = run.images.iloc[row]
    if image is None or not _inside(image, roots) or max(r["width"], r["height"]) < THUMB_SIZE:
        return run.thumb(row)
    return image


def _inside(path: Path, roots: list[str]) -> bool:
    path = Path(path).resolve()
    return any(path.is_relative_to(root) for root in roots)


def pick_method(run: Run, method: str) -> str:
    """`method` when the run has it, else its first projection."""
    names = [name for _, name in methods(run)]
    return method if method in names else names[0]


# ---- the tab ----------------------------------------------------------------------------


def show_plot(store: RunStore, run_id: str, level: str, direction: str, color_by: str, method: str):
    run = open_id(store, run_id)
    level = level if level in run.levels else default_level(run)
    return overlap_figure(run, level, DIRECTIONS[direction], color_by, pick_method(run, method))


def select_point(store: RunStore, roots: list[str], payload: str, run_id: str, level: str):
    """The clicked image, large, and its nearest neighbours in feature space."""
    run = open_id(store, run_id)
    row = parse_click(payload)
    if row is None or not 0 <= row < len(run.images) or level not in run.levels:
        return gr.skip(), gr.skip(), gr.skip()
    return (
        gr.update(value=picture(shown_image(run, row, roots)), label=caption(run, row)),
        neighbour_gallery(run, level, row),
        f"**Selected {caption(run, row)}** — `{run.images.iloc[row]['relpath']}`; "
        f"its {run.manifest['config']['k']} nearest neighbours at level {level}:",
    )


def on_run(store: RunStore, run_id: str, direction: str, color_by: str, method: str):
    """A run switched to: its levels and projections, the user's view kept where it can."""
    run = open_id(store, run_id)
    level = default_level(run)
    method = pick_method(run, method)
    return (
        run.id,
        gr.update(choices=run.levels, value=level),
        gr.update(choices=methods(run), value=method),
        overlap_figure(run, level, DIRECTIONS.get(direction, "real"), color_by, method),
    )


def build(store: RunStore, roots: list[str], first: Run) -> Tab:
    first_methods = methods(first)
    with gr.Blocks() as blocks:
        run_id = gr.Textbox(first.id, visible=False)
        with gr.Row():
            level = level_dropdown("Level", first)
            method = gr.Radio(first_methods, value=first_methods[0][1], label="Projection",
                              elem_id="projection")  # fmt: skip
            direction = gr.Radio(list(DIRECTIONS), value=list(DIRECTIONS)[0], label="Direction",
                                 scale=2)  # fmt: skip
            color_by = gr.Radio(list(COLOR_BY), value="domain", label="Colour by", scale=2)
        with gr.Row():
            with gr.Column(scale=3):
                figure = overlap_figure(first, default_level(first), "real",
                                        method=first_methods[0][1])  # fmt: skip
                plot = gr.Plot(figure, elem_id="overlap_plot", label="Overlap (click a point)")
            with gr.Column(scale=2):
                selected = gr.Image(label="Selected image", height=260, elem_id="selected_image")
                info = gr.Markdown("Click a point in the plot to see its nearest neighbours.")
                gallery = gr.Gallery(label="Nearest neighbours", columns=4, height=420,
                                     elem_id="neighbours")  # fmt: skip
        click_box = gr.Textbox(elem_id="click_box", visible="hidden")
        # .input: the user's choices only; a run switch sets these and draws the plot itself
        gr.on(
            [level.input, direction.input, color_by.input, method.input],
            partial(show_plot, store), [run_id, level, direction, color_by, method], plot,
        )  # fmt: skip
        click_box.change(
            partial(select_point, store, roots), [click_box, run_id, level],
            [selected, gallery, info], api_name="select_point",
        )  # fmt: skip
        blocks.load(None, None, None, js=SELECT_ON_CLICK_JS)
    return Tab(blocks, run_id, on_run, [direction, color_by, method], [run_id, level, method, plot])
