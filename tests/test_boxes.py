"""Annotations in: COCO JSON, YOLO txt and Pascal VOC XML, matched to the scanned images,
every bad box skipped and said why."""

import json
from types import SimpleNamespace

import pytest

from lib.inputs.boxes import read_boxes, size_class
from lib.runtime.errors import GapscopeError
from tests.conftest import one_line

RECORDS = [
    SimpleNamespace(relpath="a.png", width=100, height=80),
    SimpleNamespace(relpath="sub/b.png", width=64, height=64),
]


def coco(tmp_path, annotations, images=None, categories=None):
    data = {
        "images": images
        or [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 2, "file_name": "sub/b.png", "width": 64, "height": 64},
        ],
        "categories": categories or [{"id": 7, "name": "plane"}, {"id": 9, "name": "car"}],
        "annotations": [
            {"id": n, "image_id": 1, "category_id": 7, **a} for n, a in enumerate(annotations)
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def reasons(boxset):
    return [(s.source, s.reason) for s in boxset.skipped]


def test_coco_boxes_become_corners_in_the_images_pixels_partial_ones_clipped(tmp_path):
    path = coco(
        tmp_path,
        [
            {"bbox": [10, 20, 30, 40]},
            {"bbox": [90, 70, 20, 20], "category_id": 9},  # over the right and bottom edges
            {"bbox": [-5, -5, 10, 10], "image_id": 2},
        ],
    )
    got = read_boxes(path, RECORDS)
    assert got.format == "coco" and got.skipped == []
    assert [(b.image, b.category, b.x0, b.y0, b.x1, b.y1) for b in got.boxes] == [
        (0, "plane", 10, 20, 40, 60),
        (0, "car", 90, 70, 100, 80),
        (1, "plane", 0, 0, 5, 5),
    ]
    assert got.categories == ["car", "plane"]


def test_every_bad_coco_box_is_skipped_with_its_reason(tmp_path):
    path = coco(
        tmp_path,
        [
            {"bbox": [10, 10, 0, 5]},
            {"bbox": [200, 10, 5, 5]},
            {"bbox": [10, 10, float("nan"), 5]},
            {"bbox": [10, 10, 5, 5], "category_id": 3},
            {"bbox": [10, 10, 5, 5], "iscrowd": 1},
            {"bbox": [10, 10, 5, 5], "image_id": 99},
            {"bbox": [99.5, 10, 5, 5]},
            {"bbox": [1, 2]},
            {"bbox": [1, 2, 3, 4], "image_id": 3},
            {"bbox": [1, 2, 3, 4]},
        ],
        images=[
            {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 3, "file_name": "sub/b.png", "width": 640, "height": 640},
        ],
    )
    got = read_boxes(path, RECORDS)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in got.boxes] == [(1, 2, 4, 6)]
    why = dict(reasons(got))
    assert why["annotation 0"].startswith("degenerate box")
    assert "lies outside the 100×80 image" in why["annotation 1"]
    assert why["annotation 2"] == "coordinates are not finite numbers"
    assert why["annotation 3"] == "category 3 is not in the file's categories"
    assert why["annotation 4"] == "a crowd region, not one object"
    assert why["annotation 5"] == "its image is not among the scanned images"
    assert "under a pixel once clipped" in why["annotation 6"]
    assert why["annotation 7"].startswith("needs image_id, category_id and bbox")
    assert "annotated as 640×640 but the file is 64×64" in why["image 3"]
    assert why["annotation 8"] == "its image is not among the scanned images"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot be read as JSON"),
        (json.dumps({"images": []}), "is not a COCO instances file"),
    ],
)
def test_unreadable_coco_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(GapscopeError) as exc:
        read_boxes(path, RECORDS, "real")
    assert message in one_line(exc) and "--real-boxes" in one_line(exc)


def test_yolo_labels_with_a_names_file(tmp_path):
    labels = tmp_path / "labels"
    (labels / "sub").mkdir(parents=True)
    (labels / "classes.txt").write_text("plane\ncar\n")
    (labels / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.25\n1 0.95 0.5 0.2 0.5\n\n5 0.5 0.5 0.1 0.1\nbad\n"
    )
    (labels / "sub" / "b.txt").write_text("1 0.25 0.25 0.5 0.5\n")
    (labels / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    got = read_boxes(labels, RECORDS)
    assert got.format == "yolo"
    assert [(b.image, b.category) for b in got.boxes] == [(0, "plane"), (0, "car"), (1, "car")]
    assert [(b.x0, b.y0, b.x1, b.y1) for b in got.boxes] == [
        pytest.approx((40, 30, 60, 50)),
        pytest.approx((85, 20, 100, 60)),
        pytest.approx((0, 0, 32, 32)),
    ]
    assert sorted(reasons(got)) == [
        ("file", "no scanned image has this name"),
        ("line 4", "class 5 has no name in classes.txt"),
        ("line 5", "needs: class cx cy w h"),
    ]


def test_yolo_without_names_is_a_one_line_error(tmp_path):
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(GapscopeError) as exc:
        read_boxes(tmp_path, RECORDS, "synthetic")
    assert "has no class name" in one_line(exc) and "classes.txt" in one_line(exc)


VOC = """<annotation><filename>{name}</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>
<object><name>plane</name><difficult>0</difficult>
<bndbox><xmin>11</xmin><ymin>21</ymin><xmax>40</xmax><ymax>60</ymax></bndbox></object>
<object><name>car</name><bndbox><xmin>5</xmin></bndbox></object>
<object><name></name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>
</object></annotation>"""


def test_pascal_voc_boxes_start_at_one_as_detectron2_reads_them(tmp_path):
    (tmp_path / "a.xml").write_text(VOC.format(name="a.png", w=100, h=80))
    (tmp_path / "b.xml").write_text(VOC.format(name="b.png", w=32, h=32))
    (tmp_path / "c.xml").write_text("<annotation><filename>")
    got = read_boxes(tmp_path, RECORDS)
    assert got.format == "voc"
    assert [(b.category, b.x0, b.y0, b.x1, b.y1) for b in got.boxes] == [("plane", 10, 20, 40, 60)]
    why = reasons(got)
    assert ("a.xml object 2", "needs name and bndbox xmin ymin xmax ymax") in why
    assert ("a.xml object 3", "has no class name") in why
    assert any("annotated as 32×32 but the file is 64×64" in r for _, r in why)
    assert any(s == "file" and r.startswith("not readable XML") for s, r in why)


def test_paths_that_are_no_annotations(tmp_path):
    with pytest.raises(GapscopeError, match="does not exist"):
        read_boxes(tmp_path / "nope.json", RECORDS)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(GapscopeError, match="no .txt .YOLO. or .xml"):
        read_boxes(tmp_path, RECORDS)
    with pytest.raises(GapscopeError, match="give a COCO instances .json"):
        read_boxes(tmp_path / "x.csv", RECORDS)


def test_coco_size_strata():
    assert size_class(31.9**2) == "small"
    assert size_class(32**2) == "medium"
    assert size_class(96**2 - 1) == "medium"
    assert size_class(96**2) == "large"
