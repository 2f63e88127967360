"""One batch run, end to end: images → features → projections, neighbours, plots → run.

`run(config, store)` is what `python -m batch run` calls. It writes into a partial run
directory and publishes only when every stage succeeded; on any error the partial
directory is removed and the previously published run stays served.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from lib.errors import GapscopeError
from lib.gap import GapParams
from lib.images import ImageSet, Prepare, check_common_size, open_images, thumb_name
from lib.reduce import (
    PROJECTORS,
    TSNEParams,
    UMAPParams,
    check_enough_for_tsne,
    check_enough_points,
)
from lib.store import Run, RunStore

log = logging.getLogger(__name__)

DOMAINS = ("real", "synthetic")


@dataclass
class RunConfig:
    """Everything a run depends on; written to the manifest as given."""

    real: Path
    synthetic: Path
    backbone: str | None = None  # None: resnet50-fpn with a checkpoint, else efficientnet-lite0
    checkpoint: Path | None = None
    detectron2_config: Path | None = None  # a detectron2 YAML: backbone detectron2
    random_weights: bool = False
    pooling: str = "gap"
    crop: int | None = None
    resize: int | None = None
    sample: int | None = None  # per domain
    seed: int = 0
    projections: tuple[str, ...] = ("umap",)  # any of lib.reduce.PROJECTORS
    umap: UMAPParams = field(default_factory=UMAPParams)
    tsne: TSNEParams = field(default_factory=TSNEParams)
    k: int = 16
    metric: str = "cosine"
    batch_size: int = 32
    workers: int | None = None  # image-decoding processes; None: lib.features.default_workers
    precision: str = "auto"  # fp32 | bf16 (autocast) | auto: bf16 on a GPU, fp32 on the CPU
    backend: str = "auto"
    plots: bool = True
    gap: GapParams = field(default_factory=GapParams)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["projections"] = list(self.projections)
        for key in ("real", "synthetic", "checkpoint", "detectron2_config"):
            d[key] = str(d[key]) if d[key] is not None else None
        return d


class Progress(Protocol):
    def start(self, name: str, total: int) -> None: ...
    def advance(self, name: str, n: int = 1) -> None: ...


class _Silent:
    def start(self, name: str, total: int) -> None:
        pass

    def advance(self, name: str, n: int = 1) -> None:
        pass


class _Timings(dict):
    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self[name] = round(time.perf_counter() - t0, 3)
        log.info("stage %s: %.2f s", name, self[name])


def run(config: RunConfig, store: RunStore, progress: Progress | None = None) -> Run:
    """Compute and publish one run. Raises GapscopeError for anything the user can fix."""
    progress = progress or _Silent()
    writer = store.begin()
    try:
        manifest = _compute(config, store, writer, progress)
        writer.write_json("manifest.json", manifest)
        return store.publish(writer)
    except BaseException:
        writer.discard()
        raise


def _compute(config: RunConfig, store: RunStore, writer, progress: Progress) -> dict:
    import pandas as pd

    from lib.backbones import create_backbone
    from lib.backend import choose_backend
    from lib.features import FeatureCache, cache_key, extract, pooling_fn
    from lib.neighbors import choose_engine, knn
    from lib.plots import overlap_png_name, save_overlap_png
    from lib.reduce import create_projector

    started = datetime.now(timezone.utc)
    timings = _Timings()
    pooling_fn(config.pooling)
    for method in config.projections:  # an unknown name fails before any work
        create_projector(method)
    if not config.projections:
        raise GapscopeError("name at least one projection (--projection umap)")
    prepare = Prepare(crop=config.crop, resize=config.resize)
    backend = choose_backend(config.backend)

    with timings.stage("scan"):
        sets: dict[str, ImageSet] = {}
        for domain in DOMAINS:
            sets[domain] = open_images(
                getattr(config, domain),
                domain,
                prepare,
                thumbs=writer.path("thumbs"),
                sample=config.sample,
                seed=config.seed,
            )
        size = check_common_size(list(sets.values()), prepare)
        if "umap" in config.projections:
            for domain, image_set in sets.items():
                check_enough_points(len(image_set.records), config.umap, domain)
        if "tsne" in config.projections:
            check_enough_for_tsne(sum(len(s.records) for s in sets.values()), config.tsne)

    with timings.stage("model"):
        backbone = create_backbone(
            config.backbone, config.checkpoint, config.random_weights, config.detectron2_config
        )
        if backbone.random_weights:
            log.warning(
                "RANDOM WEIGHTS: %s features are untrained; neighbours mean little", backbone.name
            )

    items = [(s, r) for s in sets.values() for r in s.records]
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if backend.device.startswith("cuda") else "fp32"
    with timings.stage("extract"):
        cache = FeatureCache(
            store.cache_dir, cache_key(backbone, config.pooling, prepare, precision)
        )
        progress.start("extract", len(items))
        extraction = extract(
            backbone,
            items,
            prepare,
            pooling=config.pooling,
            batch_size=config.batch_size,
            cache=cache,
            device=backend.device,
            progress=lambda n: progress.advance("extract", n),
            workers=config.workers,
            precision=precision,
        )
        for level, vectors in extraction.vectors.items():
            writer.write_array(f"features/{level}.npy", vectors)

    domain_of = np.array([r.domain for _, r in items])
    rows = {d: np.flatnonzero(domain_of == d) for d in DOMAINS}
    with timings.stage("project"):
        steps = sum(1 if PROJECTORS[m].joint else 2 for m in config.projections)
        progress.start("project", steps * len(backbone.levels))
        frames = []
        params = {"umap": config.umap, "tsne": config.tsne}
        for level in backbone.levels:
            X = extraction.vectors[level]
            for method in config.projections:
                projector = create_projector(method, params.get(method), backend.name)
                if projector.joint:  # both domains in one embedding
                    both = np.concatenate([rows["real"], rows["synthetic"]])
                    coords = projector.fit(X[both]).embedding_
                    frames.append(_projection_frame(both, level, method, "both", coords))
                    progress.advance("project")
                    continue
                for fit_on, other in (("real", "synthetic"), ("synthetic", "real")):
                    projector.fit(X[rows[fit_on]])
                    fitted, mapped = projector.embedding_, projector.transform(X[rows[other]])
                    for domain, coords in ((fit_on, fitted), (other, mapped)):
                        frames.append(
                            _projection_frame(rows[domain], level, method, fit_on, coords)
                        )
                    if config.plots and method == "umap":  # the original tool's 10 PNGs
                        save_overlap_png(
                            {fit_on: fitted, other: mapped},
                            level,
                            fit_on,
                            writer.path(f"plots/{overlap_png_name(level, fit_on)}"),
                        )
                    progress.advance("project")
        writer.write_table("projections.parquet", pd.concat(frames, ignore_index=True))

    with timings.stage("neighbors"):
        for level in backbone.levels:
            idx, dist = knn(extraction.vectors[level], config.k, config.metric, backend.device)
            writer.write_array(f"neighbors/{level}.npy", idx)
            writer.write_array(f"neighbors/{level}.distances.npy", dist)

    with timings.stage("gap"):
        progress.start("gap", len(backbone.levels))
        metrics, scores = _gap(
            extraction.vectors, rows, config.gap, backend.name, lambda: progress.advance("gap")
        )
        writer.write_json("metrics.json", metrics)
        writer.write_table("scores.parquet", scores)

    writer.write_table("images.parquet", _images_frame(items))
    return {
        "run_id": writer.id,
        "status": "complete",
        "created": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.as_dict(),
        "prepare": prepare.describe(),
        "image_size": list(size),
        "backbone": backbone.describe(),
        "backend": {
            "name": backend.name,
            "device": backend.device,
            "reason": backend.reason,
            "precision": precision,
            "knn_engine": choose_engine(len(items), backend.device),
        },
        "inputs": [_input_summary(s) for s in sets.values()],
        "skipped": [
            {"domain": s.domain, "path": sk.path, "reason": sk.reason}
            for s in sets.values()
            for sk in s.skipped
        ],
        "padded": sum(r.padded for _, r in items),
        "counts": {d: int(len(rows[d])) for d in DOMAINS},
        "feature_dims": {lv: int(v.shape[1]) for lv, v in extraction.vectors.items()},
        "cached_images": extraction.cached,
        "timings_s": dict(timings),
        "versions": _versions(),
    }


def _gap(vectors: dict[str, np.ndarray], rows: dict[str, np.ndarray], params, backend, done):
    """metrics.json's content and the per-image scores table, level by level."""
    import pandas as pd

    from lib.gap import NOTES, level_gap

    levels, frames = {}, []
    n = len(rows["real"]) + len(rows["synthetic"])
    for level, X in vectors.items():
        result = level_gap(X[rows["real"]], X[rows["synthetic"]], params, backend)
        levels[level] = result.metrics
        frame = pd.DataFrame({"id": np.arange(n, dtype=np.int32), "level": level})
        frame["p_synthetic"] = np.nan
        frame.loc[np.r_[rows["real"], rows["synthetic"]], "p_synthetic"] = result.p_synthetic
        frame["realism"] = np.nan
        frame.loc[rows["synthetic"], "realism"] = result.realism
        frame["covered"] = pd.array([pd.NA] * n, dtype="boolean")
        frame.loc[rows["real"], "covered"] = result.covered
        frame["cluster"] = np.int32(-1)
        frame.loc[np.r_[rows["real"], rows["synthetic"]], "cluster"] = result.clusters
        frames.append(frame)
        done()
    metrics = {"params": params.as_dict(), "notes": NOTES, "levels": levels}
    return metrics, pd.concat(frames, ignore_index=True)


def _projection_frame(rows: np.ndarray, level: str, method: str, fit_on: str, coords):
    """projections.parquet rows; a 2D embedding (t-SNE) has z = NaN."""
    import pandas as pd

    return pd.DataFrame(
        {
            "id": rows.astype(np.int32),
            "level": level,
            "method": method,
            "fit_on": fit_on,
            "x": coords[:, 0],
            "y": coords[:, 1],
            "z": coords[:, 2] if coords.shape[1] > 2 else np.float32(np.nan),
        }
    )


def _images_frame(items):
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
                "thumb": thumb_name(r),
                "padded": r.padded,
            }
            for i, (_, r) in enumerate(items)
        ]
    )


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
