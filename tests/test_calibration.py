"""Which gap number predicts mAP (#28): the rank correlation across variants, on a case
built so that the answer is known and no detector needs training."""

from __future__ import annotations

import numpy as np
import pytest

from lib.analysis import calibration as C
from tests.detection_scenes import drop_variants, variant_runs


@pytest.fixture(scope="module")
def variants():
    return drop_variants()


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


# ---- the job, from runs, and the tab ------------------------------------------------------


@pytest.fixture(scope="module")
def variant_store(published_run, tmp_path_factory, variants):
    return variant_runs(published_run, tmp_path_factory.mktemp("calibration"), variants)


def test_the_calibration_job_publishes_which_metric_predicts_ap_and_the_tab_shows_it(
    variant_store,
):
    from demo import calibration as tab
    from lib.store.runs import RunStore
    from tests.conftest import batch

    root, ids = variant_store
    args = [a for i in ids for a in ("--variant", i)]
    result = batch(
        "evaluate", "calibration", *args, "--detector", "det", "--resamples", "200",
        "--results", str(root),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = RunStore(root).open()
    out = run.calibration
    assert list(out["variants"]) == ids and out["figure"] == "AP"
    for level, metrics in out["levels"].items():
        assert metrics["coverage"]["rho"] == pytest.approx(1.0), level
        assert metrics["fd"]["rho"] == pytest.approx(-1.0) and metrics["fd"]["ci95"][1] < 0
    assert "predicts AP" in result.stdout and "with 5 variants only |ρ| ≥ 1.00" in result.stdout
    _, note, table, chart = tab.on_run(RunStore(root), run.id, "coverage")
    assert "5 variants" in note and "predicts AP" in note
    assert table["headers"][:2] == ["level", "fd"] and len(table["value"]) == len(out["levels"])
    assert all(len(trace.x) == 5 for trace in chart.data)  # a point per variant per level


def test_calibrations_that_cannot_be_made_are_one_line_errors(variant_store, tmp_path):
    import json
    import shutil

    from tests.conftest import batch, one_error_line

    root, ids = variant_store

    def calibrate_cli(*args):
        return batch("evaluate", "calibration", *args, "--results", str(root))

    two = calibrate_cli("--variant", ids[0], "--variant", ids[1], "--detector", "det")
    assert "give at least 3 different runs" in one_error_line(two)
    absent = calibrate_cli(*[a for i in ids for a in ("--variant", i)], "--detector", "other")
    assert f"run {ids[0]} has no detector 'other'" in one_error_line(absent)
    # one variant tested on another test set
    other = root / "runs" / ids[4] / "detections" / "det" / "truth.json"
    saved = other.read_text()
    truth = json.loads(saved)
    other.unlink()  # a published run's files are links: replace, never write through
    truth["images"] = truth["images"][:-1]
    other.write_text(json.dumps(truth))
    try:
        mixed = calibrate_cli(*[a for i in ids for a in ("--variant", i)], "--detector", "det")
        assert "tested on different test sets" in one_error_line(mixed)
    finally:
        other.unlink()
        other.write_text(saved)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_python_api_gives_cocos_figures_with_intervals(tmp_path, variants):
    import json

    import lib as gapscope

    _, evaluations = variants
    e = evaluations["v0"].cocoeval
    (tmp_path / "gt.json").write_text(json.dumps(e.cocoGt.dataset))
    found = [
        {key: d[key] for key in ("image_id", "category_id", "bbox", "score")}
        for d in e.cocoDt.dataset["annotations"]
    ]
    (tmp_path / "p.json").write_text(json.dumps(found))
    table = gapscope.evaluate_detections(tmp_path / "gt.json", tmp_path / "p.json", resamples=50)
    ap = table.set_index("figure").loc["AP"]
    assert ap.value == pytest.approx(evaluations["v0"].summary["AP"])
    assert 0 <= ap.lo < ap.hi <= 1 and ap.hi - ap.lo < 0.3  # 150 images: a few points wide
    assert {"AP50", "AR100", "class:car"} <= set(table.figure)


def test_the_loop_measures_trains_and_correlates_each_variant_in_one_command(tmp_path):
    """`batch train calibrate` on three variants of the object example's synthetic scenes
    (as they are, blurred by 1 and by 3 px): a run per variant measuring its gap, a
    detector per variant tested on the same real images, the calibration published with
    every level's metrics, and no metric called a predictor from three variants."""
    from PIL import Image, ImageFilter

    from lib.inputs.example import build_object_example
    from lib.store.runs import RunStore
    from tests.conftest import batch, one_error_line

    data = build_object_example(tmp_path / "data", 6).root
    for radius in (1, 3):
        out = tmp_path / f"blur{radius}"
        out.mkdir()
        for p in sorted((data / "synthetic").iterdir()):
            Image.open(p).convert("RGB").filter(ImageFilter.GaussianBlur(radius)).save(out / p.name)
    variants = [("as-is", data / "synthetic")]
    variants += [(f"blur{r}", tmp_path / f"blur{r}") for r in (1, 3)]
    boxes = str(data / "synthetic.json")
    args = []
    for name, folder in variants:
        args += ["--variant", f"{name}={folder}", "--variant-boxes", boxes]
    result = batch(
        "train", "calibrate", "--name", "loop", "--real", str(data / "real"),
        "--real-boxes", str(data / "real.json"), *args, "--test", str(data / "real"),
        "--test-boxes", str(data / "real.json"), "--epochs", "1", "--batch-size", "4",
        "--image-size", "64", "--resamples", "100", "--results", str(tmp_path / "results"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    store = RunStore(tmp_path / "results")
    out = store.open().calibration
    assert list(out["variants"]) == ["as-is", "blur1", "blur3"]
    assert set(out["runs"].values()) <= set(store.run_ids())
    levels = store.open(out["runs"]["as-is"]).levels
    assert set(out["levels"]) == set(levels) and "coverage" in out["levels"][levels[0]]
    for name, _ in variants:
        assert (tmp_path / "results" / "models" / f"loop-{name}" / "test.json").is_file()
    assert not any(" predicts AP" in line for line in out["findings"])
    # one epoch at 64 px may leave every AP at 0: then the findings say that instead
    assert out["findings"][-1].startswith(
        ("with 3 variants no rank correlation", "the detectors' AP does not differ")
    )
    two = args[:4]
    bad = batch(
        "train", "calibrate", "--name", "x", "--real", str(data / "real"),
        "--real-boxes", str(data / "real.json"), *two, "--test", str(data / "real"),
        "--test-boxes", str(data / "real.json"), "--results", str(tmp_path / "r2"),
    )  # fmt: skip
    assert "give at least 3 variants" in one_error_line(bad)
