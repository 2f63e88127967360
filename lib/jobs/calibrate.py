"""`batch train calibrate`: the whole loop in one command. For each synthetic variant (a
generator version, a what-if strength written out, a pruned subset: a folder with its
boxes) measure its gap against the real images in its own run, train a detector on it
(`batch train detector`), test every detector on the same held-out real images, and
correlate each gap metric at each level with the detectors' AP
(lib.analysis.calibration). With --real-share, each variant's detector is trained on
that share of the real images as well (real + synthetic at a stated ratio).

The runs are `batch run`'s, object runs of the given boxes (each box cropped with its
margin and run as an image through --backbone: the detector's own body is not the
measuring model, so any registered backbone can be). Published in a run derived from
the last variant's run, as `batch evaluate calibration` publishes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from lib.analysis.calibration import RESAMPLES, calibrate
from lib.analysis.detection import evaluate
from lib.analysis.gap.records import record
from lib.jobs.calibration import check_figure, gaps_of, point_of, publish
from lib.jobs.detector import HEADS, DetectorJob, tested_on, train_detector
from lib.jobs.training import Schedule
from lib.runtime.errors import GapscopeError
from lib.runtime.params import REQUIRED, check_minimums, param
from lib.store.names import checked_name, shown


@dataclass
class CalibrateJob:
    """The loop's settings; every field is also an option of `batch train calibrate`."""

    name: str = param(REQUIRED, "The calibration's name: its detectors are models/NAME-VARIANT.")
    real: Path = param(REQUIRED, "The real images every variant is measured against.")
    real_boxes: Path = param(REQUIRED, "Their boxes (COCO .json, YOLO or VOC folder).")
    variants: list[str] = param(
        REQUIRED,
        "NAME=FOLDER: a synthetic variant's images, repeatable (at least 3).",
        flag="--variant",
    )
    variant_boxes: list[Path] = param(
        REQUIRED,
        "Each variant's boxes, one per --variant, in the same order.",
        flag="--variant-boxes",
    )
    test: Path = param(REQUIRED, "Held-out real test images, the same for every detector.")
    test_boxes: Path = param(REQUIRED, "Their boxes.")
    real_share: float = param(
        0.0,
        "Also train each detector on this share of the real images (0: synthetic only).",
        minimum=0,
    )
    backbone: str | None = param(None, "The model the gap is measured with (see `backbones`).")
    head: str = param("fcos", f"The detectors: {', '.join(HEADS)}.")
    figure: str = param("AP", "The accuracy to predict: AP or AP50.")
    resamples: int = param(RESAMPLES, "Bootstrap resamples of the calibration.", minimum=50)
    schedule: Schedule = field(default_factory=Schedule)

    def __post_init__(self):
        check_minimums(self)
        check_figure(self.figure)
        if self.real_share > 1:
            raise GapscopeError(f"--real-share {self.real_share}: give a share of at most 1")
        checked_name(self.name, "--name")

    def folders(self) -> dict[str, tuple[Path, Path]]:
        """NAME → (folder, boxes) of each variant, names checked (they name models)."""
        if len(self.variants) != len(self.variant_boxes):
            raise GapscopeError(
                f"--variant given {len(self.variants)} times and --variant-boxes "
                f"{len(self.variant_boxes)}: give one boxes file per variant, in order"
            )
        out: dict[str, tuple[Path, Path]] = {}
        for text, boxes in zip(self.variants, self.variant_boxes, strict=True):
            name, sep, folder = str(text).partition("=")
            if not sep or not folder:
                raise GapscopeError(f"--variant {shown(text)}: write it as NAME=FOLDER")
            if checked_name(name, "--variant name") in out:
                raise GapscopeError(f"--variant: the name {shown(name)} is given twice")
            out[name] = (Path(folder), Path(boxes))
        if len(out) < 3:
            raise GapscopeError("--variant: give at least 3 variants to correlate")
        return out


def _measure(job: CalibrateJob, folder: Path, boxes: Path, store, seed: int):
    """The variant's gap against the real images: a published object run."""
    from lib.jobs.run import RunConfig, run

    config = RunConfig.of(
        real=job.real,
        synthetic=folder,
        real_boxes=job.real_boxes,
        synthetic_boxes=boxes,
        backbone=job.backbone,
        objects="crop",
        projections=("pca",),
        atlas_level="none",
        plots=False,
        attribution=0,
        seed=seed,
    )
    return run(config, store)


def _detector(job: CalibrateJob, variant: str, folder: Path, boxes: Path, store):
    """(the detector's folder, its evaluation on the test images) for one variant."""
    train, train_boxes, shares = [folder], [boxes], []
    if job.real_share > 0:
        train, train_boxes = [job.real, folder], [job.real_boxes, boxes]
        shares = [job.real_share, 1.0]
    detector = DetectorJob(
        name=f"{job.name}-{variant}",
        train=train,
        train_boxes=train_boxes,
        test=job.test,
        test_boxes=job.test_boxes,
        train_share=shares,
        head=job.head,
        schedule=replace(job.schedule),
    )
    out = train_detector(detector, store.root)
    return out, evaluate(*tested_on(out))


def run_calibrate(job: CalibrateJob, store, progress=None):
    """Measure, train and test each variant, correlate, publish; the published run."""
    folders = job.folders()
    runs, evaluations, figures = {}, {}, {}
    for variant, (folder, boxes) in folders.items():
        if progress:
            progress(f"{variant}: measuring its gap")
        runs[variant] = _measure(job, folder, boxes, store, job.schedule.seed)
        if progress:
            progress(f"{variant}: training its detector")
        out, evaluations[variant] = _detector(job, variant, folder, boxes, store)
        test = json.loads((out / "test.json").read_text())
        value = test["summary"][job.figure]
        figures[variant] = record(value, test["ci95"].get(job.figure), test["test_images"])
    gaps = {v: gaps_of(run) for v, run in runs.items()}
    result = calibrate(gaps, evaluations, job.figure, job.resamples, job.schedule.seed)
    result["points"] = {v: point_of(runs[v], figures[v]) for v in folders}
    result["runs"] = {v: run.id for v, run in runs.items()}
    base = runs[list(folders)[-1]]
    return publish(store, base, result, f"{job.head} on each variant")
