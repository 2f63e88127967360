"""What a run records of itself: the manifest, assembled from what the stages returned."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

from lib.jobs.run.config import RunConfig

# the manifest's keys in the order it has always listed them
ORDER = (
    "status",
    "created",
    "finished",
    "config",
    "prepare",
    "image_size",
    "backbone",
    "backend",
    "dask",
    "inputs",
    "skipped",
    "padded",
    "counts",
    "test_size",
    "objects",
    "annotations",
    "levels",
    "feature_dims",
    "cached_images",
    "neighbors",
    "projections",
    "timings_s",
    "versions",
)


def manifest(config: RunConfig, started: datetime, *records: dict, **entries) -> dict:
    """The manifest: the run's own entries, then every stage's record (each a dict of
    manifest keys), in the manifest's order."""
    found = {
        "status": "complete",
        "created": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.as_dict(),
        "versions": _versions(),
        **entries,
    }
    for record in records:
        found |= record
    missing = [key for key in ORDER if key not in found]
    if missing:
        raise ValueError(f"no stage recorded {', '.join(missing)}")
    return {key: found[key] for key in ORDER}


def _versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "torchvision", "timm", "umap-learn", "faiss-cpu", "numpy", "cuml"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
