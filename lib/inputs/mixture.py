"""Feature vectors from a Gaussian mixture with a known shift between the domains: data
at any size for the scale benchmark and tests, written as embeddings (`.npy` + CSV, the
format `lib.inputs.embeddings` reads).

Like a CNN's pooled features, the vectors live near a low-dimensional subspace: `latent`
dimensions (`clusters` Gaussian blobs there) mapped linearly into `dim` dimensions plus a
little isotropic noise. The synthetic domain is the same mixture with every blob moved
`shift` along the first latent axis, and its first `missing` blobs left out (what the
synthetic data lacks).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

BLOCK = 100_000


def mixture_block(
    n: int,
    rng,
    dim: int = 256,
    latent: int = 16,
    clusters: int = 20,
    shift: float = 0.0,
    missing: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 vectors and their blob labels."""
    fixed = np.random.default_rng(12345)  # the mixture itself is the same for both domains
    basis = fixed.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    centres = fixed.standard_normal((clusters, latent)).astype(np.float32) * 3
    labels = rng.integers(missing, clusters, n)
    z = centres[labels] + rng.standard_normal((n, latent), dtype=np.float32)
    z[:, 0] += shift
    noise = 0.1 * rng.standard_normal((n, dim), dtype=np.float32)
    return z @ basis + noise, labels


def write_domain(folder: Path, name: str, n: int, seed: int, dim: int = 256, **mixture) -> Path:
    """`<name>.npy` (n, dim) and `<name>.csv` (path, category) in `folder`, written a block
    at a time so memory stays flat at any n. Returns the .npy path."""
    folder.mkdir(parents=True, exist_ok=True)
    array = np.lib.format.open_memmap(folder / f"{name}.npy", "w+", np.float32, (n, dim))
    rng = np.random.default_rng(seed)
    with (folder / f"{name}.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "category"])
        for s in range(0, n, BLOCK):
            vectors, labels = mixture_block(min(BLOCK, n - s), rng, dim, **mixture)
            array[s : s + len(vectors)] = vectors
            out.writerows((f"{name}/{s + i:07d}.png", f"blob{c}") for i, c in enumerate(labels))
    array.flush()
    return folder / f"{name}.npy"


def write_pair(
    folder: Path,
    n_real: int,
    n_synthetic: int,
    dim: int = 256,
    shift: float = 1.0,
    missing: int = 2,
) -> tuple[Path, Path]:
    """Both domains; returns (real.npy, synthetic.npy)."""
    real = write_domain(folder, "real", n_real, seed=1, dim=dim)
    fake = write_domain(
        folder, "synthetic", n_synthetic, seed=2, dim=dim, shift=shift, missing=missing
    )
    return real, fake
