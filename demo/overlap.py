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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gradio as gr
import numpy as np

from demo import curation, markup
from demo.curation import Editing
from demo.runs import (
    METHOD_LABELS,
    PathGallery,
    Tab,
    caption,
    cluster_names,
    default_level,
    image_column,
    level_dropdown,
    open_id,
    picture,
    projection_view,
    row_tags,
    score_values,
    tag_names,
    with_tags,
)
from demo.thinning import GRID, MAX_POINTS, budgets, opacity, thin
from lib.analysis.atlas import METHOD as ATLAS
from lib.analysis.neighbours import nearest_among
from lib.analysis.plots import STYLE, direction_title
from lib.store.annotations import REMOVE
from lib.store.runs import Run, RunStore

DIRECTIONS = {  # label → the domain the projection was fitted on
    direction_title("real"): "real",
    direction_title("synthetic"): "synthetic",
}
ALL = "all"
SIZES = (ALL, "small", "medium", "large")  # COCO's object size strata (lib.inputs.boxes)
COLOR_BY = ("domain", "category", "cluster", "realism", "p(synthetic)", "tags")
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
    // a 2D zoom asks the server for every point of the region (a large run is thinned)
    gd.on('plotly_relayout', (ev) => {
      let box = null;
      if (ev['xaxis.range[0]'] !== undefined && ev['yaxis.range[0]'] !== undefined) {
        box = [ev['xaxis.range[0]'], ev['xaxis.range[1]'],
               ev['yaxis.range[0]'], ev['yaxis.range[1]']];
      } else if (!ev['xaxis.autorange'] && !ev['yaxis.autorange']) {
        return;  // a 3D camera move, a resize: nothing to refetch
      }
      const zoom = document.querySelector('#zoom_box textarea, #zoom_box input');
      zoom.value = JSON.stringify({key: gd.layout.uirevision, box: box, t: Date.now()});
      zoom.dispatchEvent(new Event('input', {bubbles: true}));
    });
    // a lasso or box on the 2D view: its outline goes to the server, which selects every
    // point inside from the whole projection (the plot may show a thinned sample)
    gd.on('plotly_selected', (ev) => {
      if (!ev) return;
      const shape = ev.lassoPoints ? {lasso: [ev.lassoPoints.x, ev.lassoPoints.y]}
        : ev.range ? {box: [...ev.range.x, ...ev.range.y]} : null;
      if (!shape) return;
      const box = document.querySelector('#lasso_box textarea, #lasso_box input');
      box.value = JSON.stringify({key: gd.layout.uirevision, ...shape, t: Date.now()});
      box.dispatchEvent(new Event('input', {bubbles: true}));
    });
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
    present = set(run.projections["method"]) - {ATLAS}  # the atlas tab's own layout
    order = [*METHOD_LABELS, *sorted(present - set(METHOD_LABELS))]
    return [(METHOD_LABELS.get(m, m), m) for m in order if m in present]


def overlap_figure(
    run: Run,
    level: str,
    fit_on: str,
    color_by: str = "domain",
    method: str = "umap",
    view: str = "3D",
    box: list[float] | None = None,
    contours: bool = False,
    category: str = ALL,
    size: str = ALL,
):
    """Interactive scatter of one level, projection and direction; customdata holds row
    ids. A joint projection (t-SNE) has one view, whatever `fit_on`, and is 2D; `view` "2D"
    shows a 3D projection's first two axes. Large runs are thinned (demo.thinning): each
    domain's count and how many are shown are in the legend. `box` [x0, x1, y0, y1] (2D):
    the region zoomed into, shown with every point the budget allows. `contours` (2D):
    each domain's density as contour lines, from all its points. `category` and `size`
    (an object run's class and size stratum): only those rows."""
    import plotly.graph_objects as go

    proj, fit_on = projection_view(run, level, method, fit_on)
    flat = view == "2D" or bool(np.isnan(proj["z"]).all())
    axes_used = ("x", "y") if flat else ("x", "y", "z")
    coords = np.column_stack([proj[a] for a in axes_used])
    domains = image_column(run, "domain")[proj["id"]]
    inside = _in_box(coords, box) if flat and box else np.ones(len(coords), bool)
    inside &= object_filter(run, proj["id"], category, size)
    order = _draw_order(domains, fit_on)
    rows = {d: np.flatnonzero((domains == d) & inside) for d in order}
    kind = "2D" if flat else "3D"
    budget = budgets({d: len(r) for d, r in rows.items()}, MAX_POINTS[kind])
    shown = {d: r[thin(coords[r], budget[d], GRID[kind])] for d, r in rows.items()}
    label = METHOD_LABELS.get(method, method)
    fig = go.Figure()
    if flat and contours:
        for d in order:
            fig.add_trace(_density_contour(coords[domains == d], d))
    n_shown = sum(len(r) for r in shown.values())
    points = _Points(run, level, proj, domains, coords, axes_used, flat)
    points.add_to(fig, _groups(run, level, color_by, proj, domains, shown, rows), color_by)
    where = "both domains together" if fit_on == "both" else direction_title(fit_on)
    total = sum(len(r) for r in rows.values())
    thinned = f" · {n_shown:,} of {total:,} points shown" if n_shown < total else ""
    layout = _axes_layout(label, axes_used, flat, box)
    fig.update_layout(
        title=f"{level} · {label}: {where}{thinned}",
        **layout,
        uirevision=view_key(run, level, method, fit_on, kind),  # keep the camera and zoom
        margin={"l": 0, "r": 0, "t": 40, "b": 0},
        height=620,
        legend={"itemsizing": "constant"},
    )
    return fig


@dataclass
class _Points:
    """Draws a level's points, a trace per colour group, 2D (WebGL) or 3D."""

    run: Run
    level: str
    proj: object  # the projection's rows (id, x, y, z)
    domains: np.ndarray
    coords: np.ndarray
    axes_used: tuple[str, ...]
    flat: bool

    def add_to(self, fig, groups, color_by: str) -> None:
        import plotly.graph_objects as go

        groups = list(groups)
        detailed = sum(len(r) for _, r in groups) <= DETAILED_UP_TO  # ~50 bytes a tooltip
        trace = go.Scattergl if self.flat else go.Scatter3d
        scale_shown = False
        for i, (name, r) in enumerate(groups):
            ids = self.proj["id"][r]
            marker = _marker(self.run, self.level, name, ids, self.domains[r], color_by, i, len(r))
            if "colorscale" in marker:
                marker["showscale"] = not scale_shown  # one colour bar for all traces
                scale_shown = True
            if self.flat:
                marker["size"] = marker["size"] + 3
            text = _hover_text(self.run, ids, self.domains[r]) if detailed else None
            # the group's name reaches the tooltip as the trace's, never as a template
            hover = "%{text}" if detailed else "#%{customdata} %{fullData.name}"
            xyz = dict(zip(self.axes_used, self.coords[r].T, strict=True))
            fig.add_trace(
                trace(
                    **xyz,
                    mode="markers",
                    name=markup.label(name),
                    customdata=ids,
                    text=text,
                    hovertemplate=hover + "<extra></extra>",
                    marker=marker,
                )
            )


def _axes_layout(label: str, axes_used: tuple[str, ...], flat: bool, box) -> dict:
    names = {axis: f"{label} {i}" for i, axis in enumerate("xyz", start=1)}
    if flat:
        layout = {"xaxis_title": names["x"], "yaxis_title": names["y"]}
        if box:
            layout.update(xaxis_range=box[:2], yaxis_range=box[2:])
        return layout
    # no tick labels: a UMAP axis's values mean nothing, and plotly draws each 3D
    # label as triangles on the CPU (first render 4.85 → 4.5 s with 60k points)
    scene = {f"{a}axis": {"title": names[a], "showticklabels": False} for a in axes_used}
    return {"scene": scene}


DETAILED_UP_TO = 20_000  # points shown with a full tooltip (domain · category · path)


def object_filter(run: Run, ids: np.ndarray, category: str = ALL, size: str = ALL) -> np.ndarray:
    """Which of the rows `ids` an object run's class and size choice keeps (all of them
    for a run of images, or a choice this run does not have)."""
    keep = np.ones(len(ids), bool)
    if run.objects is None:
        return keep
    for column, value in (("category", category), ("size", size)):
        values = image_column(run, column).astype(str)
        if value not in (ALL, None, "") and value in set(values):
            keep &= values[ids] == value
    return keep


def class_choices(run: Run) -> list[str]:
    """ "all" and an object run's classes (none for a run of images)."""
    if run.objects is None:
        return [ALL]
    return [ALL, *sorted(set(image_column(run, "category").astype(str)))]


def view_key(run: Run, level: str, method: str, fit_on: str, kind: str) -> str:
    """Names one view; the browser sends it back with a zoom, so a zoom into another view
    (before a level switch, say) is never applied to this one."""
    return f"{run.id}-{level}-{method}-{fit_on}-{kind}"


def _in_box(coords: np.ndarray, box: list[float]) -> np.ndarray:
    x0, x1, y0, y1 = box
    x, y = coords[:, 0], coords[:, 1]
    return (x >= min(x0, x1)) & (x <= max(x0, x1)) & (y >= min(y0, y1)) & (y <= max(y0, y1))


def _draw_order(domains: np.ndarray, fit_on: str) -> list[str]:
    """Domains from the largest to the smallest: the smaller one is drawn last, on top,
    so 30,000 synthetic points cannot hide 1,797 real ones (ties: the fitted one first)."""
    present = list(dict.fromkeys([fit_on, *DOMAIN_ORDER, *np.unique(domains)]))
    counts = {d: int((domains == d).sum()) for d in present}
    return sorted((d for d in present if counts[d]), key=lambda d: -counts[d])


DOMAIN_ORDER = ("real", "synthetic")


def _groups(run, level, color_by, proj, domains, shown, rows):
    """(trace name, row positions in `proj`) per trace: by domain (named with its count
    and how many are shown), by category or by cluster."""
    every = np.concatenate(list(shown.values())) if shown else np.array([], int)
    if color_by == "category":
        categories = image_column(run, "category")[proj["id"][every]]
        if len(set(categories)) > 1:
            return [(str(c) or "–", every[categories == c]) for c in sorted(set(categories))]
    if color_by == "cluster" and run.scores is not None:
        names = cluster_names(run, level, proj["id"][every])
        return [(n, every[names == n]) for n in sorted(set(names), key=_cluster_order)]
    if color_by == "tags":
        tags = row_tags(run)
        names = np.array([tag_names(tags.get(int(r), set())) for r in proj["id"][every]])
        return [(n, every[names == n]) for n in sorted(set(names), key=_tags_order)]
    out = []
    for d, r in shown.items():
        n = len(rows[d])
        name = f"{d} · {n:,}" + (f" ({len(r):,} shown)" if len(r) < n else "")
        out.append((name, r))
    return out


def _hover_text(run: Run, ids: np.ndarray, domains: np.ndarray) -> list[str]:
    categories = image_column(run, "category")[ids]
    paths = image_column(run, "relpath")[ids]
    return [
        markup.label(f"#{j} {d} · {c or '–'} · {p}")
        for j, d, c, p in zip(ids, domains, categories, paths, strict=True)
    ]


def _density_contour(coords: np.ndarray, domain: str):
    """A domain's density as contour lines in its colour, binned here from all its
    points (only the 80 × 80 grid goes to the browser)."""
    import plotly.graph_objects as go

    h, xe, ye = np.histogram2d(coords[:, 0], coords[:, 1], bins=80)
    return go.Contour(
        z=h.T,
        x=(xe[:-1] + xe[1:]) / 2,
        y=(ye[:-1] + ye[1:]) / 2,
        contours_coloring="lines",
        ncontours=8,
        showscale=False,
        hoverinfo="skip",
        line={"color": STYLE.get(domain, {"c": "grey"})["c"], "width": 1},
        name=f"{domain} density",
        showlegend=True,
    )


def _marker(run: Run, level: str, name: str, ids, domains, color_by: str, i: int, n: int):
    """Marker style for one trace of `n` points: by domain, by category, or by a
    per-image score; denser traces fainter (demo.thinning.opacity)."""
    domain = name.split(" · ")[0]
    marker = {"size": 3, "opacity": opacity(n), "symbol": MARKERS.get(domain, "circle")}
    if color_by in SCORE_COLUMNS and run.scores is not None:
        values = score_values(run, level, ids, SCORE_COLUMNS[color_by])
        if np.isnan(values).all():  # real images have no realism score
            return {**marker, "color": "lightgrey"}
        if color_by == "realism":  # ≥ 1 is inside the real manifold: centre the scale there
            style = {"colorscale": "RdYlGn", "cmin": 0.0, "cmax": 2.0}
        else:
            style = {"colorscale": "RdBu_r", "cmin": 0.0, "cmax": 1.0}
        return {**marker, **style, "color": values, "colorbar": {"title": color_by}}
    if color_by in ("category", "cluster", "tags"):
        symbols = [MARKERS.get(d, "circle") for d in domains]
        if name in ("noise", "untagged"):
            return {**marker, "symbol": symbols, "color": "lightgrey"}
        if name.startswith(REMOVE):
            return {**marker, "symbol": symbols, "color": "#d62728"}
        return {**marker, "symbol": symbols, "color": CATEGORY_COLORS[i % len(CATEGORY_COLORS)]}
    return {**marker, "color": STYLE.get(domain, {"c": "grey"})["c"]}


def _cluster_order(name: str) -> tuple[int, str]:
    return (name == "noise", name)


def _tags_order(name: str) -> tuple[int, str]:
    return (name == "untagged", name)


NEIGHBOURS_FROM = ("both domains", "real", "synthetic")


def neighbours_of(run: Run, level: str, row: int, source: str = NEIGHBOURS_FROM[0]):
    """(rows, distances) of the row's nearest neighbours in feature space: from the
    run's neighbour table, or, for one domain's alone ("the nearest real images to this
    synthetic one"), searched exactly among that domain's features."""
    if source == NEIGHBOURS_FROM[0]:
        return tuple(table[row] for table in run.neighbours(level))

    candidates = np.flatnonzero(image_column(run, "domain") == source)
    config = run.manifest["config"]
    return nearest_among(run.features(level), row, candidates, config["k"], config["metric"])


def neighbour_gallery(run: Run, level: str, row: int, source: str = NEIGHBOURS_FROM[0]):
    """(thumbnail path, caption) of the row's nearest neighbours (`neighbours_of`)."""
    idx, dist = neighbours_of(run, level, row, source)
    items = [
        (picture(run.thumb(int(j))), caption(run, int(j), float(d)))
        for j, d in zip(idx, dist, strict=True)
    ]
    return with_tags(run, items, [int(j) for j in idx])


def filtered_neighbours(store: RunStore, run_id: str, level: str, row, source: str):
    """The selected image's gallery from the chosen domains (the "Neighbours from" radio)."""
    run = open_id(store, run_id)
    if row is None or not 0 <= int(row) < len(run.rows) or level not in run.levels:
        return gr.skip()
    return neighbour_gallery(run, level, int(row), source)


def _refilter(store: RunStore, run_id: str, level: str, row, source: str):
    """After a selection: the click filled the gallery from both domains; redo it only
    when one domain is chosen."""
    if source == NEIGHBOURS_FROM[0]:
        return gr.skip()
    return filtered_neighbours(store, run_id, level, row, source)


def parse_click(payload: str) -> int | None:
    """The row id from the browser's click payload ('{"id": 12, "t": ...}' or '12')."""
    if not payload:
        return None
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: "Infinity" (the fuzz)
        return None


def shown_image(run: Run, row: int, roots: list[str]) -> Path | None:
    """The image to show large: the original only when the demo serves originals
    (`--serve-originals`: its folder is among `roots`), else the run's web copy, else the
    thumbnail (the whole image when it is no larger)."""
    original = run.image_file(row)
    if original is not None and run.web(row) is not None and _inside(original, roots):
        return original
    return run.web(row) or run.thumb(row)


def _inside(path: Path, roots: list[str]) -> bool:
    path = Path(path).resolve()
    return any(path.is_relative_to(root) for root in roots)


def pick_method(run: Run, method: str) -> str:
    """`method` when the run has it, else its first projection."""
    names = [name for _, name in methods(run)]
    return method if method in names else names[0]


# ---- the tab ----------------------------------------------------------------------------

VIEWS = ("3D", "2D")


def show_plot(
    store: RunStore,
    run_id: str,
    level: str,
    direction: str,
    color_by: str,
    method: str,
    view: str,
    contours: bool,
    zoom: str = "",
    category: str = ALL,
    size: str = ALL,
):
    """The plot for the user's choices; `zoom`: the browser's last 2D zoom ({"key", "box"}),
    applied when it was made in this same view; `category`, `size`: an object run's
    class and size stratum."""
    run = open_id(store, run_id)
    level = level if level in run.levels else default_level(run)
    method, fit_on = pick_method(run, method), DIRECTIONS.get(direction, "real")
    box = parse_zoom(zoom, run, level, method, fit_on)
    return overlap_figure(run, level, fit_on, color_by, method, view, box, contours, category, size)


def parse_zoom(payload: str, run: Run, level: str, method: str, fit_on: str):
    """[x0, x1, y0, y1] from the browser's zoom payload when it belongs to this 2D view,
    else None (a reset, another view, or anything malformed)."""
    try:
        value = json.loads(payload) if payload else None
        _, fit_on = projection_view(run, level, method, fit_on)
        if value["key"] != view_key(run, level, method, fit_on, "2D"):
            return None
        box = [float(v) for v in value["box"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return box if len(box) == 4 and np.isfinite(box).all() else None


def lasso_rows(store: RunStore, payload: str, run_id: str, level: str, direction: str, method: str):
    """The rows inside a lasso (or box) drawn on the 2D view, from every point of the
    projection, not only those drawn; and a line saying what was selected."""
    from matplotlib.path import Path as Outline

    run = open_id(store, run_id)
    method, fit_on = pick_method(run, method), DIRECTIONS.get(direction, "real")
    try:
        value = json.loads(payload) if payload else {}
        proj, fit_on = projection_view(run, level, method, fit_on)
        if value.get("key") != view_key(run, level, method, fit_on, "2D"):
            return gr.skip(), gr.skip()  # drawn on a view since replaced
        coords = np.column_stack([proj["x"], proj["y"]])
        if "lasso" in value:
            xs, ys = (np.asarray(v, dtype=float) for v in value["lasso"])
            inside = Outline(np.column_stack([xs, ys])).contains_points(coords)
        else:
            inside = _in_box(coords, [float(v) for v in value["box"]])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return gr.skip(), gr.skip()
    rows = sorted(int(r) for r in proj["id"][inside])
    domains = image_column(run, "domain")[np.asarray(rows, dtype=np.int64)]
    counts = ", ".join(f"{int((domains == d).sum())} {d}" for d in DOMAIN_ORDER)
    return rows, (
        f"**{len(rows)} images in the lasso** ({counts}), now the picked images: tag them "
        "with “Apply to: the picked images”."
    )


def pick_neighbour(store: RunStore, run_id: str, level: str, row, source: str, picked, index: int):
    """A click on a neighbour's thumbnail adds it to the picked images (or takes it off):
    a multi-select to tag with “Apply to: the picked images”."""
    run = open_id(store, run_id)
    if row is None or not 0 <= int(row) < len(run.rows) or level not in run.levels:
        return gr.skip(), gr.skip()
    rows = neighbours_of(run, level, int(row), source)[0]
    if not 0 <= index < len(rows):
        return gr.skip(), gr.skip()
    chosen = int(rows[index])
    picked = set(picked or []) ^ {chosen}
    verb = "added to" if chosen in picked else "taken off"
    return sorted(picked), (
        f"#{chosen} {verb} the picked images: **{len(picked)} picked** (click a neighbour to "
        "add or take it off; a lasso on the 2D view replaces them)."
    )


def select_point(store: RunStore, roots: list[str], payload: str, run_id: str, level: str):
    """The clicked image, large, and its nearest neighbours in feature space."""
    run = open_id(store, run_id)
    return _selection(run, roots, parse_click(payload), level)


def find_image(store: RunStore, roots: list[str], query: str, run_id: str, level: str):
    """Select an image without the mouse: by row id (`#12` or `12`) or by a part of its
    file name (the first match in row order; how many matched is said)."""
    run = open_id(store, run_id)
    query = (query or "").strip()
    if not query:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    if query.lstrip("#").isdigit() and int(query.lstrip("#")) < len(run.rows):
        return _selection(run, roots, int(query.lstrip("#")), level)
    paths = image_column(run, "relpath")
    hits = np.flatnonzero(np.char.find(paths.astype(str), query) >= 0)
    if len(hits) == 0:
        message = f"No image of this run has {markup.text(repr(query))} in its name or id."
        return gr.skip(), gr.skip(), message, gr.skip()
    image, gallery, info, row = _selection(run, roots, int(hits[0]), level)
    more = f" ({len(hits):,} match {markup.text(repr(query))}; the first is shown.)"
    more = more if len(hits) > 1 else ""
    return image, gallery, info + more, row


def _selection(run: Run, roots: list[str], row: int | None, level: str):
    """(image, neighbours, what was selected, its row). The image's caption is in the text, not its
    label: a label update makes Gradio rebuild the component's JSON schema on every click
    (a fifth of a click's server time)."""
    if row is None or not 0 <= row < len(run.rows) or level not in run.levels:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return (
        picture(shown_image(run, row, roots)),  # a value, not an update: see the docstring
        neighbour_gallery(run, level, row),
        f"**Selected {markup.text(caption(run, row))}** — "
        f"{markup.code(image_column(run, 'relpath')[row])}; "
        f"its {run.manifest['config']['k']} nearest neighbours at level {level}:",
        row,
    )


def on_run(
    store: RunStore,
    run_id: str,
    direction: str,
    color_by: str,
    method: str,
    view: str,
    contours: bool,
):
    """A run switched to: its levels and projections, the user's view kept where it can."""
    run = open_id(store, run_id)
    level = default_level(run)
    method = pick_method(run, method)
    fit_on = DIRECTIONS.get(direction, "real")
    return (
        run.id,
        gr.update(choices=run.levels, value=level),
        gr.update(choices=methods(run), value=method),
        overlap_figure(run, level, fit_on, color_by, method, view, None, contours),
    )


def _view_controls(first: Run):
    """(level, projection, direction, colour by, view, contours, find an image)."""
    first_methods = methods(first)
    with gr.Row():
        level = level_dropdown("Level", first)
        method = gr.Radio(
            first_methods, value=first_methods[0][1], label="Projection", elem_id="projection"
        )
        direction = gr.Radio(
            list(DIRECTIONS), value=list(DIRECTIONS)[0], label="Direction", scale=2
        )
        color_by = gr.Radio(
            list(COLOR_BY), value="domain", label="Colour by", scale=2, elem_id="overlap_color"
        )
    with gr.Row():
        view = gr.Radio(
            list(VIEWS),
            value="3D",
            label="View",
            elem_id="view",
            info="2D: the first two axes; a zoom shows all its points",
        )
        contours = gr.Checkbox(False, label="Density contours (2D)", elem_id="contours")
        search = gr.Textbox(
            label="Find an image",
            placeholder="row id or part of a file name",
            elem_id="find_image",
            scale=2,
        )
    return level, method, direction, color_by, view, contours, search


def _object_controls(first: Run):
    """(class, size stratum): shown for an object run only."""
    with gr.Row(visible=first.objects is not None):
        category = gr.Dropdown(
            class_choices(first),
            value=ALL,
            label="Objects of class",
            elem_id="object_class",
            allow_custom_value=True,
        )
        size = gr.Radio(
            list(SIZES),
            value=ALL,
            label="Object size (COCO: small < 32², large ≥ 96² px)",
            elem_id="object_size",
        )
    return category, size


@dataclass
class _Selection:
    """The column beside the plot: the selected image, its neighbours, the lasso's rows."""

    image: gr.Image
    info: gr.Markdown
    neighbours_from: gr.Radio
    gallery: gr.Gallery
    row: gr.Number
    picked: gr.State
    lassoed: gr.Markdown

    @classmethod
    def build(cls, store: RunStore, editing: Editing, run_id, level) -> _Selection:
        image = gr.Image(label="Selected image", height=260, elem_id="selected_image")
        info = gr.Markdown(
            "Click a point in the plot to see its nearest neighbours.", elem_id="selection_info"
        )
        neighbours_from = gr.Radio(
            list(NEIGHBOURS_FROM),
            value=NEIGHBOURS_FROM[0],
            label="Neighbours from",
            elem_id="neighbours_from",
        )
        # a click on a neighbour picks it (no preview: the selected image is large)
        gallery = PathGallery(
            label="Nearest neighbours (click to pick)",
            columns=4,
            height=420,
            elem_id="neighbours",
            allow_preview=False,
        )
        row = gr.Number(-1, visible=False, precision=0)
        picked = gr.State([])  # rows inside the last lasso on the 2D view
        lassoed = gr.Markdown(elem_id="lasso_note")
        curation.panel(store, editing, run_id, level, row, picked)
        return cls(image, info, neighbours_from, gallery, row, picked, lassoed)

    @property
    def shown(self) -> list:
        return [self.image, self.gallery, self.info, self.row]

    def wire(self, store: RunStore, roots: list[str], run_id, level, search) -> None:
        """A click in the plot, a name searched, a neighbour picked, the filter changed."""

        def pick(run: str, lv: str, row, source: str, rows, evt: gr.SelectData):
            return pick_neighbour(store, run, lv, row, source, rows, evt.index)

        picks = [run_id, level, self.row, self.neighbours_from, self.picked]
        self.gallery.select(pick, picks, [self.picked, self.lassoed])
        click_box = gr.Textbox(elem_id="click_box", visible="hidden")
        click_box.change(
            partial(select_point, store, roots),
            [click_box, run_id, level],
            self.shown,
            api_name="select_point",
        )
        where = [run_id, level, self.row, self.neighbours_from]
        self.neighbours_from.input(partial(filtered_neighbours, store), where, self.gallery)
        self.row.change(partial(_refilter, store), where, self.gallery)
        search.submit(
            partial(find_image, store, roots),
            [search, run_id, level],
            self.shown,
            api_name="find_image",
        )


def build(store: RunStore, roots: list[str], first: Run, editing: Editing | None = None) -> Tab:
    with gr.Blocks() as blocks:
        run_id = gr.Textbox(first.id, visible=False)
        level, method, direction, color_by, view, contours, search = _view_controls(first)
        category, size = _object_controls(first)
        with gr.Row():
            with gr.Column(scale=3):
                figure = overlap_figure(first, default_level(first), "real", method=method.value)
                plot = gr.Plot(figure, elem_id="overlap_plot", label="Overlap (click a point)")
            with gr.Column(scale=2):
                side = _Selection.build(store, editing or Editing(False), run_id, level)
        zoom_box = gr.Textbox(elem_id="zoom_box", visible="hidden")
        lasso_box = gr.Textbox(elem_id="lasso_box", visible="hidden")
        lasso_box.change(
            partial(lasso_rows, store),
            [lasso_box, run_id, level, direction, method],
            [side.picked, side.lassoed],
        )
        side.wire(store, roots, run_id, level, search)
        choices = [run_id, level, direction, color_by, method, view, contours]
        # .input: the user's choices only; a run switch sets these and draws the plot itself
        gr.on(
            [
                level.input,
                direction.input,
                color_by.input,
                method.input,
                view.input,
                contours.input,
                zoom_box.change,  # the zoom box is only ever set by the browser
                category.input,
                size.input,
            ],
            partial(show_plot, store),
            [*choices, zoom_box, category, size],
            plot,
        )
        blocks.load(None, None, None, js=SELECT_ON_CLICK_JS)
    return Tab(
        blocks,
        run_id,
        on_run,
        [direction, color_by, method, view, contours],
        [run_id, level, method, plot],
    )
