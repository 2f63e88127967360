"""Retrieval evaluation: do a query set's images find images of their own label in a
gallery set, level by level? (`python -m batch evaluate retrieval`)

The definitions are the ones the tools gapscope replaces used, written out here so they
can be checked by hand (tests/test_retrieval.py):

- neighbours: each query's k nearest gallery images by the run's metric, never itself
  (when query and gallery share images); equal distances are ordered by gallery row, so
  ties always resolve the same way;
- pass (snap-vision): the query's label is among its k nearest (k = 5); also the share of
  queries right at each rank (per-rank accuracy, ranks 1..10);
- recall@k for k = 1, 5, 10: the share of queries with at least one right neighbour among
  their k nearest (what metric-learning papers call Recall@k);
- mAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check"): R is the number of
  gallery images with the query's label (itself excluded); AP@R = (1/R) Σ_{i≤R} P(i)·rel(i)
  over the R nearest; R is capped at `R_CAP` neighbours;
- a query with no image of its label in the gallery can only fail: it counts in the pass
  and recall rates, is left out of mAP@R, and is reported (`no_match`).

Sets are named as `--query`/`--gallery` take them: `real`, `synthetic`, `all`,
`tag:NAME` (images users tagged NAME in the demo), `split:NAME` (images whose
metadata.csv `split` column says NAME: a dataset's own held-out split), and either of the
last two within a domain, `real/split:test` or `synthetic/tag:odd`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lib.analysis.gap.records import mean_ci, record, wilson
from lib.analysis.neighbours import METRIC, prepared
from lib.inputs.images import METADATA_PREFIX, sample_indices
from lib.runtime.errors import GapscopeError
from lib.runtime.memmap import read_rows
from lib.runtime.params import check_minimums, param

UNLABELLED = ""  # an image's label when it has none: never right, never counted in R
RANKS = 10  # per-rank accuracy and neighbours kept per query
RECALL_AT = (1, 5, 10)
R_CAP = 1000  # mAP@R looks at most this many neighbours deep
QUERY_BLOCK = 512
GALLERY_CELLS = 2**25  # query × gallery distances held at once (256 MiB in float64)


@dataclass
class Retrieved:
    """Each query's neighbours in the gallery, nearest first (gallery positions; −1 where
    the gallery has fewer), and the labels to judge them by."""

    neighbours: np.ndarray  # (n_queries, depth) int64
    distances: np.ndarray  # (n_queries, depth) float32
    right: np.ndarray  # (n_queries, depth) bool: the neighbour has the query's label
    same_label: np.ndarray  # (n_queries,) R: gallery images with the query's label


def retrieve(
    queries: np.ndarray,
    gallery: np.ndarray,
    query_labels,
    gallery_labels,
    metric: str = METRIC,
    same: np.ndarray | None = None,
    depth: int | None = None,
) -> Retrieved:
    """Exact neighbours of every query among `gallery` (read a block of queries at a
    time). `same[i]`: the gallery position of query i itself (−1: not in the gallery), never
    its own neighbour. `depth`: neighbours kept (default: enough for mAP@R, ≤ R_CAP)."""

    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    same = np.full(len(queries), -1) if same is None else np.asarray(same)
    kinds, counts = np.unique(gallery_labels, return_counts=True)
    per_label = dict(zip(kinds.tolist(), counts.tolist(), strict=True))
    per_label.pop(UNLABELLED, None)  # an image without a label is nobody's match
    r = np.array([per_label.get(y, 0) for y in query_labels.tolist()]) - (same >= 0)
    r = np.maximum(r, 0)
    depth = min(depth or max(RANKS, min(int(r.max(initial=0)), R_CAP)), len(gallery))
    g = prepared(np.asarray(gallery, dtype=np.float32), metric)  # float32: 4 bytes a value
    g2 = (g.astype(np.float64) ** 2).sum(1)
    neighbours = np.full((len(queries), depth), -1, dtype=np.int64)
    distances = np.full((len(queries), depth), np.inf, dtype=np.float32)
    block = max(1, min(QUERY_BLOCK, GALLERY_CELLS // max(1, len(gallery))))  # bounded memory
    for s in range(0, len(queries), block):
        q = prepared(np.asarray(queries[s : s + block], dtype=np.float32), metric)
        q2 = (q.astype(np.float64) ** 2).sum(1)
        d2 = np.maximum(q2[:, None] - 2 * (q @ g.T).astype(np.float64) + g2[None, :], 0)
        own = same[s : s + len(q)]
        d2[np.flatnonzero(own >= 0), own[own >= 0]] = np.inf
        for j, row in enumerate(d2):
            nearest = _nearest_first(row, depth)
            neighbours[s + j, : len(nearest)] = nearest
            distances[s + j, : len(nearest)] = np.sqrt(row[nearest])
    found = neighbours >= 0
    theirs = gallery_labels[np.maximum(neighbours, 0)]
    right = found & (theirs == query_labels[:, None]) & (theirs != UNLABELLED)
    return Retrieved(neighbours, distances, right, r)


def _nearest_first(d2: np.ndarray, depth: int) -> np.ndarray:
    """The `depth` smallest finite entries' positions, by value then position: every entry
    tied with the last one kept is a candidate, so ties resolve by position."""
    finite = np.isfinite(d2).sum()
    depth = min(depth, int(finite))
    if depth == 0:
        return np.empty(0, dtype=np.int64)
    last = np.partition(d2, depth - 1)[depth - 1]
    candidates = np.flatnonzero(d2 <= last)
    order = np.lexsort((candidates, d2[candidates]))
    return candidates[order][:depth]


def scores(found: Retrieved, k: int = 5) -> tuple[dict, dict[str, np.ndarray]]:
    """The metrics (each in lib.analysis.gap.records' shape) and per-query columns."""
    right, r = found.right, found.same_label
    n = len(right)
    matched = r > 0
    passed = right[:, :k].any(axis=1)
    ap = np.full(n, np.nan)
    for i in np.flatnonzero(matched):
        depth = min(int(r[i]), R_CAP, right.shape[1])
        hits = right[i, :depth]
        precision_at = np.cumsum(hits) / np.arange(1, depth + 1)
        ap[i] = float((precision_at * hits).sum() / min(int(r[i]), R_CAP))
    per_rank = right[:, :RANKS].mean(axis=0) if n else np.zeros(0)
    metrics = {
        "n": n,
        "k": k,
        "no_match": int((~matched).sum()),
        "pass": record(passed.mean() if n else 0.0, wilson(int(passed.sum()), n), n),
        "recall_at": {
            str(j): record(
                right[:, :j].any(axis=1).mean() if n else 0.0,
                wilson(int(right[:, :j].any(axis=1).sum()), n),
                n,
            )
            for j in RECALL_AT
        },
        "map_at_r": record(
            np.nanmean(ap) if matched.any() else 0.0,
            mean_ci(ap[matched]) if matched.sum() > 1 else None,
            int(matched.sum()),
        ),
        "per_rank_accuracy": [float(v) for v in per_rank],
    }
    return metrics, {"pass": passed, "ap_at_r": ap, "same_label": r}


SPLIT_COLUMN = METADATA_PREFIX + "split"  # metadata.csv's `split` column, as the run keeps it
SETS = "real, synthetic, all, tag:NAME, split:NAME, or DOMAIN/tag:NAME or DOMAIN/split:NAME"


def resolve_set(spec: str, images, results=None) -> np.ndarray:
    """The run's rows a set names (module docstring); tags are read from the annotations
    in `results`."""
    domain, _, kind = spec.rpartition("/")
    if domain not in ("", "real", "synthetic") or (domain and kind in ("real", "synthetic")):
        raise GapscopeError(f"unknown set {spec!r}: name {SETS}")
    if kind in ("real", "synthetic"):
        keep = images["domain"].to_numpy() == kind
    elif kind == "all":
        keep = np.ones(len(images), bool)
    elif kind.startswith("tag:") and kind[4:].strip():
        from lib.store.annotations import Annotations

        tagged = Annotations.of(results).tagged(kind[4:].strip())
        keys = zip(images["hash"].tolist(), images["relpath"].tolist(), strict=True)
        keep = np.array([key in tagged for key in keys], dtype=bool)
    elif kind.startswith("split:") and kind[6:].strip():
        if SPLIT_COLUMN not in images.columns:
            raise GapscopeError(
                f"the set {spec!r}: this run's images have no split (a `split` column in "
                "their metadata.csv, e.g. train / val / test)"
            )
        keep = images[SPLIT_COLUMN].fillna("").astype(str).to_numpy() == kind[6:].strip()
    else:
        raise GapscopeError(f"unknown set {spec!r}: name {SETS}")
    if domain:
        keep &= images["domain"].to_numpy() == domain
    rows = np.flatnonzero(keep).astype(np.int64)
    if len(rows) == 0:
        raise GapscopeError(f"the set {spec!r} holds no images of this run")
    return rows


# ---- the job: a run's levels, published in a derived run ---------------------------------


@dataclass
class RetrievalJob:
    """A retrieval evaluation's settings; every field is also an option of `batch
    evaluate retrieval`."""

    query: str = param(
        "synthetic",
        "Query set: real, synthetic, all, tag:NAME, split:NAME "
        "(metadata.csv's split column), or DOMAIN/tag:NAME, DOMAIN/split:NAME.",
    )
    gallery: str = param("real", "Gallery set, named as the query set.")
    k: int = param(
        5, "A query passes when its label is among its k nearest.", flag="--k", minimum=1
    )
    levels: list[str] = param([], "Level to evaluate, repeatable (default: all).", flag="--level")
    query_sample: int = param(
        10_000,
        "Evaluate a seeded sample of at most this many queries (exact search).",
        minimum=1,
    )
    seed: int = param(0, "Seed of the query sample.", minimum=0)
    labels_from_annotations: bool = param(
        False, "Judge by the labels users corrected (results/annotations.sqlite)."
    )
    run_id: str | None = param(None, "Base run (default: latest).", flag="--run")

    def __post_init__(self):
        check_minimums(self)

    @property
    def name(self) -> str:
        """The evaluation's folder in the run, e.g. synthetic-vs-real."""
        return f"{self.query}-vs-{self.gallery}".replace(":", "-").replace("/", "-")


def evaluate(run, job: RetrievalJob) -> tuple[dict, dict]:
    """(results, per-query tables by level) of one run's retrieval from query to gallery."""
    unknown = [lv for lv in job.levels if lv not in run.levels]
    if unknown:
        raise GapscopeError(
            f"--level {unknown[0]}: run {run.id} has no such level ({', '.join(run.levels)})"
        )
    labels = _labels(run, job.labels_from_annotations)
    query, gallery, unlabelled = _query_and_gallery(run, job, labels)
    position = np.full(len(run.rows), -1)
    position[gallery] = np.arange(len(gallery))
    metric = run.manifest["config"].get("metric", "cosine")
    results = {
        "query": job.query,
        "gallery": job.gallery,
        "k": job.k,
        "metric": metric,
        "labels": "corrected" if job.labels_from_annotations else "category",
        "n_query": len(query),
        "n_gallery": len(gallery),
        "unlabelled": unlabelled,
        "levels": {},
    }
    tables = {}
    for level in job.levels or run.levels:
        X = run.features(level)
        found = retrieve(
            read_rows(X, query),
            read_rows(X, gallery),
            labels[query],
            labels[gallery],
            metric,
            same=position[query],
        )
        results["levels"][level], per_query = scores(found, job.k)
        tables[level] = _per_query_table(found, query, gallery, labels, per_query)
    return results, tables


def _query_and_gallery(run, job: RetrievalJob, labels: np.ndarray):
    """(query rows: labelled, sampled; gallery rows; how many query images had no label)."""
    query, gallery = (resolve_set(s, run.rows, run.results) for s in (job.query, job.gallery))
    unlabelled = int((labels[query] == UNLABELLED).sum())
    query = query[labels[query] != UNLABELLED]  # nothing to judge them by
    if len(query) == 0:
        raise GapscopeError(
            f"none of the {job.query} images has a label (category): nothing to judge "
            "retrieval by (give metadata.csv or class folders)"
        )
    query = query[sample_indices(len(query), job.query_sample, job.seed)]
    if (labels[gallery] == UNLABELLED).all():
        raise GapscopeError(
            "the gallery's images have no labels (categories): nothing to "
            "judge retrieval by (give metadata.csv or class folders)"
        )
    return query, gallery, unlabelled


def _per_query_table(found, query, gallery, labels, per_query: dict):
    """One row per query: its scores and its first RANKS neighbours with their labels."""
    import pandas as pd

    kept = found.neighbours[:, :RANKS]
    return pd.DataFrame(
        {
            "query": query,
            "label": labels[query],
            **per_query,
            "neighbours": [gallery[row[row >= 0]].tolist() for row in kept],
            "neighbour_labels": [labels[gallery[row[row >= 0]]].tolist() for row in kept],
            "right": [
                r[: (row >= 0).sum()].tolist() for r, row in zip(found.right, kept, strict=True)
            ],
        }
    )


def _labels(run, corrected: bool) -> np.ndarray:
    labels = run.rows["category"].fillna("").astype(str).to_numpy()
    if corrected:
        from lib.store.annotations import Annotations

        fixed = {(k.hash, k.relpath): v[1] for k, v in Annotations.of(run.results).labels().items()}
        keys = zip(run.rows["hash"].tolist(), run.rows["relpath"].tolist(), strict=True)
        labels = np.array([fixed.get(key, old) for key, old in zip(keys, labels, strict=True)])
    return labels


def run_retrieval(job: RetrievalJob, store) -> object:
    """Evaluate, then publish the results in a run derived from the base run (earlier
    evaluations of other sets are kept; one of the same sets is replaced)."""
    base = store.open(job.run_id)
    results, tables = evaluate(base, job)
    results["base_run"] = base.id
    with store.writing(derive_from=base) as writer:
        writer.retrieval(job.name, results, tables)
        writer.manifest({**base.manifest, "derived_from": base.id}, schema=base.schema)
    return writer.published
