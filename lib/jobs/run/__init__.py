"""One batch run, as stages: scan → objects → model → extract → project → atlas →
neighbours → gap → duplicates → modes → strata → attribution → plots → publish.

`run(config, store)` is what `python -m batch run` calls. Each stage receives its own
parameters (lib.jobs.run.config) and the run's `Context` (the run being written, the
executor, the stage timer); the manifest is assembled from what the stages return.
Everything happens inside `store.writing()`, which publishes the run when every stage
succeeded and removes it on any error, so the previously published run stays served.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from lib.features.pooling import resolve_pooling
from lib.jobs.run.config import RunConfig
from lib.jobs.run.context import Context
from lib.jobs.run.duplicates import find_duplicates
from lib.jobs.run.extract import features, objects_record
from lib.jobs.run.manifest import manifest
from lib.jobs.run.measure import (
    attribute_gap,
    find_neighbours,
    measure_gap,
    project_all,
    projectors,
    save_plots,
    strata_gap,
)
from lib.jobs.run.modes import find_modes
from lib.jobs.run.scan import mixed_sizes, preparation, scan, scan_boxes
from lib.runtime.backend import check_choices, choose_backend
from lib.runtime.executor import open_executor
from lib.runtime.progress import Progress, Silent, Stages
from lib.store.runs import Run, RunStore

__all__ = ["RunConfig", "run"]


def run(config: RunConfig, store: RunStore, progress: Progress | None = None) -> Run:
    """Compute and publish one run. Raises GapscopeError for anything the user can fix."""
    config, store = _checked(config, store)
    started = datetime.now(timezone.utc)
    stages = Stages(progress or Silent())
    with open_executor(config.runtime.dask, stages.progress) as executor:  # closed at the end
        with store.writing() as writer:
            _stages(config, Context(writer, store, executor, stages, config.inputs.seed), started)
    return writer.published  # once every stage succeeded and the run is in place


def _stages(config: RunConfig, ctx: Context, started: datetime) -> None:
    """The run's stages, in order, inside `store.writing()`."""
    prepare = preparation(config.inputs, config.model)
    fallback = mixed_sizes(prepare, config.model, config.boxes)
    checks = projectors(config.projection)  # enough images for each (checked by the scan)
    scanned = scan(config.inputs, prepare, fallback, checks, ctx)
    objects = scan_boxes(config.boxes, scanned, checks, ctx)
    rows = objects.rows if objects else scanned.rows
    runtime, executor = config.runtime, ctx.executor
    executor.settle(
        choose_backend(
            runtime.backend,
            executor.precision(runtime.precision),
            runtime.workers,
            n_images=len(scanned),
        )
    )
    found = features(config.model, config.extraction, config.boxes, scanned, objects, ctx)
    projected = project_all(config.projection, found.vectors, rows, ctx)
    searches = find_neighbours(config.neighbours, found.vectors, ctx)
    metrics, scores = measure_gap(config.gap, found.vectors, rows, ctx)
    table = scanned.table()
    object_table = objects.table(table) if objects else None
    row_table = table if object_table is None else object_table  # a row per image or object
    copies = find_duplicates(config.duplicates, found.vectors, rows, row_table, ctx)
    metrics |= {"duplicates": copies} if copies is not None else {}
    modes = find_modes(config.modes, found.vectors, rows, row_table, ctx)
    metrics |= {"modes": modes} if modes is not None else {}
    if objects:
        metrics["objects"] = strata_gap(config.gap, found.vectors, rows, object_table, ctx)
        ctx.writer.objects(object_table)
    else:
        attribution = attribute_gap(config.photometry, scanned, table, scores, ctx)
        metrics |= {"attribution": attribution} if attribution is not None else {}
    ctx.writer.metrics(metrics)
    save_plots(config.projection, projected.frame, rows, ctx)
    ctx.writer.images(table)
    ctx.writer.manifest(
        manifest(
            config,
            started,
            scanned.record(),
            found.record(),
            projected.record(),
            backend=executor.backend.describe(),
            dask=executor.describe(),
            neighbors=searches,
            counts={d: int(len(r)) for d, r in rows.items()},
            timings_s=dict(ctx.stages),
            objects=objects_record(config.boxes, objects, found.source) if objects else None,
        )
    )


def _checked(config: RunConfig, store: RunStore) -> tuple[RunConfig, RunStore]:
    """Misspelt choices fail before any work; a trained model is found in the results;
    on Dask (workers elsewhere may start in another folder) every path is absolute."""
    projectors(config.projection)
    resolve_pooling(config.extraction.pooling)
    check_choices(config.runtime.backend, config.runtime.precision)
    backbone = config.model.backbone
    if backbone and backbone.startswith("trained:"):
        config = config.replace(backbone=_trained_spec(backbone, store.root))
    if config.runtime.dask:
        store = RunStore(store.root.resolve())
        inputs = config.inputs
        config = config.replace(
            real=Path(inputs.real).resolve(), synthetic=Path(inputs.synthetic).resolve()
        )
    return config, store


def _trained_spec(spec: str, results: Path) -> str:
    """trained:NAME → trained:<results>/models/NAME (a path is kept as given)."""
    name = spec.removeprefix("trained:")
    if "/" in name or Path(name).exists():
        return spec
    return f"trained:{(Path(results) / 'models' / name).resolve()}"
