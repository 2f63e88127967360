"""The one place that decides where heavy work runs, once per run.

`choose_backend` settles every choice a run needs, logs it once and returns a `Backend`
whose `describe()` goes into the manifest:

- name and reason: `cuml` when cuML imports and a CUDA GPU is present (asked for with
  `auto` or `cuml`), else `cpu`;
- device: the torch device for extraction, kNN and the gap's distances (a GPU without
  cuML still extracts and searches on the GPU);
- precision: bf16 autocast on a GPU, fp32 on the CPU (`auto`), or as asked;
- workers: image-decoding processes (see `default_workers`);
- knn_engine: torch or FAISS for the run's number of images (lib.analysis.neighbours.choose_engine);
- projection: cuML or umap-learn/openTSNE; clustering: cuML's or scikit-learn's HDBSCAN.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

from lib.analysis.neighbours import choose_engine
from lib.runtime.errors import GapscopeError

log = logging.getLogger(__name__)

CHOICES = ("auto", "cuml", "cpu")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Backend:
    name: str  # "cuml" or "cpu"
    device: str  # torch device: "cuda" or "cpu"
    reason: str
    precision: str = "fp32"  # fp32 | bf16
    workers: int = 0  # image-decoding processes beside the model
    knn_engine: str = "torch"  # torch | faiss
    projection: str = "cpu"  # cuml | cpu (umap-learn, openTSNE)
    clustering: str = "sklearn"  # cuml | sklearn

    def describe(self) -> dict:
        return asdict(self)


def cpu_backend() -> Backend:
    """Everything on the CPU: the default for library calls made outside a run."""
    return Backend("cpu", "cpu", "library default")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _cuml_importable() -> tuple[bool, str]:
    try:
        import cuml  # noqa: F401

        return True, ""
    except Exception as exc:  # cuML fails in many ways without a GPU driver
        return False, f"{type(exc).__name__}: {str(exc)[:80]}"


def check_choices(requested: str = "auto", precision: str = "auto") -> None:
    """Fail on a misspelt choice before any work."""
    if requested not in CHOICES:
        raise GapscopeError(f"unknown backend {requested!r}: choose one of {', '.join(CHOICES)}")
    if precision not in PRECISIONS:
        raise GapscopeError(
            f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}"
        )


def _compute(requested: str) -> tuple[str, str, str]:
    """(backend name, torch device, reason)."""
    gpu = _cuda_available()
    if requested == "cpu":
        return "cpu", "cpu", "asked for with --backend cpu"
    ok, why = _cuml_importable() if gpu else (False, "no CUDA GPU")
    if ok:
        return "cuml", "cuda", "cuML imports and a CUDA GPU is present"
    if requested == "cuml":
        raise GapscopeError(f"--backend cuml is not available here ({why}): use --backend auto")
    return "cpu", "cuda" if gpu else "cpu", f"cuML not usable ({why}); umap-learn on the CPU"


def default_workers(device: str = "cpu") -> int:
    """Decoding processes beside the model. On the CPU the model needs the cores too: half
    of them, at most 4. On a GPU decoding is the bottleneck (one core decodes and resizes
    ~150 JPEGs/s at 512 px; the GPU takes over 1,000/s): every core but two, at most 16."""
    cores = os.cpu_count() or 1
    if device.startswith("cuda"):
        return max(1, min(16, cores - 2))
    return min(4, cores // 2)


def choose_backend(
    requested: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    n_images: int = 0,
    knn_engine: str = "auto",
) -> Backend:
    """Every placement a run of `n_images` needs, chosen once and logged once."""

    check_choices(requested, precision)
    name, device, reason = _compute(requested)
    on_gpu = device.startswith("cuda")
    backend = Backend(
        name=name,
        device=device,
        reason=reason,
        precision=("bf16" if on_gpu else "fp32") if precision == "auto" else precision,
        workers=default_workers(device) if workers is None else workers,
        knn_engine=choose_engine(n_images, device, knn_engine),
        projection="cuml" if name == "cuml" else "cpu",
        clustering="cuml" if name == "cuml" else "sklearn",
    )
    log.info(
        "backend %s (%s): torch on %s, %s, %d decoding workers, kNN %s, projections %s, "
        "clustering %s",
        backend.name,
        backend.reason,
        backend.device,
        backend.precision,
        backend.workers,
        backend.knn_engine,
        backend.projection,
        backend.clustering,
    )
    return backend


def check_device(device: str) -> None:
    """A one-line error for a --device other than auto, cpu, cuda or cuda:N, or cuda on a
    machine without a usable GPU."""
    import re

    if device in ("auto", "cpu"):
        return
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise GapscopeError(f"--device {device}: choose auto, cpu, cuda or cuda:N")
    if not _cuda_available():
        raise GapscopeError(f"--device {device}: no usable CUDA GPU here; use cpu or auto")
