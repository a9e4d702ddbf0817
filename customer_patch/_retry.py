"""What is retried, how long to wait, and the loop that does it: :func:`send_with_retries`.

Every PATCH this library sends is idempotent (the same body gives the same
record), so re-sending after a lost or garbled answer is safe.

The loop is ours rather than stamina's: what it needs is this library's own
policy (a ``Retry-After`` honoured through the client's shared pause, a time
budget that the first attempt and every wait count against), and stamina's
retry hooks are process-wide, so using its loop would log on the
application's behalf.  Retries are logged on the ``customer_patch`` logger
instead, at INFO, with what an operator needs to know.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, TypeVarTuple

from attrs import field, frozen

from customer_patch._checks import check_seconds, check_whole, on_field
from customer_patch._errors import (
    CustomerPatchError,
    ProviderError,
    RateLimitedError,
    ResponseFormatError,
    ResponseTooLargeError,
    TransportError,
)
from customer_patch._http import parse_retry_after

log = logging.getLogger("customer_patch")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth another attempt; every other 4xx is final."""


@frozen(kw_only=True)
class RetryPolicy:
    """How the client retries one update (a bulk run applies it to each record).

    Waits grow exponentially with full jitter (a uniform draw between zero
    and ``wait_initial * 2**n``, capped at ``wait_max``), except after a 429
    or 503 with ``Retry-After``, which is honoured up to ``max_retry_after``.
    Every number of seconds is at most a day: a longer wait is a hang.
    """

    attempts: int = field(default=5, validator=on_field(check_whole))
    """Attempts in all, the first included; ``1`` turns retries off."""
    timeout: float | None = field(default=300.0, validator=on_field(check_seconds, none=True))
    """Seconds an update may take in all, from its first attempt: attempts and waits
    count.  A retry whose wait would end past it is not made (the last error stands),
    and a ``Retry-After`` longer than what is left ends the update with
    :class:`RateLimitedError` rather than waiting.  A read of many pages the client
    makes for an update (the custom-field definitions, a batch's read) has one
    budget for them all.  ``None``: no limit."""
    wait_initial: float = field(default=0.5, validator=on_field(check_seconds))
    """The *ceiling* of the first (jittered) wait: it is drawn from 0 to this.
    (In stamina the parameter of this name is the *minimum* first wait.)"""
    wait_max: float = field(default=30.0, validator=on_field(check_seconds))
    """No jittered wait is drawn from above this."""
    max_retry_after: float = field(default=120.0, validator=on_field(check_seconds, zero=True))
    """The longest ``Retry-After`` that is honoured as asked; longer ones are cut to this."""

    def backoff(self, retry_number: int) -> float:
        """The wait before retry ``retry_number`` (1-based): full jitter."""
        # The exponent is capped: 2.0**1024 overflows a float, and by 2**64
        # any wait_initial has long reached wait_max.
        ceiling = min(self.wait_max, self.wait_initial * 2.0 ** min(retry_number - 1, 64))
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
        return 200 <= error.status < 300 and error.incomplete
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


class HeldPastDeadline(Exception):
    """Raised by ``send`` when the request would have to wait past ``deadline``:
    nothing was sent, so the attempt does not count."""

    def __init__(self, error: CustomerPatchError) -> None:
        self.error = error


def _being_cancelled() -> bool:
    """Whether the current task has a cancellation request pending or swallowed."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def send_with_retries(
    send: Callable[[*Ts, float], Awaitable[T]],
    *args: *Ts,
    policy: RetryPolicy,
    on_rate_limited: Callable[[float], None],
    label: str,
    label_args: tuple[Any, ...] = (),
    stopped: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    deadline: float = math.inf,
) -> tuple[T | None, CustomerPatchError | None, int]:
    """Call ``send(*args, deadline)`` until it succeeds or ``policy`` says stop.

    Returns ``(value, error, attempts)``.

    ``send`` is given when the time budget ends (a time of ``clock``; ``inf`` with
    no budget): the policy's ``timeout`` from now, or ``deadline`` if sooner (a read
    of many pages has one budget for all); it raises :class:`HeldPastDeadline`
    rather than wait past it.

    Never raises a :class:`CustomerPatchError`: the last one is returned.  A
    429 calls ``on_rate_limited(wait)`` (even with retries off: the provider's
    pause concerns every request of the client), and the retry then waits in
    the client's pacer with all the others instead of here.  ``label % label_args``
    names the update in log lines: formatted only when one is written, as
    :mod:`logging` does, since most updates never log.  (``args`` rather than
    a partial, and the label's parts rather than its text: both cost every
    update a little, for nothing when it succeeds at once.)  ``stopped()``
    true ends the loop before a retry, the last error standing: the client
    was closed, and nothing more goes out.
    """
    if policy.timeout is not None:
        own = clock() + policy.timeout
        if own < deadline:  # (not min(): this runs for every update)
            deadline = own
    attempt = 0
    last: CustomerPatchError | None = None
    while True:
        attempt += 1
        try:
            return await send(*args, deadline), None, attempt
        except HeldPastDeadline as held:
            # Nothing was sent.  After a failed attempt its answer stands (a sleep
            # that ended late, on a busy machine, must not turn a 500 into a 429).
            return None, last or held.error, attempt - 1
        except CustomerPatchError as error:
            last = error
            if not is_retryable(error):
                return None, error, attempt
            wait = retry_after(error, policy)
            if wait is None:
                wait = policy.backoff(attempt)
            limited = isinstance(error, RateLimitedError)
            if limited:
                on_rate_limited(wait)
            if attempt >= policy.attempts:
                return None, error, attempt
            if _being_cancelled() or stopped():
                # A send that swallowed this task's cancellation (a transport's bug)
                # came back with an error, or the client was closed (and perhaps cut
                # this attempt's connection): nothing more goes out, nor is a retry
                # logged that will not be made.
                return None, error, attempt
            if clock() + wait > deadline:
                log.info(
                    label + ": %s; no retry: the %gs budget would run out",
                    *label_args,
                    error,
                    policy.timeout,
                )
                return None, error, attempt
            log.info(
                label + ": %s; retry %d of %d in %.2fs",
                *label_args,
                error,
                attempt,
                policy.attempts - 1,
                wait,
            )
            if not limited:
                await sleep(wait)
