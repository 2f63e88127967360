"""`make bench` keeps working: its sections run (tiny sizes) and compare like with like.

No time is asserted here: benchmarks measure, tests check behaviour.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extraction_paths_give_the_same_vectors_on_the_cpu(bench):
    out = bench.bench_extraction(n=10, side=64)
    assert out["plain_fp32_images_per_s"] > 0 and out["optimised_images_per_s"] > 0
    # on the CPU both paths run fp32: the DataLoader and device pooling change nothing
    assert set(out["median_relative_error_vs_fp32"]) == {"p2", "p3", "p4", "p5", "p6"}
    assert all(v < 1e-5 for v in out["median_relative_error_vs_fp32"].values())


def test_caricature_section_compares_like_with_like(bench):
    """Batching must not change the caricatures it times: the same images either way."""
    out = bench.bench_caricature()
    assert out["one_at_a_time_per_minute"] > 0 and out["batched_per_minute"] > 0
    same = out["batched_vs_one_at_a_time"]
    # measured: mean 7e-4 and max 0.027 on the [0, 1] pixel scale, cosines within 1e-5
    assert same["mean_abs_pixel_difference"] < 2e-3 and same["max_abs_pixel_difference"] < 0.06
    assert same["max_cosine_difference"] < 1e-3


def test_scale_section_runs_the_whole_job_and_reports_each_figure(bench):
    # the demo's first render in Chromium is the browser tests'; here the batch job's figures
    out = bench.bench_scale(sizes=(400,), d=16, demo=False)["400+400"]
    assert set(out["stages_s"]) >= {"scan", "features", "project", "neighbors", "gap"}
    assert out["peak_rss_gib"] > 0 and out["end_to_end_s"] > 0
    assert out["neighbors"]["engine"] in ("torch", "faiss")  # exact below 200k rows
    assert out["gap_sample"] == {"real": 400, "synthetic": 400}
    assert out["overlap_plot"]["3D"]["points"] == 800  # under the budget: every point
    assert out["click_to_gallery_ms"]["median_of_next_20"] > 0
    assert out["demo"] == {"skipped": "asked"}


def test_demo_section_loads_the_server_with_clients_and_counts_errors(bench):
    out = bench.bench_demo(clients=(2,), seconds=1.5, n_per_domain=20)
    load = out["2_clients"]
    assert load["clicks_per_s"] > 0 and load["errors"] == 0
    assert load["p50_ms"] <= load["p95_ms"] <= load["p99_ms"]
    assert load["server_cores_busy"] > 0
    assert len(load["load_average_1m"]) == 2 and min(load["load_average_1m"]) >= 0  # beside it


def test_whatif_section_times_every_transform_and_the_job_by_step(bench):
    from lib.inputs.transforms import TRANSFORMS
    from lib.jobs.whatif import WhatIfJob

    job = WhatIfJob(transforms=["blur=1"], synthetic=40, real=40, levels=["c3"], resamples=20)
    out = bench.bench_whatif(n=32, side=64, job=job, example_n=60)

    assert set(out["transform_images_per_s"]) == set(TRANSFORMS)
    assert all(v > 0 for v in out["transform_images_per_s"].values())
    assert {"decode", "transform", "extract", "measure"} <= set(out["job_seconds_by_step"])
    assert "1 variants × 40 synthetic images" in out["what"]


def test_objects_section_times_each_way_of_pooling_the_same_boxes(bench):
    out = bench.bench_objects(n_scenes=1, test_size=(96, 128))
    for mode in ("roi", "levels", "crop"):
        assert out[mode]["objects_per_s"] > 0
    assert out["ratio_to_crop"]["crop"] == 1.0 and "objects on 2 images" in out["what"]


def test_detection_section_times_each_step_of_an_evaluation(bench, monkeypatch):
    trained = bench._detector_training(scenes=4, epochs=2, sizes=(64,))
    assert trained[0]["images_per_second"] > 0 and trained[0]["train_images"] == 3
    monkeypatch.setattr(bench, "_detector_training", lambda: [])
    out = bench.bench_detection(sizes=(40,))
    (row,) = out["rows"]
    assert row["test_images"] == 40 and row["objects"] > 40
    assert row["cocoeval_seconds"] > 0 and row["bootstrap_200_seconds"] > 0
    assert len(row["load_average_1m"]) == 2
