"""The bulk runner's workers (one task per slot) against the worst inputs and transports.

From a red-team pass over the runner of issue 11.  The tests in the first part
each broke a promise of docs/guarantees.md before the fix that followed them
(their docstrings say how; two also failed on the task-per-record runner); the
others held, and guard against regressions.  Every await of a run is bounded by
HANG_GUARD, so a hang fails instead of hanging.
"""

import asyncio
import contextlib
import random

import pytest

from customer_patch import (
    CustomerPatch,
    NotAttemptedError,
    Response,
    TooManyFailuresError,
    ValidationError,
)
from customer_patch.testing import MockTransport
from tests.helpers import (
    HANG_GUARD,
    Boom,
    collect,
    drain,
    ends,
    fold,
    mock_client,
    ok_answer,
    runner_tasks,
    updates,
)
from tests.scripted_server import Reply, ScriptedProvider
from tests.test_read import Store, client

# =====================================================================================
# Broken before the fix
# =====================================================================================


async def test_cancelled_error_from_a_batch_read_ends_the_run_instead_of_losing_the_batch():
    """Failed before the fix.  A transport raising CancelledError during the
    skip_unchanged batch read (nobody left the run): the batch's records were taken
    from the input, yet the run ends quietly with no result for any of them and no
    error.  Promise: exactly one result per record, and a CancelledError from inside
    ends the run with RuntimeError."""
    store = Store(5)
    inner = store.answer

    def answer(request):
        if request.method == "GET":
            raise asyncio.CancelledError  # a transport's bug, as in the send test
        return inner(request)

    store.transport = MockTransport(answer)
    results = []
    outcome = None

    items = [(i, CustomerPatch(name="New")) for i in range(1, 6)]
    async with client(store) as de:
        try:
            await collect(de.iter_updates(items, concurrency=2, skip_unchanged=True), results)
        except BaseException as e:
            outcome = e
        assert runner_tasks() == []
    # Each record's customer could not be read: that is its outcome, and nothing
    # is sent for it (the read's bug is named, as a failed read would be).
    assert outcome is None
    assert sorted(r.index for r in results) == [0, 1, 2, 3, 4]
    for r in results:
        assert isinstance(r.error, RuntimeError)
        assert "cancelled from inside the run" in str(r.error)
        assert r.attempts == 0


async def test_a_failed_batch_read_never_leaves_later_records_compared_with_a_stale_read():
    """Failed before the fix.  Two workers; the second batch's read raises
    CancelledError (a transport's bug) after a delay.  The worker holding the read
    dies; the other worker, waiting on the lock, pops the batch's records with the
    *previous* batch's ``was_read``: customer 1 is compared with what was read before
    record 0 renamed it, so its rename back is skipped as "unchanged".  Promise: one
    customer's updates land in input order (the store must end with the fold)."""
    store = Store(150)
    inner = store.answer
    reads = 0

    async def answer(request):
        nonlocal reads
        if request.method == "GET" and "customers" in request.url:
            reads += 1
            if reads == 2:
                await asyncio.sleep(0.05)  # the other worker now waits for the lock
                raise asyncio.CancelledError
        return inner(request)

    store.transport = MockTransport(answer)
    # Batch 1 (100 records): customer 1 renamed to "A", then 99 others.
    # Batch 2: customer 1 renamed back to "C1" (what the first read showed).
    items = [(1, CustomerPatch(name="A"))]
    items += [(i, CustomerPatch(name=f"x{i}")) for i in range(2, 101)]
    items += [(1, CustomerPatch(name="C1"))]
    items += [(i, CustomerPatch(name=f"y{i}")) for i in range(101, 120)]
    results = []

    async with client(store) as de:
        with contextlib.suppress(BaseException):
            await collect(de.iter_updates(items, concurrency=2, skip_unchanged=True), results)
    by_index = {r.index: r for r in results}
    late = by_index.get(100)
    if late is not None and late.ok:
        # It claims success: then the provider must show it.
        assert store.customers[1]["name"] == "C1", (
            f"record 100 says ok (changed={late.changed}) but customer 1 is "
            f"{store.customers[1]['name']!r}: compared with a stale read"
        )


async def test_an_async_input_raising_cancelled_error_midway_is_not_a_quiet_end():
    """Failed before the fix.  The caller's async generator raises CancelledError
    (not Exception) after 3 items.  The worker awaiting the input dies of it and
    the run ends *normally* with 3 results, as if the input had been exhausted:
    the caller cannot tell its input was cut short.  (The old runner let it
    propagate.)  Promise: an input that raises ends the run with that exception."""

    async def source():
        for item in updates(3):
            yield item
        raise asyncio.CancelledError  # e.g. a cancelled producer it awaited

    seen = []

    async with mock_client(ok_answer) as de:
        with pytest.raises((asyncio.CancelledError, RuntimeError)):
            await collect(de.iter_updates(source(), concurrency=2), seen)
        assert runner_tasks() == []
    assert sorted(r.index for r in seen) == [0, 1, 2]


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_sync_generator_raising_a_base_exception_propagates_it(concurrency):
    """Failed before the fix.  A plain generator raising a BaseException subclass
    is pulled inside a worker (``next_record``/take-ahead), outside any handler: the
    worker task dies with it ("Task exception was never retrieved"), the record it
    had registered is never run, and the run ends normally.  With concurrency 4 the
    third record, taken and registered, gets no result.  The old runner pulled the
    input in the consumer, so the exception reached the caller."""

    def source():
        yield from updates(3)
        raise Boom("the caller's abort")

    seen = []

    async with mock_client(ok_answer) as de:
        with pytest.raises(Boom):
            await collect(de.iter_updates(source(), concurrency=concurrency), seen)
        assert runner_tasks() == []
    assert sorted(r.index for r in seen) == [0, 1, 2]


async def test_a_sync_generator_raising_a_base_exception_leaves_no_taken_record_without_result():
    """Failed before the fix.  As above, seen from the results alone: every item the
    generator yielded before raising must have a result (or the run must raise)."""

    def source():
        yield from updates(3)
        raise Boom("the caller's abort")

    seen = []
    error = None

    async with mock_client(ok_answer) as de:
        try:
            await collect(de.iter_updates(source(), concurrency=4), seen)
        except BaseException as e:
            error = e
    assert sorted(r.index for r in seen) == [0, 1, 2], (
        f"results for {sorted(r.index for r in seen)} of 3 taken, error={error!r}"
    )


async def test_a_transport_that_swallows_one_cancellation_does_not_keep_the_run_sending():
    """Failed before the fix.  Leaving a run cancels each worker once.  A transport
    that swallows that cancellation (a bug, or Python 3.11's wait_for race) ends its
    request; the old runner's task then ended, but a slot worker goes on to take
    the *next* record and send it, and the next, so `aclose()` waits for the whole
    input.  Promise: every way of leaving ends promptly and sends nothing more."""
    sent_after_leaving = 0
    left = False

    async def handler(request):
        nonlocal sent_after_leaving
        if left:
            sent_after_leaving += 1
        try:
            await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            pass  # swallowed: a careless transport
        return ok_answer(request)

    async def leave_early(de):
        nonlocal left
        async with contextlib.aclosing(de.iter_updates(updates(200), concurrency=2)) as it:
            async for _ in it:
                left = True
                break

    async with mock_client(handler) as de:
        await asyncio.wait_for(leave_early(de), HANG_GUARD)
        assert runner_tasks() == []
    assert sent_after_leaving == 0, f"{sent_after_leaving} requests sent after the run was left"


class _ReprFails:
    def __repr__(self):
        raise RuntimeError("no repr")


class _IterFails:
    def __iter__(self):
        raise KeyError("no items")


class _StrFails(int):
    def __str__(self):
        raise RuntimeError("no text")


class _LenFails(list):
    def __len__(self):
        raise RuntimeError("no length")


@pytest.mark.parametrize(
    "item",
    [
        _ReprFails(),
        _IterFails(),
        (1, _ReprFails()),
        (_StrFails(1), CustomerPatch(name="x")),
        _LenFails([1, "not a patch"]),
    ],
    ids=["repr-fails", "iteration-fails", "non-patch-repr-fails", "str-of-id-fails", "len-fails"],
)
@pytest.mark.parametrize("skip_unchanged", [False, True])
async def test_an_item_that_cannot_even_be_described_is_its_own_invalid_record(
    item, skip_unchanged
):
    """Describing a bad item (its repr, unpacking it, writing its id) raised out of
    the whole run: one result per item, whatever the item."""
    store = Store(3)
    items = [(2, CustomerPatch(name="A")), item, (3, CustomerPatch(name="B"))]
    results: list = []
    async with client(store) as de:
        await collect(de.iter_updates(items, skip_unchanged=skip_unchanged), results)
    assert sorted((r.index, r.ok) for r in results) == [(0, True), (1, False), (2, True)]
    [bad] = [r for r in results if not r.ok]
    assert isinstance(bad.error, ValidationError)
    assert bad.attempts == 0


async def test_an_invalid_item_of_a_customer_does_not_unchain_its_valid_neighbours():
    """Failed before the fix (and on the task-per-record runner).  ``(5, "junk")`` gets key "5"
    and becomes customer 5's latest record, but one() reports it invalid *before*
    waiting for the record it follows, so it ends at once; the next record of 5
    then follows an ended record and is sent while the first one is still being
    retried: the older value lands last.  Promise: one customer's updates land in
    input order, retries included."""
    first = True

    def script(number, cid):
        nonlocal first
        if first:
            first = False
            return Reply(503, delay=0.02)  # the older line is retried...
        return Reply(delay=0.0)

    provider = ScriptedProvider(script)
    items = [
        (5, CustomerPatch(name="older")),
        (5, "junk"),  # not a patch: a ValidationError result
        (5, CustomerPatch(name="newer")),
    ]
    async with mock_client(provider) as de:
        report = await asyncio.wait_for(de.update_many(items, concurrency=3), HANG_GUARD)
    assert [r.ok for r in report.results] == [True, False, True]
    assert provider.store[5]["name"] == "newer"


async def test_a_transport_cancelling_its_own_task_does_not_lose_the_record():
    """Failed before the fix (and on the task-per-record runner).  A transport that times a
    request out by cancelling the current task (old async-timeout style, with the
    timer firing as the answer arrives) raises CancelledError with cancelling() > 0:
    the worker takes it for leaving the run, re-raises, and its record ends with no
    result, while the run goes on and ends normally.  Promise: exactly one result
    per record (or the run ends with an error)."""
    done_once = False

    async def handler(request):
        nonlocal done_once
        if request.url.endswith("/2/") and not done_once:
            done_once = True
            asyncio.current_task().cancel()
            await asyncio.sleep(0)  # the CancelledError lands here
        return ok_answer(request)

    seen = []
    error = None

    async with mock_client(handler) as de:
        try:
            await collect(de.iter_updates(updates(4), concurrency=2), seen)
        except BaseException as e:
            error = e
        assert runner_tasks() == []
    assert sorted(r.index for r in seen) == [0, 1, 2, 3] or error is not None, (
        f"results for {sorted(r.index for r in seen)} of 4 and no error"
    )


# =====================================================================================
# Held: regression tests for what the runner got right
# =====================================================================================


@pytest.mark.parametrize("concurrency", [1, 2, 7, 10**6])
@pytest.mark.parametrize("seed", range(3))
async def test_duplicates_with_failures_and_retries_end_with_the_in_order_fold(concurrency, seed):
    rng = random.Random(seed)
    items = [(rng.randrange(1, 5), CustomerPatch(name=f"line {n}")) for n in range(80)]

    def script(number, cid):
        roll = rng.random()
        if roll < 0.25:
            return Reply(500, delay=rng.random() / 300)
        if roll < 0.35:
            return Reply(drop=True)
        if roll < 0.4:
            return Reply(404)
        return Reply(delay=rng.random() / 200)

    provider = ScriptedProvider(script)

    async def slow_async():
        for item in items:
            if rng.random() < 0.3:
                await asyncio.sleep(0.001)
            yield item

    async with mock_client(provider) as de:
        for source in (items, slow_async()):
            provider.store.clear()
            report = await asyncio.wait_for(
                de.update_many(source, concurrency=concurrency), HANG_GUARD
            )
            assert [r.index for r in report.results] == list(range(80))
            applied = [(c, p) for (c, p), r in zip(items, report.results, strict=True) if r.ok]
            assert provider.store == fold(applied)
        assert runner_tasks() == []


@pytest.mark.parametrize("source", ["empty-list", "empty-async", "empty-gen"])
@pytest.mark.parametrize("concurrency", [1, 10**6])
async def test_an_empty_input_ends_at_once(source, concurrency):
    async def nothing():
        return
        yield

    def gen():
        return
        yield

    src = {"empty-list": [], "empty-async": nothing(), "empty-gen": gen()}[source]
    async with mock_client(ok_answer) as de:
        report = await asyncio.wait_for(
            de.update_many(src, concurrency=concurrency, skip_unchanged=False), HANG_GUARD
        )
        assert report.results == []
        assert runner_tasks() == []


@pytest.mark.parametrize("after", [0, 1, 2, 5])
@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_sync_generator_raising_midway_gives_every_taken_item_then_raises(
    after, concurrency
):
    closed = []

    def source():
        try:
            yield from updates(after)
            raise KeyError("input broke")
        finally:
            closed.append(True)

    seen = []

    async with mock_client(ScriptedProvider(lambda n, c: Reply(delay=0.005))) as de:
        with pytest.raises(KeyError):
            await collect(de.iter_updates(source(), concurrency=concurrency), seen)
        assert runner_tasks() == []
    assert sorted(r.index for r in seen) == list(range(after))
    assert closed == [True]


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_an_async_input_raising_midway_gives_every_taken_item_then_raises(concurrency):
    async def source():
        for item in updates(4):
            await asyncio.sleep(0.001)
            yield item
        raise KeyError("input broke")

    seen = []

    async with mock_client(ScriptedProvider(lambda n, c: Reply(delay=0.005))) as de:
        with pytest.raises(KeyError):
            await collect(de.iter_updates(source(), concurrency=concurrency), seen)
        assert runner_tasks() == []
    assert sorted(r.index for r in seen) == [0, 1, 2, 3]


async def test_cancelling_while_the_async_input_is_awaited_closes_it():
    closed = []
    blocked = asyncio.Event()

    async def source():
        try:
            for item in updates(2):
                yield item
            blocked.set()
            await asyncio.sleep(3600)
            yield (99, CustomerPatch(name="never"))
        finally:
            closed.append(True)

    async with mock_client(ok_answer) as de:
        task = asyncio.create_task(drain(de.iter_updates(source(), concurrency=4)))
        await asyncio.wait_for(blocked.wait(), HANG_GUARD)
        await asyncio.sleep(0.01)
        task.cancel()
        assert await ends(task)
        assert runner_tasks() == []
    assert closed == [True]


@pytest.mark.parametrize("skip_unchanged", [True, False])
async def test_cancelling_while_a_read_batch_is_awaited_ends_promptly(skip_unchanged):
    store = Store(10)
    inner = store.answer
    reading = asyncio.Event()

    async def answer(request):
        if request.method == "GET":
            reading.set()
            await asyncio.sleep(3600)
        return inner(request)

    store.transport = MockTransport(answer)
    closed = []

    def source():
        try:
            for i in range(1, 11):
                yield i, CustomerPatch(name="New")
        finally:
            closed.append(True)

    async with client(store) as de:
        task = asyncio.create_task(
            drain(de.iter_updates(source(), concurrency=3, skip_unchanged=True))
        )
        await asyncio.wait_for(reading.wait(), HANG_GUARD)
        task.cancel()
        assert await ends(task)
        assert runner_tasks() == []
    assert closed == [True]
    assert store.sent("PATCH") == []


@pytest.mark.parametrize("concurrency", [1, 2, 5])
async def test_leaving_while_workers_wait_for_room_ends_and_closes_the_input(concurrency):
    closed = []
    taken = 0

    def source():
        nonlocal taken
        try:
            for item in updates(500):
                taken += 1
                yield item
        finally:
            closed.append(True)

    async with mock_client(ok_answer) as de:

        async def consume():
            async with contextlib.aclosing(
                de.iter_updates(source(), concurrency=concurrency)
            ) as it:
                async for _ in it:
                    for _ in range(50):  # every worker finishes and waits for room
                        await asyncio.sleep(0)
                    break

        await asyncio.wait_for(consume(), HANG_GUARD)
        assert runner_tasks() == []
    assert closed == [True]
    assert taken <= 3 * concurrency + 1


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("source_kind", ["list", "async"])
async def test_a_slow_consumer_holds_input_back(concurrency, source_kind):
    taken = 0

    def gen():
        nonlocal taken
        for item in updates(300):
            taken += 1
            yield item

    async def agen():
        for item in gen():
            yield item

    held = consumed = 0
    async with mock_client(ok_answer) as de:
        src = gen() if source_kind == "list" else agen()
        async with contextlib.aclosing(de.iter_updates(src, concurrency=concurrency)) as it:
            async for _ in it:
                consumed += 1
                held = max(held, taken - consumed)
                for _ in range(20):
                    await asyncio.sleep(0)
    assert consumed == 300
    assert held <= 2 * concurrency + 1


@pytest.mark.parametrize("when", [1, 2, 10])
async def test_a_progress_hook_raising_with_huge_concurrency_and_async_input(when):
    closed = []

    async def source():
        try:
            for item in updates(50):
                await asyncio.sleep(0)
                yield item
        finally:
            closed.append(True)

    def hook(p):
        if p.done == when:
            raise ZeroDivisionError("hook")

    async with mock_client(ScriptedProvider(lambda n, c: Reply(delay=0.001))) as de:
        with pytest.raises(ZeroDivisionError):
            await asyncio.wait_for(
                de.update_many(source(), concurrency=10**6, progress=hook), HANG_GUARD
            )
        assert runner_tasks() == []
    assert closed == [True]


async def test_a_base_exception_from_the_transport_ends_the_run_and_leaves_no_task():
    def handler(request):
        if request.url.endswith("/3/"):
            raise Boom("transport bug")
        return ok_answer(request)

    async with mock_client(handler) as de:
        with pytest.raises(Boom):
            await asyncio.wait_for(de.update_many(updates(20), concurrency=4), HANG_GUARD)
        assert runner_tasks() == []


async def test_a_cancelled_error_from_inside_with_duplicates_waiting_on_it_does_not_hang():
    def handler(request):
        if request.url.endswith("/1/"):
            raise asyncio.CancelledError
        return ok_answer(request)

    items = [(1, CustomerPatch(name=f"v{i}")) for i in range(5)] + updates(5, start=2)
    async with mock_client(handler) as de:
        with pytest.raises(RuntimeError, match="cancelled from inside"):
            await asyncio.wait_for(de.update_many(items, concurrency=3), HANG_GUARD)
        assert runner_tasks() == []


@pytest.mark.parametrize("concurrency", [1, 8, 10**6])
async def test_a_threshold_crossed_while_workers_are_busy_reports_the_rest_not_attempted(
    concurrency,
):
    provider = ScriptedProvider(lambda n, c: Reply(500, delay=0.002))
    items = updates(40) + [(1, CustomerPatch(name="dup"))] * 5
    async with mock_client(provider) as de:
        report = await asyncio.wait_for(
            de.update_many(items, concurrency=concurrency, max_failures=3), HANG_GUARD
        )
        assert runner_tasks() == []
    results = report.results
    assert [r.index for r in results] == list(range(45))
    not_attempted = [r for r in results if isinstance(r.error, NotAttemptedError)]
    assert not_attempted
    assert all(isinstance(r.error.cause, TooManyFailuresError) for r in not_attempted)
    assert all(r.attempts == 0 for r in not_attempted)
    attempted = [r for r in results if r.attempts]
    # Busy workers may each start one more record until the 3rd failure is counted.
    assert len(attempted) <= min(concurrency, 45) + 3 - 1


async def test_a_401_stops_every_later_duplicate():
    def script(n, c):
        return Reply(401, delay=0.001) if n == 2 else Reply(delay=0.001)

    items = [(i % 3 + 1, CustomerPatch(name=f"v{i}")) for i in range(30)]
    async with mock_client(ScriptedProvider(script)) as de:
        report = await asyncio.wait_for(de.update_many(items, concurrency=4), HANG_GUARD)
    assert len(report.results) == 30
    assert sum(isinstance(r.error, NotAttemptedError) for r in report.results) >= 20


@pytest.mark.parametrize("skip_unchanged", [False, True])
async def test_a_client_closed_mid_run_reports_every_record(skip_unchanged):
    store = Store(30)
    inner = store.answer
    de = client(store)
    patches = 0

    async def answer(request):
        nonlocal patches
        await asyncio.sleep(0.001)
        if request.method == "PATCH":
            patches += 1
            if patches == 3:
                await de.aclose()
        return inner(request)

    store.transport = MockTransport(answer)
    de._transport = store.transport
    items = [(i % 30 + 1, CustomerPatch(name=f"v{i}")) for i in range(250)]
    results = []
    async with contextlib.aclosing(
        de.iter_updates(items, concurrency=4, skip_unchanged=skip_unchanged)
    ) as it:

        async def consume():
            async for r in it:
                results.append(r)

        await asyncio.wait_for(consume(), HANG_GUARD)
    assert sorted(r.index for r in results) == list(range(250))
    assert any(isinstance(r.error, NotAttemptedError) for r in results)
    assert runner_tasks() == []


@pytest.mark.parametrize("status", [500, 403])
async def test_read_batches_whose_reads_fail_give_every_record_an_error(status):
    store = Store(250)
    inner = store.answer

    def answer(request):
        if request.method == "GET":
            return Response(
                status=status, body=b'{"success": false, "errors": {"__all__": ["x"]}}'
            )
        return inner(request)

    store.transport = MockTransport(answer)
    items = [(i % 250 + 1, CustomerPatch(name="N")) for i in range(260)]
    async with client(store) as de:
        report = await asyncio.wait_for(
            de.update_many(items, concurrency=5, skip_unchanged=True), HANG_GUARD
        )
        assert runner_tasks() == []
    assert [r.index for r in report.results] == list(range(260))
    assert all(not r.ok for r in report.results)
    assert store.sent("PATCH") == []


@pytest.mark.parametrize("concurrency", [1, 3, 64])
async def test_skip_unchanged_with_duplicates_across_batches_ends_with_the_fold(concurrency):
    rng = random.Random(concurrency)
    store = Store(20)
    inner = store.answer

    async def answer(request):
        await asyncio.sleep(rng.random() / 500)
        if request.method == "PATCH" and rng.random() < 0.2:
            return Response(status=500, body=b"{}")
        return inner(request)

    store.transport = MockTransport(answer)
    names = ["C{}", "a", "b"]
    items = [
        (cid := rng.randrange(1, 21), CustomerPatch(name=rng.choice(names).format(cid)))
        for _ in range(330)
    ]

    async def agen():
        for item in items:
            if rng.random() < 0.1:
                await asyncio.sleep(0)
            yield item

    async with client(store) as de:
        report = await asyncio.wait_for(
            de.update_many(agen(), concurrency=concurrency, skip_unchanged=True), HANG_GUARD
        )
        assert runner_tasks() == []
    assert [r.index for r in report.results] == list(range(330))
    # The last record of each customer, if ok, is what the store shows.
    last = {}
    for (cid, patch), r in zip(items, report.results, strict=True):
        last[cid] = (patch, r)
    for cid, (patch, r) in last.items():
        if r.ok:
            assert store.customers[cid]["name"] == patch.name, (cid, r)


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_skip_unchanged_with_an_async_input_raising_midway_batch(concurrency):
    store = Store(150)

    async def source():
        for i in range(1, 131):
            if i % 17 == 0:
                await asyncio.sleep(0)
            yield i, CustomerPatch(name="New")
        raise KeyError("input broke")

    seen = []

    async with client(store) as de:
        with pytest.raises(KeyError):
            await collect(
                de.iter_updates(source(), concurrency=concurrency, skip_unchanged=True), seen
            )
        assert runner_tasks() == []
    assert sorted(r.index for r in seen) == list(range(130))


async def test_match_on_with_leaving_during_the_lookups_ends_promptly():
    store = Store(6)
    for cid, c in store.customers.items():
        c["unique_id"] = f"K{cid}"
    inner = store.answer
    looking = asyncio.Event()

    async def answer(request):
        if request.method == "GET" and "unique_id=K5" in request.url:
            looking.set()
            await asyncio.sleep(3600)
        return inner(request)

    store.transport = MockTransport(answer)
    items = [(f"K{i % 6 + 1}", CustomerPatch(name=f"v{i}")) for i in range(40)]
    async with client(store) as de:
        task = asyncio.create_task(
            drain(de.iter_updates(items, concurrency=3, match_on="unique_id"))
        )
        await asyncio.wait_for(looking.wait(), HANG_GUARD)
        task.cancel()
        assert await ends(task)
        assert runner_tasks() == []
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert all(t.done() for t in leftovers) or leftovers == []


@pytest.mark.parametrize("concurrency", [1, 2, 16])
async def test_match_on_with_duplicates_ends_with_the_last_value(concurrency):
    store = Store(6)
    for cid, c in store.customers.items():
        c["unique_id"] = f"K{cid}"
    items = [(f"k{i % 6 + 1}", CustomerPatch(name=f"v{i}")) for i in range(60)]
    async with client(store) as de:
        report = await asyncio.wait_for(
            de.update_many(items, concurrency=concurrency, match_on="unique_id"), HANG_GUARD
        )
    assert all(r.ok for r in report.results), [r.error for r in report.results if not r.ok][:3]
    for cid in range(1, 7):
        assert store.customers[cid]["name"] == f"v{54 + cid - 1}"


@pytest.mark.parametrize("concurrency", [2.5, 0, True, "4"])
async def test_a_concurrency_that_is_not_a_whole_number_is_refused(concurrency):
    """2.5 would not bound anything (a semaphore of 2.5 never blocks)."""
    async with mock_client(lambda r: Response(status=200, body=b"{}")) as de:
        with pytest.raises((ValueError, TypeError), match="concurrency must be a whole number"):
            [r async for r in de.iter_updates([], concurrency=concurrency)]
