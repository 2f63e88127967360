"""Bring your own embeddings: Parquet, .npy + CSV and folders of levels, into a whole run;
and every bad input a one-line error that publishes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, one_line
from PIL import Image

from lib.jobs.run import RunConfig, run
from lib.runtime.errors import GapscopeError
from lib.store.runs import RunStore

N, D = 120, 24


def _vectors(seed: int, n: int = N, d: int = D, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(size=(3, d)) * 4
    return (centres[np.arange(n) % 3] + rng.normal(size=(n, d)) + shift).astype(np.float32)


def _config(real, synthetic, **kw) -> RunConfig:
    from lib.analysis.reduce import UMAPParams

    return RunConfig.of(
        real=real, synthetic=synthetic, k=5, plots=False, umap=UMAPParams(n_neighbors=10), **kw
    )


def _npy_pair(folder, real=None, fake=None):
    """real.npy + real.csv and synthetic.npy + synthetic.csv, ids r0.. / s0.."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, x, prefix in (("real", real, "r"), ("synthetic", fake, "s")):
        x = _vectors(1 if prefix == "r" else 2, shift=0.5 * (prefix == "s")) if x is None else x
        np.save(folder / f"{name}.npy", x)
        pd.DataFrame(
            {
                "path": [f"{prefix}{i}.png" for i in range(len(x))],
                "category": [f"c{i % 3}" for i in range(len(x))],
            }
        ).to_csv(folder / f"{name}.csv", index=False)
        out.append(folder / f"{name}.npy")
    return out


def test_npy_with_csv_becomes_a_run_with_the_given_vectors_in_row_order(tmp_path):
    real, fake = _npy_pair(tmp_path / "in")
    published = run(_config(real, fake), RunStore(tmp_path / "results"))
    stored = np.asarray(published.features("embedding"))
    np.testing.assert_array_equal(stored, np.r_[np.load(real), np.load(fake)])
    images = published.images
    assert list(images["relpath"][:2]) == ["r0.png", "r1.png"]
    assert list(images["relpath"][N : N + 1]) == ["s0.png"]
    assert set(images["category"]) == {"c0", "c1", "c2"}
    assert (images["thumb"] == "").all()  # no such files: points and captions only
    m = published.manifest
    assert m["backbone"]["name"] == "given embeddings" and m["feature_dims"] == {"embedding": D}
    assert [i["kind"] for i in m["inputs"]] == ["embeddings", "embeddings"]
    idx, _ = published.neighbours("embedding")
    assert idx.shape == (2 * N, 5)
    assert m["neighbors"]["embedding"]["exact"] is True


def test_parquet_list_columns_are_levels_and_existing_paths_get_thumbnails(tmp_path):
    folder = tmp_path / "in"
    (folder / "img").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "img" / "a.png")
    frames = []
    for seed, shift in ((1, 0.0), (2, 0.5)):
        p2, p3 = _vectors(seed, shift=shift), _vectors(seed + 10, d=8, shift=shift)
        frame = pd.DataFrame(
            {
                "path": ["img/a.png"] + [f"gone{i}.png" for i in range(N - 1)],
                "p2": list(p2),
                "p3": list(p3),
            }
        )
        frames.append((frame, p2, p3))
    frames[0][0].to_parquet(folder / "real.parquet")
    frames[1][0].to_parquet(folder / "synthetic.parquet")
    published = run(
        _config(folder / "real.parquet", folder / "synthetic.parquet"),
        RunStore(tmp_path / "results"),
    )
    assert published.levels == ["p2", "p3"]
    np.testing.assert_array_equal(published.features("p3")[:N], frames[0][2])
    assert published.features("p3").shape == (2 * N, 8)
    # the one row naming an existing image has its thumbnail; the others have none
    assert published.thumb(0).is_file() and published.thumb(1) is None
    assert Image.open(published.thumb(0)).getpixel((5, 5))[:3] == (200, 10, 10)


def test_numbered_columns_and_a_folder_of_levels(tmp_path):
    from lib.inputs.embeddings import open_embeddings

    x = _vectors(3)
    numbered = pd.DataFrame({f"f{j}": x[:, j] for j in reversed(range(D))})  # any order
    numbered.insert(0, "id", [f"row{i}" for i in range(N)])
    numbered.to_parquet(tmp_path / "n.parquet")
    got = open_embeddings(tmp_path / "n.parquet", "real")
    np.testing.assert_array_equal(got.levels["embedding"], x)

    levels = tmp_path / "levels"
    levels.mkdir()
    np.save(levels / "p2.npy", x)
    np.save(levels / "p4.npy", x[:, :4])
    pd.DataFrame({"filename": [f"{i}.jpg" for i in range(N)]}).to_csv(levels / "metadata.csv")
    got = open_embeddings(levels, "real")
    assert got.dims() == {"p2": D, "p4": 4}


def test_rows_with_nan_or_inf_are_dropped_and_listed(tmp_path):
    x = _vectors(1)
    x[[3, 50]] = np.nan
    x[7, 2] = np.inf
    real, fake = _npy_pair(tmp_path / "in", real=x)
    published = run(_config(real, fake), RunStore(tmp_path / "results"))
    assert (published.images["domain"] == "real").sum() == N - 3
    assert "r3.png" not in set(published.images["relpath"])
    skipped = published.manifest["skipped"]
    assert [s["path"] for s in skipped] == ["row 3: r3.png", "row 7: r7.png", "row 50: r50.png"]
    assert all(s["reason"] == "NaN or inf in level embedding" for s in skipped)
    assert published.manifest["inputs"][0]["skipped"] == 3


def _bad(tmp_path, name: str):
    folder = tmp_path / name
    real, fake = _npy_pair(folder)
    return folder, real, fake


def _csv_short(folder, real, fake):
    pd.read_csv(folder / "real.csv")[:-1].to_csv(folder / "real.csv", index=False)
    return real, fake, "real.npy has 120 rows but real.csv has 119"


def _no_csv(folder, real, fake):
    (folder / "real.csv").unlink()
    return real, fake, "needs a CSV of the images in the same row order"


def _object_dtype(folder, real, fake):
    np.save(folder / "real.npy", np.array([[1, "a"]] * N, dtype=object), allow_pickle=True)
    return real, fake, "not a readable .npy array"


def _dims_differ(folder, real, fake):
    np.save(folder / "synthetic.npy", _vectors(2, d=D + 1))
    return real, fake, "real has embedding (24-d), synthetic has embedding (25-d)"


def _mixed_lengths(folder, real, fake):
    frame = pd.DataFrame({"id": ["a", "b"], "v": [np.zeros(3), np.zeros(4)]})
    frame.to_parquet(folder / "mixed.parquet")
    return folder / "mixed.parquet", fake, "mixes vector lengths (3 to 4)"


def _images_and_embeddings(folder, real, fake):
    (folder / "pics").mkdir()
    Image.new("RGB", (8, 8)).save(folder / "pics" / "a.png")
    return folder / "pics", fake, "give both domains the same way"


def _no_id_column(folder, real, fake):
    pd.DataFrame({"name": ["x"] * N}).to_csv(folder / "real.csv", index=False)
    return real, fake, "needs a column naming each row's image"


def _all_nan(folder, real, fake):
    np.save(folder / "real.npy", np.full((N, D), np.nan, np.float32))
    return real, fake, "no usable vectors"


@pytest.mark.parametrize(
    "mistake",
    [
        _csv_short,
        _no_csv,
        _object_dtype,
        _dims_differ,
        _mixed_lengths,
        _images_and_embeddings,
        _no_id_column,
        _all_nan,
    ],
)
def test_bad_embeddings_are_one_line_errors_and_publish_nothing(tmp_path, mistake):
    folder, real, fake = _bad(tmp_path, mistake.__name__)
    real, fake, message = mistake(folder, real, fake)
    store = RunStore(tmp_path / "results")
    with pytest.raises(GapscopeError) as exc:
        run(_config(real, fake), store)
    assert message in one_line(exc)
    assert store.run_ids() == [] and not list(store.runs_dir.iterdir())


def test_the_cli_says_a_row_count_mismatch_in_one_line(tmp_path):
    folder, real, fake = _bad(tmp_path, "cli")
    _csv_short(folder, real, fake)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "batch",
            "run",
            "--real",
            str(real),
            "--synthetic",
            str(fake),
            "--results",
            str(tmp_path / "results"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "120 rows but real.csv has 119" in errors[0]


def test_manifest_of_an_embeddings_run_is_plain_json(tmp_path):
    real, fake = _npy_pair(tmp_path / "in")
    published = run(_config(real, fake), RunStore(tmp_path / "results"))
    m = json.loads((published.dir / "manifest.json").read_text())
    assert m["prepare"] == "embeddings given as features" and m["image_size"] is None
