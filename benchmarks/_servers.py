"""Loopback servers for the benchmarks, each run in its own process.

The server gets a core of its own so the client's CPU cost is what a
comparison measures.  Every reply is a DualEntry-shaped customer.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

# The answer is about the customer patched, as a provider's is (the client
# refuses one about another customer); only the id changes per request.
CUSTOMER = json.dumps({"id": 0, "name": "Acme", "phone": None, "custom_fields": []}).encode()
_BEFORE_ID, _AFTER_ID = CUSTOMER.split(b"0", 1)


def _app(delay: float, bucket: tuple[int, float] | None, stats: dict[str, int]) -> web.Application:
    tokens = float(bucket[0]) if bucket else 0.0
    last = time.monotonic()

    async def patch(request: web.Request) -> web.Response:
        nonlocal tokens, last
        await request.read()
        stats["requests"] += 1
        if bucket is not None:
            burst, rate = bucket
            now = time.monotonic()
            tokens = min(burst, tokens + (now - last) * rate)
            last = now
            if tokens < 1:
                stats["429"] += 1
                wait = math.ceil((1 - tokens) / rate)  # HTTP wants whole seconds
                return web.json_response(
                    {"success": False, "errors": {"__all__": ["Rate limit exceeded."]}},
                    status=429,
                    headers={"Retry-After": str(wait)},
                )
            tokens -= 1
        if delay:
            await asyncio.sleep(delay)
        body = _BEFORE_ID + request.match_info["id"].encode() + _AFTER_ID
        return web.Response(body=body, content_type="application/json")

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app.router.add_patch("/public/v2/customers/{id}/", patch)
    app.router.add_get("/stats", get_stats)
    return app


def _serve(conn: multiprocessing.connection.Connection, delay: float, bucket, cpu) -> None:  # type: ignore[no-untyped-def]
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    async def main() -> None:
        stats = {"requests": 0, "429": 0}
        runner = web.AppRunner(_app(delay, bucket, stats), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        conn.send(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told to stop
        await runner.cleanup()

    asyncio.run(main())


@contextmanager
def server(
    *, delay: float = 0.0, bucket: tuple[int, float] | None = None, cpu: int | None = None
) -> Iterator[str]:
    """A server in a child process (on CPU ``cpu`` alone, if given); yields its
    base URL (always 127.0.0.1)."""
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=_serve, args=(child, delay, bucket, cpu), daemon=True)
    proc.start()
    port = parent.recv()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
