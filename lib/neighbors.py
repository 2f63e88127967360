"""Exact k nearest neighbours in feature space, with torch (CPU or GPU), chunked.

Distances are computed block by block so memory stays at chunk × N, and a point is never
its own neighbour. Cosine distance is 1 − cosine similarity.
"""

from __future__ import annotations

import numpy as np

from lib.errors import GapscopeError

METRICS = ("cosine", "euclidean")


def knn(
    X: np.ndarray, k: int = 16, metric: str = "cosine", device: str = "cpu", chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) int32 indices and float32 distances of each row's k nearest other rows,
    nearest first."""
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
        if metric == "cosine":
            d = 1.0 - block @ data.T
        else:
            d = (sq[start : start + chunk, None] - 2.0 * block @ data.T + sq[None, :]).clamp_min_(0)
        rows = torch.arange(start, start + len(block), device=device)
        d[rows - start, rows] = float("inf")  # never your own neighbour
        dist, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
        if metric == "euclidean":
            dist = dist.sqrt()
        indices[start : start + len(block)] = idx.cpu().numpy()
        distances[start : start + len(block)] = dist.clamp_min(0).cpu().numpy()
    return indices, distances
