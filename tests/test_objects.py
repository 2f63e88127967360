"""Per-object features as detectron2's ROI heads pool them: the level assignment and
ROIAlign against an independent implementation written here, boxes carried through every
preparation (centre crop, resize, the detector's test-time resize and padding), and the
crop-and-run alternative."""

import math

import numpy as np
import pytest
import torch

from lib.features.objects import RoiPooler
from lib.inputs.images import Prepare
from lib.inputs.objects import ObjectImages, crop_box

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
    return (
        (1 - ly) * (1 - lx) * fmap[:, y0, x0]
        + (1 - ly) * lx * fmap[:, y0, x1]
        + ly * (1 - lx) * fmap[:, y1, x0]
        + ly * lx * fmap[:, y1, x1]
    )


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
    boxes = [
        (0, 0, 224, 224),
        (0, 0, 112, 112),
        (0, 0, 111.9, 112),
        (10, 10, 458, 458),
        (0, 0, 1000, 900),
        (5, 5, 15, 15),
        (0, 0, 50, 400),
        (0, 0, 447.9, 448),
    ]
    got = pooler.assign(torch.tensor(boxes, dtype=torch.float32), [4, 8, 16, 32])
    assert (got + 2).tolist() == [reference_level(b) for b in boxes]
    assert (got + 2).tolist() == [4, 3, 2, 5, 5, 2, 3, 4]


def test_pooled_vectors_match_the_reference_on_every_assigned_level():
    rng = np.random.default_rng(0)
    size = (256, 320)  # input H, W
    maps = {
        f"p{k}": torch.from_numpy(
            rng.normal(size=(2, 5, size[0] >> k, size[1] >> k)).astype(np.float32)
        )
        for k in range(2, 7)
    }
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


# ---- end to end through a detectron2 detector's own FPN (a small one, random weights)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    from lib.features.backbones import create_backbone
    from tests.test_detectron2 import Spec, build

    root = tmp_path_factory.mktemp("d2")
    config, ckpt = build(root, Spec(), INPUT={"MIN_SIZE_TEST": 448, "MAX_SIZE_TEST": 800})
    return create_backbone("detectron2", ckpt, config=config)


@pytest.fixture(scope="module")
def object_images(tmp_path_factory):
    """Two images of different sizes and aspects, boxes of every level's size."""
    from PIL import Image

    from lib.inputs.images import open_folder
    from lib.inputs.objects import ObjectImages, object_key

    root = tmp_path_factory.mktemp("objects")
    rng = np.random.default_rng(3)
    for name, (h, w) in {"a.png": (90, 120), "b.png": (70, 70)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    image_set = open_folder(root, "real", Prepare())
    boxes = [
        np.array(
            [[0, 0, 120, 90], [10, 10, 70, 60], [30, 20, 55, 45], [100, 70, 112, 85]], np.float32
        ),
        np.array([[5, 5, 40, 60], [60, 60, 70, 70]], np.float32),
    ]
    items = [(image_set, r) for r in image_set.records]
    keys = [[object_key(r.hash, b) for b in bs] for (_, r), bs in zip(items, boxes, strict=True)]
    return ObjectImages(items, boxes, keys)


def test_objects_are_pooled_from_the_maps_of_the_image_the_detector_sees(detector, object_images):
    """Each image alone, resized by the notes' formula with Pillow, through the backbone;
    each box scaled with it and pooled by the reference on the reference's level."""
    from PIL import Image

    from lib import extract_objects

    assert detector.info["test_size"] == [448, 800]
    assert detector.info["roi_pooler"]["in_features"] == ["p2", "p3", "p4", "p5"]
    prepare = Prepare(resize="detector", test_size=(448, 800))
    out = extract_objects(detector, object_images, prepare, "roi", batch_size=1)
    vectors, cached = out.vectors, out.cached
    assert cached == 0 and list(vectors) == ["roi"] and vectors["roi"].shape == (6, 16)
    row, levels = 0, []
    for (_, record), boxes in zip(object_images.items, object_images.boxes, strict=True):
        rgb = np.asarray(Image.open(record.path).convert("RGB"))
        h, w = rgb.shape[:2]
        scale = 448 / min(h, w)
        nh, nw = (int(h * scale + 0.5), int(w * scale + 0.5))
        if max(nh, nw) > 800:
            nh, nw = int(h * 800 / max(h, w) + 0.5), int(w * 800 / max(h, w) + 0.5)
        resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
        maps = detector(resized[None])
        for box in boxes:
            scaled = box * np.array([nw / w, nh / h, nw / w, nh / h])
            k = reference_level(scaled)
            levels.append(k)
            want = reference_roi_mean(maps[f"p{k}"][0].numpy().astype(np.float64), scaled, 1 / 2**k)
            got = vectors["roi"][row]
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (box, k)
            row += 1
    assert sorted(set(levels)) == [2, 3, 4, 5]


@pytest.mark.parametrize("mode", ["roi", "levels", "images"])
def test_31_a_vector_does_not_depend_on_its_batch_and_the_cache_gives_a_fresh_ones(
    detector, object_images, tmp_path, mode
):
    """Every object (and image) of a batch, the smaller image's border boxes included,
    equals its image computed alone; vectors cached at one batch size are what a fresh
    run at another computes (the cache's key has no batch size)."""
    from lib import extract_images, extract_objects
    from lib.features.cache import FeatureCache

    prepare = Prepare(resize="detector", test_size=(448, 800))

    def vectors(batch_size, items=object_images, cache=None):
        if mode == "images":
            got = extract_images(detector, items.items, prepare, batch_size=batch_size, cache=cache)
        else:
            got = extract_objects(
                detector, items, prepare, mode, batch_size=batch_size, cache=cache
            )
        return got.vectors, got.cached

    alone = {lv: [] for lv in vectors(1)[0]}
    for i in range(len(object_images.items)):
        one = ObjectImages(
            object_images.items[i : i + 1],
            object_images.boxes[i : i + 1],
            object_images.keys[i : i + 1],
        )
        for lv, v in vectors(1, one)[0].items():
            alone[lv].append(v)
    batched, _ = vectors(2)
    for lv, parts in alone.items():
        want = np.concatenate(parts)
        scale = np.abs(want).max()
        assert np.abs(batched[lv] - want).max() <= 1e-5 * scale, lv
    cache = FeatureCache(tmp_path, mode)
    vectors(2, cache=cache)
    hit, cached = vectors(1, cache=cache)
    fresh, _ = vectors(1)
    assert cached == len(next(iter(fresh.values())))
    for lv in fresh:
        assert np.abs(hit[lv] - fresh[lv]).max() <= 1e-5 * np.abs(fresh[lv]).max(), lv


def test_crop_mode_runs_each_box_crop_as_an_image_and_the_cache_keeps_objects(
    detector, object_images, tmp_path
):
    from lib import extract_objects
    from lib.features.cache import FeatureCache
    from lib.features.pooling import pool
    from lib.inputs.objects import crop_box

    cache = FeatureCache(tmp_path, "objects")
    out = extract_objects(
        detector,
        object_images,
        Prepare(),
        "crop",
        margin=0.25,
        crop_size=64,
        batch_size=4,
        cache=cache,
    )
    first, cached = out.vectors, out.cached
    assert cached == 0 and sorted(first) == ["p2", "p3", "p4", "p5", "p6"]
    image_set, record = object_images.items[1]
    rgb = image_set.load(record, Prepare())
    crop = crop_box(rgb, object_images.boxes[1][0], 0.25, 64)
    want = pool(detector(crop[None])["p4"], "gap").numpy()[0]
    assert np.allclose(first["p4"][4], want, atol=1e-5)
    out = extract_objects(
        detector,
        object_images,
        Prepare(),
        "crop",
        margin=0.25,
        crop_size=64,
        batch_size=4,
        cache=cache,
    )
    again, cached = out.vectors, out.cached
    assert cached == 6 and all(np.array_equal(first[lv], again[lv]) for lv in first)


def test_images_of_mixed_sizes_pool_only_their_own_part_of_a_padded_batch(detector, object_images):
    from lib import extract_images as extract
    from lib.features.pooling import pool_valid

    fmap = torch.zeros(2, 3, 8, 8)
    fmap[1, :, :4, :6] = 1.0
    fmap[1, :, 4:, :], fmap[1, :, :, 6:] = 1e6, 1e6  # the padding: never in the mean
    assert np.allclose(pool_valid(fmap, [(32, 32), (16, 24)], (32, 32), "gap")[1], 1.0)
    prepare = Prepare(resize="detector", test_size=(448, 800))
    batched = extract(detector, object_images.items, prepare, batch_size=2).vectors
    alone = extract(detector, object_images.items[:1], prepare, batch_size=1).vectors
    assert sorted(batched) == ["p2", "p3", "p4", "p5", "p6"]
    for lv in batched:  # the batch's largest image sets its size: as alone
        assert np.allclose(batched[lv][0], alone[lv][0], rtol=1e-5, atol=1e-5)
