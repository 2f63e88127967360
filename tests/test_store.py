"""The run store: runs are written aside, published atomically, and read back."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from lib.runtime.errors import GapscopeError
from lib.store.runs import Run, RunStore, RunWriter

LEVELS = ["p2", "p3"]


def write_run(writer, n: int = 4, seed: int = 0) -> dict:
    """The files a batch run leaves, small; returns what was written."""
    rng = np.random.default_rng(seed)
    features = {lv: rng.normal(size=(n, 8)).astype(np.float32) for lv in LEVELS}
    neighbours = {
        lv: (
            np.tile(np.arange(1, 3, dtype=np.int32), (n, 1)),
            np.sort(rng.random((n, 2)).astype(np.float32), axis=1),
        )
        for lv in LEVELS
    }
    images = pd.DataFrame(
        {
            "id": range(n),
            "domain": ["real"] * (n // 2) + ["synthetic"] * (n - n // 2),
            "path": [f"/data/{i}.png" for i in range(n)],
            "thumb": [f"t{i}.png" for i in range(n)],
        }
    )
    manifest = {
        "status": "complete",
        "seed": np.int64(seed),  # numpy scalars are written as plain numbers
        "backbone": {"name": "resnet50-fpn", "levels": LEVELS},
        "inputs": [{"kind": "folder", "source": "/data"}, {"kind": "array", "source": "x"}],
    }
    for lv in LEVELS:
        writer.features(lv, features[lv])
        writer.neighbours(lv, *neighbours[lv])
    writer.images(images)
    writer.manifest(manifest)
    return {"features": features, "neighbours": neighbours, "images": images}


def visible(store: RunStore) -> list[str]:
    return sorted(p.name for p in store.runs_dir.iterdir())


def test_open_without_runs_raises(tmp_path):
    store = RunStore(tmp_path / "results")
    assert store.run_ids() == [] and store.latest_id() is None
    with pytest.raises(GapscopeError) as exc:
        store.open()
    assert "\n" not in str(exc.value) and "no published run" in str(exc.value)


def test_a_run_being_written_is_not_listed(tmp_path):
    store = RunStore(tmp_path)
    writer = store.begin()
    write_run(writer)
    assert writer.dir.is_dir() and writer.dir.parent == store.runs_dir
    assert store.run_ids() == []
    assert store.latest_id() is None and not store.latest_link.exists()
    with pytest.raises(GapscopeError):
        store.open()
    with pytest.raises(GapscopeError):
        store.open(writer.id)


def test_publish_lists_the_run_and_points_latest_at_it(tmp_path):
    store = RunStore(tmp_path)
    writer = store.begin()
    write_run(writer)
    run = store.publish(writer)
    assert run.id == writer.id
    assert store.run_ids() == [writer.id]
    assert visible(store) == [writer.id]  # the partial directory is gone
    assert store.latest_link.is_symlink()
    assert store.latest_link.resolve() == (store.runs_dir / writer.id).resolve()
    assert not os.path.isabs(os.readlink(store.latest_link))  # the results folder can move
    assert store.latest_id() == writer.id
    assert store.open().id == writer.id


def test_discard_leaves_nothing(tmp_path):
    store = RunStore(tmp_path)
    writer = store.begin()
    write_run(writer)
    writer.discard()
    assert visible(store) == []
    assert store.run_ids() == [] and not store.latest_link.exists()


def test_a_failed_run_keeps_the_previous_latest(tmp_path):
    store = RunStore(tmp_path)
    first = store.begin()
    write_run(first)
    store.publish(first)
    failed = store.begin()
    write_run(failed, seed=1)
    failed.discard()
    assert store.latest_id() == first.id and store.run_ids() == [first.id]


def test_second_publish_switches_latest_and_keeps_the_old_run(tmp_path):
    store = RunStore(tmp_path)
    first_writer = store.begin()
    first_data = write_run(first_writer, seed=0)
    old = store.publish(first_writer)
    old_features = old.features("p2")  # a reader holding the old run open

    second_writer = store.begin()
    write_run(second_writer, seed=1)
    assert store.latest_id() == first_writer.id  # not switched until published
    store.publish(second_writer)

    assert store.latest_id() == second_writer.id
    assert store.open().id == second_writer.id
    assert sorted(store.run_ids()) == sorted([first_writer.id, second_writer.id])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".latest")]
    np.testing.assert_array_equal(old_features, first_data["features"]["p2"])
    reopened = store.open(first_writer.id)
    np.testing.assert_array_equal(reopened.features("p3"), first_data["features"]["p3"])
    assert not np.array_equal(store.open().features("p2"), first_data["features"]["p2"])


def test_unknown_run_id_raises(tmp_path):
    store = RunStore(tmp_path)
    writer = store.begin()
    write_run(writer)
    store.publish(writer)
    with pytest.raises(GapscopeError) as exc:
        store.open("20000101-000000-beef")
    assert "20000101-000000-beef" in str(exc.value)


def test_run_reads_back_what_was_written(tmp_path):
    store = RunStore(tmp_path)
    writer = store.begin()
    data = write_run(writer, n=6)
    store.publish(writer)
    run = store.open()
    assert isinstance(run, Run)
    assert run.manifest["status"] == "complete" and run.manifest["seed"] == 0
    assert run.levels == LEVELS
    pd.testing.assert_frame_equal(run.images, data["images"])
    for lv in LEVELS:
        features = run.features(lv)
        assert isinstance(features, np.memmap)  # memory-mapped, not read whole
        assert features.dtype == np.float32 and features.shape == (6, 8)
        np.testing.assert_array_equal(features, data["features"][lv])
        idx, dist = run.neighbours(lv)
        assert isinstance(idx, np.memmap) and isinstance(dist, np.memmap)
        assert idx.dtype == np.int32 and dist.dtype == np.float32
        np.testing.assert_array_equal(idx, data["neighbours"][lv][0])
        np.testing.assert_array_equal(dist, data["neighbours"][lv][1])
    assert run.thumb(2) == run.dir / "thumbs" / "t2.png"
    assert str(run.image_file(2)) == "/data/2.png"
    assert [str(p) for p in run.image_roots()] == ["/data"]


def test_run_ids_are_newest_first(tmp_path):
    store = RunStore(tmp_path)
    for run_id in ("20240101-000000-aaaa", "20250101-000000-0000", "20240601-120000-ffff"):
        writer = RunWriter(store, run_id)
        write_run(writer)
        store.publish(writer)
    assert store.run_ids() == [
        "20250101-000000-0000",
        "20240601-120000-ffff",
        "20240101-000000-aaaa",
    ]


def test_a_derived_run_shares_files_and_leaves_the_base_untouched(tmp_path):
    from lib.store.runs import RunStore

    store = RunStore(tmp_path)
    first = store.begin()
    first.manifest({"n": 1})
    first.features("c1", np.arange(6, dtype=np.float32).reshape(2, 3))
    base = store.publish(first)
    derived = store.derive(base)
    derived.manifest({"n": 2})  # replaces the link
    derived.caricature_manifest({"items": []})
    new = store.publish(derived)
    assert store.latest_id() == new.id != base.id
    np.testing.assert_array_equal(new.features("c1"), base.features("c1"))
    assert base.manifest["n"] == 1 and new.manifest["n"] == 2
    assert not (base.dir / "caricatures").exists()


# ---- publishing that fails -------------------------------------------------------------


def published_store(tmp_path) -> tuple[RunStore, str]:
    store = RunStore(tmp_path)
    with store.writing() as writer:
        write_run(writer)
    return store, writer.id


def test_writing_publishes_on_success_and_discards_on_error(tmp_path):
    store, first = published_store(tmp_path)
    assert store.latest_id() == first and store.run_ids() == [first]
    with pytest.raises(RuntimeError, match="stage failed"):
        with store.writing() as writer:
            write_run(writer, seed=1)
            raise RuntimeError("stage failed")
    assert writer.published is None and not writer.dir.exists()
    assert store.latest_id() == first and visible(store) == [first]


@pytest.mark.parametrize("step", ["rename the run", "switch latest"])
def test_a_failure_while_publishing_leaves_the_previous_run_served(tmp_path, monkeypatch, step):
    """os.replace fails once, on moving the run into place or on the `latest` switch:
    `latest` names the old complete run, nothing of the new one is listed or left."""
    store, first = published_store(tmp_path)
    real_replace = os.replace
    calls = []

    def failing(src, dst):
        calls.append(dst)
        is_latest = str(dst).endswith("latest")
        if is_latest == (step == "switch latest") and len(calls) == (2 if is_latest else 1):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(GapscopeError, match="is full"):  # a full disk is one line
        with store.writing() as writer:
            write_run(writer, seed=1)
    assert store.latest_id() == first and store.open().id == first
    assert store.run_ids() == [first] and visible(store) == [first]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".latest")]


def test_latest_is_never_missing_while_it_is_switched(tmp_path, monkeypatch):
    """The new link is made beside `latest` and renamed over it: a failure while making
    it leaves the old `latest` in place (removing `latest` first would not)."""
    from pathlib import Path

    store, first = published_store(tmp_path)
    real_symlink = Path.symlink_to

    def failing(self, target, *args, **kwargs):
        if self.name.startswith(".latest") or self.name == "latest":
            raise OSError(28, "No space left on device")
        return real_symlink(self, target, *args, **kwargs)

    monkeypatch.setattr(Path, "symlink_to", failing)
    with pytest.raises(GapscopeError, match="is full"):
        with store.writing() as writer:
            write_run(writer, seed=1)
    assert store.latest_link.is_symlink() and store.latest_id() == first
    assert store.run_ids() == [first]


def test_runs_say_their_schema_and_the_first_schema_still_opens(schema1_store):
    """A run written before metrics had one record shape (tests/fixtures/schema1, made by
    the code of that time) reads as the current schema."""
    fixture = schema1_store
    run = RunStore(fixture).open(RunStore(fixture).run_ids()[0])
    assert run.schema == 1
    raw = __import__("json").loads((run.dir / "metrics.json").read_text())
    c3, old = run.metrics["levels"]["c3"], raw["levels"]["c3"]
    assert run.metrics["schema"] == 2 and set(c3["metrics"]) >= {
        "fd",
        "fd_inf",
        "kid",
        "auc",
        "precision",
        "recall",
        "density",
        "coverage",
        "mixing",
        "realism",
    }
    assert c3["metrics"]["precision"] == {
        "value": old["precision"],
        "ci95": old["precision_ci95"],
        "n": 20,
    }
    assert c3["metrics"]["auc"]["value"] == old["classifier"]["auc"]
    assert c3["metrics"]["kid"]["value"] == old["kid"]["mean"]
    assert c3["metrics"]["kid"]["std"] == old["kid"]["std"]
    assert c3["metrics"]["fd"]["ci95"] == old["fd"]["ci95"]
    assert c3["metrics"]["realism"]["value"] == old["realism"]["median"]
    assert c3["clusters"] == old["clusters"]
