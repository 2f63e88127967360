"""Projections of feature vectors to 3 (or 2) dimensions for the overlap views.

Every projector follows the estimator convention (`fit`, `embedding_`, `transform`):
- `umap` (`UMAPProjector`): fitted on one domain, the other mapped in with `transform`
  (umap-learn on the CPU, cuML on the GPU). The fitted domain's coordinates are the fit's
  own `embedding_` (cuML's `transform` of the training data differs from it).
- `pca` (`PCAProjector`): the same, linearly: 3 principal components of one domain.
- `tsne` (`TSNEProjector`): t-SNE has no faithful out-of-sample map, so it embeds both
  domains together (`joint`; fit_on "both"), in 2D like the earlier viewer (openTSNE on the
  CPU, cuML's TSNE on the GPU, which is 2D only).
`PROJECTORS` names them; `create_projector` builds one for a backend.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass

import numpy as np

from lib.analysis.neighbours import distances_from_d2, prepared
from lib.inputs.images import sample_indices
from lib.runtime.errors import GapscopeError
from lib.runtime.memmap import map_blocks, release, row_blocks
from lib.runtime.params import check_minimums, param

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UMAPParams:
    """Defaults are the original tool's: UMAP(n_components=3, random_state=42)."""

    n_components: int = 3
    n_neighbors: int = param(15, "UMAP n_neighbors.", minimum=2)
    min_dist: float = param(0.1, "UMAP min_dist.", minimum=0)
    metric: str = param("euclidean", "UMAP metric.", flag="--umap-metric")
    random_state: int | None = param(42, "UMAP random_state.", flag="--umap-seed")
    fit_sample: int = param(
        20_000,
        "On the CPU, UMAP fits a seeded sample of at most this many points of the fitted "
        "domain (20k: 90 s on 2 cores) and places the rest (0: fit every point).",
        minimum=0,
    )
    transform_up_to: int = param(
        20_000,
        "Map at most this many points with umap-learn's transform (its refinement epochs "
        "cost ~1.4 ms a point on 2 cores); more are placed at the weighted mean of their "
        "nearest fitted points, as transform starts.",
        minimum=0,
    )

    def __post_init__(self):
        check_minimums(self)

    def as_dict(self) -> dict:
        return asdict(self)

    def estimator_kwargs(self) -> dict:
        """What UMAP itself takes (the sampling settings are gapscope's)."""
        return {
            k: v for k, v in self.as_dict().items() if k not in ("fit_sample", "transform_up_to")
        }


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


@functools.cache
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


class _Projector:
    """What the pipeline knows of any projector: its parameters (the `Params` defaults
    when none are given), the implementation it runs on ("cuml" or "cpu", lib.runtime.backend's
    choice), and its interface:

    - `check(n_fit, n_total, what)`: raise GapscopeError when there are too few points;
    - `fit(X)` → self, with `embedding_` for X; `transform(X)` for the other domain;
    - `joint`: both domains are embedded together (no transform; fit_on "both");
    - `dimensions`: 3, or 2 (z is then NaN in the stored projections);
    - `plots`: the run saves static PNGs of it (the original tool's UMAP views);
    - `blocks`: the block map that works through every row to place (lib.runtime.memmap.map_blocks
      here, lib.runtime.dask.BlockMap on Dask workers).
    """

    name: str  # in the projections table's `method` column
    label: str  # for people
    Params: type
    joint = False
    plots = False

    def __init__(self, params=None, backend: str = "cpu", blocks=None):
        self.params = params if params is not None else self.Params()
        self.backend = backend
        self.blocks = blocks or map_blocks  # where placements run (lib.runtime.memmap.map_blocks)

    @property
    def dimensions(self) -> int:
        return self.params.n_components

    def check(self, n_fit: int, n_total: int, what: str = "the fitted domain") -> None:
        """Enough points to fit? Projectors with a lower bound override this."""


class UMAPProjector(_Projector):
    name, label = "umap", "UMAP"
    Params = UMAPParams
    plots = True

    def check(self, n_fit: int, n_total: int, what: str = "the fitted domain") -> None:
        check_enough_points(n_fit, self.params, what)

    def _estimator(self):
        kwargs = self.params.estimator_kwargs()
        if self.backend == "cuml":
            from cuml.manifold import UMAP
        else:
            import warnings

            UMAP = _umap_class()
            # umap-learn warns that random_state disables parallelism: that is the point.
            warnings.filterwarnings("ignore", message=".*n_jobs value.*", category=UserWarning)
        return UMAP(**kwargs)

    def fit(self, X: np.ndarray) -> UMAPProjector:
        """Fit on X (cuML: all of it; CPU: a seeded sample of `fit_sample` points, the
        others placed); `report_` says how, with trustworthiness on a probe."""
        p = self.params
        check_enough_points(len(X), p)
        n = len(X)
        sampled = self.backend != "cuml" and 0 < p.fit_sample < n
        fit_rows = sample_indices(n, p.fit_sample, p.random_state) if sampled else slice(None)
        fitted = np.ascontiguousarray(X[fit_rows], dtype=np.float32)
        release(X)
        self.model_ = self._estimator().fit(fitted)
        self.report_ = {"fitted": n, "fit_sample": len(fitted) if sampled else n}
        if not sampled:
            self.embedding_ = np.asarray(self.model_.embedding_, dtype=np.float32)
            return self
        self._placer = KnnPlacement(fitted, self.model_, p)
        self.embedding_ = self._place_all(X, fit_rows)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The other domain in the fitted layout: umap-learn's (or cuML's) transform up to
        `transform_up_to` points, the k-nearest placement above (the fitted domain's
        unsampled points get the same)."""
        if self.backend == "cuml" or len(X) <= self.params.transform_up_to:
            # cuML on a Dask cluster of GPU workers: spread there (lib.runtime.dask.BlockMap)
            spread = getattr(self.blocks, "cuml_transform", None)
            out = spread(self.model_, X) if spread and self.backend == "cuml" else None
            self.report_["mapped_by"] = "transform" if out is None else "cuml.dask transform"
            if out is None:
                out = self.model_.transform(np.ascontiguousarray(X, dtype=np.float32))
            return np.asarray(out, dtype=np.float32)
        placer = getattr(self, "_placer", None) or KnnPlacement(
            np.asarray(self.model_._raw_data, np.float32), self.model_, self.params
        )
        self.report_.update(
            mapped_by="knn placement", probe=placer.probe(X, self.params.random_state)
        )
        return placer.place(X, blocks=self.blocks)

    def _place_all(self, X: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
        """The fit's own coordinates for the sample, placements for every other row."""
        out = np.empty((len(X), self.dimensions), dtype=np.float32)
        out[fit_rows] = self.model_.embedding_
        rest = np.setdiff1d(np.arange(len(X)), fit_rows)
        out[rest] = self._placer.place(X, rest, self.blocks)
        return out


class KnnPlacement:
    """Points placed in a fitted UMAP layout at the weighted mean of their n_neighbors
    nearest fitted points, with UMAP's own membership weights: where umap-learn's
    `transform` starts, without its refinement epochs (whose cost made 1M points take
    hours on 2 cores). Neighbours come from a FAISS HNSW graph over the fitted points.
    `probe` measures what the epochs would have changed."""

    PROBE = 1000

    def __init__(self, fitted: np.ndarray, model, params: UMAPParams):
        import faiss

        if params.metric not in ("euclidean", "l2", "cosine"):
            raise GapscopeError(
                f"placing points without umap's transform supports the euclidean and cosine "
                f"metrics, not {params.metric!r}: raise --transform-up-to or --fit-sample"
            )
        self.metric = "cosine" if params.metric == "cosine" else "euclidean"
        self.k = params.n_neighbors
        self.model = model
        self.local_connectivity = float(model.local_connectivity)
        self.embedding = np.asarray(model.embedding_, dtype=np.float32)
        self.index = faiss.IndexHNSWFlat(fitted.shape[1], 16)
        self.index.hnsw.efSearch = 64
        self.index.add(prepared(fitted, self.metric))

    def __getstate__(self) -> dict:
        # what placing needs (to Dask workers): not the UMAP model, which only the probe uses
        return {k: v for k, v in vars(self).items() if k != "model"}

    def place(self, X: np.ndarray, rows: np.ndarray | None = None, blocks=map_blocks) -> np.ndarray:
        """Coordinates of X's `rows` (all rows when None), a block at a time through the
        block map `blocks` (here, or lib.runtime.dask.BlockMap on Dask workers)."""
        rows = np.arange(len(X)) if rows is None else rows
        parts = list(blocks(self._place_block, X, row_blocks(rows)))
        if not parts:
            return np.empty((0, self.embedding.shape[1]), dtype=np.float32)
        return np.concatenate(parts)

    def _place_block(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        from umap.umap_ import smooth_knn_dist

        d2, idx = self.index.search(prepared(x, self.metric), self.k)
        dist = distances_from_d2(d2, self.metric)
        # umap-learn's transform: local_connectivity − 1, then memberships
        lc = max(0.0, self.local_connectivity - 1.0)
        sigmas, rhos = smooth_knn_dist(dist, float(self.k), local_connectivity=lc)
        w = np.exp(-np.maximum(dist - rhos[:, None], 0) / sigmas[:, None])
        w /= w.sum(axis=1, keepdims=True)
        return np.einsum("nk,nkc->nc", w, self.embedding[idx]).astype(np.float32, copy=False)

    def probe(self, X: np.ndarray, seed: int | None) -> dict:
        """Trustworthiness (sklearn, n_neighbors 15) of a seeded probe of X placed this
        way and mapped by umap-learn's full transform: what skipping the epochs costs."""
        import time

        from sklearn.manifold import trustworthiness

        rows = sample_indices(len(X), min(self.PROBE, len(X)), seed)
        points = np.ascontiguousarray(X[rows], dtype=np.float32)
        k = min(15, len(rows) // 2 - 1)
        t = time.perf_counter()
        full = np.asarray(self.model.transform(points), dtype=np.float32)
        seconds = time.perf_counter() - t
        return {
            "n": len(rows),
            "trustworthiness_placement": round(
                float(trustworthiness(points, self.place(points), n_neighbors=k)), 4
            ),
            "trustworthiness_transform": round(
                float(trustworthiness(points, full, n_neighbors=k)), 4
            ),
            "transform_seconds_per_point": round(seconds / len(rows), 5),
        }


def fit_and_map(
    fit_on: np.ndarray, other: np.ndarray, params: UMAPParams, backend: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Fit on one domain; return (its embedding, the other domain mapped into it)."""
    projector = UMAPProjector(params, backend).fit(fit_on)
    return projector.embedding_, projector.transform(other)


@dataclass(frozen=True)
class PCAParams:
    n_components: int = 3


class PCAProjector(_Projector):
    """Principal components of the fitted domain (sklearn; fast enough on any backend)."""

    name, label = "pca", "PCA"
    Params = PCAParams

    def fit(self, X: np.ndarray) -> PCAProjector:
        from sklearn.decomposition import PCA

        X = np.asarray(X, dtype=np.float32)
        n = min(self.params.n_components, X.shape[0], X.shape[1])
        self.model_ = PCA(n_components=n, svd_solver="full").fit(X)
        self.embedding_ = self.transform(X)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        out = self.model_.transform(np.asarray(X, dtype=np.float32)).astype(np.float32)
        if out.shape[1] < self.params.n_components:  # fewer dimensions than components
            pad = np.zeros((len(out), self.params.n_components - out.shape[1]), np.float32)
            out = np.hstack([out, pad])
        return out


@dataclass(frozen=True)
class TSNEParams:
    """Defaults are the earlier viewer's: 2D, perplexity 30, 1,000 iterations (250 of them
    early exaggeration), PCA initialisation, learning rate 'auto', seed 42."""

    n_components: int = 2
    perplexity: float = param(30.0, "t-SNE perplexity.", minimum=1)
    n_iter: int = 1000
    random_state: int = 42

    def __post_init__(self):
        check_minimums(self)


TSNE_CPU_MAX = 200_000  # both domains together; see README, Large datasets


def check_enough_for_tsne(n: int, params: TSNEParams) -> None:
    if n <= 3 * params.perplexity:
        raise GapscopeError(
            f"t-SNE: {n} images, but perplexity {params.perplexity:g} needs more than "
            f"{3 * params.perplexity:g}: add images or lower --perplexity"
        )


class TSNEProjector(_Projector):
    """Both domains embedded together; `fit(X).embedding_` only (no `transform`)."""

    name, label = "tsne", "t-SNE"
    Params = TSNEParams
    joint = True

    def check(self, n_fit: int, n_total: int, what: str = "both domains") -> None:
        check_enough_for_tsne(n_total, self.params)
        if self.backend != "cuml" and n_total > TSNE_CPU_MAX:
            raise GapscopeError(
                f"t-SNE of {n_total:,} points on the CPU would take hours (openTSNE, "
                f"refused above {TSNE_CPU_MAX:,}): use --projection umap or pca, --sample, "
                "or a GPU (cuML)"
            )

    def fit(self, X: np.ndarray) -> TSNEProjector:
        X = np.ascontiguousarray(X, dtype=np.float32)
        p = self.params
        check_enough_for_tsne(len(X), p)
        if self.backend == "cuml":
            from cuml.manifold import TSNE

            model = TSNE(n_components=2, perplexity=p.perplexity, random_state=p.random_state)
            self.embedding_ = np.asarray(model.fit_transform(X), dtype=np.float32)
        else:
            import openTSNE

            early = min(250, p.n_iter // 4)
            model = openTSNE.TSNE(
                n_components=p.n_components,
                perplexity=p.perplexity,
                early_exaggeration_iter=early,
                n_iter=p.n_iter - early,
                initialization="pca",
                learning_rate="auto",
                # openTSNE's auto: Barnes-Hut below 10,000 points (FFT's fixed cost made a
                # 300-point fit take 26 s instead of 0.5), FFT above; FFT is 2D only
                negative_gradient_method="auto" if p.n_components <= 2 else "bh",
                random_state=p.random_state,
                n_jobs=1,  # deterministic: openTSNE's threads make it vary run to run
            )
            self.embedding_ = np.asarray(model.fit(X), dtype=np.float32)
        return self


PROJECTORS = {"umap": UMAPProjector, "pca": PCAProjector, "tsne": TSNEProjector}


def create_projector(name: str, params=None, backend: str = "cpu", blocks=None):
    """A projector by name (`PROJECTORS`), with its default parameters unless given, its
    placements through the block map `blocks` (default: here)."""
    try:
        cls = PROJECTORS[name]
    except KeyError:
        raise GapscopeError(
            f"unknown projection {name!r}: choose from {', '.join(PROJECTORS)}"
        ) from None
    return cls(params, backend, blocks)
