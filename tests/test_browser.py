"""A real browser: headless Debian Chromium used as a person uses the demo.

Points are found the way a person finds them: move the mouse over the plot until a
tooltip shows, read the image's #id from it, press and release there, and check that the
selected image is that one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOOLTIP = """() => {
  const t = document.querySelector('#overlap_plot .hovertext');
  return t ? t.textContent : null;
}"""


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is missing: .ci/run installs it")
        pytest.skip("apt-get install chromium to run the browser test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        # one context: its HTTP cache keeps the demo's scripts between visits (each page
        # is still new: nothing a test clicked is kept)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        yield context
        context.close()
        browser.close()


@contextlib.contextmanager
def visit(browser, url: str):
    """A fresh page, as a new visitor sees the demo: no test depends on what another
    clicked."""
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("#overlap_plot .js-plotly-plot canvas", timeout=60_000)
    page.wait_for_timeout(600)
    yield page
    page.close()


@pytest.fixture()
def page(browser, demo_url):
    with visit(browser, demo_url) as page:
        yield page


def tooltip_id(page, x: float, y: float) -> int | None:
    """The #id in the tooltip shown with the pointer at (x, y), if any."""
    page.mouse.move(x, y)
    page.wait_for_timeout(60)
    match = re.match(r"#(\d+) ", page.evaluate(TOOLTIP) or "")
    return int(match.group(1)) if match else None


def points_with_tooltips(page, wanted: int = 1, skip: tuple = ()) -> list[tuple[float, float, int]]:
    """Screen positions where a tooltip shows, with the id it names, scanning the plot."""
    box = page.query_selector("#overlap_plot .js-plotly-plot").bounding_box()
    found = []
    for fy in (0.5, 0.42, 0.58, 0.34, 0.66, 0.26, 0.74):
        for fx in (i / 40 for i in range(6, 35)):
            x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
            row = tooltip_id(page, x, y)
            if row is not None and row not in skip and row not in [f[2] for f in found]:
                found.append((x, y, row))
                if len(found) == wanted:
                    return found
    assert found, "no tooltip anywhere over the plot"
    return found


def plotted_points(page) -> list[tuple[float, float, int]]:
    """Screen positions and ids of the points a 2D overlap view draws (plotly's axes map
    data to pixels), most isolated first: where a person would point at one."""
    found = page.evaluate(
        """() => { const p = document.querySelector('#overlap_plot .js-plotly-plot');
        const xa = p._fullLayout.xaxis, ya = p._fullLayout.yaxis;
        const box = p.getBoundingClientRect(), out = [];
        for (const t of p._fullData) { if (!t.customdata) continue;
          for (let i = 0; i < t.customdata.length; i++) out.push([
            box.left + xa._offset + xa.l2p(t.x[i]), box.top + ya._offset + ya.l2p(t.y[i]),
            Number(t.customdata[i])]); }
        return out; }"""
    )

    def spacing(point):
        return min(
            (abs(point[0] - q[0]) + abs(point[1] - q[1]) for q in found if q is not point),
            default=1e9,
        )

    return sorted(found, key=spacing, reverse=True)


def click_here(page, x: float, y: float) -> None:
    """Press and release without moving, as a click by hand."""
    page.mouse.move(x, y)
    page.wait_for_timeout(80)
    page.mouse.down()
    page.wait_for_timeout(120)
    page.mouse.up()


def wait_selected(page, row: int) -> None:
    page.wait_for_function(
        "(row) => document.body.innerText.includes(`Selected #${row} `)", arg=row, timeout=20_000
    )


def gallery_captions(page) -> list[str]:
    return [
        el.inner_text().strip()
        for el in page.query_selector_all("#neighbours .caption-label")
        if el.inner_text().strip()
    ]


def test_clicking_where_a_tooltip_shows_selects_that_image_at_any_level_and_projection(
    page, results_dir, published_run
):
    """One visitor's session (a page load costs 5 s here): three clicks where tooltips
    show, a drag that rotates and selects nothing, another level, t-SNE's 2D view, then
    the gap report."""
    from lib.store.runs import RunStore

    run = RunStore(results_dir).open()
    assert gallery_captions(page) == []
    points = points_with_tooltips(page, wanted=3)
    assert len(points) == 3
    for x, y, row in points:
        assert tooltip_id(page, x, y) == row  # the tooltip is there before the click
        click_here(page, x, y)
        wait_selected(page, row)
        page.wait_for_function(
            "() => document.querySelectorAll('#neighbours .caption-label').length >= 8",
            timeout=20_000,
        )
        captions = gallery_captions(page)
        assert len(captions) == 8 and all("d=" in c for c in captions)
        shown = run.web(row) or run.thumb(row)  # that image, large
        assert page.get_attribute("#selected_image img", "src").endswith(shown.name)
    a_drag_rotates_and_selects_nothing(page)
    changing_level_keeps_clicking_working(page)
    the_tsne_projection_is_2d_and_clickable(page)
    gap_report_tab_shows_the_images_to_blame_and_what_differs(page, published_run)


def select_some_point(page) -> int:
    ((x, y, row),) = points_with_tooltips(page)
    click_here(page, x, y)
    wait_selected(page, row)
    return row


def changing_level_keeps_clicking_working(page):
    select_some_point(page)
    first = gallery_captions(page)
    page.click("#banner")  # somewhere neutral: a click on the plot could pick a point
    page.get_by_label("Level", exact=True).click()
    page.get_by_role("option", name="c5").click()
    page.wait_for_timeout(1500)
    ((x, y, row),) = points_with_tooltips(page)
    click_here(page, x, y)
    wait_selected(page, row)
    page.wait_for_function(
        "(old) => { const c = [...document.querySelectorAll('#neighbours .caption-label')]"
        ".map(e => e.innerText.trim()).join('|'); return c && c !== old; }",
        arg="|".join(first),
        timeout=20_000,
    )
    assert "level c5" in page.inner_text("body")


def a_drag_rotates_and_selects_nothing(page):
    shown = select_some_point(page)
    ((x, y, row),) = points_with_tooltips(page, skip=(shown,))
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 40, y + 25, steps=5)
    page.mouse.up()
    page.wait_for_timeout(1500)
    assert f"Selected #{shown} " in page.inner_text("body")  # unchanged


def gap_report_tab_shows_the_images_to_blame_and_what_differs(page, published_run):
    page.get_by_role("tab", name="Gap report").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#least_realistic .caption-label').length >= 4",
        timeout=20_000,
    )
    text = page.inner_text("body")
    assert "Largest gap at" in text
    assert "realism" in page.inner_text("#least_realistic")
    # what differs: the run's findings in words, its table, and the chart drawn
    differs = page.inner_text("#what_differs")
    found = published_run.metrics["attribution"]
    assert "What differs" in differs and found["sentences"][-1] in differs
    assert found["statistics"][0]["statistic"] in differs
    page.wait_for_selector("#what_differs_chart .js-plotly-plot", timeout=20_000)
    # the modes one domain under- or over-represents, in words, with their images
    modes = published_run.metrics["modes"]["modes"]
    page.locator("#modes_gallery").scroll_into_view_if_needed()
    page.wait_for_function(
        "(t) => document.querySelector('#modes_note').innerText.includes(t)",
        arg=modes[0]["says"],
        timeout=20_000,
    )
    page.wait_for_function(  # drawn: the gallery's first row at least (the rest load lazily)
        "() => [...document.querySelectorAll('#modes_gallery img')]"
        ".filter(e => e.naturalWidth > 0).length >= 4",
        timeout=20_000,
    )


def the_tsne_projection_is_2d_and_clickable(page):
    page.get_by_role("tab", name="Overlap").click()
    page.get_by_text("t-SNE", exact=True).click()
    page.wait_for_function(
        "() => document.querySelector('#overlap_plot').innerText.includes('both domains')",
        timeout=20_000,
    )
    page.wait_for_timeout(800)
    ((x, y, row),) = points_with_tooltips(page)
    click_here(page, x, y)
    wait_selected(page, row)
    assert len(gallery_captions(page)) == 8


# ---- a 200,000-point run -----------------------------------------------------------------


@pytest.fixture(scope="module")
def large_results(tmp_path_factory):
    """100,001 + 100,001 generated 16-d embeddings through the batch job: PCA, and just
    over 200,000 rows so neighbours are approximate (HNSW: 10 s, where the exact flat
    search took 38 s), and the atlas's UMAP fitted on 2,000 (5 s, not 32)."""
    from lib.analysis.gap import GapParams
    from lib.analysis.reduce import UMAPParams
    from lib.inputs.mixture import write_pair
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    root = tmp_path_factory.mktemp("large")
    real, fake = write_pair(root / "vectors", 100_001, 100_001, dim=16)
    config = RunConfig.of(
        real=real,
        synthetic=fake,
        k=8,
        projections=("pca",),
        plots=False,
        gap=GapParams(sample=2000, resamples=20),
        umap=UMAPParams(fit_sample=2000),
    )  # the atlas's UMAP only
    run(config, RunStore(root / "results"))
    return root / "results"


@pytest.fixture(scope="module")
def large_url(large_results):
    """The large run, served by the demo."""
    from conftest import serve_demo

    with serve_demo(large_results) as url:
        yield url


@pytest.fixture()
def large_page(browser, large_url):
    with visit(browser, large_url) as page:
        yield page


def test_on_200k_points_clicks_a_name_a_zoom_and_the_atlas_find_their_images(
    large_page, large_results
):
    """One visitor's session on the 200,002-point run (a page load costs 5 s here): a
    click where the tooltip shows selects that point 9 times in 10; a name finds its
    image; a 2D zoom brings every point of its region; the atlas draws them all and a
    hotspot selects its cluster."""
    page = large_page
    title = page.inner_text("#overlap_plot")
    assert "of 200,002 points shown" in title  # the overview is thinned, and says so
    points = points_with_tooltips(page, wanted=10)
    assert len(points) == 10
    selected = 0
    for x, y, row in points:
        click_here(page, x, y)
        try:
            wait_selected(page, row)
            selected += 1
        except Exception:  # noqa: BLE001 - a miss is counted, not fatal
            continue
    assert selected >= 9
    page.wait_for_function(
        "() => document.querySelectorAll('#neighbours .caption-label').length >= 8",
        timeout=20_000,
    )
    assert all("d=" in c for c in gallery_captions(page))
    an_image_is_found_by_name_without_the_mouse(page)
    zooming_the_2d_view_brings_every_point_of_the_region(page)
    the_atlas_draws_them_all_and_a_hotspot_selects_its_cluster(page, large_results)


def an_image_is_found_by_name_without_the_mouse(page):
    page.fill("#find_image textarea, #find_image input", "synthetic/0004242")
    page.keyboard.press("Enter")
    wait_selected(page, 104_243)  # the synthetic rows follow the 100,001 real ones
    assert len(gallery_captions(page)) == 8


def zooming_the_2d_view_brings_every_point_of_the_region(page):
    page.get_by_text("2D", exact=True).click()
    # the 3D view has no drag layer: its appearing is the 2D figure drawn (the title says
    # "points shown" in both, so it cannot tell them apart on a loaded machine)
    area = page.wait_for_selector("#overlap_plot .nsewdrag", timeout=30_000)
    page.wait_for_function(
        "() => document.querySelector('#overlap_plot').innerText.includes('points shown')",
        timeout=20_000,
    )
    page.wait_for_timeout(800)
    shown = _points_drawn(page)
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
    cx, cy = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5
    page.mouse.move(cx - 12, cy - 12)
    page.mouse.down()
    page.mouse.move(cx + 12, cy + 12, steps=5)
    page.mouse.up()
    # the server answers with the region alone: every one of its points, none thinned
    page.wait_for_function(
        "() => !document.querySelector('#overlap_plot').innerText.includes('points shown')",
        timeout=30_000,
    )
    page.wait_for_timeout(500)
    zoomed = _points_drawn(page)
    assert 0 < zoomed < shown
    ((x, y, row),) = points_with_tooltips(page)
    click_here(page, x, y)
    wait_selected(page, row)


def _points_drawn(page) -> int:
    return page.evaluate(  # plotly's own count of each trace's points
        "() => document.querySelector('#overlap_plot .js-plotly-plot')._fullData"
        ".filter(t => t.type === 'scattergl').reduce((n, t) => n + t._length, 0)"
    )


# ---- curating: tag, relabel, reload, download ---------------------------------------------


def find(page, row: int) -> None:
    """Select an image by its #id with the "Find an image" box, as after a reload; wait
    until the curating panel shows it."""
    page.fill("#find_image textarea, #find_image input", f"#{row}")
    page.keyboard.press("Enter")
    wait_selected(page, row)
    notes_say(page, f"#{row}:")


def notes_say(page, text: str) -> None:
    page.wait_for_function(
        "(t) => document.querySelector('#image_notes').innerText.includes(t)",
        arg=text,
        timeout=20_000,
    )


def download(page, kind: str) -> str:
    """Choose an export, prepare it, click the file link as a person does; its text."""
    page.locator("#export_kind").get_by_text(kind, exact=True).click()
    page.click("#export_button")
    link = page.wait_for_selector("#export_file a", timeout=20_000)
    with page.expect_download() as got:
        link.click()
    with open(got.value.path(), encoding="utf-8") as fh:
        return fh.read()


def test_a_tag_survives_a_reload_and_the_download_holds_it(page, demo_url, browser):
    import csv
    import io

    row = select_some_point(page)
    page.fill("#tag_name textarea, #tag_name input", "odd lighting")
    page.click("#tag_button")
    notes_say(page, "odd lighting")
    with visit(browser, demo_url) as again:  # another visit: nothing kept in the browser
        find(again, row)
        notes_say(again, f"#{row}: tags: odd lighting")
        rows = list(csv.DictReader(io.StringIO(download(again, "CSV"))))
        tagged = [int(r["id"]) for r in rows if "odd lighting" in r["tags"].split(";")]
        assert tagged == [row]


def test_a_relabel_and_a_removal_reach_the_corrected_metadata(page, results_dir, example_dir):
    import csv
    import io

    from lib.store.runs import RunStore

    run = RunStore(results_dir).open()
    synthetic = [int(i) for i in run.images.index[run.images["domain"] == "synthetic"]]
    fixed, removed = synthetic[2], synthetic[3]
    find(page, fixed)
    page.fill("#label_box textarea, #label_box input", "seven")
    page.click("#label_button")
    notes_say(page, "→ seven")
    find(page, removed)
    page.click("#remove_button")
    notes_say(page, "remove")
    got = list(csv.DictReader(io.StringIO(download(page, "corrected metadata.csv"))))
    path = {i: str(run.images.at[i, "path"]) for i in (fixed, removed)}
    original = list(csv.DictReader((example_dir / "metadata.csv").open(encoding="utf-8-sig")))
    expected = []
    for r in original:
        where = str((example_dir / r["filename"]).resolve())
        if where == path[removed]:
            continue
        expected.append({**r, "category": "seven"} if where == path[fixed] else r)
    assert got == expected
    the_neighbours_can_come_from_the_real_images_only(page, results_dir)  # the same visit


def test_two_browsers_tagging_at_once_both_keep_their_edits(browser, demo_url, results_dir):
    from lib.store.annotations import Annotations
    from lib.store.runs import RunStore

    run = RunStore(results_dir).open()
    with visit(browser, demo_url) as one, visit(browser, demo_url) as two:
        for page, row in ((one, 11), (two, 12)):
            find(page, row)
            page.fill("#tag_name textarea, #tag_name input", f"from tab {row}")
        one.click("#tag_button")
        two.click("#tag_button")  # without waiting for the first
        notes_say(one, "from tab 11")
        notes_say(two, "from tab 12")
    notes = Annotations.of(results_dir)
    for row in (11, 12):
        key = (run.images.at[row, "hash"], run.images.at[row, "relpath"])
        assert notes.tagged(f"from tab {row}") == {key}


def the_neighbours_can_come_from_the_real_images_only(page, results_dir):
    from lib.store.runs import RunStore

    run = RunStore(results_dir).open()
    row = int(run.images.index[run.images["domain"] == "synthetic"][7])
    find(page, row)
    page.locator("#neighbours_from").get_by_text("real", exact=True).click()
    page.wait_for_function(
        "() => { const c = [...document.querySelectorAll('#neighbours .caption-label')];"
        " return c.length >= 8 && c.every(e => e.innerText.includes(' real ')); }",
        timeout=20_000,
    )


# ---- the atlas: lasso, tag, reload, download; zoom into thumbnails -------------------------

ATLAS = "document.querySelector('#atlas .atlas-wrap')"


def open_atlas(page) -> dict:
    """Switch to the Atlas tab and wait until its map is drawn; the map's state."""
    page.get_by_role("tab", name="Atlas").click()
    page.wait_for_function(f"() => {ATLAS} && {ATLAS}.dataset.ready !== '0'", timeout=60_000)
    return page.evaluate(f"() => ({{...{ATLAS}.dataset}})")


def lasso(page, x0=0.25, y0=0.25, x1=0.75, y1=0.75) -> list[int]:
    """Turn on Lasso and drag a loop over part of the map, as a person does; the rows
    the map then shows selected (once the page says how many were selected)."""
    page.click("#atlas .atlas-lasso")
    box = page.locator("#atlas .atlas-wrap").bounding_box()
    at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])  # noqa: E731
    page.mouse.move(*at(x0, y0))
    page.mouse.down()
    for corner in (at(x1, y0), at(x1, y1), at(x0, y1), at(x0, y0 + 0.01)):
        page.mouse.move(*corner, steps=6)
    page.mouse.up()
    page.wait_for_function(
        "() => /\\d+ selected:/.test(document.querySelector('#atlas_selection').innerText)",
        timeout=20_000,
    )
    rows = page.evaluate(f"() => {ATLAS}.__atlas.sp.get('selectedPoints')")
    said = page.locator("#atlas_selection").inner_text()
    assert f"{len(rows)} selected:" in said, said
    return sorted(rows)


def test_a_lasso_selection_is_tagged_kept_after_a_reload_and_exported_exactly(
    page, browser, demo_url, published_run
):
    import csv
    import io
    import zipfile

    open_atlas(page)
    rows = lasso(page, 0.1, 0.1, 0.9, 0.6)
    assert 0 < len(rows) < len(published_run.images)  # a part of the map, not all of it
    page.fill("#atlas_tag textarea, #atlas_tag input", "lassoed")
    page.click("#atlas_tag_button")
    page.wait_for_function(
        "(n) => document.querySelector('#atlas_done').innerText.includes(`tagged ${n} of ${n}`)",
        arg=len(rows),
        timeout=20_000,
    )
    with visit(browser, demo_url) as again:  # a reload: the tag lives in SQLite
        open_atlas(again)
        again.click("#atlas_filters")
        again.click("#atlas_tag_filter input")
        again.get_by_role("option", name="lassoed").click()
        again.wait_for_function(
            f"(n) => {ATLAS}.dataset.shown === String(n)", arg=len(rows), timeout=20_000
        )
        again.locator("#atlas_export_kind").get_by_text("CSV", exact=True).click()
        again.click("#atlas_export_button")
        link = again.wait_for_selector("#atlas_export_file a", timeout=20_000)
        with again.expect_download() as got:
            link.click()
        with open(got.value.path(), encoding="utf-8") as fh:
            exported = list(csv.DictReader(io.StringIO(fh.read())))
        # and the images themselves, a folder per label
        again.locator("#atlas_export_kind").get_by_text("a tag's images (.zip)").click()
        again.fill("#atlas_export_tag textarea, #atlas_export_tag input", "lassoed")
        again.click("#atlas_export_button")
        link = again.wait_for_selector("#atlas_export_file a[href*='.zip']", timeout=20_000)
        with again.expect_download() as got:
            link.click()
        with zipfile.ZipFile(got.value.path()) as zf:
            folders = sorted(name.split("/")[0] for name in zf.namelist())
    lassoed = [r for r in exported if "lassoed" in r["tags"].split(";")]
    assert sorted(int(r["id"]) for r in lassoed) == rows
    assert folders == sorted(r["label"] for r in lassoed)  # a folder per (corrected) label


def test_zooming_into_the_atlas_draws_thumbnails_and_a_hostile_tag_stays_text(page, published_run):
    from lib.store.annotations import Annotations, keys_of

    # a tag a hostile user gave: shown as text in the legend, never run as HTML
    hostile = '<img src=x onerror="window.__pwned=1">'
    Annotations.of(published_run.results).tag(keys_of(published_run.images, [4]), hostile)
    state = open_atlas(page)
    page.click("#atlas_color input")
    page.get_by_role("option", name="tags", exact=True).click()
    page.wait_for_function(
        "(t) => document.querySelector('#atlas .atlas-legend').innerText.includes(t)",
        arg=hostile,
        timeout=20_000,
    )
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("#atlas .atlas-legend img").count() == 0
    # a few hundred points in view get their thumbnails at once: the example's 80 do
    assert state["layout"] == "umap" and state["thumbs"] == state["inView"] == "80"
    page.locator("#atlas_layout").get_by_text("By category", exact=True).click()
    page.wait_for_function(f"() => {ATLAS}.dataset.layout === 'category'", timeout=20_000)
    labels = page.locator("#atlas .atlas-labels span").all_inner_texts()
    categories = published_run.images["category"].value_counts()
    assert sorted(labels) == sorted(f"{c} ({n})" for c, n in categories.items())
    page.locator("#atlas_layout").get_by_text("Grid", exact=True).click()
    page.wait_for_function(f"() => {ATLAS}.dataset.layout === 'grid'", timeout=20_000)
    box = page.locator("#atlas .atlas-wrap").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(40):  # zoom in with the wheel until only some of the grid is in view
        page.mouse.wheel(0, -200)
        page.wait_for_timeout(300)
        if 0 < int(page.evaluate(f"() => {ATLAS}.dataset.inView")) < 30:
            break
    state = page.evaluate(f"() => ({{...{ATLAS}.dataset}})")
    assert 0 < int(state["inView"]) < 30 and state["thumbs"] == state["inView"]
    drawn = page.evaluate(
        f"() => [...{ATLAS}.__atlas.images.values()].filter(i => i.complete && i.naturalWidth)"
        ".length"
    )
    assert drawn >= int(state["inView"])  # fetched from /atlas/<run>/thumb/<row>, drawn
    # a click on a thumbnail's point selects that one image
    row, (x, y) = page.evaluate(
        f"() => {{ const a = {ATLAS}.__atlas, i = a.sp.get('pointsInView')[0];"
        " return [i, a.sp.getScreenPosition(i)]; }"
    )
    box = page.locator("#atlas .atlas-wrap").bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.wait_for_function(
        "() => /^1 selected:/.test(document.querySelector('#atlas_selection').innerText)",
        timeout=20_000,
    )
    assert f"#{row} " in page.locator("#atlas_selected .caption-label").first.inner_text()


def test_a_lasso_on_the_2d_view_tags_exactly_the_points_plotly_selected(page, published_run):
    from lib.store.annotations import Annotations

    page.locator("#view").get_by_text("2D", exact=True).click()
    page.wait_for_function(
        "() => document.querySelector('#overlap_plot .js-plotly-plot')?.layout?.uirevision"
        "?.endsWith('-2D')",
        timeout=20_000,
    )
    page.click("#overlap_plot .modebar-btn[data-title='Lasso Select']")
    box = page.locator("#overlap_plot .nsewdrag").first.bounding_box()
    at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])  # noqa: E731
    page.mouse.move(*at(0.05, 0.05))
    page.mouse.down()
    for corner in (at(0.6, 0.05), at(0.6, 0.95), at(0.05, 0.95), at(0.05, 0.06)):
        page.mouse.move(*corner, steps=8)
    page.mouse.up()
    page.wait_for_function(
        "() => document.querySelector('#lasso_note').innerText.includes('in the lasso')",
        timeout=20_000,
    )
    plotly_rows = sorted(
        page.evaluate(
            "() => document.querySelector('#overlap_plot .js-plotly-plot')._fullData.flatMap("
            "t => (t.selectedpoints || []).map(i => Number(t.customdata[i])))"
        )
    )
    assert 0 < len(plotly_rows) < len(published_run.images)
    assert page.locator("#lasso_note").inner_text().startswith(f"{len(plotly_rows)} images")
    page.locator("#tag_scope").get_by_text("the picked images", exact=True).click()
    page.fill("#tag_name textarea, #tag_name input", "2d lasso")
    page.click("#tag_button")
    notes_say(page, f"tagged {len(plotly_rows)} of {len(plotly_rows)} images")
    images = published_run.images
    assert Annotations.of(published_run.results).tagged("2d lasso") == {
        (images.at[r, "hash"], images.at[r, "relpath"]) for r in plotly_rows
    }


def test_neighbours_clicked_in_the_gallery_are_picked_and_tagged_together(page, published_run):
    from lib.store.annotations import Annotations

    find(page, 20)
    page.wait_for_function(
        "() => document.querySelectorAll('#neighbours .caption-label').length >= 8",
        timeout=20_000,
    )
    thumbs = page.locator("#neighbours .thumbnail-item")
    picked = []
    for i in (2, 5, 2, 6):  # the second click on the third neighbour takes it off again
        thumbs.nth(i).click()
        row = int(re.match(r"#(\d+)", gallery_captions(page)[i]).group(1))
        picked = sorted(set(picked) ^ {row})
        page.wait_for_function(
            "(n) => document.querySelector('#lasso_note').innerText.includes(`${n} picked`)",
            arg=len(picked),
            timeout=20_000,
        )
    assert len(picked) == 2
    page.locator("#tag_scope").get_by_text("the picked images", exact=True).click()
    page.fill("#tag_name textarea, #tag_name input", "gallery picks")
    page.click("#tag_button")
    notes_say(page, "tagged 2 of 2 images")
    images = published_run.images
    assert Annotations.of(published_run.results).tagged("gallery picks") == {
        (images.at[r, "hash"], images.at[r, "relpath"]) for r in picked
    }


def the_atlas_draws_them_all_and_a_hotspot_selects_its_cluster(large_page, large_results):
    from demo.atlas import atlas_level
    from lib.store.runs import RunStore

    state = open_atlas(large_page)
    assert state["points"] == state["shown"] == "200002"
    large_page.wait_for_selector("#atlas_hotspots .thumbnail-item", timeout=20_000)
    caption = large_page.locator("#atlas_hotspots .caption-label").first.inner_text()
    large_page.locator("#atlas_hotspots .thumbnail-item").first.click()
    large_page.wait_for_function(
        "() => /\\d+ selected:/.test(document.querySelector('#atlas_selection').innerText)",
        timeout=30_000,
    )
    run = RunStore(large_results).open()
    scores = run.scores[run.scores["level"] == atlas_level(run)]
    cluster = int(re.search(r"cluster (\d+)", caption).group(1))
    size = int((scores["cluster"] == cluster).sum())
    assert f"{size} images" in caption  # the list says how large the hotspot is
    said = large_page.locator("#atlas_selection").inner_text()
    assert said.startswith(f"{size} selected:"), said
    large_page.wait_for_function(  # the whole cluster is selected on the map too
        f"(n) => {ATLAS}.__atlas.sp.get('selectedPoints').length === n",
        arg=size,
        timeout=30_000,
    )
    large_page.fill("#atlas_hotspot_name textarea, #atlas_hotspot_name input", "the big blob")
    large_page.click("#atlas_hotspot_button")
    large_page.wait_for_function(
        "() => document.querySelector('#atlas_hotspots .caption-label')?.innerText"
        ".startsWith('the big blob · ')",
        timeout=20_000,
    )


# ---- the What if and Retrieval tabs -----------------------------------------------------


@pytest.fixture(scope="module")
def filter_gap_page(browser, filter_gap_store, tmp_path_factory):
    """The constructed filter-gap case (conftest): its what-if run, and a retrieval
    evaluation derived from it, in a copy of its store, served: one demo for both tabs."""
    from conftest import serve_demo

    from lib.jobs.retrieval import RetrievalJob, run_retrieval
    from lib.store.runs import RunStore

    results = tmp_path_factory.mktemp("filter_gap_ui") / "results"
    shutil.copytree(filter_gap_store.root, results, symlinks=True)
    run_retrieval(RetrievalJob(query="synthetic", gallery="real"), RunStore(results))
    with serve_demo(results) as url, visit(browser, url) as page:
        yield page


def test_the_whatif_tab_shows_curves_with_tooltips_the_best_change_and_pairs(filter_gap_page):
    page = filter_gap_page
    page.get_by_role("tab", name="What if").click()
    page.wait_for_selector(
        "#whatif_curves .js-plotly-plot .scatterlayer .points path", timeout=30_000
    )
    assert "blur sigma=1.5 closes" in page.inner_text("#whatif_note")
    assert "blur sigma=1.5" in page.inner_text("#whatif_best")
    # hover the stronger blur's marker, as a person reads a point: its tooltip
    blur_panel = page.query_selector_all("#whatif_curves .scatterlayer")[0]  # one per panel
    points = blur_panel.query_selector_all(".points path")
    box = points[-1].bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#whatif_curves .hovertext", timeout=5_000)
    tip = page.evaluate("() => document.querySelector('#whatif_curves .hovertext').textContent")
    assert "blur sigma=1.5" in tip and "gap closed" in tip
    # the classifier's view: the y axis says so
    page.get_by_text("classifier AUC", exact=True).click()
    page.wait_for_function(
        "() => document.querySelector('#whatif_curves').textContent.includes('0.5: indist')",
        timeout=20_000,
    )
    # before / after: the histogram-matched images next to the untransformed ones
    page.get_by_label("Before / after", exact=True).click()
    page.get_by_role("option", name="histmatch").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#whatif_pairs .caption-label')]"
        ".some(e => e.innerText.includes('histmatch share=1'))",
        timeout=20_000,
    )
    images = page.query_selector_all("#whatif_pairs img")
    assert len(images) == 6 and all(i.evaluate("e => e.naturalWidth") > 0 for i in images)


def test_the_retrieval_tab_shows_metrics_and_a_class_s_failed_queries(filter_gap_page):
    page = filter_gap_page
    page.get_by_role("tab", name="Retrieval").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#retrieval_queries .caption-label').length >= 6",
        timeout=30_000,
    )
    assert "300 synthetic queries against 300 real images" in page.inner_text("#retrieval_note")
    assert "c1" in page.inner_text("#retrieval_table") and "mAP@R" in page.inner_text("body")
    page.wait_for_selector("#retrieval_ranks .js-plotly-plot", timeout=20_000)
    # a class: only its queries, each failed, each neighbour marked wrong among the k = 5
    page.get_by_label("Of class", exact=True).click()
    page.get_by_role("option", name="7", exact=True).click()
    page.wait_for_function(
        "() => { const c = [...document.querySelectorAll('#retrieval_queries .caption-label')]"
        ".map(e => e.innerText); return c.length && c.filter(t => t.startsWith('query'))"
        ".every(t => t.includes('· 7 · failed')); }",
        timeout=20_000,
    )
    captions = [
        e.inner_text() for e in page.query_selector_all("#retrieval_queries .caption-label")
    ]
    assert all(c.startswith(("query #", "✗")) for c in captions)


# ---- an object run -----------------------------------------------------------------------


def test_an_object_is_clicked_in_its_class_and_shown_with_its_box_and_nearest_objects(
    browser, object_store
):
    """The object example's run: pick a class and a size, click a point where its tooltip
    shows; the object beside its image with the box, its nearest objects (each caption
    naming class and size); the gap report's class × level table."""
    from conftest import serve_demo

    from lib.store.runs import RunStore

    results, _ = object_store
    run = RunStore(results).open()
    objects = run.objects
    medium = objects[objects["size"] == "medium"]
    klass = medium["category"].value_counts().index[0]
    with serve_demo(results) as url, visit(browser, url) as page:
        page.get_by_label("Objects of class", exact=True).click()
        page.get_by_role("option", name=str(klass), exact=True).click()
        page.get_by_text("medium", exact=True).click()
        wanted = int((medium["category"] == klass).sum())
        drawn = (
            "([n, kind]) => { const p = document.querySelector('#overlap_plot .js-plotly-plot');"
            " return p && p._fullData && p._fullData.every(t => !kind || t.type === kind)"
            " && p._fullData.reduce((s, t) =>"
            " s + (t.customdata || []).length, 0) === n; }"
        )
        # the filtered objects first: a view switched while the filter's answer is on its
        # way was put back by that answer (seen in the full suite)
        page.wait_for_function(drawn, arg=[wanted, None], timeout=60_000)
        page.locator("#view").get_by_text("2D", exact=True).click()  # few points: flat
        page.wait_for_function(drawn, arg=[wanted, "scattergl"], timeout=30_000)
        page.wait_for_timeout(600)
        # where each of the few points is drawn; the pointer there shows its tooltip
        row = None
        for x, y, _ in plotted_points(page):
            row = tooltip_id(page, x, y)
            if row is not None:
                break
        assert row is not None, "no tooltip over any drawn object"
        assert objects.at[row, "category"] == klass and objects.at[row, "size"] == "medium"
        click_here(page, x, y)
        wait_selected(page, row)
        page.wait_for_function(
            "() => document.querySelectorAll('#neighbours .caption-label').length >= 8",
            timeout=20_000,
        )
        assert all(
            c.split(" · ")[2].split(" ")[0] in ("small", "medium", "large")
            for c in gallery_captions(page)
        )
        src = page.get_attribute("#selected_image img", "src")
        assert src.endswith(run.web(row).name)  # the object beside its image, box drawn
        page.get_by_role("tab", name="Gap report").click()
        page.wait_for_function(
            "() => document.querySelectorAll('#objects_to_blame .caption-label').length >= 10",
            timeout=30_000,
        )
        table = page.inner_text("#objects_gap")
        assert "the gap per class and per size" in table and "size medium" in table


def test_the_detections_tab_answers_whether_the_missed_objects_are_the_uncovered_ones(
    browser, object_store, tmp_path
):
    """The object example with a detector that finds exactly the covered real objects:
    the Detections tab says the missed are less often covered, tabulates each class and
    size, and shows the missed objects; picking "detected" shows those, and a reload
    comes back to the same answer."""
    from conftest import serve_demo
    from detection_scenes import covered_only

    results, result, _, covered, _ = covered_only(object_store, tmp_path)
    assert result.returncode == 0, result.stderr
    answer = "the missed are less often covered"
    with serve_demo(results) as url, visit(browser, url) as page:
        for attempt in range(2):  # as a person comes back to it: the same after a reload
            page.get_by_role("tab", name="Detections").click()
            page.wait_for_function(
                f"() => document.querySelector('#detections_coverage').innerText"
                f".includes('{answer}')",
                timeout=30_000,
            )
            assert "covered-only" in page.inner_text("#detections_note")
            assert "medium" in page.inner_text("#detections_sizes")
            page.wait_for_function(
                "() => document.querySelectorAll('#detections_objects .caption-label').length > 0",
                timeout=20_000,
            )
            captions = [
                e.inner_text()
                for e in page.query_selector_all("#detections_objects .caption-label")
            ]
            assert captions and all(" · missed · " in c for c in captions)
            if attempt == 0:
                page.reload()
        page.get_by_text("detected", exact=True).click()
        page.wait_for_function(
            "() => { const c = [...document.querySelectorAll('#detections_objects "
            ".caption-label')].map(e => e.innerText); return c.length === 24 && "
            "c.every(t => t.includes(' · detected · ')); }",
            timeout=20_000,
        )
        images = page.query_selector_all("#detections_objects img")
        assert images and all(i.evaluate("e => e.naturalWidth") > 0 for i in images)
    assert covered.sum() >= 24  # enough detected objects to fill the gallery


def test_the_does_it_matter_tab_names_the_predictor_and_plots_each_variant(
    browser, published_run, tmp_path
):
    """Five variant runs whose coverage falls as their detector's AP does (by
    construction), calibrated: the tab names the predictor, tabulates ρ per level, and
    plots a point per variant whose tooltip names it; another metric redraws the chart."""
    from conftest import serve_demo
    from detection_scenes import drop_variants, variant_runs

    from lib.jobs.calibration import CalibrationJob, run_calibration
    from lib.store.runs import RunStore

    results, ids = variant_runs(published_run, tmp_path, drop_variants())
    run_calibration(CalibrationJob(variants=ids, detector="det", resamples=200), RunStore(results))
    with serve_demo(results) as url, visit(browser, url) as page:
        page.get_by_role("tab", name="Does it matter?").click()
        page.wait_for_function(
            "() => document.querySelector('#calibration_note').innerText.includes('predicts AP')",
            timeout=30_000,
        )
        assert "+1.00" in page.inner_text("#calibration_table")  # coverage at every level
        page.wait_for_selector("#calibration_plot .scatterlayer .points path", timeout=20_000)
        points = page.query_selector_all("#calibration_plot .scatterlayer")[0].query_selector_all(
            ".points path"
        )
        assert len(points) == 5
        box = points[0].bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_selector("#calibration_plot .hovertext", timeout=5_000)
        tip = page.evaluate(
            "() => document.querySelector('#calibration_plot .hovertext').textContent"
        )
        assert any(i in tip for i in ids) and "coverage" in tip
        assert page.text_content("#calibration_plot .xtitle") == "coverage"
        page.get_by_role("radio", name="fd", exact=True).click()
        page.wait_for_function(
            "() => document.querySelector('#calibration_plot .xtitle')?.textContent === 'fd'",
            timeout=20_000,
        )


# ---- #27 hole 7: what comes from data is text, in Markdown and in the plot's legend -------

EVIL_PICTURE = "![p](http://evil.example/pixel.png)"
EVIL_LINK = '<a href="http://evil.example/">link</a>'


@pytest.fixture(scope="module")
def hostile_url(tmp_path_factory):
    """A run whose categories and file names carry Markdown and HTML, served."""
    import numpy as np
    from conftest import serve_demo
    from PIL import Image

    from lib.analysis.gap import GapParams
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    categories = [EVIL_PICTURE, EVIL_LINK, "<b>bold</b>"]
    for domain in ("real", "synthetic"):
        (root / domain).mkdir()
        rows = ["filename,category"]
        for i in range(12):
            name = f"a`b*{i}*`{domain}.png" if i == 0 else f"{domain}{i:02d}.png"
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / domain / name)
            rows.append(f'"{name}","{categories[i % 3].replace(chr(34), chr(34) * 2)}"')
        (root / domain / "metadata.csv").write_text("\n".join(rows) + "\n")
    config = RunConfig.of(
        real=root / "real",
        synthetic=root / "synthetic",
        k=4,
        projections=("pca",),
        plots=False,
        gap=GapParams(k=3, resamples=20, min_cluster_size=3),
    )
    published = run(config, RunStore(root / "results"))
    from lib.store.annotations import Annotations, keys_of

    Annotations.of(root / "results").tag(keys_of(published.images, [0]), EVIL_PICTURE)
    with serve_demo(root / "results") as url:
        yield url, published


def test_27_markup_in_categories_file_names_and_tags_is_shown_as_text(browser, hostile_url):
    url, published = hostile_url
    asked = []
    with visit(browser, url) as page:
        page.on("request", lambda r: asked.append(r.url))
        find(page, 0)  # a.png's row: a backtick name, a picture category and tag
        info = page.locator("#selection_info").inner_text()
        assert f"Selected #0 real · {EVIL_PICTURE}" in info
        assert published.images.at[0, "relpath"] in info  # the backticks and stars kept
        notes_say(page, f"tags: {EVIL_PICTURE}")
        page.locator("#overlap_color").get_by_text("category", exact=True).click()
        page.wait_for_function(
            "(t) => [...document.querySelectorAll('#overlap_plot .legendtext')]"
            ".some(e => e.textContent === t)",
            arg="<b>bold</b>",
            timeout=20_000,
        )
        legend = page.locator("#overlap_plot .legendtext").all_text_contents()
        assert EVIL_LINK in legend and EVIL_PICTURE in legend
        page.locator("#overlap_color").get_by_text("tags", exact=True).click()
        page.wait_for_function(
            "(t) => [...document.querySelectorAll('#overlap_plot .legendtext')]"
            ".some(e => e.textContent === t)",
            arg=EVIL_PICTURE,
            timeout=20_000,
        )
        for where in ("#selection_info", "#image_notes", "#overlap_plot .legend", "#banner"):
            assert page.locator(f"{where} a, {where} img, {where} b").count() == 0, where
        assert page.locator('a[href*="evil.example"], img[src*="evil.example"]').count() == 0
        page.wait_for_timeout(500)
    assert not [u for u in asked if "evil.example" in u]


# ---- #29: the Compare tab ------------------------------------------------------------------


def test_the_compare_tab_shows_both_versions_the_change_the_trend_and_their_images(
    browser, example_dir, tmp_path
):
    """Runs of the example's two generator versions (40 + 40 each, the same real files),
    compared: the tab says what changed in words, tabulates both versions and the change
    per metric with a verdict, plots each run's FD with its interval (the tooltip names
    the run), and shows each version's most realistic images; another level redraws the
    table, and a reload shows it all again."""
    from conftest import N_PER_DOMAIN, serve_demo

    from lib.inputs.example import build_example
    from lib.jobs.compare import CompareJob, run_compare
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    v2 = build_example(tmp_path / "v2", N_PER_DOMAIN, N_PER_DOMAIN, version=2).root
    store = RunStore(tmp_path / "results")
    ids = []
    for root in (example_dir, v2):
        config = RunConfig.of(
            real=root / "real",
            synthetic=root / "synthetic",
            projections=("pca",),
            plots=False,
            attribution=0,
            atlas_level="none",
        )
        ids.append(run(config, store).id)
    compared = run_compare(CompareJob(resamples=50), ids, store)
    levels = compared.compare["levels"]
    with serve_demo(store.root) as url, visit(browser, url) as page:
        for attempt in range(2):
            page.get_by_role("tab", name="Compare").click()
            page.wait_for_function(
                "() => document.querySelector('#compare_note').innerText.includes('FD ')",
                timeout=30_000,
            )
            assert all(i in page.inner_text("#compare_note") for i in ids)
            table = page.inner_text("#compare_table")
            assert "coverage" in table and "AUC" in table
            assert any(v in table for v in ("closer", "farther", "within noise"))
            page.wait_for_selector("#compare_trend .scatterlayer .points path", timeout=20_000)
            points = page.query_selector_all("#compare_trend .scatterlayer .points path")
            assert len(points) == 2
            points[1].scroll_into_view_if_needed()  # below the tables: where a person scrolls
            box = points[1].bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.wait_for_selector("#compare_trend .hovertext", timeout=5_000)
            tip = page.evaluate(
                "() => document.querySelector('#compare_trend .hovertext').textContent"
            )
            assert ids[1] in tip
            page.wait_for_function(
                "() => document.querySelectorAll('#compare_next_nearest img').length > 0",
                timeout=20_000,
            )
            images = page.query_selector_all("#compare_next_nearest img")
            assert all(i.evaluate("e => e.naturalWidth") > 0 for i in images)
            if attempt == 0:
                page.reload()
                page.wait_for_selector("#overlap_plot .js-plotly-plot canvas", timeout=60_000)
        before = page.inner_text("#compare_table")
        page.get_by_label("Level", exact=True).last.click()
        page.get_by_role("option", name=levels[-1], exact=True).click()
        page.wait_for_function(
            "before => document.querySelector('#compare_table').innerText !== before",
            arg=before,
            timeout=20_000,
        )


def test_the_gap_report_s_leaks_are_flagged_for_removal_kept_after_a_reload_and_exported(
    browser, planted_run
):
    """The run with four real digits planted among the synthetic ones: the Gap report
    counts them, shows each beside the real digit it copies, flags the four copies for
    removal with one click (never the real originals), still shows them flagged after a
    reload, and the downloaded CSV lists them."""
    import csv
    import io

    from conftest import serve_demo

    from lib.store.annotations import REMOVE, Annotations

    published, copies = planted_run
    with serve_demo(published.results) as url, visit(browser, url) as page:
        for attempt in range(2):
            page.get_by_role("tab", name="Gap report").click()
            page.wait_for_function(
                "() => document.querySelector('#duplicates_note').innerText"
                ".includes('4 synthetic images copy a real one')",
                timeout=30_000,
            )
            gallery = page.locator("#duplicates_gallery")
            gallery.scroll_into_view_if_needed()
            page.wait_for_function(
                "() => document.querySelectorAll('#duplicates_gallery .caption-label').length >= 8",
                timeout=20_000,
            )
            captions = [c.inner_text() for c in gallery.locator(".caption-label").all()]
            assert sum("copy (r = " in c for c in captions) == 4
            assert sum(c.startswith("↳ copies") and " real " in c for c in captions) >= 4
            images = gallery.locator("img").all()
            assert all(i.evaluate("e => e.naturalWidth") > 0 for i in images)
            if attempt == 0:
                page.click("#duplicates_remove_button")
                page.wait_for_function(
                    "() => document.querySelector('#duplicates_done').innerText"
                    ".includes('tagged 4 of 4 images')",
                    timeout=20_000,
                )
                page.reload()
        assert sum("tags: remove" in c for c in captions) == 4  # after the reload
        page.click("#duplicates_export")
        link = page.wait_for_selector("#duplicates_file a", timeout=20_000)
        with page.expect_download() as got:
            link.click()
        with open(got.value.path(), encoding="utf-8") as fh:
            rows = list(csv.DictReader(io.StringIO(fh.read())))
    leaked = {
        r["copy_file"].split("/")[-1] for r in rows if r["kind"] == "leak" and r["copy"] == "yes"
    }
    assert leaked == {n for n in copies if n.startswith("copy_")}
    removed = {p for _, p in Annotations.of(published.results).tagged(REMOVE)}
    assert {p.split("/")[-1] for p in removed} == leaked  # the copies only, not the originals
