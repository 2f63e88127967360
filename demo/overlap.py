"""What the demo shows, as plain functions of a published run: no Gradio in here.

Runs are immutable once published, so opened runs are cached by directory.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from lib.plots import STYLE, direction_title
from lib.store import Run, RunStore

DIRECTIONS = {  # label → the domain UMAP was fitted on
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
METHOD_LABELS = {"umap": "UMAP", "pca": "PCA", "tsne": "t-SNE"}


@lru_cache(maxsize=8)
def open_run(run_dir: str) -> Run:
    return Run(Path(run_dir))


def default_level(run: Run) -> str:
    """The middle level: shallow levels see texture, deep ones semantics; start between."""
    return run.levels[len(run.levels) // 2]


def run_choices(store: RunStore) -> list[tuple[str, str]]:
    """(label, run id) for every published run, newest first."""
    latest = store.latest_id()
    out = []
    for run_id in store.run_ids():
        m = open_run(str(store.runs_dir / run_id)).manifest
        counts = " + ".join(f"{n} {d}" for d, n in m["counts"].items())
        tag = " · latest" if run_id == latest else ""
        weights = " · RANDOM WEIGHTS" if m["backbone"]["random_weights"] else ""
        out.append((f"{run_id} · {m['backbone']['name']}{weights} · {counts}{tag}", run_id))
    return out


def banner(run: Run) -> str:
    """Markdown saying which run is shown, from what, with which weights."""
    m = run.manifest
    b = m["backbone"]
    lines = [f"**Run {run.id}** · computed {m['created'].replace('T', ' ')} UTC"]
    for inp in m["inputs"]:
        lines.append(
            f"- {inp['domain']}: `{inp['source']}` ({inp['used']} images"
            + (f", {inp['skipped']} skipped" if inp["skipped"] else "")
            + ")"
        )
    lines.append(
        f"- backbone **{b['name']}**, levels {', '.join(b['levels'])}; weights: {b['weights']}"
    )
    lines.append(
        f"- pooling {m['config']['pooling']}, images {m['prepare']}, projections "
        f"{', '.join(METHOD_LABELS.get(p, p) for p in m['config'].get('projections', ['umap']))}"
        f" (UMAP {json.dumps(m['config']['umap'])}), neighbours k={m['config']['k']} "
        f"({m['config']['metric']})"
    )
    if b["random_weights"]:
        lines.insert(
            0, "## ⚠️ RANDOM WEIGHTS: this backbone was never trained; neighbours mean little"
        )
    return "\n".join(lines)


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
        from demo.report import cluster_names

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
        from demo.report import score_colors

        values = score_colors(run, level, g["id"].to_numpy(), SCORE_COLUMNS[color_by])
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


def caption(run: Run, row: int, distance: float | None = None) -> str:
    r = run.images.iloc[row]
    text = f"#{row} {r['domain']} · {r['category'] or '–'}"
    return text if distance is None else f"{text} · d={distance:.3f}"


def neighbour_gallery(run: Run, level: str, row: int) -> list[tuple[str, str]]:
    """(thumbnail path, caption) of the row's nearest neighbours in feature space."""
    idx, dist = run.neighbors(level)
    return [
        (str(run.thumb(int(j))), caption(run, int(j), float(d)))
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
