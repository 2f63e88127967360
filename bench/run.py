"""Benchmarks (`make bench`): JSON on stdout, side-by-side figures measured in one run.

Not tests: nothing here asserts a time. Each section reports what it measured, on which
machine, and the ratio between the two ways of doing the same work.

    python bench/run.py [--sections gap,prdc,pipeline,umap,knn,extraction,caricature,scale,demo,
                         resume,atlas,whatif,dask,training,objects,threads]
                        [--out results/bench.json]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
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
    """All gap metrics for `levels` levels of n + n vectors (issue target: < 60 s on 2 cores),
    where a run of that size would compute them (lib.runtime.backend's choice)."""
    from lib.analysis.gap import GapParams, level_gap
    from lib.runtime.backend import choose_backend

    backend = choose_backend("auto", n_images=2 * n)
    per_level, parts = {}, {}
    t0 = time.perf_counter()
    for name, real, fake in _levels(n, d, levels):
        t = time.perf_counter()
        result = level_gap(real, fake, GapParams(), backend)
        per_level[name] = round(time.perf_counter() - t, 2)
        for key, value in result.seconds.items():
            parts[key] = round(parts.get(key, 0.0) + value, 2)
    total = time.perf_counter() - t0
    return {
        "what": f"all gap metrics, {levels} levels of {n} real + {n} synthetic × {d}, "
        f"torch on {backend.device}, kNN {backend.knn_engine}",
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
    from lib.analysis.gap import prdc

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
    from lib.inputs.example import build_example
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = build_example(Path(tmp) / "example")
        t_example = time.perf_counter() - t
        t = time.perf_counter()
        published = run(
            RunConfig.of(real=summary.root / "real", synthetic=summary.root / "synthetic"),
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


def bench_resume(n_per_domain: int | None = None, options: tuple[str, ...] = ()) -> dict:
    """What a kill costs: the bundled example's batch job cold (`python -m batch run`,
    empty feature cache); into another store, the same job SIGKILLed as projection
    starts (every feature extracted and cached, nothing published), then its rerun, which
    resumes from the cache. Each in a fresh process, as cron runs them; `options` are
    added to each (the tests' lighter job)."""
    import subprocess

    from lib.inputs.example import build_example
    from lib.store.runs import RunStore

    killed_at_projection = (
        "import os, signal, sys; import lib.jobs.run; from batch.cli import main; "
        "lib.jobs.run.project = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
        "sys.argv = ['batch', *sys.argv[1:]]; main()"
    )
    with tempfile.TemporaryDirectory() as tmp:
        sizes = (
            {} if n_per_domain is None else {"n_real": n_per_domain, "n_synthetic": n_per_domain}
        )
        example = build_example(Path(tmp) / "example", **sizes).root

        def batch(results: str, *python: str) -> tuple[float, int]:
            args = [
                "run",
                "--real",
                str(example / "real"),
                "--synthetic",
                str(example / "synthetic"),
                "--results",
                str(Path(tmp) / results),
                *options,
            ]
            t = time.perf_counter()
            done = subprocess.run(
                [sys.executable, *python, *args], cwd=ROOT, capture_output=True, text=True
            )
            return time.perf_counter() - t, done.returncode

        cold, _ = batch("cold", "-m", "batch")
        killed, code = batch("killed", "-c", killed_at_projection)
        if code != -9:
            raise RuntimeError(f"the kill did not happen (exit {code})")
        rerun, _ = batch("killed", "-m", "batch")
        published = RunStore(Path(tmp) / "killed").open()
        assert published.manifest["cached_images"] == len(published.images)
        return {
            "images": len(published.images),
            "cold_s": round(cold, 1),
            "killed_at_projection_after_s": round(killed, 1),
            "rerun_after_kill_s": round(rerun, 1),
            "rerun_vs_cold": round(rerun / cold, 2),
            "cold_stages_s": RunStore(Path(tmp) / "cold").open().manifest["timings_s"],
            "rerun_stages_s": published.manifest["timings_s"],
        }


def _timed(fn, *args, repeat: int = 1, **kwargs) -> float:
    """Seconds of the fastest of `repeat` calls (the first call of a backend warms it up)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t)
    return best


def bench_umap(sizes=None, d: int = 256) -> dict:
    """UMAP fit on one domain + transform of the other: umap-learn, and cuML on a GPU
    (there also at 100k points: issue target ≤ 2 s on the H100)."""
    from lib.analysis.reduce import UMAPParams, fit_and_map
    from lib.runtime.backend import choose_backend

    gpu = choose_backend("auto").name == "cuml"
    sizes = sizes or ((10_000, 100_000) if gpu else (10_000,))
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
    """Exact kNN of n vectors: torch and FAISS on the CPU, torch on the GPU when there is one."""
    import torch

    from lib.analysis.neighbours import knn

    ((_, a, _),) = _levels(n, d, 1)
    out = {"what": f"exact kNN, {n} × {d}, k={k}, cosine"}
    out["cpu_torch_seconds"] = round(_timed(knn, a, k, "cosine", "cpu", engine="torch"), 2)
    out["cpu_faiss_seconds"] = round(_timed(knn, a, k, "cosine", "cpu", engine="faiss"), 2)
    out["faiss_speedup"] = round(out["cpu_torch_seconds"] / out["cpu_faiss_seconds"], 2)
    if torch.cuda.is_available():
        knn(a[:1000], k, "cosine", "cuda")  # warm-up
        out["gpu_seconds"] = round(_timed(knn, a, k, "cosine", "cuda", repeat=2), 3)
        out["gpu_speedup_over_cpu_faiss"] = round(out["cpu_faiss_seconds"] / out["gpu_seconds"], 1)
    return out


def _write_photos(folder: Path, n: int, seed: int = 0) -> None:
    """n JPEG files of smooth random colour fields, 640×560, so decoding and resizing to
    the model's side are real work."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (14, 16, 3), dtype=np.uint8))
        small.resize((640, 560), Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)


def bench_extraction(n: int | None = None, side: int = 512) -> dict:
    """ResNet-50-FPN feature extraction at side×side, same images, same model: a plain
    fp32 loop (decode on the main thread, one batch at a time, NCHW) vs `lib.features.engine.
    extract` (decoding workers, pinned memory, bf16 autocast and channels_last on a GPU,
    pooling on the device). Issue target on the H100: ≥ 1,500 images/s optimised."""
    import torch

    from lib import extract_images
    from lib.features.backbones import create_backbone
    from lib.features.pooling import pool
    from lib.inputs.images import Prepare, open_folder
    from lib.runtime.backend import choose_backend
    from lib.runtime.executor import Executor

    backend = choose_backend("auto")  # what a run picks: device, precision, decoding workers
    device, precision = backend.device, backend.precision
    gpu = device == "cuda"
    n = n or (4096 if gpu else 24)
    batch_size = 64 if gpu else 8
    with tempfile.TemporaryDirectory() as tmp:
        _write_photos(Path(tmp) / "images", n)
        prepare = Prepare(resize=side)
        images = open_folder(Path(tmp) / "images", "real", prepare)
        records = images.records
        backbone = create_backbone("resnet50-fpn", random_weights=True)
        backbone.module.to(device)

        def plain(recs) -> dict[str, np.ndarray]:
            out: dict[str, list] = {lv: [] for lv in backbone.levels}
            for start in range(0, len(recs), batch_size):
                pixels = np.stack([images.load(r, prepare) for r in recs[start:][:batch_size]])
                with torch.inference_mode():
                    maps = backbone.module(backbone.preprocess(pixels, device))
                for lv in backbone.levels:
                    out[lv].append(pool(maps[lv], "avg").cpu().numpy())
            return {lv: np.concatenate(v) for lv, v in out.items()}

        def optimised(recs) -> dict[str, np.ndarray]:
            items = [(images, r) for r in recs]
            return extract_images(
                backbone, items, prepare, Executor(backend), batch_size=batch_size
            ).vectors

        plain(records[:batch_size])  # warm-up: kernels, allocator, cuDNN's algorithm search
        optimised(records[:batch_size])
        t = time.perf_counter()
        reference = plain(records)
        plain_seconds = time.perf_counter() - t
        t = time.perf_counter()
        vectors = optimised(records)
        optimised_seconds = time.perf_counter() - t
    rel = {
        lv: round(
            float(
                np.median(
                    np.linalg.norm(vectors[lv] - reference[lv], axis=1)
                    / np.linalg.norm(reference[lv], axis=1)
                )
            ),
            4,
        )
        for lv in backbone.levels
    }
    return {
        "what": f"ResNet-50-FPN p2..p6, {n} JPEGs resized to {side}×{side}, batch {batch_size}, "
        f"{device}",
        "plain_fp32_images_per_s": round(n / plain_seconds, 1),
        "optimised_images_per_s": round(n / optimised_seconds, 1),
        "optimised": f"{precision}, {backend.workers} decoding workers, "
        "pooling on the device" + (", channels_last, pinned memory" if gpu else ""),
        "speedup": round(plain_seconds / optimised_seconds, 2),
        "target_images_per_s_h100": 1500,
        "median_relative_error_vs_fp32": rel,
    }


def bench_caricature() -> dict:
    """Caricatures optimised as one batch (what `batch caricature` does) vs one after
    another, same model, layers, images and steps: caricatures per minute."""
    import torch
    import torchvision

    from lib.analysis.caricature import CaricatureParams, compute
    from tests.test_caricature import smooth_images

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    if gpu:
        arch, layers, n_images, size, input_size, steps = (
            "resnet50",
            ["layer1.2", "layer2.3", "layer3.5", "layer4.2"],
            8,
            128,
            224,
            64,
        )
    else:
        arch, layers, n_images, size, input_size, steps = (
            "resnet18",
            ["layer2.1", "layer3.1"],
            3,
            64,
            112,
            16,
        )
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    images = smooth_images(n_images, side=input_size)
    params = CaricatureParams(size=size, input_size=input_size, steps=steps)
    half = (0.5, 0.5, 0.5)
    compute(model, layers[0], images[:1], half, half, params, device=device)  # warm-up

    def one_at_a_time():
        results = [
            compute(model, layer, images[i : i + 1], half, half, params, device=device)
            for layer in layers
            for i in range(n_images)
        ]
        return np.stack([r.images[0] for r in results]), np.r_[[r.cosine[0] for r in results]]

    def batched():
        result = compute(model, layers, images, half, half, params, device=device)
        return result.images, result.cosine

    t = time.perf_counter()
    looped = one_at_a_time()
    loop_seconds = time.perf_counter() - t
    t = time.perf_counter()
    together = batched()
    batch_seconds = time.perf_counter() - t
    items = len(layers) * n_images
    # the same caricatures either way (batch items are layer-major, like the loop), up to
    # batched kernels' rounding, which Adam's normalised steps carry into the images
    pixels = np.abs(looped[0] - together[0])
    return {
        "what": f"{arch} (random weights), {n_images} images × {len(layers)} layers, "
        f"{size}² → {input_size}², {steps} steps, {device}",
        "one_at_a_time_seconds": round(loop_seconds, 2),
        "batched_seconds": round(batch_seconds, 2),
        "one_at_a_time_per_minute": round(items / loop_seconds * 60, 1),
        "batched_per_minute": round(items / batch_seconds * 60, 1),
        "batched_per_minute_at_512_steps": round(items / batch_seconds * 60 * steps / 512, 2),
        "speedup": round(loop_seconds / batch_seconds, 2),
        "batched_vs_one_at_a_time": {
            "mean_abs_pixel_difference": float(pixels.mean()),
            "max_abs_pixel_difference": float(pixels.max()),
            "max_cosine_difference": float(np.abs(looped[1] - together[1]).max()),
        },
    }


def bench_scale(sizes=(100_000, 1_000_000), d: int = 256, demo: bool = True) -> dict:
    """n + n given embeddings (a Gaussian mixture with a known shift, lib.inputs.mixture) through
    the whole batch job in a fresh process, as a user runs it: seconds per stage, peak
    resident memory, the approximate-kNN recall and UMAP probe the run measured, and
    click → gallery server time on the published run. Sizes ascending: peak RSS is read
    from the finished child processes, so each figure is that size's own."""
    import resource
    import statistics
    import subprocess

    from lib.inputs.mixture import write_pair

    out = {}
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            t = time.perf_counter()
            real, fake = write_pair(Path(tmp) / "vectors", n, n, dim=d)
            generated = time.perf_counter() - t
            cmd = [
                sys.executable,
                "-m",
                "batch",
                "run",
                "--real",
                str(real),
                "--synthetic",
                str(fake),
                "--results",
                str(Path(tmp) / "results"),
            ]
            t = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t
            peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
            from lib.store.runs import RunStore

            run = RunStore(Path(tmp) / "results").open()
            m = run.manifest
            clicks = _click_times(run)
            served = _first_render(Path(tmp) / "results") if demo else {"skipped": "asked"}
            gap = run.metrics["levels"]["embedding"]
            out[f"{n}+{n}"] = {
                "dims": d,
                "generate_s": round(generated, 1),
                "end_to_end_s": round(wall, 1),
                "stages_s": {k: round(v, 1) for k, v in m["timings_s"].items()},
                "gap_parts_s": gap["seconds"],
                "peak_rss_gib": round(peak_gib, 2),
                "neighbors": m["neighbors"]["embedding"],
                "projections": m["projections"],
                "gap_sample": gap["n"],
                "click_to_gallery_ms": {
                    "first": round(clicks[0], 1),
                    "median_of_next_20": round(statistics.median(clicks[1:]), 2),
                },
                "overlap_plot": _plot_payload(run),
                "atlas": _atlas_payload(run),
                "demo": served,
            }
            print(f"bench: scale {n}+{n}: {wall:.0f} s, {peak_gib:.2f} GiB", file=sys.stderr)
    return out


def _plot_payload(run) -> dict:
    """The overlap figure the demo sends for the default view, 3D and 2D: bytes of JSON,
    points shipped and server seconds to build it (the first build reads the tables)."""
    from demo.overlap import overlap_figure

    out = {}
    for view in ("3D", "2D"):
        t = time.perf_counter()
        fig = overlap_figure(run, "embedding", "real", view=view)
        text = fig.to_json()
        seconds = time.perf_counter() - t
        points = sum(len(tr.customdata) for tr in fig.data if tr.customdata is not None)
        out[view] = {"bytes": len(text), "points": points, "server_s": round(seconds, 2)}
    return out


def _first_render(results: Path) -> dict:
    """Serve the run with `python -m demo`; in headless Chromium, seconds from navigation
    to the overlap plot drawn (its WebGL canvas present and the legend written). Skipped
    without Debian's chromium."""
    import shutil

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        return {"skipped": "no chromium"}
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import serve_demo
    from playwright.sync_api import sync_playwright

    t = time.perf_counter()
    with serve_demo(results, timeout=1200) as url, sync_playwright() as pw:
        start = time.perf_counter() - t
        browser = pw.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        t = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("#overlap_plot .js-plotly-plot canvas", timeout=300_000)
        page.wait_for_function(
            "() => document.querySelector('#overlap_plot .legendtext')", timeout=300_000
        )
        first_render = time.perf_counter() - t
        atlas = _atlas_render(page)
        browser.close()
    return {
        "server_start_s": round(start, 1),
        "first_render_s": round(first_render, 2),
        "atlas": atlas,
    }


def _atlas_render(page) -> dict:
    """The Atlas tab in the same page: seconds from the click on the tab to every point
    drawn (its view built on the server, the points fetched, regl-scatterplot's first
    frame), the bytes it took, and a lasso drawn with the mouse over the middle."""
    wrap = "document.querySelector('#atlas .atlas-wrap')"
    sizes = []
    page.on("response", lambda r: sizes.append(len(r.body())) if "points.bin" in r.url else None)
    t = time.perf_counter()
    page.get_by_role("tab", name="Atlas").click()
    page.wait_for_function(f"() => {wrap} && {wrap}.dataset.ready !== '0'", timeout=600_000)
    seconds = time.perf_counter() - t
    points = int(page.evaluate(f"() => {wrap}.dataset.points"))
    box = page.locator("#atlas .atlas-wrap").bounding_box()
    page.click("#atlas .atlas-lasso")
    at = [
        (box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        for fx, fy in ((0.4, 0.4), (0.6, 0.4), (0.6, 0.6), (0.4, 0.6), (0.4, 0.41))
    ]
    t = time.perf_counter()
    page.mouse.move(*at[0])
    page.mouse.down()
    for corner in at[1:]:
        page.mouse.move(*corner, steps=4)
    page.mouse.up()
    page.wait_for_function(
        "() => /\\d+ selected:/.test(document.querySelector('#atlas_selection').innerText)",
        timeout=600_000,
    )
    lasso = time.perf_counter() - t
    return {
        "points": points,
        "first_render_s": round(seconds, 2),
        "points_bin_bytes": sizes[0] if sizes else None,
        "lasso_to_gallery_s": round(lasso, 2),
        "lassoed": int(page.evaluate(f"() => {wrap}.dataset.selected")),
    }


def _atlas_payload(run) -> dict:
    """What the atlas sends besides the points: the view JSON (colour codes, legend) and
    the server seconds to build it, first (reads the tables, lays out) and again."""
    from demo.atlas import coordinates, view
    from lib.store.runs import RunStore

    store, out = RunStore(run.results), {}
    for when in ("first", "again"):
        t = time.perf_counter()
        text = view(store, run.id, "UMAP map", "domain")
        out[f"{when}_s"] = round(time.perf_counter() - t, 2)
    out["view_json_bytes"] = len(text)
    for layout in ("grid", "category"):
        t = time.perf_counter()
        coordinates(run, layout)
        out[f"{layout}_layout_s"] = round(time.perf_counter() - t, 2)
    return out


def _click_times(run, clicks: int = 21) -> list[float]:
    """Server time (ms) of the click → gallery event's work, the neighbour gallery and the
    selected image's caption, for seeded rows; the first click also reads the images
    table, as the first click on a run the demo has not opened does."""
    from demo.overlap import neighbour_gallery
    from demo.runs import caption

    rng = np.random.default_rng(0)
    times = []
    for _ in range(clicks):
        t = time.perf_counter()
        row = int(rng.integers(len(run.images)))
        neighbour_gallery(run, "embedding", row)
        caption(run, row)
        times.append((time.perf_counter() - t) * 1000)
    return times


# the README's promises for the demo under load (issue #27), on a quiet machine
DEMO_TARGETS = {16: {"p95_ms": 300}, 64: {"p95_ms": 1500, "errors": 0}}


def bench_demo(clients=(1, 16, 64), seconds: float = 30.0, n_per_domain: int = 150) -> dict:
    """The demo under load: a run of the bundled example (`n_per_domain` images a domain)
    served by `python -m demo`; for each number of clients, every client clicks random
    points (`select_point`, as a browser does: bench/demo_load.py) for `seconds`:
    clicks/s, latency percentiles, errors, and the server's CPU (cores busy on average).
    The clients run on the same machine, so they share its cores with the server."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import serve_demo

    from bench.demo_load import load
    from lib.inputs.example import build_example
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        example = build_example(Path(tmp) / "example", n_per_domain, n_per_domain, seed=0).root
        published = run(
            RunConfig.of(real=example / "real", synthetic=example / "synthetic", plots=False),
            RunStore(Path(tmp) / "results"),
        )
        level, n = published.levels[len(published.levels) // 2], len(published.images)

        def a_click(rng) -> list:
            return [json.dumps({"id": int(rng.integers(n)), "t": time.time()}), published.id, level]

        with serve_demo(Path(tmp) / "results", timeout=300, process=True) as (url, server):
            for count in clients:
                before = os.getloadavg()[0]
                cpu, t0 = _cpu_seconds(server.pid), time.perf_counter()
                row = load(url, "select_point", a_click, count, seconds)
                wall = time.perf_counter() - t0
                row["server_cores_busy"] = round((_cpu_seconds(server.pid) - cpu) / wall, 2)
                # the machine's 1-minute load before and after (it includes our clients):
                # a figure taken on a busy machine says so beside itself
                row["load_average_1m"] = [round(before, 2), round(os.getloadavg()[0], 2)]
                if count in DEMO_TARGETS:
                    row["target"] = DEMO_TARGETS[count]
                    row["target_met"] = row["p95_ms"] <= DEMO_TARGETS[count]["p95_ms"] and (
                        row["errors"] <= DEMO_TARGETS[count].get("errors", math.inf)
                    )
                out[f"{count}_clients"] = row
                print(f"bench: demo {count} clients: {row}", file=sys.stderr)
    return {"images": n, "seconds_each": seconds, **out}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_threads(sizes=(200, 2000), d: int = 64, busy_workers: int | None = None) -> dict:
    """The per-stage thread rule (lib.runtime.threads) against the libraries' defaults,
    on a quiet machine and on a busy one (a CPU-bound process per core beside it): the
    gap of one level (`sizes` images per domain, `d`-dimensional) and the attribution's
    gradient-boosting fits (5 folds × 2 on 10 statistics of 2 × `n` images). Seconds,
    best of 3, with the 1-minute load average beside each figure."""
    import multiprocessing as mp

    from threadpoolctl import threadpool_limits

    from lib.analysis.attribution import STATISTICS, explained
    from lib.analysis.gap import GapParams, level_gap

    def work(n):
        rng = np.random.default_rng(0)
        real, fake = rng.normal(size=(n, d)), rng.normal(0.2, 1.0, size=(n, d))
        stats = {name: rng.normal(size=2 * n) for name in STATISTICS}
        p = rng.random(2 * n)
        params = GapParams(resamples=50, kid_subsets=20)
        return {
            "gap": lambda: level_gap(real, fake, params),
            "attribution": lambda: explained(stats, p),
        }

    def best(fn, limit) -> float:
        times = []
        for _ in range(3):
            with threadpool_limits(limits=limit):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return round(min(times), 3)

    out = {}
    for state in ("quiet", "busy"):
        burners = []
        if state == "busy":
            for _ in range(busy_workers or os.cpu_count() or 1):
                burners.append(mp.get_context("spawn").Process(target=_burn, daemon=True))
                burners[-1].start()
            time.sleep(2)
        try:
            for n in sizes:
                for stage, fn in work(n).items():
                    rule, default = best(fn, 1), best(fn, None)
                    row = {
                        "rule_1_thread_s": rule,
                        "default_threads_s": default,
                        "default_over_rule": round(default / rule, 2),
                        "load_average_1m": round(os.getloadavg()[0], 2),
                    }
                    out[f"{state}_{stage}_{n}"] = row
                    print(f"bench: threads {state} {stage} n={n}: {row}", file=sys.stderr)
        finally:
            for b in burners:
                b.terminate()
    return out


def _burn() -> None:
    while True:  # a CPU-bound neighbour: another job on the shared machine
        pass


def bench_atlas(sizes=(100_000, 1_000_000)) -> dict:
    """The atlas's renderer, chosen by this measurement: regl-scatterplot, plotly's
    scattergl and deck.gl drawing the same points in headless Chromium (see
    bench/atlas_renderers.py). Skipped without Debian's chromium."""
    if not os.path.exists("/usr/bin/chromium"):
        return {"skipped": "no chromium"}
    sys.path.insert(0, str(ROOT / "bench"))
    from atlas_renderers import measure

    return measure(sizes)


def bench_whatif(n: int | None = None, side: int = 512, job=None, example_n=None) -> dict:
    """What a what-if run costs. (1) Each transform alone at its middle default strength
    on side×side photos, on the device a run uses (images per second). (2) The whole job
    on the bundled example, every transform at every default strength (25 variants of
    500 synthetic images against 1,000 real): images × variants per second, by step.
    `job` (a WhatIfJob) and `example_n` (images per domain) make it smaller, for tests."""
    import torch

    from lib.inputs.example import build_example
    from lib.inputs.transforms import (
        TRANSFORMS,
        Reference,
        channel_histogram,
        reference_cdf,
        tone_curve,
    )
    from lib.jobs.run import RunConfig, run
    from lib.jobs.whatif import WhatIfJob, run_whatif
    from lib.runtime.backend import choose_backend
    from lib.store.runs import RunStore

    device = choose_backend("auto").device
    n = n or (1024 if device == "cuda" else 64)
    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.integers(0, 256, (8, 3, 14, 16), dtype=np.uint8)).float()
    photos = torch.nn.functional.interpolate(small, (side, side), mode="bicubic")
    batch = photos.clamp(0, 255).to(torch.uint8).repeat(4, 1, 1, 1).to(device)  # 32 images
    counts = channel_histogram(batch.cpu())
    reference = Reference(
        cdf=reference_cdf(counts),
        style=batch.flip(0),
        curve=tone_curve(channel_histogram(batch.flip(0).cpu()), counts),
    )
    per_transform = {}
    for name, t in TRANSFORMS.items():
        strength = t.defaults[len(t.defaults) // 2]
        generator = torch.Generator().manual_seed(0)
        t.apply(batch, strength, generator, reference)  # warm-up
        start = time.perf_counter()
        for _ in range(max(1, n // len(batch))):
            t.apply(batch, strength, generator, reference)
        if device == "cuda":
            torch.cuda.synchronize()
        per_transform[name] = round(max(n, len(batch)) / (time.perf_counter() - start), 1)
    with tempfile.TemporaryDirectory() as tmp:
        summary = build_example(Path(tmp) / "example", example_n, example_n or 1000)
        store = RunStore(Path(tmp) / "results")
        run(
            RunConfig.of(
                real=summary.root / "real",
                synthetic=summary.root / "synthetic",
                projections=("pca",),
                atlas_level="none",
                attribution=0,
                plots=False,
            ),
            store,
        )
        t = time.perf_counter()
        results = run_whatif(job or WhatIfJob(), store).whatif
        total = time.perf_counter() - t
    variants = len(results["variants"])
    images = results["samples"]["synthetic"] * variants
    return {
        "what": f"what-if: transforms alone on {side}×{side} photos, {device}; the whole job on "
        f"the bundled example ({variants} variants × {results['samples']['synthetic']} "
        f"synthetic images, {len(results['levels'])} levels, efficientnet-lite0)",
        "transform_images_per_s": per_transform,
        "job_seconds": round(total, 1),
        "job_images_x_variants_per_s": round(images / total, 1),
        "job_seconds_by_step": results["seconds"],
        "extract_share": round(results["seconds"]["extract"] / total, 3),
        "measure_share": round(results["seconds"]["measure"] / total, 3),
    }


def bench_dask(
    n: int | None = None, side: int = 256, workers=(1, 2), rows: int | None = None
) -> dict:
    """Through Dask (`--dask local:N`, N worker processes of one thread) against the single
    process, in one run: (1) the scan and extraction of the same JPEGs, the default model,
    fresh feature caches: images per second of scan + extract (worker start-up before them,
    the model's load on each worker inside); (2) the stages after extraction on given
    embeddings (`rows` per domain, 256-d mixture vectors): UMAP and atlas placements and
    the per-image gap scores outside the sample are block tasks on the workers, the fits
    and the exact search stay on the client: seconds of project + atlas + gap."""
    from lib.inputs.mixture import write_pair
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    n, rows = n or 512, rows or 50_000
    names = ["single process", *(f"local:{w}" for w in workers)]
    out, after = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for domain, seed in (("real", 0), ("synthetic", 1)):
            _write_photos(Path(tmp) / domain, n // 2, seed)
        for name in names:
            config = RunConfig.of(
                real=Path(tmp) / "real",
                synthetic=Path(tmp) / "synthetic",
                resize=side,
                projections=("pca",),
                atlas_level="none",
                attribution=0,
                plots=False,
                dask=None if name == "single process" else name,
            )
            t = run(config, RunStore(Path(tmp) / name.replace(":", "_"))).manifest["timings_s"]
            seconds = t["scan"] + t["extract"]
            out[name] = {
                "scan_s": t["scan"],
                "extract_s": t["extract"],
                "images_per_s": round(n / seconds, 1),
            }
        real, fake = write_pair(Path(tmp) / "vectors", rows, rows)
        # a process's first nearest-neighbour descent (UMAP above 4,096 points) compiles
        # pynndescent's functions (~15 s): not in the single process's figure, measured first
        warm = write_pair(Path(tmp) / "warm", 5000, 5000, dim=32)
        run(
            RunConfig.of(
                real=warm[0],
                synthetic=warm[1],
                projections=("umap",),
                plots=False,
                atlas_level="none",
            ),
            RunStore(Path(tmp) / "warm-results"),
        )
        for name in names:
            config = RunConfig.of(
                real=real,
                synthetic=fake,
                projections=("umap",),
                plots=False,
                dask=None if name == "single process" else name,
            )
            published = run(config, RunStore(Path(tmp) / f"rows-{name.replace(':', '_')}"))
            t = published.manifest["timings_s"]
            after[name] = {stage: t[stage] for stage in ("project", "atlas", "neighbors", "gap")}
            after[name]["project_atlas_gap_s"] = round(t["project"] + t["atlas"] + t["gap"], 1)
            after[name]["block_tasks"] = (published.manifest["dask"] or {}).get("block_tasks", 0)
    single = out["single process"]["images_per_s"]
    single_after = after["single process"]["project_atlas_gap_s"]
    return {
        "what": f"scan + extract of {n} JPEGs (640×560, resized to {side}), efficientnet-lite0, "
        f"{os.cpu_count()} cores",
        **out,
        "ratio_to_single_process": {
            k: round(v["images_per_s"] / single, 2) for k, v in out.items() if k != "single process"
        },
        "after_extraction": {
            "what": f"given embeddings, {rows:,} + {rows:,} × 256, UMAP (fit on 20,000, the "
            "rest placed) and the atlas, gap on a 20,000 sample with every image scored",
            **after,
            "speedup_of_project_atlas_gap": {
                k: round(single_after / v["project_atlas_gap_s"], 2)
                for k, v in after.items()
                if k != "single process"
            },
        },
    }


def bench_training(n: int | None = None, side: int | None = None, epochs: int = 2) -> dict:
    """`batch train classifier` on the bundled example's digits: training images per second
    (forward, backward and step, with decoding; an epoch's seconds include its validation
    pass over the 10 % held out), on the device a run uses."""
    from lib.inputs.example import build_example
    from lib.jobs.training import Schedule, TrainJob, train_classifier
    from lib.runtime.backend import choose_backend

    gpu = choose_backend("auto").device == "cuda"
    side = side or (224 if gpu else 64)
    with tempfile.TemporaryDirectory() as tmp:
        summary = build_example(Path(tmp) / "example", n, n or 1000)
        data = [summary.root / "real", summary.root / "synthetic"]
        schedule = Schedule(epochs=epochs, warmup_epochs=1, image_size=side, batch_size=64)
        job = TrainJob(name="bench", data=data, schedule=schedule)
        out = train_classifier(job, Path(tmp) / "results")
        import csv

        with open(out / "training.csv") as f:
            history = list(csv.DictReader(f))
    n_train = round((summary.real + summary.synthetic) * (1 - schedule.val_share))
    per_epoch = [float(r["seconds"]) for r in history]
    return {
        "what": f"fine-tuning efficientnet-lite0 on {summary.real + summary.synthetic} digits at "
        f"{side} px, batch 64, {'bf16 on the GPU' if gpu else 'fp32 on the CPU'}",
        "epoch_seconds": per_epoch,
        "train_images_per_s": round(n_train / min(per_epoch), 1),
        "val_accuracy": [float(r["val_accuracy"]) for r in history],
    }


def bench_objects(n_scenes: int = 40, test_size: tuple[int, int] = (480, 640)) -> dict:
    """Per-object features on the object example (`n_scenes` scenes a domain, 2-5 digits
    each): ROIAlign on the level the ROI heads assign (`roi`), on every level (`levels`),
    each after one forward pass per image at the detector's test-time resize (shortest
    edge test_size[0]; and roi at the images' own size), against cropping each box (25 %
    margin) and running the crop at 224 px (`crop`): the same boxes, the same
    ResNet-50-FPN (random weights: speed does not depend on them), objects per second.
    ROI pooling costs one forward pass per image whatever its number of objects; a crop
    costs one per object."""
    from lib import extract_objects
    from lib.features.backbones import create_backbone
    from lib.inputs.boxes import read_boxes
    from lib.inputs.example import build_object_example
    from lib.inputs.images import Prepare, open_folder
    from lib.inputs.objects import ObjectImages, object_key

    backbone = create_backbone("resnet50-fpn", random_weights=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = build_object_example(Path(tmp) / "objects", n_scenes).root
        items, boxes, keys = [], [], []
        for domain in ("real", "synthetic"):
            image_set = open_folder(root / domain, domain, Prepare())
            found = read_boxes(root / f"{domain}.json", image_set.records)
            for i, record in enumerate(image_set.records):
                mine = [(b.x0, b.y0, b.x1, b.y1) for b in found.boxes if b.image == i]
                items.append((image_set, record))
                boxes.append(np.array(mine, np.float32).reshape(-1, 4))
                keys.append([object_key(record.hash, b) for b in mine])
        images = ObjectImages(items, boxes, keys)
        n = images.n_objects
        out = {}
        detector = Prepare(resize="detector", test_size=test_size)
        for name, mode, prepare, batch in (
            ("roi", "roi", detector, 4),
            ("levels", "levels", detector, 4),
            ("roi at the images' own size", "roi", Prepare(), 4),
            ("crop", "crop", Prepare(), 16),
        ):
            t = time.perf_counter()
            extract_objects(backbone, images, prepare, mode, batch_size=batch, crop_size=224)
            seconds = time.perf_counter() - t
            out[name] = {
                "seconds": round(seconds, 2),
                "objects_per_s": round(n / seconds, 1),
                "images_per_s": round(len(items) / seconds, 2),
            }
    crop = out["crop"]["objects_per_s"]
    return {
        "what": f"{n} objects on {len(items)} images (scenes of 192-240 × 240-288 px, resized "
        f"to a shortest edge of {test_size[0]}, or as they are), resnet50-fpn, fp32, "
        f"{os.cpu_count()} cores; crop: each box with a 25 % margin at 224 px",
        **out,
        "ratio_to_crop": {m: round(v["objects_per_s"] / crop, 2) for m, v in out.items()},
    }


def bench_detection(sizes=(1000, 5000)) -> dict:
    """`batch evaluate detections`' work per test set size: pycocotools' COCOeval, the
    bootstrap's 200 re-accumulations, the per-object outcomes (constructed test sets of
    three classes, ~2.5 objects and ~2.5 detections an image; tests/detection_scenes)."""
    import numpy as np

    from lib.analysis import detection
    from tests.detection_scenes import scene

    rows = []
    for n in sizes:
        truth, found = scene(n, np.random.default_rng(0))
        load = round(os.getloadavg()[0], 2)
        t = time.perf_counter()
        evaluation = detection.evaluate(truth, found)
        cocoeval = time.perf_counter() - t
        t = time.perf_counter()
        detection.bootstrap(evaluation)
        boot = time.perf_counter() - t
        t = time.perf_counter()
        detection.outcomes(evaluation)
        outcomes = time.perf_counter() - t
        total = cocoeval + boot + outcomes
        rows.append(
            {
                "test_images": n,
                "objects": len(truth["annotations"]),
                "detections": len(found),
                "cocoeval_seconds": round(cocoeval, 2),
                "bootstrap_200_seconds": round(boot, 2),
                "outcomes_seconds": round(outcomes, 2),
                "seconds_per_1000_images": round(1000 * total / n, 2),
                "bootstrap_to_cocoeval": round(boot / cocoeval, 2),
                "load_average_1m": [load, round(os.getloadavg()[0], 2)],
            }
        )
    return {
        "what": "evaluate detections (one detector)",
        "rows": rows,
        "training": _detector_training(),
    }


def _detector_training(scenes: int = 24, epochs: int = 2, sizes=(128, 320)) -> list[dict]:
    """`batch train detector`'s speed: training images per second of the second epoch
    (the first pays for decoding; an epoch's seconds include its validation) on the
    object example's real scenes, FCOS on EfficientNet-Lite0, batch 4, per image size;
    where the run would train (a GPU when there is one)."""
    from lib.inputs.example import build_object_example
    from lib.jobs.detector import DetectorJob, train_detector
    from lib.jobs.training import Schedule

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        data = build_object_example(Path(tmp) / "data", scenes).root
        for side in sizes:
            schedule = Schedule(
                epochs=epochs, batch_size=4, warmup_epochs=1, image_size=side, val_share=0.25
            )
            job = DetectorJob(
                f"bench-{side}", [data / "real"], [data / "real.json"], data / "real",
                data / "real.json", schedule=schedule,
            )  # fmt: skip
            load = round(os.getloadavg()[0], 2)
            folder = train_detector(job, Path(tmp) / "results")
            with open(folder / "training.csv") as f:
                last = list(csv.DictReader(f))[-1]
            train_images = scenes - max(1, round(scenes * 0.25))
            out.append(
                {
                    "image_size": side,
                    "train_images": train_images,
                    "epoch_seconds": float(last["seconds"]),
                    "images_per_second": round(train_images / float(last["seconds"]), 2),
                    "load_average_1m": [load, round(os.getloadavg()[0], 2)],
                }
            )
    return out


SECTIONS = {
    "gap": bench_gap,
    "prdc": bench_prdc,
    "pipeline": bench_pipeline,
    "umap": bench_umap,
    "knn": bench_knn,
    "extraction": bench_extraction,
    "caricature": bench_caricature,
    "scale": bench_scale,
    "demo": bench_demo,
    "resume": bench_resume,
    "atlas": bench_atlas,
    "whatif": bench_whatif,
    "dask": bench_dask,
    "training": bench_training,
    "objects": bench_objects,
    "threads": bench_threads,
    "detection": bench_detection,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument(
        "--scale-sizes", default="100000,1000000", help="images per domain for the scale section"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), "results": {}}
    for name in args.sections.split(","):
        print(f"bench: {name} ...", file=sys.stderr)
        if name == "scale":
            sizes = tuple(int(n) for n in args.scale_sizes.split(","))
            report["results"][name] = bench_scale(sizes)
        else:
            report["results"][name] = SECTIONS[name]()
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
