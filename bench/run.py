"""Benchmarks (`make bench`): JSON on stdout, side-by-side figures measured in one run.

Not tests: nothing here asserts a time. Each section reports what it measured, on which
machine, and the ratio between the two ways of doing the same work.

    python bench/run.py [--sections gap,prdc,pipeline] [--out results/bench.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: lib is at the root
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))

import numpy as np  # noqa: E402


def machine() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError):
        info["memory_gib"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        )
    return info


def _levels(n: int, d: int, levels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(levels):
        real = rng.normal(size=(n, d)).astype(np.float32)
        fake = (rng.normal(size=(n, d)) * 1.1 + 0.05 * (i + 1)).astype(np.float32)
        yield f"level{i}", real, fake


def bench_gap(n: int = 10_000, d: int = 256, levels: int = 5) -> dict:
    """All gap metrics for `levels` levels of n + n vectors (issue target: < 60 s on 2 cores)."""
    from lib.gap import GapParams, level_gap

    per_level, parts = {}, {}
    t0 = time.perf_counter()
    for name, real, fake in _levels(n, d, levels):
        t = time.perf_counter()
        result = level_gap(real, fake, GapParams())
        per_level[name] = round(time.perf_counter() - t, 2)
        for key, value in result.seconds.items():
            parts[key] = round(parts.get(key, 0.0) + value, 2)
    total = time.perf_counter() - t0
    return {
        "what": f"all gap metrics, {levels} levels of {n} real + {n} synthetic × {d}",
        "seconds": round(total, 2),
        "target_seconds": 60,
        "ratio_to_target": round(total / 60, 3),
        "per_level_seconds": per_level,
        "per_metric_seconds": parts,
    }


def bench_prdc(n: int = 5000, d: int = 256) -> dict:
    """Our blocked float32 PRDC vs the `prdc` package (full N×N matrices), same data."""
    try:
        import prdc as reference
    except ImportError:
        return {"skipped": "pip install prdc (requirements-dev.txt) for this comparison"}
    from lib.gap import prdc

    ((_, real, fake),) = _levels(n, d, 1)
    t = time.perf_counter()
    ours = prdc(real, fake, k=5)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints
        ref = reference.compute_prdc(real, fake, nearest_k=5)
    t_ref = time.perf_counter() - t
    return {
        "what": f"precision/recall/density/coverage, {n} + {n} × {d}, k=5",
        "gapscope_seconds": round(t_ours, 2),
        "prdc_package_seconds": round(t_ref, 2),
        "speedup": round(t_ref / t_ours, 2),
        "max_abs_difference": max(
            abs(getattr(ours, key) - float(ref[key]))
            for key in ("precision", "recall", "density", "coverage")
        ),
    }


def bench_pipeline() -> dict:
    """The bundled example end to end: build it, run the batch job (issue target: < 60 s)."""
    from lib.example import build_example
    from lib.pipeline import RunConfig, run
    from lib.store import RunStore

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = build_example(Path(tmp) / "example")
        t_example = time.perf_counter() - t
        t = time.perf_counter()
        published = run(
            RunConfig(real=summary.root / "real", synthetic=summary.root / "synthetic"),
            RunStore(Path(tmp) / "results"),
        )
        total = time.perf_counter() - t
        return {
            "what": f"bundled example: {summary.real} real + {summary.synthetic} synthetic, "
            "efficientnet-lite0, 5 levels",
            "example_seconds": round(t_example, 2),
            "batch_seconds": round(total, 2),
            "target_seconds": 60,
            "ratio_to_target": round(total / 60, 3),
            "stages_seconds": published.manifest["timings_s"],
        }


def _timed(fn, *args, repeat: int = 1, **kwargs) -> float:
    """Seconds of the fastest of `repeat` calls (the first call of a backend warms it up)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t)
    return best


def bench_umap(sizes=(10_000,), d: int = 256) -> dict:
    """UMAP fit on one domain + transform of the other: umap-learn, and cuML on a GPU."""
    from lib.backend import choose_backend
    from lib.reduce import UMAPParams, fit_and_map

    gpu = choose_backend("auto").name == "cuml"
    out = {"what": f"UMAP fit + transform, n + n points × {d}", "by_n": {}}
    for n in sizes:
        ((_, a, b),) = _levels(n, d, 1)
        row = {"umap_learn_seconds": round(_timed(fit_and_map, a, b, UMAPParams(), "cpu"), 2)}
        if gpu:
            fit_and_map(a[:2000], b[:2000], UMAPParams(), "cuml")  # CUDA warm-up
            row["cuml_seconds"] = round(_timed(fit_and_map, a, b, UMAPParams(), "cuml"), 3)
            row["speedup"] = round(row["umap_learn_seconds"] / row["cuml_seconds"], 1)
        out["by_n"][n] = row
    return out


def bench_knn(n: int = 100_000, d: int = 256, k: int = 16) -> dict:
    """Exact kNN of n vectors: torch on the CPU, and on the GPU when there is one."""
    import torch

    from lib.neighbors import knn

    ((_, a, _),) = _levels(n, d, 1)
    out = {"what": f"exact kNN, {n} × {d}, k={k}, cosine"}
    out["cpu_seconds"] = round(_timed(knn, a, k, "cosine", "cpu"), 2)
    if torch.cuda.is_available():
        knn(a[:1000], k, "cosine", "cuda")  # warm-up
        out["gpu_seconds"] = round(_timed(knn, a, k, "cosine", "cuda", repeat=2), 3)
        out["speedup"] = round(out["cpu_seconds"] / out["gpu_seconds"], 1)
    return out


SECTIONS = {
    "gap": bench_gap,
    "prdc": bench_prdc,
    "pipeline": bench_pipeline,
    "umap": bench_umap,
    "knn": bench_knn,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), "results": {}}
    for name in args.sections.split(","):
        print(f"bench: {name} ...", file=sys.stderr)
        report["results"][name] = SECTIONS[name]()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
