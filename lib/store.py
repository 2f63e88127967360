"""The run store: one directory per batch run, written aside and published atomically.

    results/
      runs/<run-id>/          never modified after publish
      latest -> runs/<run-id> switched with an atomic rename, only after success
      cache/                  pooled features by image hash (see lib.features)

A run is written under `runs/.partial-<run-id>/` and renamed into place when complete,
so readers only ever see whole runs and a failed run publishes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np

from lib.errors import GapscopeError

log = logging.getLogger(__name__)

PARTIAL = ".partial-"


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


class RunWriter:
    """Writes one run's files into its partial directory."""

    def __init__(self, store: RunStore, run_id: str):
        self.store = store
        self.id = run_id
        self.dir = store.runs_dir / f"{PARTIAL}{run_id}"
        self.dir.mkdir(parents=True)

    def path(self, rel: str) -> Path:
        """Where to write `rel`. An existing file there is unlinked first: in a derived run
        it is a hard link shared with a published run, which must never change."""
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() or path.is_symlink():
            path.unlink()
        return path

    def write_json(self, rel: str, obj) -> None:
        self.path(rel).write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")

    def write_array(self, rel: str, array: np.ndarray) -> None:
        np.save(self.path(rel), array)

    def write_table(self, rel: str, frame) -> None:
        frame.to_parquet(self.path(rel), index=False)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


class RunStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.latest_link = self.root / "latest"
        self.cache_dir = self.root / "cache"

    def begin(self) -> RunWriter:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        return RunWriter(self, new_run_id())

    def derive(self, base: Run) -> RunWriter:
        """A new run that starts as a copy of `base` (hard links: no data is duplicated),
        for adding results such as caricatures without ever modifying a published run."""
        writer = self.begin()
        for src in base.dir.rglob("*"):
            if src.is_dir():
                continue
            dst = writer.path(str(src.relative_to(base.dir)))
            try:
                os.link(src, dst)
            except OSError:  # another file system, or no hard links: copy
                shutil.copy2(src, dst)
        return writer

    def publish(self, writer: RunWriter) -> Run:
        """Move a finished run into place, then point `latest` at it atomically."""
        final = self.runs_dir / writer.id
        os.replace(writer.dir, final)
        tmp_link = self.root / f".latest-{writer.id}"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(Path("runs") / writer.id)
        os.replace(tmp_link, self.latest_link)
        _fsync_dir(self.root)
        log.info("published run %s", writer.id)
        return Run(final)

    def latest_id(self) -> str | None:
        if not self.latest_link.is_symlink() and not self.latest_link.exists():
            return None
        target = Path(os.readlink(self.latest_link)).name
        return target if (self.runs_dir / target / "manifest.json").is_file() else None

    def run_ids(self) -> list[str]:
        """Published runs, newest first."""
        if not self.runs_dir.is_dir():
            return []
        ids = [
            p.name
            for p in self.runs_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").is_file()
        ]
        return sorted(ids, reverse=True)

    def open(self, run_id: str | None = None) -> Run:
        run_id = run_id or self.latest_id()
        if run_id is None:
            raise GapscopeError(
                f"no published run in {self.root}: run `make batch` or `python -m batch run` first"
            )
        if run_id not in self.run_ids():
            raise GapscopeError(f"no published run {run_id!r} in {self.runs_dir}")
        return Run(self.runs_dir / run_id)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Run:
    """Read access to one published run; arrays are memory-mapped."""

    dir: Path

    @property
    def id(self) -> str:
        return self.dir.name

    @cached_property
    def manifest(self) -> dict:
        return json.loads((self.dir / "manifest.json").read_text())

    @property
    def levels(self) -> list[str]:
        return list(self.manifest["backbone"]["levels"])

    @cached_property
    def images(self):
        import pandas as pd

        return pd.read_parquet(self.dir / "images.parquet")

    @cached_property
    def projections(self):
        import pandas as pd

        return pd.read_parquet(self.dir / "projections.parquet")

    @cached_property
    def metrics(self) -> dict | None:
        """Gap metrics per level (None for runs made before gapscope measured the gap)."""
        path = self.dir / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @cached_property
    def scores(self):
        """Per-image gap scores: id, level, p_synthetic, realism, covered."""
        import pandas as pd

        path = self.dir / "scores.parquet"
        return pd.read_parquet(path) if path.is_file() else None

    @cached_property
    def caricatures(self) -> dict | None:
        """caricatures/manifest.json: settings and one item per (model, layer, image)."""
        path = self.dir / "caricatures" / "manifest.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def features(self, level: str) -> np.ndarray:
        return np.load(self.dir / "features" / f"{level}.npy", mmap_mode="r")

    def neighbors(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, k) int32 row indices and float32 distances, nearest first."""
        base = self.dir / "neighbors"
        return (
            np.load(base / f"{level}.npy", mmap_mode="r"),
            np.load(base / f"{level}.distances.npy", mmap_mode="r"),
        )

    def thumb(self, row: int) -> Path:
        return self.dir / "thumbs" / self.images.iloc[row]["thumb"]

    def image_file(self, row: int) -> Path:
        """The original file when the image came from a folder, else its thumbnail."""
        path = self.images.iloc[row]["path"]
        return Path(path) if path else self.thumb(row)

    def image_roots(self) -> list[Path]:
        """Folders this run's images came from: the only places outside the run the demo
        may serve files from."""
        return [Path(d["source"]) for d in self.manifest["inputs"] if d["kind"] == "folder"]
