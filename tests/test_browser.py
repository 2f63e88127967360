"""A real browser: headless Debian Chromium used as a person uses the demo.

Points are found the way a person finds them: move the mouse over the plot until a
tooltip shows, read the image's #id from it, press and release there, and check that the
selected image is that one.
"""

from __future__ import annotations

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
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, demo_url):
    """A fresh page for each test, as a new visitor sees the demo: no test depends on
    what another clicked."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(demo_url)
    page.wait_for_selector("#overlap_plot .js-plotly-plot canvas", timeout=60_000)
    page.wait_for_timeout(1500)
    yield page
    page.close()


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


def test_clicking_where_a_tooltip_shows_selects_that_image(page):
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
        assert f"#{row} " in page.inner_text("#selected_image")


def select_some_point(page) -> int:
    ((x, y, row),) = points_with_tooltips(page)
    click_here(page, x, y)
    wait_selected(page, row)
    return row


def test_changing_level_keeps_clicking_working(page):
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


def test_a_drag_rotates_and_selects_nothing(page):
    shown = select_some_point(page)
    ((x, y, row),) = points_with_tooltips(page, skip=(shown,))
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 40, y + 25, steps=5)
    page.mouse.up()
    page.wait_for_timeout(1500)
    assert f"Selected #{shown} " in page.inner_text("body")  # unchanged


def test_gap_report_tab_shows_the_images_to_blame(page):
    page.get_by_role("tab", name="Gap report").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#least_realistic .caption-label').length >= 4",
        timeout=20_000,
    )
    text = page.inner_text("body")
    assert "Largest gap at" in text
    assert "realism" in page.inner_text("#least_realistic")


def test_the_tsne_projection_is_2d_and_clickable(page):
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
