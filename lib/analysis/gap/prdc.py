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
    se: dict | None = None  # precision, recall, density, coverage: standard errors (_Groups)
    nearest_by_group: np.ndarray | None = None  # (n_real, GROUPS): nearest fake per group


GROUPS = 20  # the jackknife's groups per domain


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
    groups = _Groups.of(len(real), len(fake), device)
    for s, d in distance_blocks(real, fake, device, chunk):  # d: (rows of real, all fakes)
        r = real_t[s : s + len(d), None]
        in_real_ball, in_fake_ball = d < r, d < fake_r[None, :]  # each test made once
        inside += in_real_ball.sum(dim=0)
        nearest_fake[s : s + len(d)] = d.min(dim=1).values.cpu().numpy()
        recall_hit[s : s + len(d)] = in_fake_ball.any(dim=1).cpu().numpy()
        groups.add(s, d, in_real_ball, in_fake_ball)
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
        se=groups.standard_errors(covered, inside, real_r, k),
        nearest_by_group=groups.nearest.cpu().numpy(),
    )


@dataclass
class _Groups:
    """What a two-way group jackknife of precision, recall and coverage needs, gathered
    in prdc's one pass over the distances. The per-image indicators are not independent
    trials — a synthetic image inside one real ball is inside its neighbours' too, and
    one image covers many — so a Wilson interval on their mean was too narrow (coverage
    with no gap: 87 % of 200 draws held the truth). Each domain's images are dealt into
    GROUPS seeded groups; each group left out in turn, the statistic is recomputed from
    these tallies; the two domains' jackknife variances add. (The k-NN radii are kept as
    computed on all images: leaving a group out would move them a little.)"""

    real_group: object  # (n_real,) group of each real image
    fake_group: object  # (n_fake,)
    nearest: object  # (n_real, G): nearest fake of each fake group
    recalled_by: object  # (n_real, G): inside some ball of that fake group
    inside_by: object  # (G, n_fake): real balls of that real group holding the fake

    @classmethod
    def of(cls, n_real: int, n_fake: int, device: str) -> _Groups:
        import torch

        rng = np.random.default_rng(0)
        g = GROUPS

        def deal(n):
            return torch.as_tensor(rng.permutation(n) % g, device=device)

        return cls(
            deal(n_real),
            deal(n_fake),
            torch.full((n_real, g), float("inf"), device=device),
            torch.zeros((n_real, g), dtype=torch.bool, device=device),
            torch.zeros((g, n_fake), dtype=torch.float32, device=device),
        )

    def add(self, s: int, d, in_real_ball, in_fake_ball) -> None:
        """One block of real rows from `s`: its distances to every fake and which pairs
        fall inside the real row's ball and inside the fake's."""
        rows = slice(s, s + len(d))
        by_fake = self.fake_group[None, :].expand(len(d), -1)
        self.nearest[rows] = self.nearest[rows].scatter_reduce(1, by_fake, d, "amin")
        hit = in_fake_ball.float()
        got = self.recalled_by[rows].float().scatter_reduce(1, by_fake, hit, "amax")
        self.recalled_by[rows] = got > 0
        self.inside_by.index_add_(0, self.real_group[rows], in_real_ball.float())

    def standard_errors(self, covered, inside, real_r, k: int) -> dict:
        nearest = self.nearest.cpu().numpy()
        recalled_by = self.recalled_by.cpu().numpy()
        inside_by = self.inside_by.cpu().numpy()
        real_g, fake_g = self.real_group.cpu().numpy(), self.fake_group.cpu().numpy()
        names = ("precision", "recall", "density", "coverage")
        drop_real = {name: [] for name in names}
        drop_fake = {name: [] for name in names}
        for g in range(GROUPS):
            kept_r, kept_f = real_g != g, fake_g != g
            others = np.delete(np.arange(GROUPS), g)
            drop_real["precision"].append(((inside - inside_by[g]) > 0).mean())
            drop_real["density"].append((inside - inside_by[g]).mean() / k)
            drop_fake["density"].append(inside[kept_f].mean() / k)
            drop_real["recall"].append(recalled_by[kept_r].any(axis=1).mean())
            drop_real["coverage"].append(covered[kept_r].mean())
            drop_fake["precision"].append((inside[kept_f] > 0).mean())
            drop_fake["recall"].append(recalled_by[:, others].any(axis=1).mean())
            drop_fake["coverage"].append((nearest[:, others].min(axis=1) < real_r).mean())
        return {
            name: float(np.sqrt(_jackknife(drop_real[name]) + _jackknife(drop_fake[name])))
            for name in drop_real
        }


def _jackknife(left_out: list[float]) -> float:
    """The delete-a-group jackknife's variance from the statistic with each group left
    out in turn."""
    v = np.asarray(left_out, dtype=np.float64)
    return float((len(v) - 1) / len(v) * ((v - v.mean()) ** 2).sum())


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
