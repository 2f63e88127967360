"""Modes one domain over- or under-represents (lib.analysis.gap.modes, the run's modes
stage): the ratio's interval holds the truth by simulation, a mode missing from the
synthetic set is found and ranked first, and the modes are said in words."""

from __future__ import annotations

import numpy as np
import pytest

from lib.analysis.gap.modes import Modes, names, ratio_interval, sentence
from lib.runtime.errors import GapscopeError

CENTRES = np.eye(16)[:3] * 8  # three distinct blobs in 16-d


def _draw(rng, weights, n):
    blob = rng.choice(3, n, p=weights)
    return rng.normal(size=(n, 16)) + CENTRES[blob], blob


def test_the_ratio_interval_holds_the_truth_in_about_95_percent_of_draws():
    """300 + 300 images, a blob missing from synthetic, modes fitted on the draw itself
    (6 modes over 3 blobs: boundaries inside a blob move with the sample). A mode's true
    ratio: Σ w_s q_b / Σ w_r q_b over the blobs, q_b the share of blob b's images in it."""
    w_real, w_fake = np.array([0.6, 0.3, 0.1]), np.array([0.6, 0.4, 0.0])
    held = total = 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        (real, a), (fake, b) = _draw(rng, w_real, 300), _draw(rng, w_fake, 300)
        fitted = Modes(6, seed=seed).fit(real, fake)
        blobs = np.r_[a, b]
        for row in fitted.table_:
            inside = fitted.labels_ == row["mode"]
            q = np.array([(inside & (blobs == k)).sum() / (blobs == k).sum() for k in range(3)])
            truth = (w_fake * q).sum() / (w_real * q).sum()
            held += row["ci95"][0] <= truth <= row["ci95"][1]
            total += 1
    assert 0.92 <= held / total <= 0.985, held / total  # 0.958 over 200 draws


def test_ratio_interval_at_the_edges():
    assert ratio_interval(0, 100, 20, 100) == (0.0, [0.0, pytest.approx(0.4, abs=0.3)])
    ratio, (lo, hi) = ratio_interval(20, 100, 0, 100)
    assert ratio == np.inf and hi == np.inf and lo > 2
    ratio, (lo, hi) = ratio_interval(30, 100, 30, 100)
    assert ratio == 1 and lo < 1 < hi


def test_a_mode_missing_from_synthetic_is_found_first_with_its_ratio(tmp_path):
    """Given embeddings: real images in four blobs (a quarter each), synthetic in the
    first three only. The run's modes rank the missing blob first, with no synthetic
    image, a quarter of real, beyond noise; the rest are within noise or near 4/3."""
    from conftest import run_embeddings

    rng = np.random.default_rng(0)
    centres = np.eye(12)[:4] * 10
    real = rng.normal(size=(200, 12)) + centres[np.repeat(np.arange(4), 50)]
    fake = rng.normal(size=(200, 12)) + centres[rng.choice(3, 200)]
    found = run_embeddings(tmp_path, real, fake, modes=4).metrics["modes"]
    first = found["modes"][0]
    assert first["synthetic"] == 0 and first["real"] == 50 and first["ratio"] == 0
    assert first["beyond_noise"] and first["ci95"][1] < 0.2  # ≥ 6× rarer
    assert first["says"].startswith(f"mode {first['mode']} has no synthetic image")
    assert set(first["examples"]["real"]) <= set(range(150, 200))  # the fourth blob's rows
    others = found["modes"][1:]
    assert all(0.9 < r["ratio"] < 1.9 for r in others)
    assert found["total_variation"] == pytest.approx(0.25, abs=0.06)


def test_modes_are_said_in_words():
    row = {
        "mode": 7,
        "ratio": 0.2,
        "ci95": [0.1, 0.4],
        "beyond_noise": True,
        "synthetic_share": 0.02,
        "real_share": 0.1,
    }
    assert sentence(row, "darker") == (
        "mode 7 (darker) is 5× [2.5, 10] rarer in synthetic (2.0% of synthetic images, 10% of real)"
    )
    same = row | {"ratio": 1.1, "ci95": [0.8, 1.5], "beyond_noise": False}
    assert sentence(same).endswith(
        "commoner in synthetic (2.0% of synthetic images, 10% of real), within noise"
    )
    looks = {
        "brightness": np.r_[np.full(10, 20.0), np.full(30, 70.0)],
        "contrast": np.full(40, 5.0),
        "saturation": np.zeros(40),
    }
    modes = np.r_[np.zeros(10, int), np.ones(30, int)]
    categories = np.array(["3"] * 8 + ["1"] * 2 + ["<b>x</b>"] * 30)
    words = names(looks, modes, categories)
    assert words[0] == ["darker", "mostly 3"] and words[1] == ["brighter", "mostly <b>x</b>"]


def test_an_unknown_modes_level_and_too_few_modes_are_refused():
    from lib.jobs.run.config import ModeParams, chosen_level

    with pytest.raises(GapscopeError, match="--modes must be at least 2"):
        ModeParams(modes=1)
    with pytest.raises(GapscopeError, match=r"--modes-level c9: no such level \(c2, c3\)"):
        chosen_level("c9", ["c2", "c3"], "modes-level")
