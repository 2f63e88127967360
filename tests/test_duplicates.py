"""Near-copies and leaks (lib.analysis.duplicates, the run's duplicates stage): planted copies
(exact and slightly changed) are found and called copies, a set without copies has none,
and a feature coincidence is never called a copy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lib.analysis.duplicates import Pair, best_correlation, confirm, threshold
from lib.store.runs import RunStore


def test_planted_copies_are_found_and_called_copies(planted_run):
    published, copies = planted_run
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
    from conftest import run_embeddings

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(60, 8)), rng.normal(size=(60, 8)) + 0.5
    fake[7] = real[3]
    published = run_embeddings(tmp_path, real, fake)
    leaks = published.duplicates[published.duplicates["kind"] == "leak"]
    planted = leaks[(leaks["a"] == 60 + 7) & (leaks["b"] == 3)]
    assert len(planted) == 1 and planted["feature_distance"].iloc[0] < 1e-6
    assert leaks["copy"].isna().all()  # candidates only: no pixels to call any a copy
    kinds = published.metrics["duplicates"]["kinds"]["leak"]
    assert kinds["copies"] == 0 and kinds["unconfirmed"] == kinds["candidates"] == len(leaks)


def test_the_gap_report_lists_counts_pairs_and_a_csv_of_them(planted_run, tmp_path):
    """What the Gap report's duplicates section shows of the planted run: the counts per
    kind, the leaks side by side (the copy, then the real image it copies), the copies to
    tag are the four synthetic images, a read-only demo tags nothing, and the CSV names
    the files relative to their folders."""
    import csv
    import io

    from demo import duplicates
    from demo.curation import Editing

    published, copies = planted_run
    note = duplicates.note(published)
    assert "| leaks (synthetic copies of real images) | 4 | 4 |" in note
    assert "**4 synthetic images copy a real one**" in note
    items = duplicates.gallery(published, "leak")
    firsts, seconds = items[0::2], items[1::2]
    assert all("synthetic" in c and "copy (r = " in c for _, c in firsts[:4])
    assert all(c.startswith("↳ copies #") and "real" in c for _, c in seconds[:4])
    rows = duplicates.copy_rows(published, "leak")
    names = [published.rows.at[r, "relpath"].split("/")[-1] for r in rows]
    assert sorted(names) == sorted(n for n in copies if n.startswith("copy_"))
    store = RunStore(tmp_path / "results")
    with pytest.raises(Exception, match="read-only"):
        duplicates.tag_copies(store, Editing(False), published.id, "leaks", "x", "", "")
    table = list(csv.DictReader(io.StringIO(duplicates.to_csv(published))))
    assert len(table) == len(published.duplicates)
    leaks = [r for r in table if r["kind"] == "leak" and r["copy"] == "yes"]
    assert sorted(r["copy_file"].split("/")[-1] for r in leaks) == sorted(names)
    assert all(not r["copy_file"].startswith("/") and r["of_domain"] == "real" for r in leaks)
    assert all(float(r["correlation"]) >= 0.99 for r in leaks)
