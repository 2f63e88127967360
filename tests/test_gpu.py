"""Checks that need a CUDA GPU (and, for cuML, RAPIDS): run on the GPU machine, skipped here.

pytest -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _cuml_or_skip():
    try:
        import cuml  # noqa: F401
    except Exception as exc:  # no RAPIDS here
        pytest.skip(f"cuML not importable: {type(exc).__name__}")


def test_backend_auto_picks_cuml_with_a_reason():
    _cuml_or_skip()
    from lib.runtime.backend import choose_backend

    backend = choose_backend("auto")
    assert backend.name == "cuml" and backend.device == "cuda" and "cuML" in backend.reason


def test_cuml_umap_keeps_neighbourhoods_like_umap_learn():
    """Same API and shapes as the CPU path; trustworthiness close to umap-learn's."""
    _cuml_or_skip()
    from sklearn.datasets import load_digits
    from sklearn.manifold import trustworthiness

    from lib.analysis.reduce import UMAPParams, fit_and_map

    X = load_digits().data.astype(np.float32)
    a, b = X[:1000], X[1000:]
    scores = {}
    for backend in ("cpu", "cuml"):
        fitted, mapped = fit_and_map(a, b, UMAPParams(), backend)
        assert fitted.shape == (1000, 3) and mapped.shape == (len(b), 3)
        scores[backend] = trustworthiness(a, fitted, n_neighbors=15)
    assert scores["cuml"] > scores["cpu"] - 0.03, scores


def test_cuml_tsne_embeds_like_opentsne():
    """t-SNE on the cuml backend: 2D, every image, neighbourhoods kept about as well."""
    _cuml_or_skip()
    from sklearn.datasets import load_digits
    from sklearn.manifold import trustworthiness

    from lib.analysis.reduce import create_projector

    X = load_digits().data.astype(np.float32)[:1500]
    scores = {}
    for backend in ("cpu", "cuml"):
        emb = create_projector("tsne", backend=backend).fit(X).embedding_
        assert emb.shape == (1500, 2) and np.isfinite(emb).all()
        scores[backend] = trustworthiness(X, emb, n_neighbors=15)
    assert scores["cuml"] > scores["cpu"] - 0.03, scores


def test_knn_on_the_gpu_equals_the_cpu():
    from lib.analysis.neighbours import knn

    X = np.random.default_rng(0).normal(size=(5000, 64)).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        cpu = knn(X, 8, metric, "cpu")
        gpu = knn(X, 8, metric, "cuda", chunk=1024, col_chunk=2048)
        assert (cpu[0] == gpu[0]).mean() > 0.999
        np.testing.assert_allclose(cpu[1], gpu[1], atol=1e-4)


def test_gpu_fp32_extraction_equals_the_cpus_and_bf16_stays_close(tmp_path):
    from PIL import Image

    from lib import extract_images as extract
    from lib.features.backbones import create_backbone
    from lib.inputs.example import real_digits, to_rgb
    from lib.inputs.images import Prepare, open_folder
    from lib.runtime.executor import Executor

    for i, rgb in enumerate(to_rgb(real_digits(64)[0])):
        Image.fromarray(rgb).save(tmp_path / f"{i:02d}.png")
    image_set = open_folder(tmp_path, "real", Prepare())
    items = [(image_set, r) for r in image_set.records]
    backbone = create_backbone()
    cpu = extract(backbone, items, Prepare(), Executor.on("cpu", precision="fp32")).vectors
    fp32 = extract(backbone, items, Prepare(), Executor.on("cuda", precision="fp32")).vectors
    bf16 = extract(backbone, items, Prepare(), Executor.on("cuda", precision="bf16")).vectors
    for level in backbone.levels:
        # fp32 on the GPU is the CPU's answer (TF32 and channels_last change rounding only)
        rel_gpu = np.linalg.norm(fp32[level] - cpu[level]) / np.linalg.norm(cpu[level])
        assert rel_gpu < 5e-3, (level, rel_gpu)
        rel = np.linalg.norm(bf16[level] - fp32[level]) / np.linalg.norm(fp32[level])
        assert rel < 0.08, (level, rel)


def test_gap_neighbour_metrics_on_the_gpu_equal_the_cpus():
    """The gap's neighbour search and ball tests go through lib.analysis.neighbours on the run's
    device: on a GPU they give the CPU's answers."""
    from lib.analysis import gap
    from lib.runtime.backend import Backend

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(3000, 64)), rng.normal(size=(2500, 64)) + 0.2
    params = gap.GapParams(kid_subsets=5, resamples=20)
    cpu = gap.level_gap(real, fake, params).metrics["metrics"]
    on_gpu = Backend("cpu", "cuda", "test", knn_engine="torch", clustering="sklearn")
    gpu = gap.level_gap(real, fake, params, on_gpu).metrics["metrics"]
    for name in ("precision", "recall", "density", "coverage", "mixing"):
        assert gpu[name]["value"] == pytest.approx(cpu[name]["value"], abs=2e-3), name


def test_cuml_dask_spreads_the_umap_transform_and_the_exact_search_over_gpu_workers(tmp_path):
    """A Dask worker per GPU (here: one): cuML's UMAP transform through cuml.dask keeps
    neighbourhoods as the single-GPU transform does, and cuml.dask's multi-GPU exact
    search finds the torch search's neighbours, at its distances."""
    _cuml_or_skip()
    pytest.importorskip("distributed")
    pytest.importorskip("cuml.dask.manifold")  # needs dask-cudf and raft-dask beside cuML
    pytest.importorskip("cuml.dask.neighbors")
    from cuml.manifold import UMAP
    from dask.distributed import Client, LocalCluster
    from sklearn.manifold import trustworthiness

    from lib.analysis.neighbours import knn, recall_at_k
    from lib.inputs.mixture import mixture_block
    from lib.runtime.dask import BlockMap

    np.save(tmp_path / "x.npy", mixture_block(30_000, np.random.default_rng(0), dim=32)[0])
    X = np.load(tmp_path / "x.npy", mmap_mode="r")  # as a run's feature file
    model = UMAP(n_components=3, random_state=42).fit(np.asarray(X[:10_000]))
    other = X[10_000:]
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        blocks = BlockMap(client)
        assert blocks.gpus
        spread = blocks.cuml_transform(model, other)
        found, dist = blocks.cuml_neighbours(X, 8, "cosine")
    here = np.asarray(model.transform(np.asarray(other)), np.float32)
    probe = np.asarray(other[:2000])
    assert spread.shape == here.shape
    assert trustworthiness(probe, spread[:2000]) > trustworthiness(probe, here[:2000]) - 0.02
    truth, truth_d = knn(np.asarray(X), 8, "cosine", "cuda", engine="torch")
    assert recall_at_k(found, truth) > 0.99
    assert np.allclose(np.sort(dist, 1), np.sort(truth_d, 1), atol=1e-4)
