"""The batch job on a Dask cluster (`batch run --dask ADDRESS`).

Image discovery stays on the client. The scan's decoding (hashes, checks, thumbnails,
web copies) and the feature extraction run as Dask tasks over chunks and shards of images
on the workers. Each worker process builds the model once (a per-process cache keyed by
the model's spec; its fingerprint must equal the client's, so a checkpoint that differs
on a worker is an error, not wrong features) and writes each shard's vectors into the
feature cache exactly as a local run does, so a killed client's rerun resumes from the
completed shards. The client gathers the vectors, writes the run's files and publishes as
always. A worker that dies mid-task has its tasks retried on the others (Dask's own
scheduling). The results folder and the input folders must be on storage every worker
sees (one machine, NFS, a cluster file system).

`local:N` starts an in-process `LocalCluster` of N worker processes (one thread each).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lib.analysis.neighbours import (
    join_searches,
    others_first,
    pair_distances,
    prepared,
    search_all,
    search_rows,
)
from lib.features.backbones import create_backbone
from lib.features.cache import SHARD, FeatureCache
from lib.features.engine import batches
from lib.runtime.errors import GapscopeError, first_line
from lib.runtime.executor import Executor
from lib.runtime.memmap import BLOCK, file_rows, map_blocks, row_blocks
from lib.runtime.progress import Progress

log = logging.getLogger(__name__)

WORKERS_TIMEOUT_S = 60  # a scheduler without workers: how long to wait for one
SCAN_CHUNK = 256  # images a scan task decodes: ~4,000 tasks at a million images
SCAN_THREADS = 4  # decoding threads within a scan task (decoders release the GIL)
TORCH_THREADS = "GAPSCOPE_TORCH_THREADS"  # a worker's torch threads (default: torch's own)
CONNECT_TIMEOUT_S = 5


@contextmanager
def connect(address: str) -> Iterator[object]:
    """A dask.distributed Client for `address` (tcp://host:8786, or local:N), closed (with
    its local cluster) afterwards. A scheduler that does not answer is a one-line error."""
    from dask.distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    if address.startswith("local:"):
        n = address.removeprefix("local:")
        if not n.isdigit() or int(n) < 1:
            raise GapscopeError(f"--dask {address}: say how many worker processes, e.g. local:2")
        # each worker's torch gets its share of the cores (Dask's nanny starts it at one)
        threads = max(1, (os.cpu_count() or 1) // int(n))
        cluster = LocalCluster(
            n_workers=int(n),
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
            env={TORCH_THREADS: str(threads)},
        )
        client = Client(cluster)
    else:
        cluster = None
        try:
            client = Client(address, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise GapscopeError(
                f"--dask {address}: no Dask scheduler answers there ({first_line(exc)}); "
                "start one with `dask scheduler`, or use local:N"
            ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            raise GapscopeError(
                f"--dask {address}: the scheduler has no workers (waited "
                f"{WORKERS_TIMEOUT_S} s): start some with `dask worker {address}`"
            ) from None
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        log.info(
            "dask: %d workers at %s (dashboard %s)",
            workers,
            client.scheduler.address,
            client.dashboard_link,
        )
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class ScanMap:
    """An ordered map for lib.inputs.images' scan, run on the workers in chunks."""

    def __init__(self, client, chunk: int = SCAN_CHUNK):
        self.client, self.chunk = client, chunk

    def __call__(self, fn, items) -> Iterator:
        items = list(items)
        chunks = [items[i : i + self.chunk] for i in range(0, len(items), self.chunk)]
        # the function (closing over the scan's settings, e.g. every file's category)
        # goes to each worker once, not with every task
        [shared] = self.client.scatter([fn], broadcast=True, hash=False)
        futures = self.client.map(_each, [shared] * len(chunks), chunks, pure=False, retries=2)
        for future in futures:  # in order, each as soon as it is done
            yield from future.result()
        # a failed scan raises from .result(): the run publishes nothing


def _each(fn, chunk: list) -> list:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        return list(pool.map(fn, chunk))


# ---- the executor ------------------------------------------------------------------------


class DaskExecutor(Executor):
    """lib.runtime.executor's calls on a Dask cluster: the scan's decoding in chunks,
    extraction in tasks of whole batches, stages over every row as block tasks, searches'
    queries on the workers."""

    def __init__(self, client, progress: Progress | None = None):
        super().__init__(progress=progress)
        self.client = client
        self.blocks = BlockMap(client, self.progress)
        self.scan_map = ScanMap(client)

    def precision(self, asked: str) -> str:
        return worker_precision(self.client, asked)

    def search(self, folder) -> Callable:
        return functools.partial(search_on_cluster, self.blocks, folder)

    def exact_search(self) -> Callable | None:
        return self.blocks.cuml_neighbours if self.backend.name == "cuml" else None

    def extract(self, source, backbone, units, out, cache, advance) -> None:
        """`units` in consecutive tasks of whole batches (as a local run batches them: mixed
        sizes pad to a batch's largest, so the same batches give the same vectors), each
        written into the feature cache as one shard on its worker; each task's rows are
        put into `out` as it arrives."""
        if not units:
            return
        workers = len(self.client.scheduler_info(n_workers=-1)["workers"])
        most = cache.shard if cache is not None else SHARD
        size = shard_size(len(units), workers, source.per_batch, most)
        parts = [units[i : i + size] for i in range(0, len(units), size)]
        [model] = self.client.scatter([(backbone.spec, backbone.fingerprint())], broadcast=True)
        where = (str(cache.dir.parent), cache.dir.name, cache.shard) if cache else None
        name = cache.dir.name if cache else "extract"
        futures = {
            self.client.submit(
                _extract_task,
                model,
                source.part(part),
                self.backend.precision,
                where,
                pure=False,
                retries=3,
                key=f"extract-{name}-{n}-{time.time_ns()}",
            ): part
            for n, part in enumerate(parts)
        }
        for part, vectors in _as_done(futures, f"tasks on {workers} Dask workers", self.progress):
            rows = source.rows(part)
            out.put_rows(rows, vectors)
            advance(len(rows))

    def where(self) -> str:
        return f" on Dask ({self.client.dashboard_link})"

    def describe(self) -> dict:
        """What the manifest records of the cluster and of the block tasks sent to it."""
        info = self.client.scheduler_info(n_workers=-1)
        return {
            "scheduler": self.client.scheduler.address,
            "workers": len(info["workers"]),
            "threads": sum(w["nthreads"] for w in info["workers"].values()),
            "dashboard": self.client.dashboard_link,
            "block_tasks": self.blocks.tasks,
        }


def worker_precision(client, precision: str) -> str:
    """ "auto" as the workers' hardware decides it: bf16 when every worker has a GPU, fp32
    otherwise (the client's own hardware does not matter: it extracts nothing)."""
    if precision != "auto":
        return precision
    gpus = client.run(_has_gpu)
    return "bf16" if gpus and all(gpus.values()) else "fp32"


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.cache
def _worker_threads() -> None:
    """torch's threads in this worker process, once: GAPSCOPE_TORCH_THREADS when set (a
    run's sums in fp32 depend on the thread count, so workers and a local run match)."""
    import torch

    if os.environ.get(TORCH_THREADS, "").isdigit():
        torch.set_num_threads(int(os.environ[TORCH_THREADS]))


@functools.lru_cache(maxsize=2)
def _worker_model(model: tuple):
    """The model (its lib.features.backbones.ModelSpec and fingerprint), built once per
    worker process; weights that differ from the client's are an error, not features."""

    spec, fingerprint = model
    _worker_threads()
    backbone = create_backbone(spec)
    if backbone.fingerprint() != fingerprint:
        raise GapscopeError(
            f"the model built on a Dask worker differs from the client's ({backbone.weights}): "
            "put its checkpoint on storage every worker sees"
        )
    return backbone


def _extract_task(model: tuple, source, precision: str, cache: tuple | None) -> dict:
    """One task's units of `source` through the model on a worker (its GPU when it has
    one), by the engine's one loop; their vectors, also written into the feature cache
    (`cache`: its root, key and shard size) as one shard. No cache is read inside: a
    retried task pools exactly its batches again."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = _worker_model(model)
    parts = [v for _, v in batches(source, backbone, list(range(len(source))), device, precision)]
    vectors = {lv: np.concatenate([p[lv] for p in parts]) for lv in parts[0]}
    if cache is not None:
        root, key, shard = cache
        FeatureCache(Path(root), key, shard).put(source.keys, vectors)
    return vectors


def shard_size(n: int, workers: int, batch_size: int, most: int) -> int:
    """Units per extraction task: at most a cache shard, small enough that every worker
    gets about 4 tasks (a lost worker costs little, the last tasks finish together), and
    whole batches, as a local run's are."""
    per_task = -(-n // max(1, 4 * workers))
    size = min(most, per_task)
    return max(batch_size, -(-size // batch_size) * batch_size)


def _as_done(futures: dict, task: str, progress=None) -> Iterator:
    """(part, result) of each task as it finishes, counted as `task` in the Progress
    `progress`; a task that failed for good raises here (the run publishes nothing)."""
    from dask.distributed import as_completed

    if progress is not None:
        progress.start(task, len(futures))
    for future in as_completed(futures):
        yield futures.pop(future), future.result()
        if progress is not None:
            progress.advance(task)
        future.release()


# ---- stages over every row: placements, per-image scores, searches ------------------------


class BlockMap:
    """lib.runtime.memmap.map_blocks on the workers: `fn(rows, X[rows])` for each block, in order,
    the same results. `fn` (with what it closes over: a fitted placement, the gap sample's
    scorer) goes to each worker once; each task reads its rows from X's file, which every
    worker sees (the run's feature files). An X that is no memory-mapped file is worked
    here."""

    def __init__(self, client, progress=None):
        self.client = client
        self.progress = progress  # a lib.runtime.progress.Progress counting the blocks done
        self.tasks = 0  # block tasks sent to the workers (the manifest's dask.block_tasks)

    @functools.cached_property
    def gpus(self) -> bool:
        """Every worker has a CUDA GPU (then cuML's Dask estimators can use them)."""
        found = self.client.run(_has_gpu)
        return bool(found) and all(found.values())

    def cuml_transform(self, model, X: np.ndarray) -> np.ndarray | None:
        """A fitted cuML UMAP's transform of X spread over GPU workers (cuml.dask's UMAP:
        the model sent to each, X's blocks read from its file there); None when the
        workers have no GPUs (the caller transforms here)."""
        UMAP = _cuml_dask("manifold", "UMAP") if self.gpus else None
        if UMAP is None:
            return None
        # the model to each worker once (cuml.dask would put it into the task graph: with
        # the fitted data it holds, a gigabyte at 1M points); blocks as CuPy arrays, the
        # only blocks its transform's output collection is declared for (cuml#5893)
        shared = self.client.scatter(model, broadcast=True, hash=False)
        rows = gpu_rows(X)
        self.tasks += rows.numblocks[0]
        out = UMAP(model=shared, client=self.client).transform(rows).compute()
        return host(out).astype(np.float32, copy=False)

    def cuml_neighbours(self, X: np.ndarray, k: int, metric: str):
        """Each row's k nearest other rows by cuML's multi-GPU exact search (cuml.dask's
        NearestNeighbors over X's blocks on the workers' GPUs), or None when the workers
        have no GPUs. Distances are computed again here, as lib.analysis.neighbours defines them."""
        NearestNeighbors = _cuml_dask("neighbors", "NearestNeighbors") if self.gpus else None
        if NearestNeighbors is None:
            return None

        rows = gpu_rows(X, functools.partial(prepared, metric=metric))
        self.tasks += rows.numblocks[0]
        search = NearestNeighbors(client=self.client, n_neighbors=k + 1).fit(rows)
        # the fitted partitions are the queries too (no second copy on the GPUs)
        found = host(search.kneighbors(return_distance=False).compute()).astype(np.int64)
        if found.shape != (len(X), k + 1) or found.min() < 0 or found.max() >= len(X):
            raise GapscopeError(
                f"cuml.dask's NearestNeighbors answered {found.shape} indices in "
                f"[{found.min()}, {found.max()}] for {len(X)} rows: rerun with --backend cpu"
            )
        order = others_first(found, np.arange(len(X)), k)
        indices = np.take_along_axis(found, order, axis=1).astype(np.int32)
        return indices, pair_distances(X, indices, metric, "cuda")

    def __call__(self, fn, X: np.ndarray, blocks: list[np.ndarray]) -> Iterator:
        where = file_rows(X)
        if where is None or not blocks:
            yield from map_blocks(fn, X, blocks)
            return
        [shared] = self.client.scatter([fn], broadcast=True, hash=False)
        self.tasks += len(blocks)
        futures = self.client.map(
            _block,
            [shared] * len(blocks),
            blocks,
            path=where[0],
            first=where[1],
            pure=False,
            retries=3,
        )
        task = "blocks of rows on Dask workers"  # one bar, started again by each stage
        if self.progress is not None:
            self.progress.start(task, len(blocks))
        for future in futures:  # in order; a failed block raises here: nothing published
            yield future.result()
            future.release()
            if self.progress is not None:
                self.progress.advance(task)


def _cuml_dask(module: str, name: str):
    """cuml.dask's estimator, or None (logged) where it does not import: cuml.dask needs
    dask-cudf and raft-dask beside cuML, which RAPIDS' images carry and bare wheels may
    not; the client's GPU then does the work."""
    import importlib

    try:
        return getattr(importlib.import_module(f"cuml.dask.{module}"), name)
    except ImportError as exc:
        log.warning(
            "cuml.dask.%s.%s does not import (%s): on the client instead",
            module,
            name,
            first_line(exc),
        )
        return None


def dask_rows(X: np.ndarray):
    """X as a dask array of blocks, each read from X's file on the worker that needs it
    (an X in memory is split as it is)."""
    import dask
    import dask.array as da

    where = file_rows(X)
    if where is None:
        return da.from_array(np.asarray(X, np.float32), chunks=(BLOCK, -1))
    path, first = where
    read = dask.delayed(_read_rows, pure=True)
    return da.concatenate(
        [
            da.from_delayed(
                read(path, first + int(b[0]), first + int(b[-1]) + 1),
                shape=(len(b), X.shape[1]),
                dtype=X.dtype,
            )
            for b in row_blocks(len(X), BLOCK)
        ]
    )


def gpu_rows(X: np.ndarray, prepare=None):
    """`dask_rows(X)`, each block (`prepare(block)` first when given) a CuPy array on its
    worker's GPU: what cuml.dask's estimators take."""
    import cupy

    def on_gpu(block: np.ndarray):
        return cupy.asarray(prepare(block) if prepare else block, dtype=cupy.float32)

    return dask_rows(X).map_blocks(
        on_gpu, dtype=np.float32, meta=cupy.empty((0, 0), dtype=cupy.float32)
    )


def _read_rows(path: str, start: int, stop: int) -> np.ndarray:
    return np.array(np.load(path, mmap_mode="r")[start:stop])


def host(array) -> np.ndarray:
    """A result gathered from GPU workers (CuPy, cuDF or NumPy) as a NumPy array."""
    if hasattr(array, "to_numpy"):  # cuDF
        return array.to_numpy()
    if hasattr(array, "get") and not isinstance(array, np.ndarray):  # CuPy
        return array.get()
    return np.asarray(array)


def _block(fn, rows: np.ndarray, path: str, first: int):
    """One block task on a worker: lib.runtime.memmap.map_blocks' step, on X's rows in its file."""
    _worker_threads()
    return next(map_blocks(fn, np.load(path, mmap_mode="r")[first:], [rows]))


def search_on_cluster(
    blocks: BlockMap,
    folder: Path,
    index,
    X: np.ndarray,
    k: int,
    metric: str,
    block: int | None = None,
):
    """lib.analysis.neighbours.search_all with the queries spread over the workers: the built index
    is written to `folder` (shared storage: the partial run) and each worker reads it once
    (memory-mapped where FAISS can), the queries' rows from X's file. The same indices and
    distances as a local search."""
    import secrets

    import faiss

    if file_rows(X) is None:  # not a file the workers can read: searched here
        return search_all(index, X, k, metric)
    path = Path(folder) / f".hnsw-{secrets.token_hex(4)}.faiss"
    faiss.write_index(index, str(path))
    try:
        search = functools.partial(_search_block, str(path), int(index.hnsw.efSearch), k, metric)
        parts = list(blocks(search, X, row_blocks(len(X), block or BLOCK)))
    finally:
        path.unlink(missing_ok=True)
    return join_searches(parts, k)


@functools.lru_cache(maxsize=1)
def _worker_index(path: str):
    import faiss

    try:
        return faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:  # an index type FAISS cannot map: read whole
        return faiss.read_index(path)


def _search_block(index: str, ef: int, k: int, metric: str, rows: np.ndarray, x: np.ndarray):
    built = _worker_index(index)
    built.hnsw.efSearch = ef
    return search_rows(built, k, metric, rows, x)
