"""Near-copies and leaks (lib.analysis.duplicates, the run's duplicates stage): planted copies
(exact and slightly changed) are found and called copies, a set without copies has none,
and a feature coincidence is never called a copy."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lib.analysis.duplicates import Pair, best_correlation, confirm, threshold
from lib.store.runs import RunStore


def _changed(src, dst, how: str, rng):
    im = np.asarray(Image.open(src).convert("RGB")).astype(float)
    if how == "shift":
        im = np.roll(im, 1, axis=1)
    if how == "noise":
        im = im + rng.normal(0, 2, im.shape)
    out = Image.fromarray(np.clip(np.rint(im), 0, 255).astype(np.uint8))
    if how == "resize":
        size = out.size
        out = out.resize((size[0] - 6, size[1] - 6), Image.Resampling.BILINEAR).resize(size)
    out.save(dst)


@pytest.fixture(scope="module")
def planted(example_dir, tmp_path_factory):
    """The example's 40 + 40 digits with copies planted: 4 real digits into the synthetic
    set (exact, shifted 1 px, σ = 2 noise, resized), a synthetic digit repeated and a real
    digit repeated (resized). (the published run, {planted file: the file it copies})."""
    from lib.jobs.run import RunConfig, run

    root = tmp_path_factory.mktemp("planted")
    for domain in ("real", "synthetic"):
        shutil.copytree(example_dir / domain, root / domain)
    reals = sorted((root / "real").rglob("*.png"))
    fakes = sorted((root / "synthetic").rglob("*.png"))
    rng = np.random.default_rng(0)
    copies = {}
    for i, how in enumerate(("exact", "shift", "noise", "resize")):
        src = reals[5 * i]
        dst = root / "synthetic" / src.parent.name / f"copy_{how}.png"
        _changed(src, dst, how, rng)
        copies[dst.name] = src.name
    for src, how in ((fakes[3], "exact"), (reals[30], "resize")):
        dst = src.parent / f"again_{src.name}"
        _changed(src, dst, how, rng)
        copies[dst.name] = src.name
    config = RunConfig.of(
        real=root / "real",
        synthetic=root / "synthetic",
        projections=("pca",),
        plots=False,
        attribution=0,
        atlas_level="none",
    )
    return run(config, RunStore(root / "results")), copies


def test_planted_copies_are_found_and_called_copies(planted):
    published, copies = planted
    found = published.duplicates
    names = published.column("relpath")
    found = found.assign(
        a_name=[names[i].split("/")[-1] for i in found["a"]],
        b_name=[names[i].split("/")[-1] for i in found["b"]],
    )
    called = found[found["copy"].fillna(False)]
    pairs = {
        frozenset((a, b)): kind
        for a, b, kind in zip(called["a_name"], called["b_name"], called["kind"], strict=True)
    }
    assert set(pairs) == {frozenset(p) for p in copies.items()}  # every copy, nothing else
    for copy, original in copies.items():
        kind = pairs[frozenset((copy, original))]
        expected = "leak" if copy.startswith("copy_") else f"{original.split('_')[0]} repeat"
        assert kind == expected, (copy, kind)
    leaks = called[called["kind"] == "leak"]  # a leak names the synthetic image, then the real
    assert all(n.startswith("copy_") for n in leaks["a_name"])
    summary = published.metrics["duplicates"]
    assert summary["kinds"]["leak"]["images"] == 4
    assert summary["kinds"]["synthetic repeat"]["copies"] == 1
    assert summary["kinds"]["real repeat"]["copies"] == 1
    assert "robust SDs below the median" in summary["rule"]
    assert (called["correlation"] >= 0.99).all()


def test_a_set_without_copies_has_none(published_run):
    """The session's example run (40 + 40 distinct digits)."""
    found = published_run.duplicates
    assert found is not None and not found["copy"].fillna(False).any()
    assert all(k["copies"] == 0 for k in published_run.metrics["duplicates"]["kinds"].values())


def test_a_feature_coincidence_is_not_a_copy():
    """Two different digits whose features agree exactly: a candidate, never a copy."""
    from lib.inputs.example import real_digits, to_rgb

    digits, _ = real_digits(2, seed=0)
    pictures = [Image.fromarray(x) for x in to_rgb(digits)]
    (record,) = confirm([Pair("leak", 0, 1, np.nan, 0.0)], lambda r: pictures[r], None)
    assert record["copy"] is False and record["correlation"] < 0.99
    assert best_correlation(pictures[0], pictures[0]) == pytest.approx(1.0)
    (unseen,) = confirm([Pair("leak", 0, 1, np.nan, 0.0)], lambda r: None, None)
    assert unseen["copy"] is None  # no pictures: unconfirmed


def test_the_threshold_lies_below_distinct_images_and_ignores_exact_copies():
    rng = np.random.default_rng(0)
    distinct = np.exp(rng.normal(0, 0.2, 1000))  # nearest-neighbour distances around 1
    limit = threshold(distinct)
    assert 0.5 < limit < 0.6 and (distinct < limit).mean() <= 0.005  # normal: 0.13 %
    assert threshold(np.r_[distinct, np.zeros(500)]) == pytest.approx(limit)


def test_given_embeddings_report_unconfirmed_candidates(tmp_path):
    """A run of given embeddings whose synthetic set holds a real vector: a leak candidate,
    unconfirmed (no pixels to check), and no copy claimed."""
    from lib.jobs.run import RunConfig, run

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(60, 8)), rng.normal(size=(60, 8)) + 0.5
    fake[7] = real[3]
    for name, x in (("real", real), ("synthetic", fake)):
        np.save(tmp_path / f"{name}.npy", x.astype(np.float32))
        pd.DataFrame({"path": [f"{name[0]}{i}.png" for i in range(60)]}).to_csv(
            tmp_path / f"{name}.csv", index=False
        )
    config = RunConfig.of(
        real=tmp_path / "real.npy",
        synthetic=tmp_path / "synthetic.npy",
        projections=("pca",),
        plots=False,
    )
    published = run(config, RunStore(tmp_path / "results"))
    leaks = published.duplicates[published.duplicates["kind"] == "leak"]
    planted = leaks[(leaks["a"] == 60 + 7) & (leaks["b"] == 3)]
    assert len(planted) == 1 and planted["feature_distance"].iloc[0] == 0
    assert leaks["copy"].isna().all()  # candidates only: no pixels to call any a copy
    kinds = published.metrics["duplicates"]["kinds"]["leak"]
    assert kinds["copies"] == 0 and kinds["unconfirmed"] == kinds["candidates"] == len(leaks)
