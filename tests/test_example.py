"""Tests for lib.inputs.example: the bundled real-vs-synthetic digits example."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from lib.inputs import example
from lib.inputs.example import (
    ExampleSummary,
    build_example,
    real_digits,
    render_synthetic_digits,
    to_rgb,
)
from lib.runtime.errors import GapscopeError

N = 200  # images per domain in the built example; small keeps the file fast
GREYS = {255 - round(v * 255 / 16) for v in range(17)}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _metadata(root: Path) -> list[dict[str, str]]:
    with open(root / "metadata.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExampleSummary]:
    out = tmp_path_factory.mktemp("built") / "example"
    summary = build_example(out, n_real=N, n_synthetic=N, size=64, seed=0)
    return out, summary


# --- arrays -------------------------------------------------------------------------------------


def test_synthetic_shapes_values_and_balance() -> None:
    digits, labels = render_synthetic_digits(200, seed=0)
    assert digits.shape == (200, 8, 8) and digits.dtype == np.uint8
    assert labels.shape == (200,) and np.issubdtype(labels.dtype, np.integer)
    assert digits.min() == 0 and digits.max() <= 16
    # Each image is normalised so its inkiest block is 16; the 17 levels are all in use.
    assert (digits.reshape(200, -1).max(axis=1) == 16).all()
    assert set(np.unique(digits).tolist()) == set(range(17))
    assert np.bincount(labels, minlength=10).tolist() == [20] * 10
    counts = np.bincount(render_synthetic_digits(23, seed=0)[1], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 23


def test_real_shapes_values_and_balance() -> None:
    digits, labels = real_digits()
    assert digits.shape == (1797, 8, 8) and digits.dtype == np.uint8
    assert labels.shape == (1797,)
    assert digits.min() == 0 and digits.max() == 16
    sub, sub_labels = real_digits(200, seed=0)
    assert sub.shape == (200, 8, 8) and sub.dtype == np.uint8
    assert np.bincount(sub_labels, minlength=10).tolist() == [20] * 10
    assert set(np.unique(sub).tolist()) <= set(range(17))
    with pytest.raises(GapscopeError):
        real_digits(5000)


def test_arrays_deterministic_per_seed() -> None:
    a, la = render_synthetic_digits(50, seed=3)
    b, lb = render_synthetic_digits(50, seed=3)
    c, _ = render_synthetic_digits(50, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    r1, rl1 = real_digits(100, seed=3)
    r2, rl2 = real_digits(100, seed=3)
    r3, _ = real_digits(100, seed=4)
    assert np.array_equal(r1, r2) and np.array_equal(rl1, rl2)
    assert not np.array_equal(r1, r3)


def test_to_rgb_levels_and_nearest_upscale() -> None:
    digits = np.arange(17 * 64, dtype=np.uint8).reshape(17, 8, 8) % 17
    rgb = to_rgb(digits, size=64)
    assert rgb.shape == (17, 64, 64, 3) and rgb.dtype == np.uint8
    expected = np.vectorize(lambda v: 255 - round(v * 255 / 16))(digits).astype(np.uint8)
    expected = np.kron(expected, np.ones((1, 8, 8), dtype=np.uint8))
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], expected)
    assert to_rgb(np.zeros((1, 8, 8), np.uint8))[0, 0, 0].tolist() == [255, 255, 255]
    assert to_rgb(np.full((1, 8, 8), 16, np.uint8))[0, 0, 0].tolist() == [0, 0, 0]
    assert to_rgb(digits[:2], size=20).shape == (2, 20, 20, 3)


# --- the written example ------------------------------------------------------------------------


def test_layout_and_metadata_match_disk(built: tuple[Path, ExampleSummary]) -> None:
    out, summary = built
    assert summary == ExampleSummary(root=out, real=N, synthetic=N, size=64, seed=0)
    rows = _metadata(out)
    with open(out / "metadata.csv", encoding="utf-8") as f:
        assert f.readline() == "filename,domain,category,font\n"
    names = [r["filename"] for r in rows]
    assert names == sorted(names)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert set(names) == on_disk and len(names) == len(on_disk) == 2 * N
    assert {p.name for p in out.iterdir()} == {"real", "synthetic", "metadata.csv"}
    for row in rows:
        domain, category, name = row["filename"].split("/")
        assert (domain, category) == (row["domain"], row["category"])
        assert domain in {"real", "synthetic"} and category in {str(d) for d in range(10)}
        assert (
            name.startswith(f"{domain}_")
            and name.endswith(".png")
            and len(name) == len(f"{domain}_00000.png")
        )
    for domain in ("real", "synthetic"):
        categories = [int(r["category"]) for r in rows if r["domain"] == domain]
        assert np.bincount(categories, minlength=10).tolist() == [N // 10] * 10
    # Nothing left behind next to the example.
    assert [p.name for p in out.parent.iterdir()] == ["example"]


def test_pngs_decode_as_rgb_digits(built: tuple[Path, ExampleSummary]) -> None:
    out, _ = built
    for row in _metadata(out):
        with Image.open(out / row["filename"]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (64, 64)
            pixels = np.asarray(im)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        assert set(np.unique(pixels).tolist()) <= GREYS
        assert pixels.min() < 128  # there is ink on the paper


def test_written_pixels_are_the_arrays(built: tuple[Path, ExampleSummary]) -> None:
    out, _ = built
    digits, labels = real_digits(N, seed=0)
    rgb = to_rgb(digits, size=64)
    for i in (0, 57, N - 1):
        path = out / "real" / str(labels[i]) / f"real_{i:05d}.png"
        assert np.array_equal(np.asarray(Image.open(path)), rgb[i])


def test_build_is_deterministic(built: tuple[Path, ExampleSummary], tmp_path: Path) -> None:
    out, _ = built
    again = build_example(tmp_path / "again", n_real=N, n_synthetic=N, size=64, seed=0)
    assert _tree(again.root) == _tree(out)
    other = build_example(tmp_path / "other", n_real=N, n_synthetic=N, size=64, seed=1)
    assert _tree(other.root) != _tree(out)


def test_overwrite_protection(tmp_path: Path) -> None:
    out = tmp_path / "ex"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GapscopeError) as info:
        build_example(out, n_real=20, n_synthetic=20)
    message = str(info.value)
    assert "overwrite" in message and "\n" not in message
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]

    summary = build_example(out, n_real=20, n_synthetic=20, overwrite=True)
    assert summary.real == 20 and summary.synthetic == 20
    assert not (out / "keep.txt").exists() and (out / "metadata.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex"]

    empty = tmp_path / "empty"
    empty.mkdir()
    build_example(empty, n_real=10, n_synthetic=10)  # an existing empty directory is fine
    assert (empty / "metadata.csv").is_file()


def test_killed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(example, "_move_into_place", boom)
    with pytest.raises(KeyboardInterrupt):
        build_example(tmp_path / "ex", n_real=10, n_synthetic=10)
    assert list(tmp_path.iterdir()) == []


# --- the gap is genuine, and the synthetic digits are still digits -----------------------------


def _domain_auc(a: np.ndarray, b: np.ndarray) -> float:
    x = np.concatenate([a, b]).reshape(len(a) + len(b), -1).astype(np.float64)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    scores = cross_val_score(LogisticRegression(max_iter=2000), x, y, cv=cv, scoring="roc_auc")
    return float(scores.mean())


def test_domain_gap_is_real_and_not_trivial() -> None:
    real, real_labels = real_digits(600, seed=0)
    synthetic, synthetic_labels = render_synthetic_digits(300, seed=0)
    # real_digits returns a sorted subsample, so split it at random before comparing halves.
    order = np.random.default_rng(0).permutation(600)
    first, second = real[order[:300]], real[order[300:]]

    assert _domain_auc(first, synthetic) > 0.9
    assert _domain_auc(first, second) < 0.65

    knn = KNeighborsClassifier(n_neighbors=5)
    knn.fit(synthetic.reshape(300, -1).astype(np.float64), synthetic_labels)
    accuracy = knn.score(real.reshape(600, -1).astype(np.float64), real_labels)
    assert accuracy > 0.3
