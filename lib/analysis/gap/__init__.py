"""Domain-gap metrics per feature level, and the per-image scores that explain them.

Everything takes two arrays of pooled vectors, `real` (n_r, d) and `fake` (n_s, d) —
"fake" is the synthetic domain, named as in the metrics' papers.

- Fréchet distance (FID's formula on these features) at equal N for both domains, with a
  half-sampling interval, and FD∞ (Chong & Forsyth 2020): `lib.analysis.gap.frechet`.
- KID: unbiased MMD² with the kernel (xᵀy/d + 1)³ over random subsets: `lib.analysis.gap.kid`.
- Precision, recall, density, coverage (Naeem et al. 2020), the realism score per
  synthetic image (Kynkäänniemi et al. 2019, the plain distance ratio, not its square),
  coverage per real image and neighbour mixing: `lib.analysis.gap.prdc`.
- Classifier two-sample test: cross-validated AUC of a logistic-regression domain
  classifier, with out-of-fold probabilities per image: `lib.analysis.gap.classifier`.
- HDBSCAN clusters of both domains, one-domain clusters flagged: `lib.analysis.gap.clusters`.

Every metric is written as one record shape (`lib.analysis.gap.records`). KID and the
distance-based metrics depend on feature scale, so they run on features standardised with
the real domain's mean and std; FD uses raw features.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from lib.analysis.gap.classifier import classifier_test
from lib.analysis.gap.clusters import DomainClusters, cluster_table, domain_clusters
from lib.analysis.gap.frechet import (
    fd_infinity,
    fd_interval,
    frechet_distance,
    sample,
)
from lib.analysis.gap.kid import kid, mmd2_unbiased
from lib.analysis.gap.prdc import PRDC, kth_neighbour_radii, mixing, neighbourhoods, prdc
from lib.analysis.gap.records import (
    auc_record,
    fd_inf_record,
    kid_record,
    normal_ci,
    record,
    share_ci,
)
from lib.analysis.neighbours import distance_blocks, distances_to_nearest, exact_engine
from lib.runtime.backend import cpu_backend
from lib.runtime.errors import GapscopeError
from lib.runtime.memmap import map_blocks, release, row_blocks
from lib.runtime.params import check_minimums, param

if TYPE_CHECKING:
    from lib.runtime.backend import Backend


@dataclass(frozen=True)
class GapParams:
    k: int = param(
        5,
        "Neighbours for precision/recall/density/coverage, realism and mixing "
        "(Naeem et al.'s default).",
        flag="--gap-k",
        minimum=1,
    )
    kid_subsets: int = param(100, "KID: random subsets (torchmetrics' default).", minimum=1)
    kid_subset_size: int = param(1000, "KID: images per subset and domain.", minimum=2)
    fd_inf_sizes: int = 8  # subset sizes for the FD∞ fit, from N/4 to N
    resamples: int = param(
        200,
        "Resamples for the FD half-sampling interval and the paired changes' bootstrap.",
        minimum=20,
    )
    folds: int = param(5, "Cross-validation folds of the domain classifier.", minimum=2)
    min_cluster_size: int = param(20, "HDBSCAN min_cluster_size (the atlas tool's).", minimum=2)
    cluster_dims: int = 10  # principal components HDBSCAN runs on
    cluster_max: int = 8000  # on the CPU, HDBSCAN fits a sample this large (see clusters)
    classifier_max: int = 5000  # per domain: larger domains are subsampled for the classifier
    sample: int = param(
        20_000,
        "Gap metrics run on a seeded sample of at most this many images per domain (their "
        "intervals are for that sample); per-image scores still cover every image.",
        flag="--gap-sample",
        minimum=50,
    )
    seed: int = 0

    def __post_init__(self):
        check_minimums(self)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LevelGap:
    metrics: dict  # JSON-ready: n, dim, metrics (one record each), clusters, seconds
    realism: np.ndarray  # per synthetic image
    p_synthetic: np.ndarray  # per image (real rows then synthetic rows), out-of-fold
    covered: np.ndarray  # per real image
    clusters: np.ndarray  # per image (real rows, then synthetic), −1 = noise
    seconds: dict = field(default_factory=dict)
    sample_rows: tuple[np.ndarray, np.ndarray] | None = None  # (real, synthetic) measured


def standardise(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both domains scaled with the real domain's mean and std per dimension."""
    scale = _Standardiser.of(real)
    return scale(real), scale(fake)


@dataclass
class _Standardiser:
    mu: np.ndarray
    sd: np.ndarray

    @classmethod
    def of(cls, real: np.ndarray) -> _Standardiser:
        sd = real.std(axis=0)
        sd[sd < 1e-12] = 1.0
        return cls(real.mean(axis=0), sd)

    def __call__(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mu) / self.sd).astype(dtype)


def _sample_rows(n: int, size: int, rng) -> np.ndarray:
    return np.arange(n) if n <= size else np.sort(rng.choice(n, size, replace=False))


def _every_image(
    scores, full, rows, scale, hoods, classifier, clusters, k, device, blocks=map_blocks
) -> dict:
    """The sample's per-image scores, extended to every image of both domains (memory-
    mapped, read a block at a time, through the block map `blocks`: here, or on Dask
    workers): realism against the sample's real k-NN balls, coverage against the sample's
    synthetic images with k-NN radii among the sample's real images, p(synthetic) from the
    classifier fitted on its sample, and the cluster of the nearest clustered image. Images
    in the sample keep their own scores."""
    from functools import partial

    (real, fake), (rows_r, rows_f) = full, rows
    n_r, n_f = len(real), len(fake)
    radii = np.asarray(hoods.real_radii, dtype=np.float32)
    kept = radii <= np.median(radii)  # realism's half of the real balls, as in prdc
    zr_s = scale(real[rows_r], np.float32)
    scorer = _ImageScorer(
        scale,
        classifier,
        clusters,
        zr_s,
        scale(fake[rows_f], np.float32),
        zr_s[kept],
        radii[kept],
        k,
        device,
    )
    out = {
        "realism": _spread(scores["realism"], rows_f, n_f, np.nan),
        "covered": _spread(scores["covered"], rows_r, n_r, False),
        "p_synthetic": np.r_[
            _spread(scores["p_synthetic"][: len(rows_r)], rows_r, n_r, np.nan),
            _spread(scores["p_synthetic"][len(rows_r) :], rows_f, n_f, np.nan),
        ],
        "clusters": np.r_[
            _spread(scores["clusters"][: len(rows_r)], rows_r, n_r, -1),
            _spread(scores["clusters"][len(rows_r) :], rows_f, n_f, -1),
        ],
    }
    for domain, x, offset, sampled_rows in (
        ("real", real, 0, rows_r),
        ("synthetic", fake, n_r, rows_f),
    ):
        sampled = np.zeros(len(x), bool)
        sampled[sampled_rows] = True
        todo = [b[~sampled[b]] for b in row_blocks(len(x))]
        todo = [b for b in todo if len(b)]
        for rows_done, got in zip(todo, blocks(partial(scorer, domain), x, todo), strict=True):
            out["p_synthetic"][offset + rows_done] = got["p_synthetic"]
            out["clusters"][offset + rows_done] = got["clusters"]
            target = "realism" if domain == "synthetic" else "covered"
            out[target][rows_done] = got[target]
    return out


@dataclass
class _ImageScorer:
    """The per-image scores of one block of a domain's images outside the sample, from what
    the sample left (small: a few sample-sized arrays and two fitted models, so it travels
    to Dask workers once)."""

    scale: _Standardiser
    classifier: object  # the domain classifier fitted on the sample
    clusters: DomainClusters
    real: np.ndarray  # the sample, standardised (float32)
    fake: np.ndarray
    balls: np.ndarray  # realism's real balls: centres and radii
    radii: np.ndarray
    k: int
    device: str

    def __call__(self, domain: str, rows: np.ndarray, x: np.ndarray) -> dict:
        import torch
        from threadpoolctl import threadpool_limits

        # on a Dask worker without the client's GPU: its CPU, the same numbers within float error
        device = self.device if torch.cuda.is_available() else "cpu"
        z = self.scale(x, np.float32)
        # BLAS on one thread: its threads split the classifier's product differently (1e-15
        # at 200k rows between a Dask worker's one thread and a client's two)
        with threadpool_limits(1, user_api="blas"):
            p_synthetic = self.classifier.predict_proba(z)[:, 1]
        got = {"p_synthetic": p_synthetic, "clusters": self.clusters.predict(z)}
        if domain == "synthetic":
            radii = torch.as_tensor(self.radii, device=device)
            realism = np.empty(len(z), np.float32)
            for b, d in distance_blocks(z, self.balls, device):
                ratio = (radii[None, :] / d.clamp_min(1e-12)).max(1).values
                realism[b : b + len(d)] = ratio.cpu().numpy()
            got["realism"] = realism
        else:
            own = distances_to_nearest(z, self.real, self.k, device)[:, -1]
            nearest = distances_to_nearest(z, self.fake, 1, device)[:, 0]
            got["covered"] = nearest < own
        return got


def _spread(values: np.ndarray, rows: np.ndarray, n: int, fill) -> np.ndarray:
    """Values of the sampled rows placed at their rows of a full-length array."""
    values = np.asarray(values)
    dtype = np.float64 if isinstance(fill, float) else values.dtype
    out = np.full(n, fill, dtype=dtype)
    out[rows] = values
    return out


class _Seconds(dict):
    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self[name] = time.perf_counter() - t


def level_gap(
    real: np.ndarray,
    fake: np.ndarray,
    params: GapParams = GapParams(),
    backend: Backend | None = None,
    blocks=map_blocks,
) -> LevelGap:
    """Every metric for one level, with intervals and sample sizes; the per-image scores
    of images outside the sample through the block map `blocks` (lib.runtime.memmap.map_blocks, or
    lib.runtime.dask.BlockMap on Dask workers)."""

    backend = backend or cpu_backend()
    kid_rng, clf_rng, interval_rng, inf_rng, sample_rng, equal_n_rng = _streams(params.seed)
    if min(len(real), len(fake)) <= params.k + 1:
        raise GapscopeError(f"gap metrics need more than {params.k + 1} images per domain")
    full = real, fake
    (real, rows_r), (fake, rows_f) = (_sampled(x, params.sample, sample_rng) for x in full)
    seconds = _Seconds()
    with seconds("fd"):
        records = _frechet_records(real, fake, params, (equal_n_rng, interval_rng, inf_rng))
    zr, zf = standardise(real, fake)
    with seconds("kid"):
        kids = kid(zr, zf, params.kid_subsets, params.kid_subset_size, kid_rng)
    records["kid"] = kid_record(kids)
    with seconds("neighbours"):
        p, mix, hoods = _ball_metrics(zr, zf, params.k, backend)
    records.update(_ball_records(p, mix, params.k, len(real) + len(fake)))
    with seconds("classifier"):
        clf = classifier_test(zr, zf, params.folds, params.classifier_max, clf_rng)
    records["auc"] = auc_record(clf)
    with seconds("clusters"):
        clusters, fitted_on = _fit_clusters(zr, zf, params, backend)
    per_image = {
        "realism": p.realism,
        "p_synthetic": np.r_[clf["p_synthetic_real"], clf["p_synthetic_fake"]],
        "covered": p.covered,
        "clusters": clusters.labels_,
    }
    with seconds("per-image"):
        models = hoods, clf["model"], clusters
        rows = rows_r, rows_f
        per_image = _every_image(
            per_image, full, rows, _Standardiser.of(real), *models, params.k, backend.device, blocks
        )
    sampled = len(rows_r) < len(full[0]) or len(rows_f) < len(full[1])
    metrics = {
        "n": {"real": len(real), "synthetic": len(fake)},
        **({"sampled_from": {"real": len(full[0]), "synthetic": len(full[1])}} if sampled else {}),
        "dim": int(real.shape[1]),
        "metrics": records,
        "clusters": _cluster_summary(clusters.labels_, clusters.table_, fitted_on),
        "seconds": {name: round(s, 3) for name, s in seconds.items()},
    }
    return LevelGap(
        metrics=metrics, seconds=dict(seconds), sample_rows=(rows_r, rows_f), **per_image
    )


def _streams(seed: int) -> list[np.random.Generator]:
    """One random stream per metric family (KID, classifier, FD's interval, FD∞, the
    sample), so that resampling one more or less (a new interval method, more resamples)
    never moves another metric's numbers; and FD's equal-N subsample's, seeded as before."""
    spawned = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]
    return [*spawned, np.random.default_rng(seed)]


def _sampled(x: np.ndarray, size: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(the sampled rows of x read into float64, their indices); a memory-mapped x is
    read only here, and released after."""
    rows = _sample_rows(len(x), size, rng)
    sampled = np.asarray(x[rows], dtype=np.float64)
    release(x)
    return sampled, rows


def _fit_clusters(zr, zf, params: GapParams, backend: Backend):
    """HDBSCAN over both domains, and how many points it was fitted on."""
    clusters = DomainClusters(
        params.min_cluster_size,
        params.cluster_dims,
        implementation=backend.clustering,
        seed=params.seed,
        max_points=params.cluster_max,
    ).fit(zr, zf)
    n = len(clusters.labels_)
    return clusters, n if backend.clustering == "cuml" else min(n, params.cluster_max)


def _frechet_records(real, fake, params: GapParams, rngs) -> dict:
    """FD at equal N (the larger domain subsampled) with its interval, and FD∞."""
    rng, interval_rng, inf_rng = rngs
    n = min(len(real), len(fake))
    r_eq, f_eq = sample(real, n, rng), sample(fake, n, rng)
    fd = frechet_distance(r_eq, f_eq)
    ci, how = fd_interval(r_eq, f_eq, fd, params.resamples, interval_rng)
    inf = fd_infinity(real, fake, params.fd_inf_sizes, inf_rng)
    return {
        "fd": record(fd, ci, n, **how),
        "fd_inf": fd_inf_record(inf),
    }


def _ball_metrics(zr: np.ndarray, zf: np.ndarray, k: int, backend: Backend):
    hoods = neighbourhoods(zr, zf, k, backend.device, exact_engine(backend.knn_engine))
    p = prdc(zr, zf, k, radii=(hoods.real_radii, hoods.fake_radii), device=backend.device)
    is_fake = np.r_[np.zeros(len(zr), bool), np.ones(len(zf), bool)]
    return p, mixing(hoods.joint, is_fake), hoods


def _ball_records(p: PRDC, mix: dict, k: int, n: int) -> dict:
    n_real, n_fake = len(p.covered), len(p.realism)
    se = p.se  # the two-way group jackknife's (lib.analysis.gap.prdc._Groups)
    return {
        "precision": record(
            p.precision, share_ci(int((p.fake_in_real > 0).sum()), n_fake, se["precision"]), n_fake
        ),
        "recall": record(p.recall, share_ci(int(p.recalled.sum()), n_real, se["recall"]), n_real),
        "density": record(p.density, normal_ci(p.density, se["density"], None), n_fake),
        "coverage": record(
            p.coverage, share_ci(int(p.covered.sum()), n_real, se["coverage"]), n_real
        ),
        "mixing": record(mix.pop("value"), mix.pop("ci95"), n, **mix),
        "realism": record(
            np.median(p.realism), None, n_fake, share_inside=float((p.realism >= 1).mean())
        ),
    }


def _cluster_summary(labels: np.ndarray, table: list[dict], fitted_on: int) -> dict:
    return {
        "n": len(table),
        "fitted_on": fitted_on,
        "noise": int((labels < 0).sum()),
        "real_only": sum(c["kind"] == "real-only" for c in table),
        "synthetic_only": sum(c["kind"] == "synthetic-only" for c in table),
        "table": table,
    }


NOTES = {
    "records": "every metric is {value, ci95, n, ...}: n counts what the value was computed "
    "over (images per domain for fd, subset size for kid, images for the rest)",
    "standardised": "KID, PRDC, realism, mixing and the classifier use features standardised "
    "with the real domain's per-dimension mean and std; FD uses raw features",
    "fd": "Fréchet distance at equal N (the larger domain subsampled); biased by ~1/N, "
    "so compare runs at equal N or use fd_inf. Its ci95 is a half-sampling interval for the "
    "FD expected at this N (always contains the estimate); fd_inf has none",
    "kid": "mean over random subsets (std: their spread, not an interval); ci95 from one "
    "subset pair: each side the wider of the U-statistic's normal interval and the "
    "permutation null's",
    "proportions": "precision, recall and coverage intervals are Wilson score intervals",
    "realism": "Kynkäänniemi et al. 2019 realism score, plain distance ratio (not squared); "
    ">= 1 means inside the real manifold; value is the median over synthetic images",
    "mixing": "share of k nearest neighbours from the other domain / share under perfect mixing",
    "clusters": "HDBSCAN on the first principal components of both domains' standardised "
    "features; a cluster with >= 90% of one domain is real-only or synthetic-only",
}

__all__ = [
    "GapParams",
    "LevelGap",
    "NOTES",
    "PRDC",
    "classifier_test",
    "cluster_table",
    "domain_clusters",
    "fd_infinity",
    "fd_interval",
    "frechet_distance",
    "kid",
    "kth_neighbour_radii",
    "level_gap",
    "mixing",
    "mmd2_unbiased",
    "neighbourhoods",
    "prdc",
    "standardise",
]
