"""Clusters of both domains together (HDBSCAN), and which of them hold one domain only.

A real-only cluster is what the synthetic data misses; a synthetic-only one is what it
invents. scikit-learn's HDBSCAN (the hdbscan package's maintained successor) on the CPU,
cuML's on a GPU; `lib.runtime.backend` says which.
"""

from __future__ import annotations

import numpy as np

from lib.analysis.neighbours import nearest_in


def domain_clusters(
    real: np.ndarray,
    fake: np.ndarray,
    min_cluster_size: int = 20,
    dims: int = 10,
    one_domain: float = 0.9,
    implementation: str = "sklearn",
    seed: int = 0,
    max_points: int | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """HDBSCAN clusters of both domains together, with each cluster's composition.

    Clustering runs on the first `dims` principal components of the standardised features
    (both domains, so neither is privileged; HDBSCAN's density estimates degrade in
    hundreds of dimensions). A cluster with ≥ `one_domain` of its images from one domain
    is "real-only" (what the synthetic data misses) or "synthetic-only" (what it invents).
    With more than `max_points` images (CPU only; None: no limit), HDBSCAN is fitted on a
    random sample of that many, keeping the domains' proportions, and every other image
    takes the label of its nearest sampled image: the CPU's HDBSCAN grows faster than
    linearly, and 20k points took 4 s a level.
    Returns one label per row (real rows, then synthetic; −1 = noise) and the table.
    """
    model = DomainClusters(min_cluster_size, dims, one_domain, implementation, seed, max_points)
    model.fit(real, fake)
    return model.labels_, model.table_


class DomainClusters:
    """`domain_clusters` as an estimator: `fit(real, fake)` → `labels_`, `table_`;
    `predict(x)` labels more images (standardised like the fitted ones) with the label of
    their nearest fitted image in the principal components."""

    def __init__(
        self,
        min_cluster_size=20,
        dims=10,
        one_domain=0.9,
        implementation="sklearn",
        seed=0,
        max_points=None,
    ):
        self.min_cluster_size, self.dims, self.one_domain = min_cluster_size, dims, one_domain
        self.implementation, self.seed, self.max_points = implementation, seed, max_points

    def fit(self, real: np.ndarray, fake: np.ndarray) -> DomainClusters:
        from sklearn.decomposition import PCA

        x = np.concatenate([real, fake]).astype(np.float32)
        is_fake = np.r_[np.zeros(len(real), bool), np.ones(len(fake), bool)]
        n_components = min(self.dims, x.shape[1], len(x) - 1)
        self.pca_ = PCA(n_components=n_components, random_state=self.seed).fit(x)
        self.z_ = self.pca_.transform(x).astype(np.float32)
        self.labels_ = _cluster(
            self.z_, is_fake, self.min_cluster_size, self.implementation, self.seed, self.max_points
        )
        self.table_ = cluster_table(self.labels_, is_fake, self.one_domain)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = self.pca_.transform(np.asarray(x, dtype=np.float32)).astype(np.float32)
        return self.labels_[nearest_in(z, self.z_)]


def _cluster(z, is_fake, min_cluster_size, implementation, seed, max_points) -> np.ndarray:
    if implementation == "cuml":
        from cuml.cluster import HDBSCAN

        model = HDBSCAN(min_cluster_size=min_cluster_size)
    else:
        from sklearn.cluster import HDBSCAN

        model = HDBSCAN(min_cluster_size=min_cluster_size, copy=True)
    if implementation != "cuml" and max_points and len(z) > max_points:
        return _fit_sample_assign_rest(model, z, is_fake, max_points, seed)
    return np.asarray(model.fit_predict(z), dtype=np.int32)


def cluster_table(labels: np.ndarray, is_fake: np.ndarray, one_domain: float = 0.9) -> list:
    """Each cluster's composition and kind, the most lopsided (against the overall share
    of synthetic images) first."""
    base = float(is_fake.mean())
    table = []
    for c in np.unique(labels[labels >= 0]):
        members = labels == c
        n_fake = int(is_fake[members].sum())
        n_real = int(members.sum()) - n_fake
        share = n_fake / (n_real + n_fake)
        kind = "mixed"
        if share >= one_domain:
            kind = "synthetic-only"
        elif share <= 1 - one_domain:
            kind = "real-only"
        table.append(
            {
                "cluster": int(c),
                "real": n_real,
                "synthetic": n_fake,
                "synthetic_share": round(share, 4),
                "kind": kind,
            }
        )
    table.sort(key=lambda row: abs(row["synthetic_share"] - base), reverse=True)
    return table


def _fit_sample_assign_rest(model, z: np.ndarray, is_fake: np.ndarray, m: int, seed: int):
    rng = np.random.default_rng(seed)
    share = m / len(z)
    sample = np.sort(
        np.concatenate(
            [
                rng.choice(idx, max(1, round(len(idx) * share)), replace=False)
                for idx in (np.flatnonzero(~is_fake), np.flatnonzero(is_fake))
            ]
        )
    )
    labels = np.empty(len(z), dtype=np.int32)
    labels[sample] = model.fit_predict(z[sample])
    rest = np.setdiff1d(np.arange(len(z)), sample)
    labels[rest] = labels[sample][nearest_in(z[rest], z[sample])]
    return labels
