"""lib.runtime.backend: every placement chosen in one place, for the machine it finds."""

from __future__ import annotations

import pytest

from lib.runtime import backend
from lib.runtime.errors import GapscopeError
from tests.conftest import one_line


@pytest.fixture()
def machine(monkeypatch):
    """Pretend to be a machine with or without a GPU and cuML."""

    def set_machine(gpu: bool, cuml: bool):
        monkeypatch.setattr(backend, "_cuda_available", lambda: gpu)
        reason = "" if cuml else "ImportError: No module named 'cuml'"
        monkeypatch.setattr(backend, "_cuml_importable", lambda: (cuml, reason))
        monkeypatch.setattr("os.cpu_count", lambda: 16)

    return set_machine


def test_a_gpu_with_cuml_runs_everything_there(machine):
    machine(gpu=True, cuml=True)
    b = backend.choose_backend("auto", n_images=50_000)
    assert (b.name, b.device, b.precision, b.projection, b.clustering) == (
        "cuml",
        "cuda",
        "bf16",
        "cuml",
        "cuml",
    )
    assert b.knn_engine == "torch" and b.workers == 14  # FAISS here is CPU-only
    assert b.describe()["reason"] == "cuML imports and a CUDA GPU is present"


def test_a_gpu_without_cuml_extracts_there_and_projects_on_the_cpu(machine):
    machine(gpu=True, cuml=False)
    b = backend.choose_backend("auto")
    assert (b.name, b.device, b.precision, b.projection, b.clustering) == (
        "cpu",
        "cuda",
        "bf16",
        "cpu",
        "sklearn",
    )
    assert "No module named 'cuml'" in b.reason


def test_the_cpu_picks_faiss_for_large_runs_and_fp32(machine):
    machine(gpu=False, cuml=False)
    small, large = backend.choose_backend(n_images=500), backend.choose_backend(n_images=50_000)
    assert (small.knn_engine, large.knn_engine) == ("torch", "faiss")
    assert large.precision == "fp32" and large.workers == 4 and large.device == "cpu"
    assert backend.choose_backend("auto", precision="bf16").precision == "bf16"  # as asked


def test_asking_for_cuml_without_it_and_misspelt_choices_are_one_line_errors(machine):
    machine(gpu=False, cuml=False)
    with pytest.raises(GapscopeError) as exc:
        backend.choose_backend("cuml")
    assert "--backend cuml is not available here (no CUDA GPU)" in one_line(exc)
    machine(gpu=True, cuml=False)
    with pytest.raises(GapscopeError) as exc:
        backend.choose_backend("cuml")
    assert "No module named 'cuml'" in one_line(exc)
    with pytest.raises(GapscopeError) as exc:
        backend.choose_backend("gpu")
    assert "unknown backend 'gpu'" in one_line(exc)
    with pytest.raises(GapscopeError) as exc:
        backend.choose_backend("cpu", precision="fp16")
    assert "unknown precision 'fp16'" in one_line(exc)


def test_31_small_fit_stages_run_their_libraries_on_one_thread():
    """lib.runtime.threads: the gap, strata and attribution stages run BLAS and OpenMP
    (scikit-learn's fits, torch's CPU kernels) on one thread, where two waiting for a
    busy core cost up to 40× (`make bench` section threads); extraction keeps them all."""
    import torch
    from threadpoolctl import threadpool_info

    from lib.runtime.progress import Silent, Stages

    def threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info()}

    default = threads()
    stages = Stages(Silent())
    for name in ("gap", "strata", "attribution"):
        with stages(name):
            assert threads() == {1} and torch.get_num_threads() == 1, name
    with stages("extract"):
        assert threads() == default
    assert threads() == default  # restored after the stage
