"""Projections: UMAP fitted on one domain and applied to the other.

`UMAPProjector` follows the estimator convention (`fit`, `transform`, `embedding_`) over
umap-learn on the CPU and cuML on the GPU. The fitted domain's coordinates are the fit's
own `embedding_` (cuML's `transform` of the training data differs from it), the other
domain's come from `transform`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass

import numpy as np

from lib.errors import GapscopeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UMAPParams:
    """Defaults are the original tool's: UMAP(n_components=3, random_state=42)."""

    n_components: int = 3
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"
    random_state: int | None = 42

    def as_dict(self) -> dict:
        return asdict(self)


def check_enough_points(n: int, params: UMAPParams, what: str = "the fitted domain") -> None:
    if n <= params.n_neighbors:
        raise GapscopeError(
            f"{what}: {n} usable images, but UMAP needs more than n_neighbors "
            f"({params.n_neighbors}): add images or lower --n-neighbors"
        )


# Metrics sklearn's pairwise_distances computes vectorised under the same name.
_VECTORISED_METRICS = {"euclidean", "l2", "manhattan", "l1", "cityblock", "cosine"}
_EXACT_BELOW = 4096  # umap-learn computes all distances below this many points


@functools.cache
def _cache_umap_compilation() -> int:
    """Turn numba's disk cache on for umap-learn's functions compiled without it.

    A dozen of them (fast_knn_indices, smooth_knn_dist, submatrix, ...) lack `cache=True`,
    so every fresh process compiled them again: 12 s of the first fit. With the cache
    (NUMBA_CACHE_DIR, set by the Makefile) only a machine's first run pays. Returns how many
    were switched; a numba without these internals just keeps compiling.
    """
    import umap.layouts
    import umap.spectral
    import umap.umap_
    import umap.utils

    try:
        from numba.core.caching import NullCache
        from numba.core.dispatcher import Dispatcher
    except ImportError:
        return 0
    switched = 0
    for module in (umap.umap_, umap.utils, umap.layouts, umap.spectral):
        for fn in vars(module).values():
            if isinstance(fn, Dispatcher) and isinstance(getattr(fn, "_cache", None), NullCache):
                fn.enable_caching()
                switched += 1
    return switched


def _umap_class():
    """umap-learn's UMAP, with its small-data path vectorised.

    Below 4,096 points umap-learn computes every distance exactly with sklearn's
    `pairwise_distances`, but passes it umap's numba distance function, which sklearn calls
    from Python once per pair: 11 of the 13 s of fitting 1,800 points and mapping 1,000 more.
    Handing sklearn the metric's name computes the same distances vectorised. Larger sets
    (nearest-neighbour descent) and other metrics are left exactly as umap-learn does them.
    """
    from umap import UMAP

    _cache_umap_compilation()

    class VectorisedUMAP(UMAP):
        def fit(self, X, y=None, **kwargs):
            self._by_name = np.shape(X)[0] < _EXACT_BELOW and not self.force_approximation_algorithm
            return super().fit(X, y, **kwargs)

        def _validate_parameters(self):
            super()._validate_parameters()
            if (
                getattr(self, "_by_name", False)
                and self.metric in _VECTORISED_METRICS
                and not self._sparse_data
            ):
                self._input_distance_func = self.metric

    return VectorisedUMAP


class UMAPProjector:
    def __init__(self, params: UMAPParams = UMAPParams(), backend: str = "cpu"):
        self.params = params
        self.backend = backend

    def _estimator(self):
        kwargs = self.params.as_dict()
        if self.backend == "cuml":
            from cuml.manifold import UMAP
        else:
            import warnings

            UMAP = _umap_class()
            # umap-learn warns that random_state disables parallelism: that is the point.
            warnings.filterwarnings("ignore", message=".*n_jobs value.*", category=UserWarning)
        return UMAP(**kwargs)

    def fit(self, X: np.ndarray) -> UMAPProjector:
        check_enough_points(len(X), self.params)
        self.model_ = self._estimator().fit(np.ascontiguousarray(X, dtype=np.float32))
        self.embedding_ = np.asarray(self.model_.embedding_, dtype=np.float32)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        out = self.model_.transform(np.ascontiguousarray(X, dtype=np.float32))
        return np.asarray(out, dtype=np.float32)


def fit_and_map(
    fit_on: np.ndarray, other: np.ndarray, params: UMAPParams, backend: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Fit on one domain; return (its embedding, the other domain mapped into it)."""
    projector = UMAPProjector(params, backend).fit(fit_on)
    return projector.embedding_, projector.transform(other)
