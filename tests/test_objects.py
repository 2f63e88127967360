"""Per-object features as detectron2's ROI heads pool them: the level assignment and
ROIAlign against an independent implementation written here, boxes carried through every
preparation (centre crop, resize, the detector's test-time resize and padding), and the
crop-and-run alternative."""

import math

import numpy as np
import pytest
import torch

from lib.images import Prepare
from lib.objects import RoiPooler, crop_box

# ---- an independent reference: detectron2's assignment and torchvision's ROIAlign, in
# plain Python over numpy arrays (the algorithm as published, not the library's code)


def reference_level(box, lo=2, hi=5) -> int:
    x0, y0, x1, y1 = box
    k = math.floor(4 + math.log2(math.sqrt((x1 - x0) * (y1 - y0)) / 224 + 1e-8))
    return min(max(k, lo), hi)


def bilinear(fmap, y, x):
    """One channel-vector sample at (y, x) with ROIAlign's border rules."""
    _, h, w = fmap.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(fmap.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * fmap[:, y0, x0] + (1 - ly) * lx * fmap[:, y0, x1]
            + ly * (1 - lx) * fmap[:, y1, x0] + ly * lx * fmap[:, y1, x1])  # fmt: skip


def reference_roi_mean(fmap: np.ndarray, box, scale: float, out: int = 7) -> np.ndarray:
    """ROIAlign (aligned: half-pixel offset; adaptive sampling: ceil(bin) samples per
    bin side) on a (C, H, W) map, averaged over the out×out grid."""
    x0, y0, x1, y1 = (v * scale - 0.5 for v in box)
    bh, bw = (y1 - y0) / out, (x1 - x0) / out
    gh, gw = max(math.ceil((y1 - y0) / out), 1), max(math.ceil((x1 - x0) / out), 1)
    total = np.zeros(fmap.shape[0])
    for ph in range(out):
        for pw in range(out):
            acc = np.zeros(fmap.shape[0])
            for iy in range(gh):
                y = y0 + ph * bh + (iy + 0.5) * bh / gh
                for ix in range(gw):
                    x = x0 + pw * bw + (ix + 0.5) * bw / gw
                    acc += bilinear(fmap, y, x)
            total += acc / (gh * gw)
    return total / out**2


def test_level_assignment_matches_detectron2s_rule():
    pooler = RoiPooler()
    boxes = [(0, 0, 224, 224), (0, 0, 112, 112), (0, 0, 111.9, 112), (10, 10, 458, 458),
             (0, 0, 1000, 900), (5, 5, 15, 15), (0, 0, 50, 400), (0, 0, 447.9, 448)]  # fmt: skip
    got = pooler.assign(torch.tensor(boxes, dtype=torch.float32), [4, 8, 16, 32])
    assert (got + 2).tolist() == [reference_level(b) for b in boxes]
    assert (got + 2).tolist() == [4, 3, 2, 5, 5, 2, 3, 4]


def test_pooled_vectors_match_the_reference_on_every_assigned_level():
    rng = np.random.default_rng(0)
    size = (256, 320)  # input H, W
    maps = {f"p{k}": torch.from_numpy(rng.normal(size=(2, 5, size[0] >> k, size[1] >> k))
                                      .astype(np.float32)) for k in range(2, 7)}  # fmt: skip
    boxes = [
        torch.tensor([[3.2, 4.7, 40.1, 30.0], [0, 0, 250, 200], [100, 90, 101.5, 95]]),
        torch.tensor([[-10, 200, 60, 270], [20.5, 30.25, 160, 150]]),  # past the edges
    ]
    pooler = RoiPooler()
    roi = pooler.pool(maps, boxes, size)["roi"].numpy()
    every = pooler.pool(maps, boxes, size, every_level=True)
    assert sorted(every) == ["p2", "p3", "p4", "p5", "p6"]
    row = 0
    for image, image_boxes in enumerate(boxes):
        for box in image_boxes.tolist():
            k = reference_level(box)
            fmap = maps[f"p{k}"][image].numpy().astype(np.float64)
            want = reference_roi_mean(fmap, box, 1 / 2**k)
            assert np.allclose(roi[row], want, atol=1e-5), (box, k)
            for lv in ("p3", "p6"):
                m = maps[lv][image].numpy().astype(np.float64)
                ref = reference_roi_mean(m, box, 1 / 2 ** int(lv[1]))
                assert np.allclose(every[lv][row].numpy(), ref, atol=1e-5)
            row += 1


def box_image(h, w, box) -> np.ndarray:
    """Black, with the box (half-open, integer corners) white."""
    rgb = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    rgb[y0:y1, x0:x1] = 255
    return rgb


def bright_box(rgb) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(rgb[..., 0] > 127)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize(
    "prepare, shape",
    [
        (Prepare(), (90, 120)),
        (Prepare(crop=64), (64, 64)),
        (Prepare(crop=160), (160, 160)),  # padded
        (Prepare(resize=48), (48, 48)),
        (Prepare(resize="detector", test_size=(800, 1333)), (800, 1067)),
        (Prepare(resize="detector", test_size=(200, 240)), (180, 240)),  # the max rules
    ],
)
def test_boxes_follow_each_preparation_of_the_image_exactly(prepare, shape):
    box = (30, 20, 70, 60)
    rgb = box_image(90, 120, box)
    prepared, boxes = prepare.apply_with_boxes(rgb, np.array([box], np.float32))
    assert prepared.shape[:2] == shape
    assert prepare.prepared_size(90, 120) == shape
    assert np.allclose(boxes[0], bright_box(prepared), atol=1.0), (boxes[0], bright_box(prepared))


def test_detector_resize_is_pillows_bilinear_resize_of_the_shortest_edge():
    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    got = Prepare(resize="detector", test_size=(800, 1333)).apply(rgb)
    # the notes' formula: scale = 800 / 90; int(120 · scale + 0.5) = 1067
    want = np.asarray(Image.fromarray(rgb).resize((1067, 800), Image.BILINEAR))
    assert np.array_equal(got, want)


def test_a_crop_is_the_box_with_its_margin_square_and_padded_past_the_edge():
    rgb = box_image(90, 120, (100, 40, 120, 60))  # touching the right edge
    crop = crop_box(rgb, (100, 40, 120, 60), margin=0.5, size=40)
    assert crop.shape == (40, 40, 3)
    # the box fills the middle half; the margin past the right edge is black padding
    assert crop[12:28, 12:28].min() > 200 and crop[:, 32:].max() == 0 and crop[:8].max() == 0
