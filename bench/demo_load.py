"""Many people clicking in the demo at once, as browsers talk to it: each client is a
session that joins Gradio's queue (`POST /gradio_api/queue/join`) and reads the answer
from the session's event stream (`GET /gradio_api/queue/data`), then clicks again.

All clients run in one asyncio loop, so the load generator costs little CPU on a machine
it shares with the server. `gradio_client` is not used: it waits for answers by polling
its own message list every 50 ms (`gradio_client.utils`), which adds up to 50 ms to
every click it times and, with dozens of client threads polling, takes the cores the
server needs.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import numpy as np


def fn_index(url: str, api_name: str) -> int:
    """The queue's number for the event named `api_name` (from the app's /config)."""
    import httpx

    config = httpx.get(f"{url}config", timeout=30).json()
    for dep in config["dependencies"]:
        if dep.get("api_name") == api_name:
            return dep["id"]
    raise KeyError(f"the demo has no event named {api_name!r}")


async def click(http, url: str, index: int, data: list, session: str) -> str | None:
    """One event through the queue: None when it completed, else what went wrong."""
    body = {
        "data": data,
        "fn_index": index,
        "session_hash": session,
        "event_data": None,
        "trigger_id": None,
    }
    joined = await http.post(f"{url}gradio_api/queue/join", json=body)
    if joined.status_code != 200:
        return f"HTTP {joined.status_code}"
    event = joined.json()["event_id"]
    params = {"session_hash": session}
    async with http.stream("GET", f"{url}gradio_api/queue/data", params=params) as stream:
        buffer = ""
        async for chunk in stream.aiter_text():
            buffer += chunk
            while "\n\n" in buffer:
                line, buffer = buffer.split("\n\n", 1)
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") != event:
                    continue
                if message["msg"] == "process_completed":
                    return None if message.get("success") else "failed"
                if message["msg"] == "queue_full":
                    return "queue full"
    return "stream ended"


async def _client(url, index, make_data, seconds_left, seed, out) -> None:
    import httpx

    rng = np.random.default_rng(seed)
    session = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=120) as http:
        stop = time.perf_counter() + seconds_left
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                error = await click(http, url, index, make_data(rng), session)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                error = type(exc).__name__
            out.append(error or time.perf_counter() - t)


def load(url: str, api_name: str, make_data, clients: int, seconds: float) -> dict:
    """`clients` sessions each firing `api_name` events back to back for `seconds`
    (`make_data(rng)` gives an event's inputs): clicks/s, latency percentiles (ms) and
    errors by kind."""
    index = fn_index(url, api_name)
    out: list = []

    async def crowd():
        await asyncio.gather(
            *(_client(url, index, make_data, seconds, i, out) for i in range(clients))
        )

    t0 = time.perf_counter()
    asyncio.run(crowd())
    wall = time.perf_counter() - t0
    ms = np.array([r for r in out if isinstance(r, float)]) * 1000
    errors = [r for r in out if isinstance(r, str)]
    pct = {q: round(float(np.percentile(ms, q)), 1) if len(ms) else None for q in (50, 95, 99)}
    return {
        "clicks_per_s": round(len(ms) / wall, 1),
        "p50_ms": pct[50],
        "p95_ms": pct[95],
        "p99_ms": pct[99],
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
    }
