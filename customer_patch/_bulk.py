"""Bulk updates: many records, run concurrently at the provider's pace.

``concurrency`` worker tasks pull from the input one item at a time, so a
generator of a million updates never has more than ``concurrency`` of them
in flight or in memory, and every item taken produces exactly one
:class:`UpdateResult`.  A 401 or 403 stops the run: every later record would
fail the same way, so they are reported as not attempted instead of sent.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Sized,
)
from typing import Any, Protocol, TypeAlias

from attrs import field, frozen

from customer_patch._adapter import CustomerId
from customer_patch._errors import (
    AuthenticationError,
    NotAttemptedError,
    PermissionDeniedError,
    Problem,
    ValidationError,
)
from customer_patch._model import Customer, CustomerPatch

Update: TypeAlias = tuple[CustomerId, CustomerPatch]
Updates: TypeAlias = Iterable[Update] | AsyncIterable[Update]
"""What the bulk methods take: ``(customer_id, patch)`` pairs, plain or async."""


@frozen(kw_only=True)
class UpdateResult:
    """What happened to one record of a bulk run."""

    index: int
    """The record's position in the input, from 0."""
    customer_id: Any
    patch: CustomerPatch | None = field(repr=False)
    customer: Customer | None = None
    """The customer as the provider returned it, on success."""
    error: Exception | None = None
    """The typed error, on failure; :class:`NotAttemptedError` if never sent.
    (An exception that is not a :class:`CustomerPatchError` means a bug, and is
    reported here rather than lost.)"""
    attempts: int = 0
    """Requests sent for this record (0 when it failed validation or was not attempted)."""

    @property
    def ok(self) -> bool:
        """Whether the update succeeded."""
        return self.error is None


@frozen(kw_only=True)
class BulkReport:
    """Every result of a bulk run, split by outcome, each list in input order."""

    succeeded: list[UpdateResult]
    failed: list[UpdateResult]

    @property
    def results(self) -> list[UpdateResult]:
        """Every result, in input order."""
        return sorted(self.succeeded + self.failed, key=lambda r: r.index)


@frozen(kw_only=True)
class Progress:
    """A snapshot handed to a progress hook after each result."""

    done: int
    succeeded: int
    failed: int
    total: int | None
    """The number of records, when the input has a ``len()`` or ``total=`` was given."""
    rate: float
    """Records finished per second, over the last few seconds."""
    last: UpdateResult
    """The result that was just recorded, so a hook can tell which records are done."""


class ProgressHook(Protocol):
    """An object whose ``on_progress`` method receives each :class:`Progress`."""

    def on_progress(self, progress: Progress) -> None:
        """Called after each result with a fresh :class:`Progress`."""


ProgressCallback: TypeAlias = Callable[[Progress], None] | ProgressHook
"""A progress hook: a callable taking a :class:`Progress`, or a :class:`ProgressHook`."""


class _Rate:
    """Records per second over the last ~10 one-second slots; bounded memory."""

    def __init__(self) -> None:
        self._slots: collections.deque[tuple[int, int]] = collections.deque(maxlen=10)
        self._start = time.monotonic()

    def add(self) -> float:
        now = time.monotonic()
        second = int(now)
        if self._slots and self._slots[-1][0] == second:
            self._slots[-1] = (second, self._slots[-1][1] + 1)
        else:
            self._slots.append((second, 1))
        span = min(now - self._start, now - self._slots[0][0])
        return sum(n for _, n in self._slots) / span if span > 0 else 0.0


async def run_bulk(
    send: Callable[[Any, CustomerPatch], Awaitable[tuple[Customer | None, Exception | None, int]]],
    updates: Updates,
    *,
    concurrency: int,
    progress: ProgressCallback | None,
    total: int | None,
) -> AsyncIterator[UpdateResult]:
    """Yield one result per input item as each finishes; see ``Client.iter_updates``."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if total is None and isinstance(updates, Sized):
        total = len(updates)
    # A plain iterator is advanced without awaiting, so workers cannot
    # interleave inside next(); an async one needs a lock around __anext__.
    async_source = updates.__aiter__() if isinstance(updates, AsyncIterable) else None
    sync_source = iter(updates) if not isinstance(updates, AsyncIterable) else None
    take = asyncio.Lock()
    results: asyncio.Queue[UpdateResult | None] = asyncio.Queue(maxsize=concurrency)
    counter = itertools.count()
    stop: list[BaseException] = []
    broken: list[Exception] = []

    async def one(index: int, item: Any) -> UpdateResult:
        try:
            customer_id, patch = item
        except (TypeError, ValueError):
            customer_id, patch = None, None
        if not isinstance(patch, CustomerPatch):
            problem = Problem("", f"expected (customer_id, CustomerPatch), got {item!r:.80}")
            return UpdateResult(
                index=index, customer_id=customer_id, patch=None, error=ValidationError([problem])
            )
        if stop:
            return UpdateResult(
                index=index, customer_id=customer_id, patch=patch, error=NotAttemptedError(stop[0])
            )
        try:
            customer, error, attempts = await send(customer_id, patch)
        except Exception as e:  # a bug, e.g. in a third-party adapter: still one result
            customer, error, attempts = None, e, 1
        if isinstance(error, AuthenticationError | PermissionDeniedError) and not stop:
            stop.append(error)
        return UpdateResult(
            index=index,
            customer_id=customer_id,
            patch=patch,
            customer=customer,
            error=error,
            attempts=attempts,
        )

    async def worker() -> None:
        try:
            while True:
                if sync_source is not None:
                    try:
                        item = next(sync_source)
                    except StopIteration:
                        break
                    index = next(counter)
                else:
                    assert async_source is not None
                    async with take:
                        try:
                            item = await async_source.__anext__()
                        except StopAsyncIteration:
                            break
                        index = next(counter)
                await results.put(await one(index, item))
        except Exception as e:  # the caller's iterable raised: re-raised below
            broken.append(e)
        finally:
            # Whatever ends a worker, the consumer must hear of it or wait forever.
            await results.put(None)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    rate = _Rate()
    done = succeeded = failed = 0
    hook: Callable[[Progress], None] | None = None
    if progress is not None:
        hook = progress.on_progress if hasattr(progress, "on_progress") else progress
    try:
        running = len(workers)
        while running:
            result = await results.get()
            if result is None:
                running -= 1
                continue
            done += 1
            if result.ok:
                succeeded += 1
            else:
                failed += 1
            if hook is not None:
                current = rate.add()
                hook(
                    Progress(
                        done=done,
                        succeeded=succeeded,
                        failed=failed,
                        total=total,
                        rate=current,
                        last=result,
                    )
                )
            yield result
        if broken:
            # Every item taken before the input failed has its result above.
            raise broken[0]
        for task in workers:
            # Anything graver than an Exception killed a worker: never end quietly.
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        # Let the caller's generator run its own clean-up (finally blocks).
        if async_source is not None and hasattr(async_source, "aclose"):
            await async_source.aclose()
        if sync_source is not None and hasattr(sync_source, "close"):
            sync_source.close()
