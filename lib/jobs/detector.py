"""`batch train detector`: a small torchvision detector trained on boxes, evaluated by
COCO's evaluator on a test set.

The body is one of the registered backbones (lib.features.backbones, with the ImageNet
weights that ship: EfficientNet-Lite0 by default), its c3..c5 stages under torchvision's
FeaturePyramidNetwork with P6/P7, and a one-stage head from torchvision's detection
models (HEADS: FCOS or RetinaNet), trained end to end with the body's batch norms frozen
(detection batches are a few images: their statistics would be noise). Boxes are read as
runs read them (lib.inputs.boxes: COCO, YOLO, VOC). The loop, schedule and files are
`batch train classifier`'s (lib.jobs.fitting): best.pt (by the validation images' AP50),
last.pt after every epoch, training.csv, resume after a kill to the same weights, bf16 on
a GPU. At the end the best weights are evaluated on the test set by
lib.analysis.detection (COCO's figures with bootstrap intervals): test.json beside them,
with the evaluation's inputs (test-truth.json, test-predictions.json).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lib.analysis.detection import bootstrap, evaluate
from lib.jobs.fitting import Fitting, epochs, save_atomic, write_history
from lib.jobs.training import Schedule, model_dir, split_rows
from lib.runtime.errors import GapscopeError
from lib.runtime.params import REQUIRED, param

log = logging.getLogger(__name__)

COLUMNS = ("epoch", "train_loss", "val_ap50", "val_ap", "lr", "seconds")
LEVELS = ("c3", "c4", "c5")  # the body's stages under the FPN (strides 8, 16, 32)
CHANNELS = 64  # the FPN's width: a small head for a small body
SCORE_FLOOR = 0.05  # detections kept for evaluation (torchvision's default for both heads)
TEST_INPUTS = ("test-truth.json", "test-predictions.json")  # beside test.json in the model


def _fcos(body, classes: int, image_size: int):
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    anchors = AnchorGenerator(tuple((8 * 2**i,) for i in range(5)), ((1.0,),) * 5)
    return FCOS(body, classes, **_sizes(image_size), anchor_generator=anchors)


def _retinanet(body, classes: int, image_size: int):
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (16, 32, 64, 128, 256))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    return RetinaNet(body, classes, **_sizes(image_size), anchor_generator=anchors)


def _sizes(image_size: int) -> dict:
    """torchvision's own resize: shorter side to `image_size`, longer at most 5/3 of it."""
    return {
        "min_size": image_size,
        "max_size": int(image_size * 5 / 3),
        "score_thresh": SCORE_FLOOR,
        "detections_per_img": 100,
    }


HEADS = {"fcos": _fcos, "retinanet": _retinanet}  # name: build(body, classes, image_size)


@dataclass
class DetectorJob:
    """A detector's training: every field is also a `batch train detector` option."""

    name: str = param(REQUIRED, "The model's name: results/models/NAME.")
    train: list[Path] = param(REQUIRED, "A folder of training images, repeatable.", flag="--train")
    train_boxes: list[Path] = param(
        REQUIRED,
        "Its boxes (COCO .json, or a folder of YOLO .txt or VOC .xml), one per --train.",
        flag="--train-boxes",
    )
    test: Path = param(REQUIRED, "The folder of test images (real ones, held out).")
    test_boxes: Path = param(REQUIRED, "Their boxes, read as --train-boxes.")
    train_share: list[float] = param(
        [],
        "Share of each --train folder's images to use, one per --train (a seeded sample: "
        "real + synthetic at a stated ratio); default all of each.",
        flag="--train-share",
    )
    head: str = param("fcos", f"The detector: {', '.join(HEADS)} (torchvision's).")
    schedule: Schedule = field(default_factory=Schedule)

    def __post_init__(self):
        if self.head not in HEADS:
            raise GapscopeError(f"--head {self.head}: choose one of {', '.join(HEADS)}")
        if len(self.train) != len(self.train_boxes):
            raise GapscopeError(
                f"--train given {len(self.train)} times and --train-boxes {len(self.train_boxes)}:"
                " give one boxes file per folder, in the same order"
            )
        if self.train_share and len(self.train_share) != len(self.train):
            raise GapscopeError("--train-share: give one share per --train folder, or none")
        if any(not 0 < share <= 1 for share in self.train_share):
            raise GapscopeError("--train-share: each share is above 0 and at most 1")

    def settings(self) -> dict:
        """What must match for a resume (the epochs may grow, the device change)."""
        d = asdict(self)
        for key in ("train", "train_boxes"):
            d[key] = [str(Path(p).resolve()) for p in d[key]]
        for key in ("test", "test_boxes"):
            d[key] = str(Path(d[key]).resolve())
        d["schedule"].pop("epochs")
        d["schedule"].pop("device")
        return d


@dataclass
class Scenes:
    """Images with their boxes: paths, (n, 4) xyxy boxes and 1-based labels per image."""

    paths: list[str]
    sizes: list[tuple[int, int]]  # (width, height)
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    files: list[str]  # as the truth names them (relative paths)

    def truth(self, classes: list[str], rows=None) -> dict:
        """The COCO ground truth of `rows` (default all), ids from 1."""
        rows = range(len(self.paths)) if rows is None else rows
        images, annotations = [], []
        for i in rows:
            (w, h), image_id = self.sizes[i], len(images) + 1
            images.append({"id": image_id, "file_name": self.files[i], "width": w, "height": h})
            for (x0, y0, x1, y1), label in zip(self.boxes[i], self.labels[i], strict=True):
                bw, bh = float(x1 - x0), float(y1 - y0)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(label),
                        "bbox": [float(x0), float(y0), bw, bh],
                        "area": bw * bh,
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
        return {"images": images, "annotations": annotations, "categories": categories}


def read_scenes(
    folders, boxes_files, what: str, classes: list[str] | None = None, shares=(), seed: int = 0
):
    """(Scenes, classes) of the folders' images that have boxes (of each folder a seeded
    `shares` share when given); `classes` from the boxes (sorted) unless given, when a
    box of another class is a one-line error."""
    from lib.inputs.boxes import read_boxes
    from lib.inputs.images import Prepare, open_folder

    found = []
    for folder, boxes_file in zip(folders, boxes_files, strict=True):
        images = open_folder(Path(folder), what, Prepare())
        boxes = read_boxes(Path(boxes_file), images.records, what)
        found.append((images, boxes))
    names = sorted({b.category for _, bs in found for b in bs.boxes})
    if not names:
        raise GapscopeError(f"--{what} has no usable boxes: a detector needs some to learn from")
    if classes is None:
        classes = names
    elif unknown := [c for c in names if c not in classes]:
        raise GapscopeError(
            f"--{what} has boxes of class {unknown[0]!r}, which the training sets do not have"
        )
    label = {c: i + 1 for i, c in enumerate(classes)}
    scenes = Scenes([], [], [], [], [])
    for n, (images, boxes) in enumerate(found):
        per_image: dict[int, list] = {}
        for b in boxes.boxes:
            per_image.setdefault(b.image, []).append(b)
        kept = sorted(per_image)  # an image without boxes teaches a one-stage head nothing
        if shares:
            rng = np.random.default_rng([seed, n])
            take = max(1, round(shares[n] * len(kept)))
            kept = sorted(rng.choice(kept, take, replace=False).tolist())
        for i in kept:
            record = images.records[i]
            bs = per_image[i]
            scenes.paths.append(record.path)
            scenes.sizes.append((record.width, record.height))
            scenes.files.append(record.relpath)
            scenes.boxes.append(np.array([[b.x0, b.y0, b.x1, b.y1] for b in bs], np.float32))
            scenes.labels.append(np.array([label[b.category] for b in bs], np.int64))
    return scenes, classes


class _Body:
    """The registered backbone's c3..c5 under an FPN with P6 and P7: what torchvision's
    one-stage heads take (a module with `out_channels`)."""

    @staticmethod
    def build(arch: str):
        import torch
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7

        from lib.features.backbones import create_backbone

        backbone = create_backbone(arch)

        class Body(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.body = backbone.module
                with torch.no_grad():
                    probe = self.body(torch.zeros(1, 3, 64, 64))
                widths = [probe[lv].shape[1] for lv in LEVELS]
                self.fpn = FeaturePyramidNetwork(
                    widths, CHANNELS, LastLevelP6P7(CHANNELS, CHANNELS)
                )
                self.out_channels = CHANNELS

            def forward(self, x):
                features = self.body(x)
                return self.fpn(OrderedDict((lv, features[lv]) for lv in LEVELS))

            def train(self, mode: bool = True):
                super().train(mode)
                for m in self.body.modules():  # frozen statistics: batches of a few images
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.eval()
                return self

        body = Body()
        for m in body.body.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(False)
        return body


def create_detector(head: str, arch: str, classes: int, image_size: int):
    """The detector `head` on the backbone `arch` for `classes` classes (background
    apart), torchvision normalising with ImageNet's statistics as the body expects."""
    model = HEADS[head](_Body.build(arch), classes + 1, image_size)
    return model


def _pixels(path: str, cache: dict):
    """An image as torchvision's detectors take it: (3, H, W) float in [0, 1]."""
    import torch

    from lib.inputs.images import decode_rgb

    if path not in cache:
        cache[path] = torch.from_numpy(np.ascontiguousarray(decode_rgb(Path(path)))).permute(
            2, 0, 1
        )
    return cache[path].float() / 255.0


def predict(model, scenes: Scenes, rows, device: str, batch_size: int, cache: dict) -> list[dict]:
    """COCO results of `model` on `rows` of `scenes` (image ids from 1, in `rows`' order)."""
    import torch

    model.eval()
    out = []
    rows = list(rows)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            found = model([_pixels(scenes.paths[i], cache).to(device) for i in chunk])
            for offset, f in enumerate(found):
                for (x0, y0, x1, y1), s, c in zip(
                    f["boxes"].tolist(), f["scores"].tolist(), f["labels"].tolist(), strict=True
                ):
                    out.append(
                        {
                            "image_id": start + offset + 1,
                            "category_id": int(c),
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": s,
                        }
                    )
    return out


def train_detector(job: DetectorJob, results: Path, progress=None) -> Path:
    """Train (or resume), evaluate the best weights on the test set; the model's folder."""
    import torch

    s = job.schedule
    scenes, classes = read_scenes(
        job.train, job.train_boxes, "train", shares=job.train_share, seed=s.seed
    )
    test, _ = read_scenes([job.test], [job.test_boxes], "test", classes)
    train_rows, val_rows = split_rows(len(scenes.paths), s.val_share, s.seed)
    device, precision = s.placement()
    torch.manual_seed(s.seed)
    model = create_detector(job.head, s.arch, len(classes), s.image_size).to(device)
    steps = math.ceil(len(train_rows) / s.batch_size)
    folder = model_dir(results, job.name)
    trainable = torch.nn.ModuleList([model])
    fit = Fitting.start(trainable, s, steps, job.settings(), folder, precision)
    state = fit.resume(device, {"epoch": 0, "best": -1.0, "best_epoch": 0, "history": []})
    folder.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    val_truth = scenes.truth(classes, val_rows)
    for epoch in epochs(state, s.epochs, s.patience):
        t = time.perf_counter()
        order = train_rows[np.random.default_rng([s.seed, epoch]).permutation(len(train_rows))]
        loss = _epoch(model, fit, scenes, order, s.batch_size, device, cache)
        val = evaluate(val_truth, predict(model, scenes, val_rows, device, s.batch_size, cache))
        row = {
            "epoch": epoch,
            "train_loss": loss,
            "val_ap50": val.summary["AP50"],
            "val_ap": val.summary["AP"],
            "lr": fit.lr,
            "seconds": round(time.perf_counter() - t, 3),
        }
        state["history"].append(row)
        state["epoch"] = epoch
        if row["val_ap50"] > state["best"]:
            state["best"], state["best_epoch"] = row["val_ap50"], epoch
            save_atomic(folder / "best.pt", _checkpoint(model, job, classes, epoch, row))
        fit.save(state)
        write_history(folder / "training.csv", state["history"], COLUMNS)
        if progress:
            progress(epoch, s.epochs, row)
    _test(model, folder, test, classes, s, device)
    return folder


def _test(model, folder: Path, test: Scenes, classes: list[str], s: Schedule, device: str):
    """The best weights on the test images: test.json (COCO's figures, intervals, per
    class) and the inputs to evaluate them again."""
    import torch

    best = torch.load(folder / "best.pt", map_location=device, weights_only=True)
    model.load_state_dict(best["model"])
    truth = test.truth(classes)
    found = predict(model, test, range(len(test.paths)), device, s.batch_size, {})
    evaluation = evaluate(truth, found)
    for file, content in zip(TEST_INPUTS, (truth, found), strict=True):
        (folder / file).write_text(json.dumps(content))  # to evaluate it again (calibration)
    report = {
        "epoch": best["epoch"],
        "test_images": len(test.paths),
        "summary": evaluation.summary,  # floats already
        "ci95": bootstrap(evaluation, seed=s.seed),
        "per_class": evaluation.per_class,
    }
    (folder / "test.json").write_text(json.dumps(report, indent=2))


def tested_on(folder: Path) -> tuple[dict, list]:
    """(ground truth, predictions) a trained detector was tested on, as `_test` kept them."""
    truth, found = (json.loads((Path(folder) / name).read_text()) for name in TEST_INPUTS)
    return truth, found


def _epoch(model, fit, scenes: Scenes, order, batch_size: int, device: str, cache) -> float:
    """One pass over the training images in `order`; the mean of the summed losses."""
    import torch

    model.train()
    losses, seen = [], 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        images = [_pixels(scenes.paths[i], cache).to(device) for i in batch]
        targets = [
            {
                "boxes": torch.as_tensor(scenes.boxes[i], device=device),
                "labels": torch.as_tensor(scenes.labels[i], device=device),
            }
            for i in batch
        ]
        with fit.autocast(device):
            loss = sum(model(images, targets).values())
        fit.step(loss)
        losses.append(float(loss.detach()) * len(batch))
        seen += len(batch)
    return sum(losses) / max(seen, 1)


def _checkpoint(model, job: DetectorJob, classes, epoch: int, row: dict) -> dict:
    return {
        "kind": "detector",
        "head": job.head,
        "arch": job.schedule.arch,
        "classes": classes,
        "image_size": job.schedule.image_size,
        "epoch": epoch,
        "val_ap50": row["val_ap50"],
        "model": model.state_dict(),
    }
