"""The pieces many test files need, written once: ids, tokens, requests, servers, clients.

Import them (``from tests.helpers import ...``) rather than redefining them.
Tests of the client's logic give it a :class:`~customer_patch.testing.MockTransport`
(:func:`mock_client`): no network.  Tests whose behaviour needs a socket start
an aiohttp server on loopback (:func:`serve`) and point a client at it
(:func:`loopback_client`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl as _ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from customer_patch import (
    Adapter,
    Client,
    CustomerId,
    CustomerPatch,
    Request,
    Response,
    UpdateResult,
)
from customer_patch.testing import MockTransport
from tests import seeds

QID = seeds.QWOTY_CUSTOMER_ID
"""A Qwoty customer id (a UUID): the one of Qwoty's documentation page."""
DEID = 1234
"""A DualEntry customer id (an integer)."""
TOKEN = "de_live_0123456789abcdef0123456789abcdef"
"""The credential the helpers use unless told otherwise: long and unique, so a
test can search any text for it."""
HANG_GUARD = 10
"""Seconds: a run that has not ended by then is hung, not slow."""

Handler = Callable[[Request], Response | Awaitable[Response]]


def build(
    adapter: Adapter,
    customer_id: Any,
    patch: CustomerPatch,
    *,
    token: str = TOKEN,
    base_url: str = "https://h/api/",
) -> Request:
    """The request ``adapter`` builds for one update: no client, no network."""
    return adapter.build_request(customer_id, patch, base_url=base_url, token=token)


def updates(n: int, start: int = 1) -> list[tuple[CustomerId, CustomerPatch]]:
    """``n`` DualEntry updates from customer ``start`` on, each naming its customer ``N<id>``."""
    return [(i, CustomerPatch(name=f"N{i}")) for i in range(start, start + n)]


def mock_client(
    handler: Handler | MockTransport,
    adapter: str | Adapter = "dualentry",
    *,
    token: str = TOKEN,
    **options: Any,
) -> Client:
    """A client whose every request ``handler`` answers: no network.  Pass a
    :class:`MockTransport` to read its ``requests`` afterwards.  Unpaced unless
    ``rate_limit=`` is given."""
    transport = handler if isinstance(handler, MockTransport) else MockTransport(handler)
    options.setdefault("rate_limit", None)
    return Client(adapter, token=token, transport=transport, **options)


@asynccontextmanager
async def serve(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    *,
    method: str = "*",
    path: str = "/{tail:.*}",
    host: str = "127.0.0.1",
    ssl: _ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    """An aiohttp server on ``host`` (loopback) answering ``method path`` (by default
    every request) with ``handler``; yields its base URL, closes it on leaving."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    server = TestServer(app, host=host)
    await server.start_server(ssl=ssl)
    try:
        yield f"{server.scheme}://{host}:{server.port}"
    finally:
        await server.close()


@asynccontextmanager
async def serve_raw(
    on_connection: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A bare TCP server on 127.0.0.1, for answers no HTTP server would write
    (malformed header lines); yields its base URL, closes it on leaving."""
    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


def loopback_client(
    base_url: str, adapter: str | Adapter = "dualentry", *, token: str = TOKEN, **options: Any
) -> Client:
    """A client of the server at ``base_url`` (on loopback: see :func:`serve`),
    unpaced unless ``rate_limit=`` is given."""
    options.setdefault("rate_limit", None)
    return Client(adapter, token=token, base_url=base_url, **options)


# -- bulk runs ----------------------------------------------------------------------------


def runner_tasks() -> list[asyncio.Task[Any]]:
    """The bulk runner's tasks still alive (every one is named ``customer-patch ...``)."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("customer-patch")]


def fold(items: Iterable[tuple[Any, CustomerPatch]]) -> dict[Any, dict[str, Any]]:
    """What the provider must end with: each customer's lines applied in input order."""
    expected: dict[Any, dict[str, Any]] = {}
    for cid, patch in items:
        expected.setdefault(cid, {}).update(patch.to_dict())
    return expected


def ok_answer(request: Request) -> Response:
    """A DualEntry customer answer about the customer the request names."""
    number = int(request.url.rstrip("/").split("/")[-1])
    return Response(status=200, body=json.dumps({"id": number, "name": "N"}).encode())


async def drain(
    run: AsyncGenerator[UpdateResult, None], into: list[UpdateResult] | None = None
) -> None:
    """Every result of ``run`` into ``into`` (or dropped), what came before kept when
    the run raises; the run closed however it ends (a cancel included)."""
    async with contextlib.aclosing(run):
        async for result in run:
            if into is not None:
                into.append(result)


async def collect(run: AsyncGenerator[UpdateResult, None], into: list[UpdateResult]) -> None:
    """:func:`drain` into ``into``; a hang fails at :data:`HANG_GUARD`."""
    await asyncio.wait_for(drain(run, into), HANG_GUARD)


async def ends(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` ends within :data:`HANG_GUARD` (a hang guard, not a timing)."""
    done, _ = await asyncio.wait({task}, timeout=HANG_GUARD)
    return task in done


class Boom(BaseException):
    """Not an Exception: what a caller's generator or a transport may raise (a custom abort)."""


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs: a zombie (ended, perhaps never reaped here)
    does not; a pid now another user's is not known to be gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc: the signal's answer stands
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
