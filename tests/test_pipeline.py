"""The batch job end to end: a published run holds what DESIGN.md promises."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lib.plots import overlap_png_name
from tests.conftest import N_PER_DOMAIN, example_config

pytestmark = pytest.mark.slow
LEVELS = ["c1", "c2", "c3", "c4", "c5"]


def test_run_is_published_with_every_file(published_run, results_dir):
    run = published_run
    assert (results_dir / "latest").resolve() == run.dir.resolve()
    assert not [p for p in (results_dir / "runs").iterdir() if p.name.startswith(".")]
    m = json.loads((run.dir / "manifest.json").read_text())
    assert m["status"] == "complete"
    assert m["backbone"]["name"] == "efficientnet-lite0"
    assert m["backbone"]["random_weights"] is False
    assert "ImageNet" in m["backbone"]["weights"]
    assert m["counts"] == {"real": N_PER_DOMAIN, "synthetic": N_PER_DOMAIN}
    assert set(m["timings_s"]) == {"scan", "model", "extract", "project", "neighbors", "gap"}
    assert m["backend"]["name"] == "cpu" and m["backend"]["reason"]
    assert run.levels == LEVELS
    for level in LEVELS:
        assert run.features(level).dtype == np.float32
        assert run.features(level).shape[0] == 2 * N_PER_DOMAIN
    assert {p.name for p in (run.dir / "plots").iterdir()} == {
        overlap_png_name(level, fit_on) for level in LEVELS for fit_on in ("real", "synthetic")
    }
    assert len(list((run.dir / "thumbs").iterdir())) == 2 * N_PER_DOMAIN


def test_images_table_is_sorted_and_labelled(published_run, example_dir):
    images = published_run.images
    assert list(images["id"]) == list(range(2 * N_PER_DOMAIN))
    assert list(images["domain"]) == ["real"] * N_PER_DOMAIN + ["synthetic"] * N_PER_DOMAIN
    for _, part in images.groupby("domain"):
        assert list(part["relpath"]) == sorted(part["relpath"])
    meta = pd.read_csv(example_dir / "metadata.csv", dtype=str)
    expected = dict(
        zip([str((example_dir / f).resolve()) for f in meta.filename], meta.category, strict=True)
    )
    assert dict(zip(images["path"], images["category"], strict=True)) == expected


@pytest.mark.parametrize("method", ["umap", "pca"])
def test_projections_fit_on_one_domain_and_map_the_other(published_run, method):
    proj = published_run.projections
    assert set(proj["method"]) == {"umap", "pca", "tsne"}
    proj = proj[proj["method"] == method]
    assert len(proj) == len(LEVELS) * 2 * 2 * N_PER_DOMAIN
    for (level, fit_on), part in proj.groupby(["level", "fit_on"]):
        assert sorted(part["id"]) == list(range(2 * N_PER_DOMAIN)), (level, fit_on)
        assert np.isfinite(part[["x", "y", "z"]].to_numpy()).all()
    # both directions are genuinely different embeddings
    a = proj[(proj.level == "c3") & (proj.fit_on == "real")].sort_values("id")
    b = proj[(proj.level == "c3") & (proj.fit_on == "synthetic")].sort_values("id")
    assert not np.allclose(a[["x", "y", "z"]].to_numpy(), b[["x", "y", "z"]].to_numpy())


def test_tsne_embeds_both_domains_together_in_2d(published_run):
    proj = published_run.projections
    proj = proj[proj["method"] == "tsne"]
    assert set(proj["fit_on"]) == {"both"}
    for level, part in proj.groupby("level"):
        assert sorted(part["id"]) == list(range(2 * N_PER_DOMAIN)), level
        assert np.isfinite(part[["x", "y"]].to_numpy()).all() and part["z"].isna().all()
    assert published_run.manifest["config"]["projections"] == ["umap", "pca", "tsne"]


def test_neighbours_are_exact_in_feature_space(published_run):
    for level in ("c2", "c5"):
        X = np.asarray(published_run.features(level), dtype=np.float64)
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        d = 1 - Xn @ Xn.T
        np.fill_diagonal(d, np.inf)
        idx, dist = published_run.neighbors(level)
        assert idx.shape == dist.shape == (2 * N_PER_DOMAIN, 8)
        np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :8], atol=1e-4)
        assert (idx != np.arange(len(X))[:, None]).all()


def test_real_neighbours_of_digits_share_their_category(published_run):
    """Meaningful out of the box: the packaged ImageNet weights group same digits."""
    images = published_run.images
    idx, _ = published_run.neighbors("c4")
    cats = images["category"].to_numpy()
    agree = (cats[idx[:, :3]] == cats[:, None]).mean()
    assert agree > 0.3  # chance is 0.1 for ten balanced digits


def test_second_run_resumes_from_the_feature_cache(published_run, example_dir, results_dir):
    from lib.pipeline import run
    from lib.store import RunStore

    second = run(example_config(example_dir), RunStore(results_dir))
    assert second.manifest["cached_images"] == 2 * N_PER_DOMAIN
    assert second.id != published_run.id
    assert (results_dir / "latest").resolve() == second.dir.resolve()
    np.testing.assert_array_equal(second.features("c3"), published_run.features("c3"))
    assert published_run.manifest["status"] == "complete"  # the older run stays intact
