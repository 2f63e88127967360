"""`batch evaluate calibration`: which of gapscope's numbers predicts the detector's mAP,
across synthetic variants the user has already measured.

Each variant is a published run (real against that variant's synthetic images, measured
with one model at the same levels) in which a detector trained on that variant was
evaluated on the shared real test set (`batch evaluate detections --run RUN`). The job
reads each run's gap metrics per level and re-evaluates each detector from the inputs its
evaluation kept, then lib.analysis.calibration correlates them. Published in a run
derived from the base run (calibration/results.json) for the demo's "Does it matter?" tab.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from lib.analysis.calibration import RESAMPLES, calibrate, findings
from lib.analysis.detection import evaluate
from lib.analysis.gap.records import interval
from lib.runtime.errors import GapscopeError
from lib.runtime.params import REQUIRED, check_minimums, param
from lib.store.names import shown

# the gap metrics correlated with mAP (each run's metrics.json records, by name)
METRICS = ("fd", "fd_inf", "kid", "auc", "precision", "recall", "density", "coverage")
FIGURES = ("AP", "AP50")


def check_figure(figure: str) -> None:
    """--figure names one of FIGURES, or a one-line error."""
    if figure not in FIGURES:
        raise GapscopeError(f"--figure {figure}: choose {' or '.join(FIGURES)}")


@dataclass
class CalibrationJob:
    """A calibration's settings; every field is also an option of `batch evaluate
    calibration`."""

    variants: list[str] = param(
        REQUIRED,
        "A run per synthetic variant (its id; see `batch runs`), repeatable: at least 3.",
        flag="--variant",
    )
    detector: str = param(REQUIRED, "The detector evaluated in each of those runs (its name).")
    figure: str = param("AP", "The accuracy to predict: AP (COCO's .50:.95) or AP50.")
    resamples: int = param(RESAMPLES, "Bootstrap resamples (test images and variants).", minimum=50)
    seed: int = param(0, "Seed of the bootstrap.", minimum=0)
    run_id: str | None = param(None, "The run to publish beside (default: latest).", flag="--run")

    def __post_init__(self):
        check_minimums(self)
        check_figure(self.figure)
        if len(set(self.variants)) < 3:
            raise GapscopeError("--variant: give at least 3 different runs to correlate")


def _runs(store, job: CalibrationJob) -> dict:
    runs = {v: store.open(v) for v in job.variants}
    for run_id, run in runs.items():
        if job.detector not in run.detections:
            raise GapscopeError(
                f"run {run_id} has no detector {shown(job.detector)}: evaluate it there with "
                f"`batch evaluate detections --run {run_id} --predictions {job.detector}=...`"
            )
        if run.metrics is None:
            raise GapscopeError(f"run {run_id} has no gap metrics to correlate")
    models = {r.model_key for r in runs.values()}
    levels = {tuple(r.levels) for r in runs.values()}
    if len(models) > 1 or len(levels) > 1:
        raise GapscopeError(
            "the variants' runs were measured with different models or levels: their gaps "
            "cannot be compared (measure every variant with the same --backbone and levels)"
        )
    return runs


def _same_test_set(inputs: dict) -> None:
    digests = {
        hashlib.sha256(json.dumps(truth, sort_keys=True).encode()).hexdigest()
        for truth, _ in inputs.values()
    }
    if len(digests) > 1:
        raise GapscopeError(
            "the variants' detectors were tested on different test sets: test every one on "
            "the same real images (the same --gt)"
        )


def gaps_of(run) -> dict[str, dict[str, float]]:
    """A run's gap metrics (METRICS) per level: level → metric → value."""
    return {
        level: {m: rec["metrics"][m]["value"] for m in METRICS if m in rec["metrics"]}
        for level, rec in run.metrics["levels"].items()
    }


def point_of(run, figure: dict | None) -> dict:
    """One variant's point for the tab: its detector's figure (a record) and its run's
    metrics per level with their intervals."""
    return {
        "figure": figure,
        "levels": {
            level: {
                m: {"value": r["metrics"][m]["value"], "ci95": interval(r["metrics"][m])}
                for m in METRICS
                if m in r["metrics"]
            }
            for level, r in run.metrics["levels"].items()
        },
    }


def publish(store, base, result: dict, detector: str):
    """The calibration, with its findings, in a run derived from `base`."""
    result.update(detector=detector, findings=findings(result))
    with store.writing(derive_from=base) as writer:
        writer.calibration({**result, "base_run": base.id})
        writer.manifest({**base.manifest, "derived_from": base.id}, schema=base.schema)
    return writer.published


def run_calibration(job: CalibrationJob, store):
    """Correlate, then publish in a run derived from the base run."""
    runs = _runs(store, job)
    inputs = {v: run.detection_inputs(job.detector) for v, run in runs.items()}
    _same_test_set(inputs)
    evaluations = {v: evaluate(*inputs[v]) for v in runs}
    gaps = {v: gaps_of(run) for v, run in runs.items()}
    result = calibrate(gaps, evaluations, job.figure, job.resamples, job.seed)
    result["points"] = {
        v: point_of(run, run.detections[job.detector]["summary"][job.figure])
        for v, run in runs.items()
    }
    return publish(store, store.open(job.run_id), result, job.detector)
