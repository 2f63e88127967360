"""How many threads each stage's numeric libraries may use, chosen per stage.

BLAS (numpy, scipy) and OpenMP (scikit-learn's gradient boosting, its neighbour
reductions, HDBSCAN; torch's CPU kernels) each start one thread per core by default. On a
shared machine those threads wait for cores other jobs hold, and a stage made of many
small fits pays that wait at every fit: on a busy 2-core machine one gradient-boosting
fit of the attribution took 5.1 s with OpenMP's two threads and 0.13 s with one, and the
gap stage of a cached 200 + 200 rerun 3–4 s against 0.35 s — the results identical.

The rule (`make bench` section `threads` measures it, quiet and busy):
- the stages made of many small fits and solves — `gap`, `strata`, `attribution` — run
  BLAS and OpenMP on one thread: their pieces are too small to split, and one thread
  never waits for a busy core;
- the stages with large kernels — extraction (torch convolutions), projection (UMAP,
  PCA), neighbours (FAISS or a k-NN search over all images) — keep every core.
A stage not named here keeps the libraries' defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

ONE_THREAD = frozenset({"gap", "strata", "attribution"})


def threads_for(stage: str) -> int | None:
    """BLAS and OpenMP threads for `stage` (None: the libraries' defaults)."""
    return 1 if stage in ONE_THREAD else None


@contextmanager
def stage_threads(stage: str) -> Iterator[None]:
    """Run the block with `stage`'s thread counts (threadpoolctl: BLAS and OpenMP)."""
    limit = threads_for(stage)
    if limit is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit):
        yield
