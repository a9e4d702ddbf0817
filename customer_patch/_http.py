"""HTTP values: what crosses the transport seam, and how a provider limits it.

The bottom of the dependency graph: plain values and pure functions, which
import nothing else of this package but its checks of arguments.  Adapters
build :class:`Request` and read :class:`Response`; transports send the one
and return the other.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from attrs import field, frozen
from multidict import CIMultiDict, CIMultiDictProxy

from customer_patch._checks import check_flag, on_field
from customer_patch._errors import quoted

_MASK = "********"


@frozen(kw_only=True)
class Request:
    """An HTTP request, ready to send.  Its repr never shows secret headers."""

    method: str
    """The HTTP method, e.g. ``"PATCH"``."""
    url: str
    """The whole URL, the customer id already percent-encoded."""
    headers: Mapping[str, str] = field(repr=False)
    """Every header, credentials included (never shown in the repr)."""
    body: bytes = field(repr=False)
    """The JSON body, as bytes."""
    secret_headers: frozenset[str] = field(default=frozenset(), repr=False)
    """Names (lower case) of the headers whose values are credentials."""
    route: str = ""
    """Which of the provider's routes this is, method included (``"GET
    /customers/{id}"``): requests of one route share its per-route rate limits.
    ``""`` (the default, as :meth:`Adapter.build_request` leaves it): no route
    named; every such request shares one set of per-route buckets."""

    def redacted_headers(self) -> dict[str, str]:
        """The headers with every credential masked, for display and logs."""
        return {
            k: (_MASK if k.lower() in self.secret_headers else v) for k, v in self.headers.items()
        }

    def json(self) -> Any:
        """The body, parsed."""
        return json.loads(self.body)


def _case_insensitive(headers: Mapping[str, str]) -> Mapping[str, str]:
    # HTTP header names are case-insensitive; a transport may hand them over
    # in any case, and "retry-after" must still be found.
    return headers if isinstance(headers, CIMultiDictProxy | CIMultiDict) else CIMultiDict(headers)


@frozen(kw_only=True, slots=False)  # one built per answer: see Customer
class Response:
    """An HTTP response as received: status, headers and the raw body."""

    status: int
    """The HTTP status."""
    headers: Mapping[str, str] = field(factory=CIMultiDict, converter=_case_insensitive)
    """The headers, looked up without regard to case."""
    body: bytes = b""
    """The body as received (decoded if it was compressed)."""


def _sane_rate(instance: object, attribute: Any, value: float) -> None:
    # inf or 1e-300 would overflow the arithmetic of the buckets (and a wait
    # of years is a typo, not a limit).
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and 1 / 86_400 <= value < math.inf  # no float() of 10**400
    ):
        raise ValueError(
            f"per_second must be a finite rate of at least one request a day, got {value!r}"
        )


def _sane_burst(instance: object, attribute: Any, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
        raise ValueError(f"burst must be a whole number from 1 to 1,000,000, got {value!r}")


@frozen
class RateLimit:
    """A token bucket: ``burst`` requests at once, then ``per_second`` sustained."""

    burst: int = field(validator=_sane_burst)
    """Requests that may go at once, from a full bucket."""
    per_second: float = field(validator=_sane_rate)
    """Requests per second, sustained."""
    per_route: bool = field(default=False, validator=on_field(check_flag))
    """``True``: each route and method (:attr:`Request.route`) has a bucket of its
    own; ``False``: one bucket for every request of the client."""


def as_limits(value: object, *, name: str) -> tuple[RateLimit, ...]:
    """``value`` (one :class:`RateLimit` or several) as a tuple, or a
    :class:`TypeError` naming ``name`` and what it should be."""
    if isinstance(value, RateLimit):
        return (value,)
    limits = tuple(value) if isinstance(value, Iterable) and not isinstance(value, str) else None
    if limits is None or not all(isinstance(limit, RateLimit) for limit in limits):
        raise TypeError(f"{name} must be a RateLimit, several, or None, got {quoted(value)}")
    return limits


def status_text(status: int) -> str:
    """The reason phrase of an HTTP status, or ``HTTP nnn`` for one without."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
        # OverflowError: a year or an offset past what a datetime holds.
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
