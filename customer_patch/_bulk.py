"""Bulk updates: many records, run concurrently at the provider's pace.

The input is pulled one item at a time, only when one of ``concurrency``
slots is free, so a generator of a million updates never has more than
``concurrency`` of them in flight or in memory, and every item taken produces
exactly one :class:`UpdateResult`.  Updates to one customer are applied in
input order.  A 401 or 403 stops the run (every later record would fail the
same way), and so can a failure threshold: the records left are reported as
not attempted instead of sent.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sized,
)
from typing import Any, TypeAlias

import attrs
from attrs import field, frozen

from customer_patch._checks import check_hook, check_whole
from customer_patch._errors import (
    AuthenticationError,
    NotAttemptedError,
    NotFoundError,
    PermissionDeniedError,
    Problem,
    ProviderError,
    ResponseFormatError,
    TooManyFailuresError,
    TransportError,
    UnknownCustomFieldError,
    UnsupportedFieldError,
    ValidationError,
    quoted,
)
from customer_patch._model import (
    _EXTERNAL_ID_FIELDS,
    _PATCH_FIELDS,
    UNSET,
    Customer,
    CustomerId,
    CustomerPatch,
    ExternalIds,
    _custom_key,
    _read_value,
)

Update: TypeAlias = tuple[CustomerId, CustomerPatch]
Updates: TypeAlias = Iterable[Update] | AsyncIterable[Update]
"""What the bulk methods take: ``(customer_id, patch)`` pairs, plain or async."""


@frozen(kw_only=True, slots=False)  # one built per record: see Customer
class UpdateResult:
    """What happened to one record of a bulk run."""

    index: int
    """The record's position in the input, from 0."""
    customer_id: Any
    """The customer id as given in the input."""
    patch: CustomerPatch | None = field(repr=False)
    """The patch as given, or ``None`` when the input item was not a pair."""
    customer: Customer | None = None
    """The customer as the provider returned it, on success; for a record with
    nothing to change (``changed`` false), the customer as read; in a plan
    (:meth:`Client.iter_plan`), the customer as it should read afterwards."""
    error: Exception | None = None
    """The typed error, on failure; :class:`NotAttemptedError` if never sent.
    (An exception that is not a :class:`CustomerPatchError` means a bug, and is
    reported here rather than lost.)"""
    attempts: int = 0
    """Requests sent for this record (0 when it failed validation or was not attempted)."""
    changed: bool = True
    """``False`` when nothing was sent because nothing needed to be
    (``skip_unchanged``: the customer already had every value; the record is
    then ``ok``), and also when the customer could not be read or matched
    (``skip_unchanged``, ``match_on``: the record then has that ``error``)."""
    before: Customer | None = None
    """With ``skip_unchanged`` or ``match_on``: the customer the record was compared
    with, as read (or as an earlier record of that customer left it, or read again
    after that record's write failed); ``None`` without them, or when the
    customer could not be read."""
    sent: CustomerPatch | None = field(default=None, repr=False)
    """What was sent, or was to be sent when it failed: the patch, or with
    ``skip_unchanged`` only what differed (in a plan: what would be sent).
    ``None`` when the record ended before that: nothing to change, a customer
    that could not be read, a whole patch refused before the comparison."""

    @property
    def ok(self) -> bool:
        """Whether the update succeeded."""
        return self.error is None


@frozen(kw_only=True)
class BulkReport:
    """Every result of a bulk run, split by outcome, each list in input order."""

    succeeded: list[UpdateResult]
    """The results that succeeded, in input order."""
    failed: list[UpdateResult]
    """The results that failed (or were not attempted), in input order."""

    @property
    def results(self) -> list[UpdateResult]:
        """Every result, in input order."""
        return sorted(self.succeeded + self.failed, key=lambda r: r.index)


@frozen(kw_only=True)
class Progress:
    """A snapshot handed to a progress hook after each result."""

    done: int
    """Results so far."""
    succeeded: int
    """Of which succeeded."""
    failed: int
    """Of which failed."""
    total: int | None
    """The number of records, when the input has a ``len()`` or ``total=`` was given."""
    rate: float
    """Records finished per second, over the last few seconds."""
    last: UpdateResult
    """The result that was just recorded, so a hook can tell which records are done."""
    stopped: BaseException | None = None
    """Why the run stopped sending (a 401/403, ``max_failures`` or
    ``max_consecutive_failures``), once it has: every record it takes from then
    on is :class:`NotAttemptedError`.  A source that may wait for its next item
    (a queue, a pipe) is the caller's to end here; the run still takes every
    item it is given."""


ProgressCallback: TypeAlias = Callable[[Progress], None]
"""A progress hook: called with a fresh :class:`Progress` after each result
(a bound method does for an object that keeps state)."""


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


_Send: TypeAlias = Callable[
    [Any, CustomerPatch], Awaitable[tuple[Customer | None, Exception | None, int]]
]


BeforeWrite: TypeAlias = Callable[[Any, Customer, CustomerPatch], None]
"""Called just before a record's write is sent: ``(customer_id, before, changes)``."""
_Read: TypeAlias = Callable[[list[Any]], Awaitable[Mapping[Any, Any]]]
"""Reads customers by id: ``read_key(id)`` -> the Customer, or the error why not."""
_END: Any = object()


def read_key(customer_id: Any) -> Any:
    """The key of a customer id among what was read: exact, unlike
    :func:`customer_key` (``5`` and ``"5"`` are not one id to read; ``True`` is not
    ``1``); ``None`` for an id that cannot be a key (it is then sent as given,
    and validation says what is wrong with it)."""
    try:
        hash(customer_id)
    except Exception:  # unhashable (a TypeError), or a __hash__ that fails otherwise
        return None
    return (type(customer_id), customer_id)


def _refuses_the_patch(error: BaseException | None) -> bool:
    """Whether ``error`` is a check's refusal of a patch itself (its values, its
    custom fields by the definitions), not a failure to check it."""
    if isinstance(error, UnknownCustomFieldError):
        return not error.sent
    return isinstance(error, ValidationError | UnsupportedFieldError)


def _answered(error: BaseException) -> bool:
    """Whether ``error`` came from a request that went out (not from a check)."""
    if isinstance(error, ProviderError):
        return error.sent
    return isinstance(error, TransportError | ResponseFormatError)


_NOT_A_PAIR: Any = object()


def _id_of_pair(item: Any) -> Any:
    """The id of an ``(id, patch)`` item, or ``_NOT_A_PAIR`` (then one() says why)."""
    if not isinstance(item, tuple | list):
        return _NOT_A_PAIR  # (an iterator would be used up here)
    try:
        customer_id, patch = item  # as one() takes it apart
    except Exception:  # not two items, or a caller's sequence that fails to give them
        return _NOT_A_PAIR
    return customer_id if isinstance(patch, CustomerPatch) else _NOT_A_PAIR


def _keys_named(item: Any, matched_by: str) -> tuple[frozenset[str], bool]:
    """The keys a record of a run matched on ``matched_by`` names (as the
    provider's filter compares them, without case): its own and, if its patch
    sets ``matched_by``, the one it renames its customer to; and whether it does."""
    key = _id_of_pair(item)
    keys = {key.casefold()} if isinstance(key, str) else set()
    if key is not _NOT_A_PAIR:
        _, patch = item  # as _id_of_pair took it apart: a pair need not be indexable
        for path, value in patch.set_fields():
            if path == matched_by:
                if isinstance(value, str):
                    keys.add(value.casefold())
                return frozenset(keys), True
    return frozenset(keys), False


def _as_sent(path: str, value: Any) -> Any:
    return value


def _applied(
    customer: Customer, patch: CustomerPatch, read_back: Callable[[str, Any], Any] = _as_sent
) -> Customer:
    """``customer`` as it should read once ``patch`` has been applied, each value
    as ``read_back(path, value)`` says the provider shows it."""
    changes: dict[str, Any] = {}
    for path, value in patch.set_fields():
        value = read_back(path, value)
        if path.startswith("external_ids."):
            member = {path.removeprefix("external_ids."): value}
            current = changes.get("external_ids", customer.external_ids) or ExternalIds()
            changes["external_ids"] = attrs.evolve(current, **member)
        elif path == "custom_fields":
            values = dict(customer.custom_fields or {})
            for key, v in value.items():
                where = _custom_key(customer, key)
                if where is None:
                    # Not a field the read showed in a place of its own: which of
                    # them it changes is not known, so none of them is.
                    changes[path] = changes["custom_field_ids"] = None
                    break
                values[where] = v
            else:
                changes[path] = values
        elif path == "tax_ids":
            changes[path] = None if value is None else tuple(value)
        else:
            changes[path] = value
    raw = {**customer.raw, **patch.extra}
    return attrs.evolve(customer, **changes, raw=raw)


def _changes(
    patch: CustomerPatch, before: Customer, read_back: Callable[[str, Any], Any]
) -> CustomerPatch:
    """``patch.changes_from(before)``, less the fields whose value would read back
    as what ``before`` shows: a provider that shows a cleared text as ``""``
    (read as ``None``) is not changed by setting ``""`` again."""
    changes = patch.changes_from(before)
    if not changes or read_back is _as_sent:
        return changes
    same = []
    for path, value in changes.set_fields():
        if "." in path or value is None:
            continue
        shown = read_back(path, value)
        if shown is not value and _read_value(before, path) == (True, shown):
            same.append(path)
    return attrs.evolve(changes, **dict.fromkeys(same, UNSET)) if same else changes


def _unread(patch: CustomerPatch, customer: Customer, besides: frozenset[str]) -> bool:
    """Whether ``patch`` sets a field ``customer`` was read without, ``besides`` those."""
    known = customer.read_fields
    if known is None:
        return False
    return any(path not in known and path not in besides for path, _ in patch.set_fields())


def _merged(customer: Customer, other: Customer) -> Customer:
    """``customer`` with the fields only ``other`` was read with (what ``customer``
    knows stays: it may be newer than that read)."""
    if customer.read_fields is None:
        return customer
    shown = _READ_PATHS if other.read_fields is None else other.read_fields
    extra = shown - customer.read_fields
    top = {p: getattr(other, p) for p in extra if not p.startswith("external_ids.")}
    members = {p.removeprefix("external_ids."): p for p in extra if p.startswith("external_ids.")}
    if members:
        current = customer.external_ids or ExternalIds()
        top["external_ids"] = attrs.evolve(
            current, **{m: getattr(other.external_ids, m, None) for m in members}
        )
    return attrs.evolve(customer, **top, read_fields=customer.read_fields | shown)


def _knowing(customer: Customer, patch: CustomerPatch) -> Customer:
    """``customer``, every field ``patch`` sets known (a plan's prediction)."""
    if customer.read_fields is None:
        return customer
    paths = frozenset(path for path, _ in patch.set_fields())
    return attrs.evolve(customer, read_fields=customer.read_fields | paths)


def _known_only(customer: Customer, patch: CustomerPatch) -> Customer:
    """``customer`` as read, known only for the fields ``patch`` sets."""
    fields = frozenset(path for path, _ in patch.set_fields())
    known = fields if customer.read_fields is None else customer.read_fields & fields
    return attrs.evolve(customer, read_fields=known)


def _holder_as_planned(
    field: str,
    key: str,
    found: Any,
    moved: tuple[set[str], set[str]],
    planned: Mapping[str, Customer],
) -> Any:
    """Who holds ``key`` (of ``field``) once a plan's earlier records have renamed
    it: ``found`` (how a lookup of it before the run ended) less the customers
    renamed away from it, plus those renamed to it (``moved``, by customer key);
    as a lookup ends, a customer or the error why not."""
    if isinstance(found, Customer):
        holders = {customer_key(found.id): found}
        provider = found.provider
    elif isinstance(found, NotFoundError):
        holders, provider = {}, found.provider
    else:
        # An outage; or two holders, which stay two: neither can be named by
        # any record (its key names both), so neither is renamed away.
        return found
    lost, gained = moved
    for holder in lost:
        holders.pop(holder, None)
    holders.update((holder, planned[holder]) for holder in gained)
    if not holders:
        return NotFoundError(
            f"no customer has {field} {key!r} once the records before rename it",
            provider=provider,
            status=404,
            sent=False,
        )
    if len(holders) > 1:
        ids = ", ".join(quoted(c.id) for c in holders.values())
        problem = Problem(field, f"{key!r} matches {len(holders)} customers ({ids}): not a guess")
        return ValidationError([problem], provider=provider)
    [(holder, customer)] = holders.items()
    return planned.get(holder, customer)


_NO_KEYS: frozenset[str] = frozenset()


class _Record:
    """One record taken from the input, as a later record of its customer sees it."""

    __slots__ = ("ended", "reads_before_end", "renames", "result", "waiters")

    def __init__(self) -> None:
        self.ended = False
        self.renames = _NO_KEYS  # with matched_by: the keys it renames from and to
        self.reads_before_end = 0  # batch reads issued when it ended
        self.result: UpdateResult | None = None  # None: ended without one (cancelled, a bug)
        self.waiters: list[asyncio.Future[None]] | None = None  # most records have none

    async def wait(self) -> None:
        """Until the record has ended: its outcome is its own; only its end matters."""
        if not self.ended:
            waiter = asyncio.get_running_loop().create_future()
            if self.waiters is None:
                self.waiters = []
            self.waiters.append(waiter)
            await waiter

    def end(self, result: UpdateResult | None) -> None:
        self.result, self.ended = result, True
        for waiter in self.waiters or ():
            if not waiter.done():
                waiter.set_result(None)


_Job: TypeAlias = tuple[int, Any, Any, str, "_Record | None", bool, _Record]
"""A record taken and registered: index, item, what was read, customer key, the
record of that customer it follows, whether what was read was read after that
record ended, and its own."""


_RECANCEL = 0.05
"""Seconds between two cancels of a worker that has not ended (leaving a run)."""
_LINGER = 0.05
"""With read, the records of an async input taken for a batch are read once the
next is this late (seconds): an input as fast as a file fills its batches, a
slow pipe's records are not held back for the ones it has yet to give..."""
_OLDEST = 1.0
"""... and once the batch's first record has waited this long (seconds): a
steady trickle is never late."""


def _absorb_cancel() -> None:
    """A cancel from inside (not the run being left) was turned into results: the
    worker goes on, so its task must not stay "being cancelled" (a task being
    cancelled retries nothing)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        task.uncancel()


def _from_inside(cancelled: BaseException, what: str) -> RuntimeError:
    """The error that ends a run when ``what`` was cancelled (or otherwise ended
    by a BaseException) from inside, not by the run being left."""
    how = (
        "cancelled"
        if isinstance(cancelled, asyncio.CancelledError)
        else f"ended by {type(cancelled).__name__}"
    )
    error = RuntimeError(f"{what} was {how} from inside the run")
    error.__cause__ = cancelled
    return error


def _left_by(previous: _Record) -> Customer | None:
    """The customer as an earlier record of it left it, if known."""
    result = previous.result
    if result is None:
        return None
    if not result.ok:
        # Refused before anything was sent: the customer is as that record found
        # it.  Sent, then failed: it may have landed or not; nothing is known.
        return result.before if result.attempts == 0 else None
    if not result.changed:
        return result.before
    after, before, sent = result.customer, result.before, result.sent
    if after is None or sent is None:
        return after
    if before is not None and after.read_fields is not None and before.read_fields is not None:
        # An answer may show fewer fields than the read did (a list may show a field
        # a customer's own answer leaves out): those hold what was sent, or else was read.
        left = _merged(after, _applied(before, sent))
    else:
        left = after
    # A field the answer shows otherwise than it was sent (a provider that answers
    # before it applies, or one that rewrites what it is sent) is not known: a
    # later record setting it is sent, not found unchanged.
    shown = after.read_fields
    unsure = {
        path for path, _ in sent.changes_from(after).set_fields() if shown is None or path in shown
    }
    return _forgetting(left, unsure) if unsure else left


_READ_PATHS = frozenset(
    [*(p for p in _PATCH_FIELDS if p != "external_ids")]
    + [f"external_ids.{m}" for m in _EXTERNAL_ID_FIELDS]
)
"""Every neutral field a read can have (:attr:`Customer.read_fields` of ``None``)."""


def _forgetting(customer: Customer, paths: Iterable[str]) -> Customer:
    """``customer``, its ``paths`` not known (a later patch setting one is sent)."""
    known = _READ_PATHS if customer.read_fields is None else customer.read_fields
    return attrs.evolve(customer, read_fields=known - frozenset(paths))


def _reconciled(
    left: Customer, read: Customer, patch: CustomerPatch
) -> tuple[Customer, frozenset[str]]:
    """``left`` (what an earlier record of the customer left), not known where
    ``read``, made after that record ended, shows a field ``patch`` sets
    otherwise, and those fields: the read may lag behind writes (a cache, a
    replica), or show a change someone made since; which one is not known, so
    the field is sent."""
    try:
        differ = patch.undo_for(left)[0].changes_from(read)
    except Exception:  # an invalid patch (nothing to compare): sending it says why
        return left, frozenset()
    shown = read.read_fields
    paths = frozenset(p for p, _ in differ.set_fields() if shown is None or p in shown)
    extra = [k for k in differ.extra if k in read.raw]
    if extra:  # an extra key is compared with the provider's JSON: leave it out
        left = attrs.evolve(left, raw={k: v for k, v in left.raw.items() if k not in extra})
    return (_forgetting(left, paths) if paths else left), paths


def refused_at_once(attempts: int, status: object) -> bool:
    """Whether a record that failed with ``status`` after ``attempts`` changed
    nothing: its one attempt refused with a 4xx.  A 5xx, a redirect (never
    followed) or a 200 saying it failed may have landed."""
    return attempts == 1 and isinstance(status, int) and 400 <= status < 500


def customer_key(customer_id: Any) -> str:
    """Equal for every record of one customer (and perhaps of a few more)."""
    # Conservative on purpose: two spellings of one id ("5" and 5, or a UUID in
    # upper and lower case) share a key.  Serialising two customers costs a
    # little concurrency; failing to serialise one customer costs its data.
    return str(customer_id).casefold()


class _Stop:
    """Why a run stops sending: a 401/403, or a failure threshold crossed."""

    def __init__(self, max_failures: int | None, max_consecutive: int | None) -> None:
        check_whole("max_failures", max_failures, none=True)
        check_whole("max_consecutive_failures", max_consecutive, none=True)
        self.max_failures = max_failures
        self.max_consecutive = max_consecutive
        self.cause: BaseException | None = None
        self._failures = 0
        self._streak = 0
        self._kind: tuple[type, int | None] | None = None

    def record(self, result: UpdateResult, *, read_failed: bool = False) -> None:
        """Count ``result`` (in completion order) and decide whether the run stops.

        ``read_failed``: the record failed because the provider refused to
        read its customer, which is evidence as much as a refused write.
        """
        error = result.error
        if error is None:
            self._streak = 0
            return
        sent = result.attempts > 0 or read_failed
        # Nothing sent for it (invalid, not attempted) is no evidence; a failed read
        # of what it needed (the custom-field definitions) is, as a failed write.
        if self.cause is not None or not (sent or _answered(error)):
            return
        if sent and isinstance(error, AuthenticationError | PermissionDeniedError):
            self.cause = error  # every later record would fail the same way
            return
        self._failures += 1
        kind = (type(error), getattr(error, "status", None))
        self._streak = self._streak + 1 if kind == self._kind else 1
        self._kind = kind
        if self.max_failures is not None and self._failures >= self.max_failures:
            self.cause = TooManyFailuresError(
                f"{self._failures} records failed (max_failures={self.max_failures})",
                failures=self._failures,
                last=error,
            )
        elif self.max_consecutive is not None and self._streak >= self.max_consecutive:
            self.cause = TooManyFailuresError(
                f"{self._streak} records in a row failed with {type(error).__name__} "
                f"(max_consecutive_failures={self.max_consecutive})",
                failures=self._failures,
                last=error,
            )


async def run_bulk(
    send: _Send,
    updates: Updates,
    *,
    concurrency: int,
    progress: ProgressCallback | None,
    total: int | None,
    max_failures: int | None = None,
    max_consecutive_failures: int | None = None,
    read: _Read | None = None,
    read_batch: int = 100,
    compare: bool = True,
    resolve: bool = False,
    plan: bool = False,
    complete: Callable[[Any], Awaitable[Any]] | None = None,
    before_write: BeforeWrite | None = None,
    check: _Send | None = None,
    read_back: Callable[[str, Any], Any] = _as_sent,
    matched_by: str | None = None,
) -> AsyncGenerator[UpdateResult, None]:
    """Yield one result per input item as each finishes; see ``Client.iter_updates``.

    One task per slot, not per record: up to ``concurrency`` workers, each
    taking the next record when it is free (a task costs more than the
    bookkeeping of a record), started as records come, so a run of one record
    has one task (plus one waiting on an async input).  A finished record hands
    its result over without waiting on the consumer, so leaving the run at any
    point only has to cancel the workers.  A record whose customer already has
    one in flight waits for it, so one customer's updates land in input order,
    retries included.

    With ``read``, the input is taken ``read_batch`` items at a time, and
    ``read`` is given their customer ids (or keys) in input order before any
    of them starts.  Then ``compare``: each record sends only what differs
    from what was read; ``resolve``: the record goes to the id of the
    customer read (the input named it by another key); ``plan``: ``send``
    only checks, and the result's customer is the one predicted (each value
    as ``read_back(path, value)`` says the provider shows it);
    ``complete``: reads one customer whole, for a record that sets fields
    the batch read did not show; ``before_write``: see ``Client.iter_updates``;
    ``check``: what ``send`` refuses before sending, as ``(None, error, 0)``:
    with ``compare`` it checks the whole patch first, so an invalid record is
    an error even when nothing in it differs from what was read; given
    ``None`` for the customer (its read failed), it checks the patch alone.
    ``matched_by``, with ``resolve``: the patch path of the key the input names
    customers by.  A record that sets it renames a key: a later record naming
    either key (or renaming to one) is read in a later batch, once it has ended,
    so each key names the customer that holds it when its record's turn comes.
    """
    # Refused before anything is sent: 2.5 would bound nothing (a semaphore of 2.5
    # never blocks), and a progress hook that cannot be called would end the run
    # after its first record.
    check_whole("concurrency", concurrency)
    check_whole("total", total, least=0, none=True)
    check_hook("progress", progress, takes="one argument (a Progress)", count=1)
    check_hook(
        "before_write",
        before_write,
        takes="three arguments (customer_id, customer, changes)",
        count=3,
    )
    if isinstance(updates, Mapping):
        raise TypeError(
            "updates must be (customer_id, CustomerPatch) pairs, not a dict: pass its .items()"
        )
    if not isinstance(updates, Iterable | AsyncIterable):
        raise TypeError(
            "updates must be an iterable of (customer_id, CustomerPatch) pairs, "
            f"got {quoted(updates)}"
        )
    stop = _Stop(max_failures, max_consecutive_failures)
    if total is None and isinstance(updates, Sized):
        total = len(updates)
    async_source = updates.__aiter__() if isinstance(updates, AsyncIterable) else None
    sync_source = iter(updates) if async_source is None else None  # type: ignore[arg-type]
    workers: set[asyncio.Task[None]] = set()
    # Results (or an exception graver than a record's failure) for the consumer.
    finished: collections.deque[UpdateResult | BaseException] = collections.deque()
    latest: dict[str, _Record] = {}  # customer key -> its last record in flight
    # With read: each customer's last record started since the batch before was
    # read, or in flight when this one was, ended or not.  A later record of that
    # customer must follow what it left: the read predates it, raced it, or may
    # lag behind it.  Bounded by two batches plus concurrency.
    recent: dict[str, _Record] = {}
    # With read: each customer's last record since the last read.  Kept in `recent`
    # for one batch more: a list that lags behind writes may not show it yet.
    since_read: dict[str, _Record] = {}
    reads = 0  # batch reads issued
    wake: asyncio.Future[None] | None = None  # the consumer waits for a result
    room: asyncio.Future[None] | None = None  # workers wait for the consumer
    read_failures: set[int] = set()  # records in flight whose read the provider refused
    # With plan: each customer the plan changes, as it predicts the provider
    # would show it.  Kept for the whole run: a plan's reads never show it.
    planned: dict[str, Customer] = {}
    # With matched_by: each key renamed (from or to) by a record not ended yet -> the
    # last such record: two keys at most for each record taken and not ended.
    renaming: dict[str, _Record] = {}
    # With plan and matched_by: each key (casefolded) a planned rename moves -> the
    # customers (by customer key) renamed away from it, and those renamed to it.
    # The provider still shows every key's holder before the run.
    moved: dict[str, tuple[set[str], set[str]]] = {}
    taking = asyncio.Lock()  # one worker at a time awaits the input (or a read)
    leaving = False  # set once the run ends: workers take nothing more

    async def one(
        index: int, item: Any, previous: _Record | None, read_after: bool, was: Any, key: str
    ) -> UpdateResult:
        try:
            customer_id, patch = item
        except Exception:  # not a pair (or one whose iteration fails): reported below
            customer_id, patch = None, None
        if not isinstance(patch, CustomerPatch):
            if previous is not None:
                # Registered as its customer's latest: a later record of that
                # customer follows it, so it ends only once the one before has.
                await previous.wait()
            problem = Problem("", f"expected (customer_id, CustomerPatch), got {quoted(item)}")
            return UpdateResult(
                index=index, customer_id=customer_id, patch=None, error=ValidationError([problem])
            )
        if previous is not None:
            await previous.wait()
        if read is not None and isinstance(was, Exception):
            # Its customer could not be read (or matched): that is its outcome,
            # whether or not the run has stopped since.  Nothing was sent.  Unless
            # the read found no such customer and the patch itself is refused:
            # bad input says so first, as in a run that reads nothing (and as the
            # CLI's --strict finds it).  A refusal of the key, an outage: the
            # check would meet it too, and it is what the run must stop for.
            refused = None
            if check is not None and isinstance(was, NotFoundError | ValidationError):
                refused = (await check(None, patch))[1]
                if not _refuses_the_patch(refused):
                    refused = None
            # The provider refused the read, or answered that no such customer
            # is there: evidence for the failure limits, as a 404 on the write
            # would be (they are there for a file of wrong ids).
            if refused is None and (_answered(was) or isinstance(was, NotFoundError)):
                read_failures.add(index)
            return UpdateResult(
                index=index,
                customer_id=customer_id,
                patch=patch,
                error=refused or was,
                changed=False,
            )
        if stop.cause is not None:
            return UpdateResult(
                index=index,
                customer_id=customer_id,
                patch=patch,
                error=NotAttemptedError(stop.cause),
            )
        target, before, changes = customer_id, None, patch
        if read is not None:
            if resolve:
                assert isinstance(was, Customer)
                target = was.id  # the key matched this customer
            # What an earlier record of this customer left, not the first read;
            # after a failure nothing is known (None): the whole patch is sent.
            if plan:
                # Every read of a plan shows the customer before the run (it
                # writes nothing): what its earlier records would change is
                # the plan's own, laid over the read, however far apart.
                assert isinstance(was, Customer)
                earlier = planned.get(key)
                before = was if earlier is None else _merged(earlier, was)
            else:
                before = _left_by(previous) if previous is not None else was
            disputed: frozenset[str] = frozenset()
            # A plan writes nothing: what any read shows is the customer before
            # the run, no news of what an earlier record left.
            if read_after and not plan and before is not None and isinstance(was, Customer):
                before, disputed = _reconciled(before, was, patch)
            if before is None and previous is not None and complete is not None:
                # The earlier record was sent and failed: it may have landed or
                # not.  Read the customer again rather than send blind (and so
                # that an undo knows what it had).
                fresh = await complete(target)
                before = fresh if isinstance(fresh, Customer) else None
                last = previous.result
                if before is not None and last is not None and last.sent is not None:
                    # Unless its only attempt was refused (a 4xx), what it sent
                    # may have landed after that read was served (a read that
                    # lags behind writes): not known, so sent again.
                    rejected = isinstance(last.error, ProviderError) and refused_at_once(
                        last.attempts, last.error.status
                    )
                    if not rejected:
                        disputed = frozenset(path for path, _ in last.sent.set_fields())
                        before = _forgetting(before, disputed)
            if compare and before is not None:
                refused = None if check is None else (await check(target, patch))[1]
                if refused is not None:  # as a plain update would say: nothing is sent
                    return UpdateResult(
                        index=index,
                        customer_id=customer_id,
                        patch=patch,
                        error=refused,
                        before=before,
                    )
                try:
                    changes = _changes(patch, before, read_back)
                    # Disputed fields are sent whatever a read says: not worth one.
                    unread = _unread(changes, before, disputed)
                    if unread and complete is not None:
                        # The list did not show some fields this record sets:
                        # read the customer itself, so they are compared (and
                        # their values known for undo) rather than sent blind.
                        fuller = await complete(target)
                        if isinstance(fuller, Customer):
                            # Not the disputed fields: that read may lag as well.
                            before = _merged(before, fuller)
                            if disputed:
                                before = _forgetting(before, disputed)
                            changes = _changes(patch, before, read_back)
                except Exception:  # an invalid patch: sending it reports why
                    changes = patch
                if not changes:
                    return UpdateResult(
                        index=index,
                        customer_id=customer_id,
                        patch=patch,
                        customer=before,
                        changed=False,
                        before=before,
                    )
        if before_write is not None and before is not None and not plan:
            try:  # write-ahead: a kill after the send must not lose what it does
                before_write(customer_id, before, changes)
            except Exception as e:  # nothing is sent for this record
                return UpdateResult(
                    index=index, customer_id=customer_id, patch=patch, error=e, before=before
                )
        try:
            customer, error, attempts = await send(target, changes)
        except Exception as e:  # a bug, e.g. in a third-party adapter: still one result
            customer, error, attempts = None, e, 1
        if plan and error is None and before is not None:
            customer = _applied(before, changes, read_back)  # what the provider should show
            planned[key] = _knowing(customer, changes)
            if matched_by is not None:
                note_rename(key, before, planned[key])
        if before is None and isinstance(was, Customer):
            # An earlier record of it failed after sending, so the whole patch went
            # out: what was read stands for the fields it sets (their undo needs
            # it), not for the others, which that record may have changed.
            before = _known_only(was, changes)
        return UpdateResult(
            index=index,
            customer_id=customer_id,
            patch=patch,
            customer=customer,
            error=error,
            attempts=attempts,
            before=before,
            sent=changes,
        )

    rate = _Rate()
    done = succeeded = failed = 0
    hook = progress
    broken: BaseException | None = None
    counter = itertools.count()
    exhausted = False

    def take_now() -> Any:
        """The next item of a plain iterable, or ``_END``; an input that fails ends the run."""
        nonlocal broken, exhausted
        assert sync_source is not None
        try:
            return next(sync_source)
        except StopIteration:
            exhausted = True
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # the caller's iterable failed: re-raised below
            broken, exhausted = e, True
        return _END

    async def take() -> Any:
        """The next input item, or ``_END``; an input that fails ends the run."""
        nonlocal broken, exhausted
        if sync_source is not None:
            return take_now()
        assert async_source is not None
        try:
            return await async_source.__anext__()
        except StopAsyncIteration:
            exhausted = True
        except asyncio.CancelledError as e:
            if leaving:
                raise
            _absorb_cancel()
            broken, exhausted = e, True  # the input cancelled itself: it ends, loudly
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # the caller's iterable failed: re-raised below
            broken, exhausted = e, True
        return _END

    # With read: the batch taken and what was read for it, and the next item of
    # an async input while it is awaited apart from the batch before.
    batch: collections.deque[tuple[int, Any]] = collections.deque()
    pending: asyncio.Future[Any] | None = None
    was_read: Mapping[str, Any] = {}
    # With matched_by: a record taken that names a key a record of the batch
    # renames; it starts the next batch, read once that record has ended.
    held: tuple[int, Any] | None = None

    async def take_batch() -> None:
        nonlocal was_read, reads, pending, held
        batch_started = 0.0
        renamed: set[str] = set()  # the keys this batch's records rename
        if held is not None:
            batch.append(held)
            held = None
            batch_started = loop.time()
            if matched_by is not None:
                keys, renames = _keys_named(batch[0][1], matched_by)
                if renames:
                    renamed |= keys
        while not exhausted and len(batch) < read_batch:
            if sync_source is not None:
                item = take_now()
            elif not batch and pending is None:
                item = await take()
            else:
                # The records taken are read now rather than wait long for more:
                # a pipe's producer may pause for hours, and they would wait with
                # it.  The item being awaited is the next batch's first.
                if pending is None:
                    pending = asyncio.ensure_future(take())
                if batch and not pending.done():
                    # A steady trickle is never late: a batch waits _OLDEST at most.
                    left = batch_started + _OLDEST - loop.time()
                    if left > 0:
                        await asyncio.wait({pending}, timeout=min(_LINGER, left))
                    if not pending.done():
                        break
                item = await pending
                pending = None
            if item is not _END:
                if not batch:
                    batch_started = loop.time()
                taken = (next(counter), item)
                if matched_by is not None:
                    keys, renames = _keys_named(item, matched_by)
                    if not renamed.isdisjoint(keys):
                        # Read with this batch, its key would be looked up before
                        # the rename it follows had landed.
                        held = taken
                        break
                    if renames:
                        renamed |= keys
                batch.append(taken)
        # Once the run stops, its records are not attempted: nothing to read.
        ids = [] if stop.cause is not None else [_id_of_pair(item) for _, item in batch]
        ids = [i for i in ids if i is not _NOT_A_PAIR]
        if renaming and ids and matched_by is not None:
            # A key renamed by a record of a batch before is read once the rename
            # has landed (or failed): the read finds its holder after it.
            for _, item in batch:
                for key in _keys_named(item, matched_by)[0]:
                    earlier = renaming.get(key)
                    if earlier is not None:
                        await earlier.wait()
        assert read is not None
        recent.clear()
        recent.update(since_read)  # ended or not: the read may not show them yet
        recent.update(latest)  # in flight now: they may land before or after the read
        since_read.clear()
        reads += 1
        try:
            was_read = await read(ids) if ids else {}
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # a bug in the reader: still one result per record
            if leaving:
                raise
            if isinstance(e, asyncio.CancelledError):
                _absorb_cancel()
            error = e if isinstance(e, Exception) else _from_inside(e, f"a read of {len(ids)}")
            was_read = {read_key(i): error for i in ids}
        if moved:
            assert matched_by is not None  # moved is kept only then
            # Read before any of the plan's renames: looked up through them, as
            # the records would find their keys once the earlier ones had run.
            was_read = dict(was_read)
            for i in ids:
                if isinstance(i, str) and i.casefold() in moved:
                    found = was_read.get(read_key(i))
                    was_read[read_key(i)] = _holder_as_planned(
                        matched_by, i, found, moved[i.casefold()], planned
                    )

    def note_rename(key: str, before: Customer, after: Customer) -> None:
        """A planned record (of customer ``key``) that changes its match key: the
        old one (if any) loses it, the new one (``None``: cleared) gains it."""
        assert matched_by is not None
        old, new = (getattr(c, matched_by, None) for c in (before, after))
        old = old.casefold() if isinstance(old, str) else None
        new = new.casefold() if isinstance(new, str) else None
        if old == new:  # the filter ignores case: no move
            return
        if old is not None:
            lost, gained = moved.setdefault(old, (set(), set()))
            gained.discard(key)
            lost.add(key)
        if new is not None:
            lost, gained = moved.setdefault(new, (set(), set()))
            lost.discard(key)
            gained.add(key)

    def key_of(item: Any, was: Any) -> str:
        try:
            # By the customer the key matched (resolve), not the key: two keys can
            # name one customer over a run (a record renames its unique_id).
            return customer_key(was.id if resolve and isinstance(was, Customer) else item[0])
        except Exception:  # not a pair (one() reports it), or an id that cannot be told
            return ""

    def notify() -> None:
        if wake is not None and not wake.done():
            wake.set_result(None)

    def next_record() -> tuple[int, Any, Any] | None:
        """The next record taken already, if there is one without waiting."""
        if read is None:
            if sync_source is None or exhausted:
                return None
            item = take_now()
            return None if item is _END else (next(counter), item, None)
        if not batch:
            return None
        index, item = batch.popleft()
        customer_id = _id_of_pair(item)
        return (
            index,
            item,
            None if customer_id is _NOT_A_PAIR else was_read.get(read_key(customer_id)),
        )

    async def next_record_waiting() -> tuple[int, Any, Any] | None:
        """The next record, waiting for the input (or a batch's read) if need be."""
        async with taking:
            while True:
                taken = next_record()
                if taken is not None or (exhausted and not batch and held is None):
                    return taken
                if read is None:
                    item = await take()
                    if item is not _END:
                        return next(counter), item, None
                else:
                    await take_batch()

    def register(taken: tuple[int, Any, Any]) -> _Job:
        """A record just taken, as its customer's latest: done with no wait between
        taking and registering, records of one customer run in input order."""
        index, item, was = taken
        key = key_of(item, was)
        previous = latest.get(key) or (recent.get(key) if read is not None else None)
        record = latest[key] = _Record()
        if read is not None:
            recent[key] = since_read[key] = record
            if matched_by is not None:
                keys, renames = _keys_named(item, matched_by)
                if renames:
                    record.renames = keys
                    renaming.update(dict.fromkeys(keys, record))
        # Ended before this batch was read: that read is news of its own.
        read_after = previous is not None and previous.ended and previous.reads_before_end < reads
        return index, item, was, key, previous, read_after, record

    async def worker(job: _Job | None) -> None:
        try:
            await work(job)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            if leaving:
                raise
            # Anything escaping a worker outside a record (a bug) ends the run,
            # never a worker quietly gone with the records it held.
            error = e if isinstance(e, Exception) else _from_inside(e, "a worker")
            finished.append(error)
            notify()

    async def work(job: _Job | None) -> None:
        nonlocal room
        while not leaving:
            if job is None:
                # Finished results wait for the consumer: a slow one holds the input
                # back, or every record of the input would end up in `finished`.
                while len(finished) >= concurrency:
                    if room is None or room.done():
                        room = loop.create_future()
                    await room
                taken = next_record() if not taking.locked() else None
                if taken is None:
                    taken = await next_record_waiting()
                    if taken is None:
                        return
                if leaving:  # an input or a read that swallowed the cancel
                    return
                job = register(taken)
            index, item, was, key, previous, read_after, record = job
            job = None
            if len(workers) < concurrency and not taking.locked():
                # A slot is free: the next record starts now, in a task of its own.
                # Taken here (when it needs no wait), so a run of one record has one
                # task; an async input gets a task that waits for its next item.
                if read is None and async_source is not None:
                    if not exhausted:
                        spawn(None)
                else:
                    ahead = next_record()
                    if ahead is not None:
                        spawn(register(ahead))
            result: UpdateResult | None = None
            try:
                result = await one(index, item, previous, read_after, was, key)
            except asyncio.CancelledError as e:
                if leaving:
                    raise  # nobody waits for this result
                # Cancelled, but not by leaving the run (a transport's bug, a timer
                # of its own, someone cancelling this task): it ends the run, as
                # any bug does, rather than lose this record; this worker takes
                # nothing more.
                finished.append(_from_inside(e, f"record {index}"))
                return
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:  # a bug: it ends the run, never quietly
                finished.append(e)
            finally:
                record.reads_before_end = reads
                record.end(result)
                if latest.get(key) is record:
                    del latest[key]
                if record.renames:
                    for renamed_key in record.renames:
                        if renaming.get(renamed_key) is record:
                            del renaming[renamed_key]
                if result is not None:
                    if read_failures:
                        stop.record(result, read_failed=result.index in read_failures)
                        read_failures.discard(result.index)
                    else:
                        stop.record(result)
                    finished.append(result)
                notify()

    def spawn(job: _Job | None) -> None:
        task = asyncio.create_task(worker(job), name=f"customer-patch worker {len(workers)}")
        workers.add(task)
        task.add_done_callback(ended)

    def ended(task: asyncio.Task[None]) -> None:
        workers.discard(task)
        if not task.cancelled():
            # Seen: what a worker ends with was handed to the consumer, or the run
            # is being left; asyncio need not log it as never retrieved.
            task.exception()
        notify()

    loop = asyncio.get_running_loop()  # once: asking costs a system call (getpid)
    try:
        spawn(None)
        while True:
            if not finished:
                if not workers:
                    break
                wake = loop.create_future()
                await wake
                continue
            entry = finished.popleft()
            if room is not None and not room.done():
                room.set_result(None)
            if isinstance(entry, BaseException):
                raise entry
            result = entry
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
                        stopped=stop.cause,
                    )
                )
            yield result
        if broken is not None:
            # Every item taken before the input failed has its result above.
            raise broken
    finally:
        leaving = True  # a worker whose send swallowed the cancel takes no next record
        # Cancelled again until they end: a transport (or an input, or a read) that
        # swallows one cancel must not go on to a retry or another record.
        while workers or (pending is not None and not pending.done()):
            tasks = {*workers, *([pending] if pending is not None else [])}
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=_RECANCEL)
        # Let the caller's generator run its own clean-up (finally blocks).
        if async_source is not None and hasattr(async_source, "aclose"):
            await async_source.aclose()
        if sync_source is not None and hasattr(sync_source, "close"):
            sync_source.close()
