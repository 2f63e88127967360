"""A run whose rows are objects: the object example through `python -m batch run` with a
detectron2 detector, its tables and figures, the demo's views of it, and bad annotations
refused before anything is published."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_cli import assert_one_line_error, batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(object_store):
    from lib.store.runs import RunStore

    return RunStore(object_store[0]).open()


def coco_boxes(data, domain: str) -> list[tuple]:
    coco = json.loads((data / f"{domain}.json").read_text())
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    return [
        (
            names[a["image_id"]],
            str(a["category_id"]),
            a["bbox"][0],
            a["bbox"][1],
            a["bbox"][0] + a["bbox"][2],
            a["bbox"][1] + a["bbox"][3],
        )
        for a in coco["annotations"]
    ]


def test_every_annotated_box_is_a_row_pooled_as_the_roi_heads_pool_it(run, object_store):
    _, data = object_store
    m = run.manifest
    assert m["objects"]["mode"] == "roi" and m["objects"]["formats"] == {
        "real": "coco",
        "synthetic": "coco",
    }
    assert m["objects"]["pooler"]["in_features"] == ["p2", "p3", "p4", "p5"]
    assert m["objects"]["skipped"] == []
    # the scenes' sizes differ: the detector's test-time resize, from its config
    assert m["test_size"] == [320, 400] and "detector test-time resize" in m["prepare"]
    assert run.levels == ["roi"]
    objects, images = run.objects, run.images
    for domain in ("real", "synthetic"):
        mine = objects[objects["domain"] == domain]
        got = [
            (images.at[int(r.image_id), "relpath"], r.category, r.x0, r.y0, r.x1, r.y1)
            for r in mine.itertuples()
        ]
        assert got == coco_boxes(data, domain)
        assert m["counts"][domain] == len(mine)
    assert run.features("roi").shape == (len(objects), 16)
    assert set(objects["size"]) == {"small", "medium", "large"}
    assert (
        objects["image_hash"].to_numpy() == images["hash"].to_numpy()[objects["image_id"]]
    ).all()


def test_the_gap_is_measured_per_class_and_per_object_size(run):
    strata = run.metrics["objects"]
    assert set(strata["by_class"]) == {str(d) for d in range(10)}
    sizes = strata["by_size"]
    assert set(sizes) == {"small", "medium", "large"}
    measured = [s for s in sizes.values() if "levels" in s]
    assert measured, sizes
    for stratum in measured:
        fd = stratum["levels"]["roi"]["fd"]
        assert fd["value"] > 0 and fd["ci95"][0] <= fd["value"] <= fd["ci95"][1]
        assert 0 <= stratum["levels"]["roi"]["auc"]["value"] <= 1
        assert min(stratum["n"].values()) >= 20
    for name, stratum in strata["by_class"].items():
        n = run.objects[run.objects["category"] == name]["domain"].value_counts()
        assert stratum["n"] == {
            "real": int(n.get("real", 0)),
            "synthetic": int(n.get("synthetic", 0)),
        }


def test_the_demo_shows_an_object_its_image_with_the_box_and_its_nearest_objects(run):
    from PIL import Image

    from demo import overlap as views

    fig = views.overlap_figure(run, "roi", "synthetic", "domain")
    assert sum(len(t.customdata) for t in fig.data) == len(run.objects)
    gallery = views.neighbour_gallery(run, "roi", 0)
    assert len(gallery) == 8
    sizes = {"small", "medium", "large"}
    assert all(caption.split(" · ")[2].split(" ")[0] in sizes for _, caption in gallery)
    shown = Image.open(views.shown_image(run, 0, []))
    thumb = Image.open(run.thumb(0))
    # the object large beside its whole image, each with the box drawn in magenta
    assert shown.width > shown.height and thumb.size == (160, 160)
    rgb = np.asarray(shown.convert("RGB")).astype(int)
    pink = np.all(np.abs(rgb - (255, 64, 160)) < 48, axis=-1)  # a JPEG
    assert pink[:, : shown.height].any() and pink[:, shown.height + 8 :].any()


def test_boxes_for_one_domain_only_or_none_usable_are_one_line_errors(object_store, tmp_path):
    _, data = object_store
    common = [
        "run",
        "--real",
        data / "real",
        "--synthetic",
        data / "synthetic",
        "--results",
        tmp_path / "results",
        "--projection",
        "pca",
        "--no-plots",
    ]
    assert_one_line_error(
        batch(*common, "--real-boxes", data / "real.json"), "--synthetic-boxes is missing"
    )
    coco = json.loads((data / "synthetic.json").read_text())
    for image in coco["images"]:
        image["file_name"] = "elsewhere/" + image["file_name"].replace("scene", "other")
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    result = batch(
        *common, "--real-boxes", data / "real.json", "--synthetic-boxes", tmp_path / "bad.json"
    )
    assert_one_line_error(
        result,
        "no usable boxes on the synthetic images",
        "its image is not among the scanned images",
    )
    assert not (tmp_path / "results" / "latest").exists()


def test_the_overlap_view_keeps_one_class_and_size_and_the_report_tabulates_them(run):
    from demo import overlap as views
    from demo.report import blame_galleries, least_realistic_per_class, objects_section

    assert views.class_choices(run) == ["all", *[str(d) for d in range(10)]]
    objects = run.objects
    fig = views.overlap_figure(run, "roi", "real", category="3", size="small")
    ids = np.concatenate([np.asarray(t.customdata) for t in fig.data])
    want = objects.index[(objects["category"] == "3") & (objects["size"] == "small")]
    assert sorted(ids.tolist()) == sorted(want.tolist()) and len(ids)
    every = views.overlap_figure(run, "roi", "real", category="no such class")
    assert sum(len(t.customdata) for t in every.data) == len(objects)  # unknown: all kept
    table = objects_section(run)
    assert "| class **7** |" in table and "| size **small** |" in table and "roi AUC" in table
    blame = blame_galleries(run, "roi", category="7", size="medium")
    shown = [c for gallery in ("least_realistic", "uncovered_real") for _, c in blame[gallery]]
    assert shown and all(" · 7 · medium" in c for c in shown)
    worst = least_realistic_per_class(run, "roi")
    classes = [c.split(" · ")[1] for _, c in worst]
    assert classes == sorted(classes) and len(set(classes)) == 10
    assert all(c.split(" ")[1] == "synthetic" and "· realism " in c for _, c in worst)
