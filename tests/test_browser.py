"""A real browser: headless Debian Chromium clicks a point on the 3D plot.

A plotly 3D click registers only when the pointer is within 5 px of a point while the
button is down, so the test first moves the mouse until plotly's own picking reports a
point that close (read from the scene's pick state), then presses and releases there.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PICK_DISTANCE = """() => {
  const gd = document.querySelector('#overlap_plot .js-plotly-plot');
  const scene = gd && gd._fullLayout.scene && gd._fullLayout.scene._scene;
  const sel = scene && scene.glplot.selection;
  return sel ? sel.distance : null;
}"""


@pytest.fixture(scope="module")
def page(demo_url):
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
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(demo_url)
        page.wait_for_selector("#overlap_plot .js-plotly-plot canvas", timeout=60_000)
        page.wait_for_timeout(1500)
        yield page
        browser.close()


def find_point(page) -> tuple[float, float]:
    """Screen coordinates within 5 px of some plotted point."""
    box = page.query_selector("#overlap_plot .js-plotly-plot").bounding_box()
    near = None
    for fy in (0.5, 0.4, 0.6, 0.3, 0.7):
        for fx in (i / 30 for i in range(5, 26)):
            x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
            page.mouse.move(x, y)
            page.wait_for_timeout(40)
            d = page.evaluate(PICK_DISTANCE)
            if d is not None and d < 30:
                near = (d, x, y)
                break
        if near:
            break
    assert near, "no plotted point found under the pointer"
    best = near
    for dx in range(-12, 13, 2):
        for dy in range(-12, 13, 2):
            page.mouse.move(near[1] + dx, near[2] + dy)
            page.wait_for_timeout(30)
            d = page.evaluate(PICK_DISTANCE)
            if d is not None and d < best[0]:
                best = (d, near[1] + dx, near[2] + dy)
    assert best[0] < 5, best
    return best[1], best[2]


def gallery_captions(page) -> list[str]:
    return [
        el.inner_text().strip()
        for el in page.query_selector_all("#neighbours .caption-label")
        if el.inner_text().strip()
    ]


def test_clicking_a_point_shows_its_neighbours(page):
    assert gallery_captions(page) == []
    x, y = find_point(page)
    page.mouse.move(x, y)
    page.wait_for_timeout(100)
    page.mouse.down()
    page.wait_for_timeout(150)
    page.mouse.up()
    page.wait_for_function(
        "() => document.querySelectorAll('#neighbours .caption-label').length >= 8",
        timeout=20_000,
    )
    captions = gallery_captions(page)
    assert len(captions) == 8 and all("d=" in c for c in captions)
    selected = page.inner_text("#selected_image")
    assert "#" in selected
    # the Python callback received the clicked point: the info line names it
    assert "Selected #" in page.inner_text("body")


def test_changing_level_keeps_clicking_working(page):
    first = gallery_captions(page)
    page.click("#banner")  # somewhere neutral: a click on the plot could pick a point
    page.get_by_label("Level", exact=True).click()
    page.get_by_role("option", name="c5").click()
    page.wait_for_timeout(1500)
    x, y = find_point(page)
    page.mouse.move(x, y)
    page.mouse.down()
    page.wait_for_timeout(150)
    page.mouse.up()
    page.wait_for_function(
        "(old) => { const c = [...document.querySelectorAll('#neighbours .caption-label')]"
        ".map(e => e.innerText.trim()).join('|'); return c && c !== old; }",
        arg="|".join(first),
        timeout=20_000,
    )
    assert "level c5" in page.inner_text("body")


def test_gap_report_tab_shows_the_images_to_blame(page):
    page.get_by_role("tab", name="Gap report").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#least_realistic .caption-label').length >= 4",
        timeout=20_000,
    )
    text = page.inner_text("body")
    assert "Largest gap at" in text
    assert "realism" in page.inner_text("#least_realistic")


POINT_2D = """(skip) => {
  const gd = document.querySelector('#overlap_plot .js-plotly-plot');
  const fl = gd && gd._fullLayout;
  if (!fl || !fl.xaxis || !gd._fullData.length || gd._fullData[0].type !== 'scattergl') return null;
  const t = gd._fullData[0], r = gd.getBoundingClientRect();
  const i = t.customdata.findIndex((id) => id !== skip);
  return [r.left + fl._size.l + fl.xaxis.l2p(t.x[i]), r.top + fl._size.t + fl.yaxis.l2p(t.y[i]),
          t.customdata[i]];
}"""


def test_the_tsne_projection_is_2d_and_clickable(page):
    import re

    page.get_by_role("tab", name="Overlap").click()
    page.get_by_text("t-SNE", exact=True).click()
    page.wait_for_function(f"() => ({POINT_2D})(-1) !== null", timeout=20_000)
    page.wait_for_timeout(500)
    assert "both domains together" in page.inner_text("#overlap_plot")
    shown = re.search(r"Selected #(\d+)", page.inner_text("body"))
    x, y, row = page.evaluate(POINT_2D, int(shown.group(1)) if shown else -1)
    page.mouse.click(x, y)
    page.wait_for_function(
        "(row) => document.body.innerText.includes(`Selected #${row} `)", arg=row, timeout=20_000
    )
    assert len(gallery_captions(page)) == 8
