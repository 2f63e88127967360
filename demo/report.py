"""The gap report: metrics across levels, the images to blame, and history over runs.

Plain functions of published runs, like demo.views; no Gradio in here.
"""

from __future__ import annotations

import numpy as np

from demo.views import caption, open_run
from lib.store import Run, RunStore

# (title, how to read one level's value, its interval or None, what "no gap" looks like)
METRICS = {
    "fd": ("Fréchet distance (equal N)", lambda m: m["fd"]["value"], lambda m: m["fd"]["ci95"]),
    "fd_inf": ("FD∞ (extrapolated)", lambda m: m["fd_inf"]["value"], lambda m: None),
    "kid": (
        "KID (standardised)",
        lambda m: m["kid"]["mean"],
        lambda m: [m["kid"]["mean"] - m["kid"]["std"], m["kid"]["mean"] + m["kid"]["std"]],
    ),
    "auc": (
        "Domain classifier AUC (0.5 = no gap)",
        lambda m: m["classifier"]["auc"],
        lambda m: m["classifier"]["ci95"],
    ),
    "coverage": (
        "Coverage (≈0.97 = no gap)",
        lambda m: m["coverage"]["value"],
        lambda m: m["coverage"]["ci95"],
    ),
    "density": ("Density (≈1 = no gap)", lambda m: m["density"], lambda m: m["density_ci95"]),
    "precision": ("Precision", lambda m: m["precision"], lambda m: m.get("precision_ci95")),
    "recall": ("Recall", lambda m: m["recall"], lambda m: m.get("recall_ci95")),
    "mixing": (
        "Neighbour mixing (1 = mixed)",
        lambda m: m["mixing"]["value"],
        lambda m: m["mixing"]["ci95"],
    ),
}
PANELS = ("fd", "kid", "auc", "coverage", "density", "mixing")


def metric_value(level_metrics: dict, name: str) -> tuple[float, list[float] | None]:
    _, value, interval = METRICS[name]
    return float(value(level_metrics)), interval(level_metrics)


def levels_figure(run: Run):
    """One panel per metric, levels on the x axis, intervals as error bars."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    levels = list(run.metrics["levels"])
    fig = make_subplots(rows=2, cols=3, subplot_titles=[METRICS[p][0] for p in PANELS])
    for i, name in enumerate(PANELS):
        values, lo, hi = [], [], []
        for level in levels:
            v, ci = metric_value(run.metrics["levels"][level], name)
            values.append(v)
            lo.append(v - ci[0] if ci else 0.0)
            hi.append(ci[1] - v if ci else 0.0)
        fig.add_trace(
            go.Scatter(
                x=levels,
                y=values,
                mode="lines+markers",
                name=METRICS[name][0],
                error_y={"type": "data", "array": hi, "arrayminus": lo, "visible": True},
                showlegend=False,
            ),
            row=i // 3 + 1,
            col=i % 3 + 1,
        )
        if name == "fd":
            fd_inf = [run.metrics["levels"][lv]["fd_inf"]["value"] for lv in levels]
            fig.add_trace(
                go.Scatter(x=levels, y=fd_inf, mode="lines", line={"dash": "dot"}, name="FD∞"),
                row=1,
                col=1,
            )
    fig.update_layout(height=560, margin={"l": 40, "r": 10, "t": 40, "b": 30}, showlegend=False)
    return fig


def summary_table(run: Run) -> list[list]:
    """Rows for a table: level, N, then each metric with its interval as text."""
    rows = []
    for level, m in run.metrics["levels"].items():
        row = [level, f"{m['n']['real']} + {m['n']['synthetic']}", m["dim"]]
        for name in ("fd", "fd_inf", "kid", "auc", "precision", "recall", "density", "coverage"):
            v, ci = metric_value(m, name)
            row.append(f"{v:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""))
        row.append(f"{m['mixing']['value']:.3g}")
        rows.append(row)
    return rows


SUMMARY_HEADERS = ["level", "N real + synthetic", "dim", "FD", "FD∞", "KID", "AUC", "precision",
                   "recall", "density", "coverage", "mixing"]  # fmt: skip


def blame_galleries(run: Run, level: str, n: int = 16) -> dict[str, list[tuple[str, str]]]:
    """Thumbnails of the images behind the gap at one level, worst first."""
    scores = run.scores[run.scores["level"] == level].set_index("id")
    images = run.images
    synth = scores.loc[images.index[images["domain"] == "synthetic"]]
    real = scores.loc[images.index[images["domain"] == "real"]]

    def items(frame, label):
        return [
            (str(run.thumb(int(i))), f"{caption(run, int(i))} · {label(row)}")
            for i, row in frame.head(n).iterrows()
        ]

    uncovered = real[real["covered"] == False]  # noqa: E712 (nullable boolean column)
    return {
        "least_realistic": items(
            synth.sort_values("realism"), lambda r: f"realism {r['realism']:.2f}"
        ),
        "most_synthetic": items(
            synth.sort_values("p_synthetic", ascending=False),
            lambda r: f"p(syn) {r['p_synthetic']:.2f}",
        ),
        "uncovered_real": items(
            uncovered.sort_values("p_synthetic"), lambda r: f"p(syn) {r['p_synthetic']:.2f}"
        ),
        "one_domain_clusters": cluster_gallery(run, level),
    }


def history_figure(store: RunStore, level: str, name: str = "auc"):
    """One metric at one level over every published run, oldest first."""
    import plotly.graph_objects as go

    xs, ys, lo, hi, texts = [], [], [], [], []
    for run_id in reversed(store.run_ids()):
        run = open_run(str(store.runs_dir / run_id))
        if run.manifest.get("derived_from"):  # same metrics as the run it extends
            continue
        levels = (run.metrics or {}).get("levels", {})
        if level not in levels:
            continue
        v, ci = metric_value(levels[level], name)
        xs.append(run.manifest["created"])
        ys.append(v)
        lo.append(v - ci[0] if ci else 0.0)
        hi.append(ci[1] - v if ci else 0.0)
        texts.append(run_id)
    fig = go.Figure(
        go.Scatter(
            x=xs,
            y=ys,
            text=texts,
            mode="lines+markers",
            error_y={"type": "data", "array": hi, "arrayminus": lo, "visible": True},
            hovertemplate="%{text}<br>%{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{METRICS[name][0]} at {level}, all published runs",
        height=360,
        margin={"l": 40, "r": 10, "t": 50, "b": 30},
        xaxis_title="run",
    )
    return fig


def cluster_names(run: Run, level: str, ids: np.ndarray) -> np.ndarray:
    """A legend name per point: 'cluster 3 · real-only', or 'noise'."""
    scores = run.scores[run.scores["level"] == level].set_index("id")
    kinds = {c["cluster"]: c["kind"] for c in run.metrics["levels"][level]["clusters"]["table"]}
    labels = scores.loc[ids, "cluster"].to_numpy()
    return np.array(
        ["noise" if c < 0 else f"cluster {c:02d} · {kinds.get(c, 'mixed')}" for c in labels]
    )


def cluster_gallery(run: Run, level: str, per_cluster: int = 4) -> list[tuple[str, str]]:
    """Sample images from every one-domain cluster, most lopsided first."""
    scores = run.scores[run.scores["level"] == level]
    items = []
    for c in run.metrics["levels"][level]["clusters"]["table"]:
        if c["kind"] == "mixed":
            continue
        ids = scores.loc[scores["cluster"] == c["cluster"], "id"].to_numpy()
        pick = np.random.default_rng(c["cluster"]).permutation(ids)[:per_cluster]
        label = f"cluster {c['cluster']} · {c['kind']} ({c['real']} real, {c['synthetic']} syn)"
        items += [(str(run.thumb(int(i))), f"{caption(run, int(i))} · {label}") for i in pick]
    return items


def score_colors(run: Run, level: str, ids: np.ndarray, name: str) -> np.ndarray:
    """Per-point values to colour the 3D plot by: realism or p(synthetic) at this level."""
    scores = run.scores[run.scores["level"] == level].set_index("id")
    return scores.loc[ids, name].to_numpy(dtype=float)


def notes_markdown(run: Run) -> str:
    """Where the gap is largest, and how to read the numbers honestly."""
    levels = run.metrics["levels"]
    worst = max(levels, key=lambda lv: levels[lv]["classifier"]["auc"])
    best = min(levels, key=lambda lv: levels[lv]["classifier"]["auc"])
    w, b = levels[worst], levels[best]
    n = w["n"]
    kid = w["kid"]
    lines = [
        f"**Largest gap at {worst}** (domain classifier AUC {w['classifier']['auc']:.3f}, "
        f"coverage {w['coverage']['value']:.3f}); **smallest at {best}** "
        f"(AUC {b['classifier']['auc']:.3f}, coverage {b['coverage']['value']:.3f}).",
        f"- N = {n['real']} real, {n['synthetic']} synthetic; FD at equal N = {n['fd_equal_n']} "
        "(FD shrinks like 1/N: compare runs at equal N, or FD∞).",
        f"- KID over {kid['subsets']} subsets of {kid['subset_size']}"
        + (" (fewer images than the usual 1000 per subset)" if kid["reduced"] else "")
        + "; KID, PRDC, realism, mixing and the classifier use features standardised with the "
        "real domain's statistics.",
        f"- k = {run.metrics['params']['k']} for precision/recall/density/coverage, realism and "
        "mixing. Realism is the plain distance ratio (≥ 1: inside the real manifold).",
        f"- Clusters at {worst}: {w['clusters']['n']} (HDBSCAN), "
        f"{w['clusters']['real_only']} real-only (what the synthetic data misses), "
        f"{w['clusters']['synthetic_only']} synthetic-only (what it invents).",
    ]
    return "\n".join(lines)
