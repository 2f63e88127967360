"""Constructed test sets and a detector with known behaviour, for tests/test_detections.py."""

from __future__ import annotations

import numpy as np

CATEGORIES = [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}, {"id": 5, "name": "dog"}]
SIDE = 320


def scene(n_images: int, rng: np.random.Generator, recall=(0.8, 0.6, 0.4), first_id: int = 1):
    """(truth, detections): COCO ground truth of `n_images` images with 0-5 objects of
    three classes and mixed sizes, and a detector that finds an object of class c with
    probability recall[c] (box jittered, score high), adds false positives (low scores,
    random boxes) and now and then names the wrong class."""
    images, annotations, found = [], [], []
    for i in range(first_id, first_id + n_images):
        images.append({"id": i, "file_name": f"img_{i:05d}.png", "width": SIDE, "height": SIDE})
        for _ in range(int(rng.integers(0, 6))):
            c = int(rng.integers(0, 3))
            w, h = (float(v) for v in rng.uniform(12, 150, 2))
            x, y = float(rng.uniform(0, SIDE - w)), float(rng.uniform(0, SIDE - h))
            ann_id = len(annotations) + 1 + first_id * 10
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": i,
                    "category_id": CATEGORIES[c]["id"],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            if rng.random() < recall[c]:
                jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
                wrong = rng.random() < 0.05
                category = CATEGORIES[(c + 1) % 3 if wrong else c]["id"]
                found.append(
                    {
                        "image_id": i,
                        "category_id": category,
                        "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                        "score": float(rng.uniform(0.3, 1.0)),
                    }
                )
        for _ in range(int(rng.poisson(1.0))):
            w, h = (float(v) for v in rng.uniform(12, 100, 2))
            category = CATEGORIES[int(rng.integers(0, 3))]["id"]  # drawn in this order
            x, y = float(rng.uniform(0, SIDE - w)), float(rng.uniform(0, SIDE - h))
            found.append(
                {
                    "image_id": i,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "score": float(rng.uniform(0.0, 0.7)),
                }
            )
    for n, a in enumerate(annotations):
        a["id"] = n + 1
    truth = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    return truth, found


def covered_only(object_store, into):
    """A copy of the object example's store (`into`/results) with a detector that finds
    exactly the real objects some synthetic object covers, evaluated on the example's
    real test set (data/real.json) through the CLI: (results folder, the CLI's result,
    the base run, which real objects are covered, the ground truth)."""
    import json
    import shutil

    from lib.store.runs import RunStore
    from tests.conftest import batch

    results = into / "results"
    shutil.copytree(object_store[0], results, symlinks=True)
    truth_file = object_store[1] / "real.json"
    base = RunStore(results).open()
    rows = base.objects[base.objects["domain"] == "real"]
    covered = base.scores.set_index("id")["covered"].reindex(rows["id"]).fillna(False)
    truth = json.loads(truth_file.read_text())
    assert len(truth["annotations"]) == len(rows)  # the run kept every box (none clipped)
    found = [
        {**{k: a[k] for k in ("image_id", "category_id", "bbox")}, "score": 0.9}
        for a, hit in zip(truth["annotations"], covered.to_numpy(), strict=True)
        if hit
    ]
    (into / "pred.json").write_text(json.dumps(found))
    result = batch(
        "evaluate", "detections", "--gt", str(truth_file),
        "--predictions", f"covered-only={into / 'pred.json'}", "--results", str(results),
    )  # fmt: skip
    return results, result, base, covered.to_numpy(), truth


DROPS = (0.0, 0.15, 0.3, 0.45, 0.6, 0.75)  # share of the objects each variant's detector misses


def drop_variants():
    """(gaps, evaluations) of six variants on one test set: each variant's detector finds
    each object unless the object's fixed draw falls under the variant's drop (so a
    worse variant misses a superset of what a better one misses), plus the same false
    positives: its AP falls with the drop by construction. The gap metrics at p3: `fd`
    grows with the drop, `coverage` falls with it, `noise` is random per variant."""
    from lib.analysis import detection

    rng = np.random.default_rng(0)
    truth, _ = scene(150, rng)
    draw = rng.random(len(truth["annotations"]))
    false = [
        {"image_id": int(i), "category_id": 1, "bbox": [5.0, 5.0, 30.0, 30.0], "score": 0.2}
        for i in rng.integers(1, 151, 60)
    ]
    evaluations, gaps = {}, {}
    for k, drop in enumerate(DROPS):
        found = [
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [v + 1.0 for v in a["bbox"][:2]] + a["bbox"][2:],
                "score": 0.5 + 0.5 * d,
            }
            for a, d in zip(truth["annotations"], draw, strict=True)
            if d >= drop
        ]
        evaluations[f"v{k}"] = detection.evaluate(truth, found + false)
        gaps[f"v{k}"] = {
            "p3": {"fd": 10 * drop + 1, "coverage": 0.9 - drop, "noise": float(rng.random())}
        }
    return gaps, evaluations


def variant_runs(published_run, into, variants):
    """Five runs standing for five synthetic variants, in a store at `into`/results:
    copies of one published run whose metrics.json says, at every level, coverage
    0.9 − drop and FD 10 · drop + 1, each with its variant's detector (`drop_variants`)
    evaluated there on the same test set. (results folder, the runs' ids)."""
    import json
    import shutil

    from lib.jobs.detections import DetectionsJob, run_detections
    from lib.store.runs import RunStore

    _, evaluations = variants
    root = into / "results"
    (root / "runs").mkdir(parents=True)
    truth = next(iter(evaluations.values())).cocoeval.cocoGt.dataset
    (into / "gt.json").write_text(json.dumps(truth))
    ids = []
    for k, drop in enumerate(DROPS[:5]):
        run_id = f"20990101-00000{k}-var{k}"
        shutil.copytree(published_run.dir, root / "runs" / run_id)
        metrics_file = root / "runs" / run_id / "metrics.json"
        metrics = json.loads(metrics_file.read_text())
        for level in metrics["levels"].values():
            level["metrics"]["coverage"]["value"] = 0.9 - drop
            level["metrics"]["fd"]["value"] = 10 * drop + 1
        metrics_file.write_text(json.dumps(metrics))
        found = [
            {key: d[key] for key in ("image_id", "category_id", "bbox", "score")}
            for d in evaluations[f"v{k}"].cocoeval.cocoDt.dataset["annotations"]
        ]
        (into / f"v{k}.json").write_text(json.dumps(found))
        job = DetectionsJob(
            truth=into / "gt.json", predictions=[f"det={into / f'v{k}.json'}"], run_id=run_id
        )
        job.resamples = 50
        ids.append(run_detections(job, RunStore(root)).id)
    return root, ids
