"""The resumable training loop's parts, shared by every `batch train` job.

A `Fitting` holds a model's trainable modules, AdamW and the per-step schedule (linear
warm-up, then cosine decay to 0). After every epoch `save` writes the whole state (weights,
optimiser, schedule, torch's random state, the job's history) atomically to `last.pt`;
`resume` restores it, so a killed job goes on from the last finished epoch and ends where
an uninterrupted one would. The settings a job was started with are saved too: resuming
with other settings is refused rather than mixing two trainings in one folder.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lib.runtime.errors import GapscopeError

LAST = "last.pt"


def lr_factor(warmup_epochs: int, epochs: int, steps_per_epoch: int):
    """Linear warm-up, then cosine decay to 0, per step."""
    warm, total = warmup_epochs * steps_per_epoch, epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return factor


@dataclass
class Fitting:
    """One training job's modules, optimiser and schedule, and the folder it saves to."""

    modules: object  # torch.nn.Module
    optimizer: object
    scheduler: object
    settings: dict
    folder: Path
    precision: str = "fp32"  # "bf16": the forward passes autocast (on a GPU)

    @classmethod
    def start(
        cls,
        modules,
        schedule,
        steps_per_epoch: int,
        settings: dict,
        folder: Path,
        precision: str = "fp32",
    ):
        """AdamW at `schedule.lr` and `schedule.weight_decay`, stepped per batch through
        `schedule.warmup_epochs` of warm-up and a cosine decay over `schedule.epochs`."""
        import torch

        optimizer = torch.optim.AdamW(
            modules.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay
        )
        factor = lr_factor(schedule.warmup_epochs, schedule.epochs, steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return cls(modules, optimizer, scheduler, settings, Path(folder), precision)

    def resume(self, device: str, state: dict) -> dict:
        """`state` (the job's epoch, best and history) as last saved, the weights, optimiser,
        schedule and random state restored; `state` itself when nothing was saved yet."""
        import torch

        last = self.folder / LAST
        if not last.is_file():
            return state
        saved = torch.load(last, map_location=device, weights_only=True)
        if saved["settings"] != self.settings:
            raise GapscopeError(
                f"{self.folder} holds a model trained with other settings: choose "
                "another --name, or delete it"
            )
        self.modules.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        return {k: saved[k] for k in state}

    def autocast(self, device: str):
        """The context a forward pass runs in: bf16 autocast when the job trains in bf16."""
        import torch

        kind = torch.device(device).type
        return torch.autocast(kind, torch.bfloat16, enabled=self.precision == "bf16")

    def step(self, loss) -> None:
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def save(self, state: dict) -> None:
        import torch

        whole = {
            "settings": self.settings,
            "model": self.modules.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            **state,
        }
        save_atomic(self.folder / LAST, whole)


def epochs(state: dict, total: int, patience: int) -> Iterator[int]:
    """The epochs still to run after `state["epoch"]`, stopping once `patience` epochs have
    passed without a better `state["best"]` (the loop updates `state` as it goes)."""
    for epoch in range(state["epoch"] + 1, total + 1):
        if state["best_epoch"] and epoch - state["best_epoch"] > patience:
            return
        yield epoch


def save_atomic(path: Path, obj) -> None:
    """Written aside and renamed into place: a kill never leaves half a checkpoint."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_history(path: Path, history: list[dict], columns: tuple[str, ...]) -> None:
    """The per-epoch rows as CSV, written aside and renamed into place."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)
