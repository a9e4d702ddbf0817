"""A scripted DualEntry-shaped provider for client tests.

Each test decides how every request is answered with a ``script`` callable;
the provider records when each request arrived, how many were in flight, and
what it ends with.  It answers behind a ``MockTransport`` (pass the
:class:`ScriptedProvider` itself as the handler: no network, for the client's
logic), or on 127.0.0.1 through :func:`scripted` (for what needs a socket).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from customer_patch import Request, Response, TransportError
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


class ScriptedProvider:
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

    async def play(self, customer_id: int, body: dict[str, Any]) -> tuple[Reply, Any] | None:
        """Record one arrival and play the script: the reply and its payload, or
        ``None`` for a dropped connection."""
        number = len(self.arrivals)
        self.arrivals.append((time.monotonic(), customer_id))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = self.script(number, customer_id)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.drop:
                return None
            if reply.status < 300:
                self.store.setdefault(customer_id, {}).update(body)
            payload = reply.body if reply.body is not None else {"id": customer_id, **body}
            return reply, payload
        finally:
            self.in_flight -= 1

    async def __call__(self, request: Request) -> Response:
        """The ``MockTransport`` handler: a dropped connection is a TransportError."""
        customer_id = int(request.url.rstrip("/").rsplit("/", 1)[1])
        played = await self.play(customer_id, request.json())
        if played is None:
            raise TransportError(
                "ServerDisconnectedError: Server disconnected", provider="dualentry"
            )
        reply, payload = played
        headers = {"Content-Type": "application/json", **(reply.headers or {})}
        return Response(status=reply.status, headers=headers, body=json.dumps(payload).encode())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler: a dropped connection is closed without an answer."""
        played = await self.play(int(request.match_info["id"]), await request.json())
        if played is None:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        reply, payload = played
        return web.json_response(payload, status=reply.status, headers=reply.headers)


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[tuple[str, ScriptedProvider]]:
    """The provider on 127.0.0.1: yields its base URL and the provider."""
    provider = ScriptedProvider(script)
    async with serve(provider.handle, method="PATCH", path="/public/v2/customers/{id}/") as base:
        yield base, provider


def ok(number: int, customer_id: int) -> Reply:
    return Reply()
