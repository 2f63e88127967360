"""The gap report tab: metrics across levels, the images to blame, and history over runs.

Every metric in metrics.json is one record shape ({value, ci95, n, ...}; lib.analysis.gap.records),
so the table, the charts and the history read any metric the same way; runs published
before the shape was unified are upgraded as they are read (lib.store.runs.Run.metrics).
"""

from __future__ import annotations

from functools import partial

import gradio as gr
import numpy as np

from demo import duplicates, markup, modes
from demo.curation import Editing
from demo.overlap import ALL, SIZES, class_choices, object_filter
from demo.runs import (
    PathGallery,
    Tab,
    caption,
    default_level,
    level_dropdown,
    level_scores,
    open_id,
    open_run,
    picture,
)
from lib.analysis.gap.records import interval
from lib.store.runs import Run, RunStore

# name → (title, short table header)
METRICS = {
    "fd": ("Fréchet distance (equal N)", "FD"),
    "fd_inf": ("FD∞ (extrapolated)", "FD∞"),
    "kid": ("KID (standardised)", "KID"),
    "auc": ("Domain classifier AUC (0.5 = no gap)", "AUC"),
    "precision": ("Precision", "precision"),
    "recall": ("Recall", "recall"),
    "density": ("Density (≈1 = no gap)", "density"),
    "coverage": ("Coverage (≈0.97 = no gap)", "coverage"),
    "mixing": ("Neighbour mixing (1 = mixed)", "mixing"),
}
PANELS = ("fd", "kid", "auc", "coverage", "density", "mixing")
SUMMARY_HEADERS = ["level", "N real + synthetic", "dim", *(short for _, short in METRICS.values())]


def metric_value(level_metrics: dict, name: str) -> tuple[float, list[float] | None]:
    """A metric's value and interval at one level, whatever the metric."""
    rec = level_metrics["metrics"][name]
    return float(rec["value"]), interval(rec)


def _error_bars(points: list[tuple[float, list[float] | None]]) -> dict:
    return {
        "type": "data",
        "array": [ci[1] - v if ci else 0.0 for v, ci in points],
        "arrayminus": [v - ci[0] if ci else 0.0 for v, ci in points],
        "visible": True,
    }


def levels_figure(run: Run):
    """One panel per metric, levels on the x axis, intervals as error bars."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    levels = run.metrics["levels"]
    fig = make_subplots(rows=2, cols=3, subplot_titles=[METRICS[p][0] for p in PANELS])
    for i, name in enumerate(PANELS):
        points = [metric_value(m, name) for m in levels.values()]
        fig.add_trace(
            go.Scatter(
                x=list(levels),
                y=[v for v, _ in points],
                mode="lines+markers",
                name=METRICS[name][0],
                error_y=_error_bars(points),
                showlegend=False,
            ),
            row=i // 3 + 1,
            col=i % 3 + 1,
        )
    fd_inf = [metric_value(m, "fd_inf")[0] for m in levels.values()]
    fig.add_trace(
        go.Scatter(x=list(levels), y=fd_inf, mode="lines", line={"dash": "dot"}, name="FD∞"),
        row=1,
        col=1,
    )
    fig.update_layout(height=560, margin={"l": 40, "r": 10, "t": 40, "b": 30}, showlegend=False)
    return fig


def summary_table(run: Run) -> list[list]:
    """Rows for a table: level, N, dim, then each metric with its interval as text."""
    rows = []
    for level, m in run.metrics["levels"].items():
        row = [level, f"{m['n']['real']} + {m['n']['synthetic']}", m["dim"]]
        for name in METRICS:
            v, ci = metric_value(m, name)
            row.append(f"{v:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""))
        rows.append(row)
    return rows


def blame_galleries(
    run: Run, level: str, n: int = 16, category: str = ALL, size: str = ALL
) -> dict[str, list[tuple[str, str]]]:
    """Thumbnails of the images behind the gap at one level, worst first; of an object
    run, only the objects of `category` and `size` when chosen."""
    scores = level_scores(run, level)
    images = run.rows
    keep = object_filter(run, images.index.to_numpy(), category, size)
    synth = scores.loc[images.index[keep & (images["domain"] == "synthetic").to_numpy()]]
    real = scores.loc[images.index[keep & (images["domain"] == "real").to_numpy()]]

    def items(frame, label):
        return [
            (picture(run.thumb(int(i))), f"{caption(run, int(i))} · {label(row)}")
            for i, row in frame.head(n).iterrows()
        ]

    uncovered = real[real["covered"] == False]  # noqa: E712 (nullable boolean column)
    return {
        "least_realistic": items(
            synth.sort_values("realism"), lambda r: f"realism {r['realism']:.2f}"
        ),
        "most_synthetic": items(
            synth.sort_values("p_synthetic", ascending=False),
            lambda r: f"p(syn) {r['p_synthetic']:.2f}",
        ),
        "uncovered_real": items(
            uncovered.sort_values("p_synthetic"), lambda r: f"p(syn) {r['p_synthetic']:.2f}"
        ),
        "one_domain_clusters": cluster_gallery(run, level),
    }


def history_figure(store: RunStore, level: str, name: str = "auc"):
    """One metric at one level over every published run, oldest first."""
    import plotly.graph_objects as go

    xs, points, texts = [], [], []
    for run_id in reversed(store.run_ids()):
        run = open_run(str(store.runs_dir / run_id))
        if run.manifest.get("derived_from"):  # same metrics as the run it extends
            continue
        levels = (run.metrics or {}).get("levels", {})
        if level not in levels:
            continue
        xs.append(run.manifest["created"])
        points.append(metric_value(levels[level], name))
        texts.append(run_id)
    fig = go.Figure(
        go.Scatter(
            x=xs,
            y=[v for v, _ in points],
            text=texts,
            mode="lines+markers",
            error_y=_error_bars(points),
            hovertemplate="%{text}<br>%{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{METRICS[name][0]} at {level}, all published runs",
        height=360,
        margin={"l": 40, "r": 10, "t": 50, "b": 30},
        xaxis_title="run",
    )
    return fig


def cluster_gallery(run: Run, level: str, per_cluster: int = 4) -> list[tuple[str, str]]:
    """Sample images from every one-domain cluster, most lopsided first."""
    scores = run.scores[run.scores["level"] == level]
    items = []
    for c in run.metrics["levels"][level]["clusters"]["table"]:
        if c["kind"] == "mixed":
            continue
        ids = scores.loc[scores["cluster"] == c["cluster"], "id"].to_numpy()
        pick = np.random.default_rng(c["cluster"]).permutation(ids)[:per_cluster]
        label = f"cluster {c['cluster']} · {c['kind']} ({c['real']} real, {c['synthetic']} syn)"
        items += [(picture(run.thumb(int(i))), f"{caption(run, int(i))} · {label}") for i in pick]
    return items


def notes_markdown(run: Run) -> str:
    """Where the gap is largest, and how to read the numbers honestly."""
    levels = run.metrics["levels"]
    auc = {lv: metric_value(m, "auc")[0] for lv, m in levels.items()}
    worst, best = max(auc, key=auc.get), min(auc, key=auc.get)
    w = levels[worst]
    kid = w["metrics"]["kid"]
    cov = {lv: metric_value(levels[lv], "coverage")[0] for lv in (worst, best)}
    lines = [
        f"**Largest gap at {markup.text(worst)}** (domain classifier AUC {auc[worst]:.3f}, "
        "coverage "
        f"{cov[worst]:.3f}); **smallest at {markup.text(best)}** (AUC {auc[best]:.3f}, coverage "
        f"{cov[best]:.3f}).",
        f"- N = {w['n']['real']} real, {w['n']['synthetic']} synthetic; FD at equal N = "
        f"{w['metrics']['fd']['n']} (FD shrinks like 1/N: compare runs at equal N, or FD∞).",
        *_sampled_note(w),
        f"- KID over {kid['subsets']} subsets of {kid['subset_size']}"
        + (" (fewer images than the usual 1000 per subset)" if kid["reduced"] else "")
        + "; KID, PRDC, realism, mixing and the classifier use features standardised with the "
        "real domain's statistics.",
        f"- k = {run.metrics['params']['k']} for precision/recall/density/coverage, realism and "
        "mixing. Realism is the plain distance ratio (≥ 1: inside the real manifold).",
        f"- Clusters at {markup.text(worst)}: {w['clusters']['n']} (HDBSCAN), "
        f"{w['clusters']['real_only']} real-only (what the synthetic data misses), "
        f"{w['clusters']['synthetic_only']} synthetic-only (what it invents).",
    ]
    return "\n".join(lines)


def _sampled_note(level: dict) -> list[str]:
    """A large run's metrics are a seeded sample's: say of how many (--gap-sample)."""
    full = level.get("sampled_from")
    if not full:
        return []
    return [
        f"- Metrics and their intervals are those of a seeded sample of {level['n']['real']:,} "
        f"of {full['real']:,} real and {level['n']['synthetic']:,} of {full['synthetic']:,} "
        "synthetic images; the per-image scores cover every image."
    ]


# ---- the tab ----------------------------------------------------------------------------

NO_METRICS = "This run has no gap metrics (it predates them): rerun the batch job."


def what_differs(run: Run) -> tuple[str, object]:
    """The "What differs" section: the attribution's findings in words and a table, and
    a chart of each statistic's AUC and of what photometry explains per level."""
    found = (run.metrics or {}).get("attribution")
    if not found:
        return (
            "### What differs\nThis run has no photometric attribution (embeddings, objects, "
            "`--attribution 0`, or a run from before it).",
            None,
        )
    lines = ["### What differs", ""]
    lines += [f"- {s}" for s in found["sentences"]] or ["- no clear photometric difference"]
    n = found["n"]
    lines += [
        "",
        f"Statistics of {n['real']} real and {n['synthetic']} synthetic images "
        f"(a seeded sample, at ≤ {found['image_side']} px); AUC: how well each alone "
        "tells synthetic from real (0.5: not at all; below: synthetic has less).",
        "",
        "| statistic | AUC (95 %) | real median | synthetic median |",
        "|---|---|---|---|",
    ]
    for s in found["statistics"]:
        lo, hi = s["ci95"]
        lines.append(
            f"| {s['statistic']} ({s['what']}) | {s['auc']:.2f} ({lo:.2f}–{hi:.2f})"
            f" | {s['real_median']:.4g} | {s['synthetic_median']:.4g} |"
        )
    return "\n".join(lines), attribution_figure(found)


def objects_section(run: Run) -> str:
    """An object run's gap per class and per size stratum, level by level: FD and the
    domain classifier's AUC with their intervals (lib.analysis.gap.strata); "" for image runs."""
    strata = (run.metrics or {}).get("objects")
    if not strata:
        return ""
    levels = run.levels
    lines = [
        "### Objects: the gap per class and per size",
        "",
        "Per level, the Fréchet distance and the domain classifier's AUC (0.5: no gap), "
        "with 95 % intervals, among the objects of one class or size stratum only (COCO's: "
        "small < 32², large ≥ 96² px). Strata with fewer than 20 objects in a domain have "
        "no figures.",
        "",
        "| objects | N real + synthetic | "
        + " | ".join(f"{markup.text(lv)} FD | {markup.text(lv)} AUC" for lv in levels)
        + " |",
        "|---|---|" + "---|---|" * len(levels),
    ]
    for title, key in (("class", "by_class"), ("size", "by_size")):
        for name, entry in strata[key].items():
            cells = [
                f"{title} **{markup.text(name)}**",
                f"{entry['n']['real']} + {entry['n']['synthetic']}",
            ]
            for lv in levels:
                rec = entry.get("levels", {}).get(lv)
                cells += (
                    [_with_interval(rec["fd"]), _with_interval(rec["auc"], ".2f")]
                    if rec
                    else ["–", "–"]
                )
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _with_interval(rec: dict, fmt: str = ".3g") -> str:
    ci = interval(rec)
    return f"{rec['value']:{fmt}}" + (f" ({ci[0]:{fmt}}–{ci[1]:{fmt}})" if ci else "")


def least_realistic_per_class(run: Run, level: str, per_class: int = 2) -> list[tuple]:
    """An object run's least realistic synthetic objects, `per_class` of each class."""
    if run.objects is None:
        return []
    scores = level_scores(run, level)
    objects = run.rows
    synth = objects[objects["domain"] == "synthetic"]
    items = []
    for _, group in synth.groupby("category", sort=True):
        worst = scores.loc[group.index].sort_values("realism").head(per_class)
        items += [
            (picture(run.thumb(int(i))), f"{caption(run, int(i))} · realism {row['realism']:.2f}")
            for i, row in worst.iterrows()
        ]
    return items


def attribution_figure(found: dict):
    """Left: each statistic's AUC with its interval; right: R² of p(synthetic) from
    photometry per level (high: filters; low: content)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    stats = found["statistics"][::-1]  # strongest on top
    fig = make_subplots(
        cols=2,
        subplot_titles=(
            "AUC per statistic (0.5: no difference)",
            "p(synthetic) explained by photometry (R²; bars: the folds' range)",
        ),
    )
    fig.add_trace(
        go.Bar(
            x=[s["auc"] - 0.5 for s in stats],
            y=[s["statistic"] for s in stats],
            base=0.5,
            orientation="h",
            showlegend=False,
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [s["ci95"][1] - s["auc"] for s in stats],
                "arrayminus": [s["auc"] - s["ci95"][0] for s in stats],
            },
        ),
        row=1,
        col=1,
    )
    levels = list(found["explained"])
    r2 = [found["explained"][lv] for lv in levels]
    fig.add_trace(
        go.Scatter(
            x=levels,
            y=[r["r2"] for r in r2],
            mode="lines+markers",
            showlegend=False,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [r["ci95"][1] - r["r2"] for r in r2],
                "arrayminus": [r["r2"] - r["ci95"][0] for r in r2],
            },
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(range=[0, 1], row=1, col=1)
    fig.update_yaxes(range=[-0.1, 1], row=1, col=2)
    fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def show_report(
    store: RunStore, run_id: str, level: str, metric: str, category: str = ALL, size: str = ALL
):
    """The gap report of a run: notes, table, chart, what differs, images to blame at
    `level` (an object run's: of `category` and `size`), history."""
    run = open_id(store, run_id)
    if not run.metrics:
        return NO_METRICS, None, None, "", "", None, [], [], [], [], [], None
    level = level if level in run.levels else default_level(run)
    blame = blame_galleries(run, level, category=category, size=size)
    return (
        notes_markdown(run),
        summary_table(run),
        levels_figure(run),
        objects_section(run),
        gr.update(value=least_realistic_per_class(run, level), visible=run.objects is not None),
        *what_differs(run),
        blame["least_realistic"],
        blame["most_synthetic"],
        blame["uncovered_real"],
        blame["one_domain_clusters"],
        history_figure(store, level, metric),
    )


def on_run(store: RunStore, run_id: str, metric: str):
    run = open_id(store, run_id)
    level = default_level(run)
    return (
        run.id,
        gr.update(choices=run.levels, value=level),
        *show_report(store, run.id, level, metric),
    )


def _gallery(label: str, elem_id: str | None = None) -> gr.Gallery:
    return PathGallery(label=label, columns=8, height=260, elem_id=elem_id)


def _blame_choices(first: Run):
    """(level, history metric, class, object size): what the report's galleries show."""
    with gr.Row():
        level = level_dropdown("Images to blame at level", first)
        metric = gr.Dropdown(
            label="History of", value="auc", choices=[(METRICS[m][0], m) for m in METRICS]
        )
    with gr.Row(visible=first.objects is not None):  # an object run's class and size
        category = gr.Dropdown(
            class_choices(first),
            value=ALL,
            label="To blame: class",
            elem_id="blame_class",
            allow_custom_value=True,
        )
        size = gr.Radio(list(SIZES), value=ALL, label="To blame: object size", elem_id="blame_size")
    return level, metric, category, size


def _blame_galleries() -> list[gr.Gallery]:
    """The images to blame, four ways."""
    return [
        _gallery(
            "Least realistic synthetic images (realism score; < 1 = outside the real manifold)",
            "least_realistic",
        ),
        _gallery("Most obviously synthetic (out-of-fold domain classifier)"),
        _gallery(
            "Real images no synthetic image covers (what the synthetic data misses)",
            "uncovered_real",
        ),
        _gallery(
            "Samples from one-domain clusters (real-only: missed; synthetic-only: invented)",
            "one_domain_clusters",
        ),
    ]


def build(store: RunStore, first: Run, editing: Editing | None = None) -> Tab:
    with gr.Blocks() as blocks:
        run_id = gr.Textbox(first.id, visible=False)
        notes = gr.Markdown(elem_id="report_notes")
        table = gr.Dataframe(headers=SUMMARY_HEADERS, label="Gap per level", elem_id="gap_table")
        chart = gr.Plot(label="Metrics across levels (95% intervals)")
        objects = gr.Markdown(elem_id="objects_gap")
        per_class = _gallery(
            "Least realistic synthetic objects of each class (at the level below)",
            "objects_to_blame",
        )
        differs = gr.Markdown(elem_id="what_differs")
        differs_chart = gr.Plot(label="What differs", elem_id="what_differs_chart")
        level, metric, category, size = _blame_choices(first)
        galleries = _blame_galleries()
        history = gr.Plot(label="Over all published runs")
        found_modes = modes.section(store, run_id)
        copies, kind = duplicates.section(store, editing or Editing(False), run_id)
        outputs = [
            notes,
            table,
            chart,
            objects,
            per_class,
            differs,
            differs_chart,
            *galleries,
            history,
        ]
        choices = [run_id, level, metric, category, size]
        gr.on(
            [level.input, metric.input, category.input, size.input],
            partial(show_report, store),
            choices,
            outputs,
        )
        # filled on load too: the report is the slowest part of a run to draw
        blocks.load(partial(show_report, store), choices, outputs)
        blocks.load(partial(duplicates.show, store), [run_id, kind], copies)
        blocks.load(partial(modes.show, store), run_id, found_modes)
    return Tab(blocks, run_id, on_run, [metric], [run_id, level, *outputs])
