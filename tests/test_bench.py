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


def test_caricature_section_reports_both_ways(bench):
    out = bench.bench_caricature()
    assert out["one_at_a_time_per_minute"] > 0 and out["batched_per_minute"] > 0
    assert out["speedup"] == pytest.approx(
        out["one_at_a_time_seconds"] / out["batched_seconds"], rel=0.05
    )
