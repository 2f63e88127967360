"""A detector's accuracy on a test set, as COCO measures it, with intervals and per-object
outcomes.

- `evaluate(truth, found)`: pycocotools' COCOeval (bbox) on a ground truth and a list
  of detections; the numbers are the ones users publish (AP at IoU .50:.95, AP50, AP75,
  AP small/medium/large, AR@100), and per class AP, AP50 and AP75.
- Intervals: a bootstrap over test images (the unit a test set samples). COCOeval's
  per-image matching (`evalImgs`) does not change when images are resampled, only which
  images count and how often, so each resample re-accumulates those matches with the
  images' multiplicities (`_Matches.precision`, COCOeval.accumulate's arithmetic, each
  detection counted as often as its image was drawn): with every weight 1 it gives
  COCOeval's precision exactly, and 200 resamples of 300 images take ~0.1 s.
  AP is biased upwards in small test sets (the precision envelope takes maxima: at 200
  images AP_small read 0.222 on average for a population value of 0.189, AP_large 0.258
  for 0.244), and the percentile interval, which keeps that bias, held the population's
  AP in 85 % of draws. The interval is the bias-corrected normal one (the estimate less
  the resamples' mean bias, ± 1.96 of their spread): over 200 draws of 200 test images
  it held the population's AP, AP50, each size and each class in 90.5-96.5 %. It need not
  contain the estimate: the estimate is the biased figure COCO reports.
- `outcomes`: per real object, detected (matched at IoU 0.5 by a detection scoring at
  least `score`), poorly localised (its best same-class detection overlaps 0.1–0.5) or
  missed; per detection at that score, a true positive or a false positive of one kind
  (duplicate, localisation, wrong class, background) with its nearest ground-truth box.
  COCO matches greedily in score order, so a detection's match depends only on those
  scoring higher: COCOeval's matches hold at any score threshold.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass

import numpy as np

from lib.inputs.boxes import size_class

AREAS = ("all", "small", "medium", "large")  # COCOeval's areaRng order
STRICT = 5  # index of IoU 0.75 in COCOeval's thresholds .50:.05:.95
RESAMPLES = 200
# fewer ground-truth objects than this in a figure (a class, a size): no interval. AP on
# few objects is dominated by its small-sample bias: at 100 test images (~20 small
# objects) the small objects' interval held the population's AP_small in 88 % of draws
MIN_OBJECTS = 30
BATCH_FLOATS = 2_000_000  # a batch of resamples' largest array: ~16 MB, six of them at once
LOCALISED = 0.1  # IoU from which a near miss counts as poorly localised, not absent


@dataclass
class Evaluation:
    """One detector on one test set."""

    summary: dict  # AP, AP50, AP75, AP_small, AP_medium, AP_large, AR100: COCOeval's stats
    per_class: dict  # category name: {AP, AP50, AP75, n (its ground-truth objects)}
    cocoeval: object  # pycocotools.cocoeval.COCOeval, evaluated and accumulated

    @property
    def class_names(self) -> list[str]:
        """The categories' names in COCOeval's order (its precision array's K axis)."""
        e = self.cocoeval
        return [c["name"] for c in e.cocoGt.loadCats(e.params.catIds)]


def evaluate(truth: dict, found: list[dict]) -> Evaluation:
    """COCOeval (bbox) of `found` (COCO results: image_id, category_id, bbox, score)
    against `truth` (a COCO instances dict, checked by lib.inputs.detections)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = copy.deepcopy(truth)  # COCOeval marks the annotations it ignores
        gt.createIndex()
        if found:
            dt = gt.loadRes([dict(d) for d in found])  # loadRes adds area and id in place
        else:  # loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = {**{k: truth[k] for k in ("images", "categories")}, "annotations": []}
            dt.createIndex()
        e = COCOeval(gt, dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    s = e.stats
    summary = {
        "AP": s[0],
        "AP50": s[1],
        "AP75": s[2],
        "AP_small": s[3],
        "AP_medium": s[4],
        "AP_large": s[5],
        "AR100": s[8],
    }
    names = {c["id"]: c["name"] for c in truth["categories"]}
    precision = e.eval["precision"][..., 0, -1]  # (T, R, K) at area all, 100 detections
    counts = _objects_per_category(truth)
    per_class = {}
    for k, cat in enumerate(e.params.catIds):
        p = precision[:, :, k]
        per_class[names[cat]] = {
            "AP": _mean_present(p),
            "AP50": _mean_present(p[0]),
            "AP75": _mean_present(p[STRICT]),
            "n": counts.get(cat, 0),
        }
    return Evaluation({k: float(v) for k, v in summary.items()}, per_class, e)


def _evaluated(e, k: int, a: int):
    """(image index, COCOeval's per-image result) of category k in area range a, at its
    largest maxDets, for the images that have one (evalImgs is laid out category, area,
    image)."""
    n_images, n_areas = len(e.params.imgIds), len(e.params.areaRng)
    start = (k * n_areas + a) * n_images
    for i in range(n_images):
        if (x := e.evalImgs[start + i]) is not None:
            yield i, x


def _objects_per_category(truth: dict) -> dict[int, int]:
    out: dict[int, int] = {}
    for a in truth["annotations"]:
        if not a.get("iscrowd"):
            out[a["category_id"]] = out.get(a["category_id"], 0) + 1
    return out


def _mean_present(p: np.ndarray) -> float:
    """COCOeval's summary of a precision slice: the mean where a category was present
    (-1 marks absent), -1 when none was."""
    return float(_means_present(p[None])[0])


def _means_present(p: np.ndarray) -> np.ndarray:
    """`_mean_present` of each slice along the first axis (one per resample)."""
    flat = p.reshape(len(p), -1)
    present = flat > -1
    counts = present.sum(axis=1)
    sums = np.where(present, flat, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), -1.0)


class _Matches:
    """COCOeval's per-image matches at 100 detections, per (category, area), gathered
    once and sorted by score as accumulate sorts them, for re-accumulation with image
    multiplicities."""

    def __init__(self, e):
        p = e.params
        self.n_images = len(p.imgIds)
        self.shape = (len(p.iouThrs), len(p.recThrs), len(p.catIds), len(p.areaRng))
        self.recall_points = np.asarray(p.recThrs)
        self.cells = {}
        for k in range(len(p.catIds)):
            for a in range(len(p.areaRng)):
                found = list(_evaluated(e, k, a))
                if found:
                    self.cells[k, a] = self._cell(found, p.maxDets[-1])

    @staticmethod
    def _cell(found: list, max_det: int) -> dict:
        scores = np.concatenate([np.asarray(x["dtScores"][:max_det]) for _, x in found])
        order = np.argsort(-scores, kind="mergesort")  # as accumulate sorts
        image = np.concatenate([np.full(len(x["dtScores"][:max_det]), i) for i, x in found])
        matched = np.concatenate([x["dtMatches"][:, :max_det] for _, x in found], axis=1)
        ignored = np.concatenate([x["dtIgnore"][:, :max_det] for _, x in found], axis=1)
        objects = np.zeros(max(i for i, _ in found) + 1)
        for i, x in found:
            objects[i] += np.count_nonzero(np.asarray(x["gtIgnore"]) == 0)
        return {
            "image": image[order],
            "tp": (matched[:, order] > 0) & ~ignored[:, order].astype(bool),
            "fp": (matched[:, order] == 0) & ~ignored[:, order].astype(bool),
            "objects": objects,
        }

    def subset(self, images: np.ndarray) -> _Matches:
        """The matches of `images` only (indices into the test set's images, no
        repeats), renumbered 0..len(images)−1: a test set drawn from a larger one, whose
        COCO evaluation this equals (an image's matches do not depend on the others)."""
        out = object.__new__(_Matches)
        out.n_images, out.shape, out.recall_points = len(images), self.shape, self.recall_points
        position = np.full(self.n_images, -1)
        position[images] = np.arange(len(images))
        out.cells = {}
        for key, cell in self.cells.items():
            keep = position[cell["image"]] >= 0
            objects = np.zeros(len(images))
            known = images < len(cell["objects"])
            objects[known] = cell["objects"][images[known]]
            out.cells[key] = {
                "image": position[cell["image"][keep]],
                "tp": cell["tp"][:, keep],
                "fp": cell["fp"][:, keep],
                "objects": objects,
            }
        return out

    def batch_size(self) -> int:
        """How many resamples to accumulate at once: vectorised over resamples, but
        their (B, T, detections) counts and (B, T, R, K, A) answer kept to BATCH_FLOATS."""
        t, r, k, a = self.shape
        largest = max((c["tp"].shape[1] for c in self.cells.values()), default=1)
        return int(np.clip(BATCH_FLOATS // max(t * largest, r * t * k * a), 1, 50))

    def objects(self, names: list[str]) -> dict[str, float]:
        """The ground-truth objects (not ignored) each of `summaries`' figures counts."""

        def total(keys) -> float:
            return float(sum(self.cells[key]["objects"].sum() for key in keys if key in self.cells))

        classes = range(self.shape[2])
        out = {f: total((k, 0) for k in classes) for f in ("AP", "AP50", "AP75")}
        out.update({f"AP_{a}": total((k, i) for k in classes) for i, a in enumerate(AREAS) if i})
        out.update({f"class:{name}": total([(k, 0)]) for k, name in enumerate(names)})
        return out

    def figures(self, weights: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """`summaries` of every row of `weights` (resamples × images), in batches."""
        parts: dict[str, list] = {}
        batch = self.batch_size()
        for start in range(0, len(weights), batch):
            precision = self.precision(weights[start : start + batch])
            for figure, values in summaries(precision, names).items():
                parts.setdefault(figure, []).append(values)
        return {figure: np.concatenate(values) for figure, values in parts.items()}

    def precision(self, weights: np.ndarray | None = None) -> np.ndarray:
        """(T, R, K, A) precision at the recall points, -1 where a category has no
        objects; `weights`: how often each image counts (None: once), or a (B, images)
        batch of such weights for a (B, T, R, K, A) answer."""
        batch = weights is not None and np.ndim(weights) == 2
        w = np.ones((1, self.n_images)) if weights is None else np.atleast_2d(weights)
        w = w.astype(float)
        out = -np.ones((len(w), *self.shape))
        for (k, a), cell in self.cells.items():
            # each detection counted as often as its image was drawn: the same precision
            # at the recall points as repeating it (a run of copies of one true positive
            # rises to its last copy's precision, of a false positive keeps its first
            # copy's recall), at no copying
            per_detection = w[:, cell["image"]][:, None, :]  # (B, 1, D)
            objects = w[:, : len(cell["objects"])] @ cell["objects"]  # (B,)
            present = objects > 0
            if present.any():
                out[present, :, :, k, a] = self._interpolated(
                    cell["tp"] * per_detection[present],
                    cell["fp"] * per_detection[present],
                    objects[present],
                )
        return out if batch else out[0]

    def _interpolated(self, tp: np.ndarray, fp: np.ndarray, objects: np.ndarray) -> np.ndarray:
        """COCOeval.accumulate's precision at the recall points, per resample and IoU
        threshold ((B, T, D) counts in). Recalls are compared as COCOeval compares them
        (tp / objects in floats against its recall points), one search per row:
        offsetting the rows into one array to search would round 7/20 against 0.35
        differently, and counting the recalls below each point was 3× slower."""
        b, t, d = tp.shape
        if d == 0:
            return np.zeros((b, t, len(self.recall_points)))
        tp_sum = np.cumsum(tp, axis=2)
        fp_sum = np.cumsum(fp, axis=2)
        rc = tp_sum / objects[:, None, None]
        pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        pr = np.maximum.accumulate(pr[..., ::-1], axis=2)[..., ::-1]  # the precision envelope
        inds = np.empty((b, t, len(self.recall_points)), dtype=np.intp)
        for i in range(b):
            for row in range(t):
                inds[i, row] = rc[i, row].searchsorted(self.recall_points, side="left")
        # past the last detection the precision is 0: one column of zeros to point at
        padded = np.concatenate([pr, np.zeros((b, t, 1))], axis=2)
        return np.take_along_axis(padded, inds, axis=2)


def summaries(precision: np.ndarray, names: list[str]) -> dict:
    """The figures `evaluate` reports, from a (T, R, K, A) precision array, or arrays of
    them per resample from a (B, T, R, K, A) one."""
    p = precision if precision.ndim == 5 else precision[None]
    out = {
        "AP": _means_present(p[..., 0]),
        "AP50": _means_present(p[:, 0, :, :, 0]),
        "AP75": _means_present(p[:, STRICT, :, :, 0]),
        **{f"AP_{a}": _means_present(p[..., i]) for i, a in enumerate(AREAS) if i},
        **{f"class:{name}": _means_present(p[:, :, :, k, 0]) for k, name in enumerate(names)},
    }
    return out if precision.ndim == 5 else {k: float(v[0]) for k, v in out.items()}


def bootstrap(
    evaluation: Evaluation,
    resamples: int = RESAMPLES,
    seed: int = 0,
    images: np.ndarray | None = None,
    matches: _Matches | None = None,
) -> dict:
    """95 % bias-corrected normal bootstrap intervals over test images (the estimate
    less the resamples' bias, ± 1.96 of their spread) for AP, AP50, AP75, AP per size
    and AP per class (`class:NAME`): {figure: [lo, hi]}, None where it counts fewer than
    MIN_OBJECTS objects or over a tenth of the resamples had none of them. `images`:
    evaluate on those test images only; `matches`: the evaluation's, when gathered."""
    matches = matches or _Matches(evaluation.cocoeval)
    if images is not None:
        matches = matches.subset(np.asarray(images))
    names = evaluation.class_names
    point = summaries(matches.precision(), names)
    rng = np.random.default_rng(seed)
    n = matches.n_images
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
    draws = matches.figures(weights, names)
    objects = matches.objects(names)
    out = {}
    for figure, value in point.items():
        values = draws[figure]
        ok = values > -1
        if value < 0 or ok.mean() < 0.9 or objects[figure] < MIN_OBJECTS:
            out[figure] = None
            continue
        centre = 2 * value - values[ok].mean()  # less the bias the resamples show
        half = 1.96 * values[ok].std(ddof=1)
        out[figure] = [float(max(0.0, centre - half)), float(min(1.0, centre + half))]
    return out


OBJECT_OUTCOMES = ("detected", "poorly localised", "missed")
DETECTION_OUTCOMES = ("true positive", "duplicate", "wrong class", "localisation", "background")
OBJECT_COLUMNS = ["annotation", "image_id", "file_name", "category", "x0", "y0", "x1", "y1"]
OBJECT_COLUMNS += ["area", "size", "outcome", "iou", "score"]
DETECTION_COLUMNS = ["image_id", "file_name", "category", "x0", "y0", "x1", "y1", "score"]
DETECTION_COLUMNS += ["outcome", "nearest", "nearest_category", "nearest_iou"]


def outcomes(evaluation: Evaluation, score: float = 0.5):
    """(objects, detections): pandas tables of what happened to each ground-truth object
    (crowd regions left out) and to each detection scoring at least `score`, at IoU 0.5
    (see the module's docstring). A false positive is, in this order, a duplicate (its
    class's object was already taken), of the wrong class (IoU ≥ 0.5 with another
    class's object), poorly localised (IoU 0.1–0.5 with its class's) or background;
    `nearest` is the ground-truth annotation it overlaps most."""
    import pandas as pd

    e = evaluation.cocoeval
    matches = _image_matches(e)
    names = {c["id"]: c["name"] for c in e.cocoGt.loadCats(e.cocoGt.getCatIds())}
    objects, detections = [], []
    for image_id in e.params.imgIds:
        taken, scored = matches.get(image_id, ({}, {}))
        file_name = e.cocoGt.imgs[image_id].get("file_name", "")
        truth = [a for a in e.cocoGt.imgToAnns.get(image_id, []) if not a.get("iscrowd")]
        found = [d for d in e.cocoDt.imgToAnns.get(image_id, []) if d["id"] in scored]
        found = [d for d in found if d["score"] >= score]
        iou = _ious(found, truth)
        same = np.array([[d["category_id"] == g["category_id"] for g in truth] for d in found])
        same = same.reshape(iou.shape).astype(bool)
        position = {d["id"]: i for i, d in enumerate(found)}
        for j, g in enumerate(truth):
            column = np.where(same[:, j], iou[:, j], 0.0)
            best = int(column.argmax()) if found else -1
            d = position.get(taken.get(g["id"], -1))
            if d is not None:  # taken by a detection scoring at least `score`
                outcome, overlap, s = "detected", float(iou[d, j]), found[d]["score"]
            elif best >= 0 and column[best] >= LOCALISED:
                outcome, overlap, s = "poorly localised", float(column[best]), found[best]["score"]
            else:
                outcome, overlap, s = "missed", float(column[best]) if best >= 0 else 0.0, None
            objects.append(
                [_source(g), image_id, file_name, names[g["category_id"]], *_corners(g["bbox"])]
                + [g["area"], size_class(g["area"]), outcome, overlap, s]
            )
        for i, d in enumerate(found):
            outcome = "true positive" if scored[d["id"]] else _false_positive(iou[i], same[i])
            near = int(iou[i].argmax()) if truth else -1
            detections.append(
                [image_id, file_name, names[d["category_id"]], *_corners(d["bbox"]), d["score"]]
                + [outcome, _source(truth[near]) if near >= 0 else None]
                + [names[truth[near]["category_id"]] if near >= 0 else None]
                + [float(iou[i, near]) if near >= 0 else 0.0]
            )
    return (
        pd.DataFrame(objects, columns=OBJECT_COLUMNS),
        pd.DataFrame(detections, columns=DETECTION_COLUMNS),
    )


def _image_matches(e) -> dict:
    """Per image: ({object id: the detection COCO matched to it at IoU 0.5},
    {detection id: whether it is a true positive}) over the detections COCO kept (its
    best 100 per class and image, crowd matches left out)."""
    out: dict = {}
    for k in range(len(e.params.catIds)):
        for i, x in _evaluated(e, k, 0):  # area "all"
            taken, scored = out.setdefault(e.params.imgIds[i], ({}, {}))
            for g, d in zip(x["gtIds"], x["gtMatches"][0], strict=True):
                if d:
                    taken[g] = int(d)
            for d, m, ignored in zip(x["dtIds"], x["dtMatches"][0], x["dtIgnore"][0], strict=True):
                if not ignored:  # a detection matched to a crowd region is neither
                    scored[d] = bool(m)
    return out


def _ious(found: list[dict], truth: list[dict]) -> np.ndarray:
    """(detections, objects) IoU of their boxes."""
    return box_ious([d["bbox"] for d in found], [g["bbox"] for g in truth])


def box_ious(a: list, b: list) -> np.ndarray:
    """(len(a), len(b)) IoU of [x, y, w, h] boxes, by pycocotools (no crowd rule)."""
    from pycocotools import mask as mask_utils

    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return np.asarray(mask_utils.iou(list(a), list(b), [0] * len(b))).reshape(len(a), len(b))


def _false_positive(iou: np.ndarray, same: np.ndarray) -> str:
    own = np.where(same, iou, 0.0).max(initial=0.0)
    other = np.where(same, 0.0, iou).max(initial=0.0)
    if own >= 0.5:
        return "duplicate"
    if other >= 0.5:
        return "wrong class"
    return "localisation" if own >= LOCALISED else "background"


def _source(annotation: dict):
    """The annotation's id in the user's file (lib.inputs.detections renumbers them:
    COCOeval takes id 0 for "unmatched")."""
    return annotation.get("source_id", annotation["id"])


def _corners(bbox) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]
