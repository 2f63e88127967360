"""Serve the demo: `python -m demo [--results DIR] [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lib.errors import GapscopeError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument(
        "--results", type=Path, default=Path(os.environ.get("GAPSCOPE_RESULTS", "results"))
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls home
    try:
        from demo.app import CSS, allowed_paths, build_app
        from lib.store import RunStore

        roots = allowed_paths(RunStore(args.results))  # once: every run's manifest is read
        app = build_app(args.results, roots)
        app.launch(
            server_name=args.host,
            server_port=args.port,
            allowed_paths=roots,
            show_error=True,
            css=CSS,
        )
    except GapscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
