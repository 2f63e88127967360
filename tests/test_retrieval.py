"""Retrieval evaluation (lib.jobs.retrieval): metrics against values computed by hand, ties,
queries without a match, sets, the CLI, and the demo's Retrieval tab."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lib.jobs.retrieval import RetrievalJob, evaluate, retrieve, run_retrieval, scores
from lib.runtime.errors import GapscopeError
from tests.conftest import one_line
from tests.test_cli import assert_one_line_error, batch


def on_a_line(*xs: float) -> np.ndarray:
    return np.array([[x, 0.0] for x in xs], dtype=np.float32)


GALLERY = on_a_line(0, 1, 2, 3, 4)
GALLERY_LABELS = ["a", "a", "b", "b", "a"]


def test_metrics_are_the_hand_computed_ones_with_ties_and_a_query_without_a_match():
    #          q1: 0.4 a   q2: 2.5 b   q3: 10 c (no c in the gallery)   q4: 1.5 a
    queries = on_a_line(0.4, 2.5, 10, 1.5)
    found = retrieve(queries, GALLERY, ["a", "b", "c", "a"], GALLERY_LABELS, "euclidean")
    # q2: 2 and 3 tie at 0.5, 1 and 4 at 1.5: gallery order decides; q4: 1 (a) and 2 (b)
    # tie at 0.5, 0 (a) and 3 (b) at 1.5
    assert found.neighbours[:, :5].tolist() == [
        [0, 1, 2, 3, 4],
        [2, 3, 1, 4, 0],
        [4, 3, 2, 1, 0],
        [1, 2, 0, 3, 4],
    ]
    assert found.same_label.tolist() == [3, 2, 0, 3]
    metrics, per_query = scores(found, k=2)
    # AP@R: q1 (R 3) hits at 1, 2 → (1 + 1) / 3; q2 (R 2) → (1 + 1) / 2; q4 (R 3) hits at
    # 1 and 3 → (1 + 2/3) / 3; q3 has no match: left out
    expected_ap = [2 / 3, 1.0, np.nan, (1 + 2 / 3) / 3]
    np.testing.assert_allclose(per_query["ap_at_r"], expected_ap)
    assert metrics["map_at_r"]["value"] == pytest.approx((2 / 3 + 1 + 5 / 9) / 3)
    assert metrics["map_at_r"]["n"] == 3 and metrics["no_match"] == 1
    assert per_query["pass"].tolist() == [True, True, False, True]  # k = 2
    assert metrics["pass"]["value"] == 0.75
    assert metrics["recall_at"]["1"]["value"] == 0.75
    # rank by rank: q1 T T F F T, q2 T T F F F, q3 F F F F F, q4 T F T F T
    np.testing.assert_allclose(metrics["per_rank_accuracy"][:5], [0.75, 0.5, 0.25, 0, 0.5])


def test_a_query_in_the_gallery_is_never_its_own_neighbour():
    found = retrieve(
        GALLERY, GALLERY, GALLERY_LABELS, GALLERY_LABELS, "euclidean", same=np.arange(5)
    )
    assert all(i not in row for i, row in enumerate(found.neighbours.tolist()))
    assert found.same_label.tolist() == [2, 2, 1, 1, 2]  # itself not counted
    assert found.neighbours[0, 0] == 1 and found.neighbours[2, 0] == 1  # 1 before 3: a tie


def test_cosine_retrieval_ignores_length():
    gallery = np.array([[1, 0], [0, 1]], dtype=np.float32)
    found = retrieve(np.array([[10, 1]], np.float32), gallery, ["x"], ["x", "y"], "cosine")
    assert found.neighbours[0].tolist() == [0, 1]


# ---- on a run ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(published_run, tmp_path_factory):
    from lib.store.runs import RunStore

    results = tmp_path_factory.mktemp("retrieval") / "results"
    shutil.copytree(published_run.dir.parent.parent, results, symlinks=True)
    return RunStore(results)


def test_an_evaluation_is_published_in_a_derived_run_with_a_table_per_level(store):
    base = store.open()
    run_retrieval(RetrievalJob(query="synthetic", gallery="real"), store)
    derived = run_retrieval(RetrievalJob(query="real", gallery="real", k=3), store)
    assert set(derived.retrievals) == {"synthetic-vs-real", "real-vs-real"}  # both kept
    assert base.retrievals == {} and derived.manifest["derived_from"] in store.run_ids()
    out = derived.retrievals["real-vs-real"]
    n_real = int((base.images["domain"] == "real").sum())
    assert out["n_query"] == out["n_gallery"] == n_real and set(out["levels"]) == set(base.levels)
    table = derived.retrieval_table("real-vs-real", base.levels[0])
    assert len(table) == n_real
    assert all(q not in ns for q, ns in zip(table["query"], table["neighbours"], strict=True))
    labels = base.images["category"].to_numpy()
    for _, row in table.head(20).iterrows():  # what the table says is right is right
        assert list(row["right"]) == [labels[n] == row["label"] for n in row["neighbours"]]
        assert row["pass"] == any(row["right"][:3])


def test_bad_sets_and_levels_are_one_line_errors(store):
    run = store.open()
    for job, words in [
        (RetrievalJob(query="fake"), "unknown set 'fake'"),
        (RetrievalJob(query="tag:nobody-used-this"), "holds no images"),
        (RetrievalJob(levels=["p9"]), "--level p9"),
    ]:
        with pytest.raises(GapscopeError) as exc:
            evaluate(run, job)
        assert words in one_line(exc)
    assert_one_line_error(
        batch("evaluate", "retrieval", "--results", store.root, "--gallery", "fakes"),
        "unknown set 'fakes'",
    )


def test_a_tag_names_a_set(store):
    from lib.store.annotations import Annotations, keys_of

    run = store.open()
    rows = np.flatnonzero(run.images["domain"].to_numpy() == "synthetic")[:12]
    Annotations.of(store.root).tag(keys_of(run.images, rows), "hard")
    results, tables = evaluate(run, RetrievalJob(query="tag:hard", gallery="real"))
    assert results["n_query"] == 12
    assert sorted(tables[run.levels[0]]["query"]) == sorted(rows.tolist())


def test_the_tab_shows_the_table_and_failed_queries_with_their_neighbours(store):
    from demo import retrieval as view

    run = run_retrieval(RetrievalJob(query="synthetic", gallery="real", k=3), store)
    out = view.on_run(store, run.id, "failed")
    assert out[1]["choices"] == ["real-vs-real", "synthetic-vs-real"]  # both kept, in order
    shown = view.show_evaluation(store, run.id, "synthetic-vs-real", "failed")
    note, rows, figure, _, classes, gallery = shown
    assert "synthetic queries against" in note and len(rows) == len(run.levels)
    assert len(figure.data) == len(run.levels)
    captions = [c for _, c in gallery]
    assert captions[0].startswith("query #") and captions[0].endswith("failed")
    assert all(c[0] == "✗" for c in captions[1:4]) and captions[4].startswith("query #")
    level = run.levels[0]
    label = classes["choices"][1]
    only = view.queries(run, "synthetic-vs-real", level, "all", label)
    assert only and all(f"· {label} ·" in c for _, c in only[::4])


def test_an_unlabelled_image_is_nobodys_match():
    gallery = on_a_line(0, 1, 2, 3, 4)
    found = retrieve(
        on_a_line(0.1, 1.1, 2.1), gallery, ["", "a", "a"], ["", "", "a", "a", "a"], "euclidean"
    )
    assert not found.right[0].any() and found.same_label.tolist() == [0, 3, 3]
    # 1.1 → rows 1 (''), 2, 0 (''), 3, 4; 2.1 → rows 2, 3, 1 (''), 4, 0 ('')
    assert found.right[1].tolist() == [False, True, False, True, True]
    assert found.right[2].tolist() == [True, True, False, True, False]
    metrics, _ = scores(found, k=1)
    assert metrics["no_match"] == 1 and metrics["pass"]["value"] == 1 / 3


def test_map_at_r_sees_the_whole_class_when_it_fills_the_gallery():
    """Queries outside a one-class gallery: R is the whole gallery, and perfect retrieval
    is AP 1 (it was cut one short when any query sat in the gallery)."""
    gallery = on_a_line(0, 1, 2)
    found = retrieve(
        on_a_line(0.5, 5),
        gallery,
        ["a", "a"],
        ["a", "a", "a"],
        "euclidean",
        same=np.array([-1, -1]),
    )
    metrics, per_query = scores(found)
    assert per_query["ap_at_r"].tolist() == [1.0, 1.0] and metrics["map_at_r"]["value"] == 1.0


def test_a_split_and_a_domain_within_it_name_sets():
    import pandas as pd

    from lib.jobs.retrieval import resolve_set

    images = pd.DataFrame(
        {
            "domain": ["real"] * 4 + ["synthetic"] * 4,
            "hash": list("abcdefgh"),
            "relpath": list("abcdefgh"),
            "meta:split": ["train", "test", "test", None, "test", "train", "val", "test"],
        }
    )
    assert resolve_set("split:test", images).tolist() == [1, 2, 4, 7]
    assert resolve_set("real/split:test", images).tolist() == [1, 2]
    assert resolve_set("synthetic/split:val", images).tolist() == [6]
    assert resolve_set("real", images).tolist() == [0, 1, 2, 3]
    for bad, words in [
        ("elsewhere/split:test", "unknown set"),
        ("real/synthetic", "unknown set"),
        ("split:holdout", "holds no images"),
        ("real/split:val", "holds no"),
    ]:
        with pytest.raises(GapscopeError) as exc:
            resolve_set(bad, images)
        assert words in one_line(exc)
    with pytest.raises(GapscopeError, match="have no split"):
        resolve_set("split:test", images.drop(columns="meta:split"))
