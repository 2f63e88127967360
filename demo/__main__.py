"""Serve the demo: `python -m demo [--results DIR] [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from demo.guard import LOOPBACK
from lib.runtime.errors import GapscopeError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument(
        "--results", type=Path, default=Path(os.environ.get("GAPSCOPE_RESULTS", "results"))
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    )
    parser.add_argument(
        "--serve-originals",
        action="store_true",
        help="Show the original image files, not the runs' web copies (serves every file "
        "in the input folders: refused with a public --host unless --force)",
    )
    parser.add_argument("--force", action="store_true", help="Allow --serve-originals publicly.")
    parser.add_argument(
        "--building",
        action="store_true",
        help="Serve the 'building the example run' page (what docker/entrypoint.sh starts "
        "beside the first batch run) until a run is published, then exit.",
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=256,
        help="Events that may wait for the server; beyond them a visitor is told the queue "
        "is full (HTTP 503) at once rather than left waiting (default: 256)",
    )
    parser.add_argument(
        "--write-token",
        default=os.environ.get("GAPSCOPE_WRITE_TOKEN"),
        help="Let visitors who give this token tag images and fix labels (env "
        "GAPSCOPE_WRITE_TOKEN). Without it a demo on 127.0.0.1 writes freely and any other "
        "is read-only.",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="Another name a demo on 127.0.0.1 may be asked under (repeatable). Without it "
        "such a demo answers only requests for 127.0.0.1, localhost or ::1: a web page "
        "re-pointing its own name at this machine (DNS rebinding) is refused.",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls home
    # Gradio's queue rebuilds a pandas summary of its last 10,000 events after every event
    # (for its monitoring page, unused here): a cost per click that grew with the uptime
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(10**9))
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1000")
    try:
        _check_originals(args.serve_originals, args.host, args.force)
        _check_port(args.host, args.port)
        if args.queue_size < 1:
            raise GapscopeError(f"--queue-size must be at least 1, got {args.queue_size}")
        from demo import atlas
        from demo.app import CSS, allowed_paths, build_app, image_roots
        from demo.curation import Editing
        from demo.serve import building_app, serve
        from lib.store.runs import RunStore

        if not args.building and args.results.is_dir():
            # files go to the page as paths relative to the results folder, so no URL (a
            # gallery's, a download's) shows where the results live on the server
            os.chdir(args.results)
            args.results = Path(".")
        store = RunStore(args.results)
        if args.building:
            page = building_app(args.results)
            serve(
                page,
                store,
                args.host,
                args.port,
                [],
                status="building",
                stop_when=lambda: store.latest_id() is not None,
            )
            return
        roots = allowed_paths(store, originals=args.serve_originals)  # every manifest, once
        editing = Editing.decide(args.host, args.write_token, LOCAL_HOSTS)
        app = build_app(args.results, roots, queue_size=args.queue_size, editing=editing)
        serve(
            app,
            store,
            args.host,
            args.port,
            roots,
            css=CSS,
            routers=(atlas.router(store),),
            originals=image_roots(store) if args.serve_originals else (),
            extra_hosts=tuple(args.allow_host),
        )
    except GapscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


LOCAL_HOSTS = tuple(sorted(LOOPBACK))


def _check_originals(serve_originals: bool, host: str, force: bool) -> None:
    if serve_originals and host not in LOCAL_HOSTS and not force:
        raise GapscopeError(
            f"--serve-originals on --host {host} would serve every file in the input "
            "folders to anyone who can reach it: serve on 127.0.0.1, or add --force"
        )


def _check_port(host: str, port: int) -> None:
    """A port already taken is a one-line error before minutes of loading, not Gradio's
    traceback after it."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise GapscopeError(
                f"cannot serve on {host}:{port} ({exc.strerror or exc}): pass another "
                "--port, or stop what is using it"
            ) from None


if __name__ == "__main__":
    main()
