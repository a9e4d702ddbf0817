"""Fake providers: real HTTP servers on loopback that behave like the real ones.

Each adapter ships the fake for its own provider (a :class:`FakeProvider`
subclass named by ``Adapter.sandbox``); this module supplies what every fake
shares: an in-memory store, a log of requests, per-key token buckets, fault
injection, and starting on a free port of 127.0.0.1.

>>> faults = Faults.parse("latency=0.05,500=0.1,drop=0.02")
>>> faults.latency, faults.rates["500"], faults.rates["drop"]
(0.05, 0.1, 0.02)
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import random
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from aiohttp import web
from attrs import field, frozen

from customer_patch._adapter import Adapter
from customer_patch._checks import A_DAY, check_flag, check_seconds, check_whole
from customer_patch._errors import AdapterRegistrationError, quoted
from customer_patch._http import RateLimit, as_limits

__all__ = ["FAULT_KINDS", "FakeProvider", "Faults", "RecordedRequest", "TokenBucket", "fake_for"]

RATE_LIMITED = "Rate limit exceeded. Please try again later."
"""What a 429 says, as a provider documents it (one that documents none says it too)."""

FAULT_KINDS = ("429", "500", "503", "drop", "truncate", "garbage", "false_success")
"""What :class:`Faults` can inject, each at its own rate:

* ``429``, ``500``, ``503``: answered with that status (429 with ``Retry-After``);
* ``drop``: the connection is closed without an answer, before the change is applied;
* ``truncate``: the change is applied, then the answer is cut short mid-body;
* ``garbage``: the change is applied, then the answer is a 200 that is not JSON;
* ``false_success``: a 200 whose body says ``success: false``, nothing applied.
"""


# The words click reads as a flag: --faults hang=yes as --faults hang=true.
_YES_NO = dict.fromkeys(("1", "true", "yes", "on", "y", "t"), True) | dict.fromkeys(
    ("0", "false", "no", "off", "n", "f"), False
)


@frozen(kw_only=True)
class Faults:
    """What a fake provider does wrong, and how often (each rate from 0 to 1)."""

    latency: float = 0.0
    """Seconds added before every answer."""
    rates: Mapping[str, float] = field(factory=dict)
    """Fault kind (see :data:`FAULT_KINDS`) to the fraction of requests it hits."""
    retry_after: int = 1
    """The ``Retry-After`` (seconds) sent with injected 429s."""
    hang: bool = False
    """Accept connections and never answer (for timeout tests)."""
    seed: int | None = None
    """Seed for the random draws, for runs that repeat exactly."""

    def __attrs_post_init__(self) -> None:
        check_seconds("latency", self.latency, zero=True)
        check_whole("retry_after", self.retry_after, least=0, most=A_DAY)
        check_flag("hang", self.hang)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"seed must be a whole number or None, got {quoted(self.seed)}")
        unknown = set(self.rates) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; known: {FAULT_KINDS}")
        rates = list(self.rates.values())
        # "0 <= r <= 1" is false for nan, which would silence every fault drawn after it.
        if not (
            all(isinstance(r, int | float) and not isinstance(r, bool) for r in rates)
            and all(0 <= r <= 1 for r in rates)
            and sum(rates) <= 1
        ):
            raise ValueError(
                "fault rates must be numbers from 0 to 1 and add up to at most 1, "
                f"got {quoted(rates)}"
            )

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """Read ``"latency=0.05,429=0.05,500=0.1,drop=0.02,seed=7"`` (the CLI's form)."""
        rates: dict[str, float] = {}
        options: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"expected key=value in {part!r}")
            expected = {
                "latency": "a number of seconds",
                "retry_after": "a whole number",
                "seed": "a whole number",
                "hang": "true or false (or yes/no, on/off, 1/0)",
            }.get(key, "a number from 0 to 1")
            try:
                if key == "latency":
                    options[key] = float(value)
                elif key in ("retry_after", "seed"):
                    options[key] = int(value)
                elif key == "hang":
                    options[key] = _YES_NO[value.strip().lower()]
                else:
                    rates[key] = float(value)
            except (KeyError, ValueError):
                raise ValueError(f"--faults {part}: expected {expected}") from None
        return cls(rates=rates, **options)

    def draw(self, rng: random.Random) -> str | None:
        """The fault for one request, or ``None``."""
        roll = rng.random()
        for kind in FAULT_KINDS:
            rate = self.rates.get(kind, 0.0)
            if roll < rate:
                return kind
            roll -= rate
        return None


class TokenBucket:
    """A textbook token bucket, as a provider would enforce it (independent of
    the client's pacer, so the two cannot share a mistake)."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self.updated = time.monotonic()

    def take(self) -> float | None:
        """Take a token; ``None`` if granted, else the seconds until one is free."""
        now = time.monotonic()
        self.tokens = min(
            self.limit.burst, self.tokens + (now - self.updated) * self.limit.per_second
        )
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.limit.per_second


@frozen
class RecordedRequest:
    """One request as the fake received it; credentials are not kept."""

    method: str
    path: str
    body: Any
    at: float


class FakeProvider:
    """Shared machinery of every fake provider; subclasses add routes and rules.

    A subclass implements :meth:`routes` (aiohttp route definitions using the
    store in :attr:`customers`), answers in its provider's error format via
    :meth:`error_body`, and may set :attr:`demo_file` (a file of example
    updates inside its package) and :meth:`seed_demo`.
    """

    provider: ClassVar[str]
    rate_limits: ClassVar[tuple[RateLimit, ...]] = ()
    """The provider's documented limits, enforced per key unless ``limits=`` says otherwise."""
    demo_file: ClassVar[str | None] = None
    """``"package:relative/path"`` of the example updates the demo applies."""
    base_path: ClassVar[str] = ""
    """The path of the provider's API root (what its documented base URL has
    after the host, e.g. ``"/api"``): :attr:`base_url` ends with it, and the
    subclass's routes live under it."""

    def __init__(
        self,
        *,
        token: str = "sandbox-token",  # noqa: S107 - the sandbox's documented token
        faults: Faults | None = None,
        limits: RateLimit | tuple[RateLimit, ...] | None = None,
    ) -> None:
        if faults is not None and not isinstance(faults, Faults):
            raise TypeError(f"faults must be a Faults or None, got {quoted(faults)}")
        self.token = token
        self.faults = faults or Faults()
        # One limit or several, as a client takes them; () enforces none.
        self.limits = self.rate_limits if limits is None else as_limits(limits, name="limits")
        self.customers: dict[Any, dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self.injected: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self.answered_429 = 0
        self._rng = random.Random(self.faults.seed)  # noqa: S311 - fault draws, not secrets
        self._buckets: dict[tuple[int, str], TokenBucket] = {}
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- for subclasses -------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        """The provider's routes, as aiohttp route definitions."""
        raise NotImplementedError

    def error_body(self, status: int, message: str, field: str | None = None) -> dict[str, Any]:
        """An error in the provider's own format."""
        raise NotImplementedError

    def seed_demo(self, count: int) -> list[Any]:
        """Fill the store with ``count`` demo customers; return their ids."""
        raise NotImplementedError

    def seed_examples(self) -> list[Any]:
        """Add the customers the provider's own documentation uses in its examples,
        as it shows them, so that those examples run against the sandbox as
        written; return their ids (none by default)."""
        return []

    # -- shared behaviour ---------------------------------------------------------

    def error(
        self, status: int, message: str, field: str | None = None, **headers: str
    ) -> web.Response:
        """An error response in the provider's format, with extra headers."""
        return web.json_response(
            self.error_body(status, message, field), status=status, headers=headers
        )

    def rate_limited(self, *scopes: str) -> web.Response | None:
        """A 429 if any bucket is empty, else ``None`` (a token is taken from each).

        ``scopes`` go from the narrowest to the widest, e.g. ``(f"{key} PATCH
        /customers/{{id}}/", key)``: a limit that is :attr:`~customer_patch.RateLimit.per_route`
        is kept per the first, any other per the last, so that each route
        drains its own bucket and all of them the key's.  Every bucket is
        asked, as django-ninja's and DRF's throttles are: a request refused
        by one bucket still takes a token from each bucket that had one.
        """
        waits = []
        for i, limit in enumerate(self.limits):
            scope = scopes[0] if limit.per_route else scopes[-1]
            bucket = self._buckets.get((i, scope))
            if bucket is None:
                bucket = self._buckets[i, scope] = TokenBucket(limit)
            wait = bucket.take()
            if wait is not None:
                waits.append(wait)
        if not waits:
            return None
        self.answered_429 += 1
        return self.error(429, RATE_LIMITED, **{"Retry-After": str(max(1, math.ceil(max(waits))))})

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        self.requests.append(RecordedRequest(request.method, request.path_qs, body, time.time()))
        if self.faults.hang:
            await asyncio.Event().wait()  # until the client gives up
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        fault = self.faults.draw(self._rng)
        if fault in ("garbage", "truncate"):
            return await self._spoiled(fault, request, await handler(request))
        if fault is not None:
            self.injected[fault] += 1
        if fault in ("429", "500", "503"):
            status = int(fault)
            if status == 429:  # as a provider's own 429 says it
                return self.error(
                    429, RATE_LIMITED, **{"Retry-After": str(self.faults.retry_after)}
                )
            return self.error(status, "injected fault")
        if fault == "false_success":
            return web.json_response(self.error_body(200, "injected fault"))
        if fault == "drop":
            return await _drop(request)
        response: web.StreamResponse = await handler(request)
        return response

    async def _spoiled(
        self, fault: str, request: web.Request, response: web.StreamResponse
    ) -> web.StreamResponse:
        # These spoil a successful answer (the change, if any, applied): drawn
        # for an error, nothing is spoiled, so nothing is counted.
        if response.status >= 300 or not isinstance(response, web.Response):
            return response
        self.injected[fault] += 1
        if fault == "garbage":
            return web.Response(
                status=200, text="<html>upstream error</html>", content_type="text/html"
            )
        return await _truncate(request, response)

    def app(self) -> web.Application:
        """The aiohttp application: the routes behind the fault middleware."""
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**2)
        app.add_routes(self.routes())
        return app

    async def start(self, *, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host`` (loopback by default) and return the base URL
        (the API root: ``http://host:port`` plus :attr:`base_path`)."""
        # A short shutdown: a fake told to hang must not hold up its own stop.
        self._runner = web.AppRunner(
            self.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=512)
        try:
            await site.start()
        except BaseException:  # the port is taken, say: nothing left half-open
            await self.stop()
            raise
        bound = self._runner.addresses[0]
        self.base_url = f"http://{host}:{bound[1]}{self.base_path}"
        return self.base_url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @asynccontextmanager
    async def running(self, **kwargs: Any) -> AsyncIterator[str]:
        """``async with fake.running() as base_url:``, stopped on exit."""
        base_url = await self.start(**kwargs)
        try:
            yield base_url
        finally:
            await self.stop()


async def _drop(request: web.Request) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)  # never reaches the client


async def _truncate(request: web.Request, response: web.Response) -> web.StreamResponse:
    body = response.body if isinstance(response.body, bytes) else b""
    stream = web.StreamResponse(
        status=response.status, headers={"Content-Type": "application/json"}
    )
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return stream


def fake_for(adapter: Adapter) -> type[FakeProvider]:
    """The fake provider class an adapter ships (``Adapter.tooling.sandbox``)."""
    where = adapter.tooling.sandbox
    if not where:
        raise AdapterRegistrationError(f"the {adapter.provider} adapter ships no sandbox")
    module_name, _, attr = where.partition(":")
    fake = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(fake, type) and issubclass(fake, FakeProvider)):
        raise AdapterRegistrationError(f"{where} is not a FakeProvider")
    return fake
