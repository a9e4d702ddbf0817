"""The one place that does network I/O: send a :class:`Request`, get a :class:`Response`.

Everything above this seam works on plain values; tests can replace the
transport with a fake (anything with ``send`` and ``aclose``).
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Mapping
from typing import Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from customer_patch._errors import (
    NotAttemptedError,
    ResponseFormatError,
    ResponseTooLargeError,
    TransportError,
    quoted,
)
from customer_patch._http import Request, Response

DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024


def _described(error: aiohttp.ClientError) -> str:
    """What went wrong, for a :class:`TransportError`: aiohttp's own words where
    they are the client's (an address, a system error), and only the names of
    the errors where they quote what the server sent.  A parser's message
    quotes the line it refused, and a disconnection the head it had read: a key
    echoed there split by a NUL or a space is in no form a mask can find."""
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return f"{type(error).__name__}: the server closed the connection before answering whole"
    if isinstance(error, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        found, seen = error.__cause__, 0  # the parser's own error, last of the chain
        while found is not None and found.__cause__ is not None and seen < 10:
            found, seen = found.__cause__, seen + 1
        why = f" ({type(found).__name__})" if found is not None else ""
        if isinstance(error, aiohttp.ClientPayloadError):
            return f"{type(error).__name__}: the body did not come whole{why}"
        return f"{type(error).__name__}: the answer is not valid HTTP{why}"
    return f"{type(error).__name__}: {error}"


class Transport(Protocol):
    """What the client needs from the network."""

    async def send(self, request: Request) -> Response:
        """Send ``request``; raise :class:`TransportError` if no complete answer comes,
        or :class:`NotAttemptedError` if the transport was closed before it went out."""

    async def aclose(self) -> None:
        """Release what the transport holds."""


def _with_encoding(headers: Mapping[str, str]) -> CIMultiDict[str]:
    # One value per name, the last, whatever its case ("accept" after "Accept"),
    # as aiohttp sends a request's own headers; a session's it would send twice.
    folded: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        folded[name] = value
    # Only what _read can decode within the size cap (no brotli).
    folded["Accept-Encoding"] = "gzip, deflate"
    return folded


class _Inflate:
    """A gzip or deflate body, decoded as it comes, up to one byte past ``cap``.

    gzip: its members one after another, as a file may hold them (bytes after
    the last that do not start another member are ignored, as gzip does);
    deflate: zlib-wrapped, as HTTP says, or raw, as some servers send it.
    """

    def __init__(self, encoding: str, cap: int) -> None:
        self._gzip = encoding != "deflate"
        self._cap = cap
        self._decoder: zlib._Decompress | None = None
        self._waiting = b""  # bytes that cannot tell yet what follows
        self._ignoring = False  # past the end: trailing bytes, not a member
        self.out = bytearray()

    def feed(self, data: bytes) -> None:
        """Decode ``data`` (raises :class:`zlib.error` for a corrupt body)."""
        data = self._waiting + data
        self._waiting = b""
        while data and not self._ignoring and len(self.out) <= self._cap:
            if self._decoder is None or self._decoder.eof:
                if len(data) < 2:
                    self._waiting = data  # the first two bytes say what comes
                    return
                self._decoder = self._next(data)
                if self._decoder is None:
                    self._ignoring = True
                    return
            # max_length bounds what one call may inflate: a bomb is stopped
            # one byte past the cap, never inflated whole.
            self.out += self._decoder.decompress(data, self._cap - len(self.out) + 1)
            data = self._decoder.unconsumed_tail or (
                self._decoder.unused_data if self._decoder.eof else b""
            )

    def _next(self, data: bytes) -> zlib._Decompress | None:
        """The decoder for what starts with ``data``: the body's first, or for
        gzip another member (``None`` if it is not one)."""
        gzip = data.startswith(b"\x1f\x8b")
        if self._decoder is not None:  # past the end of one stream
            return zlib.decompressobj(16 + zlib.MAX_WBITS) if self._gzip and gzip else None
        wrapped = data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
        if gzip or wrapped or self._gzip:
            return zlib.decompressobj(32 + zlib.MAX_WBITS)  # gzip or zlib, by its header
        return zlib.decompressobj(-zlib.MAX_WBITS)  # deflate with no header

    def ended(self) -> bool:
        """Whether the body ended where a stream does, not cut short (a byte left
        after it, too few to start another member, is trailing, as more are)."""
        return self._ignoring or (self._decoder is not None and self._decoder.eof)


class AiohttpTransport:
    """Sends requests with one reused :class:`aiohttp.ClientSession`.

    A session passed in belongs to the caller and is never closed here.
    Redirects are not followed (credentials must not travel to another host),
    and a body larger than ``max_response_bytes`` is refused, not read.  The
    session opened here carries the first request's headers, for every request
    with the same; a request with other headers (a transport shared by two
    clients) goes through a second session on the same connections, with its
    own headers only.
    """

    def __init__(
        self,
        *,
        provider: str,
        timeout: float,
        session: aiohttp.ClientSession | None = None,
        max_connections: int = 100,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._provider = provider
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None
        self._max_connections = max_connections
        self._max_bytes = max_response_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._closed = False
        # The headers of the first request, which the session opened here sends
        # with every request (see send), and a session sharing its connections
        # for requests with other headers, opened if one comes.
        self._fixed: dict[str, str] | None = None
        self._bare: aiohttp.ClientSession | None = None

    def _open(self, request: Request) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this transport is closed; create a new Client to send more")
        # Created on first use, inside the running loop, as aiohttp requires.
        if self._session is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.get_ident()
            self._fixed = dict(request.headers)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers=_with_encoding(self._fixed),
            )
        # Called from a running loop: it is this session's exactly when that loop
        # runs, in this thread (one loop runs per thread).  Cheaper than asking
        # asyncio for the running loop, which makes a system call (getpid) each time.
        elif self._loop is not None and not (
            self._thread == threading.get_ident() and self._loop.is_running()
        ):
            raise RuntimeError(
                "this Client's connections belong to another event loop; "
                "create one Client per event loop (per asyncio.run)"
            )
        return self._session

    async def send(self, request: Request) -> Response:
        """Send ``request``; raise :class:`TransportError` if no complete answer comes,
        or :class:`NotAttemptedError` if the session closes before it went out."""
        session = self._open(request)
        # A client sends the same headers with every request: the session opened
        # here has them (the first request's) and sends them, rather than aiohttp
        # converting and merging each of them per request (about 2% of the
        # instructions of a request).  Any other headers go alone, nothing of the
        # first request's with them.  (No local holds them: an error tracker
        # records the locals of every frame an error passes through.)
        fixed = request.headers == self._fixed
        if not fixed and self._fixed is not None:
            session = self._bare_session()
        try:
            async with session.request(
                request.method,
                # encoded=True: the adapter already encoded the path; letting
                # yarl re-normalise it could turn %2E%2E back into "..".
                URL(request.url, encoded=True),
                data=request.body,
                headers=None if fixed else _with_encoding(request.headers),
                # Decoded here, not by aiohttp, so the cap holds for the
                # inflated bytes: 1 MB of gzip can be 1 GiB of JSON.
                auto_decompress=False,
                allow_redirects=False,
                # A caller's session may raise on 4xx/5xx; statuses are the adapter's to read.
                raise_for_status=False,
                timeout=self._timeout,
            ) as resp:
                length = resp.content_length
                if (
                    length is not None
                    and length <= self._max_bytes
                    and "Content-Encoding" not in resp.headers
                ):
                    # The common answer: plain, of a known length within the cap.
                    # aiohttp reads exactly that many bytes, in one call.
                    body = await resp.read()
                else:
                    body = await self._read(resp)
                return Response(status=resp.status, headers=resp.headers, body=body)
        # The error is raised after the except clause, not in it: aiohttp's own
        # error would stay attached as its __context__ (even "from None" keeps
        # it), with the request's headers, key included, in its request_info.
        except TimeoutError:
            failure = TransportError(
                f"no complete answer within {self._timeout.total}s", provider=self._provider
            )
        except aiohttp.ClientError as e:
            failure = TransportError(_described(e), provider=self._provider)
        except asyncio.CancelledError:
            # A session that closes cancels the requests waiting for one of its
            # connections: not this task's cancellation, which asyncio code would
            # take it for (a TaskGroup would end), but this request's failure.
            # Only the waits for a connection (or for a DNS answer) are cancelled:
            # a request on a connection has that connection closed instead.
            task = asyncio.current_task()
            if session.closed and task is not None and not task.cancelling():
                raise NotAttemptedError(
                    RuntimeError(
                        "the connection pool was closed before this request had a connection"
                    )
                ) from None
            raise
        raise failure

    def _bare_session(self) -> aiohttp.ClientSession:
        if self._bare is None:
            assert self._session is not None
            self._bare = aiohttp.ClientSession(
                connector=self._session.connector,
                connector_owner=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._bare

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        length = resp.content_length
        if length is not None and length > self._max_bytes:
            raise self._too_large(resp.status)
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "identity" and length is not None:
            return await resp.read()  # as in send: a known length within the cap
        if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise ResponseFormatError(
                f"the body is encoded as {quoted(encoding, 40)}, which was not asked for",
                provider=self._provider,
                status=resp.status,
            )
        inflate = None if encoding == "identity" else _Inflate(encoding, self._max_bytes)
        body = bytearray()
        received = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            received += len(chunk)
            if received > self._max_bytes:
                raise self._too_large(resp.status)
            if inflate is None:
                body += chunk
                continue
            try:
                inflate.feed(chunk)
            except zlib.error as e:
                raise TransportError(
                    f"the {encoding} body is corrupt: {e}", provider=self._provider
                ) from None
            if len(inflate.out) > self._max_bytes:
                raise self._too_large(resp.status)
        if inflate is None:
            return bytes(body)
        # No body at all (a 404 or a 429 saying it is gzip) is an empty one.
        if received and not inflate.ended():
            raise TransportError(f"the {encoding} body was cut short", provider=self._provider)
        return bytes(inflate.out)

    def _too_large(self, status: int) -> ResponseTooLargeError:
        return ResponseTooLargeError(
            f"the body is larger than {self._max_bytes} bytes; not read",
            provider=self._provider,
            status=status,
        )

    async def aclose(self) -> None:
        """Close the session, if this transport opened it; nothing is sent after this."""
        self._closed = True
        if self._bare is not None:
            await self._bare.close()
        if self._owns_session and self._session is not None:
            await self._session.close()
            # Lets the connector's transports finish closing before the loop ends.
            await asyncio.sleep(0)
