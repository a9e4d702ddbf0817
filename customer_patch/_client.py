"""The client: validate, build, send, read back, for one provider."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from customer_patch._adapter import Adapter
from customer_patch._bulk import (
    _RECANCEL,
    BeforeWrite,
    BulkReport,
    ProgressCallback,
    UpdateResult,
    Updates,
    read_key,
    run_bulk,
)
from customer_patch._checks import check_flag, check_seconds, check_whole
from customer_patch._echoes import Echoes
from customer_patch._errors import (
    CUT,
    CustomerPatchError,
    NotAttemptedError,
    NotFoundError,
    Problem,
    ProviderError,
    RateLimitedError,
    ResponseFormatError,
    TransportError,
    UnknownCustomFieldError,
    UnsupportedOperationError,
    ValidationError,
    quoted,
)
from customer_patch._http import RateLimit, Request, Response, as_limits
from customer_patch._model import (
    UNSET,
    Customer,
    CustomerId,
    CustomerPatch,
    CustomFieldDefinition,
    CustomFieldKey,
    Unset,
    _UnsetType,
)
from customer_patch._pacing import Pacer
from customer_patch._registry import AdapterRegistry, default_registry
from customer_patch._retry import (
    NO_RETRY,
    HeldPastDeadline,
    RetryPolicy,
    is_retryable,
    send_with_retries,
)
from customer_patch._transport import DEFAULT_MAX_RESPONSE_BYTES, AiohttpTransport, Transport
from customer_patch._version import __version__

log = logging.getLogger("customer_patch")
T = TypeVar("T")


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
        self._echoes = Echoes(token)

    def __repr__(self) -> str:
        return "<credentials>"

    def redact(self, error: CustomerPatchError) -> CustomerPatchError:
        """``error`` with every echo of the token masked, in every text it carries:
        a provider (or a parser quoting the provider's bytes) must not put the
        credential into messages, reports or logs."""
        # Only on the error path, so the cost does not matter: mask everything.
        error.args = tuple(self._masked(a) for a in error.args)
        for name in ("message", "body", "field_errors", "headers"):
            value = getattr(error, name, None)
            if isinstance(value, str):
                setattr(error, name, self._mask_kept(value))
            elif isinstance(value, bytes):
                cut_end = getattr(error, "body_cut", False) is True
                setattr(error, name, self._masked_bytes(value, cut_end=cut_end))
        if isinstance(error, ValidationError):
            error.problems = tuple(
                Problem(self._masked(p.field), self._masked(p.message)) for p in error.problems
            )
        if isinstance(error, ProviderError):
            error.field_errors = {
                self._mask_kept(k): tuple(self._mask_kept(m) for m in v)
                for k, v in error.field_errors.items()
            }
            error.headers = CIMultiDict(
                (self.mask(k), self.mask(v)) for k, v in error.headers.items()
            )
        # The parser's own exception, kept as the cause, quotes the bad value too,
        # and a traceback prints it: mask its text (and its causes') as well.  A
        # context that "from None" hides is not printed, but it is still there.
        # Their tracebacks go: the frames that read the answer hold it unmasked
        # in their locals, which an error tracker records (Sentry does by default).
        link: BaseException | None = error
        seen: set[int] = set()
        while link is not None and id(link) not in seen:
            seen.add(id(link))
            if link.__suppress_context__:
                link.__context__ = None
            if link is not error:
                link.args = tuple(self._masked(a) for a in link.args)
            link.__traceback__ = None
            link = link.__cause__ or link.__context__
        return error

    def _masked(self, value: Any) -> Any:
        return self._mask_kept(value) if isinstance(value, str) else value

    def _masked_bytes(self, body: bytes, *, cut_end: bool = False) -> bytes:
        # JSON in UTF-16 or UTF-32 is masked as text, in its own encoding: the
        # key's escaped forms are matched in UTF-8 only, and a mask written in
        # UTF-8 bytes would leave it unreadable.  (``cut_end``: the body was cut
        # there, perhaps inside an echo.)
        encoding = json.detect_encoding(body)  # as json.loads tells them apart
        if not encoding.startswith("utf-8"):
            try:
                text = body.decode(encoding, "surrogatepass")
            except UnicodeError:  # an odd byte: what decodes is still read, and masked
                text = body.decode(encoding, "replace")
            wide = self._mask_kept(text + CUT if cut_end else text).removesuffix(CUT)
            if wide != text:  # else as it came (a BOM's byte order kept)
                return wide.encode(encoding, "surrogatepass")
            return body
        masked = self._echoes.masked(body, _MASK)
        if cut_end:  # latin-1: one character a byte, so the piece's length is its bytes'
            piece = self._echoes.cut_piece(masked[-256:].decode("latin-1"))
            if piece:
                masked = masked[:-piece] + _MASK
        return masked

    def mask(self, value: str) -> str:
        # surrogateescape keeps bytes a decoder let through as they were (the key's
        # forms are matched in bytes); a lone surrogate JSON spelled out ("\\ud800")
        # has no byte of its own: surrogatepass then, both ways.
        try:
            raw, errors = value.encode("utf-8", "surrogateescape"), "surrogateescape"
        except UnicodeEncodeError:
            raw, errors = value.encode("utf-8", "surrogatepass"), "surrogatepass"
        masked = self._echoes.masked(raw, _MASK)
        if masked == raw:
            return value  # as it was: a round trip could join escaped bytes into a character
        return masked.decode("utf-8", errors)

    def _mask_kept(self, text: str) -> str:
        """``text``, a text an error keeps, masked, and where it was cut short
        (:data:`CUT`), the piece of the token it may end with masked too."""
        text = self.mask(text)
        if CUT not in text:
            return text
        parts = text.split(CUT)
        for i, part in enumerate(parts[:-1]):
            piece = self._echoes.cut_piece(part)
            if piece:
                parts[i] = part[:-piece] + _MASK.decode()
        return CUT.join(parts)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_base_url(base_url: str) -> str:
    if not isinstance(base_url, str):
        raise ValueError(f"base_url must be a string or None, got {quoted(base_url)}")
    if re.search(r"[\s\x00-\x1f\x7f]", base_url):
        # urlsplit drops a tab or a line break, so every check below would pass
        # while the URL kept them, and requests went to another path.
        raise ValueError("base_url must not contain whitespace or control characters")
    parts = urlsplit(base_url)
    if "://" not in base_url:
        # Not quoted: what lands here without one is as likely the token,
        # pasted into the wrong argument (or variable), as a URL.
        raise ValueError("base_url must be an absolute URL starting with https:// or http://")
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
    try:
        parts.port  # noqa: B018 - read to be checked: it raises when out of range
    except ValueError:
        port = parts.netloc.rsplit(":", 1)[-1]
        raise ValueError(f"base_url's port {port} is out of range (0 to 65535)") from None
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


DEFAULT_MAX_CONNECTIONS = 100
"""The connection pool the built-in transport opens, unless ``max_connections`` says."""

MAX_DEFINITION_PAGES = 100
"""Pages of custom field definitions read at most (10,000 definitions at 100
a page; a page longer than asked for is refused)."""

KEPT_OF_READS = DEFAULT_MAX_RESPONSE_BYTES
"""Bytes of answers a read of many pages keeps, in all (the definitions, kept
for the client's life; the customers of a batch): one answer's worth, or its
first page's if larger (a transport may take larger answers).  A list that
pages one large item at a time would have them grow with the pages."""


class _Kept:
    """The bytes a read of many pages has kept, refused past :data:`KEPT_OF_READS`
    (or its first page's size, if larger)."""

    def __init__(self, what: str, *, provider: str) -> None:
        self._what = what
        self._provider = provider
        self._first = self._total = 0

    def add(self, size: int) -> None:
        """Count a page of ``size`` bytes; raise :class:`ResponseFormatError` past the cap."""
        self._first = self._first or size
        self._total += size
        if self._total > max(KEPT_OF_READS, self._first):
            raise ResponseFormatError(
                f"{self._what} of more than {KEPT_OF_READS // 2**20} MiB in all: not read further",
                provider=self._provider,
                status=200,
            )


def _measured(parse: Callable[..., T]) -> Callable[..., tuple[T, int]]:
    """``parse``, also giving the size of the answer it read."""

    def measured(response: Response, *, request: Request) -> tuple[T, int]:
        return parse(response, request=request), len(response.body)

    return measured


async def _done(value: T) -> T:
    """``value``, as an awaitable (for an answer known before anything is sent)."""
    return value


async def _together(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """The value of each of ``awaitables``, run concurrently, in their order.
    If one raises, the others are cancelled, and have ended, before its
    exception propagates: ``gather`` leaves them running, unseen, sending
    requests after the caller has gone on."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        # Cancelled again until they end, as run_bulk's own tasks are: one that
        # swallows a cancel must not hold the caller for good.
        running = {task for task in tasks if not task.done()}
        while running:
            for task in running:
                task.cancel()
            _, running = await asyncio.wait(running, timeout=_RECANCEL)


def _reads_on(shown: int, count: int, page: int) -> bool:
    """Whether a list paged by offset has more after a page of ``page`` items, with
    ``shown`` items read in all and ``count`` the total the list claims.

    A count lower than what the pages already showed is wrong, not the end:
    the list is read on, rather than leave out what it has not shown.  An
    exact count costs no request past it.  A reader bounds the rest: a batch
    read by the ids it asked for, :class:`_Pages` by the pages themselves.
    """
    return page > 0 and shown != count


def _refuses_the_request(error: CustomerPatchError) -> bool:
    """Whether the provider refused a request for what it asked (a 400, a 404, a
    414), not for who asked (401, 403) or how often (429)."""
    return (
        isinstance(error, ProviderError)
        and 400 <= error.status < 500
        and error.status not in (401, 403, 429)
    )


class _Pages:
    """Reading a whole list paged by offset: where it stands, when it ends."""

    def __init__(self, *, asked: int, provider: str) -> None:
        self.shown = 0  # the offset of the next page
        self.read = 0  # pages read
        self._asked = asked  # the page size asked for
        self._provider = provider
        self._last: list[Any] = []
        # Once the list has proven its count wrong, the ids of the page before
        # and of every page since (ids only, not customers): a list that repeats
        # itself, in any order, is not read again and again.  None until then,
        # as for every honest list.
        self._seen: set[Any] | None = None
        self._short_at: int | None = None  # the offset of an empty page short of its count

    def more(self, ids: list[Any], count: int) -> bool:
        """Whether to read another page after one of ``ids``, the list saying it
        has ``count`` items.  Raises :class:`ResponseFormatError` for a list that
        does not page: it shows the page before again or, once past its count,
        an item of the page before that point or of any page since."""
        past = self.shown + len(ids) > count
        repeats = ids == self._last
        if past and not repeats:
            if self._seen is None:
                self._seen = set(self._last)
            repeats = not self._seen.isdisjoint(ids)
            self._seen.update(ids)
        if ids and repeats:
            raise ResponseFormatError(
                f"the list answered offset {self.shown} with the same page as the one "
                "before (or, past the count it gave, with items it showed): it does not page",
                provider=self._provider,
                status=200,
            )
        if not ids and self.shown < count:
            # One answer, two stories: those it counts and does not show would be
            # left out without a word.  Read once more first: a list that counts
            # in one query and pages in another shows this when an item goes
            # between the two (its next answer then counts without it).
            if self._short_at == self.shown:
                raise ResponseFormatError(
                    f"the list counts {count} items, yet its page at offset {self.shown} "
                    "is empty, twice: it ended before its count",
                    provider=self._provider,
                    status=200,
                )
            self._short_at = self.shown
            self.read += 1
            return True
        self._last = ids
        self.shown += len(ids)
        self.read += 1
        # Past a wrong count, a page shorter than asked is the end, as an empty one is.
        return _reads_on(self.shown, count, len(ids)) and not (past and len(ids) < self._asked)


# Characters no header value may hold (a line break would end the header).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_options(
    *,
    timeout: object,
    session: object,
    user_agent: object,
    max_connections: object,
    retry: object,
    registry: object,
    transport: object,
    check_custom_fields: object,
) -> None:
    """Refuse what :class:`Client` cannot use, naming the parameter."""
    check_seconds("timeout", timeout)
    check_whole("max_connections", max_connections, none=True)
    if max_connections is not None and (session is not None or transport is not None):
        raise ValueError(
            "max_connections sizes the connection pool the client opens; with transport= "
            "or session=, the pool is yours to size"
        )
    if user_agent is not None and not isinstance(user_agent, str):
        raise ValueError(
            f"user_agent must be a non-empty string or None, got {quoted(user_agent)}"
        )
    if user_agent == "":
        raise ValueError("user_agent must be a non-empty string or None, got ''")
    if isinstance(user_agent, str) and _CONTROL.search(user_agent):
        # Sent as a header with every request: a line break would end it.
        raise ValueError("user_agent must not contain control characters (line breaks, NUL...)")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, got {quoted(retry)}")
    if registry is not None and not isinstance(registry, AdapterRegistry):
        raise TypeError(f"registry must be an AdapterRegistry or None, got {quoted(registry)}")
    check_flag("check_custom_fields", check_custom_fields)
    if session is not None and not isinstance(session, aiohttp.ClientSession):
        raise TypeError(f"session must be an aiohttp.ClientSession or None, got {quoted(session)}")
    if isinstance(transport, type):
        raise TypeError(f"transport must be an instance, not the class {transport.__name__}")
    if transport is not None and not (
        callable(getattr(transport, "send", None)) and callable(getattr(transport, "aclose", None))
    ):
        raise TypeError(f"transport must have async send() and aclose(), got {quoted(transport)}")
    if session is not None and transport is not None:
        raise ValueError(
            "session and transport: give one (a session is for the built-in transport)"
        )


def _unquote(error: BaseException, token: str) -> None:
    """Mask ``token`` wherever ``error`` quotes it: its args and text attributes."""
    error.args = tuple(
        a.replace(token, "********") if isinstance(a, str) else a for a in error.args
    )
    for name, value in vars(error).items():
        if isinstance(value, str) and token in value:
            setattr(error, name, value.replace(token, "********"))


def _limits(rate_limit: object) -> tuple[RateLimit, ...]:
    limits = as_limits(rate_limit, name="rate_limit")
    if not limits:  # neither the adapter's limits (leave it out) nor none (None)
        raise ValueError("rate_limit must hold at least one RateLimit; None turns pacing off")
    return limits


class Client:
    """Applies partial updates to customers at one provider.

    ``adapter`` is a registered name (see :func:`available_adapters`) or an
    :class:`Adapter` instance.  Use it as an async context manager, or call
    :meth:`aclose` when done.  A ``session`` passed in is used for every
    request and never closed by the client.  ``timeout`` is the seconds an
    attempt may take, whatever transport sends it.  ``max_connections`` sizes
    the connection pool the built-in transport opens (``None``: 100); with a
    ``session`` or a ``transport`` of your own, the pool is yours, and
    ``max_connections`` is refused (as is a ``session`` with a ``transport``).

    ``retry`` applies to every update, single or bulk (``None``: no retries).
    ``rate_limit`` left alone paces to the adapter's declared limits; a
    :class:`RateLimit` (or several, all kept) replaces them, for raised
    limits; ``None`` turns pacing off.  Whatever the setting, a 429's
    ``Retry-After`` pauses every request of the client (the provider does not
    say which of its buckets was empty).  Reads and writes are paced together:
    a per-route limit (:attr:`RateLimit.per_route`) is kept for each route.

    ``check_custom_fields`` (default on): before an update that sets custom
    fields is sent, its names and values are checked against the provider's
    definitions (read once per client, see :meth:`custom_field_definitions`),
    so an unknown name costs no request.  Turn it off for a token that may
    not read the definitions.
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
        max_connections: int | None = None,
        retry: RetryPolicy | None = RetryPolicy(),  # noqa: B008 - frozen, shared safely
        rate_limit: RateLimit | Sequence[RateLimit] | Unset | None = UNSET,
        registry: AdapterRegistry | None = None,
        transport: Transport | None = None,
        check_custom_fields: bool = True,
    ) -> None:
        if not isinstance(token, str) or not token.strip():
            raise ValueError("token must be a non-empty string")
        if _CONTROL.search(token):
            # Never echo the token: say what is wrong with it, not what it is.
            raise ValueError("token must not contain control characters (line breaks, NUL...)")
        try:
            _check_options(
                timeout=timeout,
                session=session,
                user_agent=user_agent,
                max_connections=max_connections,
                retry=retry,
                registry=registry,
                transport=transport,
                check_custom_fields=check_custom_fields,
            )
            self.adapter = (
                (registry or default_registry).get(adapter)
                if isinstance(adapter, str)
                else adapter
            )
            if not isinstance(self.adapter, Adapter):
                raise TypeError(f"expected an adapter name or an Adapter, got {quoted(adapter)}")
            self.base_url = _check_base_url(
                self.adapter.default_base_url if base_url is None else base_url
            )
            limits = None if rate_limit is UNSET or rate_limit is None else _limits(rate_limit)
        except Exception as e:
            # A token passed where another argument goes (the adapter's name,
            # base_url, rate_limit...) must not come back in the error that
            # refuses it.  (A token of a few characters is left: masking "test"
            # would garble "api.test.internal", and no credential is that short.)
            if len(token) >= 8:
                _unquote(e, token)
            raise
        if isinstance(user_agent, str) and len(token) >= 8 and token in user_agent:
            raise ValueError(
                "user_agent must not contain the token: it is sent with every request"
            )
        self.user_agent = user_agent or f"customer-patch/{__version__}"
        # Built once: every request of this client carries the same headers.
        self._credentials = _Credentials(
            *self.adapter.headers(token, {"User-Agent": self.user_agent}), token
        )
        self.retry = retry or NO_RETRY
        if rate_limit is UNSET:
            self._pacer = Pacer(self.adapter.rate_limits)
        elif limits is None:
            # No declared limit, not "ignore the provider": a 429 still engages
            # the adaptive pace, or a run would fail record after record.
            self._pacer = Pacer((), start_slow=False)
        else:
            self._pacer = Pacer(limits)
        self._closed = False
        self.check_custom_fields = check_custom_fields
        self._definitions: list[CustomFieldDefinition] | None = None
        self._definitions_by_key: dict[CustomFieldKey, list[int]] = {}
        self._definitions_lock = asyncio.Lock()
        self._definitions_refused: CustomerPatchError | None = None
        # Reads of the definitions ended, and the last that failed (by that count).
        self._definitions_reads = 0
        self._definitions_failed: tuple[int, CustomerPatchError] | None = None
        self._timeout = timeout
        # The built-in transport ends each attempt within `timeout` itself, and
        # closing its session ends them all.  A transport or a session of the
        # caller's does neither for us: a timer of the client's bounds each of
        # their attempts, and aclose() ends those timers.
        self._attempt_bound = math.inf if transport or session else timeout
        self._timers: set[asyncio.Timeout] = set()
        self._transport: Transport = transport or AiohttpTransport(
            provider=self.adapter.provider,
            timeout=timeout,
            session=session,
            max_connections=DEFAULT_MAX_CONNECTIONS
            if max_connections is None
            else max_connections,
        )

    def mask(self, text: str) -> str:
        """``text`` with every echo of this client's token masked, as errors have it:
        for printing or storing what a provider answered (a customer's data too
        may quote the token back)."""
        return self._credentials.mask(text)

    @property
    def pace(self) -> float | None:
        """Requests a second the client sends on one route now, at most (``None``:
        unpaced): the slowest of its buckets, less the headroom kept for jitter."""
        return self._pacer.rate

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

        A closed client sends nothing more: using it raises :class:`RuntimeError`,
        and a request waiting its turn, to retry, or for a connection ends
        (not sent: :class:`~customer_patch.NotAttemptedError`).  An attempt
        under way ends too (:class:`~customer_patch.TransportError`: it may
        have landed), through a caller's ``transport`` or ``session`` as well.
        """
        self._closed = True
        self._pacer.close()  # a request waiting its turn, or to retry, ends now
        for timer in self._timers:  # an attempt a caller's transport or session holds
            if not timer.expired():  # one expiring may not be rescheduled
                timer.reschedule(-math.inf)
        await self._transport.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new Client to send more")

    def prepare(self, customer_id: CustomerId, patch: CustomerPatch) -> Request:
        """Validate and build the request for one update, without sending it.

        Raises :class:`~customer_patch.UnsupportedFieldError` or
        :class:`~customer_patch.ValidationError`; useful for dry runs.  (Custom
        fields are checked against the provider's definitions when sent.)
        """
        self._check_open()
        # Validation runs first, in frames that hold no credential: an error
        # tracker recording a ValidationError's locals finds no token.
        path, body = self.adapter.prepare_update(customer_id, patch)
        return self._request(self.adapter.method, path, self.adapter.update_route, body)

    def _request(self, method: str, path: str, route: str, body: bytes = b"") -> Request:
        return Request(
            method=method,
            url=self.base_url + path,
            headers=self._credentials.headers,
            body=body,
            secret_headers=self._credentials.secret_names,
            route=route,
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

    # -- reading ------------------------------------------------------------------------

    async def get(self, customer_id: CustomerId) -> Customer:
        """The customer as the provider has it now.

        Raises :class:`~customer_patch.UnsupportedOperationError` (before any
        request) if the provider documents no way to read one, and the same
        typed errors as :meth:`update` (a missing customer is
        :class:`~customer_patch.NotFoundError`).
        """
        self._check_open()
        customer, error, _ = await self._get(customer_id)
        if error is not None:
            raise error
        assert customer is not None
        return customer

    async def iter_customers(self, **filters: Any) -> AsyncGenerator[Customer, None]:
        """Every customer the provider lists for ``filters``, page by page, lazily.

        ``filters`` are the provider's documented list filters
        (:attr:`Adapter.list_filters`; a list value for those that take many);
        one it does not document is refused with
        :class:`~customer_patch.ValidationError`, and a provider with no
        documented list raises :class:`~customer_patch.UnsupportedOperationError`,
        both before any request.  :attr:`Adapter.list_defaults` apply unless
        ``filters`` name them (e.g. an ordering that updates do
        not reorder).  One page is in memory at a time; a page of more than
        :attr:`Adapter.page_size` items is refused with
        :class:`~customer_patch.ResponseFormatError` before its items are read.  A customer
        may appear twice, or be missed, if customers are added or removed
        while the pages are read (the list is paged by offset); a list that
        answers the next offset with the same page again raises
        :class:`~customer_patch.ResponseFormatError` rather than never ending.
        A count lower than the customers already shown is wrong, not the end:
        the list is read on until a page shorter than asked, keeping the ids
        (not the customers) it shows from then on, and raises
        :class:`~customer_patch.ResponseFormatError` if it shows one of them
        again.  An empty page from a list that counts more than it has shown is
        read once more (an item deleted between the list's count and its page
        makes one), then raises :class:`~customer_patch.ResponseFormatError`,
        rather than end short without a word.
        """
        self._check_open()
        filters = {**self.adapter.list_defaults, **filters}
        self.adapter.prepare_list(filters, offset=0)  # refuse bad filters before any request
        pages = _Pages(asked=self.adapter.page_size, provider=self.provider)
        while True:
            customers, count, _ = await self._page(filters, offset=pages.shown)
            more = pages.more([c.id for c in customers], count)
            for customer in customers:
                yield customer
            if not more:
                return

    async def custom_field_definitions(
        self, *, refresh: bool = False
    ) -> list[CustomFieldDefinition]:
        """Every custom field the provider defines for customers, from every page.

        Read once per client and kept (updates check custom fields against
        them); ``refresh=True`` reads them again.  A final refusal (a 401 or
        403, a list of the wrong shape or of more than 100 pages) is kept too, and raised
        again without a request until ``refresh=True``; one worth a retry (a
        5xx, a lost connection) is not.  Raises
        :class:`~customer_patch.UnsupportedOperationError` if the provider
        documents no way to read them.
        """
        self._check_open()
        check_flag("refresh", refresh)
        return list(await self._known_definitions(refresh=refresh))

    async def _known_definitions(self, *, refresh: bool = False) -> list[CustomFieldDefinition]:
        """The definitions as read once (see :meth:`custom_field_definitions`): not a copy."""
        ended_before = self._definitions_reads
        async with self._definitions_lock:
            if refresh:
                self._definitions_refused = None
            if self._definitions_refused is not None:
                # A copy: raising one exception again and again grows its traceback.
                raise copy.copy(self._definitions_refused)
            failed = self._definitions_failed
            waited = failed is not None and failed[0] > ended_before
            if waited and self._definitions is None and not refresh:
                # A read this call waited for failed (a 5xx, a lost connection): its
                # answer is this call's too, rather than every record waiting read
                # them again, one after another.  A call that comes later asks again;
                # one that asks for a refresh, or finds them read, has its own answer.
                assert failed is not None
                raise copy.copy(failed[1])
            if self._definitions is None or refresh:
                try:
                    self._definitions = await self._read_definitions()
                except CustomerPatchError as e:
                    if not is_retryable(e):  # every update naming a custom field would ask
                        self._definitions_refused = e
                    self._definitions_failed = (self._definitions_reads + 1, e)
                    raise
                finally:
                    self._definitions_reads += 1
                # Where each field a key can name (by a name or an id) sits in the
                # list: every copy, since a list paged by offset can show one twice
                # (renamed, or made inactive, in between) and the adapter's check
                # decides among the copies.
                self._definitions_by_key = {}
                for place, d in enumerate(self._definitions):
                    for key in (d.name, d.id):
                        self._definitions_by_key.setdefault(key, []).append(place)
            return self._definitions

    async def _read_definitions(self) -> list[CustomFieldDefinition]:
        definitions: list[CustomFieldDefinition] = []
        pages = _Pages(asked=self.adapter.page_size, provider=self.provider)
        deadline = self._read_deadline()
        parse = _measured(self.adapter.parse_definitions)
        kept = _Kept("custom field definitions", provider=self.provider)
        while True:
            path, route = self.adapter.prepare_definitions(offset=pages.shown)
            request = self._request("GET", path, route)
            value, error, _ = await self._call(
                request, parse, label="custom fields", deadline=deadline
            )
            if error is not None:
                raise error
            assert value is not None
            (page, count), size = value
            more = pages.more([d.id for d in page], count)
            definitions += page
            kept.add(size)
            if not more:
                return definitions
            if pages.read == MAX_DEFINITION_PAGES:
                # A list that never ends (a count that keeps growing, one item a
                # page) must not hold every update: requests, not items, are
                # what it costs (a second each, at a provider's pace).
                raise ResponseFormatError(
                    f"custom field definitions of more than {MAX_DEFINITION_PAGES} pages: "
                    "not read further",
                    provider=self.provider,
                    status=200,
                )

    async def _page(
        self,
        filters: Mapping[str, Any],
        *,
        offset: int,
        limit: int | None = None,
        deadline: float = math.inf,
    ) -> tuple[list[Customer], int, int]:
        """A page of the list: its customers, the count it says, and its size in bytes."""
        path, route = self.adapter.prepare_list(filters, offset=offset, limit=limit)
        value, error, _ = await self._call(
            self._request("GET", path, route),
            _measured(self.adapter.parse_page),
            label="customer list",
            deadline=deadline,
        )
        if error is not None:
            raise error
        assert value is not None
        (customers, count), size = value
        return customers, count, size

    async def _get(
        self, customer_id: CustomerId
    ) -> tuple[Customer | None, CustomerPatchError | None, int]:
        try:
            path, route = self.adapter.prepare_get(customer_id)
        except CustomerPatchError as e:
            return None, e, 0
        return await self._call(
            self._request("GET", path, route),
            functools.partial(self.adapter.parse_response, customer_id=customer_id),
            label="%s customer %.80r",
            label_args=(self.adapter.provider, customer_id),
        )

    async def _read_current(
        self, ids: Sequence[Any], *, concurrency: int
    ) -> dict[Any, Customer | Exception]:
        """The customers of ``ids`` as they are now, by :func:`read_key`; for a
        customer that cannot be read, why.  With the provider's many-ids filter,
        one request per page of ids; otherwise one request each, ``concurrency``
        at a time."""
        current: dict[Any, Customer | Exception] = {}
        readable: dict[Any, Any] = {}
        for customer_id in ids:
            key = read_key(customer_id)
            if key is None or key in current or key in readable:
                continue
            try:
                self.adapter.prepare_id(customer_id)  # the id's own problems, per record
            except CustomerPatchError as e:
                current[key] = e
            else:
                readable[key] = customer_id
        many = self.adapter.ids_filter
        if many is None or self.adapter.list_path() is None:
            await self._read_each(readable, current, concurrency)
            return current
        unsettled: dict[Any, Any] = {}  # what the list could not say, and why not
        wanted = list(readable.values())
        for start in range(0, len(wanted), self.adapter.page_size):
            part = wanted[start : start + self.adapter.page_size]
            try:
                found, doubt = await self._list_ids(many, part)
            except CustomerPatchError as e:
                current.update((read_key(c), e) for c in part)
                if _refuses_the_request(e):
                    # The request was refused (a 400): perhaps for one id of the
                    # page's hundred, which must not fail the other ninety-nine.
                    unsettled.update((read_key(c), c) for c in part)
                # Otherwise, a refusal of the key, a lost connection: a read of
                # each would fare no better.
                continue
            for customer_id in part:
                key = read_key(customer_id)
                shown = found.get(key, doubt)
                if isinstance(shown, Customer):
                    current[key] = shown
                elif shown is None:
                    current[key] = NotFoundError(
                        f"customer {customer_id!r} is not in the list of customers",
                        provider=self.provider,
                        status=404,
                        sent=False,
                    )
                else:
                    current[key] = shown
                    unsettled[key] = customer_id
        if unsettled and self.adapter.get_path("{id}") is not None:
            # The list's answer about these is not to be trusted (or not readable
            # at all: one malformed customer fails its page), but each exists or
            # not, and can be read on its own: that one customer's answer must
            # not fail (on every rerun) the hundred records of its page.
            log.warning(
                "%s: the customer list could not say what %d customers are; "
                "reading them one at a time",
                self.provider,
                len(unsettled),
            )
            await self._read_each(unsettled, current, concurrency)
        return current

    async def _read_each(
        self,
        ids: Mapping[Any, CustomerId],
        current: dict[Any, Customer | Exception],
        concurrency: int,
    ) -> None:
        """Read each of ``ids`` (by key) on its own, into ``current``, ``concurrency``
        at a time (the run's: no more requests in flight than it allows)."""
        slots = asyncio.Semaphore(concurrency)

        async def read(customer_id: CustomerId) -> Customer | CustomerPatchError:
            async with slots:
                customer, error, _ = await self._get(customer_id)
            return customer if error is None else error  # type: ignore[return-value]

        results = await _together(read(c) for c in ids.values())
        current.update(zip(ids, results, strict=True))

    async def _list_ids(
        self, many: str, part: list[CustomerId]
    ) -> tuple[dict[Any, Customer | Exception], ResponseFormatError | None]:
        """The customers of ``part`` the list (filtered by ``many`` ids) shows, by
        :func:`read_key` (or why one shown cannot be taken), and, if the list
        cannot be trusted about those it did not show, why not.  Raises the
        error that ends the read otherwise."""
        asked = {read_key(c) for c in part}
        found: dict[Any, Customer | Exception] = {}
        unreliable = False  # others, a page again, a customer twice, fewer than counted
        # In a stable order: a provider may answer fewer than asked (a page
        # size of its own), and the pages after the first must not move.
        filters = {**self.adapter.list_defaults, many: part}
        offset, last_ids = 0, None
        deadline = self._read_deadline()
        kept = _Kept("the list's answers for these customers", provider=self.provider)
        while True:
            try:
                customers, count, size = await self._page(
                    filters, offset=offset, limit=len(part), deadline=deadline
                )
            except ResponseFormatError as e:  # a malformed customer fails its page
                return found, e
            kept.add(size)  # what the batch keeps until its records run
            ids = [c.id for c in customers]
            if customers and ids == last_ids:  # it ignored the offset
                unreliable = True
                break
            last_ids = ids
            for c in customers:
                key = read_key(c.id)
                unreliable = unreliable or key not in asked
                seen = found.setdefault(key, c)
                # A list showing one customer twice pages unreliably: it may
                # have skipped another (a missing one is then not "not found").
                unreliable = unreliable or seen is not c
                if seen is not c and (not isinstance(seen, Customer) or seen.raw != c.raw):
                    # Two rows for one customer: comparing with either could
                    # skip a record that must be sent.
                    found[key] = ResponseFormatError(
                        f"the list shows customer {quoted(c.id)} twice, differently",
                        provider=self.provider,
                        status=200,
                    )
            offset += len(customers)
            # No more than asked for can match: at most one page an id.
            if offset >= len(part) or not _reads_on(offset, count, len(customers)):
                # Ended by an empty page while it counts more than it showed:
                # which of those it did not show exist is not known.
                unreliable = unreliable or (not customers and count > offset)
                break
        if not unreliable:
            return found, None
        # It ignored the filter or the offset, or paged unreliably: who is
        # missing is not known.
        return found, ResponseFormatError(
            "the list did not page as asked (other ids, a page again, a customer "
            "twice, or fewer than it counts): whether this customer exists is not known",
            provider=self.provider,
            status=200,
        )

    # -- bulk ---------------------------------------------------------------------------

    def iter_updates(
        self,
        updates: Updates,
        *,
        concurrency: int = 8,
        progress: ProgressCallback | None = None,
        total: int | None = None,
        max_failures: int | None = None,
        max_consecutive_failures: int | None = None,
        skip_unchanged: bool = False,
        match_on: str | None = None,
        before_write: BeforeWrite | None = None,
    ) -> AsyncGenerator[UpdateResult, None]:
        """Apply many updates concurrently; yield each :class:`UpdateResult` as it finishes.

        ``updates`` is an iterable or async iterable of ``(customer_id, patch)``,
        consumed lazily: at most ``concurrency`` records are in flight, and at
        most as many finished ones wait for the caller to take them.  Updates
        to one customer are sent one after the other, in input order (a later
        one waits for the earlier one, retries included), so the provider ends
        with the last value given for each field.

        ``skip_unchanged=True`` reads each customer first and sends only
        :meth:`CustomerPatch.changes_from` what was read; a record with nothing
        to change is ``ok`` with ``changed=False`` and nothing is sent for it.
        Reads take as few requests as the provider allows: a page of up to
        :attr:`Adapter.page_size` customers per request where it can filter its
        list by many ids, else one request per record; the input is then taken
        a page at a time (memory: ``concurrency`` records plus one page).  A
        customer that does not exist is a :class:`~customer_patch.NotFoundError`.
        Customers a page cannot settle (one malformed customer fails its page;
        a list may ignore its filter or its offset) are read one at a time,
        with a warning logged, so only a customer that cannot be read itself
        has an error.
        A later record of a customer is compared with what the earlier one
        left (as the provider answered it), not with the first read; if that
        earlier write was sent and failed (it may have landed or not), the
        customer is read again first.

        ``match_on`` (one of :attr:`Adapter.match_keys`, e.g. ``"unique_id"``)
        says the input's ids are that key, not the provider's ids: each is
        looked up with the list's filter (one request a record, ``concurrency``
        at a time), and a key that matches no customer
        (:class:`~customer_patch.NotFoundError`) or more than one
        (:class:`~customer_patch.ValidationError`) is that record's error,
        never a guess.  What the lookup read serves ``skip_unchanged`` too.

        ``before_write(customer_id, before, changes)``, with ``skip_unchanged``
        or ``match_on``, is called just before each record's write is sent,
        with the customer as read: the place to record how to undo it (a
        write whose answer is lost to a crash may still have landed).  If it
        raises, that record's result is the exception and nothing is sent.

        Every record yields exactly one result.  A failure does not stop the
        others, except a 401/403, or ``max_failures`` failed records in all, or
        ``max_consecutive_failures`` in a row with the same error class and
        status: the records left are then reported with
        :class:`NotAttemptedError` (its ``cause`` says why) and nothing more is
        sent.  Leaving the loop early (``break``, an exception, cancellation)
        cancels the requests in flight; their outcome is unknown.
        """
        return self._run(
            updates,
            self._update,
            concurrency=concurrency,
            progress=progress,
            total=total,
            max_failures=max_failures,
            max_consecutive_failures=max_consecutive_failures,
            skip_unchanged=skip_unchanged,
            match_on=match_on,
            before_write=before_write,
        )

    def iter_plan(
        self,
        updates: Updates,
        *,
        concurrency: int = 8,
        progress: ProgressCallback | None = None,
        total: int | None = None,
        match_on: str | None = None,
    ) -> AsyncGenerator[UpdateResult, None]:
        """What :meth:`iter_updates` with ``skip_unchanged=True`` would do, writing nothing.

        Each customer is read as it would be; each result has ``before`` (as
        read), ``sent`` (what would be sent; nothing when ``changed`` is
        false) and ``customer`` (what the provider should show after).  An
        invalid record, or custom fields the provider would refuse, is an
        error, as it would be then.
        """
        return self._run(
            updates,
            self._check,
            concurrency=concurrency,
            progress=progress,
            total=total,
            skip_unchanged=True,
            match_on=match_on,
            plan=True,
        )

    def _run(
        self,
        updates: Updates,
        send: Callable[[Any, CustomerPatch], Awaitable[Any]],
        *,
        concurrency: int,
        progress: ProgressCallback | None,
        total: int | None,
        max_failures: int | None = None,
        max_consecutive_failures: int | None = None,
        skip_unchanged: bool,
        match_on: str | None,
        plan: bool = False,
        before_write: BeforeWrite | None = None,
    ) -> AsyncGenerator[UpdateResult, None]:
        self._check_open()
        check_flag("skip_unchanged", skip_unchanged)  # "no" is true: it would read
        if match_on is not None and not isinstance(match_on, str):
            raise ValueError(f"match_on must be a string or None, got {quoted(match_on)}")
        if before_write is not None and not skip_unchanged and match_on is None:
            # It is given the customer as read: with no read it would never be called.
            raise ValueError(
                "before_write needs skip_unchanged=True or match_on: it is given the "
                "customer as read, and nothing is read without them"
            )
        adapter = self.adapter
        if match_on is not None and match_on not in adapter.match_keys:
            keys = ", ".join(sorted(adapter.match_keys)) or "none"
            raise UnsupportedOperationError(
                f"find customers by {match_on!r} (it can by: {keys})", provider=self.provider
            )
        read: Callable[[list[Any]], Awaitable[Mapping[Any, Any]]] | None = None
        batch = concurrency
        if match_on is not None:
            read = functools.partial(self._match, match_on)
        elif skip_unchanged:
            read = functools.partial(self._read_current, concurrency=concurrency)
            if adapter.ids_filter is not None and adapter.list_path() is not None:
                batch = adapter.page_size
        return run_bulk(
            send,
            updates,
            concurrency=concurrency,
            progress=progress,
            total=total,
            max_failures=max_failures,
            max_consecutive_failures=max_consecutive_failures,
            read=read,
            read_batch=batch,
            compare=skip_unchanged,
            resolve=match_on is not None,
            plan=plan,
            before_write=before_write,
            complete=self._get_or_error if adapter.get_path("{id}") is not None else None,
            check=self._check,
            read_back=adapter.read_back,
            matched_by=match_on,
        )

    async def _get_or_error(self, customer_id: CustomerId) -> Customer | CustomerPatchError:
        customer, error, _ = await self._get(customer_id)
        return customer if error is None else error  # type: ignore[return-value]

    async def update_many(
        self,
        updates: Updates,
        *,
        concurrency: int = 8,
        progress: ProgressCallback | None = None,
        total: int | None = None,
        max_failures: int | None = None,
        max_consecutive_failures: int | None = None,
        skip_unchanged: bool = False,
        match_on: str | None = None,
        before_write: BeforeWrite | None = None,
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
            skip_unchanged=skip_unchanged,
            match_on=match_on,
            before_write=before_write,
        )
        async with contextlib.aclosing(results):
            async for result in results:
                (succeeded if result.ok else failed).append(result)
        succeeded.sort(key=lambda r: r.index)
        failed.sort(key=lambda r: r.index)
        return BulkReport(succeeded=succeeded, failed=failed)

    # -- one request, with retries -----------------------------------------------------

    def _update(
        self, customer_id: CustomerId, patch: CustomerPatch
    ) -> Awaitable[tuple[Customer | None, CustomerPatchError | None, int]]:
        """One update with retries, to await, as ``(customer, error, attempts)``.

        Never raises a :class:`CustomerPatchError`, so a bulk run can report it.
        Checked here and then handed the retry loop itself: no frame of its own
        between a record and every resumption of its request.
        """
        if self._closed:  # closed while a bulk run was going: send nothing more
            return _done((None, NotAttemptedError(RuntimeError(f"{self!r} was closed")), 0))
        try:
            request = self.prepare(customer_id, patch)
        except CustomerPatchError as e:
            return _done((None, e, 0))
        if self.check_custom_fields and patch.custom_fields:
            return self._update_checked(customer_id, patch, request)
        return self._send_update(customer_id, request)

    async def _update_checked(
        self, customer_id: CustomerId, patch: CustomerPatch, request: Request
    ) -> tuple[Customer | None, CustomerPatchError | None, int]:
        refused = await self._check_custom_fields(patch)
        if refused is not None:
            return None, refused, 0
        return await self._send_update(customer_id, request)

    def _send_update(
        self, customer_id: CustomerId, request: Request
    ) -> Coroutine[Any, Any, tuple[Customer | None, CustomerPatchError | None, int]]:
        return self._call(
            request,
            functools.partial(self.adapter.parse_response, customer_id=customer_id),
            label="%s customer %.80r",
            label_args=(self.adapter.provider, customer_id),
        )

    async def _check(
        self, customer_id: CustomerId | None, patch: CustomerPatch
    ) -> tuple[None, CustomerPatchError | None, int]:
        """What :meth:`_update` would refuse before sending, as ``(None, error, 0)``;
        with ``customer_id`` ``None`` (no customer was found), the patch alone."""
        if self._closed:  # as _update: prepare() would raise RuntimeError out of the run
            return None, NotAttemptedError(RuntimeError(f"{self!r} was closed")), 0
        try:
            if customer_id is None:
                self.adapter.prepare_body(patch)
            else:
                self.prepare(customer_id, patch)
        except CustomerPatchError as e:
            return None, e, 0
        if self.check_custom_fields and patch.custom_fields:
            return None, await self._check_custom_fields(patch), 0
        return None, None, 0

    async def _match(self, field: str, keys: Sequence[Any]) -> dict[Any, Customer | Exception]:
        """The one customer each key names, by :func:`read_key`; else why not."""

        async def one(key: Any) -> Customer | Exception:
            if not isinstance(key, str) or not key:
                return ValidationError(
                    [Problem(field, f"must be a non-empty string to match on, not {key!r}")],
                    provider=self.provider,
                )
            filters = {**self.adapter.list_defaults, field: key}
            for _ in range(2):
                try:
                    customers, count, _ = await self._page(filters, offset=0, limit=2)
                except CustomerPatchError as e:
                    return e
                if customers or count <= 0:
                    break
                # Counted and not shown: read once more (see _Pages.more) before
                # taking the list for one that contradicts itself.
            else:
                return ResponseFormatError(
                    f"the list counts {count} customers with {field} {key!r} but shows "
                    "none, twice",
                    provider=self.provider,
                    status=200,
                )
            if not customers:
                return NotFoundError(
                    f"no customer has {field} {key!r}",
                    provider=self.provider,
                    status=404,
                    sent=False,
                )
            if len(customers) > 1 or count > 1:
                ids = ", ".join(repr(c.id) for c in customers)
                return ValidationError(
                    [Problem(field, f"{key!r} matches {count} customers ({ids}...): not a guess")],
                    provider=self.provider,
                )
            [found] = customers
            value = getattr(found, field, None)
            if not (isinstance(value, str) and value.casefold() == key.casefold()):
                return ResponseFormatError(
                    f"asked for {field} {key!r}, the list answered customer {quoted(found.id)} "
                    f"whose {field} is {quoted(value)}",
                    provider=self.provider,
                    status=200,
                )
            # Its id is one the provider gives: the list's parser checks every id.
            return found

        wanted = {read_key(k): k for k in keys if read_key(k) is not None}
        found = await _together(one(k) for k in wanted.values())
        # Some of these errors quote the list's own values (a unique_id, an id),
        # which a provider can fill with the key it was sent: mask them too.
        redact = self._credentials.redact
        found = [redact(f) if isinstance(f, CustomerPatchError) else f for f in found]
        return dict(zip(wanted, found, strict=True))

    async def _check_custom_fields(self, patch: CustomerPatch) -> CustomerPatchError | None:
        """Why the patch's custom fields would be refused, by the provider's
        definitions (read once per client), or ``None``."""
        if self.adapter.custom_fields_path() is None:
            return None
        try:
            await self._known_definitions()
        except CustomerPatchError as e:
            return e
        assert not isinstance(patch.custom_fields, _UnsetType)
        # Every copy, in the list's order, of every field a key names by any copy:
        # the check decides these keys by those alone, as it would with the whole
        # list, and a record's check does not grow with the provider's thousands.
        by_key, definitions = self._definitions_by_key, self._definitions
        assert definitions is not None
        ids = {definitions[p].id for key in patch.custom_fields for p in by_key.get(key, ())}
        places = sorted({p for i in ids for p in by_key.get(i, ())})
        named = [definitions[p] for p in places]
        unknown, problems = self.adapter.check_custom_fields(patch.custom_fields, named)
        if unknown:
            listed = ", ".join(map(repr, unknown))
            return UnknownCustomFieldError(
                f"no active customer custom field is named {listed}; nothing was sent",
                names=unknown,
                provider=self.provider,
                status=422,
                sent=False,
            )
        if problems:
            # The problems quote the provider's definitions (a field's options).
            return self._credentials.redact(ValidationError(problems, provider=self.provider))
        return None

    def _call(
        self,
        request: Request,
        parse: Callable[..., T],
        *,
        label: str,
        label_args: tuple[Any, ...] = (),
        deadline: float = math.inf,
    ) -> Coroutine[Any, Any, tuple[T | None, CustomerPatchError | None, int]]:
        """Send ``request`` with retries and pacing; ``parse(response, request=...)``
        reads the answer.  Never raises a :class:`CustomerPatchError`.
        ``label % label_args`` names it in log lines.  ``deadline`` (a time of
        :func:`time.monotonic`) ends its budget if sooner than its own.

        Returns the retry loop itself, to await: no frame of its own between
        the caller and every resumption of the request."""
        return send_with_retries(
            self._send,
            request,
            parse,
            policy=self.retry,
            on_rate_limited=self._pacer.on_rate_limited,
            sleep=self._pacer.sleep,
            stopped=self._is_closed,
            label=label,
            label_args=label_args,
            deadline=deadline,
        )

    def _read_deadline(self) -> float:
        """When a read of many pages must end: one budget for all of them, or a
        list that drips one item a page holds its caller for a budget a page."""
        timeout = self.retry.timeout
        return math.inf if timeout is None else time.monotonic() + timeout

    def _is_closed(self) -> bool:
        return self._closed

    async def _send(self, request: Request, parse: Callable[..., T], deadline: float) -> T:
        # The pacer's check is synchronous when nothing holds the client: no
        # coroutine per request for the common, unpaced case.
        paced = self._pacer.free(deadline) or await self._pacer.acquire(
            deadline, route=request.route
        )
        if self._closed:
            # Closed while a run was going (its reads, a retry), or while this
            # request waited its turn (closing ends that wait): nothing more goes out.
            raise HeldPastDeadline(NotAttemptedError(RuntimeError(f"{self!r} was closed")))
        if not paced:
            # Held by the provider's rate limit (a shared pause, a full bucket)
            # past this update's time budget: end it now, nothing sent.
            raise HeldPastDeadline(
                RateLimitedError(
                    "the client is held by the provider's rate limit past this "
                    "update's time budget (RetryPolicy.timeout); nothing was sent",
                    provider=self.provider,
                    status=429,
                    sent=False,
                )
            )
        budget = deadline - time.monotonic()
        if budget <= 0:  # a read of many pages spent it on the pages before
            raise HeldPastDeadline(
                TransportError(
                    "the time budget (RetryPolicy.timeout) ran out before this request "
                    "(a read of many pages has one for all); nothing was sent",
                    provider=self.provider,
                )
            )
        debug = log.isEnabledFor(logging.DEBUG)
        started = time.perf_counter() if debug else 0.0
        bound = min(budget, self._timeout)
        try:
            # A timer of ours is needed only when the update's budget ends before
            # `timeout`, or for a transport or session of the caller's (see
            # __init__: the built-in one bounds each attempt by `timeout` itself).
            # It costs a few microseconds.
            if bound < self._attempt_bound:
                async with asyncio.timeout(bound) as timer:
                    self._timers.add(timer)
                    try:
                        response = await self._transport.send(request)
                    finally:
                        self._timers.discard(timer)
            else:
                response = await self._transport.send(request)
        except TimeoutError:
            if self._closed:
                why = "the client was closed before the answer came (it may have landed)"
            elif budget < self._timeout:
                why = "no complete answer within the update's time budget (RetryPolicy.timeout)"
            else:
                why = f"no complete answer within {self._timeout}s"
            raise TransportError(why, provider=self.provider) from None
        except NotAttemptedError as e:
            # Closed before it went out: no attempt, and an earlier one's error stands.
            raise HeldPastDeadline(e) from None
        except CustomerPatchError as e:  # its text may quote the provider's bytes
            raise self._credentials.redact(e) from None
        if debug:
            log.debug(
                "%s %s -> %d in %.1f ms",
                request.method,
                request.url,
                response.status,
                (time.perf_counter() - started) * 1000,
            )
        try:
            value = parse(response, request=request)
        except CustomerPatchError as e:
            del response  # this frame goes with the error: not the answer, unmasked
            raise self._credentials.redact(e) from e.__cause__
        self._pacer.on_success()
        return value
