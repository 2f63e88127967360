"""`batch compare RUN_A RUN_B ...`: is the next version of the synthetic set closer to real?

Each run measured one version of the synthetic images against the real set. The runs must
share real images (recognised by content hash: the same files in any folder) and the model
and levels that measured them; the shared real images' features are checked to agree, so
a changed checkpoint is refused rather than read as a change of the data. Each version and
the next are measured against the same shared real sample at equal N (a seeded sample of
the larger version) and their change per level, per class and per object size gets the
intervals of lib.analysis.gap.versions. Each run's own metrics (with their intervals) form
the trend across all the runs. Published in a run derived from the last one
(compare/results.json) for the demo's Compare tab, with thumbnails of each version's images
nearest to and farthest from real.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass

import numpy as np

from lib.analysis.gap import GapParams
from lib.analysis.gap.paired import METRICS
from lib.analysis.gap.records import interval
from lib.analysis.gap.strata import MIN_PER_DOMAIN
from lib.analysis.gap.versions import VersionComparison, equal_size
from lib.runtime.backend import check_device, choose_backend
from lib.runtime.errors import GapscopeError
from lib.runtime.params import check_minimums, param
from lib.store.runs import Run, RunStore

GALLERY = 6  # images per version nearest to and farthest from real
TREND = ("fd", "kid", "auc", "precision", "recall", "coverage")  # each run's own, for the chart


@dataclass
class CompareJob:
    """A comparison's settings; every field is also a `batch compare` option."""

    levels: list[str] = param([], "Level to compare, repeatable (default: all).", flag="--level")
    sample: int = param(
        2000,
        "Images per domain and version: a seeded sample of each (the same real sample for all).",
        minimum=20,
    )
    resamples: int = param(200, "Resamples for every interval.", minimum=20)
    strata: bool = param(True, "Compare per class and per object size too.")
    seed: int = param(0, "Seed of the samples and of the intervals.", minimum=0)
    device: str = param(
        "auto", "cpu, cuda, or auto: a GPU when there is one (lib.runtime.backend)."
    )

    def __post_init__(self):
        check_minimums(self)
        check_device(self.device)


def run_compare(job: CompareJob, run_ids: list[str], store: RunStore) -> Run:
    """Each version against the next, and the trend over all; published beside the last."""
    runs = _open(store, run_ids)
    levels, left_out = _levels(job, runs)
    real = _shared_real(runs)
    _same_features(runs, real, levels[0])
    order = np.random.default_rng(job.seed).permutation(len(real[runs[0].id]))[: job.sample]
    real = {k: v[order] for k, v in real.items()}  # the same images in every run
    device = choose_backend("auto").device if job.device == "auto" else job.device
    pairs = [
        _pair(job, a, b, real[a.id], real[b.id], levels, device)
        for a, b in zip(runs, runs[1:], strict=False)
    ]
    results = {
        "runs": [_describe(r) for r in runs],
        "params": asdict(job),
        "levels": levels,
        "levels_left_out": left_out,
        "shared_real": {r.id: int(len(rows)) for r, rows in zip(runs, real.values(), strict=True)},
        "pairs": pairs,
        "trend": trend(runs, levels),
    }
    results["findings"] = findings(results)
    base = runs[-1]
    with store.writing(derive_from=base) as writer:
        results["images"] = {r.id: _gallery(r, levels, writer) for r in runs}
        writer.compare(results)
        writer.manifest({**base.manifest, "derived_from": base.id}, schema=base.schema)
    return writer.published


def _open(store: RunStore, run_ids: list[str]) -> list[Run]:
    if len(dict.fromkeys(run_ids)) < 2:
        raise GapscopeError("compare: give at least two different runs (see `batch runs`)")
    runs = [store.open(r) for r in dict.fromkeys(run_ids)]
    for r in runs:
        if r.metrics is None or not r.levels:
            raise GapscopeError(f"run {r.id} has no gap metrics to compare")
    models = {r.model_key for r in runs}
    if len(models) > 1:
        names = sorted({r.manifest.get("backbone", {}).get("name", "?") for r in runs})
        raise GapscopeError(
            f"the runs were measured with different models ({', '.join(names)}): their gaps "
            "cannot be compared (measure every version with the same --backbone and weights)"
        )
    kinds = {bool(r.manifest.get("objects")) for r in runs}
    if len(kinds) > 1:
        raise GapscopeError("compare: one run measured objects and another whole images")
    return runs


def _levels(job: CompareJob, runs: list[Run]) -> tuple[list[str], dict]:
    """The levels every run has (in the first run's order), and those some runs lack."""
    shared = [lv for lv in runs[0].levels if all(lv in r.levels for r in runs)]
    if not shared:
        raise GapscopeError("the runs share no feature level: they cannot be compared")
    unknown = [lv for lv in job.levels if lv not in shared]
    if unknown:
        raise GapscopeError(
            f"--level {unknown[0]}: not a level of every run (shared: {', '.join(shared)})"
        )
    every = dict.fromkeys(lv for r in runs for lv in r.levels)
    left_out = {lv: [r.id for r in runs if lv in r.levels] for lv in every if lv not in shared}
    return (list(dict.fromkeys(job.levels)) or shared), left_out


def _shared_real(runs: list[Run]) -> dict[str, np.ndarray]:
    """Per run, its rows of the real images (or objects) every run has, in one order."""
    keys = []
    for r in runs:
        real = np.flatnonzero(r.column("domain") == "real")
        keys.append(dict(zip(r.column("hash")[real].tolist(), real.tolist(), strict=True)))
    shared = sorted(set(keys[0]).intersection(*keys[1:]))
    least = max(MIN_PER_DOMAIN, 11)
    if len(shared) < least:
        raise GapscopeError(
            f"the runs share {len(shared)} real images (by content): at least {least} are "
            "needed, and versions are compared against the same real set"
        )
    return {r.id: np.array([k[h] for h in shared]) for r, k in zip(runs, keys, strict=True)}


def _same_features(runs: list[Run], real: dict, level: str) -> None:
    """The shared real images must read the same in every run: else the model (or its
    preprocessing) changed, and the comparison would measure that."""
    first = np.asarray(runs[0].features(level)[real[runs[0].id][:200]])
    for r in runs[1:]:
        other = np.asarray(r.features(level)[real[r.id][:200]])
        if not np.allclose(first, other, rtol=1e-3, atol=1e-4):
            raise GapscopeError(
                f"the same real images have other features in run {r.id} than in "
                f"{runs[0].id} at {level}: the model or its preprocessing changed"
            )


def _synthetic(run: Run, cap: int, seed: int) -> np.ndarray:
    rows = np.flatnonzero(run.column("domain") == "synthetic")
    return rows[np.random.default_rng(seed).permutation(len(rows))[:cap]]


def _pair(job: CompareJob, a: Run, b: Run, real_a, real_b, levels, device: str) -> dict:
    """Version `a` against version `b`: per level, and per class and size when asked."""
    measured = a.metrics.get("params", {})  # the runs' own k and folds
    params = GapParams(
        k=measured.get("k", 5),
        folds=measured.get("folds", 5),
        resamples=job.resamples,
        seed=job.seed,
        classifier_max=job.sample,  # every image scored, so the AUC change pairs them all
    )
    rows = {"real": (real_a, real_b), "synthetic": (_synthetic(a, job.sample, job.seed),)}
    rows["synthetic"] += (_synthetic(b, job.sample, job.seed),)
    out = {"from": a.id, "to": b.id, "levels": {}}
    for level in levels:
        out["levels"][level] = _measure(a, b, level, rows, params, device)
    if job.strata:
        for column, key in (("category", "by_class"), ("size", "by_size")):
            strata = _strata(a, b, rows, column, levels, params, device)
            if strata:
                out[key] = strata
    return out


def _measure(a, b, level, rows, params, device, keep=None) -> dict:
    """One level's records of both versions and the change, on `rows` (optionally only
    those rows whose stratum is `keep`: a boolean mask per run and domain)."""
    keep = keep or {d: tuple(slice(None) for _ in rows[d]) for d in rows}
    real = np.asarray(a.features(level)[rows["real"][0][keep["real"][0]]])
    comparison = VersionComparison(real, params, device)
    x1, x2 = (
        np.asarray(r.features(level)[s[k]])
        for r, s, k in zip((a, b), rows["synthetic"], keep["synthetic"], strict=True)
    )
    x1, x2 = equal_size(x1, x2, params.seed)
    one, two = comparison.measure(x1), comparison.measure(x2)
    return {
        "from": one.records,
        "to": two.records,
        "change": comparison.change(one, two),
        "n": {"real": len(real), "synthetic": len(x1)},
    }


def _strata(a, b, rows, column, levels, params, device) -> dict:
    """Per value of `column` (a class, a size) both runs have: enough images of it in
    every domain and version, compared as the whole level is; else its counts."""
    if column not in a.rows or column not in b.rows:
        return {}
    values = {
        d: tuple(r.column(column)[x].astype(str) for r, x in zip((a, b), rows[d], strict=True))
        for d in rows
    }
    names = sorted(
        set(values["real"][0]) & set(values["synthetic"][0]) & set(values["synthetic"][1])
    )
    out = {}
    for name in names:
        keep = {d: tuple(v == name for v in values[d]) for d in values}
        counts = [int(k.sum()) for d in keep for k in keep[d]]
        if name in ("", "nan") or min(counts) < max(MIN_PER_DOMAIN, params.folds * 2):
            out[name] = {"skipped": f"fewer than {MIN_PER_DOMAIN} images in a domain or version"}
            continue
        out[name] = {
            "levels": {lv: _measure(a, b, lv, rows, params, device, keep) for lv in levels}
        }
    return out


def trend(runs: list[Run], levels: list[str]) -> dict:
    """Each run's own metrics with their intervals, per level and metric, in run order."""
    out: dict = {}
    for level in levels:
        out[level] = {}
        for metric in TREND:
            points = []
            for r in runs:
                rec = r.metrics["levels"].get(level, {}).get("metrics", {}).get(metric)
                if rec is not None:
                    points.append({"run": r.id, "value": rec["value"], "ci95": interval(rec)})
            if points:
                out[level][metric] = points
    return out


def _describe(run: Run) -> dict:
    domain = run.column("domain")
    inputs = {i.get("domain"): i for i in run.manifest.get("inputs", [])}
    return {
        "id": run.id,
        "real": int((domain == "real").sum()),
        "synthetic": int((domain == "synthetic").sum()),
        "synthetic_input": str(inputs.get("synthetic", {}).get("name", "")),
    }


def _gallery(run: Run, levels: list[str], writer) -> dict:
    """Per level, the version's synthetic images most and least realistic (realism score
    against the real set), their thumbnails copied into the published run."""
    scores, out = run.scores, {}
    if scores is None or "realism" not in scores:
        return out
    for level in levels:
        part = scores[(scores["level"] == level) & scores["realism"].notna()]
        ranked = part.sort_values("realism", ascending=False)
        out[level] = {
            "nearest": [_image(run, row, writer) for row in ranked.head(GALLERY).itertuples()],
            "farthest": [
                _image(run, row, writer) for row in ranked.tail(GALLERY)[::-1].itertuples()
            ],
        }
    return out


def _image(run: Run, row, writer) -> dict:
    thumb = run.thumb(int(row.id))
    name = ""
    if thumb is not None and thumb.is_file():
        target = writer.thumb("synthetic", run.column("hash")[int(row.id)])
        if not target.exists():
            shutil.copy2(thumb, target)
        name = target.name
    relpath = run.column("relpath")[int(row.id)] if "relpath" in run.rows else ""
    return {"row": int(row.id), "realism": float(row.realism), "thumb": name, "file": str(relpath)}


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def findings(results: dict) -> list[str]:
    """The comparison in words: per pair and level, what changed beyond noise."""
    lines = []
    for pair in results["pairs"]:
        a, b = pair["from"], pair["to"]
        for level, m in pair["levels"].items():
            lines.append(f"{level}: {b} against {a}: " + _level_words(m))
        for key, what in (("by_class", "class"), ("by_size", "size")):
            for name, entry in pair.get(key, {}).items():
                line = _stratum_words(entry)
                if line:
                    lines.append(f"{what} {name}: {line}")
    return lines


def verdict(metric: str, change: dict) -> str:
    """ "closer", "farther" or "within noise": the direction of a change beyond noise
    (coverage closer when it rises; FD and AUC when they fall)."""
    if change["within_noise"]:
        return "within noise"
    closer = change["value"] > 0 if metric == "coverage" else change["value"] < 0
    return "closer" if closer else "farther"


def _stratum_words(entry: dict) -> str:
    """A class's or size's changes beyond noise, by direction: "closer: c4 FD; farther:
    c2 coverage" ("" when nothing moved)."""
    moved: dict[str, list[str]] = {"closer": [], "farther": []}
    for level, m in entry.get("levels", {}).items():
        for metric in METRICS:
            way = verdict(metric, m["change"][metric])
            if way in moved:
                moved[way].append(f"{level} {_LABELS[metric]}")
    return "; ".join(f"{way}: {', '.join(items)}" for way, items in moved.items() if items)


_LABELS = {"fd": "FD", "coverage": "coverage", "auc": "AUC"}


def _level_words(m: dict) -> str:
    parts = [_moved(metric, m) for metric in METRICS]
    return "; ".join(parts)


def _moved(metric: str, m: dict) -> str:
    """One metric's change in words: closer or farther beyond noise, or unchanged."""
    change, before, after = m["change"][metric], m["from"][metric], m["to"][metric]
    lo, hi = change["ci95"]
    label = _LABELS[metric]
    span = (
        f"{_fmt(before['value'])} → {_fmt(after['value'])}, "
        f"change {_fmt(change['value'])} [{_fmt(lo)}, {_fmt(hi)}]"
    )
    way = verdict(metric, change)
    if way == "within noise":
        return f"{label} unchanged within noise ({span})"
    gap = change.get("gap_from", 0.0)
    if metric in ("fd", "auc") and way == "closer" and gap > 1e-12:
        share = f"{-change['value'] / gap:.0%} [{-hi / gap:.0%}, {-lo / gap:.0%}]"
        return f"{label} closer: closes {share} of the first's gap ({span})"
    return f"{label} {way} ({span})"
