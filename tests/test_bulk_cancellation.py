"""Leaving a bulk run while something swallows, or sends, a cancellation.

From a second red-team pass over the worker runner (issue 11).  Before the fix
that followed them, five of these failed: a worker cancelled before the
consumer (a shutdown cancelling every task, asyncio.run ending with a run in
the background) went on to the next record; a read or an async input that
swallowed the cancel let a record be sent after leaving; a transport that
swallowed it was retried.  One more guards that fix: a cancel from inside a
read, turned into that batch's errors, leaves later records their retries.
"""

import asyncio
import contextlib

import pytest

from customer_patch import CustomerPatch, Response, RetryPolicy
from customer_patch.testing import MockTransport
from tests.helpers import (
    HANG_GUARD,
    Boom,
    drain,
    ends,
    mock_client,
    ok_answer,
    runner_tasks,
    updates,
)
from tests.test_read import Store, client

# --- A: a batch read (skip_unchanged) that swallows the leaving cancel ----------------


async def test_a_read_that_swallows_the_cancel_sends_nothing_after_leaving():
    store = Store(10)
    inner = store.answer
    reading = asyncio.Event()
    left = False
    sent_after = []

    async def answer(request):
        if left and request.method == "PATCH":
            sent_after.append(request.url)
            await asyncio.sleep(0.2)  # a request that takes a little while
        if request.method == "GET" and not left:
            reading.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # a careless transport, as in test_bulk_workers
        return inner(request)

    store.transport = MockTransport(answer)
    async with client(store) as de:
        items = [(i, CustomerPatch(name="New")) for i in range(1, 11)]
        task = asyncio.create_task(
            drain(de.iter_updates(items, concurrency=3, skip_unchanged=True))
        )
        await asyncio.wait_for(reading.wait(), HANG_GUARD)
        left = True
        task.cancel()
        assert await ends(task)
        leftover = runner_tasks()
        for _ in range(20):
            await asyncio.sleep(0)
        for t in leftover:
            t.cancel()
    assert leftover == [], f"tasks left after the run: {leftover}"
    assert sent_after == [], f"PATCHes after leaving: {sent_after}"


# --- E: an async input that swallows the leaving cancel -------------------------------


async def test_an_async_input_that_swallows_the_cancel_sends_nothing_after_leaving():
    left = False
    sent_after = []
    waiting = asyncio.Event()

    def handler(request):
        if left:
            sent_after.append(request.url)
        return ok_answer(request)

    async def source():
        yield 1, CustomerPatch(name="a")
        waiting.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # e.g. a queue reader with its own shutdown handling
        for item in updates(5, start=2):
            yield item

    async with mock_client(handler) as de:
        task = asyncio.create_task(drain(de.iter_updates(source(), concurrency=4)))
        await asyncio.wait_for(waiting.wait(), HANG_GUARD)
        await asyncio.sleep(0.01)
        left = True
        task.cancel()
        assert await ends(task)
        for _ in range(20):
            await asyncio.sleep(0)
        leftover = runner_tasks()
        for t in leftover:
            t.cancel()
    assert leftover == []
    assert sent_after == [], f"sent after leaving: {sent_after}"


# --- K: workers cancelled together with the consumer (cancel-all shutdown) ------------


@pytest.mark.parametrize("workers_first", [True, False])
async def test_cancelling_every_task_at_once_sends_nothing_more(workers_first):
    left = False
    sent_after = []
    started = asyncio.Event()

    async def handler(request):
        if left:
            sent_after.append(request.url)
        started.set()
        await asyncio.sleep(3600)
        return ok_answer(request)

    async with mock_client(handler) as de:
        task = asyncio.create_task(drain(de.iter_updates(updates(50), concurrency=3)))
        await asyncio.wait_for(started.wait(), HANG_GUARD)
        for _ in range(10):
            await asyncio.sleep(0)
        left = True
        tasks = runner_tasks() + [task] if workers_first else [task] + runner_tasks()
        for t in tasks:  # what a shutdown handler (or asyncio.run's end) does
            t.cancel()
        assert await ends(task)
        assert runner_tasks() == []
    assert sent_after == [], f"{len(sent_after)} requests sent after every task was cancelled"


# --- KeyboardInterrupt / SystemExit in a fresh loop -----------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_from_the_input_under_asyncio_run(kind, exc):
    closed = []
    sent_after = []
    raised = False

    async def slow(request):
        if raised:
            sent_after.append(request.url)
        await asyncio.sleep(0.05)
        return ok_answer(request)

    def gen():
        nonlocal raised
        try:
            yield from updates(6)
            raised = True
            raise exc()
        finally:
            closed.append("gen")

    async def agen():
        try:
            for item in gen():
                await asyncio.sleep(0)
                yield item
        finally:
            closed.append("agen")

    leftover = []

    async def main():
        de = mock_client(slow)
        try:
            src = gen() if kind == "sync" else agen()
            async with contextlib.aclosing(de.iter_updates(src, concurrency=3)) as it:
                async for _ in it:
                    pass
        finally:
            leftover.extend(runner_tasks())

    with pytest.raises(exc):
        asyncio.run(asyncio.wait_for(main(), HANG_GUARD))
    assert "gen" in closed
    assert sent_after == [], sent_after


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_from_the_transport_under_asyncio_run(exc):
    sent_after = []
    raised = False
    closed = []

    async def handler(request):
        nonlocal raised
        if raised:
            sent_after.append(request.url)
        await asyncio.sleep(0.01)
        if request.url.endswith("/3/"):
            raised = True
            raise exc()
        return ok_answer(request)

    def gen():
        try:
            yield from updates(30)
        finally:
            closed.append(True)

    async def main():
        de = mock_client(handler)
        async with contextlib.aclosing(de.iter_updates(gen(), concurrency=3)) as it:
            async for _ in it:
                pass

    with pytest.raises(exc):
        asyncio.run(main())
    assert closed == [True]
    assert sent_after == [], sent_after


# --- D: a swallowed cancel on a retryable answer -------------------------------------


async def test_a_transport_swallowing_the_cancel_on_a_503_does_not_retry_after_leaving():
    left = False
    sent_after = []
    started = asyncio.Event()

    async def handler(request):
        if left:
            sent_after.append(request.url)
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass
        return Response(status=503, body=b"{}")

    async with mock_client(
        handler, retry=RetryPolicy(attempts=3, wait_initial=0.001, wait_max=0.001)
    ) as de:
        task = asyncio.create_task(drain(de.iter_updates(updates(5), concurrency=1)))
        await asyncio.wait_for(started.wait(), HANG_GUARD)
        left = True
        task.cancel()
        assert await ends(task)
    assert sent_after == [], f"retried after leaving: {sent_after}"


# --- BaseException from the input with read batches and match_on ----------------------


@pytest.mark.parametrize("mode", ["skip", "match"])
@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("n", [0, 3, 130])
async def test_a_base_exception_from_the_input_with_reads(mode, kind, concurrency, n):
    store = Store(150)
    for cid, c in store.customers.items():
        c["unique_id"] = f"K{cid}"
    closed = []

    def gen():
        try:
            for i in range(1, n + 1):
                key = f"K{i}" if mode == "match" else i
                yield key, CustomerPatch(name=f"v{i}")
            raise Boom("abort")
        finally:
            closed.append(True)

    async def agen():
        for item in gen():
            await asyncio.sleep(0)
            yield item

    seen = []
    opts = {"match_on": "unique_id"} if mode == "match" else {"skip_unchanged": True}

    async def consume(de):
        src = gen() if kind == "sync" else agen()
        async with contextlib.aclosing(
            de.iter_updates(src, concurrency=concurrency, **opts)
        ) as it:
            async for r in it:
                seen.append(r.index)

    async with client(store) as de:
        with pytest.raises(Boom):
            await asyncio.wait_for(consume(de), HANG_GUARD)
        assert runner_tasks() == []
    assert sorted(seen) == list(range(n))
    assert closed == [True]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("where", ["input", "read"])
def test_keyboard_interrupt_with_read_batches_under_asyncio_run(exc, where):
    store = Store(150)
    inner = store.answer
    closed = []
    reads = 0

    async def answer(request):
        nonlocal reads
        await asyncio.sleep(0.001)
        if request.method == "GET":
            reads += 1
            if where == "read" and reads == 2:
                raise exc()
        return inner(request)

    store.transport = MockTransport(answer)

    def gen():
        try:
            for i in range(1, 151):
                if where == "input" and i == 120:
                    raise exc()
                yield i, CustomerPatch(name="New")
        finally:
            closed.append(True)

    async def main():
        async with client(store) as de:
            async with contextlib.aclosing(
                de.iter_updates(gen(), concurrency=4, skip_unchanged=True)
            ) as it:
                async for _ in it:
                    pass

    with pytest.raises(exc):
        asyncio.run(main())
    assert closed == [True]


# --- K under asyncio.run: a background consumer left running when main returns -------


def test_asyncio_run_ending_with_a_run_in_the_background_sends_nothing_more():
    def one_run() -> int:
        sent = []
        ended = False

        async def handler(request):
            if ended:
                sent.append(request.url)
            await asyncio.sleep(3600)
            return ok_answer(request)

        async def main():
            nonlocal ended
            de = mock_client(handler)

            background = asyncio.create_task(drain(de.iter_updates(updates(50), concurrency=4)))
            for _ in range(20):
                await asyncio.sleep(0)
            ended = True  # main returns: asyncio.run cancels every task left
            assert not background.done()

        asyncio.run(main())
        return len(sent)

    counts = [one_run() for _ in range(20)]
    assert sum(counts) == 0, f"requests sent during asyncio.run's shutdown, per run: {counts}"


# --- A cancel from inside a read is that batch's outcome, not the worker's for good ---
async def test_a_read_cancelled_from_inside_leaves_later_sends_without_retries():
    store = Store(150)
    inner = store.answer
    reads = 0
    failed_once = set()

    async def answer(request):
        nonlocal reads
        if request.method == "GET":
            reads += 1
            if reads == 1:
                asyncio.current_task().cancel()  # old async-timeout style
                await asyncio.sleep(0)
        if request.method == "PATCH" and request.url not in failed_once:
            failed_once.add(request.url)
            return Response(status=503, body=b"{}")
        return inner(request)

    store.transport = MockTransport(answer)
    items = [(i, CustomerPatch(name="New")) for i in range(1, 151)]
    async with client(
        store, retry=RetryPolicy(attempts=3, wait_initial=0.001, wait_max=0.001)
    ) as de:
        report = await asyncio.wait_for(
            de.update_many(items, concurrency=1, skip_unchanged=True), HANG_GUARD
        )
    late = [r for r in report.results if r.index >= 100]
    assert all(r.ok for r in late), [(r.index, r.error, r.attempts) for r in late if not r.ok][:3]
