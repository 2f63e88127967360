"""The overlap view of a large, lopsided run: what reaches the browser, and that the small
domain stays visible."""

from __future__ import annotations

import json

import numpy as np
import pytest

import demo.overlap as views
from demo.thinning import GRID, MAX_POINTS, _cells, budgets, thin


def test_budgets_show_a_small_domain_whole():
    assert budgets({"real": 1_797, "synthetic": 1_000_000}, 60_000) == {
        "real": 1_797,
        "synthetic": 58_203,
    }
    assert budgets({"real": 500_000, "synthetic": 500_000}, 60_000) == {
        "real": 30_000,
        "synthetic": 30_000,
    }


def test_thinning_keeps_the_density_and_every_occupied_cell():
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(200_000, 2))
    outliers = np.array([[40.0, 40.0], [-40.0, 35.0], [30.0, -45.0]])
    coords = np.vstack([dense, outliers])
    kept = thin(coords, 20_000, GRID["2D"])
    assert 20_000 <= len(kept) < 20_000 + GRID["2D"] ** 2 // 10
    assert set(range(200_000, 200_003)) <= set(kept)  # the lone points are never lost
    assert set(_cells(coords, GRID["2D"])) == set(_cells(coords, GRID["2D"])[kept])
    # the sample's density is the data's: the share within 1 sd stays ~68 %
    share = (np.abs(coords[kept]).max(axis=1) < 1).mean()
    assert abs(share - (np.abs(dense).max(axis=1) < 1).mean()) < 0.02
    np.testing.assert_array_equal(kept, thin(coords, 20_000, GRID["2D"]))  # seeded


@pytest.fixture(scope="module")
def lopsided(tmp_path_factory):
    """80,000 synthetic and 2,000 real 16-d embeddings, projected with PCA."""
    from lib.analysis.gap import GapParams
    from lib.inputs.mixture import write_domain
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    root = tmp_path_factory.mktemp("lopsided")
    real = write_domain(root / "v", "real", 2_000, seed=1, dim=16)
    fake = write_domain(root / "v", "synthetic", 80_000, seed=2, dim=16, shift=1.0)
    config = RunConfig.of(
        real=real,
        synthetic=fake,
        k=8,
        projections=("pca",),
        plots=False,
        atlas_level="none",  # the overlap view's test: no atlas UMAP (30 s)
        gap=GapParams(sample=1000, resamples=20),
    )
    return run(config, RunStore(root / "results"))


def _ids(fig) -> np.ndarray:
    return np.concatenate([np.asarray(t.customdata) for t in fig.data if t.customdata is not None])


def test_the_overview_ships_a_bounded_sample_with_the_small_domain_whole_and_on_top(lopsided):
    fig = views.overlap_figure(lopsided, "embedding", "real", method="pca")
    names = [t.name for t in fig.data]
    assert names[0].startswith("synthetic · 80,000 (") and names[0].endswith(" shown)")
    assert names[1] == "real · 2,000"  # whole, and drawn last: on top
    ids = _ids(fig)
    assert set(range(2_000)) <= set(ids)
    assert MAX_POINTS["3D"] <= len(ids) < MAX_POINTS["3D"] + GRID["3D"] ** 3 // 10
    assert fig.data[1].marker.opacity > fig.data[0].marker.opacity  # the crowd is fainter
    assert "of 82,000 points shown" in fig.layout.title.text
    # ~35 bytes a point: coordinates and ids as typed arrays, no per-point tooltip text
    assert len(fig.to_json()) < 40 * len(ids)


def test_a_zoomed_2d_region_has_every_point_inside_it(lopsided):
    view, _ = views.projection_view(lopsided, "embedding", "pca", "real")
    x, y = view["x"], view["y"]
    box = [
        float(np.quantile(x, 0.4)),
        float(np.quantile(x, 0.6)),
        float(np.quantile(y, 0.4)),
        float(np.quantile(y, 0.6)),
    ]
    inside = view["id"][(x >= box[0]) & (x <= box[1]) & (y >= box[2]) & (y <= box[3])]
    zoom = json.dumps(
        {"key": views.view_key(lopsided, "embedding", "pca", "real", "2D"), "box": box}
    )
    parsed = views.parse_zoom(zoom, lopsided, "embedding", "pca", "real")
    fig = views.overlap_figure(lopsided, "embedding", "real", method="pca", view="2D", box=parsed)
    assert sorted(_ids(fig)) == sorted(inside)
    assert list(fig.layout.xaxis.range) == box[:2]
    # a zoom made in another view (3D, another level) is not applied here
    other = json.dumps(
        {"key": views.view_key(lopsided, "embedding", "pca", "real", "3D"), "box": box}
    )
    assert views.parse_zoom(other, lopsided, "embedding", "pca", "real") is None
    assert views.parse_zoom('{"key": 1}', lopsided, "embedding", "pca", "real") is None


def test_density_contours_come_from_every_point_as_a_small_grid(lopsided):
    fig = views.overlap_figure(
        lopsided, "embedding", "real", method="pca", view="2D", contours=True
    )
    contours = [t for t in fig.data if t.type == "contour"]
    assert [t.name for t in contours] == ["synthetic density", "real density"]
    assert np.asarray(contours[0].z).shape == (80, 80)
    assert np.asarray(contours[0].z).sum() == 80_000  # all of them, not the sample


def test_an_image_is_found_by_id_or_by_name(lopsided, tmp_path):
    from lib.store.runs import RunStore

    store = RunStore(lopsided.dir.parent.parent)
    _, gallery, info, row = views.find_image(store, [], "#17", lopsided.id, "embedding")
    assert info.startswith("**Selected #17 real") and len(gallery) == 8 and row == 17
    _, _, info, _ = views.find_image(store, [], "synthetic/0000042", lopsided.id, "embedding")
    assert info.startswith("**Selected #2042 synthetic")
    _, _, info, _ = views.find_image(store, [], "real/00001", lopsided.id, "embedding")
    assert "(100 match 'real/00001'; the first is shown.)" in info
    _, _, info, _ = views.find_image(store, [], "no-such-file", lopsided.id, "embedding")
    assert info == "No image of this run has 'no-such-file' in its name or id."


def test_the_report_says_when_metrics_come_from_a_sample(lopsided):
    from demo.report import notes_markdown

    notes = notes_markdown(lopsided)
    assert "a seeded sample of 1,000 of 2,000 real and 1,000 of 80,000 synthetic" in notes
