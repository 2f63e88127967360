"""Exact k nearest neighbours in feature space, with torch (CPU or GPU), chunked.

Distances are computed block by block so memory stays at chunk × N, and a point is never
its own neighbour. Cosine distance is 1 − cosine similarity.
"""

from __future__ import annotations

import numpy as np

from lib.errors import GapscopeError

METRICS = ("cosine", "euclidean")


def knn(
    X: np.ndarray,
    k: int = 16,
    metric: str = "cosine",
    device: str = "cpu",
    chunk: int = 4096,
    col_chunk: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) int32 indices and float32 distances of each row's k nearest other rows,
    nearest first.

    Distances are computed in blocks of `chunk` rows × `col_chunk` columns, keeping a
    running top k per row, so memory stays at chunk × col_chunk floats (1 GiB by default)
    however many rows there are: 1M × 256 fits on one GPU.
    """
    import torch

    if metric not in METRICS:
        raise GapscopeError(f"unknown neighbour metric {metric!r}: choose cosine or euclidean")
    n = len(X)
    if k < 1:
        raise GapscopeError(f"k must be at least 1, got {k}")
    k = min(k, n - 1)
    if k < 1:
        raise GapscopeError("neighbours need at least two images")
    data = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32), device=device)
    if metric == "cosine":
        data = torch.nn.functional.normalize(data, dim=1)
    sq = (data * data).sum(1)
    indices = np.empty((n, k), dtype=np.int32)
    distances = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, chunk):
        block = data[start : start + chunk]
        rows = torch.arange(start, start + len(block), device=device)
        best_d = torch.full((len(block), 0), float("inf"), device=device)
        best_i = torch.empty((len(block), 0), dtype=torch.long, device=device)
        for c0 in range(0, n, col_chunk):
            cols = data[c0 : c0 + col_chunk]
            if metric == "cosine":
                d = 1.0 - block @ cols.T
            else:  # squared here; the square root is taken of the k kept only
                d = (sq[start : start + chunk, None] - 2.0 * block @ cols.T).add_(
                    sq[None, c0 : c0 + col_chunk]
                )
            own = (rows >= c0) & (rows < c0 + len(cols))
            d[own.nonzero().squeeze(1), rows[own] - c0] = float("inf")  # never your own
            kk = min(k, len(cols))
            dist, idx = torch.topk(d, kk, dim=1, largest=False, sorted=False)
            best_d = torch.cat([best_d, dist], dim=1)
            best_i = torch.cat([best_i, idx + c0], dim=1)
            best_d, order = torch.topk(best_d, min(k, best_d.shape[1]), dim=1, largest=False)
            best_i = torch.gather(best_i, 1, order)
        if metric == "euclidean":
            best_d = best_d.clamp_min(0).sqrt()
        indices[start : start + len(block)] = best_i.cpu().numpy()
        distances[start : start + len(block)] = best_d.clamp_min(0).cpu().numpy()
    return indices, distances
