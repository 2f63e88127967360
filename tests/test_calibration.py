"""Which gap number predicts mAP (#28): the rank correlation across variants, on a case
built so that the answer is known and no detector needs training."""

from __future__ import annotations

import numpy as np
import pytest

from lib.analysis import calibration as C
from lib.analysis import detection as D
from tests.detection_scenes import scene

DROPS = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75)  # share of the objects each variant's detector misses


@pytest.fixture(scope="module")
def variants():
    """One test set; per variant, a detector that finds each object unless the object's
    fixed draw falls under the variant's drop (so a worse variant misses a superset of
    what a better one misses) plus the same false positives: its AP falls with the
    drop by construction. The gap metrics: `fd` grows with the drop, `coverage` falls
    with it, `noise` is a random number per variant."""
    rng = np.random.default_rng(0)
    truth, _ = scene(150, rng)
    draw = rng.random(len(truth["annotations"]))
    false = [
        {"image_id": int(i), "category_id": 1, "bbox": [5.0, 5.0, 30.0, 30.0], "score": 0.2}
        for i in rng.integers(1, 151, 60)
    ]
    evaluations, gaps = {}, {}
    for k, drop in enumerate(DROPS):
        found = [
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [v + 1.0 for v in a["bbox"][:2]] + a["bbox"][2:],
                "score": 0.5 + 0.5 * d,
            }
            for a, d in zip(truth["annotations"], draw, strict=True)
            if d >= drop
        ]
        evaluations[f"v{k}"] = D.evaluate(truth, found + false)
        gaps[f"v{k}"] = {
            "p3": {"fd": 10 * drop + 1, "coverage": 0.9 - drop, "noise": float(rng.random())}
        }
    return gaps, evaluations


def test_the_metric_that_tracks_map_is_named_with_its_interval_and_noise_is_not(variants):
    gaps, evaluations = variants
    out = C.calibrate(gaps, evaluations, resamples=300)
    aps = list(out["variants"].values())
    assert aps == sorted(aps, reverse=True) and aps[0] > aps[-1] + 0.3  # by construction
    p3 = out["levels"]["p3"]
    assert p3["fd"]["rho"] == pytest.approx(-1.0) and p3["fd"]["ci95"][1] < 0
    assert p3["coverage"]["rho"] == pytest.approx(1.0) and p3["coverage"]["ci95"][0] > 0
    lo, hi = p3["noise"]["ci95"]
    assert lo < 0 < hi  # a random number: its interval holds no correlation
    words = C.findings(out)
    assert words[0].startswith("for this detector and data, ")
    assert "predicts AP" in words[0] and ("fd at p3" in words[0] or "coverage at p3" in words[0])
    assert any("noise at p3 does not clearly predict" in w for w in words) or abs(
        p3["noise"]["rho"]
    ) < min(abs(p3["fd"]["rho"]), 1)
    assert "with 6 variants only |ρ| ≥ 0.89 is significant" in words[-1]


def test_resampled_aps_move_together_and_the_interval_counts_the_variants():
    """Spearman's ρ with ties; five variants where the metric orders all but two: the
    interval is wide, and fewer than five variants are said to allow no answer."""
    assert C.spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1)
    assert np.isnan(C.spearman(np.array([1, 1, 1]), np.array([1, 2, 3])))
    assert C.spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(
        0.9487, abs=1e-4
    )
    few = C.findings(
        {
            "figure": "AP",
            "variants": {"a": 0.1, "b": 0.2, "c": 0.3},
            "levels": {"p3": {"fd": {"rho": -1.0, "ci95": [-1.0, -1.0], "n": 3}}},
            "critical_rho": None,
        }
    )
    assert few[-1] == "with 3 variants no rank correlation can be significant: use at least 5"
