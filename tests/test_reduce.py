"""UMAP fitted on one domain and applied to the other (umap-learn on the CPU)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.manifold import trustworthiness

from lib.analysis.reduce import (
    TSNEParams,
    UMAPParams,
    UMAPProjector,
    _umap_class,
    create_projector,
    fit_and_map,
)
from lib.runtime.errors import GapscopeError


def two_blobs(n: int, d: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    centres = np.stack([np.zeros(d), np.full(d, 6.0)])
    return (centres[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def test_the_other_domain_lands_beside_its_kind():
    real, labels = two_blobs(400)
    synthetic, syn_labels = two_blobs(150, seed=1)
    fitted, mapped = fit_and_map(real, synthetic, UMAPParams())
    assert fitted.shape == (400, 3) and mapped.shape == (150, 3)
    assert fitted.dtype == mapped.dtype == np.float32
    centre = np.stack([fitted[labels == c].mean(0) for c in (0, 1)])
    nearest = np.linalg.norm(mapped[:, None] - centre[None], axis=2).argmin(1)
    assert (nearest == syn_labels).mean() > 0.95
    again = fit_and_map(real, synthetic, UMAPParams())  # random_state 42: reruns agree
    assert np.array_equal(again[0], fitted) and np.array_equal(again[1], mapped)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_small_sets_get_umap_learns_graph_faster(metric):
    """Below 4,096 points the distances are computed vectorised, by name; the fuzzy graph
    is umap-learn's own (the layouts then differ by SGD's chaos, not in quality)."""
    import umap

    data, _ = two_blobs(500, d=20)
    warnings.simplefilter("ignore")
    ours = _umap_class()(n_components=3, random_state=42, metric=metric).fit(data)
    theirs = umap.UMAP(n_components=3, random_state=42, metric=metric).fit(data)
    assert ours._input_distance_func == metric
    assert abs(ours.graph_ - theirs.graph_).max() < 1e-3  # float rounding of distances
    assert trustworthiness(data, ours.embedding_) == pytest.approx(
        trustworthiness(data, theirs.embedding_), abs=0.01
    )


def test_too_few_points_is_a_clear_error():
    data, _ = two_blobs(10)
    with pytest.raises(GapscopeError, match="n_neighbors"):
        UMAPProjector(UMAPParams()).fit(data)


def test_umaps_uncached_numba_functions_are_cached_on_disk():
    """umap-learn compiles smooth_knn_dist & co. without numba's cache: 12 s of every
    fresh process. gapscope switches the cache on, so the compiled code lands on disk."""
    import os
    from pathlib import Path

    data, _ = two_blobs(100)
    fit_and_map(data[:60], data[60:], UMAPParams())
    cached = {p.name.split("-")[0] for p in Path(os.environ["NUMBA_CACHE_DIR"]).rglob("*.nbi")}
    for name in ("umap_.smooth_knn_dist", "utils.fast_knn_indices", "utils.submatrix"):
        assert name in cached, sorted(cached)


def pca_reference(fit_on: np.ndarray, *others: np.ndarray, k: int = 3) -> list[np.ndarray]:
    """Principal components by numpy's SVD, fitted on `fit_on` only, applied to each array."""
    x = np.asarray(fit_on, dtype=np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return [(np.asarray(o, dtype=np.float64) - mean) @ vt[:k].T for o in (fit_on, *others)]


def assert_same_up_to_sign(ours: np.ndarray, ref: np.ndarray, atol: float = 1e-3) -> None:
    """Columns equal, each up to its sign (a principal axis has no preferred direction)."""
    signs = np.sign((ours * ref).sum(axis=0))
    np.testing.assert_allclose(ours * signs, ref, atol=atol)


def test_pca_fits_one_domain_and_maps_the_other():
    real, labels = two_blobs(300)
    synthetic, _ = two_blobs(100, seed=2)
    synthetic = synthetic * 1.5 + 2.0  # another spread and place: refitting on it differs
    projector = create_projector("pca").fit(real)
    assert projector.embedding_.shape == (300, 3) and projector.embedding_.dtype == np.float32
    ref_real, ref_synthetic = pca_reference(real, synthetic)
    assert_same_up_to_sign(projector.embedding_, ref_real)
    assert_same_up_to_sign(projector.transform(synthetic), ref_synthetic)
    # the blobs differ along the diagonal: the first component separates them
    first = projector.embedding_[:, 0]
    assert min(first[labels == 0].max(), first[labels == 1].max()) < max(
        first[labels == 0].min(), first[labels == 1].min()
    )
    narrow = create_projector("pca").fit(real[:, :2])  # 2 features: the third axis is 0
    assert narrow.embedding_.shape == (300, 3) and (narrow.embedding_[:, 2] == 0).all()


def test_tsne_parameters_reach_opentsne(monkeypatch):
    import openTSNE

    seen = {}

    class Recording(openTSNE.TSNE):
        def __init__(self, **kwargs):
            seen.update(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(openTSNE, "TSNE", Recording)
    params = TSNEParams(perplexity=7.0, n_iter=300, random_state=3)
    create_projector("tsne", params).fit(two_blobs(60)[0])
    assert seen["perplexity"] == 7.0 and seen["random_state"] == 3
    assert seen["early_exaggeration_iter"] + seen["n_iter"] == 300
    assert seen["initialization"] == "pca" and seen["n_components"] == 2


def test_tsne_embeds_together_separates_and_repeats():
    data, labels = two_blobs(300)
    projector = create_projector("tsne")
    assert projector.joint
    emb = projector.fit(data).embedding_
    assert emb.shape == (300, 2) and emb.dtype == np.float32
    centre = np.stack([emb[labels == c].mean(0) for c in (0, 1)])
    assert (np.linalg.norm(emb[:, None] - centre[None], axis=2).argmin(1) == labels).mean() > 0.95
    assert np.array_equal(create_projector("tsne").fit(data).embedding_, emb)  # seed 42


def test_projection_errors_are_one_line():
    with pytest.raises(GapscopeError, match="choose from umap, pca, tsne"):
        create_projector("isomap")
    with pytest.raises(GapscopeError, match="perplexity 30 needs more than 90"):
        create_projector("tsne").fit(two_blobs(50)[0])


def test_tsne_of_too_many_points_for_the_cpu_is_refused_before_any_work():
    from conftest import one_line

    from lib.analysis.reduce import TSNE_CPU_MAX, TSNEProjector
    from lib.runtime.errors import GapscopeError

    TSNEProjector().check(1000, TSNE_CPU_MAX)  # at the limit: fine
    with pytest.raises(GapscopeError) as exc:
        TSNEProjector().check(1000, TSNE_CPU_MAX + 1)
    assert "--projection umap or pca" in one_line(exc)
    TSNEProjector(backend="cuml").check(1000, 10 * TSNE_CPU_MAX)  # a GPU has no such limit
