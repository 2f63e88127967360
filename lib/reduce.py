"""Projections: UMAP fitted on one domain and applied to the other.

`UMAPProjector` follows the estimator convention (`fit`, `transform`, `embedding_`) over
umap-learn on the CPU and cuML on the GPU. The fitted domain's coordinates are the fit's
own `embedding_` (cuML's `transform` of the training data differs from it), the other
domain's come from `transform`.
"""

from __future__ import annotations

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

            from umap import UMAP

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
