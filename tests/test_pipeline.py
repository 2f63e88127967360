"""The batch job end to end: a published run holds what DESIGN.md promises."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lib.store.runs import overlap_plot_name
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
    stages = {
        "scan",
        "model",
        "extract",
        "project",
        "atlas",
        "neighbors",
        "gap",
        "duplicates",
        "modes",
        "attribution",
        "plots",
    }
    assert set(m["timings_s"]) == stages
    assert m["backend"]["name"] == "cpu" and m["backend"]["reason"]
    assert m["backend"]["precision"] == "fp32" and m["backend"]["knn_engine"] == "torch"
    assert m["backend"]["clustering"] == "sklearn" and m["backend"]["projection"] == "cpu"
    assert m["schema"] == 2 and m["run_id"] == run.id
    assert run.levels == LEVELS
    for level in LEVELS:
        assert run.features(level).dtype == np.float32
        assert run.features(level).shape[0] == 2 * N_PER_DOMAIN
    assert {p.name for p in (run.dir / "plots").iterdir()} == {
        overlap_plot_name("umap", level, fit_on)
        for level in LEVELS
        for fit_on in ("real", "synthetic")
    }
    assert len(list((run.dir / "thumbs").iterdir())) == 2 * N_PER_DOMAIN
    # the original tool's file names
    assert "3d_UMAP_c4 (Synthetic mapped to Real latent space).png" in {
        p.name for p in (run.dir / "plots").iterdir()
    }


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
    assert set(proj["method"]) == {"umap", "pca", "tsne", "atlas"}  # the atlas: test_atlas
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
        idx, dist = published_run.neighbours(level)
        assert idx.shape == dist.shape == (2 * N_PER_DOMAIN, 8)
        np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :8], atol=1e-4)
        assert (idx != np.arange(len(X))[:, None]).all()


def test_real_neighbours_of_digits_share_their_category(published_run):
    """Meaningful out of the box: the packaged ImageNet weights group same digits."""
    images = published_run.images
    idx, _ = published_run.neighbours("c4")
    cats = images["category"].to_numpy()
    agree = (cats[idx[:, :3]] == cats[:, None]).mean()
    assert agree > 0.3  # chance is 0.1 for ten balanced digits


def test_second_run_resumes_from_the_feature_cache(
    published_run, example_dir, results_dir, tmp_path
):
    """A store of its own with the session's feature cache: the shared store's `latest`
    stays what the other tests expect, whatever order they run in."""
    import shutil

    from lib.jobs.run import run
    from lib.store.runs import RunStore

    shutil.copytree(results_dir / "cache", tmp_path / "cache")
    second = run(example_config(example_dir), RunStore(tmp_path))
    assert second.manifest["cached_images"] == 2 * N_PER_DOMAIN
    assert (tmp_path / "latest").resolve() == second.dir.resolve()
    np.testing.assert_array_equal(second.features("c3"), published_run.features("c3"))


def _rows(run, domain: str) -> np.ndarray:
    return np.flatnonzero(run.images["domain"].to_numpy() == domain)


def _stored(run, method: str, level: str, fit_on: str, rows: np.ndarray) -> np.ndarray:
    proj = run.projections
    part = proj[(proj.method == method) & (proj.level == level) & (proj.fit_on == fit_on)]
    return part.set_index("id").loc[rows, ["x", "y", "z"]].to_numpy()


@pytest.mark.parametrize("fit_on", ["real", "synthetic"])
def test_stored_pca_is_fitted_on_the_named_domain_only(published_run, fit_on):
    """Against numpy's SVD of that domain's features alone: swapping the domains or
    fitting both together would change every stored coordinate."""
    from tests.test_reduce import assert_same_up_to_sign, pca_reference

    other = "synthetic" if fit_on == "real" else "real"
    X = np.asarray(published_run.features("c3"), dtype=np.float64)
    fitted, mapped = _rows(published_run, fit_on), _rows(published_run, other)
    ref_fit, ref_mapped = pca_reference(X[fitted], X[mapped])
    assert_same_up_to_sign(_stored(published_run, "pca", "c3", fit_on, fitted), ref_fit)
    assert_same_up_to_sign(_stored(published_run, "pca", "c3", fit_on, mapped), ref_mapped)


def test_stored_umap_of_the_fitted_domain_is_the_fits_own_embedding(published_run):
    from lib.analysis.reduce import UMAPParams, UMAPProjector

    real = _rows(published_run, "real")
    X = np.asarray(published_run.features("c2"), dtype=np.float32)
    fit = UMAPProjector(UMAPParams()).fit(X[real]).embedding_  # seeded: the same fit again
    np.testing.assert_allclose(_stored(published_run, "umap", "c2", "real", real), fit, atol=1e-5)


def test_stored_distances_are_the_distances_of_the_stored_neighbours(published_run):
    for level in ("c1", "c4"):
        X = np.asarray(published_run.features(level), dtype=np.float64)
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        idx, dist = published_run.neighbours(level)
        recomputed = 1 - np.einsum("id,ikd->ik", Xn, Xn[np.asarray(idx)])
        np.testing.assert_allclose(dist, recomputed, atol=1e-5)
        assert (np.diff(dist, axis=1) >= -1e-6).all()  # nearest first


def test_scores_line_up_with_the_images_table(published_run):
    images, scores = published_run.images, published_run.scores
    synthetic = images["domain"].to_numpy() == "synthetic"
    for level, part in scores.groupby("level"):
        part = part.set_index("id").loc[images["id"]]  # every image, exactly once
        assert len(part) == len(images) and part.index.is_unique, level
        np.testing.assert_array_equal(part["realism"].notna().to_numpy(), synthetic)
        np.testing.assert_array_equal(part["covered"].notna().to_numpy(), ~synthetic)
    assert set(scores["level"]) == set(LEVELS)


def test_a_failure_after_extraction_publishes_nothing_and_the_rerun_uses_the_cache(
    published_run, example_dir, results_dir, tmp_path, monkeypatch
):
    import shutil

    import lib.jobs.run
    from lib.jobs.run import run
    from lib.store.runs import RunStore

    shutil.copytree(results_dir, tmp_path / "store", symlinks=True)
    store = RunStore(tmp_path / "store")
    before = store.latest_id()
    shutil.rmtree(store.cache_dir)

    def broken(*args, **kwargs):
        raise RuntimeError("the gap stage failed")

    monkeypatch.setattr(lib.jobs.run, "measure_gap", broken)
    with pytest.raises(RuntimeError, match="gap stage failed"):
        run(example_config(example_dir), store)
    assert store.latest_id() == before and store.run_ids() == [before]
    assert not [p for p in store.runs_dir.iterdir() if p.name.startswith(".")]
    assert any(store.cache_dir.rglob("hashes.npy"))  # what was extracted is kept
    monkeypatch.undo()
    again = run(example_config(example_dir), store)
    assert again.manifest["cached_images"] == 2 * N_PER_DOMAIN
    assert store.latest_id() == again.id != before


def test_projections_run_where_the_backend_says(
    published_run, example_dir, results_dir, tmp_path, monkeypatch
):
    """The projectors a run uses are built for `Backend.projection` (cuML on a GPU), not
    left on the CPU default: checked here with a marker backend on a CPU machine."""
    import dataclasses
    import shutil

    import lib.jobs.run
    import lib.runtime.backend
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    real_choose, real_project = lib.runtime.backend.choose_backend, lib.jobs.run.measure.project
    used = []

    def marked(*args, **kwargs):
        return dataclasses.replace(real_choose(*args, **kwargs), projection="marker")

    def project(vectors, rows, projectors, progress):
        used.extend(p.backend for p in projectors)
        for p in projectors:
            p.backend = "cpu"  # computed on the CPU all the same
        return real_project(vectors, rows, projectors, progress)

    monkeypatch.setattr(lib.jobs.run, "choose_backend", marked)
    monkeypatch.setattr(lib.jobs.run.measure, "project", project)
    shutil.copytree(results_dir / "cache", tmp_path / "cache")
    config = RunConfig.of(
        example_dir / "real",
        example_dir / "synthetic",
        k=4,
        projections=("pca", "umap"),
        plots=False,
    )
    published = run(config, RunStore(tmp_path))
    assert used == ["marker", "marker", "marker"]  # PCA, UMAP and the atlas's UMAP
    assert published.manifest["backend"]["projection"] == "marker"
