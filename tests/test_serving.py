"""A demo you can put on the internet serves what a run published and nothing else: the
file-serving probe, web copies instead of originals, no server paths on the page."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, serve_demo, served
from PIL import Image

pytestmark = pytest.mark.slow


def _photo(path, width: int, height: int, seed: int, orientation: int | None = None) -> None:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 16, 1), max(width // 16, 1), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make: metadata that must not travel
    if orientation:
        exif[0x0112] = orientation
    img.save(path, quality=92, exif=exif.tobytes())


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    """A run of large photos (one stored sideways with an EXIF orientation), with a
    notes.txt and a .env beside them, served by the demo on its defaults."""
    from lib.analysis.gap import GapParams
    from lib.jobs.run import RunConfig, run
    from lib.store.runs import RunStore

    root = tmp_path_factory.mktemp("hosted")
    for domain, seed in (("real", 0), ("synthetic", 100)):
        folder = root / domain
        folder.mkdir()
        for i in range(12):
            _photo(folder / f"{i:02d}.jpg", 480, 320, seed + i)
        (folder / "notes.txt").write_text("private notes")
        (folder / ".env").write_text("TOKEN=secret")
    # sideways on disk, upright by its tag: 1500 wide stored, shown 900 × 1500
    _photo(root / "real" / "12_tall.jpg", 1500, 900, 7, orientation=6)
    config = RunConfig.of(
        real=root / "real",
        synthetic=root / "synthetic",
        resize=64,
        k=4,
        projections=("pca",),
        plots=False,
        gap=GapParams(k=3, resamples=20, min_cluster_size=3),
    )
    published = run(config, RunStore(root / "results"))
    with serve_demo(root / "results") as url:
        yield root, published, url


def test_only_what_the_run_published_is_served(hosted):
    root, published, url = hosted
    images = published.images
    tall = int(np.flatnonzero(images["relpath"] == "12_tall.jpg")[0])
    assert served(url, published.web(tall)) == 200  # the positive controls
    assert served(url, published.thumb(tall)) == 200
    refused = [
        root / "real" / "notes.txt",
        root / "real" / ".env",
        root / "real" / "12_tall.jpg",  # an original: the web copy stands in for it
        root / "synthetic" / "00.jpg",
        next((root / "results" / "cache").rglob("hashes.npy")),
        root / "results" / "demo.log",
        "/etc/passwd",
    ]
    for path in refused:
        assert served(url, path) in (403, 404), path


def test_web_copies_are_upright_bounded_and_carry_no_metadata(hosted):
    _, published, _ = hosted
    images = published.images
    tall = int(np.flatnonzero(images["relpath"] == "12_tall.jpg")[0])
    with Image.open(published.web(tall)) as web:
        assert web.size == (614, 1024)  # upright (900 × 1500), longest side 1,024
        assert not web.getexif()  # no camera make, no orientation left to apply
    small = int(np.flatnonzero(images["relpath"] == "00.jpg")[0])
    with Image.open(published.web(small)) as web:
        assert web.size == (480, 320)  # never enlarged


def test_the_page_shows_no_server_paths_and_a_click_shows_the_web_copy(hosted):
    from gradio_client import Client

    root, published, url = hosted
    page = urllib.request.urlopen(url, timeout=10).read().decode()
    assert str(root) not in page
    client = Client(url, verbose=False)
    tall = int(np.flatnonzero(published.images["relpath"] == "12_tall.jpg")[0])
    image, gallery, info, row = client.predict(
        f'{{"id": {tall}}}', published.id, "c3", api_name="/select_point"
    )
    assert row == tall
    with Image.open(image) as shown:  # the file the demo shows large, downloaded
        assert shown.size == (614, 1024)  # the web copy, not the 1500-px original
    assert "<code>12\\_tall.jpg</code>" in info  # the name as text (demo.markup)


def test_serving_originals_publicly_is_refused_unless_forced(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "demo",
            "--results",
            str(tmp_path),
            "--serve-originals",
            "--host",
            "0.0.0.0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: --serve-originals on --host 0.0.0.0 would serve")


def test_a_first_start_serves_a_building_page_that_hands_over_to_the_demo(tmp_path):
    """What docker/entrypoint.sh runs beside the first batch job: a page at once, with
    the job's progress, /healthz saying "building", and an exit once a run is published
    (the entrypoint then starts the demo)."""
    import json
    import time

    from conftest import free_port
    from test_store import write_run

    from lib.store.runs import RunStore

    results = tmp_path / "results"
    results.mkdir()
    (results / "building.log").write_text("2026-11-29 13:02:56 extract: started (2797 images)\n")
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "demo",
            "--results",
            str(results),
            "--port",
            str(port),
            "--building",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                page = urllib.request.urlopen(url, timeout=2).read().decode()
                break
            except OSError:
                assert time.monotonic() - started < 60 and proc.poll() is None
                time.sleep(0.2)
        answered = time.monotonic() - started
        assert "building the example run" in page
        health = json.loads(urllib.request.urlopen(f"{url}healthz", timeout=5).read())
        assert health == {"status": "building", "runs": 0, "latest": None}
        from demo.serve import build_log_tail

        assert "extract: started (2797 images)" in build_log_tail(results)
        with RunStore(results).writing() as writer:  # the batch job publishes
            write_run(writer)
        assert proc.wait(timeout=30) == 0  # the page steps aside for the demo
    finally:
        proc.kill()
    print(f"building page answered after {answered:.1f} s")


def test_the_cached_static_check_answers_as_gradio_does(tmp_path):
    """The demo answers Gradio's per-file check from a cache (demo/static_paths.py); it
    must give Gradio's own answer: files under the served folders in place, others not."""
    import gradio.utils
    from gradio.data_classes import FileData

    from demo import static_paths

    served_dir, other = tmp_path / "runs", tmp_path / "data"
    for folder in (served_dir, other):
        folder.mkdir()
        (folder / "a.png").write_bytes(b"x")
    static_paths.set_static_paths([str(served_dir)])
    assert gradio.utils.is_static_file is static_paths.is_static_file
    inside, outside = served_dir / "a.png", other / "a.png"
    for _ in range(2):  # computed, then cached
        assert static_paths.is_static_file(str(inside))
        assert static_paths.is_static_file(FileData(path=str(inside)))
        assert not static_paths.is_static_file(str(outside))
        assert not static_paths.is_static_file(str(served_dir / ".." / "data" / "a.png"))
    assert not static_paths.is_static_file(None)
    static_paths.set_static_paths([str(other)])  # a new app's folders: the cache starts over
    assert static_paths.is_static_file(str(outside))


def test_a_crowd_beyond_the_queue_is_told_so_at_once(published_run, results_dir):
    """More clicks than the queue holds: the surplus is answered "queue full" (HTTP 503)
    straight away, the rest are answered, and nothing hangs (bench/demo_load.py is the
    crowd: sessions clicking as browsers do)."""
    from bench.demo_load import load

    def a_click(rng) -> list:
        return [json.dumps({"id": int(rng.integers(40)), "t": 1}), published_run.id, "c3"]

    with serve_demo(results_dir, args=("--queue-size", "1")) as url:
        crowd = load(url, "select_point", a_click, clients=24, seconds=4)
    assert crowd["clicks_per_s"] > 0  # answered ones
    assert crowd["error_kinds"] == ["HTTP 503"] and crowd["errors"] > 0


def test_a_public_demo_is_read_only_unless_given_a_write_token(published_run, results_dir):
    """On a public host: no editing controls and no editing API without a token; with
    one, a change carrying a wrong token is refused and the right one is written."""
    import httpx
    from gradio_client import Client

    from lib.store.annotations import Annotations

    def elem_ids(url) -> set:
        config = httpx.get(f"{url}config", timeout=30).json()
        return {c.get("props", {}).get("elem_id") for c in config["components"]}

    with serve_demo(results_dir, args=("--host", "0.0.0.0")) as url:
        assert "image_notes" in elem_ids(url)  # what others decided is shown
        assert not {
            "curate",
            "tag_button",
            "remove_button",
            "atlas_tag_button",
            "atlas_remove_button",
            "atlas_hotspot_button",
        } & elem_ids(url)
        assert "atlas" in elem_ids(url)  # the map itself is for everyone
        assert not {"export_button", "atlas_export_button"} & elem_ids(url)  # #27 hole 6
        api = Client(url, verbose=False).view_api(print_info=False, return_format="dict")
        assert "/select_point" in api["named_endpoints"]
        assert not {"/tag", "/save_label", "/flag_removal", "/export"} & set(api["named_endpoints"])
        for name in ("tag", "export"):  # #27 hole 16: a 404, not a 500 and a traceback
            status, _, text = _answer(url, f"gradio_api/call/{name}", "POST", body=b"{}")
            assert status == 404 and "no such endpoint" in text
    with serve_demo(results_dir, args=("--host", "0.0.0.0", "--write-token", "s3cret")) as url:
        assert {"curate", "write_token", "atlas_tag_button", "atlas_token"} <= elem_ids(url)
        client = Client(url, verbose=False)
        args = (published_run.id, "c3", 5, "public", "this image", "eve")
        with pytest.raises(Exception, match="Wrong write token"):
            client.predict(*args, "guess", api_name="/tag")
        client.predict(*args, "s3cret", api_name="/tag")
    key = (published_run.images.at[5, "hash"], published_run.images.at[5, "relpath"])
    assert Annotations.of(results_dir).tagged("public") == {key}
    assert Annotations.of(results_dir).audit()[-1]["who"] == "eve"


def test_the_demo_killed_in_a_burst_of_edits_loses_no_committed_one(published_run, tmp_path):
    import shutil
    import signal
    import sqlite3
    import threading

    from gradio_client import Client

    from lib.store.annotations import Annotations

    results = tmp_path / "results"
    shutil.copytree(
        published_run.dir.parent.parent,
        results,
        symlinks=True,
        ignore=shutil.ignore_patterns("annotations.sqlite*", "cache"),
    )
    done: list[int] = []
    with serve_demo(results, process=True) as (url, server):
        client = Client(url, verbose=False)

        def burst() -> None:
            for row in range(len(published_run.images)):
                try:
                    client.predict(
                        published_run.id, "c3", row, "burst", "this image", "", "", api_name="/tag"
                    )
                except Exception:  # noqa: BLE001 - the server is gone
                    return
                done.append(row)

        writer = threading.Thread(target=burst)
        writer.start()
        while len(done) < 15:
            threading.Event().wait(0.05)
        server.send_signal(signal.SIGKILL)
        writer.join(timeout=60)
    db = sqlite3.connect(results / "annotations.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    kept = Annotations.of(results).tagged("burst")
    answered = {
        (published_run.images.at[r, "hash"], published_run.images.at[r, "relpath"]) for r in done
    }
    assert answered <= kept and len(kept) >= 15


# ---- #27's holes in serving: each failed on the code before its fix ------------------------


def _answer(url: str, path: str = "", method: str = "GET", headers=None, body=None):
    """(status, headers, text) of one request to the demo, errors included."""
    import httpx

    r = httpx.request(method, f"{url}{path}", headers=headers or {}, content=body, timeout=30)
    return r.status_code, r.headers, r.text


def test_2_a_page_on_another_host_name_is_refused_dns_rebinding(hosted):
    _, published, url = hosted
    port = url.rsplit(":", 1)[1].strip("/")
    evil = {"host": f"evil.example:{port}", "origin": f"http://evil.example:{port}"}
    for path, method in (("", "GET"), ("config", "GET"), ("gradio_api/call/export", "POST")):
        status, headers, _ = _answer(url, path, method, evil, b'{"data": []}')
        assert status == 403, path
        assert "evil.example" not in headers.get("access-control-allow-origin", "")
    # a loopback page calling with the rebound name as its origin is refused too
    status, _, _ = _answer(url, "config", headers={"origin": "http://evil.example"})
    assert status == 403
    for name in ("127.0.0.1", "localhost"):  # the names this machine answers to
        status, _, _ = _answer(url, "config", headers={"host": f"{name}:{port}"})
        assert status == 200, name
    same = {"origin": f"http://localhost:{port}", "host": f"localhost:{port}"}
    assert _answer(url, "config", headers=same)[0] == 200
    hosts = {  # Host header: answered?
        f"127.0.0.1:{port}": True,
        f"LOCALHOST:{port}": True,
        f"[::1]:{port}": True,
        "127.0.0.1": True,
        f"127.0.0.1.evil.example:{port}": False,
        f"localhost.evil.example:{port}": False,
        f"evil.example:{port}": False,
        f"0.0.0.0:{port}": False,
        f"127.0.0.2:{port}": False,
        f"[::1:{port}": False,  # unparseable
        "": False,
    }
    origins = {
        f"http://127.0.0.1:{port}": True,
        f"http://localhost:{port}": True,
        "http://localhost": True,
        "http://evil.example": False,
        "https://127.0.0.1.evil.example": False,
        "null": False,  # a sandboxed frame or a file: page
    }
    got = {h: _answer(url, "config", headers={"host": h})[0] == 200 for h in hosts}
    got_origins = {o: _answer(url, "config", headers={"origin": o})[0] == 200 for o in origins}
    print(f"host/origin sweep: {len(hosts) + len(origins)} tried")
    assert got == hosts and got_origins == origins


def test_3_run_internals_are_not_served_and_no_url_or_error_shows_a_server_path(hosted):
    import httpx
    from gradio_client import Client

    root, published, url = hosted
    run_dir = published.dir
    for inside in ("manifest.json", "images.parquet", "metrics.json", "scores.parquet"):
        assert served(url, run_dir / inside) == 404, inside
    assert served(url, next((run_dir / "features").glob("*.npy"))) == 404
    assert served(url, f"runs/{published.id}/manifest.json") == 404  # relative, too
    assert served(url, f"runs/{published.id}/thumbs/{published.images.at[0, 'thumb']}") == 200
    assert served(url, published.thumb(0)) == 200  # a picture the run published
    assert served(url, "http://127.0.0.1:9/x.png") == 404  # no fetching for a visitor
    # the event's answer: every file URL is relative to the results folder
    call = httpx.post(
        f"{url}gradio_api/call/select_point",
        json={"data": ['{"id": 3}', published.id, "c3"]},
        timeout=30,
    ).json()
    stream = httpx.get(f"{url}gradio_api/call/select_point/{call['event_id']}", timeout=30).text
    assert "thumbs/" in stream and str(root) not in stream and "/tmp" not in stream
    with pytest.raises(Exception) as refused:  # an id too long for a file name
        Client(url, verbose=False).predict('{"id": 3}', "a" * 300, "c3", api_name="/select_point")
    message = str(refused.value)
    assert "no published run" in message and "/" not in message.replace("a" * 60, "")


def test_4_a_run_being_written_is_not_served(hosted):
    root, published, url = hosted
    partial = root / "results" / "runs" / ".partial-20990101-000000-beef"
    (partial / "thumbs").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(partial / "thumbs" / "real_0.png")
    (partial / ".owner.json").write_text('{"pid": 1, "host": "secret-host"}')
    for path in (partial / "thumbs" / "real_0.png", partial / ".owner.json"):
        assert served(url, path) == 404, path
    assert served(url, f"runs/{partial.name}/thumbs/real_0.png") == 404


def test_5_uploads_are_refused(hosted, tmp_path):
    import httpx

    _, _, url = hosted
    answer = httpx.post(
        f"{url}gradio_api/upload", files={"files": ("x.html", b"<script>1</script>")}, timeout=30
    )
    assert answer.status_code == 403 and "no uploads" in answer.text


def test_16_the_openapi_schema_answers(hosted):
    _, _, url = hosted
    status, _, text = _answer(url, "openapi.json")
    assert status == 200 and '"/atlas/{run_id}/thumb/{row}"' in text


def test_15_exports_leave_no_folder_behind(published_run, results_dir, tmp_path, monkeypatch):
    import tempfile

    from demo import curation as demo_curation
    from lib.store.runs import RunStore

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    demo_curation._exports_root.cache_clear()
    store = RunStore(results_dir)
    files = [demo_curation.export_file(store, published_run.id, "CSV") for _ in range(40)]
    root = demo_curation._exports_root()
    assert len(list(root.iterdir())) <= demo_curation.KEEP_EXPORTS
    assert Path(files[-1]).is_file() and not Path(files[0]).exists()
    demo_curation._exports_root.cache_clear()
    code = "from demo.curation import _exports_root; print(_exports_root())"
    made = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert not Path(made.stdout.strip()).exists()  # gone when the process ends


@pytest.fixture()
def small_disk(tmp_path):
    """A 64 MB tmpfs, where this machine lets the tests mount one (root, outside a locked
    container); skipped elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk) -> None:
    """Write until the disk takes no more, smaller and smaller pieces."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 14, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                continue
    finally:
        os.close(fd)


def test_14_on_a_full_disk_the_demo_still_reads_and_says_the_disk_is_full(
    published_run, small_disk
):
    import shutil

    from gradio_client import Client

    results = small_disk / "results"
    older = "20000101-000000-0000"
    for run_id in (published_run.id, older):
        shutil.copytree(published_run.dir, results / "runs" / run_id)
    (results / "latest").symlink_to(f"runs/{published_run.id}")
    with serve_demo(results) as url:
        client = Client(url, verbose=False)
        client.predict(published_run.id, "c3", 5, "seen", "this image", "ana", "", api_name="/tag")
        _fill(small_disk)
        assert shutil.disk_usage(small_disk).free < 64 << 10
        for run_id in (published_run.id, older):  # a run switch writes .serving: it may fail
            _, gallery, info, row = client.predict(
                '{"id": 5}', run_id, "c3", api_name="/select_point"
            )
            assert row == 5 and "Selected #5 " in info
        with pytest.raises(Exception, match="the disk holding the annotations is full"):
            client.predict(
                published_run.id, "c3", 5, "more", "this image", "ana", "", api_name="/tag"
            )
        exported = client.predict(published_run.id, "CSV", "", api_name="/export")
        rows = list(csv.DictReader(open(exported, encoding="utf-8")))
        assert [(r["id"], r["tags"]) for r in rows] == [("5", "seen")]  # read on a full disk


def test_27_every_file_of_the_store_and_every_trick_gets_the_right_answer(hosted):
    """The hostile suite's file-serving half, as a sweep: every file under the results
    folder and the inputs, asked for by absolute and by relative path, plus traversal,
    encoding and link tricks; only a published run's pictures answer 200."""
    import urllib.parse

    root, published, url = hosted
    results = root / "results"
    out = root / "outside.png"
    Image.new("RGB", (4, 4)).save(out)
    link = published.dir / "thumbs" / "zz_link_out.png"
    link.symlink_to(out)  # a picture name inside a run, leading outside it
    cases = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        shown = (
            path.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"}
            and path.resolve().is_relative_to(published.dir.resolve())
            and not any(part.startswith(".") for part in path.relative_to(published.dir).parts)
            and path.is_relative_to(published.dir)
        )
        cases.append((str(path), 200 if shown else 404))
        if path.is_relative_to(results):
            cases.append((str(path.relative_to(results)), 200 if shown else 404))
    thumb = published.thumb(0).relative_to(results)
    tricks = [
        f"runs/{published.id}/../../{thumb}",  # resolves inside again: still a picture
        f"runs/{published.id}/../{published.id}/manifest.json",
        f"runs/{published.id}/thumbs/../images.parquet",
        f"runs/{published.id}/thumbs/../../../../../../etc/passwd",
        urllib.parse.quote(f"runs/{published.id}/manifest.json"),
        f"runs//{published.id}//manifest.json",
        f"runs/{published.id}/thumbs/%2e%2e/manifest.json",
        "latest/manifest.json",
        "annotations.sqlite",
        "/etc/passwd",
        "/proc/self/environ",
        "file:///etc/passwd",
        "http://127.0.0.1:1/x.png",
        "//evil.example/x.png",
    ]
    cases += [(t, 200 if t.startswith(f"runs/{published.id}/../../") else 404) for t in tricks]
    wrong = [(p, want, got) for p, want in cases if (got := served(url, p)) != want]
    print(f"file-serving sweep: {len(cases)} tried, {len(cases) - len(wrong)} held")
    link.unlink()
    assert not wrong


def test_a_stopped_demo_closes_open_connections_instead_of_waiting_on_them(
    published_run, results_dir
):
    """SIGTERM (docker stop) with a page's event stream open: the demo gives it
    its grace (demo.serve.GRACE_S) and exits by itself, where uvicorn's default waited
    on the connection until the 10 s after which docker (and the tests) kill it."""
    import socket
    import time

    with serve_demo(results_dir, process=True) as (url, proc):
        port = int(url.rsplit(":", 1)[1].strip("/"))
        client = socket.create_connection(("127.0.0.1", port))
        # a page's heartbeat: an event stream that stays open as long as the page does
        client.sendall(b"GET /gradio_api/heartbeat/s0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert client.recv(4096).startswith(b"HTTP/1.1 200")
        proc.terminate()
        t = time.monotonic()
        proc.wait(timeout=9)  # raises if it still waits on the connection
        assert time.monotonic() - t < 9 and proc.returncode is not None
        client.close()
