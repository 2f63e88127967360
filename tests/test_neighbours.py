"""Exact k nearest neighbours against a brute-force numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from lib.analysis.neighbours import FAISS_FROM, choose_engine, knn
from lib.runtime.errors import GapscopeError

ENGINES = ["torch", "faiss"]  # faiss-cpu is in requirements-dev.txt


def brute_force(X: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    X = X.astype(np.float64)
    if metric == "cosine":
        unit = X / np.linalg.norm(X, axis=1, keepdims=True)
        d = 1.0 - unit @ unit.T
    else:
        d = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d, idx, axis=1)


def points(n: int = 60, dim: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def assert_matches_reference(X, k, metric, idx, dist):
    n = len(X)
    ref_idx, ref_dist = brute_force(X, min(k + 1, n - 1), metric)
    assert idx.shape == dist.shape == (n, k)
    assert idx.dtype == np.int32 and dist.dtype == np.float32
    np.testing.assert_allclose(dist, ref_dist[:, :k], atol=1e-4, rtol=1e-4)
    # where a reference distance is clearly apart from its neighbours in the ranking
    # (including the first one left out), the indices must agree
    padded = np.concatenate([np.full((n, 1), -np.inf), ref_dist, np.full((n, 1), np.inf)], 1)
    apart = (np.diff(padded, axis=1) > 1e-4)[:, : ref_dist.shape[1] + 1]
    distinct = (apart[:, :-1] & apart[:, 1:])[:, :k]
    assert distinct.mean() > 0.9
    np.testing.assert_array_equal(idx[distinct], ref_idx[:, :k][distinct])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_matches_brute_force(metric, engine):
    X = points()
    idx, dist = knn(X, k=7, metric=metric, engine=engine)
    assert_matches_reference(X, 7, metric, idx, dist)
    assert (np.diff(dist, axis=1) >= 0).all()  # nearest first


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_a_point_is_never_its_own_neighbour(metric, engine):
    X = points(30, 4, seed=1)
    X[5] = X[6]  # an exact duplicate is a neighbour at distance 0, itself never
    idx, dist = knn(X, k=29, metric=metric, engine=engine)
    assert not (idx == np.arange(30)[:, None]).any()
    for row in idx:  # every other point appears exactly once
        assert len(set(row.tolist())) == 29
    assert idx[5, 0] == 6 and idx[6, 0] == 5
    assert dist[5, 0] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_chunking_gives_the_same_result(metric):
    X = points(50, 8, seed=2)
    whole_idx, whole_dist = knn(X, k=5, metric=metric)
    for chunk in (1, 7, 16, 49):
        idx, dist = knn(X, k=5, metric=metric, chunk=chunk)
        np.testing.assert_array_equal(idx, whole_idx)
        np.testing.assert_allclose(dist, whole_dist, atol=1e-5)
    assert_matches_reference(X, 5, metric, *knn(X, k=5, metric=metric, chunk=7))


@pytest.mark.parametrize("engine", ENGINES)
def test_k_larger_than_the_other_points_is_clipped(engine):
    X = points(6, 3, seed=3)
    idx, dist = knn(X, k=50, metric="euclidean", engine=engine)
    assert idx.shape == dist.shape == (6, 5)
    assert_matches_reference(X, 5, "euclidean", idx, dist)
    idx, _ = knn(X[:2], k=16, engine=engine)
    assert idx.tolist() == [[1], [0]]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_faiss_and_torch_agree_on_a_large_set(metric):
    X = np.random.default_rng(6).normal(size=(FAISS_FROM, 32)).astype(np.float32)
    assert choose_engine(len(X)) == "faiss"  # what auto picks on the CPU at this size
    fast = knn(X, k=10, metric=metric)
    slow = knn(X, k=10, metric=metric, engine="torch")
    assert (fast[0] == slow[0]).mean() > 0.999  # float ties aside
    np.testing.assert_allclose(fast[1], slow[1], atol=1e-4)


def test_engine_choice(monkeypatch):
    assert choose_engine(FAISS_FROM - 1) == "torch"  # small sets: one path
    assert choose_engine(10**6, device="cuda") == "torch"
    with pytest.raises(GapscopeError, match="CPU"):
        choose_engine(10, device="cuda", engine="faiss")
    with pytest.raises(GapscopeError, match="unknown kNN engine"):
        choose_engine(10, engine="annoy")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # no faiss installed
    assert choose_engine(10**6) == "torch"
    with pytest.raises(GapscopeError, match="pip install faiss-cpu"):
        choose_engine(10, engine="faiss")


def test_unknown_metric_is_rejected():
    with pytest.raises(GapscopeError) as exc:
        knn(points(5, 2), k=2, metric="manhattan")
    text = str(exc.value)
    assert "manhattan" in text and "cosine" in text and "euclidean" in text


def test_too_few_points_or_k_below_one_are_rejected():
    with pytest.raises(GapscopeError):
        knn(points(1, 3), k=4)
    with pytest.raises(GapscopeError):
        knn(points(5, 3), k=0)


def test_cosine_ignores_vector_length():
    X = points(20, 5, seed=4)
    scaled = X * np.linspace(0.5, 20, 20, dtype=np.float32)[:, None]
    idx, dist = knn(X, k=4, metric="cosine")
    idx2, dist2 = knn(scaled, k=4, metric="cosine")
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_allclose(dist, dist2, atol=1e-5)
    assert ((dist >= 0) & (dist <= 2)).all()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_column_blocks_give_the_same_neighbours(metric):
    X = np.random.default_rng(5).normal(size=(300, 12)).astype(np.float32)
    whole = knn(X, k=7, metric=metric)
    blocked = knn(X, k=7, metric=metric, chunk=64, col_chunk=50)
    np.testing.assert_array_equal(whole[0], blocked[0])
    np.testing.assert_allclose(whole[1], blocked[1], rtol=1e-5, atol=1e-6)
    tiny = knn(X, k=7, metric=metric, chunk=64, col_chunk=3)  # blocks smaller than k
    np.testing.assert_array_equal(whole[0], tiny[0])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_among_one_domain_are_the_exact_ones(metric, monkeypatch):
    """The gallery filtered to one domain: the exact nearest of that domain's rows, read
    in blocks, never the image itself."""
    import lib.analysis.neighbours as neighbours

    monkeypatch.setattr(neighbours, "BLOCK", 70)  # several blocks
    rng = np.random.default_rng(4)
    X = rng.normal(size=(500, 12)).astype(np.float32)
    domain, scattered = np.arange(200, 500), np.arange(0, 500, 3)  # a slice, or any rows
    for candidates, row in [(domain, 3), (domain, 250), (scattered, 9)]:
        idx, dist = neighbours.nearest_among(X, row, candidates, 7, metric)
        a, b = X[row], X[candidates]
        if metric == "cosine":
            d = 1 - b @ a / np.linalg.norm(b, axis=1) / np.linalg.norm(a)
        else:
            d = np.linalg.norm(b - a, axis=1)
        d[candidates == row] = np.inf
        want = candidates[np.argsort(d)[:7]]
        assert idx.tolist() == want.tolist() and row not in idx
        np.testing.assert_allclose(dist, np.sort(d)[:7], atol=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_distances_to_neighbours_another_engine_found_are_this_modules(metric):
    """What a run reports for neighbours cuML's multi-GPU search found: the distances a
    search here gives for the same pairs."""
    from lib.analysis.neighbours import pair_distances

    X = np.random.default_rng(3).normal(size=(700, 24)).astype(np.float32) * 3
    indices, distances = knn(X, 6, metric, engine="faiss")
    assert np.allclose(pair_distances(X, indices, metric), distances, atol=1e-4)
