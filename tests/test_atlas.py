"""The atlas: its layouts, the batch job's 2D map, the routes the map reads, colours,
filters and hotspots (the browser side is in test_browser.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lib.analysis import atlas


def blobs(n_per: int = 300, centres=((-5, 0), (5, 0), (0, 8)), seed: int = 0):
    rng = np.random.default_rng(seed)
    xy = np.concatenate([rng.normal(c, 1.0, size=(n_per, 2)) for c in centres])
    return xy, np.repeat(np.arange(len(centres)), n_per)


def test_the_grid_puts_every_point_in_its_own_cell_and_keeps_neighbourhoods():
    xy, blob = blobs()
    grid = atlas.grid_layout(xy)
    assert grid.shape == (900, 2) and grid.dtype == np.float32
    assert np.abs(grid).max() <= 1.0
    cells = {tuple(p) for p in np.round(grid, 5)}
    assert len(cells) == 900  # no two thumbnails on one cell
    # a point's nearest grid neighbours are mostly from its own blob, as on the map
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=5).fit(grid).kneighbors(grid, return_distance=False)
    assert (blob[idx[:, 1:]] == blob[:, None]).mean() > 0.9


def test_by_category_each_category_is_one_block_and_blocks_do_not_overlap():
    xy, _ = blobs()
    rng = np.random.default_rng(1)
    categories = rng.choice(["cat", "dog", "bird", "fish"], size=len(xy), p=[0.5, 0.3, 0.15, 0.05])
    coords, blocks = atlas.category_layout(xy, categories)
    assert [b.category for b in blocks] == ["cat", "dog", "bird", "fish"]  # largest first
    assert sum(b.count for b in blocks) == len(xy)
    boxes = {}
    for name in set(categories):
        pts = coords[categories == name]
        boxes[name] = (*pts.min(axis=0), *pts.max(axis=0))
    for a in boxes:
        for b in boxes:
            if a < b:
                ax0, ay0, ax1, ay1 = boxes[a]
                bx0, by0, bx1, by1 = boxes[b]
                assert ax1 < bx0 or bx1 < ax0 or ay1 < by0 or by1 < ay0, (a, b)
    assert len({tuple(p) for p in np.round(coords, 5)}) == len(xy)


def test_fit_square_keeps_the_aspect():
    out = atlas.fit_square(np.array([[0, 0], [10, 0], [10, 2]]))
    assert np.allclose(out[:, 0], [-0.95, 0.95, 0.95])
    assert np.isclose(out[2, 1] - out[0, 1], 0.38)  # 2/10 of the x span


def test_the_atlas_level_is_the_middle_one_unless_chosen():
    from lib.analysis.reduce import UMAPParams
    from lib.jobs.run.measure import atlas_level
    from lib.runtime.errors import GapscopeError

    levels = ["p2", "p3", "p4", "p5", "p6"]
    assert atlas_level("auto", levels, 1000, UMAPParams()) == "p4"
    assert atlas_level("p6", levels, 1000, UMAPParams()) == "p6"
    assert atlas_level("none", levels, 1000, UMAPParams()) is None
    assert atlas_level("auto", levels, 5, UMAPParams()) is None  # too few for a UMAP
    with pytest.raises(GapscopeError, match="--atlas-level p9: no such level"):
        atlas_level("p9", levels, 1000, UMAPParams())


# ---- the batch job's map and the demo's routes ------------------------------------------


def test_the_run_holds_a_2d_map_of_both_domains_at_the_middle_level(published_run):
    proj = published_run.projections
    layout = proj[proj["method"] == atlas.METHOD]
    assert set(layout["fit_on"]) == {"both"}
    assert set(layout["level"]) == {atlas.middle_level(published_run.levels)}
    assert sorted(layout["id"]) == list(range(len(published_run.images)))
    assert layout["z"].isna().all() and layout[["x", "y"]].notna().all().all()
    assert "atlas" in published_run.manifest["timings_s"]


@pytest.fixture()
def own(published_run, results_dir, tmp_path):
    """(store, run): a copy of the session's store without its annotations, for a test
    that annotates: its edits stay out of what other tests (and their demo) read."""
    from lib.store.runs import RunStore

    shutil.copytree(
        results_dir,
        tmp_path / "store",
        symlinks=True,
        ignore=shutil.ignore_patterns("annotations.sqlite*", "cache"),
    )
    store = RunStore(tmp_path / "store")
    return store, store.open(published_run.id)


@pytest.fixture()
def client(published_run, results_dir):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from demo.atlas import router
    from lib.store.runs import RunStore

    api = FastAPI()
    api.include_router(router(RunStore(results_dir)))
    return TestClient(api)


def test_the_points_route_sends_x_then_y_for_every_image(client, published_run):
    n = len(published_run.images)
    for layout in atlas.LAYOUTS:
        got = client.get(f"/atlas/{published_run.id}/points.bin", params={"layout": layout})
        assert got.status_code == 200
        xy = np.frombuffer(got.content, dtype=np.float32)
        assert xy.shape == (2 * n,) and np.abs(xy).max() <= 1
    umap = np.frombuffer(client.get(f"/atlas/{published_run.id}/points.bin").content, "<f4")
    proj = published_run.projections
    layout = proj[proj["method"] == atlas.METHOD].sort_values("id")
    expected = atlas.fit_square(layout[["x", "y"]].to_numpy())
    assert np.allclose(umap[:n], expected[:, 0]) and np.allclose(umap[n:], expected[:, 1])


def test_the_routes_serve_thumbnails_of_published_runs_only(client, published_run):
    ok = client.get(f"/atlas/{published_run.id}/thumb/3")
    assert ok.status_code == 200 and ok.content == published_run.thumb(3).read_bytes()
    assert client.get(f"/atlas/{published_run.id}/thumb/99999").status_code == 404
    assert client.get("/atlas/not-a-run/thumb/3").status_code == 404
    assert client.get("/atlas/..%2F..%2Fetc/thumb/3").status_code == 404
    assert client.get(f"/atlas/{published_run.id}/points.bin?layout=spiral").status_code == 404
    script = client.get("/atlas/regl-scatterplot.min.js")
    assert script.status_code == 200 and b"createScatterplot" in script.content


def test_colours_and_filters_follow_the_run_and_the_tags(own):
    from demo.atlas import colours, keep_mask
    from lib.store.annotations import Annotations, keys_of

    store, run = own
    codes, palette, legend = colours(store, run, "domain")
    names = {name: count for name, _, count in legend}
    assert names == {d: int((run.images["domain"] == d).sum()) for d in ("real", "synthetic")}
    assert len(codes) == len(run.images) and codes.max() < len(palette)
    synthetic = run.images.index[run.images["domain"] == "synthetic"].to_numpy()
    mask = keep_mask(store, run, ["synthetic"], None, None, None, None)
    assert np.array_equal(np.flatnonzero(mask), synthetic)
    Annotations.of(store.root).tag(keys_of(run.images, [1, 2]), "atlas unit test")
    mask = keep_mask(store, run, None, None, None, None, ["atlas unit test"])
    assert list(np.flatnonzero(mask)) == [1, 2]
    _, _, legend = colours(store, run, "tags")
    assert ("atlas unit test", 2) in [(n, c) for n, _, c in legend]
    _, _, legend = colours(store, run, "realism")  # real images have none
    assert dict((n, c) for n, _, c in legend)["n/a"] == int((run.images["domain"] == "real").sum())


def test_hotspot_names_are_kept_audited_and_undone(tmp_path):
    from lib.store.annotations import Annotations

    notes = Annotations(tmp_path / "a.sqlite")
    notes.name_hotspot("run1", "c3", 4, "wet roads", who="ana")
    notes.name_hotspot("run1", "c3", 4, "wet asphalt", who="ana")
    notes.name_hotspot("run1", "c4", 4, "elsewhere", who="bo")
    assert notes.hotspot_names("run1", "c3") == {4: "wet asphalt"}
    assert [a["new"] for a in notes.audit() if a["field"] == "hotspot"] == [
        "wet roads",
        "wet asphalt",
        "elsewhere",
    ]
    assert notes.undo("ana") == "undid 1 change"
    assert notes.hotspot_names("run1", "c3") == {4: "wet roads"}
    assert notes.hotspot_names("run1", "c4") == {4: "elsewhere"}


def test_tags_show_in_the_overlap_colouring_and_in_gallery_captions(own):
    from demo.atlas import describe_selection
    from demo.overlap import neighbour_gallery, overlap_figure
    from lib.store.annotations import Annotations, keys_of

    store, run = own
    level = run.levels[0]
    first = int(run.neighbours(level)[0][7][0])  # the first image in row 7's gallery
    Annotations.of(run.results).tag(keys_of(run.images, [first]), "shown everywhere")
    gallery = neighbour_gallery(run, level, 7)
    assert gallery[0][1].endswith("🏷 shown everywhere")
    fig = overlap_figure(run, level, "real", color_by="tags")
    trace = next(t for t in fig.data if t.name == "shown everywhere")
    assert list(trace.customdata) == [first]
    _, items = describe_selection(store, run.id, [first])
    assert items[0][1].endswith("🏷 shown everywhere")


def test_the_map_colours_by_any_column_of_the_inputs_metadata(published_run, results_dir):
    from demo.atlas import _metadata_colours, colour_choices, colours
    from lib.store.runs import RunStore

    run = published_run
    assert ("font (metadata)", "meta:font") in colour_choices(run)  # the example's csv
    _, _, legend = colours(RunStore(results_dir), run, "meta:font")
    counts = {name: n for name, _, n in legend}
    assert counts["handwritten"] == int((run.images["domain"] == "real").sum())
    assert sum(counts.values()) == len(run.images)
    years = np.array([str(1990 + i % 30) for i in range(300)] + [""] * 10)
    codes, palette, legend = _metadata_colours(years)  # many numbers: binned
    assert len(legend) == 9 and legend[-1][0] == "n/a" and legend[-1][2] == 10
    assert codes[0] == 0 and codes[29] == 7  # 1990 in the first bin, 2019 in the last


def test_a_corrected_label_shows_in_captions_and_moves_the_image_on_the_atlas(own):
    from demo.atlas import colours, describe_selection
    from lib.store.annotations import Annotations, keys_of

    store, run = own
    (key,) = keys_of(run.images, [9])
    original = str(run.images.at[9, "category"])
    Annotations.of(run.results).set_label(key, original, "a long new label")
    _, items = describe_selection(store, run.id, [9])
    assert " · label → a long new label" in items[0][1]
    codes, _, legend = colours(store, run, "category")
    assert legend[codes[9]][0] == "a long new label" and legend[codes[9]][2] == 1


def test_filters_by_category_hotspot_and_realism_keep_what_they_say(published_run):
    from demo.atlas import atlas_level, keep_mask
    from lib.store.runs import RunStore

    run, store = published_run, RunStore(published_run.results)
    cats = run.images["category"].astype(str).to_numpy()
    mask = keep_mask(store, run, None, ["3", "7"], None, None, None)
    assert np.array_equal(mask, np.isin(cats, ["3", "7"]))
    scores = run.scores[run.scores["level"] == atlas_level(run)].set_index("id")
    scores = scores.reindex(range(len(run.images)))
    noise = keep_mask(store, run, None, None, ["noise"], None, None)
    assert noise is None or np.array_equal(noise, scores["cluster"].to_numpy() < 0)
    realism = scores["realism"].to_numpy()
    mid = float(np.nanmedian(realism))
    mask = keep_mask(store, run, None, None, None, (mid, 3.0), None)
    # synthetic images below the median are left out, real ones (no realism) stay
    assert np.array_equal(mask, np.isnan(realism) | (realism >= mid))
