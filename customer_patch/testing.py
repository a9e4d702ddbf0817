"""pytest fixtures for testing your code against fake providers on loopback.

Enable the plugin in your ``conftest.py``::

    pytest_plugins = ["customer_patch.testing"]

then ask for the ``sandbox`` fixture (it needs pytest-asyncio)::

    async def test_renames(sandbox):
        sb = await sandbox("your-provider", customers=3)
        customer = await sb.client.update(sb.ids[0], CustomerPatch(name="Renamed"))
        assert sb.fake.customers[sb.ids[0]]["name"] == "Renamed"

Every fake and client the fixture started is closed when the test ends.

To unit-test code that uses a client without any server, give the client a
:class:`MockTransport`: every request is answered by your handler.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_asyncio
from attrs import frozen

from customer_patch._adapter import Adapter
from customer_patch._checks import check_whole
from customer_patch._client import Client
from customer_patch._http import RateLimit, Request, Response
from customer_patch._registry import get_adapter
from customer_patch.sandbox import FakeProvider, Faults, fake_for

__all__ = ["MockTransport", "Sandbox", "SandboxFactory", "sandbox"]


class MockTransport:
    """A transport that answers each request with ``handler(request)``; no network.

    ``handler`` takes a :class:`~customer_patch.Request` and returns a
    :class:`~customer_patch.Response` (or an awaitable of one); it may raise
    :class:`~customer_patch.TransportError` to play a lost connection.  Every
    request is kept in ``requests``::

        transport = MockTransport(lambda request: Response(status=200, body=answer))
        client = Client(adapter_name, token="test", transport=transport)
    """

    def __init__(self, handler: Callable[[Request], Response | Awaitable[Response]]) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        """Every request sent, in order."""
        self.closed = False

    async def send(self, request: Request) -> Response:
        """Record ``request`` and return the handler's answer."""
        self.requests.append(request)
        response = self.handler(request)
        if inspect.isawaitable(response):
            response = await response
        if not isinstance(response, Response):
            raise TypeError(
                f"the MockTransport handler must return a Response, got {type(response).__name__}"
            )
        # Three digits, as HTTP writes it: "200" or True would compare wrongly everywhere.
        check_whole(
            "the MockTransport handler's Response.status", response.status, least=100, most=999
        )
        return response

    async def aclose(self) -> None:
        """Mark the transport closed."""
        self.closed = True


@frozen
class Sandbox:
    """A running fake provider and a client pointed at it."""

    fake: FakeProvider
    """The fake: its ``customers`` store and ``requests`` log are yours to inspect."""
    client: Client
    base_url: str
    ids: list[Any]
    """The ids of the customers seeded with ``customers=``."""


SandboxFactory = Callable[..., Awaitable[Sandbox]]


@pytest_asyncio.fixture
async def sandbox() -> AsyncIterator[SandboxFactory]:
    """Start a fake provider: ``await sandbox(provider, *, customers=0, faults=None,
    limits=None, token="sandbox-token", **client_options)``.

    ``limits`` replaces the limits the fake enforces (default: the provider's
    documented ones); client options (``rate_limit=``, ``retry=``...) go to
    :class:`~customer_patch.Client`.
    """
    # What a call starts is closed when the test ends, or at once if the call
    # fails half-way (a client option refused); one piece failing to close does
    # not keep the others open.
    async with contextlib.AsyncExitStack() as started:

        async def start(
            provider: str | Adapter,
            *,
            customers: int = 0,
            faults: Faults | None = None,
            limits: tuple[RateLimit, ...] | None = None,
            token: str = "sandbox-token",  # noqa: S107 - the sandbox's own token
            **client_options: Any,
        ) -> Sandbox:
            adapter = get_adapter(provider) if isinstance(provider, str) else provider
            fake = fake_for(adapter)(token=token, faults=faults, limits=limits)
            async with contextlib.AsyncExitStack() as this:
                base_url = await fake.start()
                this.push_async_callback(fake.stop)
                client = Client(adapter, token=token, base_url=base_url, **client_options)
                this.push_async_callback(client.aclose)
                ids = fake.seed_demo(customers)
                started.push_async_exit(this.pop_all())  # kept running until the test ends
            return Sandbox(fake=fake, client=client, base_url=base_url, ids=ids)

        yield start
