"""The Compare tab: a run's comparison of synthetic versions (lib.jobs.compare): the findings
in words, each metric of both versions side by side with the change and its paired
interval, per class, the trend of each metric over the runs with their intervals, and each
version's images nearest to and farthest from the real set. Plain functions of the run,
then the tab.
"""

from __future__ import annotations

from functools import partial

import gradio as gr

from demo import markup
from demo.runs import PathGallery, Tab, open_id, picture, with_ci
from lib.jobs.compare import TREND, verdict
from lib.store.runs import THUMBS, Run, RunStore

HOW_TO = (
    "This run has no comparison of synthetic versions. Measure each version against the "
    "same real images in its own run, then `python -m batch compare RUN_V1 RUN_V2` (see "
    "the README, Versions); it is published as a new run."
)
METRIC_NAMES = {"fd": "FD", "coverage": "coverage", "auc": "AUC"}
LEVEL_HEADERS = ["metric", "first version", "next version", "change [95%]", "verdict"]


def summary(compare: dict) -> str:
    runs = compare["runs"]
    shared = min(compare["shared_real"].values())
    lines = [
        f"**{len(runs)} versions** ({', '.join(markup.code(r['id']) for r in runs)}, oldest "
        f"first) against the {shared} real images they share:",
        "",
    ]
    lines += [f"- {markup.text(line)}" for line in compare["findings"]]
    left_out = compare.get("levels_left_out") or {}
    if left_out:
        names = ", ".join(markup.text(lv) for lv in left_out)
        lines += ["", f"Not compared (not a level of every run): {names}"]
    return "\n".join(lines)


def pair_of(compare: dict, pair: int = -1) -> dict:
    return compare["pairs"][pair]


def level_table(compare: dict, level: str) -> list[list[str]]:
    """A row per metric: both versions' values with intervals, the change, the verdict."""
    m = pair_of(compare)["levels"][level]
    return [
        [
            METRIC_NAMES[name],
            with_ci(m["from"][name], ".3g"),
            with_ci(m["to"][name], ".3g"),
            with_ci(m["change"][name], ".3g"),
            verdict(name, m["change"][name]),
        ]
        for name in METRIC_NAMES
    ]


def strata_table(compare: dict, level: str) -> tuple[list[str], list[list[str]]]:
    """A row per class (and object size): each metric's change with its interval and
    verdict at `level`; strata too small say so."""
    headers = ["stratum", *(f"{METRIC_NAMES[n]} change" for n in METRIC_NAMES)]
    rows = []
    pair = pair_of(compare)
    for key, what in (("by_class", "class"), ("by_size", "size")):
        for name, entry in pair.get(key, {}).items():
            m = entry.get("levels", {}).get(level)
            if m is None:
                rows.append([f"{what} {name}", entry.get("skipped", "–"), "", ""])
                continue
            cells = [
                f"{with_ci(m['change'][n], '.3g')} {verdict(n, m['change'][n])}"
                for n in METRIC_NAMES
            ]
            rows.append([f"{what} {name}", *cells])
    return headers, rows


def trend_figure(compare: dict, level: str, metric: str):
    """`metric` at `level` in each run, in run order, with each run's 95 % interval."""
    import plotly.graph_objects as go

    points = compare["trend"].get(level, {}).get(metric, [])
    xs = [p["run"] for p in points]
    ys = [p["value"] for p in points]
    cis = [p["ci95"] or [p["value"]] * 2 for p in points]
    fig = go.Figure(
        go.Scatter(
            x=xs,
            y=ys,
            mode="lines+markers",
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [hi - v for v, (_, hi) in zip(ys, cis, strict=True)],
                "arrayminus": [v - lo for v, (lo, _) in zip(ys, cis, strict=True)],
            },
            hovertemplate="%{x}<br>" + metric + " %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{markup.label(metric)} at {markup.label(level)}, each version's run",
        height=340,
        hovermode="closest",
        margin={"l": 40, "r": 30, "t": 50, "b": 30},
        xaxis={"type": "category", "title": "run (oldest first)"},
    )
    return fig


def gallery(run: Run, compare: dict, level: str, run_id: str, which: str) -> list[tuple]:
    """One version's images `which` ("nearest" or "farthest") to real at `level`, as
    (thumbnail, caption): the thumbnails the comparison copied into its run."""
    items = compare.get("images", {}).get(run_id, {}).get(level, {}).get(which, [])
    return [
        (
            picture(run.dir / THUMBS / item["thumb"] if item["thumb"] else None),
            f"{item['file'] or '#' + str(item['row'])} · realism {item['realism']:.2f}",
        )
        for item in items
    ]


# ---- the tab ----------------------------------------------------------------------------


def show_level(store: RunStore, run_id: str, level: str, metric: str):
    run = open_id(store, run_id)
    compare = run.compare
    if compare is None or level not in compare["levels"]:
        return [], gr.update(value=[]), None, [], [], [], []
    headers, rows = strata_table(compare, level)
    first, last = pair_of(compare)["from"], pair_of(compare)["to"]
    return (
        level_table(compare, level),
        gr.update(headers=headers, value=rows),
        trend_figure(compare, level, metric),
        gallery(run, compare, level, first, "nearest"),
        gallery(run, compare, level, first, "farthest"),
        gallery(run, compare, level, last, "nearest"),
        gallery(run, compare, level, last, "farthest"),
    )


def on_run(store: RunStore, run_id: str, metric: str):
    run = open_id(store, run_id)
    compare = run.compare
    if compare is None:
        empty = gr.update(choices=[], value=None)
        return run.id, HOW_TO, empty, [], gr.update(value=[]), None, [], [], [], []
    level = compare["levels"][0]
    return (
        run.id,
        summary(compare),
        gr.update(choices=compare["levels"], value=level),
        *show_level(store, run.id, level, metric),
    )


def build(store: RunStore, first: Run) -> Tab:
    with gr.Blocks() as blocks:
        run_id = gr.Textbox(first.id, visible=False)
        note = gr.Markdown(elem_id="compare_note")
        with gr.Row():
            level = gr.Dropdown(label="Level", allow_custom_value=True, elem_id="compare_level")
            metric = gr.Radio(list(TREND), value="fd", label="Trend of")
        table = gr.Dataframe(
            headers=LEVEL_HEADERS,
            label="The last two versions at this level (95% intervals; the change's is paired)",
            elem_id="compare_table",
        )
        strata = gr.Dataframe(label="Per class and object size", elem_id="compare_strata")
        chart = gr.Plot(label="Over the versions' runs", elem_id="compare_trend")
        galleries = []
        for version in ("first", "next"):
            with gr.Row():
                for which in ("nearest to", "farthest from"):
                    galleries.append(
                        PathGallery(
                            label=f"The {version} version's images {which} real",
                            columns=6,
                            height=220,
                            elem_id=f"compare_{version}_{which.split()[0]}",
                        )
                    )
        shown = [table, strata, chart, *galleries]
        gr.on(
            [level.input, metric.input],
            partial(show_level, store),
            [run_id, level, metric],
            shown,
        )
        outputs = [run_id, note, level, *shown]
        blocks.load(partial(on_run, store), [run_id, metric], outputs)
    return Tab(blocks, run_id, on_run, [metric], outputs)
