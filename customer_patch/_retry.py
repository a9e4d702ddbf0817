"""What is retried, and how long to wait: the policy the client hands to stamina.

Every PATCH this library sends is idempotent (the same body gives the same
record), so re-sending after a lost or garbled answer is safe.
"""

from __future__ import annotations

import json
import random
from typing import Any

from attrs import Attribute, field, frozen, validators

from customer_patch._adapter import parse_retry_after
from customer_patch._errors import (
    ProviderError,
    RateLimitedError,
    ResponseFormatError,
    ResponseTooLargeError,
    TransportError,
)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth another attempt; every other 4xx is final."""


def _positive_or_none(instance: object, attribute: Attribute[Any], value: Any) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be positive or None, got {value!r}")


@frozen(kw_only=True)
class RetryPolicy:
    """How the client retries one update (a bulk run applies it to each record).

    Waits grow exponentially with full jitter (a uniform draw between zero
    and ``wait_initial * 2**n``, capped at ``wait_max``), except after a 429
    with ``Retry-After``, which is honoured up to ``max_retry_after``.
    """

    attempts: int = field(default=5, validator=validators.ge(1))
    """Attempts in all, the first included; ``1`` turns retries off."""
    timeout: float | None = field(default=300.0, validator=_positive_or_none)
    """Seconds an update may take, waits included, before no new attempt starts."""
    wait_initial: float = field(default=0.5, validator=validators.gt(0))
    wait_max: float = field(default=30.0, validator=validators.gt(0))
    max_retry_after: float = field(default=120.0, validator=validators.ge(0))
    """The longest ``Retry-After`` that is honoured as asked; longer ones are cut to this."""

    def backoff(self, retry_number: int) -> float:
        """The wait before retry ``retry_number`` (1-based): full jitter."""
        ceiling = min(self.wait_max, self.wait_initial * 2 ** (retry_number - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography


NO_RETRY = RetryPolicy(attempts=1)


def is_retryable(error: BaseException) -> bool:
    """Whether another attempt could succeed where this one failed."""
    if isinstance(error, TransportError):
        return True
    if isinstance(error, ProviderError):
        return error.status in RETRY_STATUSES
    if isinstance(error, ResponseFormatError) and not isinstance(error, ResponseTooLargeError):
        # A 2xx whose body is cut short or garbled in transit: the answer was
        # lost, not refused.  A well-formed body of the wrong shape is final.
        return 200 <= error.status < 300 and not _is_json(error.body)
    return False


def retry_after(error: BaseException, policy: RetryPolicy) -> float | None:
    """The provider's ``Retry-After`` for ``error``, capped, if it gave one.

    HTTP sends it with 429 and with 503 (service unavailable, back at ...).
    """
    seconds = None
    if isinstance(error, RateLimitedError):
        seconds = error.retry_after
    elif isinstance(error, ProviderError) and error.status == 503:
        seconds = parse_retry_after(error.headers.get("Retry-After"))
    return None if seconds is None else min(seconds, policy.max_retry_after)


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True
