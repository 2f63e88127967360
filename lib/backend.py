"""The one place that decides where heavy work runs: RAPIDS cuML + CUDA, or the CPU.

`auto` picks cuML when it imports and a CUDA GPU is present, otherwise umap-learn and
torch on the CPU. The choice and its reason go to the log and the run manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lib.errors import GapscopeError

log = logging.getLogger(__name__)

CHOICES = ("auto", "cuml", "cpu")


@dataclass(frozen=True)
class Backend:
    name: str  # "cuml" or "cpu"
    device: str  # torch device for extraction and kNN: "cuda" or "cpu"
    reason: str


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


def choose_backend(requested: str = "auto") -> Backend:
    if requested not in CHOICES:
        raise GapscopeError(f"unknown backend {requested!r}: choose one of {', '.join(CHOICES)}")
    gpu = _cuda_available()
    if requested == "cpu":
        backend = Backend("cpu", "cpu", "asked for with --backend cpu")
    else:
        ok, why = _cuml_importable() if gpu else (False, "no CUDA GPU")
        if ok:
            backend = Backend("cuml", "cuda", "cuML imports and a CUDA GPU is present")
        elif requested == "cuml":
            raise GapscopeError(f"--backend cuml is not available here ({why}): use --backend auto")
        else:
            reason = f"cuML not usable ({why}); umap-learn on the CPU"
            backend = Backend("cpu", "cuda" if gpu else "cpu", reason)
    log.info("backend: %s (%s), torch device %s", backend.name, backend.reason, backend.device)
    return backend
