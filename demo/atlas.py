"""The atlas tab: every image of a run on one WebGL map, thumbnails on the points when
zoomed in, coloured and filtered by what the run and its users know; lasso a region (or
pick a hotspot) and tag what you selected.

The map is regl-scatterplot (demo/assets/atlas, bundled from npm), chosen by measurement
over plotly's scattergl and deck.gl (README, The atlas; bench/atlas_renderers.py). It runs
in a `gr.HTML` whose value is a small JSON view (layout, colours, filter, a selection to
show); the points themselves, which never change for a run, come once per layout from
`/atlas/<run>/points.bin` (float32 x then y), thumbnails from `/atlas/<run>/thumb/<row>`:
routes over the published runs only, mounted by demo.serve. A lasso (or a click) comes
back as the `lasso_select` event with the selected rows.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import gradio as gr
import numpy as np

from demo import markup
from demo.curation import Editing, change_tags, downloads, who_and_token
from demo.runs import (
    ASSETS,
    PathGallery,
    Tab,
    caption,
    image_column,
    level_scores,
    open_id,
    open_run,
    picture,
    projection_view,
    row_labels,
    row_tags,
    tag_names,
    with_tags,
)
from lib.analysis import atlas as layouts
from lib.inputs.images import METADATA_PREFIX
from lib.runtime.errors import GapscopeError
from lib.store.annotations import REMOVE, Annotations
from lib.store.runs import Run, RunStore

SCRIPT = ASSETS / "atlas" / "regl-scatterplot.min.js"
LAYOUT_LABELS = {"UMAP map": "umap", "Grid": "grid", "By category": "category"}
COLOR_BY = ("domain", "category", "cluster", "realism", "p(synthetic)", "tags")
SCORES = {"realism": "realism", "p(synthetic)": "p_synthetic"}
# realism ≥ 1: inside the real images' manifold; the scale ends at 2 (as the overlap's)
SCORE_TOP = {"realism": 2.0, "p(synthetic)": 1.0}
DOMAIN_COLORS = {"real": "#1f77b4", "synthetic": "#ff7f0e"}
PALETTE = (
    "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #bcbd22 #17becf #393b79 "
    "#637939 #8c6d31 #843c39 #7b4173 #3182bd #e6550d #31a354 #756bb1 #9c9ede"
).split()
OTHER, NONE = "#b0b0b0", "#d9d9d9"  # "other" categories; no value (untagged, n/a)
BINS = ("#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#fde725")
REALISM_MAX = 3.0  # the realism sliders' end (the score is unbounded above)
SHOWN_SELECTED = 48  # thumbnails of a selection in its gallery
HOTSPOT_THUMBS = 4  # thumbnails per hotspot

JS = r"""
const wrap = element.querySelector('.atlas-wrap');
const canvas = wrap.querySelector('canvas.atlas-points');
const thumbs = wrap.querySelector('canvas.atlas-thumbs');
const tip = wrap.querySelector('.atlas-tip');
const state = wrap.__atlas = {sp: null, url: null, x: null, y: null, images: new Map(),
                                 codes: null, view: null, captions: null};
const fromB64 = (s) => Uint8Array.from(atob(s), c => c.charCodeAt(0));
const THUMBS_AT = 400, THUMB_PX = 56;

function drawLabels() {
  const v = state.view, sp = state.sp, box = wrap.querySelector('.atlas-labels');
  box.innerHTML = '';
  if (!sp || !v || !v.labels.length) return;
  for (const [name, count, row] of v.labels) {
    const at = sp.getScreenPosition(row);
    if (!at) continue;
    const span = document.createElement('span');
    span.textContent = `${name} (${count})`;
    span.style.left = `${at[0]}px`; span.style.top = `${at[1] - 18}px`;
    box.appendChild(span);
  }
}

function drawThumbs() {
  drawLabels();
  const v = state.view, sp = state.sp;
  const ctx = thumbs.getContext('2d'), r = window.devicePixelRatio || 1;
  thumbs.width = wrap.clientWidth * r; thumbs.height = wrap.clientHeight * r;
  ctx.setTransform(r, 0, 0, r, 0, 0);
  ctx.clearRect(0, 0, thumbs.width, thumbs.height);
  if (!sp || !v) return;
  const filtered = sp.get('isPointsFiltered') ? new Set(sp.get('filteredPoints')) : null;
  const shown = sp.get('pointsInView').filter(i => !filtered || filtered.has(i));
  wrap.dataset.inView = shown.length;
  if (shown.length > THUMBS_AT) { wrap.dataset.thumbs = 0; return; }
  wrap.dataset.thumbs = shown.length;
  for (const i of shown) {
    const at = sp.getScreenPosition(i);
    if (!at) continue;
    let img = state.images.get(i);
    if (!img) {
      img = new Image(); img.onload = () => requestAnimationFrame(drawThumbs);
      img.src = `/atlas/${v.run}/thumb/${i}`; state.images.set(i, img);
    }
    if (!img.complete || !img.naturalWidth) continue;
    const s = THUMB_PX, k = s / Math.max(img.naturalWidth, img.naturalHeight);
    const w = img.naturalWidth * k, h = img.naturalHeight * k;
    ctx.drawImage(img, at[0] - w / 2, at[1] - h / 2, w, h);
    ctx.strokeStyle = v.palette[state.codes[i]] || '#888'; ctx.lineWidth = 2;
    ctx.strokeRect(at[0] - w / 2, at[1] - h / 2, w, h);
  }
}

function ensurePlot() {
  if (state.sp) return state.sp;
  const sp = state.sp = createScatterplot({canvas, width: 'auto', height: 'auto',
    pointSize: 3, pointSizeSelected: 2, pointOutlineWidth: 2, lassoOnLongPress: false,
    lassoInitiator: false, deselectOnEscape: true, opacityInactiveMax: 0.25,
    backgroundColor: '#ffffff', colorBy: 'valueA'});
  sp.subscribe('select', ({points}) => {
    wrap.dataset.selected = points.length;
    trigger('lasso_select', {rows: Array.from(points)});
  });
  sp.subscribe('deselect', () => {
    wrap.dataset.selected = 0; trigger('lasso_select', {rows: []});
  });
  let queued = false;
  sp.subscribe('view', () => {
    if (queued) return; queued = true;
    requestAnimationFrame(() => { queued = false; drawThumbs(); });
  });
  sp.subscribe('pointOver', (i) => {
    const at = sp.getScreenPosition(i), v = state.view;
    if (!at || !v) return;
    tip.textContent = `#${i} · ${v.legend[state.codes[i]] ? v.legend[state.codes[i]][0] : ''}`;
    tip.style.left = `${at[0] + 10}px`; tip.style.top = `${at[1] + 10}px`;
    tip.style.display = 'block'; wrap.dataset.hovered = i;
  });
  sp.subscribe('pointOut', () => { tip.style.display = 'none'; delete wrap.dataset.hovered; });
  for (const b of element.querySelectorAll('.atlas-mode button')) {
    b.addEventListener('click', () => {
      sp.set({mouseMode: b.dataset.mode});
      for (const o of element.querySelectorAll('.atlas-mode button'))
        o.classList.toggle('active', o === b);
    });
  }
  new ResizeObserver(() => requestAnimationFrame(drawThumbs)).observe(wrap);
  return sp;
}

async function update() {
  const v = props.value ? JSON.parse(props.value) : null;
  if (!v || !v.n || typeof createScatterplot !== 'function') return;
  const sp = ensurePlot();
  const moved = v.points_url !== state.url;
  if (moved) {
    const buf = await (await fetch(v.points_url)).arrayBuffer();
    const xy = new Float32Array(buf);
    state.x = xy.subarray(0, v.n); state.y = xy.subarray(v.n); state.url = v.points_url;
    state.images = new Map();
  }
  state.view = v;
  state.codes = fromB64(v.codes);
  const filter = v.filter ? fromB64(v.filter) : null;
  const keep = [];
  if (filter) for (let i = 0; i < v.n; i++) if (filter[i >> 3] & (1 << (i & 7))) keep.push(i);
  await sp.set({pointColor: v.palette, pointColorActive: '#000000', colorBy: 'valueA'});
  await sp.draw({x: state.x, y: state.y, valueA: Float32Array.from(state.codes)},
                {transition: !moved && v.animate, transitionDuration: 500,
                 filter: filter ? keep : undefined, preventFilterReset: false});
  if (!filter) await sp.unfilter({preventEvent: true});
  if (v.select) {
    sp.select(v.select, {preventEvent: true});
    wrap.dataset.selected = v.select.length;
    if (v.select.length) await sp.zoomToPoints(v.select, {padding: 0.4, transition: true});
  } else if (moved) {
    sp.zoomToOrigin();
  }
  // built as elements, never as HTML: names are users' tags and their data's values
  const legend = wrap.querySelector('.atlas-legend');
  legend.replaceChildren(...v.legend.filter(e => e[2] > 0).map(([name, color, count]) => {
    const row = document.createElement('span'), swatch = document.createElement('i');
    const small = document.createElement('small');
    swatch.style.background = color; small.textContent = ` ${count}`;
    row.append(swatch, document.createTextNode(name), small);
    return row;
  }));
  wrap.dataset.layout = v.layout; wrap.dataset.points = v.n;
  wrap.dataset.shown = filter ? keep.length : v.n; wrap.dataset.ready = v.nonce;
  drawThumbs();
}
watch('value', update);
update();
"""

TEMPLATE = """
<div class="atlas-wrap" data-ready="0">
  <canvas class="atlas-points"></canvas>
  <canvas class="atlas-thumbs"></canvas>
  <div class="atlas-labels"></div>
  <div class="atlas-mode"><button data-mode="panZoom" class="active">Pan</button><button
    data-mode="lasso" class="atlas-lasso">Lasso</button></div>
  <div class="atlas-tip"></div>
  <div class="atlas-legend"></div>
</div>
"""

CSS = """
.atlas-wrap {position: relative; height: 640px; border: 1px solid #ddd; border-radius: 6px;}
.atlas-points {width: 100%; height: 100%; display: block;}
.atlas-thumbs {position: absolute; inset: 0; width: 100%; height: 100%; pointer-events: none;}
.atlas-mode {position: absolute; top: 8px; left: 8px;}
.atlas-mode button {padding: 2px 10px; border: 1px solid #999; background: #fff; cursor: pointer;}
.atlas-mode button.active {background: #333; color: #fff;}
.atlas-tip {position: absolute; display: none; background: #222; color: #fff; padding: 2px 6px;
  font-size: 12px; border-radius: 3px; pointer-events: none;}
.atlas-labels {position: absolute; inset: 0; pointer-events: none; overflow: hidden;}
.atlas-labels span {position: absolute; font-size: 12px; white-space: nowrap;
  background: rgba(255,255,255,0.8); padding: 0 3px;}
.atlas-legend {position: absolute; right: 8px; top: 8px; max-width: 40%; font-size: 12px;
  background: rgba(255,255,255,0.85); padding: 4px 6px; pointer-events: none;}
.atlas-legend span {display: block;}
.atlas-legend i {display: inline-block; width: 10px; height: 10px; margin-right: 4px;}
"""


# -- what the map shows ----------------------------------------------------------------------


def atlas_level(run: Run) -> str | None:
    """The level the batch job laid the atlas out at (None: a run without one); cached
    (the projections table has 8M rows at 1M + 1M)."""
    return _atlas_level(str(run.dir))


@lru_cache(maxsize=32)
def _atlas_level(run_dir: str) -> str | None:
    proj = open_run(run_dir).projections
    levels = proj.loc[proj["method"] == layouts.METHOD, "level"]
    return str(levels.iloc[0]) if len(levels) else None


def coordinates(run: Run, layout: str) -> np.ndarray:
    """(n, 2) float32 in [-1, 1], row = image id, for one layout (cached per run)."""
    return _coordinates(str(run.dir), layout)


@lru_cache(maxsize=8)
def _coordinates(run_dir: str, layout: str) -> np.ndarray:
    run = open_run(run_dir)
    level = atlas_level(run)
    if level is None:
        raise GapscopeError("this run has no atlas layout (rerun it without --atlas-level none)")
    view, _ = projection_view(run, level, layouts.METHOD, "both")
    umap = np.zeros((len(run.rows), 2), dtype=np.float32)
    umap[view["id"]] = np.column_stack([view["x"], view["y"]])
    if layout == "grid":
        return layouts.grid_layout(umap)
    if layout == "category":
        return layouts.category_layout(umap, image_column(run, "category"))[0]
    return layouts.fit_square(umap)


def points_bytes(run: Run, layout: str) -> bytes:
    """What `/atlas/<run>/points.bin` sends: float32 x for every image, then y."""
    xy = coordinates(run, layout)
    return np.ascontiguousarray(xy.T).tobytes()


def category_names(run: Run) -> np.ndarray:
    """Each row's category as the atlas names it ("–" for none); cached per run."""
    return _category_names(str(run.dir))


@lru_cache(maxsize=8)
def _category_names(run_dir: str) -> np.ndarray:
    values = image_column(open_run(run_dir), "category").astype(object)
    return np.array([c or "–" for c in values], dtype=object)


def row_scores(run: Run):
    """The scores at the atlas's level, one row per image id (NaN where an image has
    none); cached per run."""
    return _row_scores(str(run.dir))


@lru_cache(maxsize=8)
def _row_scores(run_dir: str):
    run = open_run(run_dir)
    return level_scores(run, atlas_level(run)).reindex(range(len(run.rows)))


def clusters_of(run: Run) -> np.ndarray:
    """Each row's HDBSCAN cluster at the atlas's level (-1: noise)."""
    return row_scores(run)["cluster"].fillna(-1).to_numpy(int)


def colours(store: RunStore, run: Run, color_by: str) -> tuple[np.ndarray, list, list]:
    """Per-row colour codes (uint8), the palette they index and the legend
    [(name, colour, count)] for one colouring of the map."""
    n = len(run.rows)
    if color_by in SCORES:
        values = row_scores(run)[SCORES[color_by]].to_numpy(float)
        top = SCORE_TOP[color_by]
        bins = np.nan_to_num(values / top * len(BINS)).astype(np.int64)
        codes = np.where(np.isnan(values), len(BINS), np.clip(bins, 0, len(BINS) - 1))
        edges = [f"{top * i / len(BINS):.3g}" for i in range(len(BINS) + 1)]
        names = [f"{a}–{b}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
        names[-1] = f"≥ {edges[-2]}" if color_by == "realism" else names[-1]
        return _coded(codes, [*names, "n/a"], [*BINS, NONE])
    if color_by.startswith(METADATA_PREFIX) and color_by in run.rows.columns:
        return _metadata_colours(run.rows[color_by].fillna("").astype(str).to_numpy())
    if color_by == "domain":
        names = image_column(run, "domain").astype(str)
    elif color_by == "category":  # as corrected: a relabelled image joins its new group
        names = category_names(run).copy()
        for r, label in row_labels(run).items():
            names[r] = label
    elif color_by == "cluster":
        labels = clusters_of(run)
        names = np.where(labels < 0, "noise", np.char.add("cluster ", labels.astype(str)))
    else:  # tags
        names = np.full(n, "untagged", dtype=object)
        for r, t in row_tags(run).items():
            names[r] = tag_names(t)
    return _by_name(names, color_by)


def _metadata_colours(values: np.ndarray):
    """A metadata column: numbers (a year, a latitude) in 8 quantile bins when they have
    many values, anything else one colour per value (the largest groups)."""
    numbers = np.array([float(v) if _is_number(v) else np.nan for v in values])
    known = numbers[~np.isnan(numbers)]
    if len(np.unique(known)) > len(PALETTE) and len(known) >= 0.9 * len(values):
        edges = np.unique(np.quantile(known, np.linspace(0, 1, len(BINS) + 1)))
        bins = np.clip(np.searchsorted(edges, numbers, side="right") - 1, 0, len(edges) - 2)
        codes = np.where(np.isnan(numbers), len(edges) - 1, bins)
        names = [f"{a:.4g}–{b:.4g}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
        return _coded(codes, [*names, "n/a"], [*BINS[: len(names)], NONE])
    return _by_name(np.where(values == "", "–", values), "metadata")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() != ""


def colour_choices(run: Run) -> list[tuple[str, str]]:
    """What the map can be coloured by: the run's scores and tags, and every column its
    inputs' metadata.csv gave (as "<column> (metadata)")."""
    meta = [c for c in run.rows.columns if c.startswith(METADATA_PREFIX)]
    return [(c, c) for c in COLOR_BY] + [
        (f"{c[len(METADATA_PREFIX) :]} (metadata)", c) for c in meta
    ]


def _by_name(names: np.ndarray, color_by: str) -> tuple[np.ndarray, list, list]:
    """Codes for named groups: the largest get palette colours, the rest share "other"."""
    unique, inverse, counts = np.unique(names, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    fixed = {"untagged": NONE, "noise": NONE, REMOVE: "#d62728"}
    if color_by == "domain":
        fixed |= DOMAIN_COLORS
    free = iter(c for c in PALETTE if c not in fixed.values())
    legend_names, palette, code_of = [], [], np.empty(len(unique), dtype=np.int64)
    for rank, u in enumerate(order):
        name = str(unique[u])
        if name not in fixed and rank >= len(PALETTE) - 1:
            code_of[u] = -1  # "other"
            continue
        code_of[u] = len(legend_names)
        legend_names.append(name)
        palette.append(fixed.get(name) or next(free, OTHER))
    codes = code_of[inverse]
    if (codes < 0).any():
        codes[codes < 0] = len(legend_names)
        legend_names.append("other")
        palette.append(OTHER)
    return _coded(codes, legend_names, palette)


def _coded(codes: np.ndarray, names: list[str], palette: list[str]):
    counts = np.bincount(codes, minlength=len(names))
    # every code's entry, empty ones too: the map's tooltip looks names up by code
    legend = [(name, palette[i], int(counts[i])) for i, name in enumerate(names)]
    return codes.astype(np.uint8), palette, legend


def keep_mask(store: RunStore, run: Run, domains, categories, clusters, realism, tags):
    """Rows passing the filters (None: no filter). Realism bounds synthetic images only
    (real ones have none); tags: any of them."""
    n = len(run.rows)
    keep = np.ones(n, dtype=bool)
    if domains is not None and set(domains) != {"real", "synthetic"}:
        keep &= np.isin(image_column(run, "domain").astype(str), list(domains))
    if categories:
        keep &= np.isin(category_names(run), list(categories))
    if clusters:
        wanted = [-1 if c == "noise" else int(c.split()[-1]) for c in clusters]
        keep &= np.isin(clusters_of(run), wanted)
    lo, hi = realism if realism is not None else (0.0, REALISM_MAX)
    if lo > 0 or hi < REALISM_MAX:
        values = row_scores(run)["realism"].to_numpy(float)
        top = hi if hi < REALISM_MAX else np.inf
        keep &= np.isnan(values) | ((values >= lo) & (values <= top))
    if tags:
        wanted = set(tags)
        keep &= np.isin(np.arange(n), [r for r, t in row_tags(run).items() if t & wanted])
    return None if keep.all() else keep


def view(
    store: RunStore,
    run_id: str,
    layout: str,
    color_by: str,
    mask=None,
    select=None,
    animate: bool = False,
) -> str:
    """The gr.HTML value: the JSON the map's script draws."""
    run = open_id(store, run_id)
    if atlas_level(run) is None:
        return json.dumps({"n": 0})
    codes, palette, legend = colours(store, run, color_by)
    key = LAYOUT_LABELS.get(layout, layout)
    return json.dumps(
        {
            "run": run.id,
            "n": len(run.rows),
            "layout": key,
            "points_url": f"/atlas/{run.id}/points.bin?layout={key}",
            "codes": base64.b64encode(codes.tobytes()).decode(),
            "palette": palette,
            "legend": legend,
            "filter": None
            if mask is None
            else base64.b64encode(np.packbits(mask, bitorder="little").tobytes()).decode(),
            "select": None if select is None else [int(i) for i in select],
            "labels": block_labels(run) if key == "category" else [],
            "animate": animate,
            "nonce": time.time_ns(),
        }
    )


def block_labels(run: Run) -> list[tuple[str, int, int]]:
    """(category, count, row) per block of the category layout: the row at the block's
    top-left corner, above which the map writes the name (found on screen by row, so
    labels follow pans and zooms)."""
    xy = coordinates(run, "category")
    names = category_names(run)
    out = []
    for name in np.unique(names):
        members = np.flatnonzero(names == name)
        corner = members[np.lexsort((-xy[members, 1], xy[members, 0]))[0]]
        out.append((str(name), len(members), int(corner)))
    return out


# -- the selection ---------------------------------------------------------------------------


def describe_selection(store: RunStore, run_id: str, rows: list[int]):
    """A line on the selection (how many of each domain) and its first thumbnails."""
    run = open_id(store, run_id)
    if not rows:
        return "Nothing selected: drag with **Lasso** on (or hold Shift), or pick a hotspot.", []
    domains = image_column(run, "domain")[np.asarray(rows, dtype=np.int64)]
    parts = ", ".join(f"{int((domains == d).sum())} {d}" for d in ("real", "synthetic"))
    first = rows[:SHOWN_SELECTED]
    items = with_tags(run, [(picture(run.thumb(r)), caption(run, r)) for r in first], first)
    more = f" (the first {SHOWN_SELECTED} below)" if len(rows) > SHOWN_SELECTED else ""
    return f"**{len(rows)} selected**: {parts}{more}.", items


def on_lasso(store: RunStore, run_id: str, evt: gr.EventData):
    rows = sorted({int(r) for r in (getattr(evt, "rows", None) or [])})
    return rows, *describe_selection(store, run_id, rows)


def tag_selection(
    store: RunStore,
    editing: Editing,
    run_id: str,
    rows: list[int],
    tag: str,
    who: str,
    token: str,
    untag: bool = False,
) -> str:
    """Tag (or untag) every selected image."""
    editing.check(token)
    if not rows:
        raise gr.Error("Select images first: lasso them on the map or pick a hotspot.")
    return change_tags(store, open_id(store, run_id), rows, tag, who, untag)


# -- hotspots --------------------------------------------------------------------------------


def hotspots(run: Run) -> list[dict]:
    """The run's HDBSCAN clusters at the atlas level, largest first: id, kind, size and
    the rows nearest their middle on the map (the thumbnails the list shows). Cached
    per run (1.3 s at 200k images; a run never changes)."""
    return _hotspots(str(run.dir))


@lru_cache(maxsize=8)
def _hotspots(run_dir: str) -> list[dict]:
    run = open_run(run_dir)
    level = atlas_level(run)
    if level is None:
        return []
    table = run.metrics["levels"][level]["clusters"]["table"]
    labels = clusters_of(run)
    xy = coordinates(run, "umap")
    out = []
    for c in table:
        rows = np.flatnonzero(labels == c["cluster"])
        if not len(rows):
            continue
        middle = np.median(xy[rows], axis=0)
        near = rows[np.argsort(((xy[rows] - middle) ** 2).sum(axis=1))[:HOTSPOT_THUMBS]]
        out.append(
            {
                "cluster": int(c["cluster"]),
                "kind": c.get("kind", "mixed"),
                "n": len(rows),
                "rows": rows,
                "near": near,
            }
        )
    return sorted(out, key=lambda h: (-h["n"], h["cluster"]))


def hotspot_gallery(store: RunStore, run_id: str) -> list:
    """One row of thumbnails per hotspot, its name (users may rename it) on the first."""
    run = open_id(store, run_id)
    names = Annotations.of(store.root).hotspot_names(run.id, atlas_level(run) or "")
    items = []
    for h in hotspots(run):
        title = names.get(h["cluster"]) or f"cluster {h['cluster']}"
        first = f"{title} · {h['kind']} · {h['n']} images"
        for j, r in enumerate(h["near"]):
            text = first if j == 0 else f"cluster {h['cluster']}"
            items.append((picture(run.thumb(int(r))), text))
        for _ in range(HOTSPOT_THUMBS - len(h["near"])):  # keep one hotspot per row
            items.append((picture(None), f"cluster {h['cluster']}"))
    return items


def pick_hotspot(
    store: RunStore, run_id: str, layout: str, color_by: str, mask_state, evt: gr.SelectData
):
    """A click on a hotspot's thumbnail selects the whole cluster on the map."""
    run = open_id(store, run_id)
    spots = hotspots(run)
    h = spots[evt.index // HOTSPOT_THUMBS]
    rows = [int(r) for r in h["rows"]]
    names = Annotations.of(store.root).hotspot_names(run.id, atlas_level(run) or "")
    return (
        view(store, run_id, layout, color_by, mask_state, select=rows),
        rows,
        *describe_selection(store, run_id, rows),
        h["cluster"],
        names.get(h["cluster"], ""),
    )


def name_hotspot(
    store: RunStore, editing: Editing, run_id: str, cluster, name: str, who: str, token: str
):
    editing.check(token)
    if cluster is None or int(cluster) < 0:
        raise gr.Error("Pick a hotspot first (click one of its thumbnails).")
    run = open_id(store, run_id)
    try:
        Annotations.of(store.root).name_hotspot(
            run.id, atlas_level(run) or "", int(cluster), name, who or "anonymous"
        )
    except GapscopeError as exc:
        raise markup.error(exc) from None
    return hotspot_gallery(store, run_id)


# -- the tab ---------------------------------------------------------------------------------


def filter_choices(store: RunStore, run: Run) -> tuple[list, list, list]:
    """The categories, clusters and tags the filters offer for this run."""
    if atlas_level(run) is None:
        return [], [], []
    cats = sorted(set(category_names(run)))
    clusters = ["noise"] + [f"cluster {h['cluster']}" for h in hotspots(run)]
    tags = sorted({t for ts in Annotations.of(store.root).tags().values() for t in ts})
    return cats, clusters, tags


def on_run(store: RunStore, run_id: str, layout: str, color_by: str):
    run = open_id(store, run_id)
    note = (
        ""
        if atlas_level(run) is not None
        else "This run has no atlas layout: it was computed with `--atlas-level none` or before "
        "the atlas existed. Rerun the batch job to get one."
    )
    cats, clusters, tags = filter_choices(store, run)
    choices = colour_choices(run)
    color_by = color_by if color_by in dict(choices).values() else "domain"
    return (
        run.id,
        note,
        gr.update(choices=choices, value=color_by),
        view(store, run.id, layout, color_by),
        None,
        [],
        *describe_selection(store, run.id, []),
        gr.update(choices=cats, value=[]),
        gr.update(choices=clusters, value=[]),
        gr.update(choices=tags, value=[]),
        hotspot_gallery(store, run.id) if note == "" else [],
    )


def refilter(
    store: RunStore,
    run_id: str,
    layout: str,
    color_by: str,
    domains,
    categories,
    clusters,
    lo: float,
    hi: float,
    tags,
):
    run = open_id(store, run_id)
    mask = keep_mask(store, run, domains, categories, clusters, (lo, hi), tags)
    shown = len(run.rows) if mask is None else int(mask.sum())
    return view(store, run_id, layout, color_by, mask), mask, f"{shown} of {len(run.rows)} shown"


def _filters():
    """(domains, categories, clusters, realism from, realism to, tags): which points show."""
    with gr.Accordion("Filters", open=False, elem_id="atlas_filters"):
        with gr.Row():
            domains = gr.CheckboxGroup(
                ["real", "synthetic"],
                value=["real", "synthetic"],
                label="Domain",
                elem_id="atlas_domains",
            )
            categories = gr.Dropdown([], multiselect=True, label="Categories")
            clusters = gr.Dropdown([], multiselect=True, label="Hotspots (clusters)")
            tags = gr.Dropdown(
                [], multiselect=True, label="Tagged with any of", elem_id="atlas_tag_filter"
            )
        with gr.Row():
            lo = gr.Slider(0, REALISM_MAX, value=0, step=0.01, label="Realism at least")
            hi = gr.Slider(
                0,
                REALISM_MAX,
                value=REALISM_MAX,
                step=0.01,
                label="Realism at most (the top: no bound)",
            )
    return domains, categories, clusters, lo, hi, tags


@dataclass
class _Editor:
    """Who edits, with which token, and the buttons that tag the selection (shown only
    where the demo may write)."""

    who: gr.Textbox
    token: gr.Textbox
    tag: gr.Textbox
    tag_button: gr.Button
    untag_button: gr.Button
    remove_button: gr.Button
    done: gr.Markdown

    @classmethod
    def build(cls, editing: Editing) -> _Editor:
        with gr.Row():
            who, token = who_and_token(editing, "atlas_who", "atlas_token")
        tag = gr.Textbox(label="Tag", placeholder="e.g. odd lighting", elem_id="atlas_tag")
        with gr.Row():
            tag_button = gr.Button("Tag selection", elem_id="atlas_tag_button")
            untag_button = gr.Button("Untag", elem_id="atlas_untag_button")
            remove_button = gr.Button(
                "Flag for removal", variant="stop", elem_id="atlas_remove_button"
            )
        done = gr.Markdown(elem_id="atlas_done")
        return cls(who, token, tag, tag_button, untag_button, remove_button, done)

    def wire(self, store: RunStore, editing: Editing, run_id, rows, tags) -> None:
        mine = [self.who, self.token]
        for button, fn in (
            (self.tag_button, tag_selection),
            (self.untag_button, partial(tag_selection, untag=True)),
        ):
            button.click(partial(fn, store, editing), [run_id, rows, self.tag, *mine], self.done)
        self.remove_button.click(
            partial(_flag_selection, store, editing), [run_id, rows, *mine], self.done
        )
        self.done.change(partial(_tags_changed, store), [run_id, tags], tags)


def _hotspot_gallery(store: RunStore, editing: Editing, run_id, editor: _Editor | None):
    """(the picked hotspot, the hotspots' gallery, its name): HDBSCAN's clusters, named
    where the demo may write."""
    gr.Markdown(
        "### Hotspots\nHDBSCAN's clusters at the atlas's level, largest first: "
        "click one to select it on the map."
    )
    hotspot = gr.Number(-1, visible=False)
    spots = PathGallery(
        columns=HOTSPOT_THUMBS,
        height=420,
        elem_id="atlas_hotspots",
        object_fit="contain",
        allow_preview=False,
    )
    if editor is None:
        return hotspot, spots, gr.Textbox(visible=False)
    with gr.Row():
        hotspot_name = gr.Textbox(label="Name the picked hotspot", elem_id="atlas_hotspot_name")
        name_button = gr.Button("Save name", elem_id="atlas_hotspot_button")
    name_button.click(
        partial(name_hotspot, store, editing),
        [run_id, hotspot, hotspot_name, editor.who, editor.token],
        spots,
    )
    return hotspot, spots, hotspot_name


def _map() -> gr.HTML:
    """The regl-scatterplot map (its script served by /atlas/, not inlined)."""
    return gr.HTML(
        json.dumps({"n": 0}),
        html_template=TEMPLATE,
        css_template=CSS,
        js_on_load=JS,
        head=f'<script src="/atlas/{SCRIPT.name}"></script>',
        elem_id="atlas",
    )


def build(store: RunStore, first: Run, editing: Editing | None = None) -> Tab:
    editing = editing or Editing(False)
    with gr.Blocks() as blocks:
        run_id = gr.Textbox(first.id, visible=False)
        note = gr.Markdown(elem_id="atlas_note")
        with gr.Row():
            layout = gr.Radio(
                list(LAYOUT_LABELS), value="UMAP map", label="Layout", elem_id="atlas_layout"
            )
            color_by = gr.Dropdown(
                colour_choices(first), value="domain", label="Colour by", elem_id="atlas_color"
            )
            shown = gr.Markdown(elem_id="atlas_shown")
        filters = _filters()
        mask = gr.State(None)
        rows = gr.State([])
        with gr.Row():
            with gr.Column(scale=3):
                plot = _map()
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="atlas_selection")
                selected = PathGallery(
                    label="Selected",
                    columns=4,
                    height=300,
                    elem_id="atlas_selected",
                    object_fit="contain",
                )
                editor = _Editor.build(editing) if editing.enabled else None
                if editing.enabled:  # the exports hold server paths: for editors only
                    downloads(store, run_id, prefix="atlas_")
        hotspot, spots, hotspot_name = _hotspot_gallery(store, editing, run_id, editor)
        gr.on(
            [layout.change, color_by.change, *(f.change for f in filters)],
            partial(refilter, store),
            [run_id, layout, color_by, *filters],
            [plot, mask, shown],
        )

        # functions of their own, not partials: Gradio finds the event-data parameter by
        # the type hints of a plain function only
        def lasso(run: str, evt: gr.EventData):
            return on_lasso(store, run, evt)

        def pick(run: str, shown_as: str, colour: str, keep, evt: gr.SelectData):
            return pick_hotspot(store, run, shown_as, colour, keep, evt)

        plot.lasso_select(lasso, run_id, [rows, summary, selected])
        picked = [plot, rows, summary, selected, hotspot, hotspot_name]
        spots.select(pick, [run_id, layout, color_by, mask], picked)
        _, categories, clusters, _, _, tags = filters
        if editor is not None:
            editor.wire(store, editing, run_id, rows, tags)
        outputs = [run_id, note, color_by, plot, mask, rows, summary, selected]
        outputs += [categories, clusters, tags, spots]
        blocks.load(partial(on_run, store), [run_id, layout, color_by], outputs)
    return Tab(blocks, run_id, on_run, [layout, color_by], outputs)


def _flag_selection(store, editing, run_id, rows, who, token) -> str:
    return tag_selection(store, editing, run_id, rows, REMOVE, who, token)


def _tags_changed(store: RunStore, run_id: str, chosen):
    """A new tag joins the tag filter's choices."""
    _, _, tags = filter_choices(store, open_id(store, run_id))
    return gr.update(choices=tags, value=[t for t in chosen or [] if t in tags])


# -- the routes ------------------------------------------------------------------------------


def router(store: RunStore):
    """`/atlas/...`: the scatterplot's script, a run's points per layout and its
    thumbnails, from published runs only (a run is immutable: cached by browsers)."""
    from fastapi import APIRouter, HTTPException, Response
    from fastapi.responses import FileResponse

    api = APIRouter(prefix="/atlas")
    forever = {"Cache-Control": "public, max-age=31536000, immutable"}

    def published(run_id: str) -> Run:
        try:
            return open_id(store, run_id)
        except (GapscopeError, gr.Error, OSError, ValueError):
            raise HTTPException(404, "no such run") from None

    # response_class, not a return annotation: FastAPI's /openapi.json cannot resolve an
    # annotation naming a class imported inside this function (it answered 500)
    @api.get(f"/{SCRIPT.name}", response_class=FileResponse)
    def script():
        return FileResponse(
            SCRIPT, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"}
        )

    @api.get("/{run_id}/points.bin", response_class=Response)
    def points(run_id: str, layout: str = "umap"):
        if layout not in layouts.LAYOUTS:
            raise HTTPException(404, "no such layout")
        run = published(run_id)
        try:
            body = points_bytes(run, layout)
        except GapscopeError as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(body, media_type="application/octet-stream", headers=forever)

    @api.get("/{run_id}/thumb/{row}", response_class=FileResponse)
    def thumb(run_id: str, row: int):
        run = published(run_id)
        path = run.thumb(row) if 0 <= row < len(run.rows) else None
        if path is None or not Path(path).exists():
            raise HTTPException(404, "no thumbnail")
        return FileResponse(path, headers=forever)

    return api
