"""Reading a pipe or a terminal without stopping the run's event loop.

``producer | customer-patch apply -``: a read that waits for the producer's
next line, made on the loop's thread, stops everything else the loop does.
The records already taken are neither sent nor reported, and SIGINT and
SIGTERM, whose handlers run in the loop, are not handled, until the line
comes.  So the lines of a stream that may wait are taken in a thread of
their own, one at a time, and each of its reads waits on the stream *and*
on a wake-up pipe: leaving the run wakes and ends that thread at once.  A
thread left blocked in a read would be worse than slow: it holds the
stream's lock, and an interpreter that shuts down with that lock held
aborts (``Fatal Python error: _enter_buffered_busy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import queue
import select
import threading
from collections.abc import AsyncGenerator, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class Stopped(Exception):
    """A read of a :class:`Stoppable` stream after :meth:`Stoppable.stop`."""


class Stoppable(io.RawIOBase):
    """A pipe, a terminal or a device, whose reads :meth:`stop` ends."""

    def __init__(self, file: io.FileIO) -> None:
        super().__init__()
        self._file = file  # closed with this one: a FileIO of its own, or closefd=False
        self._wake_r, self._wake_w = os.pipe()
        self.cut = False
        """Whether :meth:`stop` ended a read before the stream's end."""

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._file.fileno()

    def readinto(self, buffer: Any) -> int:
        # select() is retried on EINTR after the signal's handler has run; a
        # handler that raises (the command's, before its loop runs) ends it.
        ready, _, _ = select.select([self._file.fileno(), self._wake_r], [], [])
        if self._wake_r not in ready:
            return self._file.readinto(buffer) or 0
        # Stopped.  A producer that had already ended has its end here to read:
        # then the input was whole, not cut (what a read brings instead is
        # dropped, as the lines a buffer took ahead are).
        if self._file.fileno() in ready and not self._file.readinto(buffer):
            return 0
        self.cut = True
        raise Stopped("the run stopped reading")

    def stop(self) -> None:
        """End the read under way and every later one (from any thread)."""
        with contextlib.suppress(OSError):  # closed already, or already woken
            os.write(self._wake_w, b"\0")

    def close(self) -> None:
        if not self.closed:
            self._file.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
        super().close()


def stoppable(file: io.FileIO) -> io.BufferedReader:
    """``file`` buffered, its reads ended by :meth:`Stoppable.stop` of its ``raw``."""
    return io.BufferedReader(Stoppable(file))


_END = object()


async def taken(items: Iterable[T], stream: Stoppable | None = None) -> AsyncGenerator[T, None]:
    """``items`` for the event loop, one at a time, none taken ahead.

    ``stream``: what ``items`` reads, when a read of it may wait (a pipe, a
    terminal).  Each item is then taken in a thread, while the loop goes on,
    and leaving (the end, ``aclose()``, a cancellation) stops the stream and
    that thread before this returns.  Otherwise the items are taken here,
    and the loop is given a turn every 256: lines that never wait on the
    network (invalid or skipped ones) would never let it run a signal's
    handler.
    """
    if stream is None:
        for number, item in enumerate(items):
            if number % 256 == 0:
                await asyncio.sleep(0)
            yield item
        return
    loop = asyncio.get_running_loop()
    iterator = iter(items)
    asks: queue.SimpleQueue[asyncio.Future[tuple[Any, BaseException | None]] | None]
    asks = queue.SimpleQueue()

    def settle(future: asyncio.Future[Any], outcome: tuple[Any, BaseException | None]) -> None:
        if not future.done():  # cancelled while the item was being taken
            future.set_result(outcome)

    def take() -> None:
        while (future := asks.get()) is not None:
            outcome: tuple[Any, BaseException | None]
            try:
                outcome = (next(iterator), None)
            except StopIteration:
                outcome = (_END, None)
            except BaseException as e:
                outcome = (None, e)
            loop.call_soon_threadsafe(settle, future, outcome)

    thread = threading.Thread(target=take, name="customer-patch input", daemon=True)
    thread.start()
    try:
        while True:
            future: asyncio.Future[tuple[Any, BaseException | None]] = loop.create_future()
            asks.put(future)
            item, error = await future
            if isinstance(error, Stopped):  # stream.stop(): the caller reads no further
                return
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        asks.put(None)
        stream.stop()
        thread.join()  # at once: its read was woken, and it takes nothing more
