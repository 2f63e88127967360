"""The run store: one directory per batch run, written aside and published atomically.

    results/
      runs/<run-id>/          never modified after publish
      latest -> runs/<run-id> switched with an atomic rename, only after success
      cache/                  pooled features by image hash (see lib.features.engine)

This module is the only one that knows the names of a run's files. Writers and readers
go through typed methods per artefact (`RunWriter.features`, `Run.neighbours`, ...):

    manifest.json                 config, versions, backend, timings; `schema` (SCHEMA)
    images.parquet                one row per image
    objects.parquet               one row per object, when boxes were given: then the
                                  run's rows (features, projections, neighbours, scores)
                                  are objects, and `Run.rows` is this table
    features/<level>.npy          float32 (N, D), one row per image (or object)
    projections.parquet           id, level, method, fit_on, x, y, z
    neighbors/<level>.npy         int32 (N, k) row indices, nearest first
    neighbors/<level>.distances.npy  float32 (N, k)
    scores.parquet                per image and level: p_synthetic, realism, covered, cluster
    duplicates.parquet            near-copy candidates: leaks and repeats, with the pixel check
    metrics.json                  gap metrics per level, one record shape (lib.analysis.gap.records)
    plots/3d_<METHOD>_<level> (<direction>).png   static overlap plots
    thumbs/<domain>_<hash>.png    thumbnails (named in images.parquet's `thumb` column)
    web/<domain>_<hash>.jpg       web copies of images larger than a thumbnail (`web`)
    caricatures/manifest.json, caricatures/inputs/<image>.png, caricatures/<item png/npy>
    whatif/results.json, whatif/pairs/<image>_<transform>_<strength>.png   what-if runs
    retrieval/<query>-vs-<gallery>/results.json, .../<level>.parquet   retrieval evaluations
    compare/results.json          synthetic versions compared (lib.jobs.compare)

`with store.writing() as writer:` writes a run under `runs/.partial-<run-id>/`, renames it
into place and switches `latest` when the block succeeds, and removes it when the block
(or publishing) fails, so readers only ever see whole runs and a failed run publishes
nothing.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np

from lib.analysis.gap.records import upgrade
from lib.analysis.plots import direction_title
from lib.runtime.errors import GapscopeError
from lib.store.names import checked_name

log = logging.getLogger(__name__)

PARTIAL = ".partial-"
# The run's schema, in manifest.json. 2: metrics.json holds one record shape for every
# metric (lib.analysis.gap.records, which reads schema 1 by upgrading it). Runs without one are 1.
SCHEMA = 2

OWNER = ".owner.json"  # in a partial run: the pid and host writing it
LATEST_SWITCH = ".latest-"  # + run id: the link that replaces `latest` when it publishes
SERVING = ".serving"  # in the store: one file per demo process, naming the runs it shows
MANIFEST = "manifest.json"
IMAGES = "images.parquet"
OBJECTS = "objects.parquet"
PROJECTIONS = "projections.parquet"
SCORES = "scores.parquet"
DUPLICATES = "duplicates.parquet"
METRICS = "metrics.json"
FEATURES = "features"
NEIGHBOURS = "neighbors"
PLOTS = "plots"
THUMBS = "thumbs"
WEB = "web"
CARICATURES = "caricatures"
WHATIF = "whatif"
RETRIEVAL = "retrieval"
DETECTIONS = "detections"
CALIBRATION = "calibration"
COMPARE = "compare"
DETECTION_TABLES = ("objects", "detections")  # per-object and per-detection outcomes


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def thumb_name(domain: str, image_hash: str) -> str:
    return f"{domain}_{image_hash[:16]}.png"


def web_name(domain: str, image_hash: str) -> str:
    return f"{domain}_{image_hash[:16]}.jpg"


def overlap_plot_name(method: str, level: str, fit_on: str) -> str:
    """The original tool's names: '3d_UMAP_c4 (Synthetic mapped to Real latent space).png'."""

    return f"3d_{method.upper()}_{level} ({direction_title(fit_on)}).png"


def _caricature_input_file(image: str) -> str:
    return f"{CARICATURES}/inputs/{image}.png"


def _features_file(level: str) -> str:
    return f"{FEATURES}/{checked_name(level, 'level')}.npy"


def _neighbour_files(level: str) -> tuple[str, str]:
    level = checked_name(level, "level")
    return f"{NEIGHBOURS}/{level}.npy", f"{NEIGHBOURS}/{level}.distances.npy"


class RunWriter:
    """Writes one run's files into its partial directory, one method per artefact."""

    def __init__(self, store: RunStore, run_id: str):
        self.store = store
        self.id = run_id
        self.dir = store.runs_dir / f"{PARTIAL}{run_id}"
        self.dir.mkdir(parents=True)
        # who writes it: the next run (or `batch prune`) removes it once that process is gone
        (self.dir / OWNER).write_text(json.dumps(_this_process()) + "\n")
        self.published: Run | None = None  # set by RunStore.publish

    def _path(self, rel: str) -> Path:
        """Where to write `rel`. An existing file there is unlinked first: in a derived run
        it is a hard link shared with a published run, which must never change."""
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() or path.is_symlink():
            path.unlink()
        return path

    def _json(self, rel: str, obj) -> None:
        self._path(rel).write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")

    def _array(self, rel: str, array: np.ndarray) -> None:
        np.save(self._path(rel), array)

    def _table(self, rel: str, frame) -> None:
        frame.to_parquet(self._path(rel), index=False)

    def manifest(self, manifest: dict, schema: int = SCHEMA) -> None:
        """The run's manifest; `schema`: a derived run keeps its base's, whose files it
        holds."""
        self._json(MANIFEST, {**manifest, "run_id": self.id, "schema": schema})

    def images(self, frame) -> None:
        self._table(IMAGES, frame)

    def objects(self, frame) -> None:
        self._table(OBJECTS, frame)

    def features(self, level: str, vectors: np.ndarray) -> None:
        self._array(_features_file(level), np.asarray(vectors, dtype=np.float32))

    def features_array(self, level: str, shape: tuple[int, int]) -> np.ndarray:
        """A writable memory-mapped float32 feature file, to fill a block at a time."""
        return np.lib.format.open_memmap(
            self._path(_features_file(level)), mode="w+", dtype=np.float32, shape=shape
        )

    def features_read(self, level: str) -> np.ndarray:
        """A level's features as written so far, memory-mapped read-only."""
        return np.load(self.dir / _features_file(level), mmap_mode="r")

    def projections(self, frame) -> None:
        self._table(PROJECTIONS, frame)

    def neighbours(self, level: str, indices: np.ndarray, distances: np.ndarray) -> None:
        idx_file, dist_file = _neighbour_files(level)
        self._array(idx_file, np.asarray(indices, dtype=np.int32))
        self._array(dist_file, np.asarray(distances, dtype=np.float32))

    def written_neighbours(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        """The neighbour table `neighbours` wrote at `level` (memory-mapped), for a later
        stage of the same run."""
        return tuple(np.load(self.dir / f, mmap_mode="r") for f in _neighbour_files(level))

    def scores(self, frame) -> None:
        self._table(SCORES, frame)

    def duplicates(self, records: list[dict]) -> None:
        """The near-copy candidates (lib.analysis.duplicates.confirm's records)."""
        import pandas as pd

        columns = ["kind", "a", "b", "pixel_distance", "feature_distance", "correlation", "copy"]
        frame = pd.DataFrame(records, columns=columns)
        frame["copy"] = frame["copy"].astype("boolean")
        self._table(DUPLICATES, frame)

    def metrics(self, metrics: dict) -> None:
        self._json(METRICS, metrics)

    def overlap_plot(self, method: str, level: str, fit_on: str) -> Path:
        """Where the static overlap plot of one projection, level and direction goes."""
        return self._path(f"{PLOTS}/{overlap_plot_name(method, level, fit_on)}")

    def thumb(self, domain: str, image_hash: str) -> Path:
        """Where an image's thumbnail goes (named in the images table's `thumb` column)."""
        return self._path(f"{THUMBS}/{thumb_name(domain, image_hash)}")

    def web(self, domain: str, image_hash: str) -> Path:
        """Where an image's web copy goes (named in the images table's `web` column)."""
        return self._path(f"{WEB}/{web_name(domain, image_hash)}")

    def new_caricatures_dir(self) -> Path:
        """An empty folder for caricature images, each named in the caricature manifest."""
        return self._fresh_dir(CARICATURES)

    def new_whatif_dir(self) -> Path:
        """An empty folder for what-if before/after pairs, each named in the results."""
        return self._fresh_dir(f"{WHATIF}/pairs")

    def _fresh_dir(self, rel: str, keep_siblings: bool = False) -> Path:
        """An empty folder. What a derived run linked from its base is removed first (its
        top folder, or only `rel` with `keep_siblings`): a new set replaces the old one,
        and writing never reaches a file a published run shares."""
        path = self.dir / (rel if keep_siblings else rel.split("/")[0])
        if path.exists():
            shutil.rmtree(path)
        (self.dir / rel).mkdir(parents=True)
        return self.dir / rel

    def caricature_input(self, image: str) -> Path:
        return self._path(_caricature_input_file(image))

    def caricature_manifest(self, manifest: dict) -> None:
        self._json(f"{CARICATURES}/{MANIFEST}", manifest)

    def whatif(self, results: dict) -> None:
        self._json(f"{WHATIF}/results.json", results)

    def retrieval(self, name: str, results: dict, tables: dict) -> None:
        """One retrieval evaluation: its metrics and a per-query table per level. One of
        the same name linked from the base run is replaced whole."""
        self._fresh_dir(f"{RETRIEVAL}/{name}", keep_siblings=True)
        self._json(f"{RETRIEVAL}/{name}/results.json", results)
        for level, frame in tables.items():
            self._table(f"{RETRIEVAL}/{name}/{level}.parquet", frame)

    def detections(
        self, name: str, results: dict, tables: dict, truth: dict, predictions: list
    ) -> None:
        """One detector's evaluation: its metrics, outcome tables (DETECTION_TABLES) and
        its inputs as checked (truth.json, predictions.json: enough to evaluate it again,
        as the calibration's bootstrap does). One of the same name linked from the base
        run is replaced whole."""
        name = checked_name(name, "detector name")
        self._fresh_dir(f"{DETECTIONS}/{name}", keep_siblings=True)
        self._json(f"{DETECTIONS}/{name}/results.json", results)
        self._json(f"{DETECTIONS}/{name}/truth.json", truth)
        self._json(f"{DETECTIONS}/{name}/predictions.json", predictions)
        for table in DETECTION_TABLES:
            self._table(f"{DETECTIONS}/{name}/{table}.parquet", tables[table])

    def calibration(self, results: dict) -> None:
        """Which gap number predicts mAP (lib.jobs.calibration): replaces any linked one."""
        self._fresh_dir(CALIBRATION)
        self._json(f"{CALIBRATION}/results.json", results)

    def compare(self, results: dict) -> None:
        """A comparison of synthetic versions (lib.jobs.compare): replaces any linked one."""
        self._fresh_dir(COMPARE)
        self._json(f"{COMPARE}/results.json", results)

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

    @contextmanager
    def writing(self, derive_from: Run | None = None) -> Iterator[RunWriter]:
        """A new run (a copy of `derive_from` when given), published when the block ends
        without error and discarded otherwise; `writer.published` is the published Run."""
        try:
            writer = self.derive(derive_from) if derive_from is not None else self.begin()
        except OSError as exc:
            raise self._disk_full(exc) from None
        try:
            yield writer
            self.publish(writer)
        except OSError as exc:
            raise self._disk_full(exc) from None
        finally:
            if writer.published is None:
                writer.discard()

    def _disk_full(self, exc: OSError) -> Exception:
        """A full disk as the one line a user can act on; any other OSError as it was."""
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return exc
        return GapscopeError(
            f"the disk under {self.root} is full ({exc.strerror}): nothing was published "
            "and the previous run is still served; free some space or pass --results "
            "another folder"
        )

    def begin(self) -> RunWriter:
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GapscopeError(
                f"cannot create the run store {self.root} ({exc.strerror}): pass --results "
                "a folder you can write to"
            ) from None
        self.remove_abandoned()
        return RunWriter(self, new_run_id())

    def remove_abandoned(self) -> list[str]:
        """Remove partial runs whose writer is gone (a killed run: at a million images,
        gigabytes each). A partial of a live process, or of another host, is left alone.
        Returns the run ids removed."""
        removed = []
        for path in self.runs_dir.glob(f"{PARTIAL}*") if self.runs_dir.is_dir() else ():
            if _owner_alive(path / OWNER):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name[len(PARTIAL) :])
            log.info("removed the partial run %s: its writer is gone", path.name)
        latest = self.latest_id()
        for path in self._placing():  # killed between placing the run and switching latest
            if path.name != latest and not _owner_alive(path / OWNER):
                self._delete(path.name)
                removed.append(path.name)
                log.info("removed the run %s: killed before it was published", path.name)
        for link in self.root.glob(f"{LATEST_SWITCH}*") if self.root.is_dir() else ():
            run_id = link.name[len(LATEST_SWITCH) :]
            writing = self.runs_dir / f"{PARTIAL}{run_id}", self.runs_dir / run_id
            if not any(_owner_alive(d / OWNER) for d in writing if (d / OWNER).exists()):
                link.unlink(missing_ok=True)
        return removed

    def _delete(self, run_id: str) -> None:
        """Delete a run in `runs/`, renamed away first: readers never see a half-deleted
        run listed."""
        doomed = self.runs_dir / f"{PARTIAL}deleting-{run_id}"
        os.replace(self.runs_dir / run_id, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def _placing(self) -> list[Path]:
        """Runs moved into place whose `latest` switch has not finished: they still hold
        their writer's owner file."""
        if not self.runs_dir.is_dir():
            return []
        return [
            p
            for p in self.runs_dir.iterdir()
            if not p.name.startswith(".") and (p / OWNER).exists()
        ]

    def prune(self, keep: int) -> list[str]:
        """Delete published runs beyond the newest `keep`, never `latest` nor a run a live
        demo process shows; also remove abandoned partial runs. Returns the ids deleted."""
        if keep < 1:
            raise GapscopeError(f"--keep {keep}: keep at least 1 run")
        protected = {self.latest_id(), *self.serving()}
        deleted = []
        for run_id in self.run_ids()[keep:]:
            if run_id in protected:
                continue
            self._delete(run_id)
            deleted.append(run_id)
        self.remove_abandoned()
        return deleted

    def serving(self) -> set[str]:
        """Run ids that live demo processes have open (they say so in `.serving/`)."""
        out: set[str] = set()
        folder = self.root / SERVING
        for path in folder.glob("*.json") if folder.is_dir() else ():
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if _owner_alive(path):
                out.update(info.get("runs", []))
            else:
                path.unlink(missing_ok=True)
        return out

    def announce_serving(self, run_ids: list[str]) -> None:
        """Say which runs this (demo) process shows, so `prune` keeps them."""
        folder = self.root / SERVING
        folder.mkdir(parents=True, exist_ok=True)
        me = _this_process()
        path = folder / f"{me['host']}-{me['pid']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**me, "runs": sorted(set(run_ids))}) + "\n")
        os.replace(tmp, path)

    def derive(self, base: Run) -> RunWriter:
        """A new run that starts as a copy of `base` (hard links: no data is duplicated),
        for adding results such as caricatures without ever modifying a published run."""
        writer = self.begin()
        try:
            for src in base.dir.rglob("*"):
                if src.is_dir():
                    continue
                dst = writer._path(str(src.relative_to(base.dir)))
                try:
                    os.link(src, dst)
                except OSError:  # another file system, or no hard links: copy
                    shutil.copy2(src, dst)
        except BaseException:  # a full disk while copying: leave nothing behind
            writer.discard()
            raise
        return writer

    def publish(self, writer: RunWriter) -> Run:
        """Move a finished run into place, then point `latest` at it atomically. If the
        switch fails the run is taken out again: `latest` names the previous run, which
        stays whole, and nothing half-published is listed."""
        final = self.runs_dir / writer.id
        # the owner file travels with the run: until `latest` names it, a run in place
        # is not listed, and if this process dies here the next run removes it
        os.replace(writer.dir, final)
        tmp_link = self.root / f"{LATEST_SWITCH}{writer.id}"
        try:
            tmp_link.unlink(missing_ok=True)
            tmp_link.symlink_to(Path("runs") / writer.id)
            os.replace(tmp_link, self.latest_link)
        except BaseException:
            tmp_link.unlink(missing_ok=True)
            os.replace(final, writer.dir)  # back to partial, for the caller to discard
            raise
        (final / OWNER).unlink(missing_ok=True)  # published: nobody's partial any more
        _fsync_dir(self.root)
        log.info("published run %s", writer.id)
        writer.published = Run(final)
        return writer.published

    def latest_id(self) -> str | None:
        if not self.latest_link.is_symlink() and not self.latest_link.exists():
            return None
        target = Path(os.readlink(self.latest_link)).name
        return target if (self.runs_dir / target / MANIFEST).is_file() else None

    def run_ids(self) -> list[str]:
        """Published runs, newest first."""
        if not self.runs_dir.is_dir():
            return []
        latest = self.latest_id()
        ids = [
            p.name
            for p in self.runs_dir.iterdir()
            if p.is_dir()
            and not p.name.startswith(".")
            and (p / MANIFEST).is_file()
            and (p.name == latest or not (p / OWNER).exists())  # not one still being placed
        ]
        return sorted(ids, reverse=True)

    def open(self, run_id: str | None = None) -> Run:
        run_id = run_id or self.latest_id()
        if run_id is None:
            raise GapscopeError(
                f"no published run in {self.root}: run `make batch` or `python -m batch run` first"
            )
        # a name, not a path (it may come from a browser), of a run with its manifest:
        # checked without listing every run (the demo opens a run on every event)
        plain = run_id == Path(run_id).name and not run_id.startswith(".")
        if not plain or not (self.runs_dir / run_id / MANIFEST).is_file():
            raise GapscopeError(f"no published run {run_id!r} in {self.runs_dir}")
        return Run(self.runs_dir / run_id)


def _this_process() -> dict:
    import socket

    return {"pid": os.getpid(), "host": socket.gethostname()}


def _owner_alive(owner_file: Path) -> bool:
    """Whether the process named in `owner_file` (pid, host) still runs. Another host's
    process cannot be checked: counted alive. No readable owner: gone."""
    try:
        owner = json.loads(owner_file.read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != _this_process()["host"]:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


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

    @property
    def results(self) -> Path:
        """The results folder the run was published in (its annotations live there)."""
        return self.dir.parent.parent

    @cached_property
    def manifest(self) -> dict:
        return json.loads((self.dir / MANIFEST).read_text())

    @property
    def schema(self) -> int:
        return int(self.manifest.get("schema", 1))

    @property
    def levels(self) -> list[str]:
        """The levels the run's features are at: the backbone's, or for objects pooled on
        the ROI heads' levels, `roi` (runs before object runs name only the backbone's)."""
        return list(self.manifest.get("levels") or self.manifest["backbone"]["levels"])

    @cached_property
    def images(self):
        import pandas as pd

        return pd.read_parquet(self.dir / IMAGES)

    @cached_property
    def objects(self):
        """One row per object (None for a run of whole images)."""
        import pandas as pd

        path = self.dir / OBJECTS
        return pd.read_parquet(path) if path.is_file() else None

    @property
    def rows(self):
        """The table of what the run's rows are: its objects when it has them, else its
        images. Features, projections, neighbours and scores index this table."""
        return self.images if self.objects is None else self.objects

    @cached_property
    def projections(self):
        import pandas as pd

        return pd.read_parquet(self.dir / PROJECTIONS)

    @cached_property
    def metrics(self) -> dict | None:
        """Gap metrics per level in the current record shape (runs of schema 1 are
        upgraded as they are read); None for runs made before gapscope measured the gap."""
        path = self.dir / METRICS
        if not path.is_file():
            return None

        return upgrade(json.loads(path.read_text()))

    @cached_property
    def scores(self):
        """Per-image gap scores: id, level, p_synthetic, realism, covered, cluster."""
        import pandas as pd

        path = self.dir / SCORES
        return pd.read_parquet(path) if path.is_file() else None

    def features(self, level: str) -> np.ndarray:
        return np.load(self.dir / _features_file(level), mmap_mode="r")

    def neighbours(self, level: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, k) int32 row indices and float32 distances, nearest first; mapped once
        per level (a published run never changes: the demo's clicks reuse the maps)."""
        if level not in self._neighbour_maps:
            idx_file, dist_file = _neighbour_files(level)
            self._neighbour_maps[level] = (
                np.load(self.dir / idx_file, mmap_mode="r"),
                np.load(self.dir / dist_file, mmap_mode="r"),
            )
        return self._neighbour_maps[level]

    @cached_property
    def _neighbour_maps(self) -> dict:
        return {}

    def column(self, name: str) -> np.ndarray:
        """One column of the rows table (images, or objects) as an array indexed by row
        id, read once: a row's fields without building a pandas row (the demo reads 17
        rows a click)."""
        if name not in self._columns:
            values = self.rows[name]
            self._columns[name] = values.to_numpy(dtype=object if values.dtype == object else None)
        return self._columns[name]

    @cached_property
    def _columns(self) -> dict:
        return {}

    def thumb(self, row: int) -> Path | None:
        """The row's thumbnail; None for given embeddings without an image."""
        name = self.column("thumb")[row]
        return self.dir / THUMBS / name if name else None

    def web(self, row: int) -> Path | None:
        """The row's web copy (longest side ≤ 1,024 px), for images larger than a
        thumbnail; None otherwise, and for runs from before web copies."""
        name = self.column("web")[row] if "web" in self.rows.columns else ""
        return self.dir / WEB / name if name else None

    def image_file(self, row: int) -> Path | None:
        """The original file when the image came from a folder, else its thumbnail."""
        path = self.column("path")[row]
        return Path(path) if path else self.thumb(row)

    def image_roots(self) -> list[Path]:
        """Folders this run's images came from: the only places outside the run the demo
        may serve files from."""
        return [Path(d["source"]) for d in self.manifest["inputs"] if d["kind"] == "folder"]

    @cached_property
    def caricatures(self) -> dict | None:
        """caricatures/manifest.json: settings and one item per (model, layer, image)."""
        path = self.dir / CARICATURES / MANIFEST
        return json.loads(path.read_text()) if path.is_file() else None

    def caricature_file(self, name: str) -> Path:
        """A caricature image or array named in the caricature manifest."""
        return self.dir / CARICATURES / name

    def caricature_input(self, image: str) -> Path:
        return self.dir / _caricature_input_file(image)

    @cached_property
    def whatif(self) -> dict | None:
        """whatif/results.json: each transform's gap per level (lib.jobs.whatif)."""
        path = self.dir / WHATIF / "results.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def whatif_pair(self, name: str) -> Path:
        """A before/after image named in the what-if results' `pairs`."""
        return self.dir / WHATIF / "pairs" / name

    @cached_property
    def retrievals(self) -> dict[str, dict]:
        """Every retrieval evaluation in the run: name → its results.json."""
        folder = self.dir / RETRIEVAL
        if not folder.is_dir():
            return {}
        return {
            p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/results.json"))
        }

    @cached_property
    def detections(self) -> dict[str, dict]:
        """Every detector evaluated on this run's test images: name → its results.json."""
        folder = self.dir / DETECTIONS
        if not folder.is_dir():
            return {}
        return {
            p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/results.json"))
        }

    @cached_property
    def calibration(self) -> dict | None:
        """The run's calibration (lib.jobs.calibration), None when it has none."""
        path = self.dir / CALIBRATION / "results.json"
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def model_key(self) -> str:
        """What measured the run's features, as text to compare runs by: the backbone's
        name, weights and levels (not the input files it read, which differ per version)."""
        backbone = {k: v for k, v in self.manifest.get("backbone", {}).items() if k != "files"}
        return json.dumps(backbone, sort_keys=True)

    @cached_property
    def duplicates(self):
        """The run's near-copy candidates (kind, a, b, distances, correlation, copy), or
        None for a run made before they were looked for."""
        import pandas as pd

        path = self.dir / DUPLICATES
        return pd.read_parquet(path) if path.is_file() else None

    @cached_property
    def compare(self) -> dict | None:
        """The run's comparison of synthetic versions (lib.jobs.compare), or None."""
        path = self.dir / COMPARE / "results.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def detection_inputs(self, name: str) -> tuple[dict, list]:
        """(ground truth, predictions) one detector was evaluated on, as checked."""
        folder = self.dir / DETECTIONS / checked_name(name, "detector")
        truth, predictions = (folder / f for f in ("truth.json", "predictions.json"))
        return json.loads(truth.read_text()), json.loads(predictions.read_text())

    def detection_table(self, name: str, table: str):
        """One detector's outcomes: `table` is "objects" or "detections"."""
        import pandas as pd

        if table not in DETECTION_TABLES:
            raise ValueError(table)
        folder = self.dir / DETECTIONS / checked_name(name, "detector")
        return pd.read_parquet(folder / f"{table}.parquet")

    def retrieval_table(self, name: str, level: str):
        """One evaluation's per-query table at one level."""
        import pandas as pd

        return pd.read_parquet(self.dir / RETRIEVAL / name / f"{level}.parquet")
