"""The What if tab: a what-if run's gap against each transform's strength, per level, the
best change per level, and before/after pairs. Plain functions of the run's
whatif/results.json (lib.jobs.whatif), then the tab.
"""

from __future__ import annotations

from functools import partial

import gradio as gr

from demo.report import _error_bars
from demo.runs import Tab, open_id
from lib.store.runs import Run, RunStore

HOW_TO = (
    "This run has no what-if experiments. Measure which change to the synthetic images "
    "closes the gap with e.g. `python -m batch whatif --transform blur=0.5,1,2 "
    "--transform jpeg` (see the README, What if); the results are published as a new run."
)
METRICS = {
    "fd": "FD (lower: closer)",
    "coverage": "coverage (higher: closer)",
    "auc": "classifier AUC (0.5: indistinguishable)",
}
BEST_HEADERS = [
    "level",
    "lowers FD most",
    "FD before → after",
    "FD gap closed",
    "lowers AUC most",
    "AUC before → after",
]


def curves(results: dict, level: str, metric: str):
    """One panel per transform: the metric against its strength with 95 % intervals, the
    baseline as a line in its interval's band; hollow markers are within noise of it."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    transforms = results["transforms"]
    titles = [f"{name}<br><sub>{t['parameter']}</sub>" for name, t in transforms.items()]
    fig = make_subplots(
        cols=len(transforms), subplot_titles=titles, shared_yaxes=True, horizontal_spacing=0.03
    )
    for col, name in enumerate(transforms, start=1):
        rows = [v for v in results["variants"] if v["transform"] == name]
        rows.sort(key=lambda v: v["strength"])
        recs = [v["levels"][level]["records"][metric] for v in rows]
        changes = [v["levels"][level]["change"][metric] for v in rows]
        fig.add_trace(
            go.Scatter(
                x=[v["strength"] for v in rows],
                y=[r["value"] for r in recs],
                mode="lines+markers",
                error_y=_error_bars([(r["value"], r["ci95"]) for r in recs]),
                name=name,
                showlegend=False,
                marker={
                    "size": 9,
                    "symbol": ["circle-open" if c["within_noise"] else "circle" for c in changes],
                },
                hovertext=[_hover(v, r, c) for v, r, c in zip(rows, recs, changes, strict=True)],
                hoverinfo="text",
            ),
            row=1,
            col=col,
        )
    base = results["baseline"][level][metric]
    fig.add_hline(
        y=base["value"],
        line_dash="dash",
        line_color="grey",
        row="all",
        col="all",
        annotation_text="untransformed",
        annotation_position="top left",
    )
    if base.get("ci95"):
        lo, hi = base["ci95"]
        fig.add_hrect(
            y0=lo, y1=hi, fillcolor="grey", opacity=0.12, line_width=0, row="all", col="all"
        )
    fig.update_yaxes(title_text=METRICS[metric], row=1, col=1)
    fig.update_layout(
        height=380,
        margin={"t": 70, "b": 40, "l": 60, "r": 10},
        title=f"{level}: {METRICS[metric]} per transform strength "
        "(hollow: within noise of the untransformed images)",
    )
    return fig


def _hover(variant: dict, rec: dict, change: dict) -> str:
    ci = rec.get("ci95") or [float("nan")] * 2
    lo, hi = change["ci95"]
    text = (
        f"{variant['label']}<br>{rec['value']:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]"
        f"<br>change {change['value']:+.4g} [{lo:+.4g}, {hi:+.4g}]"
    )
    if "gap_closed" in change:
        text += f"<br>gap closed {change['gap_closed']:.0%}"
    return text + ("<br>within noise" if change["within_noise"] else "")


def best_rows(results: dict) -> list[list]:
    """Per level: the change that lowers FD most and the one that lowers the AUC most,
    beyond noise ("–" when nothing does)."""
    rows = []
    for level in results["levels"]:
        fd, auc = results["best"][level]["fd"], results["best"][level]["auc"]
        rows.append(
            [
                level,
                fd["label"] if fd else "– (nothing beyond noise)",
                f"{fd['before']:.4g} → {fd['after']:.4g}" if fd else "",
                f"{fd['gap_closed']:.0%}" if fd else "",
                auc["label"] if auc else "– (nothing beyond noise)",
                f"{auc['before']:.3f} → {auc['after']:.3f}" if auc else "",
            ]
        )
    return rows


def pairs(run: Run, transform: str) -> list[tuple[str, str]]:
    """Each kept image untransformed, then at every strength of `transform`."""
    results = run.whatif
    chosen = sorted(
        (v for v in results["variants"] if v["transform"] == transform), key=lambda v: v["strength"]
    )
    out = []
    for i, original in enumerate(results["pairs"].get("none", [])):
        out.append((str(run.whatif_pair(original)), f"image {i + 1}: untransformed"))
        out += [(str(run.whatif_pair(results["pairs"][v["key"]][i])), v["label"]) for v in chosen]
    return out


def summary(results: dict) -> str:
    s = results["samples"]
    lines = [
        f"### What if: {len(results['variants'])} variants of {s['synthetic']} synthetic "
        f"images, each measured against the same {s['real']} real images",
        *(f"- {line}" for line in results["findings"]),
        "",
        GAP_CLOSED,
    ]
    return "\n".join(lines)


GAP_CLOSED = (
    "*Gap closed* is the share of the untransformed images' distance from no gap that a "
    "change removes: for the AUC, from 0.5; for FD, from the FD two samples of this size "
    "read with no gap at all (two halves of the real sample), not from 0 — at deep "
    "levels and a few hundred images FD's small-sample bias is most of the FD, and a "
    "share of the whole would understate any change."
)


# ---- the tab ----------------------------------------------------------------------------


def show(store: RunStore, run_id: str, level: str, metric: str):
    run = open_id(store, run_id)
    if run.whatif is None or level not in run.whatif["levels"]:
        return None
    return curves(run.whatif, level, metric)


def show_pairs(store: RunStore, run_id: str, transform: str):
    run = open_id(store, run_id)
    return pairs(run, transform) if run.whatif and transform else []


def on_run(store: RunStore, run_id: str, metric: str):
    run = open_id(store, run_id)
    results = run.whatif
    if results is None:
        empty = gr.update(choices=[], value=None)
        return run.id, HOW_TO, empty, None, [], empty, []
    level, transform = results["levels"][0], next(iter(results["transforms"]))
    return (
        run.id,
        summary(results),
        gr.update(choices=results["levels"], value=level),
        curves(results, level, metric),
        best_rows(results),
        gr.update(choices=list(results["transforms"]), value=transform),
        pairs(run, transform),
    )


def build(store: RunStore, first: Run) -> Tab:
    with gr.Blocks() as blocks:
        run_id = gr.Textbox(first.id, visible=False)
        note = gr.Markdown(elem_id="whatif_note")
        with gr.Row():
            level = gr.Dropdown(label="At level", allow_custom_value=True, elem_id="whatif_level")
            metric = gr.Radio(
                [(label.split(" (")[0], m) for m, label in METRICS.items()],
                value="fd",
                label="Gap measured by",
            )
        plot = gr.Plot(label="Gap against each transform's strength", elem_id="whatif_curves")
        best = gr.Dataframe(
            headers=BEST_HEADERS,
            label="Best change per level (beyond noise)",
            elem_id="whatif_best",
        )
        transform = gr.Dropdown(
            label="Before / after", allow_custom_value=True, elem_id="whatif_transform"
        )
        gallery = gr.Gallery(
            label="The same synthetic images, untransformed and transformed",
            columns=6,
            height=320,
            object_fit="contain",
            elem_id="whatif_pairs",
        )
        gr.on([level.input, metric.input], partial(show, store), [run_id, level, metric], plot)
        transform.input(partial(show_pairs, store), [run_id, transform], gallery)
        outputs = [run_id, note, level, plot, best, transform, gallery]
        blocks.load(partial(on_run, store), [run_id, metric], outputs)
    return Tab(blocks, run_id, on_run, [metric], outputs)
