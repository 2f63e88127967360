"""The stages that read the vectors: projections and the atlas, neighbours, the gap (per
level, per class and size, attributed to photometry) and the static plots."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lib.analysis.atlas import AtlasProjector, middle_level
from lib.analysis.attribution import attribute
from lib.analysis.gap import NOTES, GapParams, level_gap
from lib.analysis.gap.records import SCHEMA
from lib.analysis.gap.strata import gap_by
from lib.analysis.neighbours import knn_report
from lib.analysis.plots import save_overlap_png
from lib.analysis.reduce import UMAPParams, check_enough_points, create_projector
from lib.inputs.images import sample_indices
from lib.jobs.run.config import AttributionParams, NeighbourParams, ProjectParams
from lib.jobs.run.context import DOMAINS, Context
from lib.jobs.run.scan import Scanned
from lib.runtime.errors import GapscopeError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


# ---- projections ------------------------------------------------------------------------


@dataclass
class Projected:
    frame: pd.DataFrame  # the projections table's rows
    reports: dict  # each fit's report (placements, samples)

    def record(self) -> dict:
        return {"projections": self.reports}


def projectors(params: ProjectParams, implementation: str = "cpu", blocks=None) -> list:
    """The run's projectors, on cuML or the CPU (`Backend.projection`), placing points
    through the block map `blocks` (the executor's: here, or on Dask's workers)."""
    if not params.projections:
        raise GapscopeError("name at least one projection (--projection umap)")
    by_name = {"umap": params.umap, "tsne": params.tsne}
    return [create_projector(m, by_name.get(m), implementation, blocks) for m in params.projections]


def project_all(params: ProjectParams, vectors: dict, rows: dict, ctx: Context) -> Projected:
    """Every projection at every level, then the atlas; written as the projections table."""
    import pandas as pd

    backend, executor = ctx.executor.backend, ctx.executor
    with ctx.stages("project", ", ".join(params.projections)):
        mine = projectors(params, backend.projection, executor.blocks)
        frame, reports = project(vectors, rows, mine, executor.progress)
    n = sum(len(r) for r in rows.values())
    level = atlas_level(params.atlas_level, list(vectors), n, params.umap)
    if level is not None:
        with ctx.stages("atlas", f"2D UMAP of both domains at {level}"):
            atlas = [AtlasProjector(params.umap, backend.projection, executor.blocks)]
            layout, report = project({level: vectors[level]}, rows, atlas, executor.progress)
            frame, reports = pd.concat([frame, layout], ignore_index=True), reports | report
    ctx.writer.projections(frame)
    return Projected(frame, reports)


def atlas_level(choice: str, levels: list[str], n: int, umap: UMAPParams) -> str | None:
    """The level the atlas lays out ("auto": the middle one), or None: "none", or too few
    images for a UMAP (the run goes on without an atlas)."""
    if choice == "none":
        return None
    if choice != "auto" and choice not in levels:
        raise GapscopeError(
            f"--atlas-level {choice}: no such level (this model's: {', '.join(levels)}, "
            "or auto, or none)"
        )
    try:
        check_enough_points(n, umap, "both domains")
    except GapscopeError as exc:
        log.warning("no atlas: %s", exc)
        return None
    return middle_level(levels) if choice == "auto" else choice


def project(vectors, rows: dict[str, np.ndarray], projectors: list, progress):
    """Every projector at every level: fitted on one domain with the other mapped in (both
    ways), or both domains embedded together (a joint projector). Returns the rows of
    the projections table and each fit's report."""
    import pandas as pd

    fits = [(p, fit_on) for p in projectors for fit_on in _fit_domains(p)]
    progress.start("project", len(fits) * len(vectors))
    frames, reports = [], {}
    for level, X in vectors.items():
        for projector, fit_on in fits:
            frames += _project_one(X, rows, projector, fit_on, level)
            if hasattr(projector, "report_"):
                reports[f"{projector.name} {level} fit on {fit_on}"] = projector.report_
            progress.advance("project")
    return pd.concat(frames, ignore_index=True), reports


def _fit_domains(projector) -> tuple[str, ...]:
    return ("both",) if projector.joint else DOMAINS


def _project_one(X: np.ndarray, rows, projector, fit_on: str, level: str) -> list:
    if fit_on == "both":
        both = np.concatenate([rows[d] for d in DOMAINS])
        consecutive = np.array_equal(both, np.arange(both[0], both[-1] + 1))
        # a view of the feature file, not a copy (2 GB at 1M + 1M × 256): its placements
        # can then run on Dask workers, which read the rows from the file
        fitted = projector.fit(X[span(both)] if consecutive else X[both]).embedding_
        return [_projection_frame(both, level, projector, "both", fitted)]
    other = next(d for d in DOMAINS if d != fit_on)
    fitted = projector.fit(X[span(rows[fit_on])]).embedding_
    mapped = projector.transform(X[span(rows[other])])
    return [
        _projection_frame(rows[fit_on], level, projector, fit_on, fitted),
        _projection_frame(rows[other], level, projector, fit_on, mapped),
    ]


def span(rows: np.ndarray) -> slice:
    """A domain's rows (consecutive) as a slice: a view of memory-mapped features, not a
    copy."""
    return slice(int(rows[0]), int(rows[-1]) + 1)


def _projection_frame(rows: np.ndarray, level: str, projector, fit_on: str, coords):
    """Rows of the projections table; a 2D embedding (t-SNE) has z = NaN."""
    import pandas as pd

    return pd.DataFrame(
        {
            "id": rows.astype(np.int32),
            "level": level,
            "method": projector.name,
            "fit_on": fit_on,
            "x": coords[:, 0],
            "y": coords[:, 1],
            "z": coords[:, 2] if projector.dimensions > 2 else np.float32(np.nan),
        }
    )


def save_plots(params: ProjectParams, frame, rows: dict[str, np.ndarray], ctx: Context) -> None:
    """The original tool's static overlap PNGs, for the projectors that have them."""
    if not params.plots:
        return
    with ctx.stages("plots"):
        for projector in projectors(params):
            if not projector.plots:
                continue
            ours = frame[frame["method"] == projector.name]
            for (level, fit_on), group in ours.groupby(["level", "fit_on"], sort=False):
                xyz = group.set_index("id")[["x", "y", "z"]]
                order = dict.fromkeys(d for d in (fit_on, *DOMAINS) if d in rows)  # fitted first
                coords = {domain: xyz.loc[rows[domain]].to_numpy() for domain in order}
                out = ctx.writer.overlap_plot(projector.name, level, fit_on)
                save_overlap_png(coords, level, fit_on, out, projector.label)


# ---- neighbours -------------------------------------------------------------------------


def find_neighbours(params: NeighbourParams, vectors, ctx: Context) -> dict:
    """Each level's neighbour table; returns what was done per level (engine, and the
    measured recall@k of an approximate search). On a Dask cluster an approximate
    search's queries run on the workers, and a GPU's exact search on GPU workers (cuML's
    multi-GPU search) when the run is on cuML."""
    executor = ctx.executor
    backend = executor.backend
    with ctx.stages("neighbors", f"k={params.k}, {backend.knn_engine}") as stage:
        search, exact = executor.search(ctx.writer.dir), executor.exact_search()
        reports = {}
        for level, X in vectors.items():
            idx, dist, reports[level] = knn_report(
                X,
                params.k,
                params.metric,
                backend.device,
                engine=backend.knn_engine,
                seed=ctx.seed,
                search=search,
                exact=exact,
            )
            ctx.writer.neighbours(level, idx, dist)
        recalls = [f"{lv} {r['recall_at_k']:.3f}" for lv, r in reports.items() if not r["exact"]]
        if recalls:
            stage.summary = f"approximate; recall@k on the probe: {', '.join(recalls)}"
    return reports


# ---- the gap ----------------------------------------------------------------------------


def measure_gap(params: GapParams, vectors, rows, ctx: Context):
    """The gap metrics and the per-image scores table, level by level; writes the scores
    and returns (the metrics, to which strata and attribution are added, the scores). The
    scores of images outside the gap sample go through the executor's block map."""
    import pandas as pd

    executor = ctx.executor
    with ctx.stages("gap", f"{len(vectors)} levels"):
        levels, frames = {}, []
        executor.progress.start("gap", len(vectors))
        for level, X in vectors.items():
            result = level_gap(
                X[span(rows["real"])],
                X[span(rows["synthetic"])],
                params,
                executor.backend,
                executor.blocks,
            )
            levels[level] = result.metrics
            frames.append(_scores_frame(result, rows, level))
            executor.progress.advance("gap")
        scores = pd.concat(frames, ignore_index=True)
        ctx.writer.scores(scores)
    metrics = {"schema": SCHEMA, "params": params.as_dict(), "notes": NOTES, "levels": levels}
    return metrics, scores


def _scores_frame(result, rows, level: str):
    """One row per image: out-of-fold p(synthetic), realism (synthetic images), covered
    (real images) and cluster, in the order of the images table's ids."""
    import pandas as pd

    real, synthetic = rows["real"], rows["synthetic"]
    n = len(real) + len(synthetic)
    frame = pd.DataFrame({"id": np.arange(n, dtype=np.int32), "level": level})
    frame["p_synthetic"] = np.nan
    frame.loc[np.r_[real, synthetic], "p_synthetic"] = result.p_synthetic
    frame["realism"] = np.nan
    frame.loc[synthetic, "realism"] = result.realism
    frame["covered"] = pd.array([pd.NA] * n, dtype="boolean")
    frame.loc[real, "covered"] = result.covered
    frame["cluster"] = np.int32(-1)
    frame.loc[np.r_[real, synthetic], "cluster"] = result.clusters
    return frame


def strata_gap(params: GapParams, vectors, rows, objects, ctx: Context) -> dict:
    """lib.analysis.gap.strata per class and per COCO size stratum (and all objects: the
    run's levels); `objects` is the objects table."""
    real, synthetic, device = rows["real"], rows["synthetic"], ctx.executor.backend.device
    with ctx.stages("strata", "gap per class and per object size"):
        return {
            "by_class": gap_by(
                vectors, real, synthetic, objects["category"].to_numpy(), params, device
            ),
            "by_size": gap_by(vectors, real, synthetic, objects["size"].to_numpy(), params, device),
        }


def attribute_gap(
    params: AttributionParams, scanned: Scanned, table, scores, ctx: Context
) -> dict | None:
    """lib.analysis.attribution on a seeded sample of the images with files, against each
    level's out-of-fold p(synthetic); None when there is nothing to look at."""
    sample = _attribution_sample(params, scanned, table, ctx.seed)
    if sample is None:
        return None
    paths, rows, synthetic = sample
    with ctx.stages("attribution", f"{len(paths)} images' photometry"):
        p = {
            level: part.set_index("id")["p_synthetic"].reindex(rows).to_numpy()
            for level, part in scores.groupby("level", sort=False)
        }
        return attribute(paths, synthetic, p, seed=ctx.seed)


def _attribution_sample(params: AttributionParams, scanned: Scanned, table, seed: int):
    """(paths, their rows, synthetic?) of a seeded sample of at most `params.attribution`
    images per domain with files (`table`: the images table); None when there are too
    few to look at."""
    if not params.attribution or scanned.embeddings:
        return None
    paths, picked = table["path"].to_numpy(), []
    for rows in scanned.rows.values():
        with_file = rows[paths[rows] != ""]
        picked.append(with_file[sample_indices(len(with_file), params.attribution, seed)])
    if min(len(p) for p in picked) < 10:  # too few for an AUC with an interval
        return None
    rows = np.concatenate(picked)
    return paths[rows].tolist(), rows, table["domain"].to_numpy()[rows] == "synthetic"
