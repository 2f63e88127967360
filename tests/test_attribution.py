"""Attributing the gap to image properties (lib.analysis.photometry,
lib.analysis.attribution), on cases with a known answer built from the example's real
digits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lib.analysis.attribution import explained, sentences, separation
from lib.analysis.photometry import STATISTICS, jpeg_quality, statistics


def table(images: list[np.ndarray]) -> dict[str, np.ndarray]:
    rows = [statistics(i) for i in images]
    return {name: np.array([r[name] for r in rows]) for name in STATISTICS}


def pixel_classifier(images: list[np.ndarray], synthetic: np.ndarray) -> np.ndarray:
    """Out-of-fold p(synthetic) of a domain classifier on stand-in features of a shallow
    level: each 8 × 8 block's mean (shape, content) and mean |Laplacian| (texture)."""
    from scipy.ndimage import laplace
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    def blocks(a: np.ndarray) -> np.ndarray:
        return a.reshape(8, 8, 8, 8).mean(axis=(1, 3)).ravel()

    grey = [i[..., 0] / 255.0 for i in images]
    X = np.array([np.r_[blocks(g), blocks(np.abs(laplace(g)))] for g in grey])
    model = LogisticRegression(max_iter=2000)
    return cross_val_predict(model, X, synthetic, cv=5, method="predict_proba")[:, 1]


@pytest.fixture(scope="module")
def sharpened():
    """Real digits against the same kind of digits sharpened (unsharp mask) with a
    little grey noise: a gap of filters only."""
    from lib.inputs.example import real_digits, sharpen, soft_rgb

    digits, _ = real_digits(400, seed=0)
    images = list(soft_rgb(digits[:200])) + list(sharpen(soft_rgb(digits[200:]), seed=1))
    return images, np.r_[np.zeros(200, bool), np.ones(200, bool)]


def test_a_sharpened_noisier_synthetic_set_is_attributed_to_sharpness_and_noise(sharpened):
    images, synthetic = sharpened
    found = separation(table(images), synthetic)
    assert {found[0].statistic, found[1].statistic} == {"sharpness", "noise"}
    sharp = next(s for s in found if s.statistic == "sharpness")
    assert sharp.auc > 0.95 and sharp.clear and sharp.ratio > 2
    brightness = next(s for s in found if s.statistic == "brightness")
    assert brightness.strength < 0.1  # the filters keep the overall brightness
    said = sentences(found)
    assert said[0].startswith("synthetic images are") and "sharper" in " ".join(said[:2])


def test_photometry_explains_a_filter_gap_and_not_a_content_gap(sharpened):
    from lib.inputs.example import real_digits, soft_rgb

    images, synthetic = sharpened
    filters = explained(table(images), pixel_classifier(images, synthetic), repeats=2)
    # content only: real digits 0-4 against real digits 5-9, the same photometry
    digits, labels = real_digits(None)
    content = list(soft_rgb(digits[labels < 5][:200])) + list(soft_rgb(digits[labels >= 5][:200]))
    p = pixel_classifier(content, synthetic)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(synthetic, p) > 0.85  # the features do tell them apart
    not_filters = explained(table(content), p, repeats=2)
    # measured: R² 0.96 [0.94, 0.97] against 0.05 [-0.07, 0.17] (domain AUC 0.94)
    assert filters["r2"] > 0.6 and filters["ci95"][0] > 0.4
    assert not_filters["r2"] < 0.25 and not_filters["ci95"][1] < filters["ci95"][0]


def test_statistics_of_plain_images_are_what_they_should_be(tmp_path):
    flat = statistics(np.full((32, 32, 3), 128, np.uint8))
    assert flat["sharpness"] == flat["noise"] == flat["high_freq"] == flat["edge_density"] == 0
    assert flat["saturation"] == 0 and flat["contrast"] < 1e-6
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[:, ::2] = 255  # the highest frequency there is
    assert statistics(stripes)["high_freq"] > 0.9
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 200
    assert statistics(red)["a_mean"] > 50 and statistics(red)["saturation"] == 1


@pytest.mark.parametrize("quality", [30, 60, 90])
def test_a_jpegs_quality_is_read_back_from_its_tables(tmp_path, quality):
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    image.save(tmp_path / "a.jpg", quality=quality)
    image.save(tmp_path / "a.png")
    assert jpeg_quality(tmp_path / "a.jpg") == pytest.approx(quality, abs=2)
    assert jpeg_quality(tmp_path / "a.png") is None


def test_the_fast_auc_is_sklearns():
    from sklearn.metrics import roc_auc_score

    from lib.analysis.gap.classifier import rank_auc

    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    v = np.round(rng.normal(size=300) + y, 1)  # with ties
    assert rank_auc(y, v) == pytest.approx(roc_auc_score(y, v), abs=1e-12)


# ---- in a run and its report -------------------------------------------------------------


def test_a_run_says_what_differs_and_the_report_shows_it(published_run):
    from demo.report import what_differs

    found = published_run.metrics["attribution"]
    n = int((published_run.images["domain"] == "real").sum())
    assert found["n"] == {"real": n, "synthetic": len(published_run.images) - n}
    assert set(found["explained"]) == set(published_run.levels)
    strengths = [abs(s["auc"] - 0.5) for s in found["statistics"]]
    assert strengths == sorted(strengths, reverse=True)
    text, figure = what_differs(published_run)
    assert text.startswith("### What differs") and found["statistics"][0]["statistic"] in text
    assert all(s in text for s in found["sentences"])
    assert [t.type for t in figure.data] == ["bar", "scatter"]


# ---- #31: attribution claims no more than its model shows ------------------------------------


def test_31_a_low_r2_is_not_called_content_and_a_small_gap_is_said_to_be_small():
    from lib.analysis.attribution import explained_sentences

    levels = {
        "c4": {"r2": 0.06, "ci95": [-0.05, 0.15], "n": 400, "auc": 0.83},
        "c5": {"r2": 0.0, "ci95": [-0.1, 0.1], "n": 400, "auc": 0.55},
    }
    said = " ".join(explained_sentences(levels))
    assert "not filters" not in said and "does not show the gap is content" in said
    assert "at c5 the classifier barely tells the domains apart" in said
    assert "c4 these statistics explain little" in said  # c4 has a gap R² does not explain


def test_31_statistics_that_move_together_under_one_tone_curve_are_said_to(tmp_path):
    """Dark icons over white, the synthetic half through one gamma: brightness, contrast
    and sharpness all move; attribution says they move together and names the one
    change to try, rather than three fixes."""
    import torch
    from PIL import Image, ImageDraw
    from torchvision.transforms.v2 import functional as F

    from lib.analysis.attribution import attribute

    rng = np.random.default_rng(0)
    paths, synthetic = [], []
    for i in range(160):
        image = Image.new("RGB", (64, 64), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 6))):  # a few dark shapes of varied tone
            x, y = rng.integers(0, 48, 2)
            tone = int(rng.integers(0, 140))
            draw.ellipse([x, y, x + rng.integers(8, 16), y + rng.integers(8, 16)], fill=(tone,) * 3)
        pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)
        if i % 2:
            pixels = F.adjust_gamma(pixels, 2.2)
        path = tmp_path / f"{i:03d}.png"
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
        synthetic.append(bool(i % 2))
    found = attribute(paths, np.array(synthetic), {})
    note = [s for s in found["sentences"] if "move together" in s]
    assert note and "tonecurve" in note[0]
    # and the one change is named first, with its strength: the gamma that was applied
    assert found["tone"]["gamma"] == pytest.approx(2.2, abs=0.15)
    assert found["sentences"][0].startswith("one tone curve fits the difference")
    assert f"real^{found['tone']['gamma']:.2f}" in found["sentences"][0]


def test_31_no_tone_curve_is_named_where_the_tones_agree_or_no_curve_fits():
    from lib.analysis.attribution import fitted_tone, tone_sentences
    from lib.analysis.photometry import TONE_QUANTILES

    rng = np.random.default_rng(0)
    real = np.sort(rng.uniform(0.05, 0.95, (80, len(TONE_QUANTILES))), axis=1)
    synthetic = np.r_[np.zeros(40, bool), np.ones(40, bool)]
    same = fitted_tone(real, synthetic)
    assert same["gamma"] == pytest.approx(1.0, abs=0.1) and tone_sentences(same) == []
    swapped = real.copy()  # synthetic tones reversed: no single power curve maps them
    swapped[synthetic] = 1 - real[synthetic][:, ::-1]
    swapped[synthetic] = np.sort(np.clip(swapped[synthetic] ** 0.3 * 0.5, 0, 1), axis=1)
    assert tone_sentences(fitted_tone(swapped, synthetic)) == []
