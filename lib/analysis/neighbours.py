"""k nearest neighbours in feature space: exact (torch on the CPU or a GPU, or FAISS's
flat index) up to `EXACT_UP_TO` rows on the CPU, approximate (FAISS HNSW) above it.

A point is never its own neighbour. Cosine distance is 1 − cosine similarity.

Engines (`engine=`): `torch` computes distances block by block so memory stays bounded
however many rows there are; `faiss` is FAISS's exact flat index, 2.5–5× faster than
torch on the CPU (2 cores: 100k × 256 in 28 s vs 69 s; 20k in 1.4 s vs 7 s); `hnsw` is
FAISS's HNSW graph, whose cost grows as N log N where exact search grows as N² (1M × 256
on 2 cores: M 16 built in 106 s, recall@16 0.98 at efSearch 64; exact would take hours).
`auto` takes FAISS for CPU sets of at least `FAISS_FROM` rows, HNSW above `EXACT_UP_TO`,
torch (exact) on a GPU at any size. Every approximate search measures its recall@k
against exact search on a seeded probe of `PROBE` rows (`knn_report`) and widens its
search (efSearch) until the probe reaches `TARGET_RECALL`.
"""

from __future__ import annotations

import importlib.util
from functools import partial

import numpy as np

from lib.inputs.images import sample_indices
from lib.runtime.errors import GapscopeError
from lib.runtime.memmap import map_blocks, release, row_blocks

K = 16  # nearest neighbours per image (`batch run --k`)
METRIC = "cosine"  # the neighbour distance (`batch run --metric`)

METRICS = ("cosine", "euclidean")
ENGINES = ("auto", "torch", "faiss", "hnsw")
FAISS_FROM = 10_000  # below this both take about a second: keep one path for small sets
EXACT_UP_TO = 200_000  # exact flat search: 28 s at 100k, ~2 min at 200k on 2 cores
HNSW_M = 32  # graph degree: at 400k cosine, recall@16 0.99 at efSearch 32 vs 0.96 for M 16
TARGET_RECALL = 0.95
PROBE = 1000  # rows whose exact neighbours check the approximate ones
# widened in this order until the probe reaches the target; the search time grows about
# linearly with it (2M points on 2 cores: ~5 min at 32), so it stops at 128 and the run
# records the recall reached
EF_SEARCH = (32, 64, 128)
BLOCK = 65_536  # rows per add/search call: memory-mapped features are read a block at a time


def choose_engine(n: int, device: str = "cpu", engine: str = "auto") -> str:
    """The engine `knn` uses for n rows on `device`."""
    if engine not in ENGINES:
        raise GapscopeError(f"unknown kNN engine {engine!r}: choose {', '.join(ENGINES)}")
    has_faiss = importlib.util.find_spec("faiss") is not None
    if engine in ("faiss", "hnsw"):
        if not has_faiss:
            raise GapscopeError(f"the {engine} kNN engine needs `pip install faiss-cpu`")
        if not device.startswith("cpu"):
            raise GapscopeError(f"the {engine} kNN engine runs on the CPU: use torch on a GPU")
        return engine
    if engine == "auto" and has_faiss and device.startswith("cpu"):
        if n > EXACT_UP_TO:
            return "hnsw"
        if n >= FAISS_FROM:
            return "faiss"
    return "torch"


def exact_engine(engine: str) -> str:
    """`engine`, or FAISS's exact index in place of HNSW: for metrics that must be exact
    on the (sub)samples they run on."""
    return "faiss" if engine == "hnsw" else engine


def knn(
    X: np.ndarray,
    k: int = K,
    metric: str = METRIC,
    device: str = "cpu",
    chunk: int = 4096,
    col_chunk: int = 65536,
    engine: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) int32 indices and float32 distances of each row's k nearest other rows,
    nearest first.

    With torch, distances are computed in blocks of `chunk` rows × `col_chunk` columns,
    keeping a running top k per row, so memory stays at chunk × col_chunk floats (1 GiB by
    default) however many rows there are: 1M × 256 fits on one GPU.
    """
    return knn_report(X, k, metric, device, chunk, col_chunk, engine)[:2]


def knn_report(
    X: np.ndarray,
    k: int = K,
    metric: str = METRIC,
    device: str = "cpu",
    chunk: int = 4096,
    col_chunk: int = 65536,
    engine: str = "auto",
    seed: int = 0,
    search=None,
    exact=None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """`knn`, plus what was done: {"engine", "exact"} and, for an approximate search,
    its measured recall@k on a seeded probe and the search settings. `search(index, X, k,
    metric)` runs an approximate search's queries of every row elsewhere (lib.runtime.dask:
    on Dask workers); the same (indices, distances) as here. `exact(X, k, metric)` may
    take a GPU's exact search elsewhere (cuML on Dask's GPU workers), None: done here."""
    if metric not in METRICS:
        raise GapscopeError(f"unknown neighbour metric {metric!r}: choose cosine or euclidean")
    n = len(X)
    if k < 1:
        raise GapscopeError(f"k must be at least 1, got {k}")
    k = min(k, n - 1)
    if k < 1:
        raise GapscopeError("neighbours need at least two images")
    chosen = choose_engine(n, device, engine)
    if chosen == "hnsw":
        return _knn_hnsw(X, k, metric, seed, search)
    if chosen == "faiss":
        return (*_knn_faiss(X, k, metric), {"engine": "faiss", "exact": True})
    found = exact(X, k, metric) if exact is not None else None
    if found is not None:
        return (*found, {"engine": "cuml.dask", "exact": True})
    return (
        *_knn_torch(X, k, metric, device, chunk, col_chunk),
        {"engine": "torch", "exact": True},
    )


def distance_blocks(x: np.ndarray, y: np.ndarray, device: str = "cpu", chunk: int = 2048):
    """Yield (start, euclidean distances of rows start.. of x to every row of y) as float32
    tensors on `device`, `chunk` rows of x at a time, so no len(x) × len(y) matrix is
    ever held: what the gap metrics' ball tests need beside the k-NN tables."""
    import torch

    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)
    yt = torch.as_tensor(np.ascontiguousarray(y, dtype=np.float32), device=device)
    yy = (yt * yt).sum(1)
    for s in range(0, len(xt), chunk):
        xb = xt[s : s + chunk]
        d2 = (xb * xb).sum(1)[:, None] - 2.0 * xb @ yt.T + yy[None, :]
        yield s, d2.clamp_min_(0).sqrt_()


def nearest_among(
    X: np.ndarray, row: int, candidates: np.ndarray, k: int, metric: str = METRIC
) -> tuple[np.ndarray, np.ndarray]:
    """Exact (indices, distances) of the k rows of `candidates` nearest to X[row] (never
    itself), nearest first: one query, so X is read a block at a time and no index is
    built (the demo's gallery filtered to one domain: 0.14 s over 1M × 256 on 2 cores)."""
    query = prepared(X[row : row + 1], metric)[0]
    ids, d2 = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    for s in range(0, len(candidates), BLOCK):
        block = np.asarray(candidates[s : s + BLOCK], dtype=np.int64)
        contiguous = block[-1] - block[0] == len(block) - 1  # a domain's rows: a slice
        rows = np.asarray(X[block[0] : block[-1] + 1] if contiguous else X[block], np.float32)
        dots, sq = rows @ query, np.einsum("ij,ij->i", rows, rows)
        if metric == "cosine":  # ‖a/|a| − q‖² for unit q, without normalising the block
            block_d2 = 2 - 2 * dots / np.sqrt(np.maximum(sq, 1e-24))
        else:
            block_d2 = sq - 2 * dots + query @ query
        block_d2[block == row] = np.inf
        ids, d2 = np.concatenate([ids, block]), np.concatenate([d2, block_d2])
        if len(ids) > k:
            keep = np.argpartition(d2, k)[:k]
            ids, d2 = ids[keep], d2[keep]
        release(X)
    order = np.argsort(d2, kind="stable")
    ids, d2 = ids[order], d2[order]
    finite = np.isfinite(d2)
    return ids[finite], distances_from_d2(d2[finite], metric)


def nearest_in(queries: np.ndarray, base: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Index of each query's nearest row of `base` (euclidean), in bounded memory (torch's
    blocks wrote a 2,048 × len(base) matrix per step: at 2M queries into 40k points, 12
    minutes of a 1M + 1M run; FAISS's flat index takes seconds)."""
    return _nearest_rows(queries, base, 1, device)[1][:, 0]


def distances_to_nearest(
    queries: np.ndarray, base: np.ndarray, k: int, device: str = "cpu"
) -> np.ndarray:
    """(n, k) euclidean distances from each query to its k nearest rows of `base`,
    nearest first (queries are not in base)."""
    return _nearest_rows(queries, base, k, device)[0]


def nearest_rows(
    queries: np.ndarray, base: np.ndarray, k: int, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) indices into `base` and euclidean distances of each query's k nearest rows
    of `base`, nearest first (queries are not in base)."""
    distances, found = _nearest_rows(queries, base, k, device)
    return found, distances


def _nearest_rows(queries, base, k: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices) of each query's k nearest rows of `base`, euclidean: FAISS's
    flat index on the CPU (2.5× torch's blocks there), torch's blocks on a GPU."""
    if device.startswith("cpu") and importlib.util.find_spec("faiss") is not None:
        import faiss

        index = faiss.IndexFlatL2(base.shape[1])
        index.add(np.ascontiguousarray(base, dtype=np.float32))
        d2, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return distances_from_d2(d2, "euclidean"), found
    distances = np.empty((len(queries), k), dtype=np.float32)
    found = np.empty((len(queries), k), dtype=np.int64)
    for s, d in distance_blocks(queries, base, device):
        top = d.topk(k, dim=1, largest=False)
        distances[s : s + len(d)] = top.values.cpu().numpy()
        found[s : s + len(d)] = top.indices.cpu().numpy()
    return distances, found


def _knn_faiss(X: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatL2(X.shape[1])
    _add_blocks(index, X, metric)
    return _search_blocks(index, X, k, metric, np.arange(len(X)))


def prepared(block: np.ndarray, metric: str) -> np.ndarray:
    """float32 rows as FAISS's L2 indexes take them: unit length for cosine (whose
    distance is then ‖a − b‖² / 2, see `distances_from_d2`)."""
    data = np.ascontiguousarray(block, dtype=np.float32)
    if metric == "cosine":
        data = data / np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)
    return data


def distances_from_d2(d2: np.ndarray, metric: str) -> np.ndarray:
    """The metric's distances from the squared L2 distances FAISS returns for `prepared`
    rows (clipped at 0: float error makes a point's distance to itself −1e-7)."""
    d2 = np.maximum(d2, 0)
    return (d2 / 2 if metric == "cosine" else np.sqrt(d2)).astype(np.float32, copy=False)


def _add_blocks(index, X: np.ndarray, metric: str) -> None:
    for s in range(0, len(X), BLOCK):
        index.add(prepared(X[s : s + BLOCK], metric))
        release(X)


def _prepared_whole(X: np.ndarray, metric: str) -> np.ndarray:
    """All of X prepared in one array, read a block at a time: an HNSW graph must be built
    by a single `add`. faiss 1.15 builds a poor graph from several adds (recall@16 at ef
    32–128 fell to 0.57 at 2M in 31 adds and 0.75 at 200k in 4, against 0.99 and 0.998 in
    one add, on the same vectors). Costs a second copy of X while FAISS copies it in."""
    out = np.empty(X.shape, dtype=np.float32)
    for s in range(0, len(X), BLOCK):
        out[s : s + BLOCK] = prepared(X[s : s + BLOCK], metric)
        release(X)
    return out


def _search_blocks(index, X, k: int, metric: str, rows: np.ndarray):
    """Each of `rows`' k nearest other rows, a block at a time."""
    return join_searches(
        list(map_blocks(partial(search_rows, index, k, metric), X, row_blocks(rows))), k
    )


def search_rows(index, k: int, metric: str, rows: np.ndarray, x: np.ndarray):
    """(indices, distances) of the k nearest other rows of the rows `rows` (whose vectors
    are `x`): k + 1 are searched and the row itself dropped (a row whose duplicates crowded
    itself out simply loses its last candidate)."""
    d2, found = index.search(prepared(x, metric), k + 1)
    order = others_first(found, rows, k)
    indices = np.take_along_axis(found, order, axis=1).astype(np.int32)
    return indices, distances_from_d2(np.take_along_axis(d2, order, axis=1), metric)


def others_first(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Column order keeping k of each row's k + 1 `found` neighbours: its own index moved
    to the end (stable, so the rest keep their order) and dropped."""
    return np.argsort(found == rows[:, None], axis=1, kind="stable")[:, :k]


def join_searches(parts: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The blocks' (indices, distances) as one pair of (N, k) int32 and float32 arrays."""
    if not parts:
        return np.empty((0, k), np.int32), np.empty((0, k), np.float32)
    return (
        np.concatenate([p[0] for p in parts]).astype(np.int32, copy=False),
        np.concatenate([p[1] for p in parts]).astype(np.float32, copy=False),
    )


def pair_distances(X: np.ndarray, indices: np.ndarray, metric: str, device: str = "cpu"):
    """(N, k) float32 distances of each row of X to its rows `indices`, the metric's
    distances as this module defines them (for neighbours another engine found)."""
    import torch

    data = torch.empty(X.shape, dtype=torch.float32, device=device)  # one copy, on the device
    for b in row_blocks(len(X)):
        data[b[0] : b[-1] + 1] = torch.as_tensor(prepared(X[b[0] : b[-1] + 1], metric))
    found = torch.as_tensor(indices, device=device, dtype=torch.long)
    d2 = np.empty(indices.shape, np.float32)
    for b in row_blocks(len(X)):
        rows = torch.as_tensor(b, device=device)
        d2[b] = ((data[found[rows]] - data[rows][:, None, :]) ** 2).sum(-1).cpu().numpy()
    release(X)
    return distances_from_d2(d2, metric)


def search_all(index, X: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Every row's k nearest other rows from a built index, a block at a time."""
    return _search_blocks(index, X, k, metric, np.arange(len(X)))


def _knn_hnsw(X: np.ndarray, k: int, metric: str, seed: int, search=None):
    """Approximate neighbours from an HNSW graph, searched as widely as the probe needs
    to reach TARGET_RECALL against exact search (or as widely as EF_SEARCH allows)."""
    import faiss

    n = len(X)
    index = faiss.IndexHNSWFlat(X.shape[1], HNSW_M)
    index.add(_prepared_whole(X, metric))  # one call: see _prepared_whole
    probe = sample_indices(n, PROBE, seed)
    truth = _exact_for(X, probe, k, metric)
    for ef in EF_SEARCH:
        index.hnsw.efSearch = max(ef, k + 1)
        found = _search_blocks(index, X, k, metric, probe)[0]
        recall = recall_at_k(found, truth)
        if recall >= TARGET_RECALL:
            break
    indices, distances = (search or search_all)(index, X, k, metric)
    report = {
        "engine": "hnsw",
        "exact": False,
        "recall_at_k": round(recall, 4),
        "k": k,
        "probe": len(probe),
        "target": TARGET_RECALL,
        "hnsw_m": HNSW_M,
        "ef_search": int(index.hnsw.efSearch),
        "seed": seed,
    }
    return indices, distances, report


def _exact_for(X: np.ndarray, rows: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Exact k nearest other rows of X for a few `rows`, reading X a block at a time (no
    second copy of X, unlike a flat index)."""
    import torch

    queries = torch.as_tensor(prepared(X[rows], metric))
    best_d = torch.full((len(rows), 0), float("inf"))
    best_i = torch.empty((len(rows), 0), dtype=torch.long)
    for s in range(0, len(X), BLOCK):
        block = torch.as_tensor(prepared(X[s : s + BLOCK], metric))
        d = torch.cdist(queries, block)
        own = (torch.as_tensor(rows) >= s) & (torch.as_tensor(rows) < s + len(block))
        d[own.nonzero().squeeze(1), torch.as_tensor(rows)[own] - s] = float("inf")
        dist, idx = torch.topk(d, min(k, len(block)), dim=1, largest=False)
        best_d, order = torch.topk(torch.cat([best_d, dist], 1), k, dim=1, largest=False)
        best_i = torch.gather(torch.cat([best_i, idx + s], 1), 1, order)
        release(X)
    return best_i.numpy().astype(np.int32)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true k nearest neighbours that were found, over all rows."""
    hits = sum(
        len(np.intersect1d(f, t, assume_unique=True)) for f, t in zip(found, truth, strict=True)
    )
    return hits / truth.size


def _knn_torch(X, k, metric, device, chunk, col_chunk) -> tuple[np.ndarray, np.ndarray]:
    import torch

    n = len(X)
    data = torch.as_tensor(np.require(X, np.float32, ["C", "W"]), device=device)  # W: memmaps
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
