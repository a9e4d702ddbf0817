"""The client: validate, build, send, read back, for one provider."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import MappingProxyType, TracebackType
from urllib.parse import quote, urlsplit

import aiohttp
from multidict import CIMultiDict

from customer_patch._adapter import Adapter
from customer_patch._bulk import BulkReport, ProgressCallback, UpdateResult, Updates, run_bulk
from customer_patch._errors import (
    CustomerPatchError,
    NotAttemptedError,
    ProviderError,
    RateLimitedError,
    TransportError,
)
from customer_patch._http import RateLimit, Request
from customer_patch._model import UNSET, Customer, CustomerId, CustomerPatch, Unset
from customer_patch._pacing import Pacer
from customer_patch._registry import AdapterRegistry, default_registry
from customer_patch._retry import NO_RETRY, HeldPastDeadline, RetryPolicy, send_with_retries
from customer_patch._transport import AiohttpTransport, Transport
from customer_patch._version import __version__

log = logging.getLogger("customer_patch")


_MASK = b"********"


class _Credentials:
    """The headers that carry the token, and the forms it could be echoed in.

    Kept in one object whose repr shows nothing, so neither ``vars(client)``
    nor an error tracker recording a frame's locals can print the token.
    """

    __slots__ = ("_echoes", "headers", "secret_names")

    def __init__(self, headers: Mapping[str, str], secret_names: frozenset[str], token: str):
        self.headers: Mapping[str, str] = MappingProxyType(dict(headers))
        self.secret_names = secret_names
        # As is, JSON-escaped (both ways) and URL-encoded: how a provider could
        # quote the token back; in any case, since a parser may change it
        # (an ISO date parser upper-cases what it reads, for one).
        forms = {
            token,
            json.dumps(token)[1:-1],
            json.dumps(token, ensure_ascii=False)[1:-1],
            quote(token, safe=""),
        }
        self._echoes = re.compile(
            "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)).encode(
                "utf-8", "surrogateescape"
            ),
            re.IGNORECASE,
        )

    def __repr__(self) -> str:
        return "<credentials>"

    def redact(self, error: CustomerPatchError) -> CustomerPatchError:
        """``error`` with every echo of the token masked, in every text it carries:
        a provider (or a parser quoting the provider's bytes) must not put the
        credential into messages, reports or logs."""
        # Only on the error path, so the cost does not matter: mask everything.
        error.args = tuple(self.mask(a) if isinstance(a, str) else a for a in error.args)
        for name in ("message", "body", "field_errors", "headers"):
            value = getattr(error, name, None)
            if isinstance(value, str):
                setattr(error, name, self.mask(value))
            elif isinstance(value, bytes):
                setattr(error, name, self._echoes.sub(_MASK, value))
        if isinstance(error, ProviderError):
            error.field_errors = {
                self.mask(k): tuple(self.mask(m) for m in v) for k, v in error.field_errors.items()
            }
            error.headers = CIMultiDict({k: self.mask(v) for k, v in error.headers.items()})
        return error

    def mask(self, value: str) -> str:
        raw = self._echoes.sub(_MASK, value.encode("utf-8", "surrogateescape"))
        return raw.decode("utf-8", "surrogateescape")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
    if parts.username or parts.password:
        raise ValueError("base_url must not carry credentials; pass token= instead")
    if "?" in base_url or "#" in base_url:  # even empty: requests would go elsewhere
        raise ValueError(f"base_url must not have a query or fragment, got {base_url!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            f"refusing plain http to {parts.hostname}: the token would travel unencrypted; "
            "use https (plain http is allowed only to loopback addresses)"
        )
    return base_url.rstrip("/")


_UNBOUNDED = contextlib.nullcontext()


class Client:
    """Applies partial updates to customers at one provider.

    ``adapter`` is a registered name (see :func:`available_adapters`) or an
    :class:`Adapter` instance.  Use it as an async context manager, or call
    :meth:`aclose` when done.  A ``session`` passed in is used for every
    request and never closed by the client.

    ``retry`` applies to every update, single or bulk (``None``: no retries).
    ``rate_limit`` left alone paces to the adapter's declared limits; a
    :class:`RateLimit` (or several, all kept) replaces them, for raised
    limits; ``None`` turns pacing off.  Whatever the setting, a 429's
    ``Retry-After`` pauses every request of the client.
    """

    def __init__(
        self,
        adapter: str | Adapter,
        /,
        *,
        token: str,
        base_url: str | None = None,
        timeout: float = 30.0,
        session: aiohttp.ClientSession | None = None,
        user_agent: str | None = None,
        max_connections: int = 100,
        retry: RetryPolicy | None = RetryPolicy(),  # noqa: B008 - frozen, shared safely
        rate_limit: RateLimit | Sequence[RateLimit] | Unset | None = UNSET,
        registry: AdapterRegistry | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.adapter = (
            (registry or default_registry).get(adapter) if isinstance(adapter, str) else adapter
        )
        if not isinstance(self.adapter, Adapter):
            raise TypeError(f"expected an adapter name or an Adapter, got {adapter!r}")
        if not isinstance(token, str) or not token.strip():
            raise ValueError("token must be a non-empty string")
        if any(c < " " or c == "\x7f" for c in token):
            # Never echo the token: say what is wrong with it, not what it is.
            raise ValueError("token must not contain control characters (line breaks, NUL...)")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.base_url = _check_base_url(base_url or self.adapter.default_base_url)
        self.user_agent = user_agent or f"customer-patch/{__version__}"
        # Built once: every request of this client carries the same headers.
        self._credentials = _Credentials(
            *self.adapter.headers(token, {"User-Agent": self.user_agent}), token
        )
        self.retry = retry or NO_RETRY
        if rate_limit is UNSET:
            self._pacer = Pacer(self.adapter.rate_limits)
        elif rate_limit is None:
            # No declared limit, not "ignore the provider": a 429 still engages
            # the adaptive pace, or a run would fail record after record.
            self._pacer = Pacer((), start_slow=False)
        else:
            limits = (rate_limit,) if isinstance(rate_limit, RateLimit) else tuple(rate_limit)
            self._pacer = Pacer(limits)
        self._closed = False
        self._attempt_bound = math.inf if transport else timeout
        self._transport: Transport = transport or AiohttpTransport(
            provider=self.adapter.provider,
            timeout=timeout,
            session=session,
            max_connections=max_connections,
        )

    @property
    def provider(self) -> str:
        """The provider this client talks to."""
        return self.adapter.provider

    def __repr__(self) -> str:
        return f"Client({self.provider!r}, base_url={self.base_url!r})"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session, unless it was passed in by the caller.

        A closed client sends nothing more: using it raises :class:`RuntimeError`.
        """
        self._closed = True
        await self._transport.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new Client to send more")

    def prepare(self, customer_id: CustomerId, patch: CustomerPatch) -> Request:
        """Validate and build the request for one update, without sending it.

        Raises :class:`~customer_patch.UnsupportedFieldError` or
        :class:`~customer_patch.ValidationError`; useful for dry runs.
        """
        self._check_open()
        # Validation runs first, in frames that hold no credential: an error
        # tracker recording a ValidationError's locals finds no token.
        path, body = self.adapter.prepare_update(customer_id, patch)
        return Request(
            method=self.adapter.method,
            url=self.base_url + path,
            headers=self._credentials.headers,
            body=body,
            secret_headers=self._credentials.secret_names,
        )

    async def update(self, customer_id: CustomerId, patch: CustomerPatch) -> Customer:
        """Apply ``patch`` to one customer and return the customer as the provider has it now.

        Nothing is sent for an invalid patch.  Provider errors are raised as
        :class:`~customer_patch.ProviderError` subclasses once retries are spent.
        """
        self._check_open()
        customer, error, _ = await self._update(customer_id, patch)
        if error is not None:
            raise error
        assert customer is not None
        return customer

    def iter_updates(
        self,
        updates: Updates,
        *,
        concurrency: int = 8,
        progress: ProgressCallback | None = None,
        total: int | None = None,
        max_failures: int | None = None,
        max_consecutive_failures: int | None = None,
    ) -> AsyncGenerator[UpdateResult, None]:
        """Apply many updates concurrently; yield each :class:`UpdateResult` as it finishes.

        ``updates`` is an iterable or async iterable of ``(customer_id, patch)``,
        consumed lazily: at most ``concurrency`` records are in flight, and at
        most as many finished ones wait for the caller to take them.  Updates
        to one customer are sent one after the other, in input order (a later
        one waits for the earlier one, retries included), so the provider ends
        with the last value given for each field.

        Every record yields exactly one result.  A failure does not stop the
        others, except a 401/403, or ``max_failures`` failed records in all, or
        ``max_consecutive_failures`` in a row with the same error class and
        status: the records left are then reported with
        :class:`NotAttemptedError` (its ``cause`` says why) and nothing more is
        sent.  Leaving the loop early (``break``, an exception, cancellation)
        cancels the requests in flight; their outcome is unknown.
        """
        self._check_open()
        return run_bulk(
            self._update,
            updates,
            concurrency=concurrency,
            progress=progress,
            total=total,
            max_failures=max_failures,
            max_consecutive_failures=max_consecutive_failures,
        )

    async def update_many(
        self,
        updates: Updates,
        *,
        concurrency: int = 8,
        progress: ProgressCallback | None = None,
        total: int | None = None,
        max_failures: int | None = None,
        max_consecutive_failures: int | None = None,
    ) -> BulkReport:
        """Like :meth:`iter_updates`, collecting every result into a :class:`BulkReport`.

        The report holds every result; for very large runs prefer
        :meth:`iter_updates`, whose memory does not grow with the input.
        """
        succeeded: list[UpdateResult] = []
        failed: list[UpdateResult] = []
        results = self.iter_updates(
            updates,
            concurrency=concurrency,
            progress=progress,
            total=total,
            max_failures=max_failures,
            max_consecutive_failures=max_consecutive_failures,
        )
        async with contextlib.aclosing(results):
            async for result in results:
                (succeeded if result.ok else failed).append(result)
        succeeded.sort(key=lambda r: r.index)
        failed.sort(key=lambda r: r.index)
        return BulkReport(succeeded=succeeded, failed=failed)

    async def _update(
        self, customer_id: CustomerId, patch: CustomerPatch
    ) -> tuple[Customer | None, CustomerPatchError | None, int]:
        """One update with retries, as ``(customer, error, attempts)``.

        Never raises a :class:`CustomerPatchError`, so a bulk run can report it.
        """
        if self._closed:  # closed while a bulk run was going: send nothing more
            return None, NotAttemptedError(RuntimeError(f"{self!r} was closed")), 0
        try:
            request = self.prepare(customer_id, patch)
        except CustomerPatchError as e:
            return None, e, 0
        return await send_with_retries(
            functools.partial(self._send, request, customer_id),
            self.retry,
            on_rate_limited=self._pacer.on_rate_limited,
            label=f"{self.provider} customer {customer_id!r:.80}",
        )

    async def _send(self, request: Request, customer_id: CustomerId, deadline: float) -> Customer:
        if not await self._pacer.acquire(deadline):
            # Held by the provider's rate limit (a shared pause, a full bucket)
            # past this update's time budget: end it now, nothing sent.
            raise HeldPastDeadline(
                RateLimitedError(
                    "the client is held by the provider's rate limit past this "
                    "update's time budget (RetryPolicy.timeout); nothing was sent",
                    provider=self.provider,
                    status=429,
                )
            )
        started = time.perf_counter()
        try:
            # The budget bounds the attempt too: a body that drips forever must
            # not hold the update for the transport's whole timeout.
            budget = deadline - time.monotonic()
            # The library's own transport ends every attempt within `timeout`
            # itself: a timer of ours is needed only when the budget ends sooner
            # (or the transport is someone else's).  It costs a few microseconds.
            bound = asyncio.timeout(budget) if budget < self._attempt_bound else _UNBOUNDED
            async with bound:
                response = await self._transport.send(request)
        except TimeoutError:
            raise TransportError(
                "no complete answer within the update's time budget (RetryPolicy.timeout)",
                provider=self.provider,
            ) from None
        except TransportError as e:  # its text may quote the provider's bytes
            raise self._credentials.redact(e) from None
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %d in %.1f ms",
                request.method,
                request.url,
                response.status,
                (time.perf_counter() - started) * 1000,
            )
        try:
            customer = self.adapter.parse_response(
                response, request=request, customer_id=customer_id
            )
        except CustomerPatchError as e:
            raise self._credentials.redact(e) from e.__cause__
        self._pacer.on_success()
        return customer
