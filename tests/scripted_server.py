"""A scripted DualEntry-shaped server on 127.0.0.1 for client tests.

Each test decides how every request is answered with a ``script`` callable;
the server records when each request arrived and how many were in flight.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from tests.helpers import serve


class Reply:
    def __init__(
        self,
        status: int = 200,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        drop: bool = False,
    ) -> None:
        self.status, self.body, self.headers, self.delay, self.drop = (
            status,
            body,
            headers,
            delay,
            drop,
        )


Script = Callable[[int, int], Reply]  # (request number from 0, customer id) -> Reply


class Recorder:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.arrivals: list[tuple[float, int]] = []  # (monotonic time, customer id)
        self.in_flight = 0
        self.max_in_flight = 0
        # What the "provider" ends with: each accepted body applied in arrival order.
        self.store: dict[int, dict[str, Any]] = {}

    @property
    def count(self) -> int:
        return len(self.arrivals)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        customer_id = int(request.match_info["id"])
        number = len(self.arrivals)
        self.arrivals.append((time.monotonic(), customer_id))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = json.loads(await request.read())
            reply = self.script(number, customer_id)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.drop:
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            if reply.status < 300:
                self.store.setdefault(customer_id, {}).update(body)
            payload = reply.body if reply.body is not None else {"id": customer_id, **body}
            return web.json_response(payload, status=reply.status, headers=reply.headers)
        finally:
            self.in_flight -= 1


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder(script)
    async with serve(recorder.handle, method="PATCH", path="/public/v2/customers/{id}/") as base:
        yield base, recorder


def ok(number: int, customer_id: int) -> Reply:
    return Reply()
