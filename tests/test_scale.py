"""What makes large runs possible: resumable sharded extraction, approximate neighbours
with measured recall, UMAP fitted on a sample with the rest placed, gap metrics on a
sample with per-image scores for every image."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from lib.store.runs import RunStore


def _photos(folder, n: int, seed: int, side: int = 160) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize((side, side)).save(folder / f"{i:03d}.png")


def _batch(tmp_path, results) -> list[str]:
    """A run slow enough to be killed mid-extraction: ResNet-18 (fixed random weights,
    saved as a checkpoint so every run has the same), 4 images a batch, 8 a shard."""
    return [
        sys.executable,
        "-m",
        "batch",
        "run",
        "--real",
        str(tmp_path / "real"),
        "--synthetic",
        str(tmp_path / "synthetic"),
        "--results",
        str(results),
        "--backbone",
        f"resnet18:{tmp_path / 'resnet18.pth'}",
        "--batch-size",
        "4",
        "--shard",
        "8",
        "--workers",
        "0",
        "--no-plots",
        "--projection",
        "pca",
        "--atlas-level",
        "none",
        "--attribution",
        "0",
    ]


def test_a_run_killed_during_extraction_resumes_with_identical_features(tmp_path):
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    _photos(tmp_path / "real", 32, seed=1)
    _photos(tmp_path / "synthetic", 32, seed=2)
    cmd = _batch(tmp_path, tmp_path / "store")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(ROOT / ".cache" / "numba")}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    cache = tmp_path / "store" / "cache"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(cache.glob("*/0*-*"))) >= 2:  # two complete shards: 16 images
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = RunStore(tmp_path / "store")
    assert store.run_ids() == []  # nothing half-published
    (partial,) = store.runs_dir.glob(".partial-*")  # left by the kill, with its owner
    done = len(list(cache.glob("*/0*-*")))
    assert 2 <= done < 8

    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    resumed = store.open()
    assert not partial.exists()  # the rerun removed what the killed run left
    assert resumed.manifest["cached_images"] >= 8 * done
    clean = _batch(tmp_path, tmp_path / "clean")
    subprocess.run(clean, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    reference = RunStore(tmp_path / "clean").open()
    assert reference.manifest["cached_images"] == 0
    for level in reference.levels:
        np.testing.assert_array_equal(resumed.features(level), reference.features(level))


# ---- approximate neighbours --------------------------------------------------------------


def _clustered(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    from lib.inputs.mixture import mixture_block

    return mixture_block(n, np.random.default_rng(seed), dim=d, latent=6, clusters=8)[0]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_approximate_neighbours_report_the_recall_they_reach(metric):
    from lib.analysis.neighbours import knn, knn_report, recall_at_k

    X = _clustered(6000)
    idx, dist, report = knn_report(X, 10, metric, engine="hnsw", seed=3)
    exact_idx, exact_dist = knn(X, 10, metric, engine="faiss")
    true_recall = recall_at_k(idx, exact_idx)
    assert report["engine"] == "hnsw" and report["exact"] is False
    assert report["probe"] == 1000 and report["recall_at_k"] >= 0.95
    assert abs(report["recall_at_k"] - true_recall) < 0.02  # the probe tells the truth
    assert not (idx == np.arange(len(X))[:, None]).any()  # never its own neighbour
    # the distances are those of the neighbours returned
    a, b = X[:50], X[idx[:50, 3]]
    if metric == "cosine":
        want = 1 - (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    else:
        want = np.linalg.norm(a - b, axis=1)
    np.testing.assert_allclose(dist[:50, 3], want, atol=1e-4)


def test_approximate_neighbours_hold_their_recall_when_read_in_many_blocks(monkeypatch):
    """Features are read a block at a time; the graph must still be one graph (FAISS
    built a poor one from several adds: recall 0.57 at 1M + 1M)."""
    import lib.analysis.neighbours as neighbours
    from lib.inputs.mixture import mixture_block

    monkeypatch.setattr(neighbours, "BLOCK", 12_500)  # four blocks: 0.91 from four adds
    X = np.concatenate(
        [
            mixture_block(25_000, np.random.default_rng(1), dim=64)[0],
            mixture_block(25_000, np.random.default_rng(2), dim=64, shift=1, missing=2)[0],
        ]
    )
    idx, _, report = neighbours.knn_report(X, 16, "cosine", engine="hnsw")
    exact_idx, _ = neighbours.knn(X, 16, "cosine", engine="faiss")
    assert neighbours.recall_at_k(idx, exact_idx) >= 0.98
    assert report["ef_search"] == neighbours.EF_SEARCH[0]  # no widening needed


def test_search_widens_until_the_probe_reaches_the_target(monkeypatch):
    import lib.analysis.neighbours as neighbours

    X = np.random.default_rng(0).normal(size=(4000, 48)).astype(np.float32)  # hard: isotropic
    monkeypatch.setattr(neighbours, "TARGET_RECALL", 0.99)
    report = neighbours.knn_report(X, 10, "euclidean", engine="hnsw")[2]
    assert report["ef_search"] > neighbours.EF_SEARCH[0]


def test_a_large_run_stores_its_measured_recall(tmp_path, monkeypatch):
    import lib.analysis.neighbours as neighbours
    from lib.inputs.mixture import write_pair
    from lib.jobs.run import RunConfig, run

    monkeypatch.setattr(neighbours, "EXACT_UP_TO", 1000)  # as if this run were large
    real, fake = write_pair(tmp_path / "v", 1500, 1200, dim=32)
    published = run(
        RunConfig.of(real=real, synthetic=fake, plots=False, projections=("pca",)),
        RunStore(tmp_path / "results"),
    )
    report = published.manifest["neighbors"]["embedding"]
    assert report["engine"] == "hnsw" and report["recall_at_k"] >= 0.95
    exact, _ = neighbours.knn(np.asarray(published.features("embedding")), 16, engine="faiss")
    stored, _ = published.neighbours("embedding")
    assert abs(neighbours.recall_at_k(stored, exact) - report["recall_at_k"]) < 0.02


# ---- UMAP on a sample --------------------------------------------------------------------


def test_umap_fitted_on_a_sample_places_every_other_point_by_its_cluster():
    from lib.analysis.reduce import UMAPParams, UMAPProjector
    from lib.inputs.mixture import mixture_block

    rng = np.random.default_rng(0)
    x, labels = mixture_block(6000, rng, dim=32, latent=6, clusters=5)
    other, other_labels = mixture_block(3000, rng, dim=32, latent=6, clusters=5)
    p = UMAPProjector(UMAPParams(fit_sample=1500, transform_up_to=500)).fit(x)
    assert p.report_["fit_sample"] == 1500 and p.embedding_.shape == (6000, 3)
    mapped = p.transform(other)
    assert p.report_["mapped_by"] == "knn placement"
    probe = p.report_["probe"]
    assert probe["n"] == 1000
    # measured 0.99 for both: placing without epochs loses nothing here
    assert probe["trustworthiness_placement"] >= probe["trustworthiness_transform"] - 0.02
    # every placed point lands among the fitted points of its own blob
    from lib.analysis.neighbours import nearest_in

    fitted = np.sort(np.random.default_rng(42).choice(6000, 1500, replace=False))
    ref, ref_labels = p.embedding_[fitted], labels[fitted]
    assert (ref_labels[nearest_in(mapped, ref)] == other_labels).mean() > 0.98
    rest = np.setdiff1d(np.arange(6000), fitted)
    assert (ref_labels[nearest_in(p.embedding_[rest], ref)] == labels[rest]).mean() > 0.98


# ---- gap metrics on a sample -------------------------------------------------------------


def test_gap_on_a_sample_equals_the_gap_of_that_sample_and_scores_every_image():
    from scipy.spatial.distance import cdist

    from lib.analysis.gap import GapParams, level_gap

    real = _clustered(3000, seed=1)
    fake = _clustered(2500, seed=2) + 0.3
    params = GapParams(sample=800, resamples=20)
    sampled = level_gap(real, fake, params)
    rows_r, rows_f = sampled.sample_rows
    assert len(rows_r) == len(rows_f) == 800
    alone = level_gap(real[rows_r], fake[rows_f], GapParams(sample=800, resamples=20))
    for name in ("fd", "kid", "precision", "recall", "density", "coverage", "auc"):
        assert sampled.metrics["metrics"][name] == alone.metrics["metrics"][name], name
    assert sampled.metrics["sampled_from"] == {"real": 3000, "synthetic": 2500}
    # every image has its scores; the sampled ones keep the sample's own
    assert np.isfinite(sampled.realism).all() and len(sampled.realism) == 2500
    assert np.isfinite(sampled.p_synthetic).all() and len(sampled.p_synthetic) == 5500
    np.testing.assert_array_equal(sampled.realism[rows_f], alone.realism)
    np.testing.assert_array_equal(sampled.covered[rows_r], alone.covered)
    # the others: realism against the sample's real balls, computed here independently
    mu, sd = real[rows_r].astype(np.float64).mean(0), real[rows_r].astype(np.float64).std(0)
    zr, zf = (real[rows_r] - mu) / sd, (fake - mu) / sd
    radii = np.sort(cdist(zr, zr), axis=1)[:, params.k]  # k-th nearest other real
    kept = radii <= np.median(radii)
    others = np.setdiff1d(np.arange(2500), rows_f)[:200]
    want = (radii[kept][None, :] / cdist(zf[others], zr[kept])).max(1)
    np.testing.assert_allclose(sampled.realism[others], want, rtol=1e-3)
    # coverage of the others: the nearest sampled synthetic image inside their own k-NN
    # radius among the sampled real images
    others = np.setdiff1d(np.arange(3000), rows_r)[:300]
    z = (real[others] - mu) / sd
    own = np.sort(cdist(z, zr), axis=1)[:, params.k - 1]
    nearest = cdist(z, (fake[rows_f] - mu) / sd).min(1)
    assert (sampled.covered[others] == (nearest < own)).mean() > 0.99
    assert 0.2 < sampled.covered[others].mean() < 1  # both answers occur
