"""Pacing one client's requests to its provider's rate limits.

Three things, one object per client, shared by every concurrent update:

* the declared limits (token buckets, as data from the adapter or the user);
* one shared pause: a 429 with ``Retry-After`` holds *every* request of the
  client until then, not just the one that was refused;
* an adaptive ceiling that engages on 429s: it drops to just under the rate
  the provider was actually accepting, then probes upward again.  For a
  provider that documents no numbers it starts low and doubles each second
  (slow start) until the first 429, so an unknown limit is found without
  hammering it.

Buckets use GCRA, the token bucket written as one "theoretical arrival
time" per bucket: it needs no timer task and no waiter queue, and its rate
can change between two requests.  (aiolimiter, the usual choice, offers
neither a rate change nor a shared pause through its public API.)
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from customer_patch._http import RateLimit

log = logging.getLogger("customer_patch.pacing")


class _Bucket:
    """GCRA: the theoretical arrival time (``tat``) of the next slot handed out;
    for a declared limit also one (``sent``) counting requests when they
    actually went, at the provider's rate, which a slot whose time passed
    long ago must still fit (see :meth:`Pacer._room_at`)."""

    __slots__ = ("interval", "sent", "sent_interval", "sent_tolerance", "tat", "tolerance")

    def __init__(
        self, burst: int, per_second: float, sent: tuple[int, float] | None = None
    ) -> None:
        self.tat = -math.inf
        self.set_rate(burst, per_second)
        self.sent = -math.inf
        if sent is None:  # a ceiling of the pacer's own: no provider's bucket to fit
            self.sent_interval, self.sent_tolerance = 0.0, math.inf
        else:
            self.sent_interval = 1.0 / sent[1]
            self.sent_tolerance = (sent[0] - 1) * self.sent_interval

    def set_rate(self, burst: int, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self.tolerance = (burst - 1) * self.interval

    def earliest(self, now: float) -> float:
        return max(self.tat, now) - self.tolerance

    def commit(self, send_at: float) -> None:
        self.tat = max(self.tat, send_at) + self.interval

    def count_sent(self, now: float) -> None:
        self.sent = max(self.sent, now) + self.sent_interval


class _Adaptive:
    """The 429-driven ceiling: a cut to just under what got through, then a climb back.

    The climb is quick while below the rate that held before the 429s began
    (doubling each second, as TCP's slow start does), and slow above it
    (probing for a raised limit).  A storm of 429s with nothing getting
    through says nothing about the provider's rate, so it does not lower
    where the climb returns to: the pace is back within seconds of the
    provider allowing it.
    """

    WINDOW = 1.0  # seconds of successes that estimate what the provider accepts
    MIN_SPAN = 0.25  # a shorter sample (right after a pause) is not trusted
    KEEP = 4096  # successes kept before trimming (more if the window holds more)
    RECENT = 20  # answers over which the share of 429s is judged
    REFUSED = 5  # 429s without a pause among them that show a limit being hit: 25%,
    # which 5% of stray 429s reach by chance about once in 400 checks
    CUT = 0.9  # below the measured accepted rate, to drain the provider's bucket
    PROBE = 1.01  # per second of being throttled, above the rate that held: a
    # provider whose 429s pause everything makes each overshoot cost a second
    START_RATE = 20.0  # where an unknown limit's slow start begins
    MIN_RATE = 0.1

    def __init__(self, *, start_slow: bool, now: float) -> None:
        self.bucket: _Bucket | None = _Bucket(1, self.START_RATE) if start_slow else None
        self.rate = self.START_RATE if start_slow else math.inf
        self.recover_to = math.inf  # below this the climb doubles; above, it probes
        self.throttled = False
        self._successes: collections.deque[float] = collections.deque()
        self._keep = self.KEEP
        self._recent: collections.deque[bool] = collections.deque(maxlen=self.RECENT)
        self._last_change = now
        self._quiet_until = -math.inf
        self._pause_end = -math.inf
        self._created = now

    def on_success(self, now: float) -> None:
        self._recent.append(False)
        successes = self._successes
        successes.append(now)
        # Trimmed in bulk, not per success (on_rate_limited trims exactly before
        # it counts, so only memory depends on this): at most twice what the
        # window holds, or KEEP.
        if len(successes) > self._keep:
            while successes and successes[0] < now - self.WINDOW:
                successes.popleft()
            self._keep = max(self.KEEP, 2 * len(successes))
        # Only raise the ceiling when it held requests back: an idle client
        # must not "earn" an unlimited rate by waiting.
        if self.bucket is not None and self.throttled and now - self._last_change >= 1.0:
            if self.rate < self.recover_to:
                self._set(min(self.rate * 2.0, self.recover_to), now)
            else:
                self._set(self.rate * self.PROBE, now)
            self.throttled = False

    def on_rate_limited(self, now: float, pause_end: float) -> None:
        self._recent.append(True)
        # A 429 that asks for a pause holds every request of the client: worth
        # slowing down so the next one does not come.  One that asks for no
        # pause costs only its own retry; a few among many successes (faults,
        # another client's burst) say nothing of the rate, and cutting on each
        # would sink the pace for good, so those cut only as a real share.
        if pause_end <= now and sum(self._recent) < self.REFUSED:
            return
        if now < self._quiet_until:
            return  # answers to requests sent before the last cut
        # What got through since the last pause ended: a window spanning the
        # pause would count its silence as the provider's limit.
        since = max(now - self.WINDOW, self._pause_end, self._created)
        while self._successes and self._successes[0] < since:
            self._successes.popleft()
        span = now - since
        accepted = len(self._successes) / span if span >= self.MIN_SPAN else 0.0
        if accepted > 0:
            # Evidence of the provider's rate: climb back to just under it.
            target = self.CUT * accepted
            if math.isfinite(self.rate):
                target = min(target, self.CUT * self.rate)
            self.recover_to = target
        else:
            # Nothing got through: back off, but remember where things worked.
            target = self.rate / 2 if math.isfinite(self.rate) else self.START_RATE
            if self.recover_to == math.inf or self.rate > self.recover_to:
                self.recover_to = self.CUT * self.rate if math.isfinite(self.rate) else math.inf
        self._set(max(self.MIN_RATE, target), now)
        if pause_end > now:  # a real pause: its silence must not count as the rate
            self._pause_end = pause_end
        self._quiet_until = max(pause_end, now) + 1.0

    def _set(self, rate: float, now: float) -> None:
        log.debug("pace set to %.2f requests/s", rate)
        self.rate = rate
        self._last_change = now
        if self.bucket is None:
            self.bucket = _Bucket(1, rate)
        else:
            self.bucket.set_rate(1, rate)


class Pacer:
    """Decides when each request of one client may go."""

    HEADROOM = 0.98
    SENT_HEADROOM = 0.99  # see _room_at
    JITTER = 0.05

    def __init__(
        self,
        limits: Sequence[RateLimit],
        *,
        start_slow: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        """``start_slow`` (default: when there are no ``limits``) probes an unknown
        limit from a low rate up; otherwise the pace is free until the first 429.
        ``clock`` and ``sleep`` are the seam where tests put a fake time."""
        self._clock = clock
        self._sleep = sleep
        # Pacing exactly at the provider's bucket leaves it empty, and then any
        # jitter that bunches requests costs a 429.  So keep tokens in hand for
        # 50 ms of jitter (at least one; connection set-up alone delays the
        # first requests by milliseconds), and run 2% under the rate so the
        # provider's bucket refills over time.
        self._buckets = [self._bucket(limit) for limit in limits if not limit.per_route]
        # Per-route limits get their buckets when their route is first used.
        self._route_limits = [limit for limit in limits if limit.per_route]
        self._routes: dict[str, list[_Bucket]] = {}
        # With declared limits the ceiling waits for a 429; without, it starts slow.
        self._adaptive = _Adaptive(
            start_slow=not limits if start_slow is None else start_slow, now=clock()
        )
        self._paused_until = -math.inf
        # Per route: the requests whose slot came, waiting for room, in order.
        self._held: dict[str, collections.deque[int]] = {}
        self._tickets = itertools.count()
        self.closed = False
        self._naps: set[asyncio.Task[Any]] = set()  # the waits close() ends

    def close(self) -> None:
        """End every wait now and for good: :meth:`sleep` returns at once, and an
        :meth:`acquire` that would wait returns ``False`` (nothing reserved).  The
        client that owns the pacer is closed, and checks that itself before it
        sends: a request waiting its turn is not to be sent."""
        self.closed = True
        for nap in self._naps:
            nap.cancel()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` (through the ``sleep`` given), or less if :meth:`close`
        is called meanwhile.  Every wait of the client goes through here."""
        if self.closed:
            return
        # The wait runs in a task of its own, which close() can cancel without
        # touching the caller's task (one set entry each: no callback lists
        # that thousands of waiters would make slow to leave).
        nap = asyncio.ensure_future(self._sleep(seconds))
        if isinstance(nap, asyncio.Task):  # named as the bulk runner's tasks are
            nap.set_name("customer-patch pacer wait")
        self._naps.add(nap)
        try:
            await nap
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not (
                self.closed and nap.cancelled() and task is not None and not task.cancelling()
            ):
                raise  # the caller's own cancellation
        finally:
            self._naps.discard(nap)
            nap.cancel()

    def _bucket(self, limit: RateLimit) -> _Bucket:
        return _Bucket(
            max(1, limit.burst - max(1, math.ceil(limit.per_second * self.JITTER))),
            limit.per_second * self.HEADROOM,
            (limit.burst, limit.per_second * self.SENT_HEADROOM),
        )

    @property
    def rate(self) -> float | None:
        """The sustained rate the pacer allows now, or ``None`` when unpaced."""
        rates = [1.0 / b.interval for b in self._buckets]
        rates += [limit.per_second * self.HEADROOM for limit in self._route_limits]
        if self._adaptive.bucket is not None:
            rates.append(self._adaptive.rate)
        return min(rates) if rates else None

    def free(self, deadline: float = math.inf) -> bool:
        """Whether a request may go now without reserving anything: nothing paces
        this client (no declared limit, no 429 yet) and no pause holds it.  When
        ``False``, :meth:`acquire` decides."""
        return (
            not self._buckets
            and not self._route_limits
            and self._adaptive.bucket is None
            and self._paused_until <= self._clock() <= deadline
        )

    async def acquire(self, deadline: float = math.inf, *, route: str = "") -> bool:
        """Wait until one more request of ``route`` may be sent; ``False`` if that
        would be after ``deadline`` (a time of ``clock``): at once, nothing
        reserved, when its slot would come later; when it sees so, if a stall of
        the loop held it past its slot (see :meth:`_room_at`); and, with the
        pacer closed, at once."""
        if self.free(deadline):
            return True
        if self.closed:
            return False
        buckets = self._buckets
        if self._route_limits:
            route_buckets = self._routes.get(route)
            if route_buckets is None:
                route_buckets = self._routes[route] = [self._bucket(x) for x in self._route_limits]
            buckets = [*buckets, *route_buckets]
        while True:
            send_at = self._reserve(deadline, buckets)
            if send_at is None:
                return False
            if await self._wait_until(send_at):
                if not buckets:  # nothing declared: the adaptive ceiling alone
                    return True
                # Held until each declared bucket has room (see _room_at), in
                # the order their slots came, per route: each wakes about when
                # its turn comes, not all at once for one of them to go.
                key = route if self._route_limits else ""
                held = self._held.setdefault(key, collections.deque())
                ticket = next(self._tickets)
                held.append(ticket)
                try:
                    while not self.closed and self._paused_until <= (now := self._clock()):
                        if now > deadline:  # woken past it (a stall): it would go late
                            return False
                        at = self._room_at(now, buckets)
                        place = held.index(ticket)
                        if at <= now and place == 0:
                            for bucket in buckets:
                                bucket.count_sent(now)
                            return True
                        if at > deadline or now == deadline:
                            return False
                        turn = at + place * min(bucket.sent_interval for bucket in buckets)
                        if not await self._wait_until(min(turn, deadline)):
                            break
                finally:
                    held.remove(ticket)
                    if not held:
                        del self._held[key]
            if self.closed:
                return False
            # A 429 arrived meanwhile: take a new slot after its pause.

    @staticmethod
    def _room_at(now: float, buckets: list[_Bucket]) -> float:
        """When each declared bucket, counting the requests when they actually
        went, has room for one more: ``now`` if it has.

        Slots are taken ahead, so a loop blocked past several of them (a GC
        pause, a busy machine, a laptop's sleep) would send their requests
        together, and the provider would refuse all but its burst.  So the
        requests must also fit each declared bucket by when they went: its
        whole burst (the tokens the slots keep in hand would make each wait
        here add its own wake-up's lateness: measured 12% slower at 200/s),
        at 1% under its rate (the slots' 2% absorbs the small lateness of
        each wake-up, and no request goes at the very edge)."""
        at = now
        for bucket in buckets:
            at = max(at, bucket.sent - bucket.sent_tolerance)
        return at

    async def _wait_until(self, at: float) -> bool:
        """Sleep until ``at`` (a time of ``clock``); ``False`` if the pacer is
        closed meanwhile, or a 429 pauses the client past ``at``."""
        while (delay := at - self._clock()) > 0:
            await self.sleep(delay)
            if self.closed or self._paused_until > at:
                return False
        return True

    def _reserve(self, deadline: float, buckets: list[_Bucket]) -> float | None:
        now = self._clock()
        # Slots are spaced from the end of any pause, so the requests it held
        # leave one by one rather than all at once into the provider's bucket.
        send_at = max(now, self._paused_until)
        for bucket in buckets:
            send_at = max(send_at, bucket.earliest(send_at))
        adaptive = self._adaptive
        if adaptive.bucket is not None:
            ceiling = adaptive.bucket.earliest(send_at)
            if ceiling > send_at:
                # The ceiling itself held this request: only then may it rise.
                adaptive.throttled = True
                send_at = ceiling
            buckets = [*buckets, adaptive.bucket]
        if send_at > deadline:
            return None  # the slot stays free for a request that can still use it
        for bucket in buckets:
            bucket.commit(send_at)
        return send_at

    def pause(self, seconds: float) -> None:
        """Hold every request of this client for ``seconds`` from now."""
        if seconds <= 0:
            return  # "Retry-After: 0" asks for no pause
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def on_success(self) -> None:
        self._adaptive.on_success(self._clock())

    def on_rate_limited(self, pause: float) -> None:
        """A 429 arrived: pause everyone for ``pause`` seconds and lower the ceiling."""
        self.pause(pause)
        self._adaptive.on_rate_limited(self._clock(), self._paused_until)
