"""`batch evaluate detections`: how well each detector finds the test set's objects, and
whether the real objects it misses are the ones no synthetic object covers.

Per detector: COCO's figures with a bootstrap interval over test images, per class and
per size (lib.analysis.detection), the per-object and per-detection outcomes. When the
test images are the real domain of a run with objects, each ground-truth object is
joined to its row in the run (same image file, box IoU ≥ JOIN_IOU) and, per level, the
share of missed and of detected objects that a synthetic object covers is compared.
Published in a run derived from that run (detections/<name>/).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.analysis.detection import (
    DETECTION_OUTCOMES,
    OBJECT_OUTCOMES,
    RESAMPLES,
    bootstrap,
    box_ious,
    evaluate,
    outcomes,
)
from lib.analysis.gap.records import record, wilson
from lib.inputs.detections import file_part, read_predictions, read_truth
from lib.runtime.errors import GapscopeError
from lib.runtime.params import REQUIRED, check_minimums, param
from lib.store.names import checked_name, shown

JOIN_IOU = 0.9  # a ground-truth box and a run's object box are one object above this
EVALUATOR = "pycocotools COCOeval (bbox); bias-corrected normal bootstrap over test images"


@dataclass
class DetectionsJob:
    """A detection evaluation's settings; every field is also an option of `batch
    evaluate detections`."""

    truth: Path = param(REQUIRED, "COCO instances JSON of the test images.", flag="--gt")
    predictions: list[str] = param(
        REQUIRED,
        "NAME=PATH: a detector's predictions on those images, a COCO results JSON or a "
        "folder of YOLO txt files with confidences; repeatable.",
        flag="--predictions",
    )
    score: float = param(
        0.5, "Detections scoring at least this count in the per-object outcomes.", minimum=0
    )
    resamples: int = param(RESAMPLES, "Bootstrap resamples of the test images.", minimum=20)
    seed: int = param(0, "Seed of the bootstrap.", minimum=0)
    run_id: str | None = param(
        None,
        "The run to publish beside (default: latest); its real objects are joined.",
        flag="--run",
    )

    def __post_init__(self):
        check_minimums(self)

    def detectors(self) -> dict[str, Path]:
        """NAME → PATH of each --predictions, names checked (they name folders)."""
        out: dict[str, Path] = {}
        for text in self.predictions:
            name, sep, path = str(text).partition("=")
            if not sep or not path:
                raise GapscopeError(f"--predictions {shown(text)}: write it as NAME=PATH")
            name = checked_name(name, "--predictions name")
            if name in out:
                raise GapscopeError(f"--predictions: the name {shown(name)} is given twice")
            out[name] = Path(path)
        if not out:
            raise GapscopeError("--predictions: give at least one NAME=PATH")
        return out


def evaluate_detector(truth: dict, found: list[dict], job: DetectionsJob, run=None):
    """(results, {"objects": table, "detections": table}) for one detector."""
    evaluation = evaluate(truth, found)
    intervals = bootstrap(evaluation, job.resamples, job.seed)
    objects, detections = outcomes(evaluation, job.score)
    n_images = len(truth["images"])
    summary = {
        figure: record(value, intervals.get(figure), n_images) if value >= 0 else None
        for figure, value in evaluation.summary.items()
    }
    per_class = {
        name: {
            **{
                figure: record(v, intervals.get(f"class:{name}") if figure == "AP" else None)
                if v >= 0
                else None
                for figure, v in figures.items()
                if figure != "n"
            },
            "objects": figures["n"],
        }
        for name, figures in evaluation.per_class.items()
    }
    results = {
        "n": {"images": n_images, "objects": len(objects), "detections": len(found)},
        "summary": summary,
        "per_class": per_class,
        "score": job.score,
        "outcomes": {
            "objects": _counts(objects["outcome"], OBJECT_OUTCOMES),
            "detections": _counts(detections["outcome"], DETECTION_OUTCOMES),
        },
        "evaluator": EVALUATOR,
    }
    if run is not None and run.objects is not None:
        objects["row"] = join_rows(run, objects)
        results["coverage"] = missed_against_detected(run, objects)
    return results, {"objects": objects, "detections": detections}


def _counts(column, kinds) -> dict[str, int]:
    values = column.value_counts().to_dict()
    return {k: int(values.get(k, 0)) for k in kinds}


def join_rows(run, objects) -> np.ndarray:
    """Each ground-truth object's row among the run's real objects (-1: none), matched
    by image file name and box IoU ≥ JOIN_IOU (the run's boxes are clipped to the image;
    the file's may not be)."""
    rows = run.objects
    real = rows[rows["domain"] == "real"]
    by_image: dict[str, list] = {}
    for row, rel, *box in real[["id", "relpath", "x0", "y0", "x1", "y1"]].itertuples(index=False):
        by_image.setdefault(file_part(rel).name, []).append((row, _xywh(box)))
    out = np.full(len(objects), -1, dtype=np.int64)
    columns = objects[["file_name", "x0", "y0", "x1", "y1"]].itertuples(index=False)
    for i, (file_name, *box) in enumerate(columns):
        candidates = by_image.get(file_part(file_name).name, [])
        if candidates:
            overlaps = box_ious([_xywh(box)], [b for _, b in candidates])[0]
            best = int(np.argmax(overlaps))
            if overlaps[best] >= JOIN_IOU:
                out[i] = candidates[best][0]
    return out


def _xywh(corners) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in corners)
    return [x0, y0, x1 - x0, y1 - y0]


def missed_against_detected(run, objects) -> dict:
    """Per level: the share of the joined real objects covered by some synthetic object
    (the run's `covered`), among those missed (missed or poorly localised) and those
    detected, Wilson intervals, and their difference with Newcombe's interval."""
    joined = objects[objects["row"] >= 0]
    missed = (joined["outcome"] != "detected").to_numpy()
    scores = run.scores
    out = {"joined": int(len(joined)), "of": int(len(objects)), "levels": {}}
    if scores is None or len(joined) == 0:
        return out
    for level, part in scores.groupby("level", sort=False):
        covered = part.set_index("id")["covered"].reindex(joined["row"].to_numpy())
        known = covered.notna().to_numpy()
        hit = covered.fillna(False).astype(bool).to_numpy()
        shares = {}
        for name, mask in (("missed", missed & known), ("detected", ~missed & known)):
            n, k = int(mask.sum()), int(hit[mask].sum())
            shares[name] = record(k / n if n else 0.0, wilson(k, n), n)
        out["levels"][str(level)] = {**shares, "difference": _newcombe(shares)}
    return out


def _newcombe(shares: dict) -> dict:
    """missed − detected, with Newcombe's hybrid score interval from the two Wilsons."""
    a, b = shares["missed"], shares["detected"]
    if not a["n"] or not b["n"]:
        return record(0.0, None, 0)
    d = a["value"] - b["value"]
    (la, ua), (lb, ub) = a["ci95"], b["ci95"]
    lo = d - np.hypot(a["value"] - la, ub - b["value"])
    hi = d + np.hypot(ua - a["value"], b["value"] - lb)
    return record(d, [lo, hi], a["n"] + b["n"])


def findings(name: str, results: dict) -> list[str]:
    """The evaluation in words, as the CLI and the demo say it."""
    s = results["summary"]

    def figure(key: str) -> str:
        r = s.get(key)
        if r is None:
            return f"{key} —"
        ci = r["ci95"]
        return f"{key} {r['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    n = results["n"]
    lines = [
        f"{name}: {figure('AP')}, {figure('AP50')}, {figure('AP75')} on {n['images']} test "
        f"images ({n['objects']} objects, {n['detections']} detections)",
        "  by size: " + ", ".join(figure(f"AP_{a}") for a in ("small", "medium", "large")),
    ]
    o = results["outcomes"]["objects"]
    lines.append(
        f"  at score ≥ {results['score']:g}: {o['detected']} objects detected, "
        f"{o['poorly localised']} poorly localised, {o['missed']} missed"
    )
    for level, r in results.get("coverage", {}).get("levels", {}).items():
        d = r["difference"]
        if d["ci95"] is None:
            continue
        m, t = r["missed"], r["detected"]
        verdict = (
            "the missed objects are less often covered by synthetic ones"
            if d["ci95"][1] < 0
            else "the missed objects are more often covered"
            if d["ci95"][0] > 0
            else "no difference beyond noise"
        )
        lines.append(
            f"  {level}: covered by a synthetic object: missed {100 * m['value']:.0f} % "
            f"(of {m['n']}), detected {100 * t['value']:.0f} % (of {t['n']}); {verdict} "
            f"({100 * d['value']:+.0f} points [{100 * d['ci95'][0]:+.0f}, "
            f"{100 * d['ci95'][1]:+.0f}])"
        )
    return lines


def run_detections(job: DetectionsJob, store):
    """Evaluate every detector, then publish them in a run derived from the base run
    (other detectors evaluated there before are kept; one of the same name replaced)."""
    truth = read_truth(Path(job.truth))
    found = {name: read_predictions(path, truth, name) for name, path in job.detectors().items()}
    base = store.open(job.run_id)  # every file checked first: a bad one costs no work
    evaluated = {name: evaluate_detector(truth, f, job, base) for name, f in found.items()}
    with store.writing(derive_from=base) as writer:
        for name, (results, tables) in evaluated.items():
            results = {**results, "base_run": base.id, "findings": findings(name, results)}
            writer.detections(name, results, tables, truth, found[name])
        writer.manifest({**base.manifest, "derived_from": base.id}, schema=base.schema)
    return writer.published
