"""One batch run, as stages: scan → extract → project → neighbours → gap → plots → publish.

`run(config, store)` is what `python -m batch run` calls. Each stage is a function with
typed inputs and outputs; `run` chains them inside `store.writing()`, which publishes the
run when every stage succeeded and removes it on any error, so the previously published
run stays served.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np

from lib.errors import GapscopeError
from lib.gap import GapParams
from lib.images import ImageRecord, ImageSet, Prepare, check_common_size, open_images
from lib.params import REQUIRED, check_minimums, param
from lib.progress import Progress, Silent, Stages
from lib.reduce import TSNEParams, UMAPParams
from lib.store import Run, RunStore, RunWriter, thumb_name

log = logging.getLogger(__name__)

DOMAINS = ("real", "synthetic")


@dataclass
class RunConfig:
    """Everything a run depends on; written to the manifest as given. Fields made with
    `param` are also `batch run`'s options (batch.options), with these defaults."""

    real: Path = param(REQUIRED, "Folder of real images, or a .npy (N,H,W,3).")
    synthetic: Path = param(REQUIRED, "Folder of synthetic images, or a .npy.")
    backbone: str | None = param(
        None,
        "ARCH[:CHECKPOINT][@CONFIG] (see `backbones`). Default: resnet50-fpn with "
        "--checkpoint, detectron2 with --detectron2-config, else efficientnet-lite0 with its "
        "packaged ImageNet weights.",
    )
    checkpoint: Path | None = param(None, "State dict for the backbone (.pth, weights_only).")
    detectron2_config: Path | None = param(
        None,
        "A detectron2 config .yaml (with _BASE_ files beside it): that detector's FPN "
        "levels p2..p6, with --checkpoint model_final.pth or a model-zoo .pkl.",
    )
    random_weights: bool = param(
        False, "Use untrained weights on purpose (said loudly everywhere)."
    )
    pooling: str = param("gap", "gap | channel-sum | channel-mean")
    crop: int | None = param(None, "Centre crop N×N, padding smaller images.")
    resize: int | None = param(None, "Shorter side to N, then centre crop N×N.")
    sample: int | None = param(None, "Use a random N images per domain.", minimum=1)
    seed: int = param(0, "Seed for --sample.")
    projections: tuple[str, ...] = param(
        ("umap",),
        "Repeatable: umap (fit on one domain, map the other), pca (the same, "
        "linear), tsne (both domains together, 2D).",
        flag="--projection",
        cli_type=list[str],
    )
    umap: UMAPParams = field(default_factory=UMAPParams)
    tsne: TSNEParams = field(default_factory=TSNEParams)
    k: int = param(16, "Nearest neighbours per image.", flag="--k", minimum=1)
    metric: str = param("cosine", "Neighbour distance: cosine | euclidean.")
    batch_size: int = param(32, "Images per forward pass.", minimum=1)
    workers: int | None = param(
        None,
        "Image-decoding processes (default: CPU half the cores, at most 4; GPU all but "
        "two, at most 16).",
    )
    precision: str = param("auto", "fp32 | bf16 (autocast) | auto: bf16 on a GPU, fp32 on the CPU.")
    backend: str = param("auto", "auto | cuml | cpu")
    plots: bool = param(True, "Write the static 3D PNGs.")
    gap: GapParams = field(default_factory=GapParams)

    def __post_init__(self):
        check_minimums(self)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["projections"] = list(self.projections)
        for key in ("real", "synthetic", "checkpoint", "detectron2_config"):
            d[key] = str(d[key]) if d[key] is not None else None
        return d


@dataclass
class Scanned:
    """The scan stage's output: each domain's images, in row order."""

    sets: dict[str, ImageSet]
    size: tuple[int, int]

    @cached_property  # read by most stages: built once (2M tuples at 1M + 1M images)
    def items(self) -> list[tuple[ImageSet, ImageRecord]]:
        return [(s, r) for s in self.sets.values() for r in s.records]

    @cached_property
    def rows(self) -> dict[str, np.ndarray]:
        """Row indices of each domain in the run's tables."""
        out, start = {}, 0
        for domain, image_set in self.sets.items():
            out[domain] = np.arange(start, start + len(image_set.records))
            start += len(image_set.records)
        return out


def run(config: RunConfig, store: RunStore, progress: Progress | None = None) -> Run:
    """Compute and publish one run. Raises GapscopeError for anything the user can fix."""
    from lib.backend import check_choices, choose_backend
    from lib.features import pooling_fn

    stages = Stages(progress or Silent())
    projectors = _projectors(config)  # misspelt choices fail before any work
    pooling_fn(config.pooling)
    check_choices(config.backend, config.precision)
    prepare = Prepare(crop=config.crop, resize=config.resize)
    started = datetime.now(timezone.utc)
    with store.writing() as writer:
        with stages("scan", f"{config.real} and {config.synthetic}") as stage:
            scanned = scan(config, prepare, projectors, writer)
            stage.summary = ", ".join(f"{len(s.records)} {d}" for d, s in scanned.sets.items())
        backend = choose_backend(
            config.backend, config.precision, config.workers, n_images=len(scanned.items)
        )
        projectors = _projectors(config, backend.projection)
        with stages("model"):
            backbone = load_backbone(config)
        with stages("extract", f"{len(scanned.items)} images") as stage:
            vectors, cached = extract_features(
                config, scanned, prepare, backbone, backend, store, writer, stages.progress
            )
            stage.summary = f"{len(scanned.items)} images, {cached} from the feature cache"
        with stages("project", ", ".join(config.projections)):
            frame = project(vectors, scanned.rows, projectors, writer, stages.progress)
        with stages("neighbors", f"k={config.k}, {backend.knn_engine}"):
            find_neighbours(vectors, config, backend, writer)
        with stages("gap", f"{len(vectors)} levels"):
            measure_gap(vectors, scanned.rows, config.gap, backend, writer, stages.progress)
        if config.plots:
            with stages("plots"):
                save_plots(frame, scanned.rows, projectors, writer)
        writer.images(images_frame(scanned.items))
        writer.manifest(
            manifest(
                config, scanned, prepare, backbone, backend, vectors, cached, started, dict(stages)
            )
        )
    return writer.published


def _projectors(config: RunConfig, implementation: str = "cpu") -> list:
    """The run's projectors, on cuML or the CPU (`Backend.projection`)."""
    from lib.reduce import create_projector

    if not config.projections:
        raise GapscopeError("name at least one projection (--projection umap)")
    params = {"umap": config.umap, "tsne": config.tsne}
    return [create_projector(m, params.get(m), implementation) for m in config.projections]


# ---- stages ---------------------------------------------------------------------------


def scan(config: RunConfig, prepare: Prepare, projectors: list, writer: RunWriter) -> Scanned:
    """Find, hash and check every image (thumbnails written on the way); check there are
    enough for every projection."""

    def thumb(record: ImageRecord):
        return writer.thumb(record.domain, record.hash)

    sets = {
        domain: open_images(getattr(config, domain), domain, prepare, thumbs=thumb,
                            sample=config.sample, seed=config.seed)
        for domain in DOMAINS
    }  # fmt: skip
    scanned = Scanned(sets, check_common_size(list(sets.values()), prepare))
    n_total = len(scanned.items)
    for projector in projectors:
        for domain, image_set in sets.items():
            projector.check(len(image_set.records), n_total, domain)
    return scanned


def load_backbone(config: RunConfig):
    from lib.backbones import create_backbone

    backbone = create_backbone(
        config.backbone, config.checkpoint, config.random_weights, config.detectron2_config
    )
    if not backbone.levels:
        raise GapscopeError(
            f"{backbone.name} has no feature levels to compare (it is for caricatures): "
            "choose a backbone from `python -m batch backbones`"
        )
    if backbone.random_weights:
        log.warning("RANDOM WEIGHTS: %s features are untrained; neighbours mean little",
                    backbone.name)  # fmt: skip
    return backbone


def extract_features(
    config: RunConfig,
    scanned: Scanned,
    prepare: Prepare,
    backbone,
    backend,
    store: RunStore,
    writer: RunWriter,
    progress: Progress,
) -> tuple[dict[str, np.ndarray], int]:
    """Pooled vectors per level (the feature cache skips images already computed)."""
    from lib.features import FeatureCache, cache_key, extract

    items = scanned.items
    key = cache_key(backbone, config.pooling, prepare, backend.precision)
    progress.start("extract", len(items))
    extraction = extract(
        backbone, items, prepare, pooling=config.pooling, batch_size=config.batch_size,
        cache=FeatureCache(store.cache_dir, key), device=backend.device,
        progress=lambda n: progress.advance("extract", n), workers=backend.workers,
        precision=backend.precision,
    )  # fmt: skip
    for level, vectors in extraction.vectors.items():
        writer.features(level, vectors)
    return extraction.vectors, extraction.cached


def project(
    vectors, rows: dict[str, np.ndarray], projectors: list, writer: RunWriter, progress: Progress
):
    """Every projector at every level: fitted on one domain with the other mapped in (both
    ways), or both domains embedded together (a joint projector)."""
    import pandas as pd

    fits = [(p, fit_on) for p in projectors for fit_on in _fit_domains(p)]
    progress.start("project", len(fits) * len(vectors))
    frames = []
    for level, X in vectors.items():
        for projector, fit_on in fits:
            frames += _project_one(X, rows, projector, fit_on, level)
            progress.advance("project")
    frame = pd.concat(frames, ignore_index=True)
    writer.projections(frame)
    return frame


def _fit_domains(projector) -> tuple[str, ...]:
    return ("both",) if projector.joint else DOMAINS


def _project_one(X: np.ndarray, rows, projector, fit_on: str, level: str) -> list:
    if fit_on == "both":
        both = np.concatenate([rows[d] for d in DOMAINS])
        return [
            _projection_frame(both, level, projector, "both", projector.fit(X[both]).embedding_)
        ]
    other = next(d for d in DOMAINS if d != fit_on)
    fitted = projector.fit(X[rows[fit_on]]).embedding_
    mapped = projector.transform(X[rows[other]])
    return [
        _projection_frame(rows[fit_on], level, projector, fit_on, fitted),
        _projection_frame(rows[other], level, projector, fit_on, mapped),
    ]


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


def find_neighbours(vectors, config: RunConfig, backend, writer: RunWriter) -> None:
    from lib.neighbors import knn

    for level, X in vectors.items():
        writer.neighbors(
            level, *knn(X, config.k, config.metric, backend.device, engine=backend.knn_engine)
        )


def measure_gap(
    vectors, rows, params: GapParams, backend, writer: RunWriter, progress: Progress
) -> None:
    """The gap metrics and the per-image scores table, level by level."""
    import pandas as pd

    from lib.gap import NOTES, level_gap
    from lib.gap.records import SCHEMA

    levels, frames = {}, []
    progress.start("gap", len(vectors))
    for level, X in vectors.items():
        result = level_gap(X[rows["real"]], X[rows["synthetic"]], params, backend)
        levels[level] = result.metrics
        frames.append(_scores_frame(result, rows, level))
        progress.advance("gap")
    writer.metrics({"schema": SCHEMA, "params": params.as_dict(), "notes": NOTES, "levels": levels})
    writer.scores(pd.concat(frames, ignore_index=True))


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


def save_plots(frame, rows: dict[str, np.ndarray], projectors: list, writer: RunWriter) -> None:
    """The original tool's static overlap PNGs, for the projectors that have them."""
    from lib.plots import save_overlap_png

    for projector in projectors:
        if not projector.plots:
            continue
        ours = frame[frame["method"] == projector.name]
        for (level, fit_on), group in ours.groupby(["level", "fit_on"], sort=False):
            xyz = group.set_index("id")[["x", "y", "z"]]
            order = dict.fromkeys(d for d in (fit_on, *DOMAINS) if d in rows)  # fitted first
            coords = {domain: xyz.loc[rows[domain]].to_numpy() for domain in order}
            out = writer.overlap_plot(projector.name, level, fit_on)
            save_overlap_png(coords, level, fit_on, out, projector.label)


# ---- what the run records --------------------------------------------------------------


def images_frame(items):
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "id": i,
                "domain": r.domain,
                "category": r.category,
                "path": r.path,
                "source": r.source,
                "relpath": r.relpath,
                "hash": r.hash,
                "width": r.width,
                "height": r.height,
                "thumb": thumb_name(r.domain, r.hash),
                "padded": r.padded,
            }
            for i, (_, r) in enumerate(items)
        ]
    )


def manifest(
    config: RunConfig,
    scanned: Scanned,
    prepare: Prepare,
    backbone,
    backend,
    vectors: dict[str, np.ndarray],
    cached: int,
    started: datetime,
    timings: dict,
) -> dict:
    sets = scanned.sets.values()
    return {
        "status": "complete",
        "created": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.as_dict(),
        "prepare": prepare.describe(),
        "image_size": list(scanned.size),
        "backbone": backbone.describe(),
        "backend": backend.describe(),
        "inputs": [_input_summary(s) for s in sets],
        "skipped": [
            {"domain": s.domain, "path": sk.path, "reason": sk.reason}
            for s in sets
            for sk in s.skipped
        ],
        "padded": sum(r.padded for _, r in scanned.items),
        "counts": {d: int(len(r)) for d, r in scanned.rows.items()},
        "feature_dims": {level: int(v.shape[1]) for level, v in vectors.items()},
        "cached_images": cached,
        "timings_s": timings,
        "versions": _versions(),
    }


def _input_summary(image_set: ImageSet) -> dict:
    return {
        "domain": image_set.domain,
        "kind": "array" if image_set.array is not None else "folder",
        "source": str(image_set.source.resolve()),
        "used": len(image_set.records),
        "skipped": len(image_set.skipped),
    }


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "torchvision", "timm", "umap-learn", "faiss-cpu", "numpy", "cuml"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
