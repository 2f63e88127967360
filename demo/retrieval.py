"""The Retrieval tab: a run's retrieval evaluations (lib.jobs.retrieval): the metrics per level,
accuracy rank by rank, and the queries with their nearest gallery images, wrong ones
marked, filtered by outcome and class. Plain functions of the run, then the tab.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import gradio as gr

from demo import markup
from demo.runs import Tab, open_id, with_ci
from lib.store.runs import Run, RunStore

HOW_TO = (
    "This run has no retrieval evaluation. Make one with e.g. `python -m batch evaluate "
    "retrieval --query synthetic --gallery real` (see the README, Retrieval); it is "
    "published as a new run."
)
HEADERS = ["level", "pass (k)", "recall@1", "recall@5", "recall@10", "mAP@R", "no match"]
SHOWN = 8  # queries in the gallery at once
OUTCOMES = ["failed", "passed", "all"]


def table(results: dict) -> list[list]:
    rows = []
    for level, m in results["levels"].items():
        r = m["recall_at"]
        rows.append(
            [
                level,
                with_ci(m["pass"]),
                f"{r['1']['value']:.3f}",
                f"{r['5']['value']:.3f}",
                f"{r['10']['value']:.3f}",
                with_ci(m["map_at_r"]),
                m["no_match"],
            ]
        )
    return rows


def per_rank_figure(results: dict):
    """Share of queries right at each rank, a line per level."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for level, m in results["levels"].items():
        ranks = list(range(1, len(m["per_rank_accuracy"]) + 1))
        fig.add_trace(
            go.Scatter(x=ranks, y=m["per_rank_accuracy"], mode="lines+markers", name=level)
        )
    fig.update_layout(
        height=320,
        margin={"t": 40, "b": 40, "l": 50, "r": 10},
        title="Right at each rank",
        xaxis_title="rank",
        yaxis_title="share of queries",
        yaxis_range=[0, 1],
    )
    return fig


def training_figure(run: Run):
    """The run's model's training curves (a model from `batch train classifier`), or None."""
    import csv

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    path = run.manifest.get("backbone", {}).get("training_csv")
    if not path or not Path(path).is_file():
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    fig = make_subplots(cols=2, subplot_titles=("loss", "validation accuracy"))
    for key, name in (("train_loss", "training"), ("val_loss", "validation")):
        fig.add_trace(
            go.Scatter(x=epochs, y=[float(r[key]) for r in rows], name=name, mode="lines+markers"),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Scatter(
            x=epochs,
            y=[float(r["val_accuracy"]) for r in rows],
            name="accuracy",
            mode="lines+markers",
        ),
        row=1,
        col=2,
    )
    fig.update_layout(
        height=300,
        margin={"t": 50, "b": 40, "l": 50, "r": 10},
        title=f"Training of {run.manifest['backbone']['name']}",
    )
    fig.update_xaxes(title_text="epoch")
    return fig


def summary(name: str, results: dict) -> str:
    k = results["k"]
    level, m = max(results["levels"].items(), key=lambda kv: kv[1]["pass"]["value"])
    return (
        f"### {results['n_query']} {results['query']} queries against "
        f"{results['n_gallery']} {results['gallery']} images\n"
        f"A query passes when its label ({markup.text(results['labels'])}) is among its {k} "
        "nearest "
        f"(by {results['metric']} distance, never itself). Best level: **{level}**, "
        f"{m['pass']['value']:.1%} pass, mAP@R {m['map_at_r']['value']:.3f}."
    )


def classes(run: Run, name: str, level: str) -> list[str]:
    return sorted(set(run.retrieval_table(name, level)["label"].astype(str)))


def queries(run: Run, name: str, level: str, outcome: str, label: str) -> list[tuple]:
    """(thumbnail, caption) of the first SHOWN queries with this outcome and label, each
    followed by its nearest gallery images (✓ right label, ✗ wrong)."""
    frame = run.retrieval_table(name, level)
    if outcome != "all":
        frame = frame[frame["pass"] == (outcome == "passed")]
    if label and label != "all":
        frame = frame[frame["label"].astype(str) == label]
    k = run.retrievals[name]["k"]
    out = []
    for _, row in frame.head(SHOWN).iterrows():
        verdict = "passed" if row["pass"] else "failed"
        out.append(
            (_thumb(run, row["query"]), f"query #{row['query']} · {row['label']} · {verdict}")
        )
        judged = zip(row["neighbours"], row["neighbour_labels"], row["right"], strict=True)
        for n, theirs, right in list(judged)[:k]:  # the labels they were judged by
            out.append((_thumb(run, n), f"{'✓' if right else '✗'} {theirs or '–'} · #{n}"))
    return out


def _thumb(run: Run, row: int) -> str | None:
    path = run.thumb(int(row))
    return str(path) if path else None


# ---- the tab ----------------------------------------------------------------------------


def show(store: RunStore, run_id: str, name: str, level: str, outcome: str, label: str):
    run = open_id(store, run_id)
    if name not in run.retrievals or level not in run.retrievals[name]["levels"]:
        return []
    return queries(run, name, level, outcome, label)


def show_evaluation(store: RunStore, run_id: str, name: str, outcome: str):
    """Everything of one evaluation: its summary, table, chart, level and class pickers,
    and the queries of its first level."""
    run = open_id(store, run_id)
    if name not in run.retrievals:
        raise markup.error(f"this run has no evaluation {name!r}: pick one from the list")
    results = run.retrievals[name]
    level = next(iter(results["levels"]))
    return (
        summary(name, results),
        table(results),
        per_rank_figure(results),
        gr.update(choices=list(results["levels"]), value=level),
        gr.update(choices=["all", *classes(run, name, level)], value="all"),
        queries(run, name, level, outcome, "all"),
    )


def on_run(store: RunStore, run_id: str, outcome: str):
    run = open_id(store, run_id)
    names = list(run.retrievals)
    training = training_figure(run)
    if not names:
        empty = gr.update(choices=[], value=None)
        return run.id, empty, HOW_TO, [], None, empty, empty, [], training
    return (
        run.id,
        gr.update(choices=names, value=names[0]),
        *show_evaluation(store, run.id, names[0], outcome),
        training,
    )


def build(store: RunStore, first: Run) -> Tab:
    with gr.Blocks() as blocks:
        run_id = gr.Textbox(first.id, visible=False)
        evaluation = gr.Dropdown(
            label="Evaluation", allow_custom_value=True, elem_id="retrieval_evaluation"
        )
        note = gr.Markdown(elem_id="retrieval_note")
        metrics = gr.Dataframe(
            headers=HEADERS, label="Per level (95% intervals)", elem_id="retrieval_table"
        )
        chart = gr.Plot(label="Accuracy by rank", elem_id="retrieval_ranks")
        with gr.Row():
            level = gr.Dropdown(label="Queries at level", allow_custom_value=True)
            outcome = gr.Radio(OUTCOMES, value="failed", label="Show queries that")
            label = gr.Dropdown(
                label="Of class", allow_custom_value=True, elem_id="retrieval_class"
            )
        gallery = gr.Gallery(
            label="Each query, then its nearest gallery images (✗: another label)",
            columns=6,
            height=420,
            object_fit="contain",
            elem_id="retrieval_queries",
        )
        evaluation.input(
            partial(show_evaluation, store),
            [run_id, evaluation, outcome],
            [note, metrics, chart, level, label, gallery],
        )
        gr.on(
            [level.input, outcome.input, label.input],
            partial(show, store),
            [run_id, evaluation, level, outcome, label],
            gallery,
        )
        training = gr.Plot(
            label="Training (a model from batch train classifier)", elem_id="retrieval_training"
        )
        outputs = [run_id, evaluation, note, metrics, chart, level, label, gallery, training]
        blocks.load(partial(on_run, store), [run_id, outcome], outputs)
    return Tab(blocks, run_id, on_run, [outcome], outputs)
