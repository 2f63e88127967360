"""Fine-tuning a backbone as a classifier on labelled images (`batch train classifier`).

pixplotml's recipe is the default: AdamW (lr 1e-3), batch 64, 20 epochs, a cosine schedule
after 5 warm-up epochs, a seeded 10 % validation split, the best checkpoint kept. Its bug
is not repeated: a trained model is only ever used for features in eval mode (lib.features.backbones
builds every backbone in eval mode, a trained one too), so BatchNorm keeps its statistics.
Training stops early when validation accuracy has not improved for `patience` epochs;
bf16 autocast on a GPU.

After every epoch the whole state (weights, optimiser, schedule, random state, history)
is written atomically to `last.pt`, so a killed job resumes from the last finished epoch
and ends where an uninterrupted one would (seeded, on the CPU: tested). Output, under the
run store: `models/<name>/best.pt` (weights and what the backbone needs: usable as
`--backbone trained:<name>`), `last.pt`, and `training.csv` (epoch, losses, accuracy,
learning rate, seconds).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from lib.analysis.gap.records import record, wilson
from lib.features.backbones import create_backbone
from lib.inputs.images import Prepare, open_folder
from lib.jobs.fitting import Fitting, epochs, save_atomic, write_history
from lib.jobs.retrieval import retrieve, scores
from lib.runtime.backend import check_device, choose_backend
from lib.runtime.errors import GapscopeError
from lib.runtime.params import REQUIRED, check_minimums, param
from lib.store.names import checked_name

log = logging.getLogger(__name__)

COLUMNS = ("epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds")


@dataclass
class Schedule:
    """How a classifier is trained (pixplotml's recipe by default): options of both `batch
    train classifier` and `batch train protocol`."""

    arch: str = param("efficientnet-lite0", "The backbone to fine-tune (see `backbones`).")
    epochs: int = param(20, "Epochs at most.", minimum=1)
    batch_size: int = param(64, "Images per step.", minimum=1)
    lr: float = param(1e-3, "AdamW's peak learning rate.")
    weight_decay: float = param(0.01, "AdamW's weight decay.")
    warmup_epochs: int = param(5, "Epochs of linear warm-up before the cosine decay.", minimum=0)
    val_share: float = param(0.1, "Share of the images held out for validation (seeded).")
    patience: int = param(5, "Stop after this many epochs without a better accuracy.", minimum=1)
    image_size: int = param(
        224, "Images resized (shorter side) and centre-cropped to this.", minimum=8
    )
    seed: int = param(0, "Seed of the splits, the order and the head's initial weights.", minimum=0)
    device: str = param("auto", "cpu, cuda, or auto: a GPU when there is one.")

    def placement(self) -> tuple[str, str]:
        """(device, precision) a training runs on: `device`, auto a GPU when there is
        one; bf16 on a GPU as the backend chooses, fp32 on the CPU."""
        backend = choose_backend("auto")
        device = backend.device if self.device == "auto" else self.device
        return device, backend.precision if device.startswith("cuda") else "fp32"

    def __post_init__(self):
        check_minimums(self)
        if not 0 < self.val_share < 1:
            raise GapscopeError(f"--val-share {self.val_share}: give a share between 0 and 1")

        check_device(self.device)


@dataclass
class TrainJob:
    """A classifier fine-tuning: every field is also a `batch train classifier` option."""

    name: str = param(REQUIRED, "The model's name: results/models/NAME, --backbone trained:NAME.")
    data: list[Path] = param(
        REQUIRED,
        "A folder of labelled images (class subfolders or metadata.csv), repeatable.",
        flag="--data",
    )
    schedule: Schedule = field(default_factory=Schedule)

    def settings(self) -> dict:
        """What must match for a resume (the epochs may grow, the device change)."""
        d = asdict(self)
        d["data"] = [str(Path(p).resolve()) for p in self.data]
        d["schedule"].pop("epochs")
        d["schedule"].pop("device")
        return d


@dataclass
class MetricJob(TrainJob):
    """Metric learning: every field is also a `batch train metric` option."""

    margin: float = param(1.0, "Triplet margin (snap-vision's).")
    embedding: int = param(128, "Embedding size (the head's outputs).", minimum=2)
    mining: str = param(
        "offline",
        "offline: each epoch, every image's embedding, then per anchor a random positive "
        "and negatives drawn until one is nearer than the positive (snap-vision's); "
        "online: pytorch-metric-learning's TripletMarginMiner within each batch.",
    )
    tries: int = param(10, "Offline mining: negatives drawn per anchor at most.", minimum=1)

    def __post_init__(self):
        check_minimums(self)
        if self.mining not in MINING:
            raise GapscopeError(f"--mining {self.mining}: choose {' or '.join(MINING)}")


MINING = ("offline", "online")


def model_dir(results: Path, name: str) -> Path:
    return Path(results) / "models" / checked_name(name, "--name")


class Classifier:
    """A backbone with a linear head on its last level's pooled features: class logits
    (a classifier) or an embedding (metric learning)."""

    def __init__(self, backbone, outputs: int, image_size: int):
        import torch

        self.backbone = backbone
        self.level = backbone.levels[-1]
        probe = np.zeros((1, image_size, image_size, 3), np.uint8)
        with torch.no_grad():
            dim = backbone.module(backbone.preprocess(probe))[self.level].shape[1]
        self.head = torch.nn.Linear(dim, outputs)
        self.modules = torch.nn.ModuleDict({"body": backbone.module, "head": self.head})

    def logits(self, images, device: str):
        x = self.backbone.preprocess(images, device)
        return self.head(self.backbone.module(x)[self.level].mean(dim=(2, 3)))


class _Classification:
    """Cross-entropy over the labels; validated by accuracy."""

    kind = "classifier"

    def outputs(self, n_classes: int) -> int:
        return n_classes

    def batches(self, model, items, order, labels, prepare, device, batch_size, rng):
        """The epoch's batches: rows, and what the loss needs besides their labels."""
        return _in_order(order, batch_size)

    def loss(self, out, target, extra=None):
        import torch

        return torch.nn.functional.cross_entropy(out.float(), target)

    def validate(self, model, items, rows, labels, prepare, device, batch_size, train_rows):
        import torch

        out = _outputs(model, items, rows, prepare, device, batch_size)
        target = torch.as_tensor(labels[rows])
        loss = float(torch.nn.functional.cross_entropy(out, target))
        return loss, float((out.argmax(1) == target).float().mean())


@dataclass
class _Metric:
    """pytorch-metric-learning's triplet margin loss on L2-normalised embeddings, with its
    miner's hard triplets in each batch; validated by precision@1 of the validation images
    against the training images (lib.jobs.retrieval)."""

    margin: float
    dim: int
    mining: str = "offline"
    tries: int = 10
    kind = "metric"

    def outputs(self, n_classes: int) -> int:
        return self.dim

    def batches(self, model, items, order, labels, prepare, device, batch_size, rng):
        """Online: the epoch's rows in batches, triplets mined in each. Offline: every
        training image embedded once with the epoch's starting weights, a triplet mined
        per anchor (`mine_triplets`); each batch holds `batch_size` anchors with their
        positives and negatives, and the indices of its triplets."""
        import torch

        if self.mining == "online":
            yield from _in_order(order, batch_size)
            return
        e = torch.nn.functional.normalize(
            _outputs(model, items, order, prepare, device, batch_size), dim=1
        ).numpy()
        model.modules.train()
        a, p, n = mine_triplets(e, labels[order], rng, self.tries)
        for start in range(0, len(a), batch_size):
            chunk = slice(start, start + batch_size)
            rows, index = np.unique(
                np.concatenate([a[chunk], p[chunk], n[chunk]]), return_inverse=True
            )
            k = len(a[chunk])
            triplets = tuple(torch.as_tensor(index[i * k : (i + 1) * k]) for i in range(3))
            yield order[rows], triplets

    def loss(self, out, target, extra=None):
        import torch
        from pytorch_metric_learning import losses, miners

        e = torch.nn.functional.normalize(out.float(), dim=1)
        if extra is None:  # online: the library's miner picks the batch's hard triplets
            extra = miners.TripletMarginMiner(margin=self.margin, type_of_triplets="hard")(
                e, target
            )
        return losses.TripletMarginLoss(margin=self.margin)(e, target, extra)

    def validate(self, model, items, rows, labels, prepare, device, batch_size, train_rows):
        import torch
        from pytorch_metric_learning import losses

        val = torch.nn.functional.normalize(
            _outputs(model, items, rows, prepare, device, batch_size), dim=1
        )
        gallery = torch.nn.functional.normalize(
            _outputs(model, items, train_rows, prepare, device, batch_size), dim=1
        )
        loss = float(
            losses.TripletMarginLoss(margin=self.margin)(val, torch.as_tensor(labels[rows]))
        )
        found = retrieve(
            val.numpy(),
            gallery.numpy(),
            labels[rows].astype(str),
            labels[train_rows].astype(str),
            "euclidean",
            depth=1,
        )
        return loss, scores(found, k=1)[0]["recall_at"]["1"]["value"]


def _in_order(order: np.ndarray, batch_size: int):
    """The epoch's rows in batches, nothing besides their labels for the loss."""
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size], None


def mine_triplets(embeddings: np.ndarray, labels: np.ndarray, rng, tries: int = 10):
    """snap-vision's offline mining, over (N, D) embeddings: for each anchor with another
    image of its label, a random such positive, and random images of other labels drawn
    until one is nearer the anchor than the positive (at most `tries`; else the nearest
    drawn). Returns (anchors, positives, negatives) as positions into `embeddings`."""
    by_label: dict = {}
    for i, label in enumerate(labels.tolist()):
        by_label.setdefault(label, []).append(i)
    out = ([], [], [])
    for a, label in enumerate(labels.tolist()):
        same = by_label[label]
        if len(same) < 2 or len(same) == len(labels):
            continue
        p = same[rng.integers(len(same) - 1)]
        p = p if p != a else same[-1]  # any other image of the label, uniformly
        d_ap = float(np.sum((embeddings[a] - embeddings[p]) ** 2))
        best, best_d = -1, np.inf
        for _ in range(tries):
            n = int(rng.integers(len(labels)))
            while labels[n] == label:
                n = int(rng.integers(len(labels)))
            d_an = float(np.sum((embeddings[a] - embeddings[n]) ** 2))
            if d_an < best_d:
                best, best_d = n, d_an
            if d_an < d_ap:
                break
        for part, value in zip(out, (a, p, best), strict=True):
            part.append(value)
    return tuple(np.array(part, dtype=np.int64) for part in out)


def _outputs(model, items, rows, prepare, device, batch_size):
    """The model's outputs for some images, in eval mode, on the CPU."""
    import torch

    model.modules.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            parts.append(model.logits(_pixels(items, batch, prepare), device).float().cpu())
    return torch.cat(parts)


def labelled(folders, image_size: int):
    """([(image set, record)] of every labelled image in the folders, how to prepare them)."""

    prepare = Prepare(resize=image_size)
    sets = [open_folder(Path(p), "train", prepare) for p in folders]
    return [(s, r) for s in sets for r in s.records if r.category], prepare


def _images(job: TrainJob):
    """([(set, record)], class names, prepare) of every labelled image of the data."""
    items, prepare = labelled(job.data, job.schedule.image_size)
    classes = sorted({r.category for _, r in items})
    if len(classes) < 2:
        raise GapscopeError(
            f"training a classifier needs images of at least two labels, found {len(classes)} "
            "(give class subfolders or a metadata.csv with a category column)"
        )
    return items, classes, prepare


def split_rows(n: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows, `share` of the n rows held out), seeded, each sorted."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * share)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def train_classifier(job: TrainJob, results: Path, progress=None, images=None) -> Path:
    """Train (or resume) and return the model's folder. `images`: (items, classes,
    prepare) chosen by the caller (the sim-to-real protocol) instead of all of `job.data`."""
    return _train(job, results, _Classification(), progress, images)


def train_metric(job: MetricJob, results: Path, progress=None) -> Path:
    """Metric learning (triplets): train (or resume) and return the model's folder."""
    return _train(job, results, _Metric(job.margin, job.embedding, job.mining, job.tries), progress)


def _train(job: TrainJob, results: Path, objective, progress=None, images=None) -> Path:
    import torch

    s = job.schedule
    items, classes, prepare = images or _images(job)
    train_rows, val_rows = split_rows(len(items), s.val_share, s.seed)
    device, precision = s.placement()
    torch.manual_seed(s.seed)
    model = Classifier(create_backbone(s.arch), objective.outputs(len(classes)), s.image_size)
    model.modules.to(device)
    steps = math.ceil(len(train_rows) / s.batch_size)
    folder = model_dir(results, job.name)
    fit = Fitting.start(model.modules, s, steps, job.settings(), folder, precision)
    state = fit.resume(device, {"epoch": 0, "best": -1.0, "best_epoch": 0, "history": []})
    if state["epoch"]:
        log.info("resuming %s after epoch %d", job.name, state["epoch"])
    fit.folder.mkdir(parents=True, exist_ok=True)
    label_of = {c: i for i, c in enumerate(classes)}
    labels = np.array([label_of[r.category] for _, r in items])
    for epoch in epochs(state, s.epochs, s.patience):
        t = time.perf_counter()
        rng = np.random.default_rng([s.seed, epoch])
        order = train_rows[rng.permutation(len(train_rows))]
        train_loss = _epoch(model, objective, fit, items, order, labels, prepare, rng, s, device)
        val_loss, accuracy = objective.validate(
            model, items, val_rows, labels, prepare, device, s.batch_size, train_rows
        )
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": accuracy,
            "lr": fit.lr,
            "seconds": round(time.perf_counter() - t, 3),
        }
        state["history"].append(row)
        state["epoch"] = epoch
        if accuracy > state["best"]:
            state["best"], state["best_epoch"] = accuracy, epoch
            best = _best(model, job, classes, epoch, accuracy, objective.kind)
            save_atomic(fit.folder / "best.pt", best)
        fit.save(state)
        write_history(fit.folder / "training.csv", state["history"], COLUMNS)
        if progress:
            progress(epoch, s.epochs, row)
    if state["epoch"] < s.epochs and state["best_epoch"]:
        log.info("no better accuracy for %d epochs: stopped", s.patience)
    return fit.folder


def _epoch(model, objective, fit, items, order, labels, prepare, rng, s, device) -> float:
    """One pass over the training rows in `order`; the mean training loss."""
    import torch

    model.modules.train()
    losses, seen = [], 0
    batches = objective.batches(model, items, order, labels, prepare, device, s.batch_size, rng)
    for batch, extra in batches:
        with fit.autocast(device):
            logits = model.logits(_pixels(items, batch, prepare), device)
            target = torch.as_tensor(labels[batch], device=device)
            loss = objective.loss(logits, target, extra)
        fit.step(loss)
        losses.append(loss.item() * len(batch))
        seen += len(batch)
    return sum(losses) / max(seen, 1)


def _pixels(items, rows, prepare) -> np.ndarray:
    return np.stack([items[i][0].load(items[i][1], prepare) for i in rows])


def _best(model, job: TrainJob, classes, epoch: int, accuracy: float, kind: str) -> dict:
    return {
        "kind": kind,
        "arch": job.schedule.arch,
        "classes": classes,
        "image_size": job.schedule.image_size,
        "level": model.level,
        "epoch": epoch,
        "val_accuracy": accuracy,
        "body": model.backbone.module.state_dict(),
        "head": model.head.state_dict(),
    }


def accuracy(model_folder: Path, items, prepare, batch_size: int = 64) -> tuple[float, int]:
    """(share right, n) of a trained classifier (its best epoch) on labelled images."""
    import torch

    saved = torch.load(Path(model_folder) / "best.pt", map_location="cpu", weights_only=True)
    backbone = create_backbone(f"trained:{model_folder}")
    model = Classifier(backbone, len(saved["classes"]), saved["image_size"])
    model.head.load_state_dict(saved["head"])
    label_of = {c: i for i, c in enumerate(saved["classes"])}
    labels = np.array([label_of.get(r.category, -1) for _, r in items])
    outputs = _outputs(model, items, np.arange(len(items)), prepare, "cpu", batch_size)
    right = int((outputs.argmax(1).numpy() == labels).sum())
    return right / len(items), len(items)


# ---- the sim-to-real protocol ----------------------------------------------------------


@dataclass
class ProtocolJob:
    """Train on synthetic only, on real only and on both; test each on the same held-out
    real images (or, `test_on="synthetic"`, the reverse: held-out synthetic images).
    Every field is also a `batch train protocol` option."""

    real: Path = param(REQUIRED, "Labelled real images (class subfolders or metadata.csv).")
    synthetic: Path = param(REQUIRED, "Labelled synthetic images.")
    name: str = param("sim2real", "Models are NAME-synthetic, NAME-real, NAME-both.")
    test_share: float = param(0.3, "Share of the tested domain held out for the test (seeded).")
    test_on: str = param(
        "real",
        "real: the sim-to-real protocol; synthetic: the reverse, every model tested on "
        "held-out synthetic images (models NAME-on-synthetic-*).",
    )
    schedule: Schedule = field(default_factory=Schedule)

    def __post_init__(self):
        if not 0 < self.test_share < 1:
            raise GapscopeError(f"--test-share {self.test_share}: give a share between 0 and 1")
        if self.test_on not in ("real", "synthetic"):
            raise GapscopeError(f"--test-on {self.test_on}: choose real or synthetic")

    @property
    def prefix(self) -> str:
        """The models' and the table's name: NAME, or NAME-on-synthetic for the reverse."""
        return self.name if self.test_on == "real" else f"{self.name}-on-synthetic"


def run_protocol(job: ProtocolJob, results: Path, progress=None) -> dict:
    """The three models and their accuracy on the held-out images of the tested domain
    (`job.test_on`), with Wilson intervals; written to models/<prefix>-protocol.json and
    returned. `<other>_buys`: what adding the other domain's images to the tested
    domain's own training images changes."""
    import json

    s = job.schedule
    real, prepare = labelled([job.real], s.image_size)
    synthetic, _ = labelled([job.synthetic], s.image_size)
    if not real or not synthetic:
        raise GapscopeError("both --real and --synthetic need labelled images")
    sets = {"real": real, "synthetic": synthetic}
    tested, other = job.test_on, "synthetic" if job.test_on == "real" else "real"
    test_rows, train_rows = split_rows(len(sets[tested]), 1 - job.test_share, s.seed)
    test = [sets[tested][i] for i in test_rows]
    sets[tested] = [sets[tested][i] for i in train_rows]
    classes = sorted({r.category for _, r in real + synthetic})
    table = {}
    for variant, items in (
        ("synthetic", sets["synthetic"]),
        ("real", sets["real"]),
        ("both", sets["synthetic"] + sets["real"]),
    ):
        warmup = min(s.warmup_epochs, s.epochs - 1)
        train_job = TrainJob(
            name=f"{job.prefix}-{variant}",
            data=[job.real, job.synthetic],
            schedule=replace(s, warmup_epochs=warmup),
        )
        folder = train_classifier(train_job, results, progress, (items, classes, prepare))
        share, n = accuracy(folder, test, prepare, s.batch_size)
        right = wilson(round(share * n), n)
        table[variant] = {
            "trained_on": len(items),
            "model": str(folder),
            "test_accuracy": record(share, right, n),
        }
    out = {
        "real": str(Path(job.real).resolve()),
        "synthetic": str(Path(job.synthetic).resolve()),
        "tested_on": tested,
        "test": len(test),
        "classes": classes,
        "models": table,
        f"{other}_buys": table["both"]["test_accuracy"]["value"]
        - table[tested]["test_accuracy"]["value"],
    }
    path = model_dir(results, f"{job.prefix}-protocol").with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out
