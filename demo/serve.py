"""The demo's web server: the Gradio app mounted in FastAPI beside `/healthz`, run by
uvicorn; and the page a first start shows while the example run is built.

`/healthz` answers `{"status": "ok" | "building", "runs": N, "latest": id}` with 200, for
a hosting platform's (or Docker's) health check, without touching Gradio's queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from demo.guard import Guard, Policy, Servable
from demo.runs import ASSETS
from lib.store.runs import RunStore

BUILD_LOG = "building.log"  # written by docker/entrypoint.sh into the results folder

# the building page reloads itself once the full demo answers /healthz with a run
RELOAD_WHEN_READY_JS = r"""
() => {
  const poll = async () => {
    try {
      const r = await fetch('/healthz', {cache: 'no-store'});
      const h = await r.json();
      if (h.status === 'ok' && h.runs > 0) { window.location.reload(); return; }
    } catch (e) { /* between the building page and the demo: keep asking */ }
    setTimeout(poll, 2000);
  };
  setTimeout(poll, 2000);
}
"""


GRACE_S = 2  # seconds open connections get to finish when the demo is stopped


def health(store: RunStore, status: str) -> dict:
    runs = store.run_ids()
    return {"status": status, "runs": len(runs), "latest": store.latest_id()}


def serve(
    blocks: gr.Blocks,
    store: RunStore,
    host: str,
    port: int,
    roots: list[str],
    css: str | None = None,
    status: str = "ok",
    stop_when: Callable[[], bool] | None = None,
    routers: tuple = (),
    originals: tuple = (),
    extra_hosts: tuple = (),
) -> None:
    """Serve `blocks` at `/`, `/healthz` and the `routers`' routes (the atlas's) until
    interrupted (or until `stop_when()`), behind demo.guard: requests naming another
    host than `host` (and `extra_hosts`), uploads, and files that are not a published
    run's pictures (or the `originals`' images) are refused."""
    import uvicorn
    from fastapi import FastAPI

    api = FastAPI()

    @api.get("/healthz")
    def healthz() -> dict:
        return health(store, status)

    for router in routers:
        api.include_router(router)

    # show_error=False: the page shows gr.Error's messages (written for it) and "Error" for
    # anything unexpected, whose message may hold a server path (the log has it whole)
    api = gr.mount_gradio_app(api, blocks, path="/", allowed_paths=roots, show_error=False, css=css)
    # Gradio's cache holds what the app's events returned (a download): served whole
    servable = Servable.of(store, roots=(ASSETS, get_upload_folder()), originals=originals)
    endpoints = {fn.api_name for fn in blocks.fns.values() if fn.api_name}
    guarded = Guard(api, Policy.for_host(host, servable, extra_hosts, endpoints))
    # on SIGTERM (docker stop) open connections (a page's event stream, a client's
    # keep-alive) get GRACE_S to finish, then close: uvicorn's default waits on them
    # forever, and `docker stop` killed the demo after its own 10 s
    config = uvicorn.Config(
        guarded, host=host, port=port, log_level="warning", timeout_graceful_shutdown=GRACE_S
    )
    server = uvicorn.Server(config)
    if stop_when is not None:
        threading.Thread(target=_stop_when, args=(server, stop_when), daemon=True).start()
    print(f"* Running on local URL:  http://{host}:{port}", flush=True)
    server.run()


def _stop_when(server, condition: Callable[[], bool], every: float = 1.0) -> None:
    while not condition():
        time.sleep(every)
    time.sleep(every)  # let the page's last poll see the new status
    server.should_exit = True


def build_log_tail(results: Path, lines: int = 12) -> str:
    path = Path(results) / BUILD_LOG
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "waiting for the batch job to start…"
    return "\n".join(text) or "waiting for the batch job to start…"


def building_app(results: Path) -> gr.Blocks:
    """What a first start serves at once: the example run being built, its progress
    (the batch job's log, every 2 s), and a reload into the demo when it is published."""
    store = RunStore(results)

    def progress() -> str:
        state = "published: opening the demo…" if store.latest_id() else "in progress"
        return f"**Status:** {state}\n\n```\n{build_log_tail(results)}\n```"

    with gr.Blocks(title="gapscope") as app:
        gr.Markdown("# gapscope — building the example run")
        gr.Markdown(
            "This is the first start: the batch job is computing the bundled example "
            "(1,797 real and 1,000 synthetic digits) once, a minute or two on 2 CPUs. "
            "This page follows it and opens the demo when the run is published."
        )
        status = gr.Markdown(progress(), elem_id="building_status")
        gr.Timer(2.0).tick(progress, None, status)
        app.load(None, None, None, js=RELOAD_WHEN_READY_JS)
    return app
