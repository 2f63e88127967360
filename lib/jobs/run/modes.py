"""The modes stage: every image in a mode of both domains' features at one level, each
mode's ratio synthetic/real with its interval, ranked by its share of the mismatch, named
in words from a few of its thumbnails (lib.analysis.gap.modes); into metrics.json."""

from __future__ import annotations

import numpy as np

from lib.analysis.gap.modes import Modes, look, n_modes, names, sentence, total_variation
from lib.jobs.run.config import ModeParams, chosen_level
from lib.jobs.run.context import Context

EXAMPLES = 4  # thumbnails per mode and domain in metrics.json (nearest its centre)
NAMED_BY = 12  # images per mode whose thumbnails name it
LOOK_SIDE = 32  # the thumbnails' side for their looks (brightness does not need more)


def find_modes(params: ModeParams, vectors: dict, rows: dict, table, ctx: Context):
    """The modes' record for metrics.json, or None when skipped."""
    level = chosen_level(params.modes_level, list(vectors), "modes-level")
    if level is None:
        return None
    real, synthetic = rows["real"], rows["synthetic"]
    x = np.asarray(vectors[level])
    k = n_modes(len(real) + len(synthetic), params.modes)
    with ctx.stages("modes", f"{k} modes at {level}"):
        fitted = Modes(k, seed=ctx.seed).fit(x[real], x[synthetic])
        order = np.r_[real, synthetic]  # fitted.labels_ are in this order
        labels = np.empty(len(x), dtype=np.int32)
        labels[order] = fitted.labels_
        distance = np.empty(len(x))
        distance[order] = fitted.distances_
        words = _names(labels, distance, table, ctx)
        modes = []
        for row in fitted.table_:
            mine = np.flatnonzero(labels == row["mode"])
            mine = mine[np.argsort(distance[mine], kind="stable")]
            examples = {
                domain: [int(r) for r in mine[np.isin(mine, rows[domain])][:EXAMPLES]]
                for domain in ("real", "synthetic")
            }
            name = ", ".join(words.get(row["mode"], []))
            modes.append(row | {"name": name, "examples": examples, "says": sentence(row, name)})
        return {
            "level": level,
            "k": k,
            "total_variation": total_variation(fitted.table_),
            "rule": (
                f"k-means ({k} modes) on the first 10 principal components of both domains' "
                "standardised features; ratio = share of synthetic / share of real, Katz's "
                "95 % interval; ranked by share of Σ|p_s − p_r|"
            ),
            "modes": modes,
        }


def _names(labels: np.ndarray, distance: np.ndarray, table, ctx: Context) -> dict[int, list]:
    """Each mode's words from the thumbnails of its NAMED_BY images nearest its centre
    (none for given embeddings, which have no thumbnails)."""
    thumbs = table["thumb"].to_numpy() if "thumb" in table else None
    if thumbs is None or not len(thumbs) or not all(thumbs):
        return {}
    from PIL import Image

    picked = []
    for mode in np.unique(labels):
        mine = np.flatnonzero(labels == mode)
        picked.extend(mine[np.argsort(distance[mine], kind="stable")][:NAMED_BY])
    picked = np.asarray(picked)
    looks = []
    for r in picked:
        with Image.open(ctx.writer.dir / "thumbs" / thumbs[r]) as image:
            small = image.convert("RGB").resize((LOOK_SIDE, LOOK_SIDE))
            looks.append(look(np.asarray(small)))
    stats = {name: np.array([v[name] for v in looks]) for name in looks[0]}
    categories = None
    if "category" in table:
        categories = np.array(
            ["" if c is None else str(c) for c in table["category"].to_numpy()[picked]]
        )
    return names(stats, labels[picked], categories)
