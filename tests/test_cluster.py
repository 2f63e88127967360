"""`batch run --dask`: the scan, the extraction and the stages over every row on a local
Dask cluster of worker processes (lib.runtime.dask), against the same run without Dask."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from lib.runtime.progress import Silent
from tests.test_cli import assert_one_line_error, batch

pytestmark = pytest.mark.slow


WORKER_THREADS = max(1, (os.cpu_count() or 1) // 2)  # what local:2 gives each worker


@contextmanager
def torch_threads(n: int):
    """Extraction with n torch threads, as many as each local:2 worker's (fp32 sums split
    by thread count round differently, ~1e-5), so the reference matches bit for bit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs(example_dir, tmp_path_factory):
    """The session's example plus one corrupt file among the synthetic images."""
    root = tmp_path_factory.mktemp("dask_inputs")
    shutil.copytree(example_dir, root / "example")
    (root / "example" / "synthetic" / "3" / "broken.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + b"0" * 50
    )
    return root / "example"


def config(inputs, **kwargs):
    from lib.jobs.run import RunConfig

    return RunConfig.of(
        real=inputs / "real",
        synthetic=inputs / "synthetic",
        k=8,
        projections=("umap", "pca"),
        atlas_level="none",
        attribution=0,
        plots=False,
        batch_size=8,
        **kwargs,
    )


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    from lib.jobs.run import run
    from lib.store.runs import RunStore

    with torch_threads(WORKER_THREADS):
        return run(config(inputs), RunStore(tmp_path_factory.mktemp("local") / "results"))


def assert_same_run(a, b) -> None:
    for level in a.levels:
        assert np.array_equal(a.features(level), b.features(level)), level
        assert np.array_equal(a.neighbours(level)[0], b.neighbours(level)[0]), level
    cols = ["id", "level", "method", "fit_on", "x", "y", "z"]
    assert a.projections[cols].equals(b.projections[cols])
    assert a.images[["path", "hash", "domain"]].equals(b.images[["path", "hash", "domain"]])
    assert a.manifest["skipped"] == b.manifest["skipped"]


def test_a_run_through_dask_is_the_run_without_it(inputs, reference, tmp_path):
    from lib.jobs.run import run
    from lib.store.runs import RunStore

    published = run(config(inputs, dask="local:2"), RunStore(tmp_path / "results"))
    assert_same_run(reference, published)
    # the corrupt file was decoded on a worker and is listed as a local run lists it
    assert [s["path"].rsplit("/", 1)[-1] for s in published.manifest["skipped"]] == ["broken.png"]
    assert published.manifest["dask"]["workers"] == 2
    assert len(list((tmp_path / "results" / "cache").rglob("hashes.npy"))) >= 2  # shards


def test_a_worker_killed_mid_run_still_gives_the_same_run(inputs, reference, tmp_path):
    """A worker is SIGKILLed once the first feature shard is written; its tasks are retried
    on the other worker (the nanny restarts it) and the run is the same."""
    from dask.distributed import Client, LocalCluster

    from lib.jobs.run import run
    from lib.store.runs import RunStore

    results = tmp_path / "results"
    env = {"GAPSCOPE_TORCH_THREADS": str(WORKER_THREADS)}
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", env=env
    ) as cluster:
        with Client(cluster) as client:  # closed before the run's own client: one at a time
            pids = client.run(os.getpid)
        killed = {}

        def kill_when_extracting():
            deadline = time.time() + 120
            while time.time() < deadline and "pid" not in killed:
                shards = list((results / "cache").rglob("hashes.npy"))
                if shards:
                    killed["pid"], killed["shards"] = next(iter(pids.values())), len(shards)
                    os.kill(killed["pid"], signal.SIGKILL)
                time.sleep(0.05)

        watcher = threading.Thread(target=kill_when_extracting, daemon=True)
        watcher.start()
        published = run(config(inputs, dask=cluster.scheduler_address), RunStore(results))
        watcher.join(timeout=5)
        total = len(list((results / "cache").rglob("hashes.npy")))
    assert "pid" in killed and killed["shards"] < total  # killed while shards were left
    assert_same_run(reference, published)


def test_a_scheduler_that_does_not_answer_is_one_line_before_any_work(inputs, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    results = tmp_path / "results"
    out = batch(
        "run",
        "--real",
        inputs / "real",
        "--synthetic",
        inputs / "synthetic",
        "--results",
        results,
        "--dask",
        f"tcp://127.0.0.1:{port}",
    )
    assert_one_line_error(out, f"--dask tcp://127.0.0.1:{port}: no Dask scheduler answers")
    assert not (results / "runs").exists()
    out = batch(
        "run",
        "--real",
        inputs / "real",
        "--synthetic",
        inputs / "synthetic",
        "--results",
        results,
        "--dask",
        "local:many",
    )
    assert_one_line_error(out, "--dask local:many: say how many worker processes")


def test_shards_hold_whole_batches_and_spread_over_the_workers():
    from lib.runtime.dask import shard_size

    assert shard_size(2797, 2, 32, 4096) == 352  # ~4 tasks per worker, 11 batches each
    assert shard_size(1_000_000, 8, 64, 4096) == 4096  # never more than a cache shard
    assert shard_size(10, 4, 8, 4096) == 8  # at least a batch


def test_a_client_killed_mid_run_resumes_from_the_shards_the_workers_finished(
    inputs, reference, tmp_path
):
    """`batch run --dask local:2` killed (the whole process group: client, nannies,
    workers) once a shard is in the cache; the rerun takes the finished shards from it and
    publishes the same run."""
    import subprocess
    import sys

    from lib.store.runs import RunStore
    from tests.conftest import ROOT

    store = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "batch",
        "run",
        "--real",
        str(inputs / "real"),
        "--synthetic",
        str(inputs / "synthetic"),
        "--results",
        str(store),
        "--k",
        "8",
        "--projection",
        "umap",
        "--projection",
        "pca",
        "--atlas-level",
        "none",
        "--attribution",
        "0",
        "--no-plots",
        "--batch-size",
        "8",
        "--dask",
        "local:2",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def complete_shards() -> int:
        # a shard being written lies in a `.tmp-*` folder, also with a hashes.npy: not done
        return sum(not p.parent.name.startswith(".") for p in (store / "cache").rglob("hashes.npy"))

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if complete_shards():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = complete_shards()
    assert RunStore(store).run_ids() == [] and 1 <= done < 5  # 5 shards of 16 images

    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=600)
    resumed = RunStore(store).open()
    assert resumed.manifest["cached_images"] >= 16 * done
    assert_same_run(reference, resumed)


def test_an_approximate_search_spread_over_the_workers_finds_the_same_neighbours(tmp_path):
    import faiss
    from dask.distributed import Client, LocalCluster

    from lib.analysis.neighbours import prepared, search_all
    from lib.runtime.dask import BlockMap, search_on_cluster

    rng = np.random.default_rng(0)
    np.save(tmp_path / "features.npy", rng.normal(size=(5000, 16)).astype(np.float32))
    X = np.load(tmp_path / "features.npy", mmap_mode="r")  # as the run's feature files are
    index = faiss.IndexHNSWFlat(16, 32)
    index.add(prepared(X, "cosine"))
    index.hnsw.efSearch = 48
    here = search_all(index, X, 8, "cosine")
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        there = search_on_cluster(BlockMap(client), tmp_path, index, X, 8, "cosine", block=1000)
    assert np.array_equal(here[0], there[0]) and np.array_equal(here[1], there[1])
    assert list(tmp_path.glob(".hnsw-*")) == []  # the shared index file is gone


def test_a_scheduler_without_workers_is_one_line(monkeypatch):
    from dask.distributed import LocalCluster

    from lib.runtime import dask as cluster
    from lib.runtime.errors import GapscopeError

    monkeypatch.setattr(cluster, "WORKERS_TIMEOUT_S", 2)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty:
        with pytest.raises(GapscopeError) as exc, cluster.connect(empty.scheduler_address):
            pass
    assert "the scheduler has no workers (waited 2 s)" in str(exc.value)


def test_placements_searches_and_scores_spread_over_the_workers_are_the_run_without_them(
    tmp_path, monkeypatch
):
    """Given embeddings large enough (for this test's thresholds) that the UMAP and atlas
    placements, the approximate search and the per-image gap scores of images outside the
    gap sample all run as block tasks on the workers: the same published run."""
    import lib.analysis.neighbours as neighbours
    from lib.analysis.gap import GapParams
    from lib.analysis.reduce import UMAPParams
    from lib.inputs.mixture import write_pair
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    monkeypatch.setattr(neighbours, "EXACT_UP_TO", 1000)  # HNSW, its search on the workers
    real, fake = write_pair(tmp_path / "v", 1500, 1200, dim=32)
    settings = dict(
        real=real,
        synthetic=fake,
        plots=False,
        projections=("umap",),
        k=8,
        umap=UMAPParams(fit_sample=400, transform_up_to=100),
        gap=GapParams(sample=300, resamples=20, kid_subsets=4),
    )
    with torch_threads(WORKER_THREADS):
        here = run(RunConfig.of(**settings), RunStore(tmp_path / "here"))
    seen = Counted()
    there = run(RunConfig.of(**settings, dask="local:2"), RunStore(tmp_path / "there"), seen)
    reports = here.manifest["projections"]
    assert {r["mapped_by"] for r in reports.values() if "mapped_by" in r} == {"knn placement"}
    assert here.manifest["neighbors"]["embedding"]["engine"] == "hnsw"
    assert np.array_equal(here.neighbours("embedding")[0], there.neighbours("embedding")[0])
    cols = ["id", "level", "method", "fit_on", "x", "y", "z"]
    assert set(here.projections["method"]) == {"umap", "atlas"}
    assert here.projections[cols].equals(there.projections[cols])
    scores = here.scores.columns.drop("level")
    assert here.scores[scores].equals(there.scores[scores])
    assert here.scores["realism"].notna().sum() == 1200  # every synthetic image, not the 300
    # on the workers: 2 × 2 UMAP placements, the atlas's, the search, 2 domains' scores
    assert there.manifest["dask"]["block_tasks"] == 8
    assert seen.done["blocks of rows on Dask workers"] == [8, 8]  # shown as they finish


class Counted(Silent):
    """A progress reporter that counts each task's total and what was done of it."""

    def __init__(self):
        self.done = {}

    def start(self, task: str, total: int) -> None:
        self.done.setdefault(task, [0, 0])[1] += total

    def advance(self, task: str, n: int = 1) -> None:
        self.done[task][0] += n


def test_a_feature_file_as_a_dask_array_reads_each_block_from_the_file(tmp_path, monkeypatch):
    """What cuml.dask's estimators get on GPU workers: blocks of the file's rows."""
    from lib.runtime import dask as cluster

    monkeypatch.setattr(cluster, "BLOCK", 100)
    np.save(tmp_path / "x.npy", np.arange(1000 * 4, dtype=np.float32).reshape(1000, 4))
    X = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = cluster.dask_rows(X[250:730])
    assert rows.chunks[0] == (100, 100, 100, 100, 80)
    assert np.array_equal(rows.compute(scheduler="sync"), X[250:730])
    assert np.array_equal(cluster.dask_rows(np.asarray(X[:5]) + 0).compute(), X[:5])


def test_an_object_run_through_dask_pools_the_same_objects(object_store, tmp_path):
    """The object example's boxes pooled by the detector's ROI pooler on the workers, in
    the local run's batches (each image computed as if alone): the same vectors."""
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    results, data = object_store
    d2 = results.parent / "d2"
    settings = dict(
        real=data / "real",
        synthetic=data / "synthetic",
        real_boxes=data / "real.json",
        synthetic_boxes=data / "synthetic.json",
        detectron2_config=d2 / "faster_rcnn.yaml",
        checkpoint=d2 / "model_final.pth",
        k=8,
        projections=("pca",),
        atlas_level="none",
        plots=False,
    )
    with torch_threads(WORKER_THREADS):
        here = run(RunConfig.of(**settings), RunStore(tmp_path / "here"))
    there = run(RunConfig.of(**settings, dask="local:2"), RunStore(tmp_path / "there"))
    assert here.levels == there.levels == ["roi"]
    assert len(here.features("roi")) > 300  # objects, not images
    assert np.array_equal(here.features("roi"), there.features("roi"))
    cols = ["image_id", "category", "size"]
    assert here.objects[cols].equals(there.objects[cols])
    assert len(list((tmp_path / "there" / "cache").rglob("hashes.npy"))) >= 2  # worker shards
