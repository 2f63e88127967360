"""Domain-gap metrics per feature level, and the per-image scores that explain them.

Everything takes two arrays of pooled vectors, `real` (n_r, d) and `fake` (n_s, d) —
"fake" is the synthetic domain, named as in the metrics' papers.

- Fréchet distance (FID's formula on these features), at equal N for both domains, and
  FD∞: FD fitted against 1/N over several subset sizes and extrapolated to N → ∞
  (Chong & Forsyth 2020), because FD is biased by ~1/N.
- KID: unbiased MMD² with the kernel (xᵀy/d + 1)³, mean ± std over random subsets.
- Precision, recall, density, coverage (Naeem et al. 2020), k nearest neighbours.
- Classifier two-sample test: cross-validated AUC of a logistic-regression domain
  classifier (0.5 = indistinguishable), with out-of-fold probabilities per image.
- Neighbour mixing: the share of a point's k nearest neighbours from the other domain,
  relative to what perfect mixing gives (1 = perfectly mixed, 0 = apart).
- Per image: realism score of each synthetic image (Kynkäänniemi et al. 2019; emitted as
  the plain distance ratio, not its square), whether each real image is covered.

KID and the distance-based metrics depend on feature scale, so they run on features
standardised with the real domain's mean and std (recorded in the output).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from lib.errors import GapscopeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GapParams:
    k: int = 5  # neighbours for PRDC, realism and mixing (Naeem et al.'s default)
    kid_subsets: int = 100  # torch-fidelity's and torchmetrics' defaults
    kid_subset_size: int = 1000
    fd_inf_sizes: int = 8  # subset sizes for the FD∞ fit, from N/4 to N
    bootstrap: int = 10  # resamples for the FD confidence interval
    folds: int = 5  # classifier cross-validation
    min_cluster_size: int = 20  # HDBSCAN (the atlas tool's setting)
    cluster_dims: int = 10  # principal components HDBSCAN runs on
    cluster_max: int = 8000  # on the CPU, HDBSCAN fits a sample this large (see clusters)
    classifier_max: int = 5000  # per domain: larger domains are subsampled for the classifier
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


# ---- Fréchet distance ------------------------------------------------------------------


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def frechet_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """||μ1−μ2||² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½), with Tr((Σ1Σ2)^½) as the sum of the square
    roots of the eigenvalues of Σ1Σ2 (real and non-negative in exact arithmetic)."""
    from scipy.linalg import eigvals

    diff = mu1 - mu2
    eig = eigvals(sigma1 @ sigma2)
    tr_covmean = np.sqrt(eig.astype(np.complex128)).real.sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def fd_infinity(
    a: np.ndarray, b: np.ndarray, sizes: int = 8, rng: np.random.Generator | None = None
) -> dict:
    """FD at equal subset sizes from N/4 to N, a line fitted against 1/N, its intercept."""
    rng = rng or np.random.default_rng(0)
    n = min(len(a), len(b))
    ns = np.unique(np.linspace(max(n // 4, 2), n, sizes).astype(int))
    fds = [frechet_distance(_sample(a, m, rng), _sample(b, m, rng)) for m in ns]
    slope, intercept = np.polyfit(1.0 / ns, fds, 1)
    return {
        "value": float(intercept),
        "slope": float(slope),
        "sizes": ns.tolist(),
        "fd_at_sizes": [float(f) for f in fds],
    }


def _sample(x: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    return x if m >= len(x) else x[rng.choice(len(x), m, replace=False)]


# ---- KID -------------------------------------------------------------------------------


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    k = x @ y.T
    k /= x.shape[1]
    k += 1.0
    return k * k * k  # in place and by products: 3× faster than ** 3 on 10⁶ entries


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel (KID's estimator; can be < 0).
    Kernel sums are accumulated in float64 whatever the inputs' precision."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    sxx = (kxx.sum(dtype=np.float64) - np.trace(kxx, dtype=np.float64)) / (m * (m - 1))
    syy = (kyy.sum(dtype=np.float64) - np.trace(kyy, dtype=np.float64)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean(dtype=np.float64))


def kid(
    a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, rng=None
) -> dict:
    rng = rng or np.random.default_rng(0)
    m = min(subset_size, len(a), len(b))
    values = [
        mmd2_unbiased(_sample(a, m, rng).astype(np.float32), _sample(b, m, rng).astype(np.float32))
        for _ in range(subsets)
    ]
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "subsets": subsets,
        "subset_size": int(m),
        "reduced": m < subset_size,  # fewer images than the default subset size
    }


# ---- nearest-neighbour metrics -----------------------------------------------------------
# Distances in float32 with torch, a block of rows at a time: 10k + 10k points never
# need an N×N matrix, and the BLAS matmul is what makes 5 levels fit in a minute.


def _blocks(x: np.ndarray, y: np.ndarray, chunk: int):
    """Yield (start, euclidean distance block (chunk, len(y))) as float32 tensors."""
    import torch

    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.as_tensor(np.ascontiguousarray(y, dtype=np.float32))
    yy = (yt * yt).sum(1)
    for s in range(0, len(xt), chunk):
        xb = xt[s : s + chunk]
        d2 = (xb * xb).sum(1)[:, None] - 2.0 * xb @ yt.T + yy[None, :]
        yield s, d2.clamp_min_(0).sqrt_()


def joint_neighbours(
    real: np.ndarray, fake: np.ndarray, k: int, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over all pairs of both domains gives what two metrics need: each row's k
    nearest other rows overall (for mixing) and, per domain, the distance to the k-th
    nearest other row of that domain (PRDC's ball radii)."""
    import torch

    x = np.concatenate([real, fake])
    n_real = len(real)
    nn = np.empty((len(x), k), dtype=np.int64)
    kth_own = np.empty(len(x))
    for s, d in _blocks(x, x, chunk):
        rows = torch.arange(len(d))
        d[rows, rows + s] = float("inf")
        nn[s : s + len(d)] = torch.topk(d, k, dim=1, largest=False).indices.numpy()
        block_real = (rows + s) < n_real
        own_real = torch.topk(d[:, :n_real], k, dim=1, largest=False).values[:, k - 1]
        own_fake = torch.topk(d[:, n_real:], k, dim=1, largest=False).values[:, k - 1]
        kth_own[s : s + len(d)] = torch.where(block_real, own_real, own_fake).numpy()
    return nn, kth_own[:n_real], kth_own[n_real:]


def kth_neighbour_radii(x: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Distance from each row to its k-th nearest other row."""
    if len(x) <= k:
        raise GapscopeError(f"need more than k={k} images per domain for the gap metrics")
    from lib.neighbors import knn

    return knn(x, k, "euclidean", chunk=chunk)[1][:, k - 1].astype(np.float64)


@dataclass
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float
    realism: np.ndarray  # per fake: max_i r_i / ||s − r_i|| over the smaller half of real balls
    covered: np.ndarray  # per real: some fake lies inside its k-NN ball
    fake_in_real: np.ndarray  # per fake: how many real k-NN balls contain it
    recalled: np.ndarray  # per real: inside some fake's k-NN ball


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, chunk: int = 2048, radii=None) -> PRDC:
    """Naeem et al. 2020, as `prdc.compute_prdc` computes it (strict '<' ball tests),
    without N×N matrices, plus the per-image answers. `radii`: (real, fake) k-NN radii
    when already known (see joint_neighbours)."""
    import torch

    if radii is None:
        radii = kth_neighbour_radii(real, k, chunk), kth_neighbour_radii(fake, k, chunk)
    real_r = np.asarray(radii[0], dtype=np.float64)
    fake_r = torch.as_tensor(radii[1], dtype=torch.float32)
    keep = real_r <= np.median(real_r)  # realism uses only the smaller half of real balls
    inside = torch.zeros(len(fake), dtype=torch.int64)
    realism = torch.zeros(len(fake), dtype=torch.float32)
    recall_hit = np.zeros(len(real), dtype=bool)
    nearest_fake = np.empty(len(real))
    real_t = torch.as_tensor(real_r, dtype=torch.float32)
    for s, d in _blocks(real, fake, chunk):  # d: (chunk of reals, all fakes)
        r = real_t[s : s + len(d), None]
        inside += (d < r).sum(dim=0)
        nearest_fake[s : s + len(d)] = d.min(dim=1).values.numpy()
        recall_hit[s : s + len(d)] = (d < fake_r[None, :]).any(dim=1).numpy()
        kept = torch.as_tensor(keep[s : s + len(d)])
        if kept.any():
            ratio = r[kept] / d[kept].clamp_min(1e-12)
            realism = torch.maximum(realism, ratio.max(dim=0).values)
    covered = nearest_fake < real_r
    inside = inside.numpy()
    return PRDC(
        precision=float((inside > 0).mean()),
        recall=float(recall_hit.mean()),
        density=float(inside.mean() / k),
        coverage=float(covered.mean()),
        realism=realism.numpy().astype(np.float64),
        covered=covered,
        fake_in_real=inside,
        recalled=recall_hit,
    )


def neighbour_mixing(real: np.ndarray, fake: np.ndarray, k: int = 5, chunk: int = 2048) -> dict:
    """Observed share of other-domain neighbours over the share perfect mixing gives."""
    x = np.concatenate([real, fake])
    is_fake = np.r_[np.zeros(len(real), bool), np.ones(len(fake), bool)]
    from lib.neighbors import knn

    return _mixing(knn(x, k, "euclidean", chunk=chunk)[0], is_fake, k)


def _mixing(nn: np.ndarray, is_fake: np.ndarray, k: int) -> dict:
    n_fake = int(is_fake.sum())
    n_real = len(is_fake) - n_fake
    share = (is_fake[nn] != is_fake[:, None]).mean(axis=1)
    expected = np.where(is_fake, n_real, n_fake) / (len(is_fake) - 1)
    ratio = share / expected
    return {
        "value": float(ratio.mean()),
        "real": float(ratio[~is_fake].mean()),
        "synthetic": float(ratio[is_fake].mean()),
        "ci95": _mean_ci(ratio),
        "k": k,
    }


# ---- classifier two-sample test ---------------------------------------------------------


def classifier_test(
    real: np.ndarray, fake: np.ndarray, folds: int = 5, max_per_domain: int = 5000, rng=None
) -> dict:
    """Cross-validated ROC AUC of a logistic-regression domain classifier and each image's
    out-of-fold probability of being synthetic (NaN for images left out by subsampling)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    rng = rng or np.random.default_rng(0)
    idx_r = np.sort(_choice(len(real), max_per_domain, rng))
    idx_f = np.sort(_choice(len(fake), max_per_domain, rng))
    x = np.concatenate([real[idx_r], fake[idx_f]]).astype(np.float64)
    y = np.r_[np.zeros(len(idx_r)), np.ones(len(idx_f))]
    oof = np.empty(len(y))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(rng.integers(2**31)))
    for train, test in cv.split(x, y):
        clf = LogisticRegression(max_iter=500, class_weight="balanced")
        clf.fit(x[train], y[train])
        oof[test] = clf.predict_proba(x[test])[:, 1]
    auc = float(roc_auc_score(y, oof))
    boot = []
    for _ in range(200):
        s = rng.integers(0, len(y), len(y))
        if 0 < y[s].sum() < len(s):
            boot.append(roc_auc_score(y[s], oof[s]))
    p_real = np.full(len(real), np.nan)
    p_fake = np.full(len(fake), np.nan)
    p_real[idx_r] = oof[: len(idx_r)]
    p_fake[idx_f] = oof[len(idx_r) :]
    return {
        "auc": auc,
        "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
        "accuracy": float(((oof > 0.5) == y).mean()),
        "folds": folds,
        "n": [len(idx_r), len(idx_f)],
        "p_synthetic_real": p_real,
        "p_synthetic_fake": p_fake,
    }


def _choice(n: int, m: int, rng) -> np.ndarray:
    return np.arange(n) if n <= m else rng.choice(n, m, replace=False)


def _mean_ci(values: np.ndarray) -> list[float]:
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return [float(values.mean() - half), float(values.mean() + half)]


# ---- clusters ------------------------------------------------------------------------------


def domain_clusters(
    real: np.ndarray,
    fake: np.ndarray,
    min_cluster_size: int = 20,
    dims: int = 10,
    one_domain: float = 0.9,
    backend: str = "cpu",
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
    from sklearn.decomposition import PCA

    x = np.concatenate([real, fake]).astype(np.float32)
    is_fake = np.r_[np.zeros(len(real), bool), np.ones(len(fake), bool)]
    z = PCA(n_components=min(dims, x.shape[1], len(x) - 1), random_state=seed).fit_transform(x)
    if backend == "cuml":
        from cuml.cluster import HDBSCAN

        model = HDBSCAN(min_cluster_size=min_cluster_size)
    else:
        from sklearn.cluster import HDBSCAN

        model = HDBSCAN(min_cluster_size=min_cluster_size, copy=True)
    if backend != "cuml" and max_points and len(z) > max_points:
        labels = _fit_sample_assign_rest(model, z, is_fake, max_points, seed)
    else:
        labels = np.asarray(model.fit_predict(z), dtype=np.int32)
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
            {"cluster": int(c), "real": n_real, "synthetic": n_fake,
             "synthetic_share": round(share, 4), "kind": kind}
        )  # fmt: skip
    table.sort(key=lambda row: abs(row["synthetic_share"] - base), reverse=True)
    return labels, table


def _fit_sample_assign_rest(model, z: np.ndarray, is_fake: np.ndarray, m: int, seed: int):
    import torch

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
    d = torch.cdist(torch.as_tensor(z[rest]), torch.as_tensor(z[sample]))
    labels[rest] = labels[sample][d.argmin(dim=1).numpy()]
    return labels


# ---- one level ---------------------------------------------------------------------------


@dataclass
class LevelGap:
    metrics: dict  # JSON-ready numbers for metrics.json
    realism: np.ndarray  # per synthetic image
    p_synthetic: np.ndarray  # per image (real rows then synthetic rows), out-of-fold
    covered: np.ndarray  # per real image
    clusters: np.ndarray  # per image (real rows, then synthetic), −1 = noise
    seconds: dict = field(default_factory=dict)


def standardise(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both domains scaled with the real domain's mean and std per dimension."""
    mu = real.mean(axis=0)
    sd = real.std(axis=0)
    sd[sd < 1e-12] = 1.0
    return (real - mu) / sd, (fake - mu) / sd


def level_gap(
    real: np.ndarray, fake: np.ndarray, params: GapParams = GapParams(), backend: str = "cpu"
) -> LevelGap:
    """Every metric for one level, with confidence intervals and sample sizes."""
    rng = np.random.default_rng(params.seed)
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if min(len(real), len(fake)) <= params.k + 1:
        raise GapscopeError(f"gap metrics need more than {params.k + 1} images per domain")
    seconds = {}
    t = time.perf_counter()
    n = min(len(real), len(fake))
    r_eq, f_eq = _sample(real, n, rng), _sample(fake, n, rng)
    fd = frechet_distance(r_eq, f_eq)
    boot = [
        frechet_distance(r_eq[rng.integers(0, n, n)], f_eq[rng.integers(0, n, n)])
        for _ in range(params.bootstrap)
    ]
    fd_inf = fd_infinity(real, fake, params.fd_inf_sizes, rng)
    seconds["fd"] = time.perf_counter() - t

    t = time.perf_counter()
    zr, zf = standardise(real, fake)
    kid_ = kid(zr, zf, params.kid_subsets, params.kid_subset_size, rng)
    seconds["kid"] = time.perf_counter() - t

    t = time.perf_counter()
    nn, real_r, fake_r = joint_neighbours(zr, zf, params.k)
    p = prdc(zr, zf, params.k, radii=(real_r, fake_r))
    is_fake = np.r_[np.zeros(len(zr), bool), np.ones(len(zf), bool)]
    mixing = _mixing(nn, is_fake, params.k)
    seconds["neighbours"] = time.perf_counter() - t

    t = time.perf_counter()
    clf = classifier_test(zr, zf, params.folds, params.classifier_max, rng)
    seconds["classifier"] = time.perf_counter() - t

    t = time.perf_counter()
    labels, clusters = domain_clusters(
        zr, zf, params.min_cluster_size, params.cluster_dims, backend=backend,
        seed=params.seed, max_points=params.cluster_max,
    )  # fmt: skip
    seconds["clusters"] = time.perf_counter() - t

    metrics = {
        "n": {"real": len(real), "synthetic": len(fake), "fd_equal_n": n},
        "dim": int(real.shape[1]),
        "fd": {
            "value": fd,
            "n": n,
            "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
            if boot
            else None,
            "bootstrap": params.bootstrap,
        },
        "fd_inf": fd_inf,
        "kid": kid_,
        "precision": p.precision,
        "precision_ci95": _mean_ci((p.fake_in_real > 0).astype(float)),
        "recall": p.recall,
        "recall_ci95": _mean_ci(p.recalled.astype(float)),
        "density": p.density,
        "coverage": {"value": p.coverage, "ci95": _mean_ci(p.covered.astype(float))},
        "density_ci95": _mean_ci(p.fake_in_real / params.k),
        "classifier": {k: v for k, v in clf.items() if not k.startswith("p_synthetic")},
        "mixing": mixing,
        "realism": {
            "median": float(np.median(p.realism)),
            "share_inside": float((p.realism >= 1).mean()),
        },
        "clusters": {
            "n": len(clusters),
            "fitted_on": min(len(labels), params.cluster_max) if backend != "cuml" else len(labels),
            "noise": int((labels < 0).sum()),
            "real_only": sum(c["kind"] == "real-only" for c in clusters),
            "synthetic_only": sum(c["kind"] == "synthetic-only" for c in clusters),
            "table": clusters,
        },
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    return LevelGap(
        metrics=metrics,
        realism=p.realism,
        p_synthetic=np.r_[clf["p_synthetic_real"], clf["p_synthetic_fake"]],
        covered=p.covered,
        clusters=labels,
        seconds=seconds,
    )


NOTES = {
    "standardised": "KID, PRDC, realism, mixing and the classifier use features standardised "
    "with the real domain's per-dimension mean and std; FD uses raw features",
    "fd": "Fréchet distance at equal N (the larger domain subsampled); biased by ~1/N, "
    "so compare runs at equal N or use fd_inf",
    "realism": "Kynkäänniemi et al. 2019 realism score, plain distance ratio (not squared); "
    ">= 1 means inside the real manifold",
    "mixing": "share of k nearest neighbours from the other domain / share under perfect mixing",
    "clusters": "HDBSCAN on the first principal components of both domains' standardised "
    "features; a cluster with >= 90% of one domain is real-only or synthetic-only",
}
