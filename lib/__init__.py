"""gapscope's Python API: the documented entry points a notebook calls, each delegating to
the library's internals (README, Python API).

    import lib as gapscope

    run = gapscope.open_run("results")          # the latest published run
    gapscope.gap_table(run)                     # one row per level and metric, with intervals
    gapscope.scores(run, "p3")                  # per image: p(synthetic), realism, covered
    gapscope.neighbours(run, "p3", image=0)     # an image's nearest images, nearest first
    gapscope.level_features(run, "p3")          # (N, D) float32, rows = the images table's ids
    gapscope.compare_runs(older, newer)         # every metric of two runs side by side
    gapscope.start_run("real/", "synthetic/", "results")   # compute and publish a run
    gapscope.evaluate_detections("test.json", "preds.json")  # COCO's mAP with intervals

The library is laid out by its data flow: `inputs` (images, boxes, embeddings) →
`features` (the extraction engine and its backbones) → `analysis` (projections,
neighbours, the gap) → `store` (published runs, annotations); `jobs` are what the batch
runner starts and `runtime` where their work runs. Heavy libraries (torch, umap, plotly,
pandas) are imported inside the functions that use them, so that importing this page,
`python -m batch --help` and the demo start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lib.runtime.errors import GapscopeError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from lib.features.engine import Extraction
    from lib.runtime.executor import Executor
    from lib.store.runs import Run


def open_run(results: str | Path = "results", run_id: str | None = None) -> Run:
    """A published run under the results folder `results` (the latest by default)."""
    from lib.store.runs import RunStore

    return RunStore(Path(results)).open(run_id)


def gap_table(run: Run) -> pd.DataFrame:
    """The run's gap, one row per level and metric: value, its 95% interval (lo, hi; NaN
    where the metric has none), and the numbers of real and synthetic rows measured."""
    import pandas as pd

    from lib.analysis.gap.records import interval

    rows = []
    for level, m in (run.metrics or {}).get("levels", {}).items():
        for name, rec in m["metrics"].items():
            ci = interval(rec) or [float("nan")] * 2
            rows.append(
                {
                    "level": level,
                    "metric": name,
                    "value": float(rec["value"]),
                    "lo": ci[0],
                    "hi": ci[1],
                    "n_real": m["n"]["real"],
                    "n_synthetic": m["n"]["synthetic"],
                }
            )
    return pd.DataFrame(
        rows, columns=["level", "metric", "value", "lo", "hi", "n_real", "n_synthetic"]
    )


def scores(run: Run, level: str) -> pd.DataFrame:
    """Per image (or object) at `level`: its row `id`, domain and file, out-of-fold
    p(synthetic), realism (synthetic rows), covered (real rows) and cluster."""
    _check_level(run, level)
    table = run.scores
    ours = table[table["level"] == level].drop(columns="level")
    return ours.merge(_rows(run), on="id", how="left")


def neighbours(run: Run, level: str, image: int) -> pd.DataFrame:
    """The nearest rows to row `image` at `level`, nearest first: id, distance, domain
    and file."""
    import pandas as pd

    _check_level(run, level)
    indices, distances = run.neighbours(level)
    if not 0 <= image < len(indices):
        raise GapscopeError(f"no image {image} in run {run.id}: ids are 0..{len(indices) - 1}")
    found = pd.DataFrame({"id": indices[image].astype(int), "distance": distances[image]})
    return found.merge(_rows(run), on="id", how="left")


def level_features(run: Run, level: str) -> np.ndarray:
    """The run's (N, D) float32 vectors at `level` (memory-mapped), rows = ids."""
    _check_level(run, level)
    return run.features(level)


def compare_runs(a: Run, b: Run) -> pd.DataFrame:
    """Every metric at every level both runs have: each run's value and interval, and the
    change from `a` to `b`."""
    left, right = gap_table(a), gap_table(b)
    both = left.merge(right, on=["level", "metric"], suffixes=("_a", "_b"))
    both["change"] = both["value_b"] - both["value_a"]
    return both


def compare_versions(run_ids: list[str], results: str | Path = "results", **options) -> Run:
    """Each synthetic version's run against the next (oldest first): every gap metric's
    change per level, class and object size with paired intervals, against the real images
    the runs share (lib.jobs.compare; `options` are `batch compare`'s: levels, sample,
    resamples, strata, seed, device). Publishes a derived run and returns it; its
    `.compare` holds the results and `.compare["findings"]` the words."""
    from lib.jobs.compare import CompareJob, run_compare
    from lib.store.runs import RunStore

    return run_compare(CompareJob(**options), list(run_ids), RunStore(Path(results)))


def start_run(
    real: str | Path,
    synthetic: str | Path,
    results: str | Path = "results",
    progress=None,
    **options,
) -> Run:
    """Compute and publish a run of the images (or embeddings) `real` and `synthetic`
    into `results`; `options` are `batch run`'s (lib.jobs.run.RunConfig's fields:
    backbone="resnet18", crop=32, k=8, ...). Returns the published run."""
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    config = RunConfig.of(real=Path(real), synthetic=Path(synthetic), **options)
    return run(config, RunStore(Path(results)), progress)


def extract_images(
    backbone, items, prepare, executor: Executor | None = None, cache=None, allocate=None, **options
) -> Extraction:
    """Every (image set, record) of `items` through `backbone`, pooled per level, by the
    extraction engine; `options` are lib.features.sources.Images' (pooling, batch_size)."""
    from lib.features.engine import extract
    from lib.features.sources import Images
    from lib.runtime.executor import Executor

    source = Images(items, prepare, backbone.levels, **options)
    return extract(source, backbone, executor or Executor(), cache, allocate)


def extract_objects(
    backbone,
    images,
    prepare,
    mode: str = "auto",
    executor: Executor | None = None,
    cache=None,
    allocate=None,
    **options,
) -> Extraction:
    """Every object of `images` (lib.inputs.objects.ObjectImages) through `backbone`, by
    the extraction engine; `options` are lib.features.objects.Objects' (pooler, pooling,
    margin, crop_size, batch_size)."""
    from lib.features.engine import extract
    from lib.features.objects import Objects, RoiPooler, resolve_mode
    from lib.runtime.executor import Executor

    options.setdefault("pooler", RoiPooler.for_backbone(backbone))
    mode = resolve_mode(mode, backbone.levels)
    source = Objects(images, prepare, mode, backbone_levels=backbone.levels, **options)
    return extract(source, backbone, executor or Executor(), cache, allocate)


def evaluate_detections(
    truth: str | Path, predictions: str | Path, resamples: int = 200, seed: int = 0
) -> pd.DataFrame:
    """A detector's COCO figures on a test set (pycocotools' COCOeval, bbox): one row per
    figure (AP, AP50, AP75, per size, AR100, then AP per class as `class:NAME`) with its
    value and the bootstrap interval over test images (lo, hi; NaN where none).
    `truth`: COCO instances JSON; `predictions`: COCO results JSON or a folder of YOLO
    txt files (lib.inputs.detections checks both)."""
    import pandas as pd

    from lib.analysis.detection import bootstrap, evaluate
    from lib.inputs.detections import read_predictions, read_truth

    gt = read_truth(Path(truth))
    evaluation = evaluate(gt, read_predictions(Path(predictions), gt, "predictions"))
    intervals = bootstrap(evaluation, resamples, seed)
    values = {**evaluation.summary}
    values.update({f"class:{c}": f["AP"] for c, f in evaluation.per_class.items()})
    rows = []
    for figure, value in values.items():
        lo, hi = intervals.get(figure) or (float("nan"), float("nan"))
        rows.append({"figure": figure, "value": value, "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def _check_level(run: Run, level: str) -> None:
    if level not in run.levels:
        raise GapscopeError(f"run {run.id} has no level {level!r} ({', '.join(run.levels)})")


def _rows(run: Run) -> pd.DataFrame:
    """What names a row: its domain and file (objects: their category and image)."""
    table = run.objects if run.objects is not None else run.images
    keep = [c for c in ("id", "domain", "relpath", "category", "image_id") if c in table]
    return table[keep]


__all__ = [
    "GapscopeError",
    "compare_runs",
    "compare_versions",
    "evaluate_detections",
    "extract_images",
    "extract_objects",
    "level_features",
    "gap_table",
    "neighbours",
    "open_run",
    "scores",
    "start_run",
]
