"""The bulk runner keeps its promises however the run ends or whatever the input holds.

Each test here reproduced a failure first (issue 9): an older line landing over a
newer one, runs that hung when their consumer left, a million tasks for one record,
and runs that kept sending after every record failed.
"""

import asyncio
import contextlib
import random

import pytest

from customer_patch import (
    CustomerPatch,
    NotAttemptedError,
    NotFoundError,
    TooManyFailuresError,
)
from tests.helpers import HANG_GUARD, ends, fold, mock_client, ok_answer, runner_tasks, updates
from tests.scripted_server import Reply, ScriptedProvider, ok

# -- one customer's lines land in input order ------------------------------------------


async def test_a_retried_older_line_never_lands_over_a_newer_one():
    cid = 7
    items = [(cid, CustomerPatch(name="older")), (cid, CustomerPatch(name="newer"))]
    first = Reply(503)
    provider = ScriptedProvider(lambda n, c: first if n == 0 else Reply())
    async with mock_client(provider) as de:
        report = await de.update_many(items, concurrency=2)
    assert [r.ok for r in report.results] == [True, True]
    assert provider.store[cid]["name"] == "newer"


@pytest.mark.parametrize("seed", range(5))
async def test_duplicate_ids_under_faults_end_with_the_in_order_fold(seed):
    rng = random.Random(seed)
    items = [
        (rng.randrange(1, 11), CustomerPatch(name=f"line {n}", email=f"{n}@example.com"))
        for n in range(150)
    ]

    def script(number, cid):
        roll = rng.random()
        if roll < 0.2:
            return Reply(500, delay=rng.random() / 200)
        if roll < 0.3:
            return Reply(drop=True)
        return Reply(delay=rng.random() / 100)

    provider = ScriptedProvider(script)
    async with mock_client(provider) as de:
        report = await de.update_many(items, concurrency=8)
    assert len(report.results) == len(items)
    applied = [(cid, patch) for (cid, patch), r in zip(items, report.results, strict=True) if r.ok]
    assert provider.store == fold(applied)


# -- every way of leaving a run ends promptly and leaves no task ------------------------


async def test_aclose_after_an_await_returns_and_leaves_no_task():
    async with mock_client(ScriptedProvider(lambda n, c: Reply(delay=0.01))) as de:

        async def leave_early():
            async with contextlib.aclosing(de.iter_updates(updates(200), concurrency=4)) as it:
                async for _ in it:
                    await asyncio.sleep(0.01)
                    break

        await asyncio.wait_for(leave_early(), HANG_GUARD)
        assert runner_tasks() == []


async def test_a_progress_callback_that_raises_ends_the_run_with_its_error():
    def progress(p):
        if p.done == 3:
            raise ZeroDivisionError("the caller's bug")

    async with mock_client(ScriptedProvider(lambda n, c: Reply(delay=0.01))) as de:
        with pytest.raises(ZeroDivisionError):
            await asyncio.wait_for(
                de.update_many(updates(100), concurrency=2, progress=progress), HANG_GUARD
            )
        assert runner_tasks() == []


async def test_an_exception_in_the_consumer_ends_the_run():
    async with mock_client(ScriptedProvider(lambda n, c: Reply(delay=0.01))) as de:

        async def consume():
            async with contextlib.aclosing(de.iter_updates(updates(100), concurrency=8)) as it:
                async for _ in it:
                    raise KeyError("consumer")

        with pytest.raises(KeyError):
            await asyncio.wait_for(consume(), HANG_GUARD)
        assert runner_tasks() == []


@pytest.mark.parametrize("after", [0, 1, 2, 3, 5, 8, 13, 21, 34, 55])
async def test_cancelling_the_consumer_at_any_point_ends_promptly(after):
    """Cancels after ``after`` results: with 16 in flight and a full result buffer."""
    async with mock_client(ScriptedProvider(lambda n, c: Reply(delay=0.01))) as de:
        taken = asyncio.Event()
        seen = 0

        async def consume():
            nonlocal seen
            async with contextlib.aclosing(de.iter_updates(updates(400), concurrency=16)) as it:
                async for _ in it:
                    seen += 1
                    if seen >= after:
                        taken.set()
                        await asyncio.sleep(3600)  # a slow consumer: the buffer fills up

        task = asyncio.create_task(consume())
        if after:
            await asyncio.wait_for(taken.wait(), HANG_GUARD)
        else:
            await asyncio.sleep(0)
        task.cancel()
        assert await ends(task), "the cancelled run did not end"
        assert runner_tasks() == []


@pytest.mark.parametrize(
    ("source", "tasks"),
    # An async input also has a worker waiting for its next item.
    [("list", 1), ("async", 2)],
)
async def test_a_huge_concurrency_with_one_record_starts_one_task(source, tasks):
    peak = 0

    async def one_record():
        for item in updates(1):
            yield item

    def progress(p):
        nonlocal peak
        peak = max(peak, len(runner_tasks()))

    async def watch():
        nonlocal peak
        while True:
            peak = max(peak, len(runner_tasks()))
            await asyncio.sleep(0)

    async with mock_client(ScriptedProvider(lambda n, c: Reply(delay=0.05))) as de:
        watcher = asyncio.create_task(watch())
        items = updates(1) if source == "list" else one_record()
        report = await de.update_many(items, concurrency=10**6, progress=progress)
        watcher.cancel()
    assert len(report.succeeded) == 1
    assert peak == tasks


@pytest.mark.parametrize("concurrency", [1, 3, 16])
@pytest.mark.parametrize("source", ["list", "async"])
async def test_never_more_workers_than_concurrency_and_every_record_once(concurrency, source):
    peak = 0
    items = updates(60)

    async def async_items():
        for item in items:
            await asyncio.sleep(0)
            yield item

    def progress(p):
        nonlocal peak
        peak = max(peak, len(runner_tasks()))

    async with mock_client(ScriptedProvider(lambda n, c: Reply(delay=0.001))) as de:
        source_items = items if source == "list" else async_items()
        report = await de.update_many(source_items, concurrency=concurrency, progress=progress)
        assert runner_tasks() == []
    assert [r.index for r in report.results] == list(range(60))
    assert 1 <= peak <= concurrency


async def test_a_cancelled_error_from_inside_a_send_ends_the_run_instead_of_losing_a_record():
    def handler(request):
        if request.url.endswith("/3/"):
            raise asyncio.CancelledError  # a transport's bug: nobody cancelled the run
        return ok_answer(request)

    seen = []

    async def consume(de):
        async for result in de.iter_updates(updates(5), concurrency=1):
            seen.append(result.index)

    async with mock_client(handler) as de:
        with pytest.raises(RuntimeError, match="record 2 was cancelled from inside") as info:
            await asyncio.wait_for(consume(de), HANG_GUARD)  # it hung before
        assert isinstance(info.value.__cause__, asyncio.CancelledError)
        assert runner_tasks() == []
    assert seen == [0, 1]


# -- a run of failures stops instead of sending every record -----------------------------


async def test_max_failures_stops_the_run_and_reports_the_rest_as_not_attempted():
    provider = ScriptedProvider(
        lambda n, c: Reply(404, {"success": False, "errors": {"__all__": ["No."]}})
    )
    async with mock_client(provider) as de:
        report = await de.update_many(updates(200), concurrency=4, max_failures=5)
    results = report.results
    assert len(results) == 200
    sent = [r for r in results if not isinstance(r.error, NotAttemptedError)]
    assert 5 <= len(sent) <= 5 + 4 - 1  # the ones already in flight finish
    assert all(isinstance(r.error, NotFoundError) for r in sent)
    stopped = [r for r in results if isinstance(r.error, NotAttemptedError)]
    assert len(stopped) == 200 - len(sent)
    cause = stopped[0].error.cause
    assert isinstance(cause, TooManyFailuresError)
    assert isinstance(cause.last, NotFoundError)
    assert provider.count == len(sent)


async def test_progress_says_when_the_run_stopped_so_a_caller_can_end_its_source():
    """A source that may wait forever (a queue, a pipe) would keep the run taking
    items only to report them not attempted: the progress hook says the run
    stopped, and why, from the result that stopped it on."""
    provider = ScriptedProvider(
        lambda n, c: Reply(404, {"success": False, "errors": {"__all__": ["No."]}})
    )
    seen = []
    async with mock_client(provider) as de:
        async for _ in de.iter_updates(
            updates(10), concurrency=1, max_failures=3, progress=seen.append
        ):
            pass
    assert [p.stopped is None for p in seen] == [True, True] + [False] * 8
    assert isinstance(seen[2].last.error, NotFoundError)  # the third failure stops it
    assert all(isinstance(p.stopped, TooManyFailuresError) for p in seen[2:])
    assert all(isinstance(p.last.error, NotAttemptedError) for p in seen[3:])


async def test_consecutive_failures_of_one_kind_stop_but_a_success_resets_the_count():
    def script(number, cid):
        if (cid % 4 == 0 and cid < 100) or cid > 100:
            return Reply(404, {"success": False, "errors": {"__all__": ["No."]}})
        return Reply()

    provider = ScriptedProvider(script)
    async with mock_client(provider) as de:
        report = await de.update_many(updates(300), concurrency=1, max_consecutive_failures=10)
    results = report.results
    assert all(r.ok for r in results[:100] if r.customer_id % 4)
    # From 101 on every record fails: ten of them, then the run stops.
    assert [r.customer_id for r in results if isinstance(r.error, NotFoundError)][-10:] == list(
        range(101, 111)
    )
    assert all(isinstance(r.error, NotAttemptedError) for r in results[110:])
    assert provider.count == 110


async def test_thresholds_must_be_positive():
    async with mock_client(ScriptedProvider(ok)) as de:
        for kwargs in ({"max_failures": 0}, {"max_consecutive_failures": -1}):
            with pytest.raises(ValueError, match="at least 1"):
                await de.update_many(updates(1), **kwargs)
