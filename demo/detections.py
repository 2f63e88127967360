"""The Detections tab: the detectors evaluated on a run's real test images
(lib.jobs.detections): COCO's figures with intervals, per class beside that class's gap,
per size, whether the objects a detector misses are the ones no synthetic object covers,
and the objects themselves by outcome. Plain functions of the run, then the tab.
"""

from __future__ import annotations

from functools import partial

import gradio as gr

from demo import markup
from demo.runs import Tab, caption, open_id, picture, with_ci
from lib.analysis.detection import OBJECT_OUTCOMES
from lib.store.runs import Run, RunStore

HOW_TO = (
    "This run has no detector evaluated on its test images. Make one with `python -m batch "
    "evaluate detections --gt TEST.json --predictions NAME=PRED.json` (see the README, "
    "Detections); it is published as a new run."
)
CLASS_HEADERS = ["class", "objects", "AP", "AP50", "AP75", "FD", "AUC", "coverage"]
SIZE_HEADERS = ["size", "AP", "FD", "AUC", "coverage"]
COVERAGE_HEADERS = ["level", "missed: covered", "detected: covered", "difference", "reads"]
SHOWN = 24  # objects in the gallery at once


def _gap(entry: dict | None, level: str) -> list[str]:
    """A stratum's FD, AUC and coverage at `level` (lib.analysis.gap.strata), or dashes."""
    rec = (entry or {}).get("levels", {}).get(level)
    if not rec:
        return ["–", "–", "–"]
    return [with_ci(rec["fd"], ".3g"), with_ci(rec["auc"], ".2f"), with_ci(rec["coverage"])]


def _strata(run: Run) -> dict:
    return ((run.metrics or {}).get("objects")) or {"by_class": {}, "by_size": {}}


def class_table(run: Run, name: str, level: str) -> list[list]:
    """Per class: its objects, AP (interval over test images), AP50, AP75, and the class's
    gap at `level` among the run's objects (when the run has that class)."""
    results, strata = run.detections[name], _strata(run)["by_class"]
    return [
        [
            cls,  # a Dataframe cell shows text as text
            figures["objects"],
            with_ci(figures["AP"]),
            with_ci(figures["AP50"]),
            with_ci(figures["AP75"]),
            *_gap(strata.get(cls), level),
        ]
        for cls, figures in results["per_class"].items()
    ]


def size_table(run: Run, name: str, level: str) -> list[list]:
    results, strata = run.detections[name], _strata(run)["by_size"]
    return [
        [size, with_ci(results["summary"].get(f"AP_{size}")), *_gap(strata.get(size), level)]
        for size in ("small", "medium", "large")
    ]


def coverage_table(results: dict) -> list[list]:
    """Per level: how often a synthetic object covers the real objects missed and those
    detected, and the difference, in words."""
    rows = []
    for level, r in results.get("coverage", {}).get("levels", {}).items():
        d = r["difference"]
        if d["ci95"] is None:
            reads = "too few objects on one side"
        elif d["ci95"][1] < 0:
            reads = "the missed are less often covered"
        elif d["ci95"][0] > 0:
            reads = "the missed are more often covered"
        else:
            reads = "no difference beyond noise"
        rows.append(
            [
                level,
                f"{with_ci(r['missed'])} of {r['missed']['n']}",
                f"{with_ci(r['detected'])} of {r['detected']['n']}",
                with_ci(d),
                reads,
            ]
        )
    return rows


def summary(name: str, results: dict) -> str:
    lines = [f"**{markup.text(name)}** · base run {markup.code(results['base_run'])}", ""]
    lines += [f"- {markup.text(line.strip())}" for line in results.get("findings", [])]
    joined = results.get("coverage")
    if joined is not None:
        lines.append(
            f"- {joined['joined']} of {joined['of']} test objects are objects of this run "
            "(same image file, box IoU ≥ 0.9): their coverage is compared below"
        )
    else:
        lines.append("- the run has no objects to join the test objects to")
    return "\n".join(lines)


def objects_shown(run: Run, name: str, outcome: str) -> list[tuple]:
    """The run's real objects that met `outcome`, as (thumbnail, caption)."""
    table = run.detection_table(name, "objects")
    if "row" not in table:
        return []
    chosen = table[(table["outcome"] == outcome) & (table["row"] >= 0)].head(SHOWN)
    return [
        (
            picture(run.thumb(int(r.row))),
            f"{caption(run, int(r.row))} · {r.outcome} · IoU {r.iou:.2f}",
        )
        for r in chosen.itertuples()
    ]


# ---- the tab ----------------------------------------------------------------------------


def show_detector(store: RunStore, run_id: str, name: str, level: str, outcome: str):
    run = open_id(store, run_id)
    if name not in run.detections:
        raise markup.error(f"this run has no detector {name!r}: pick one from the list")
    results = run.detections[name]
    return (
        summary(name, results),
        class_table(run, name, level),
        size_table(run, name, level),
        coverage_table(results),
        objects_shown(run, name, outcome),
    )


def on_run(store: RunStore, run_id: str, outcome: str):
    run = open_id(store, run_id)
    names = list(run.detections)
    levels = gr.update(choices=run.levels, value=run.levels[0])
    if not names:
        empty = gr.update(choices=[], value=None)
        return run.id, empty, levels, HOW_TO, [], [], [], []
    return (
        run.id,
        gr.update(choices=names, value=names[0]),
        levels,
        *show_detector(store, run.id, names[0], run.levels[0], outcome),
    )


def build(store: RunStore, first: Run) -> Tab:
    with gr.Blocks() as blocks:
        run_id = gr.Textbox(first.id, visible=False)
        with gr.Row():
            detector = gr.Dropdown(
                label="Detector", allow_custom_value=True, elem_id="detections_detector"
            )
            level = gr.Dropdown(
                label="Gap at level", allow_custom_value=True, elem_id="detections_level"
            )
        note = gr.Markdown(elem_id="detections_note")
        classes = gr.Dataframe(
            headers=CLASS_HEADERS,
            label="Per class: AP on the test images beside the class's gap (95% intervals)",
            elem_id="detections_classes",
        )
        sizes = gr.Dataframe(
            headers=SIZE_HEADERS, label="Per size (COCO's strata)", elem_id="detections_sizes"
        )
        coverage = gr.Dataframe(
            headers=COVERAGE_HEADERS,
            label="Are the real objects it misses the ones no synthetic object covers?",
            elem_id="detections_coverage",
        )
        outcome = gr.Radio(list(OBJECT_OUTCOMES), value="missed", label="Show test objects")
        gallery = gr.Gallery(
            label="Test objects of this run", columns=8, height=360, elem_id="detections_objects"
        )
        shown = [note, classes, sizes, coverage, gallery]
        gr.on(
            [detector.input, level.input, outcome.input],
            partial(show_detector, store),
            [run_id, detector, level, outcome],
            shown,
        )
        outputs = [run_id, detector, level, *shown]
        blocks.load(partial(on_run, store), [run_id, outcome], outputs)
    return Tab(blocks, run_id, on_run, [outcome], outputs)
