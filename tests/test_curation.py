"""Acting on annotations from the command line: tag, relabel, export (CSV, JSON, a
corrected metadata.csv), gather a tag's images, and recompute without what was flagged."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, example_config

from lib.store.runs import RunStore

pytestmark = pytest.mark.slow


@pytest.fixture()
def store(published_run, results_dir, tmp_path):
    """A copy of the session's store (its run, its feature cache), no annotations."""
    shutil.copytree(
        results_dir,
        tmp_path / "store",
        symlinks=True,
        ignore=shutil.ignore_patterns("annotations.sqlite*"),
    )
    return RunStore(tmp_path / "store")


def batch(store: RunStore, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batch", "annotations", *args, "--results", str(store.root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_tagged_and_relabelled_images_export_as_csv_and_json(store):
    run = store.open()
    assert (
        batch(store, "tag", "odd light", "--id", "3", "--id", "45", "--who", "ana").returncode == 0
    )
    assert batch(store, "tag", "remove", "--id", "45").returncode == 0
    done = batch(store, "label", "3", "fox")
    assert done.returncode == 0 and "→ 'fox'" in done.stdout

    text = batch(store, "export", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["id"]) for r in rows] == [3, 45]
    three, fortyfive = rows
    assert three["label"] == "fox" and three["category"] == run.images.at[3, "category"]
    assert three["label_changed"] == "True" and three["tags"] == "odd light"
    assert fortyfive["tags"] == "odd light;remove" and fortyfive["removed"] == "True"
    assert three["relpath"] == run.images.at[3, "relpath"]
    assert not any(v != v.strip() for r in rows for v in r.values())  # no padded fields

    only = json.loads(batch(store, "export", "--format", "json", "--tag", "remove").stdout)
    assert only["run"] == run.id and [i["id"] for i in only["images"]] == [45]
    assert only["images"][0]["tags"] == ["odd light", "remove"]

    assert batch(store, "undo").stdout.strip() == "undid 1 change"  # the label, anonymous
    rows = list(csv.DictReader(io.StringIO(batch(store, "export").stdout)))
    assert rows[0]["label"] == rows[0]["category"]


def test_the_corrected_metadata_csv_is_the_inputs_own_file_corrected(store, example_dir):
    run = store.open()
    synthetic = run.images.index[run.images["domain"] == "synthetic"]
    fixed, removed = int(synthetic[0]), int(synthetic[1])
    batch(store, "label", str(fixed), "seven")
    batch(store, "tag", "remove", "--id", str(removed))
    original = (example_dir / "metadata.csv").read_text(encoding="utf-8-sig")
    expected = list(csv.DictReader(io.StringIO(original)))
    name = {i: str(run.images.at[i, "path"]) for i in (fixed, removed)}
    for row in expected:
        if str((example_dir / row["filename"]).resolve()) == name[fixed]:
            row["category"] = "seven"
    dropped = [r for r in expected if str((example_dir / r["filename"]).resolve()) != name[removed]]
    assert len(dropped) == len(expected) - 1

    text = batch(store, "export", "--format", "metadata").stdout
    assert text.splitlines()[0] == original.splitlines()[0]  # the same columns
    assert list(csv.DictReader(io.StringIO(text))) == dropped

    marked = batch(store, "export", "--format", "metadata", "--removed", "mark").stdout
    rows = list(csv.DictReader(io.StringIO(marked)))
    assert len(rows) == len(expected) and sum(r["removed"] == "1" for r in rows) == 1


def test_a_tags_images_are_gathered_into_one_folder_per_label(store, tmp_path):
    run = store.open()
    batch(store, "tag", "keep", "--id", "1", "--id", "2", "--id", "50")
    batch(store, "label", "50", "odd one")
    done = batch(store, "gather", "keep", "--out", str(tmp_path / "out"))
    assert "copied 3 images" in done.stdout
    got = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")
    )
    want = sorted(
        f"{run.images.at[i, 'category']}/{run.images.at[i, 'relpath'].split('/')[-1]}"
        for i in (1, 2)
    )
    assert got == sorted([*want, f"odd one/{run.images.at[50, 'relpath'].split('/')[-1]}"])
    linked = batch(store, "gather", "keep", "--out", str(tmp_path / "links"), "--symlink")
    assert "linked 3 images" in linked.stdout
    assert all(p.is_symlink() for p in (tmp_path / "links").rglob("*.png"))


def test_the_demo_hands_out_a_tags_images_as_a_zip_of_published_copies(store, tmp_path):
    import zipfile

    from demo.curation import export_file
    from lib.store.annotations import Annotations, keys_of

    run = store.open()
    notes = Annotations.of(store.root)
    notes.tag(keys_of(run.images, [3, 60]), "zip me")
    notes.set_label(keys_of(run.images, [60])[0], str(run.images.at[60, "category"]), "other")
    path = export_file(store, run.id, "a tag's images (.zip)", "zip me")
    with zipfile.ZipFile(path) as zf:
        names = sorted(zf.namelist())
        stem = lambda i: run.images.at[i, "relpath"].split("/")[-1].rsplit(".", 1)[0]  # noqa: E731
        assert names == sorted(
            [f"{run.images.at[3, 'category']}/{stem(3)}.png", f"other/{stem(60)}.png"]
        )
        copy = run.web(3) or run.thumb(3)  # what the run published, not the original file
        assert (
            zf.read(
                names[0] if names[0].startswith(str(run.images.at[3, "category"])) else names[1]
            )
            == copy.read_bytes()
        )
    with pytest.raises(Exception, match="no image of run .* has the tag 'nobody'"):
        export_file(store, run.id, "a tag's images (.zip)", "nobody")


def test_a_run_can_leave_out_flagged_images_and_use_corrected_labels(store, example_dir):

    from lib.jobs.run import run as run_job

    before = store.open()
    batch(store, "tag", "remove", "--id", "0", "--id", "41")
    batch(store, "label", "2", "relabelled")
    config = example_config(example_dir).replace(
        projections=("pca",), plots=False, exclude_tags=("remove",), labels_from_annotations=True
    )
    after = run_job(config, store)
    assert len(after.images) == len(before.images) - 2
    gone = {before.images.at[i, "hash"] for i in (0, 41)}
    assert not gone & set(after.images["hash"])
    relabelled = after.images[after.images["hash"] == before.images.at[2, "hash"]]
    assert relabelled["category"].tolist() == ["relabelled"]
    applied = after.manifest["annotations"]
    assert applied["exclude_tags"] == ["remove"] and applied["audit_seq"] == 3
    assert applied["real"] == {"excluded": 1, "relabelled": 1}
    assert applied["synthetic"] == {"excluded": 1, "relabelled": 0}
    reasons = {s["reason"] for s in after.manifest["skipped"]}
    assert "tagged remove" in reasons


def test_mistakes_are_one_line_errors(store):
    for args, says in [
        (("tag", "x", "--id", "100000"), "not #100000"),
        (("export", "--format", "xml"), "choose csv, json or metadata"),
        (("export", "--format", "metadata", "--removed", "hide"), "choose drop or mark"),
        (("tag", "", "--id", "1"), "1 to 200 characters"),
    ]:
        done = batch(store, *args)
        assert done.returncode == 1 and says in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
