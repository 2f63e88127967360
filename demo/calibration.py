"""The "Does it matter?" tab: a run's calibration (lib.jobs.calibration): per level, one
gap metric against the detector's AP across the synthetic variants (points with both
intervals), the rank correlation of every metric at every level, and the best predictor
in words. Plain functions of the run, then the tab.
"""

from __future__ import annotations

from functools import partial

import gradio as gr

from demo import markup
from demo.runs import Tab, open_id
from lib.jobs.calibration import METRICS
from lib.store.runs import Run, RunStore

HOW_TO = (
    "This run has no calibration. Measure each synthetic variant in its own run, evaluate a "
    "detector trained on it there (`batch evaluate detections --run RUN ...`), then "
    "`python -m batch evaluate calibration --variant RUN1 --variant RUN2 ... --detector NAME` "
    "(see the README, Detections); it is published as a new run."
)


def correlation_table(calibration: dict) -> tuple[list[str], list[list]]:
    """(headers, rows): a row per level, a column per metric, each ρ [interval]."""
    metrics = [m for m in METRICS if any(m in r for r in calibration["levels"].values())]
    rows = []
    for level, by_metric in calibration["levels"].items():
        row = [level]
        for m in metrics:
            r = by_metric.get(m)
            if r is None or r["rho"] != r["rho"]:  # absent, or NaN: the metric did not vary
                row.append("–")
                continue
            ci = r["ci95"]
            row.append(f"{r['rho']:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""))
        rows.append(row)
    return ["level", *metrics], rows


def _points(calibration: dict, level: str, metric: str):
    """(names, metric values, their intervals, AP values, their intervals) at `level`."""
    rows = []
    for variant, point in calibration["points"].items():
        rec = point["levels"].get(level, {}).get(metric)
        ap = point["figure"]
        if rec is not None and ap is not None:
            rows.append(
                (
                    markup.label(variant),
                    rec["value"],
                    rec["ci95"] or [rec["value"]] * 2,
                    ap["value"],
                    ap["ci95"] or [ap["value"]] * 2,
                )
            )
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 5


def _error_bars(values: list[float], intervals: list) -> dict:
    return {
        "type": "data",
        "symmetric": False,
        "array": [hi - v for v, (_, hi) in zip(values, intervals, strict=True)],
        "arrayminus": [v - lo for v, (lo, _) in zip(values, intervals, strict=True)],
    }


def metric_figure(calibration: dict, metric: str):
    """Per level, `metric` (x, its 95 % interval) against the variants' AP (y, its
    interval over test images), one point per variant named on hover."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    levels = list(calibration["levels"])
    titles = [markup.label(lv) for lv in levels]
    fig = make_subplots(cols=max(len(levels), 1), subplot_titles=titles)
    tip = "%{text}<br>" + f"{metric} " + "%{x:.3g}<br>AP %{y:.3f}<extra></extra>"
    for col, level in enumerate(levels, start=1):
        names, xs, x_ci, ys, y_ci = _points(calibration, level, metric)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                text=names,
                hovertemplate=tip,
                showlegend=False,
                error_x=_error_bars(xs, x_ci),
                error_y=_error_bars(ys, y_ci),
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=metric, row=1, col=col)
    fig.update_yaxes(title_text=calibration["figure"], row=1, col=1)
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def summary(calibration: dict) -> str:
    lines = [
        f"**{markup.text(calibration['detector'])}** on {len(calibration['variants'])} "
        f"variants ({calibration['figure']} on the same real test images):",
        "",
    ]
    lines += [f"- {markup.text(line)}" for line in calibration["findings"]]
    return "\n".join(lines)


# ---- the tab ----------------------------------------------------------------------------


def show_metric(store: RunStore, run_id: str, metric: str):
    run = open_id(store, run_id)
    if run.calibration is None:
        return None
    return metric_figure(run.calibration, metric)


def on_run(store: RunStore, run_id: str, metric: str):
    run = open_id(store, run_id)
    calibration = run.calibration
    if calibration is None:
        return run.id, HOW_TO, gr.update(headers=["level"], value=[]), None
    headers, rows = correlation_table(calibration)
    metric = metric if metric in headers[1:] else headers[1]
    return (
        run.id,
        summary(calibration),
        gr.update(headers=headers, value=rows),
        metric_figure(calibration, metric),
    )


def build(store: RunStore, first: Run) -> Tab:
    with gr.Blocks() as blocks:
        run_id = gr.Textbox(first.id, visible=False)
        note = gr.Markdown(elem_id="calibration_note")
        table = gr.Dataframe(
            label="Spearman's ρ with the detector's AP across variants (95% intervals)",
            elem_id="calibration_table",
        )
        metric = gr.Radio(list(METRICS), value="coverage", label="Gap metric")
        chart = gr.Plot(
            label="The metric against AP, per level (points: variants)", elem_id="calibration_plot"
        )
        metric.input(partial(show_metric, store), [run_id, metric], chart)
        outputs = [run_id, note, table, chart]
        blocks.load(partial(on_run, store), [run_id, metric], outputs)
    return Tab(blocks, run_id, on_run, [metric], outputs)
