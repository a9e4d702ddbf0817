"""Bulk updates and retries against a scripted provider.

The client's logic (bookkeeping, retries, pacing) is tested behind a
``MockTransport``; a real server on loopback only where aiohttp is the point
(a caller's own session).
"""

import asyncio
import time

import pytest

from customer_patch import (
    AuthenticationError,
    Client,
    CustomerPatch,
    NotAttemptedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimit,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    TransportError,
    UnsupportedFieldError,
    ValidationError,
)
from customer_patch.testing import MockTransport
from tests.helpers import TOKEN, loopback_client, mock_client, updates
from tests.scripted_server import Reply, ScriptedProvider, ok, scripted


async def test_every_record_gets_exactly_one_result():
    failed_once = set()

    def script(number, cid):
        if cid % 10 == 0:
            return Reply(404, {"success": False, "errors": {"__all__": ["Not found."]}})
        if cid % 7 == 0 and cid not in failed_once:
            failed_once.add(cid)
            return Reply(503)  # fails once, then succeeds on retry
        return Reply()

    items = updates(100) + [(101, CustomerPatch(type="company")), ("x", CustomerPatch(name="A"))]
    provider = ScriptedProvider(script)
    async with mock_client(provider) as de:
        report = await de.update_many(items, concurrency=8)
    results = report.results
    assert [r.index for r in results] == list(range(102))
    assert [r.customer_id for r in results] == [cid for cid, _ in items]
    assert {r.customer_id for r in report.failed} == {
        10,
        20,
        30,
        40,
        50,
        60,
        70,
        80,
        90,
        100,
        101,
        "x",
    }
    for r in report.failed:
        expected = {101: UnsupportedFieldError, "x": ValidationError}.get(
            r.customer_id, NotFoundError
        )
        assert type(r.error) is expected
    sevens = [r for r in report.succeeded if r.customer_id % 7 == 0]
    assert sevens
    assert all(r.attempts == 2 for r in sevens)
    assert all(r.customer.name == f"N{r.customer_id}" for r in report.succeeded)
    assert provider.count == 100 + len(sevens)  # nothing sent for the two invalid records


async def test_in_flight_is_bounded_by_concurrency():
    provider = ScriptedProvider(lambda n, c: Reply(delay=0.02))
    async with mock_client(provider) as de:
        report = await de.update_many(updates(60), concurrency=5)
    assert len(report.succeeded) == 60
    assert provider.max_in_flight == 5


async def test_input_is_consumed_lazily():
    pulled = 0
    high_water = 0

    def source():
        nonlocal pulled
        for item in updates(40):
            pulled += 1
            yield item

    provider = ScriptedProvider(lambda n, c: Reply(delay=0.01))
    async with mock_client(provider) as de:
        async for result in de.iter_updates(source(), concurrency=4):
            high_water = max(high_water, pulled - (result.index + 1))
    # Items taken but not yet reported: in flight plus the few parked in the queue.
    assert pulled == 40
    assert high_water <= 2 * 4


async def test_async_iterables_work_and_total_comes_from_len():
    async def source():
        for item in updates(5):
            yield item

    seen = []
    async with mock_client(ScriptedProvider(ok)) as de:
        report = await de.update_many(source(), concurrency=2, progress=seen.append)
        assert len(report.succeeded) == 5
        await de.update_many(updates(3), progress=seen.append)
    assert [p.done for p in seen] == [1, 2, 3, 4, 5, 1, 2, 3]
    assert [p.total for p in seen] == [None] * 5 + [3] * 3
    assert all(p.last.ok for p in seen)


async def test_progress_hook_may_be_a_bound_method():
    class Bar:
        def __init__(self):
            self.calls = []

        def on_progress(self, progress):
            self.calls.append((progress.done, progress.failed, progress.rate >= 0))

    bar = Bar()
    async with mock_client(ScriptedProvider(ok)) as de:
        await de.update_many(updates(3) + [(0, CustomerPatch(name="x"))], progress=bar.on_progress)
    assert [done for done, _, _ in bar.calls] == [1, 2, 3, 4]
    assert bar.calls[-1][1] == 1  # the invalid record, reported without a request
    assert all(rate_ok for _, _, rate_ok in bar.calls)


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
async def test_other_4xx_are_never_retried(status):
    provider = ScriptedProvider(lambda n, c: Reply(status, {"success": False, "errors": {}}))
    async with mock_client(provider) as de:
        report = await de.update_many(updates(1))
    [result] = report.failed
    assert result.attempts == 1
    assert result.error.status == status
    assert provider.count == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(status):
    script = lambda n, c: Reply(status, {"success": False, "errors": {}}) if n < 2 else Reply()
    provider = ScriptedProvider(script)
    async with mock_client(provider) as de:
        customer = await de.update(1, CustomerPatch(name="A"))
    assert customer.name == "A"
    assert provider.count == 3


async def test_attempts_are_bounded_and_the_last_error_is_reported():
    provider = ScriptedProvider(lambda n, c: Reply(500))
    async with mock_client(provider, retry=RetryPolicy(attempts=3)) as de:
        report = await de.update_many(updates(1))
    [result] = report.failed
    assert isinstance(result.error, ServerError)
    assert result.attempts == 3
    assert provider.count == 3


async def test_dropped_connections_are_retried():
    script = lambda n, c: Reply(drop=True) if n == 0 else Reply()
    provider = ScriptedProvider(script)
    async with mock_client(provider) as de:
        assert (await de.update(1, CustomerPatch(name="A"))).name == "A"
    assert provider.count == 2


async def test_retry_none_means_one_attempt():
    provider = ScriptedProvider(lambda n, c: Reply(drop=True))
    async with mock_client(provider, retry=None) as de:
        with pytest.raises(TransportError):
            await de.update(1, CustomerPatch(name="A"))
    assert provider.count == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(status):
    """A 429's pause holds the whole client; a 503's wait, that request: both honour it."""
    script = lambda n, c: Reply(status, {}, headers={"Retry-After": "0.4"}) if n == 0 else Reply()
    provider = ScriptedProvider(script)
    async with mock_client(provider) as de:
        await de.update(1, CustomerPatch(name="A"))
    (first, _), (second, _) = provider.arrivals
    assert second - first >= 0.4


async def test_a_429_pauses_every_worker_of_the_client():
    def script(number, cid):
        if number == 3:
            return Reply(429, {}, headers={"Retry-After": "0.5"})
        return Reply(delay=0.01)

    provider = ScriptedProvider(script)
    paused_at = []
    async with mock_client(provider) as de:
        pause = de._pacer.pause
        de._pacer.pause = lambda seconds: (paused_at.append(time.monotonic()), pause(seconds))
        report = await de.update_many(updates(30), concurrency=4)
    assert len(report.succeeded) == 30
    assert len(paused_at) == 1
    # Requests the pacer let go before the 429 was read may land after it;
    # none it let go later, whatever the scheduling: the mock transport
    # records an arrival in the same step as the pacer lets its request go.
    held = [t for t, _ in provider.arrivals if paused_at[0] < t < paused_at[0] + 0.5]
    assert held == []


async def test_retry_after_is_capped():
    script = lambda n, c: Reply(429, {}, headers={"Retry-After": "3600"}) if n == 0 else Reply()
    paused = []
    async with mock_client(ScriptedProvider(script), retry=RetryPolicy(max_retry_after=0.2)) as de:
        pause = de._pacer.pause
        de._pacer.pause = lambda seconds: (paused.append(seconds), pause(seconds))
        await de.update(1, CustomerPatch(name="A"))
    assert paused == [0.2]


async def test_a_401_stops_the_run_and_reports_the_rest_as_not_attempted():
    body = {
        "success": False,
        "errors": {"__all__": ["Authentication credentials were not provided."]},
    }
    provider = ScriptedProvider(lambda n, c: Reply(401, body, delay=0.01))
    async with mock_client(provider) as de:
        report = await de.update_many(updates(500), concurrency=4)
    assert not report.succeeded
    assert len(report.failed) == 500
    auth = [r for r in report.failed if isinstance(r.error, AuthenticationError)]
    skipped = [r for r in report.failed if isinstance(r.error, NotAttemptedError)]
    assert 1 <= len(auth) <= 4
    assert len(auth) + len(skipped) == 500
    assert all(r.attempts == 0 for r in skipped)
    assert all(isinstance(r.error.cause, AuthenticationError) for r in skipped)
    assert provider.count == len(auth)


async def test_cancelling_stops_cleanly():
    closed = asyncio.Event()
    results = []

    def source():
        try:
            yield from updates(1000)
        finally:
            closed.set()

    async def consume(de):
        async for result in de.iter_updates(source(), concurrency=4):
            results.append(result)

    provider = ScriptedProvider(lambda n, c: Reply(delay=0.05))
    async with mock_client(provider) as de:
        task = asyncio.create_task(consume(de))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sent_at_cancel = provider.count
        await asyncio.sleep(0.2)
        assert provider.count == sent_at_cancel  # nothing more is sent
    assert closed.is_set()  # the caller's generator was closed
    assert 0 < len(results) < 1000
    assert all(r.ok for r in results)
    # What was yielded is exactly what is done: a prefix-free set of distinct records.
    assert len({r.index for r in results}) == len(results)


async def test_declared_rate_limits_pace_requests():
    provider = ScriptedProvider(ok)
    async with mock_client(provider, rate_limit=RateLimit(burst=2, per_second=10)) as de:
        await de.update_many(updates(6), concurrency=6)
        assert de._pacer.rate == pytest.approx(9.8)  # 2% under, no slower
    times = [t for t, _ in provider.arrivals]
    # Burst 2 less one token kept in hand, then 2% under 10/s: five gaps of
    # at least 0.102 s.  Twice the rate would take half that.
    assert times[-1] - times[0] >= 0.5


async def test_the_adapters_declared_limits_apply_by_default():
    provider = ScriptedProvider(ok)
    # No rate_limit=: the client paces to what the adapter declares.
    async with Client("dualentry", token=TOKEN, transport=MockTransport(provider)) as de:
        # DualEntry: burst 10, then 1/s for PATCH customers, paced 2% under it.
        assert de._pacer.rate == pytest.approx(0.98)
        started = time.monotonic()
        await de.update_many(updates(11), concurrency=11)
    assert time.monotonic() - started >= 0.9


async def test_iter_updates_rejects_bad_concurrency():
    async with mock_client(ScriptedProvider(ok)) as de:
        with pytest.raises(ValueError, match="concurrency"):
            async for _ in de.iter_updates(updates(1), concurrency=0):
                pass


async def test_an_input_that_raises_is_reraised_after_reporting_what_was_taken():
    def source():
        yield from updates(3)
        raise RuntimeError("bad input file")

    results = []
    async with mock_client(ScriptedProvider(ok)) as de:
        with pytest.raises(RuntimeError, match="bad input file"):
            async for result in de.iter_updates(source(), concurrency=2):
                results.append(result)
    assert sorted(r.customer_id for r in results) == [1, 2, 3]


async def test_a_bug_in_an_adapter_still_gives_each_record_its_result():
    from customer_patch_dualentry import DualEntryAdapter

    class Buggy(DualEntryAdapter):
        def prepare_update(self, customer_id, patch):
            if customer_id == 2:
                raise RuntimeError("adapter bug")
            return super().prepare_update(customer_id, patch)

    provider = ScriptedProvider(ok)
    async with mock_client(provider, Buggy()) as de:
        report = await de.update_many(updates(3))
    assert [r.customer_id for r in report.succeeded] == [1, 3]
    [failed] = report.failed
    assert isinstance(failed.error, RuntimeError)
    assert provider.count == 2


async def test_a_worker_killed_by_a_base_exception_never_hangs_the_run():
    from customer_patch_dualentry import DualEntryAdapter

    class Fatal(BaseException):
        pass

    class Doomed(DualEntryAdapter):
        def prepare_update(self, customer_id, patch):
            if customer_id == 2:
                raise Fatal
            return super().prepare_update(customer_id, patch)

    async with mock_client(ScriptedProvider(ok), Doomed()) as de:
        with pytest.raises(Fatal):
            await asyncio.wait_for(de.update_many(updates(5), concurrency=2), 5)


async def test_a_callers_session_that_raises_on_errors_does_not_change_what_is_retried():
    import aiohttp

    body = {"success": False, "errors": {"__all__": ["Invalid API key."]}}
    async with scripted(lambda n, c: Reply(403, body)) as (base, server):
        async with aiohttp.ClientSession(raise_for_status=True) as session:
            async with loopback_client(base, session=session) as de:
                report = await de.update_many(updates(3), concurrency=1)
    assert isinstance(report.failed[0].error, PermissionDeniedError)
    assert server.count == 1  # a 403 is final, and it stops the run


async def test_a_429_pauses_the_client_even_with_retries_off():
    script = lambda n, c: Reply(429, {}, headers={"Retry-After": "0.5"}) if n == 0 else Reply()
    provider = ScriptedProvider(script)
    async with mock_client(provider, retry=None) as de:
        with pytest.raises(RateLimitedError):
            await de.update(1, CustomerPatch(name="A"))
        await de.update(2, CustomerPatch(name="B"))
    (first, _), (second, _) = provider.arrivals
    assert second - first >= 0.5


@pytest.mark.real_waits
def test_full_jitter_backoff_stays_within_its_ceiling():
    policy = RetryPolicy(wait_initial=0.5, wait_max=3.0)
    for retry in range(1, 10):
        ceiling = min(3.0, 0.5 * 2 ** (retry - 1))
        waits = [policy.backoff(retry) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 2  # jitter spans the range, not a constant


@pytest.mark.real_waits
async def test_the_time_budget_per_update_is_enforced_with_real_waits():
    provider = ScriptedProvider(lambda n, c: Reply(500))
    policy = RetryPolicy(attempts=1000, timeout=0.6, wait_initial=0.05, wait_max=0.1)
    async with mock_client(provider, retry=policy) as de:
        started = time.monotonic()
        with pytest.raises(ServerError):
            await de.update(1, CustomerPatch(name="A"))
        elapsed = time.monotonic() - started
    assert elapsed < 2
    assert 2 < provider.count < 1000


async def test_several_rate_limits_are_all_kept():
    limits = [RateLimit(burst=20, per_second=100), RateLimit(burst=2, per_second=10)]
    provider = ScriptedProvider(ok)
    async with mock_client(provider, rate_limit=limits) as de:
        await de.update_many(updates(6), concurrency=6)
    times = [t for t, _ in provider.arrivals]
    assert times[-1] - times[0] >= 0.45  # the tighter bucket governs
