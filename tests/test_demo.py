"""The demo against a running server: what the browser's click calls, through the API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import served

from demo import overlap as views
from demo import runs
from lib.analysis.plots import direction_title

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(demo_url):
    from gradio_client import Client

    return Client(demo_url, verbose=False)


def _row_of(caption: str) -> int:
    return int(caption.split()[0].lstrip("#"))


def test_click_returns_the_exact_neighbours(client, results_dir):
    from lib.store.runs import RunStore

    run = RunStore(results_dir).open()  # what the demo shows: the latest run
    row = 45  # a synthetic image
    X = np.asarray(run.features("c4"), dtype=np.float64)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    d = 1 - Xn @ Xn.T
    d[row, row] = np.inf
    nearest = np.sort(d[row])[:8]

    image, gallery, info, selected = client.predict(
        json.dumps({"id": row, "t": 1}), run.id, "c4", api_name="/select_point"
    )
    rows = [_row_of(item["caption"]) for item in gallery]
    assert rows == [int(i) for i in run.neighbours("c4")[0][row]]
    # "… · d=0.123", then what users decided, if anything (" · 🏷 tags")
    shown = [float(item["caption"].rsplit("d=", 1)[1].split(" ")[0]) for item in gallery]
    np.testing.assert_allclose(shown, nearest, atol=2e-3)  # captions round to 3 decimals
    np.testing.assert_allclose(d[row, rows], nearest, atol=1e-5)  # truly the nearest
    assert Path(image).name == (run.web(row) or run.thumb(row)).name  # shown large
    assert f"#{row} synthetic" in info and selected == row


def test_a_click_on_another_level_gives_other_neighbours(client, results_dir):
    from lib.store.runs import RunStore

    run = RunStore(results_dir).open()
    payload = json.dumps({"id": 3, "t": 2})
    _, g2, _, _ = client.predict(payload, run.id, "c2", api_name="/select_point")
    _, g5, _, _ = client.predict(payload, run.id, "c5", api_name="/select_point")
    expected = [int(j) for j in run.neighbours("c5")[0][3]]
    assert [_row_of(i["caption"]) for i in g5] == expected
    assert [i["caption"] for i in g2] != [i["caption"] for i in g5]


def test_a_runs_thumbnails_are_served_and_the_rest_of_the_store_is_not(
    demo_url, published_run, results_dir
):
    assert served(demo_url, published_run.thumb(0)) == 200  # the positive control
    cache_entry = next((results_dir / "cache").rglob("hashes.npy"))
    log = results_dir / "demo.log"
    assert cache_entry.is_file() and log.is_file()  # they exist: refusals mean something
    for path in ("/etc/passwd", "/root/.bashrc", cache_entry, log):
        assert served(demo_url, path) in (403, 404), path


def test_overlap_figure_points_carry_row_ids(published_run):
    fig = views.overlap_figure(published_run, "c3", "real", "domain")
    assert [t.name for t in fig.data] == ["real · 40", "synthetic · 40"]  # legend counts
    ids = np.concatenate([np.asarray(t.customdata) for t in fig.data])
    assert sorted(ids) == list(range(len(published_run.images)))
    assert fig.layout.scene.zaxis.title.text == "UMAP 3"
    by_cat = views.overlap_figure(published_run, "c3", "synthetic", "category")
    assert [t.name for t in by_cat.data] == [str(i) for i in range(10)]


def test_every_projection_of_the_run_can_be_shown(published_run):
    assert views.methods(published_run) == [("UMAP", "umap"), ("PCA", "pca"), ("t-SNE", "tsne")]
    pca = views.overlap_figure(published_run, "c3", "synthetic", "domain", "pca")
    assert [t.type for t in pca.data] == ["scatter3d", "scatter3d"]
    assert pca.layout.scene.xaxis.title.text == "PCA 1"
    assert pca.layout.title.text == f"c3 · PCA: {direction_title('synthetic')}"
    tsne = views.overlap_figure(published_run, "c3", "real", "domain", "tsne")
    assert [t.type for t in tsne.data] == ["scattergl", "scattergl"]  # 2D
    assert "both domains together" in tsne.layout.title.text
    assert tsne.layout.xaxis.title.text == "t-SNE 1"
    ids = np.concatenate([np.asarray(t.customdata) for t in tsne.data])
    assert sorted(ids) == list(range(len(published_run.images)))  # each image once


def test_banner_says_which_run_and_which_weights(published_run):
    text = runs.banner(published_run)
    assert published_run.id in text
    assert "efficientnet-lite0" in text and "ImageNet" in text
    assert "RANDOM WEIGHTS" not in text


def test_parse_click_accepts_the_browser_payload_only():
    assert views.parse_click('{"id": 12, "t": 99}') == 12
    assert views.parse_click('{"id": [7], "t": 1}') == 7
    assert views.parse_click("5") == 5
    assert views.parse_click("") is None
    assert views.parse_click("not json") is None
    assert views.parse_click('{"t": 1}') is None


# ---- the gap report ------------------------------------------------------------------------


def test_report_table_and_chart_cover_every_level(published_run):
    from demo import report

    rows = report.summary_table(published_run)
    assert [r[0] for r in rows] == published_run.levels
    assert all(len(r) == len(report.SUMMARY_HEADERS) for r in rows)
    fig = report.levels_figure(published_run)
    auc = next(t for t in fig.data if t.name.startswith("Domain classifier"))
    assert list(auc.x) == published_run.levels
    raw = json.loads((published_run.dir / "metrics.json").read_text())["levels"]
    expected = [raw[lv]["metrics"]["auc"]["value"] for lv in auc.x]
    np.testing.assert_allclose(auc.y, expected)
    lo = [raw[lv]["metrics"]["auc"]["ci95"][0] for lv in auc.x]
    np.testing.assert_allclose(np.asarray(auc.y) - auc.error_y.arrayminus, lo)
    assert "Largest gap at" in report.notes_markdown(published_run)


def test_blame_galleries_put_the_worst_images_first(published_run):
    from demo import report

    scores = published_run.scores
    scores = scores[scores.level == "c4"].set_index("id")
    blame = report.blame_galleries(published_run, "c4", n=5)
    shown = [_row_of(c) for _, c in blame["least_realistic"]]
    synth = scores.loc[published_run.images.domain == "synthetic"]
    assert shown == list(synth["realism"].sort_values().index[:5])
    assert all(published_run.images.domain[i] == "synthetic" for i in shown)
    uncovered = [_row_of(c) for _, c in blame["uncovered_real"]]
    assert uncovered and all(scores.loc[i, "covered"] == False for i in uncovered)  # noqa: E712
    assert all(published_run.images.domain[i] == "real" for i in uncovered)


def test_history_reads_each_runs_metrics_old_runs_included(published_run, tmp_path):
    """A store with today's run and one written before metrics had one record shape
    (tests/fixtures/schema1): one point per run, each y the run's own metrics.json."""
    import shutil

    from demo import report
    from lib.store.runs import RunStore

    old = next((Path(__file__).parent / "fixtures" / "schema1" / "runs").iterdir())
    for run_dir in (old, published_run.dir):
        shutil.copytree(run_dir, tmp_path / "runs" / run_dir.name)
    store = RunStore(tmp_path)
    fig = report.history_figure(store, "c3", "coverage")
    assert list(fig.data[0].text) == [old.name, published_run.id]
    old_raw = json.loads((old / "metrics.json").read_text())["levels"]["c3"]
    new_raw = json.loads((published_run.dir / "metrics.json").read_text())["levels"]["c3"]
    expected = [old_raw["coverage"]["value"], new_raw["metrics"]["coverage"]["value"]]
    np.testing.assert_allclose(fig.data[0].y, expected)
    precision = report.history_figure(store, "c3", "precision")  # a flat number in schema 1
    assert precision.data[0].y[0] == pytest.approx(old_raw["precision"])


def test_plot_can_be_coloured_by_realism(published_run):
    import pandas as pd

    fig = views.overlap_figure(published_run, "c3", "real", "realism")
    real, synthetic = fig.data
    assert real.marker.color == "lightgrey"
    colors = np.asarray(synthetic.marker.color, dtype=float)
    assert np.isfinite(colors).all() and synthetic.marker.showscale
    scores = pd.read_parquet(published_run.dir / "scores.parquet")
    realism = scores[scores.level == "c3"].set_index("id")["realism"]
    np.testing.assert_allclose(colors, realism.loc[np.asarray(synthetic.customdata)].to_numpy())


def test_plot_can_be_coloured_by_cluster(published_run):
    from lib.store.runs import Run

    run = Run(published_run.dir)
    fig = views.overlap_figure(run, "c4", "real", "cluster")
    table = run.metrics["levels"]["c4"]["clusters"]["table"]
    names = {t.name for t in fig.data}
    assert {n for n in names if n != "noise"} == {
        f"cluster {c['cluster']:02d} · {c['kind']}" for c in table
    }
    assert sum(len(t.customdata) for t in fig.data) == len(run.images)


def test_a_run_from_before_the_record_shape_opens_in_every_tab(schema1_store):
    """tests/fixtures/schema1: a run published by the code before metrics had one record
    shape. Every tab's functions read it, with its own numbers."""

    from demo import caricatures, report
    from lib.store.runs import RunStore

    store = RunStore(schema1_store)
    run = store.open(store.run_ids()[0])
    raw = json.loads((run.dir / "metrics.json").read_text())["levels"]
    rows = {r[0]: r for r in report.summary_table(run)}
    assert rows["c3"][report.SUMMARY_HEADERS.index("precision")].startswith(
        f"{raw['c3']['precision']:.3g} ["
    )
    assert rows["c3"][report.SUMMARY_HEADERS.index("AUC")].startswith(
        f"{raw['c3']['classifier']['auc']:.3g}"
    )
    assert "Largest gap at" in report.notes_markdown(run)
    assert report.levels_figure(run).data and report.blame_galleries(run, "c3")
    for color_by in views.COLOR_BY:
        fig = views.overlap_figure(run, "c3", "real", color_by)
        assert sum(len(t.customdata) for t in fig.data) == len(run.images)
    assert runs.banner(run).startswith(f"**Run {run.id}**")
    assert caricatures.choices(run) == ([], [], [])


def test_the_gallery_can_show_one_domains_nearest_only(published_run, results_dir):
    """ "The nearest real images to this synthetic one": exact among the real rows, even
    when the run's own table (both domains) holds none of them."""
    from lib.store.runs import RunStore

    store = RunStore(results_dir)
    run = RunStore(results_dir).open()
    X = np.asarray(run.features("c4"), dtype=np.float64)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    real = np.flatnonzero(run.images["domain"] == "real")
    row = int(np.flatnonzero(run.images["domain"] == "synthetic")[5])
    d = 1 - Xn[real] @ Xn[row]
    gallery = views.filtered_neighbours(store, run.id, "c4", row, "real")
    assert [_row_of(c) for _, c in gallery] == real[np.argsort(d)[:8]].tolist()
    assert all(" real · " in c for _, c in gallery)
    both = views.filtered_neighbours(store, run.id, "c4", row, "both domains")
    assert [_row_of(c) for _, c in both] == [int(i) for i in run.neighbours("c4")[0][row]]
    assert views.filtered_neighbours(store, run.id, "c4", None, "real") is not None  # a skip
