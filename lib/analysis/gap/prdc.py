"""Precision, recall, density and coverage (Naeem et al. 2020), the realism score
(Kynkäänniemi et al. 2019) and neighbour mixing: the metrics built on k-NN balls.

Every neighbour search goes through lib.analysis.neighbours (torch on the CPU or a GPU, or FAISS),
and the real × synthetic ball tests read distances a block of rows at a time, so 10k + 10k
points never need an N×N matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lib.analysis.gap.records import mean_ci
from lib.analysis.neighbours import distance_blocks, knn
from lib.runtime.errors import GapscopeError


def kth_neighbour_radii(
    x: np.ndarray, k: int, device: str = "cpu", engine: str = "auto"
) -> np.ndarray:
    """Distance from each row to its k-th nearest other row."""
    if len(x) <= k:
        raise GapscopeError(f"need more than k={k} images per domain for the gap metrics")
    return knn(x, k, "euclidean", device, engine=engine)[1][:, k - 1].astype(np.float64)


@dataclass
class Neighbourhoods:
    """What the ball metrics and mixing need from k-NN search over both domains."""

    joint: np.ndarray  # (n_real + n_fake, k): each row's k nearest rows of both domains
    real_radii: np.ndarray  # distance from each real row to its k-th nearest real row
    fake_radii: np.ndarray  # the same within the synthetic domain


def neighbourhoods(
    real: np.ndarray, fake: np.ndarray, k: int, device: str = "cpu", engine: str = "auto"
) -> Neighbourhoods:
    joint = knn(np.concatenate([real, fake]), k, "euclidean", device, engine=engine)[0]
    return Neighbourhoods(
        joint=joint,
        real_radii=kth_neighbour_radii(real, k, device, engine),
        fake_radii=kth_neighbour_radii(fake, k, device, engine),
    )


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


def prdc(
    real: np.ndarray,
    fake: np.ndarray,
    k: int = 5,
    radii: tuple[np.ndarray, np.ndarray] | None = None,
    device: str = "cpu",
    chunk: int = 2048,
) -> PRDC:
    """Naeem et al. 2020, as `prdc.compute_prdc` computes it (strict '<' ball tests),
    plus the per-image answers. `radii`: (real, fake) k-NN radii when already known."""
    import torch

    if radii is None:
        radii = kth_neighbour_radii(real, k, device), kth_neighbour_radii(fake, k, device)
    real_r = np.asarray(radii[0], dtype=np.float64)
    fake_r = torch.as_tensor(radii[1], dtype=torch.float32, device=device)
    real_t = torch.as_tensor(real_r, dtype=torch.float32, device=device)
    keep = torch.as_tensor(real_r <= np.median(real_r), device=device)  # realism's half
    inside = torch.zeros(len(fake), dtype=torch.int64, device=device)
    realism = torch.zeros(len(fake), dtype=torch.float32, device=device)
    recall_hit = np.zeros(len(real), dtype=bool)
    nearest_fake = np.empty(len(real))
    for s, d in distance_blocks(real, fake, device, chunk):  # d: (rows of real, all fakes)
        r = real_t[s : s + len(d), None]
        inside += (d < r).sum(dim=0)
        nearest_fake[s : s + len(d)] = d.min(dim=1).values.cpu().numpy()
        recall_hit[s : s + len(d)] = (d < fake_r[None, :]).any(dim=1).cpu().numpy()
        kept = keep[s : s + len(d)]
        if kept.any():
            ratio = r[kept] / d[kept].clamp_min(1e-12)
            realism = torch.maximum(realism, ratio.max(dim=0).values)
    covered = nearest_fake < real_r
    inside = inside.cpu().numpy()
    return PRDC(
        precision=float((inside > 0).mean()),
        recall=float(recall_hit.mean()),
        density=float(inside.mean() / k),
        coverage=float(covered.mean()),
        realism=realism.cpu().numpy().astype(np.float64),
        covered=covered,
        fake_in_real=inside,
        recalled=recall_hit,
    )


def mixing(joint: np.ndarray, is_fake: np.ndarray) -> dict:
    """Observed share of other-domain neighbours over the share perfect mixing gives,
    per point (`joint`: each point's k nearest neighbours of both domains), averaged."""
    n_fake = int(is_fake.sum())
    n_real = len(is_fake) - n_fake
    share = (is_fake[joint] != is_fake[:, None]).mean(axis=1)
    expected = np.where(is_fake, n_real, n_fake) / (len(is_fake) - 1)
    ratio = share / expected
    return {
        "value": float(ratio.mean()),
        "ci95": mean_ci(ratio),
        "real": float(ratio[~is_fake].mean()),
        "synthetic": float(ratio[is_fake].mean()),
        "k": int(joint.shape[1]),
    }
