"""The client: validate, build, send, read back, for one provider."""

from __future__ import annotations

import ipaddress
import logging
import time
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from customer_patch._adapter import Adapter, CustomerId, Request
from customer_patch._model import Customer, CustomerPatch
from customer_patch._registry import AdapterRegistry, default_registry
from customer_patch._transport import AiohttpTransport, Transport
from customer_patch._version import __version__

log = logging.getLogger("customer_patch")


class _Secret:
    """A credential that never shows itself in a repr or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"


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
    if parts.query or parts.fragment:
        raise ValueError(f"base_url must not have a query or fragment, got {base_url!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            f"refusing plain http to {parts.hostname}: the token would travel unencrypted; "
            "use https (plain http is allowed only to loopback addresses)"
        )
    return base_url.rstrip("/")


class Client:
    """Applies partial updates to customers at one provider.

    ``adapter`` is a registered name (see :func:`available_adapters`) or an
    :class:`Adapter` instance.  Use it as an async context
    manager, or call :meth:`aclose` when done.  A ``session`` passed in is
    used for every request and never closed by the client.
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
        if any(c in token for c in "\r\n\0"):
            # Never echo the token: say what is wrong with it, not what it is.
            raise ValueError("token must not contain line breaks or NUL characters")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self._token = _Secret(token)
        self.base_url = _check_base_url(base_url or self.adapter.default_base_url)
        self.user_agent = user_agent or f"customer-patch/{__version__}"
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
        """Close the HTTP session, unless it was passed in by the caller."""
        await self._transport.aclose()

    def prepare(self, customer_id: CustomerId, patch: CustomerPatch) -> Request:
        """Validate and build the request for one update, without sending it.

        Raises :class:`~customer_patch.UnsupportedFieldError` or
        :class:`~customer_patch.ValidationError`; useful for dry runs.
        """
        return self.adapter.build_request(
            customer_id,
            patch,
            base_url=self.base_url,
            token=self._token.reveal(),
            headers={"User-Agent": self.user_agent},
        )

    async def update(self, customer_id: CustomerId, patch: CustomerPatch) -> Customer:
        """Apply ``patch`` to one customer and return the customer as the provider has it now.

        Nothing is sent for an invalid patch.  Provider errors are raised as
        :class:`~customer_patch.ProviderError` subclasses.
        """
        request = self.prepare(customer_id, patch)
        return await self._send(request)

    async def _send(self, request: Request, **log_extra: Any) -> Customer:
        started = time.perf_counter()
        response = await self._transport.send(request)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %d in %.1f ms",
                request.method,
                request.url,
                response.status,
                (time.perf_counter() - started) * 1000,
            )
        return self.adapter.parse_response(response, request=request)
