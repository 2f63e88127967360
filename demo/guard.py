"""What the demo's server lets through before Gradio sees a request.

Gradio serves any file under its allowed folders, takes uploads from anyone and answers a
request whatever Host it names. `Guard`, an ASGI middleware around the whole app, narrows
that to what a visitor needs:

- **Host and Origin.** A demo bound to a loopback address answers only when the request
  names a loopback host (`127.0.0.1`, `localhost`, `::1`, any port) and, when the browser
  says where the request comes from (`Origin`), only a loopback page. A web page on
  `evil.example` that re-points its DNS name at 127.0.0.1 (DNS rebinding) is refused, so
  it cannot edit or read what the local demo shows. A public demo is reached under names
  it cannot know (a proxy, a Space): it checks neither, and writes only with a token.
- **Files.** `/gradio_api/file=<path>` answers only for `Servable` paths: the pictures of
  published runs (png, jpg, webp under `runs/<id>/`, no hidden part: not a partial run,
  not manifest.json, images.parquet or features), the demo's assets, what Gradio cached
  of the app's own outputs (a download), and with `--serve-originals` the input images.
- **Uploads.** No component of the demo takes a file, so `POST /gradio_api/upload` is
  refused: nobody can store files on the server.
- **Endpoints.** A call to an API name the app does not have (an editing endpoint on a
  read-only demo) is a 404, not Gradio's 500 and traceback.

A refusal is a short plain-text answer naming no server path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from lib.store.runs import MANIFEST, RunStore

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
PICTURES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})  # what a run shows
FILE_ROUTES = ("/gradio_api/file=", "/file=")
UPLOAD_ROUTES = ("/gradio_api/upload", "/upload")
_API_CALL = re.compile(r"/(?:gradio_api/)?(?:call|run)/(?P<name>[^/]+)")


def hostname(value: str) -> str:
    """The host of a Host header or an Origin ('[::1]:7860' → '::1'), lower case."""
    if "//" not in value:
        value = f"//{value}"
    try:
        return (urlsplit(value).hostname or "").lower()
    except ValueError:  # an unparseable port, a bad IPv6 literal
        return ""


@dataclass(frozen=True)
class Servable:
    """Which files the demo serves. `runs`: the run store's runs folder; `roots`: folders
    served whole (the demo's assets, Gradio's cache of the app's outputs); `originals`:
    input folders whose pictures are served (`--serve-originals`)."""

    runs: Path
    roots: tuple[Path, ...]
    originals: tuple[Path, ...] = ()

    @classmethod
    def of(cls, store: RunStore, roots: Iterable, originals: Iterable = ()) -> Servable:
        return cls(
            Path(os.path.realpath(store.runs_dir)),
            tuple(Path(os.path.realpath(r)) for r in roots),
            tuple(Path(os.path.realpath(r)) for r in originals),
        )

    def __call__(self, path: str) -> bool:
        real = Path(os.path.realpath(path))  # as Gradio's route resolves it, links followed
        if any(real.is_relative_to(root) for root in self.roots):
            return real.is_file()
        if real.suffix.lower() not in PICTURES:
            return False
        if any(real.is_relative_to(root) for root in self.originals):
            return real.is_file()
        if not real.is_relative_to(self.runs):
            return False
        parts = real.relative_to(self.runs).parts
        if len(parts) < 2 or any(p.startswith(".") for p in parts):
            return False  # .partial-*, .latest-*, .owner.json, hidden files
        return _published(str(self.runs / parts[0])) and real.is_file()


@lru_cache(maxsize=4096)
def _published(run_dir: str) -> bool:
    # a published run stays published until pruned; a pruned one's files are gone anyway
    return (Path(run_dir) / MANIFEST).is_file()


@dataclass(frozen=True)
class Policy:
    """`hosts`: the host names requests may name (None: any, a public demo); `servable`:
    which file paths `/gradio_api/file=` may answer."""

    hosts: frozenset[str] | None
    servable: Servable
    endpoints: frozenset[str] | None = None  # the app's API names (None: any)

    @classmethod
    def for_host(
        cls, host: str, servable: Servable, extra_hosts: Iterable[str] = (), endpoints=None
    ) -> Policy:
        hosts = LOOPBACK | {h.lower() for h in extra_hosts} if host in LOOPBACK else None
        return cls(hosts, servable, None if endpoints is None else frozenset(endpoints))

    def refusal(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, one line) to answer instead of the app, or None to let it through."""
        if self.hosts is not None:
            if hostname(headers.get("host", "")) not in self.hosts:
                return 403, "unknown host: this demo answers on this machine only"
            origin = headers.get("origin")
            if origin and hostname(origin) not in self.hosts:
                return 403, "cross-site request refused"
        if method == "POST" and path.rstrip("/") in UPLOAD_ROUTES:
            return 403, "this demo takes no uploads"
        called = _API_CALL.match(path)
        if called and self.endpoints is not None and called["name"] not in self.endpoints:
            return 404, "no such endpoint"  # Gradio's answer was a 500 and a traceback
        for route in FILE_ROUTES:
            if path.startswith(route):
                target = path[len(route) :]
                if "://" in target or not self.servable(target):
                    return 404, "not found"
        return None


class Guard:
    """ASGI middleware: answers a request `policy` refuses, passes the rest to `app`."""

    def __init__(self, app, policy: Policy):
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refused = self.policy.refusal(scope.get("method", "GET"), scope["path"], headers)
        if refused is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        status, text = refused
        body = f"{text}\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
