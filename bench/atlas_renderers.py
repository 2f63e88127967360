"""Which WebGL scatterplot draws the atlas: regl-scatterplot, plotly's scattergl or deck.gl,
measured side by side in the headless Chromium the browser tests use (software WebGL,
SwiftShader, `--disable-gpu`).

For each renderer and size: the same seeded points (24 blobs, one colour per blob), the
time from creating the plot to its first frame on screen, the points it holds, a lasso
drawn with the mouse as a person would (how many points it selected, and how long from
releasing the button to the selection event), and the page's JS heap. deck.gl has no
lasso of its own (a person would need nebula.gl's editable layers on top).

The bundles: regl-scatterplot's is the demo's own (demo/assets/atlas); plotly's ships in
the plotly package; deck.gl's standalone bundle is installed from npm into .cache/ on
first use (skipped, and said so, without npm).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DECK_VERSION = "9.2.11"
WIDTH, HEIGHT = 900, 700
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

POINTS_JS = r"""
// 24 Gaussian blobs, seeded (mulberry32): the same points for every renderer
function makePoints(n) {
  let s = 12345;
  const rand = () => { s |= 0; s = s + 0x6D2B79F5 | 0; let t = Math.imul(s ^ s >>> 15, 1 | s);
    t = t + Math.imul(t ^ t >>> 7, 61 | t) ^ t; return ((t ^ t >>> 14) >>> 0) / 4294967296; };
  const cx = [], cy = [];
  for (let c = 0; c < 24; c++) { cx.push(rand() * 1.6 - 0.8); cy.push(rand() * 1.6 - 0.8); }
  const x = new Float32Array(n), y = new Float32Array(n), cat = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const c = i % 24, r = Math.sqrt(-2 * Math.log(rand() + 1e-12)) * 0.05, a = 2 * Math.PI * rand();
    x[i] = cx[c] + r * Math.cos(a); y[i] = cy[c] + r * Math.sin(a); cat[i] = c;
  }
  return {x, y, cat};
}
const PALETTE = ['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b','#e377c2',
  '#7f7f7f','#bcbd22','#17becf','#393b79','#637939','#8c6d31','#843c39','#7b4173','#3182bd',
  '#e6550d','#31a354','#756bb1','#636363','#9c9ede','#cedb9c','#e7cb94','#e7969c'];
const N = Number(new URLSearchParams(location.search).get('n'));
const nextFrames = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
window.addEventListener('mouseup', () => { window.__up = performance.now(); }, true);
const selected = (n) => { window.__selected = {points: n, ms: performance.now() - window.__up}; };
"""

PAGES = {
    "regl-scatterplot": (
        "regl-scatterplot.min.js",
        r"""
(async () => {
  const {x, y, cat} = makePoints(N);
  const canvas = document.getElementById('plot');
  const t0 = performance.now();
  const sp = createScatterplot({canvas, width: WIDTH, height: HEIGHT, pointSize: 2,
    pointColor: PALETTE, colorBy: 'valueA', lassoOnLongPress: false});
  sp.subscribe('select', ({points}) => selected(points.length));
  await sp.draw({x, y, valueA: cat});
  await nextFrames();
  window.__result = {render_ms: performance.now() - t0, points: sp.get('points').length,
                     lasso: 'shift'};
})();
""",
    ),
    "plotly scattergl": (
        "plotly.min.js",
        r"""
(async () => {
  const {x, y, cat} = makePoints(N);
  const div = document.getElementById('plot');
  const t0 = performance.now();
  const colors = Array.from(cat, c => PALETTE[c]);
  await Plotly.newPlot(div, [{type: 'scattergl', mode: 'markers', x, y,
      marker: {size: 2, color: colors}, hoverinfo: 'none'}],
    {width: WIDTH, height: HEIGHT, dragmode: 'lasso', margin: {l: 0, r: 0, t: 0, b: 0},
     xaxis: {visible: false, range: [-1, 1]}, yaxis: {visible: false, range: [-1, 1]}},
    {displayModeBar: false});
  div.on('plotly_selected', ev => selected(ev ? ev.points.length : 0));
  await nextFrames();
  window.__result = {render_ms: performance.now() - t0, points: div.data[0].x.length,
                     lasso: 'drag'};
})();
""",
    ),
    "deck.gl": (
        "deck.gl.min.js",
        r"""
(async () => {
  const {x, y, cat} = makePoints(N);
  const xy = new Float32Array(2 * N), rgba = new Uint8Array(4 * N);
  const rgb = PALETTE.map(h => [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16)));
  for (let i = 0; i < N; i++) { xy[2*i] = x[i] * 300; xy[2*i+1] = y[i] * 300;
    rgba.set([...rgb[cat[i]], 255], 4 * i); }
  const t0 = performance.now();
  let drawn = false;
  const layer = new deck.ScatterplotLayer({id: 'points', pickable: true,
    data: {length: N, attributes: {getPosition: {value: xy, size: 2},
                                   getFillColor: {value: rgba, size: 4}}},
    radiusUnits: 'pixels', getRadius: 1});
  new deck.Deck({parent: document.getElementById('plot'), width: WIDTH, height: HEIGHT,
    views: new deck.OrthographicView(), initialViewState: {target: [0, 0, 0], zoom: 0},
    controller: true, layers: [layer],
    onAfterRender: () => { if (drawn) return; drawn = true;
      nextFrames().then(() => { window.__result = {render_ms: performance.now() - t0,
        points: N, lasso: null}; }); }});
})();
""",
    ),
}


def _page(renderer: str) -> str:
    script, body = PAGES[renderer]
    tag = "canvas" if renderer == "regl-scatterplot" else "div"  # regl draws on a canvas
    return (
        f"<!doctype html><html><body style='margin:0'><{tag} id='plot' style='width:{WIDTH}px;"
        f"height:{HEIGHT}px;position:relative'></{tag}><script src='{script}'></script>"
        f"<script>const WIDTH={WIDTH}, HEIGHT={HEIGHT};{POINTS_JS}{body}</script></body></html>"
    )


def _deck_bundle(cache: Path) -> Path | None:
    """deck.gl's standalone bundle, installed from npm once (None without npm)."""
    bundle = cache / "node_modules" / "deck.gl" / "dist.min.js"
    if not bundle.exists() and shutil.which("npm"):
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(cache),
                "--no-audit",
                "--no-fund",
                f"deck.gl@{DECK_VERSION}",
            ],
            check=False,
            capture_output=True,
            timeout=600,
        )
    return bundle if bundle.exists() else None


def _site(folder: Path, renderers) -> dict[str, str]:
    """Write the pages and the bundles of `renderers` into `folder`; those available."""
    import plotly

    bundles = {
        "regl-scatterplot": lambda: ROOT / "demo/assets/atlas/regl-scatterplot.min.js",
        "plotly scattergl": lambda: Path(plotly.__file__).parent / "package_data/plotly.min.js",
        "deck.gl": lambda: _deck_bundle(ROOT / ".cache" / "bench-npm"),
    }
    bundles = {r: bundles[r]() for r in renderers}
    pages = {}
    for i, (renderer, bundle) in enumerate(bundles.items()):
        if bundle is None:
            continue
        shutil.copyfile(bundle, folder / PAGES[renderer][0])
        (folder / f"{i}.html").write_text(_page(renderer))
        pages[renderer] = f"{i}.html"
    return pages


@contextlib.contextmanager
def _serving(folder: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # the bench's output is its JSON
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _lasso(page, how: str) -> dict | None:
    """Draw a lasso around the middle ninth of the plot with the mouse; `gesture_ms`: from
    pressing the button to the selection event (a renderer that works on every mouse move
    makes the person wait while drawing)."""
    if how is None:
        return None
    started = time.perf_counter()
    x0, y0, x1, y1 = WIDTH / 3, HEIGHT / 3, 2 * WIDTH / 3, 2 * HEIGHT / 3
    page.mouse.move(x0, y0)
    if how == "shift":
        page.keyboard.down("Shift")
    page.mouse.down()
    for px, py in [(x1, y0), (x1, y1), (x0, y1), (x0, y0 + 5)]:
        page.mouse.move(px, py, steps=8)
    page.mouse.up()
    if how == "shift":
        page.keyboard.up("Shift")
    page.wait_for_function("window.__selected !== undefined", timeout=300_000)
    result = page.evaluate("window.__selected")
    return {
        "points": result["points"],
        "after_release_ms": round(result["ms"]),
        "gesture_ms": round(1000 * (time.perf_counter() - started)),
    }


def measure(sizes=(100_000, 1_000_000), renderers=tuple(PAGES)) -> dict:
    import tempfile

    from playwright.sync_api import sync_playwright

    out = {"chromium": "/usr/bin/chromium", "flags": CHROMIUM_ARGS, "renderers": {}}
    with tempfile.TemporaryDirectory() as tmp, _serving(Path(tmp)) as url:
        pages = _site(Path(tmp), renderers)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
            )
            for renderer in renderers:
                rows = out["renderers"][renderer] = {}
                if renderer not in pages:
                    rows["skipped"] = "bundle unavailable (no npm)"
                    continue
                for n in sizes:
                    page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
                    try:
                        page.goto(f"{url}/{pages[renderer]}?n={n}")
                        page.wait_for_function("window.__result !== undefined", timeout=300_000)
                        row = page.evaluate("window.__result")
                        row["since_navigation_ms"] = round(page.evaluate("performance.now()"))
                        row["lasso_result"] = _lasso(page, row.pop("lasso"))
                        row["js_heap_mib"] = round(
                            page.evaluate("performance.memory.usedJSHeapSize") / 2**20, 1
                        )
                    except Exception as exc:  # a renderer that fails at a size is a finding
                        row = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                    finally:
                        page.close()
                    row["render_ms"] = round(row["render_ms"]) if "render_ms" in row else None
                    rows[str(n)] = row
            browser.close()
    return out


if __name__ == "__main__":
    import sys

    sizes = tuple(int(s) for s in sys.argv[1:]) or (100_000, 1_000_000)
    print(json.dumps(measure(sizes), indent=2))
