"""Static 3D overlap plots, one PNG per level and direction (the original tool's 10).

Real points are red 'x', synthetic green 'o', as before; unlike before, every axis
(z included) is labelled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STYLE = {"real": {"c": "red", "marker": "x"}, "synthetic": {"c": "green", "marker": "o"}}
MAX_DRAWN = 20_000  # points per domain in a static PNG: more only hide each other, slowly


def direction_title(fit_on: str) -> str:
    """'Synthetic mapped to Real latent space' for a projection fitted on real."""
    mapped = "synthetic" if fit_on == "real" else "real"
    return f"{mapped.capitalize()} mapped to {fit_on.capitalize()} latent space"


def save_overlap_png(
    coords: dict[str, np.ndarray], level: str, fit_on: str, out: Path, method: str = "UMAP"
) -> None:
    """coords: domain → (n, 3) coordinates of one projection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(7, 6), dpi=100)
    ax = fig.add_subplot(projection="3d")
    for domain, xyz in coords.items():
        style = STYLE.get(domain, {"c": "grey", "marker": "."})
        label = domain
        if len(xyz) > MAX_DRAWN:  # a seeded sample, said in the legend
            label = f"{domain} ({MAX_DRAWN:,} of {len(xyz):,} drawn)"
            xyz = xyz[np.random.default_rng(0).choice(len(xyz), MAX_DRAWN, replace=False)]
        ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], s=8, alpha=0.6, label=label, **style)
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_zlabel(f"{method} 3")
    ax.set_title(f"{level}: {direction_title(fit_on)}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
