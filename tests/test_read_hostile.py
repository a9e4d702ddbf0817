"""The read side against a hostile server and a careless caller (issue 12, red team).

Each test here failed before the fix its commit names, except those of the last
section, which held and guard against regressions.  The client's logic runs
against a MockTransport (``Store`` from test_read is a DualEntry stand-in at the
transport seam); nothing here asserts on timing: waits are hang guards only.
"""

import asyncio
import contextlib
import itertools
import json
import traceback
from urllib.parse import parse_qs, urlsplit

import pytest

from customer_patch import (
    BadRequestError,
    CustomerPatch,
    NotAttemptedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    Response,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    TransportError,
    UnknownCustomFieldError,
    UnsupportedFieldError,
    ValidationError,
    get_adapter,
)
from customer_patch.testing import MockTransport
from tests.helpers import HANG_GUARD, TOKEN, mock_client
from tests.test_read import Store, client, definition, row

# -- nothing grows with the input ---------------------------------------------------------


@pytest.mark.parametrize("skip_unchanged", [True, False])
async def test_a_slow_consumer_holds_at_most_concurrency_plus_a_page(skip_unchanged):
    """The writes finish while the consumer dawdles over each result: the run must
    stop taking input, not pile up every finished result waiting to be taken."""
    store = Store(600)
    taken = 0

    def records():
        nonlocal taken
        for cid in range(1, 601):
            taken += 1
            yield cid, CustomerPatch(name="New")

    consumed = held = 0
    async with client(store) as de:
        results = de.iter_updates(records(), concurrency=4, skip_unchanged=skip_unchanged)
        async for _ in results:
            consumed += 1
            held = max(held, taken - consumed)
            for _ in range(10):  # slow: every request in flight is answered meanwhile
                await asyncio.sleep(0)
    assert consumed == 600
    # In flight, finished and waiting, and (reading) the batch taken for one read.
    assert held <= 4 + 4 + (100 if skip_unchanged else 0)


# -- no secret in errors ------------------------------------------------------------------


def list_answer(*items, count=None):
    body = {"items": list(items), "count": len(items) if count is None else count}
    return Response(status=200, body=json.dumps(body).encode())


@pytest.mark.parametrize(
    "items",
    [
        [row(1, unique_id=TOKEN)],  # "the list answered customer 1 whose unique_id is ..."
        [row(TOKEN, unique_id="CRM-1"), row(2, unique_id="crm-1")],  # "matches 2 (ids)"
    ],
)
async def test_a_list_echoing_the_key_never_puts_it_in_a_match_error(items):
    async with mock_client(lambda r: list_answer(*items)) as de:
        [result] = [
            r
            async for r in de.iter_updates(
                [("CRM-1", CustomerPatch(name="x"))], match_on="unique_id"
            )
        ]
    assert result.error is not None
    assert TOKEN not in str(result.error)
    assert "********" in str(result.error)


@pytest.mark.parametrize("operation", ["get", "list"])
async def test_a_read_echoing_the_key_never_shows_it_in_the_traceback(operation):
    """The parser's own exception quotes the bad value (an ISO date parser upper-cases
    it): it is the error's __cause__, which every traceback and error tracker prints."""
    echoed = row(1, created_by={"timestamp": TOKEN})

    def answer(request):
        if "?" in request.url:
            return list_answer(echoed)
        return Response(status=200, body=json.dumps(echoed).encode())

    async with mock_client(answer) as de:
        with pytest.raises(ResponseFormatError) as info:
            if operation == "get":
                await de.get(1)
            else:
                [c async for c in de.iter_customers()]
    shown = "".join(traceback.format_exception(info.value))
    assert TOKEN.upper() not in shown.upper()
    assert "ValueError" in shown  # what went wrong is still said


# -- an invalid record is an error, whether or not it would change anything --------------


INVALID_BUT_UNCHANGED = [
    pytest.param(CustomerPatch(), ValidationError, id="sets-nothing"),
    pytest.param(
        CustomerPatch(name="C1", extra={"is_active": True}),
        UnsupportedFieldError,
        id="read-only-extra-key",
    ),
    pytest.param(CustomerPatch(phone="5" * 40), ValidationError, id="too-long-as-the-read-is"),
    pytest.param(
        CustomerPatch(custom_fields={"Partnr": None}),
        UnknownCustomFieldError,
        id="typo-clearing-a-field",
    ),
]


@pytest.mark.parametrize(("patch", "error"), INVALID_BUT_UNCHANGED)
@pytest.mark.parametrize("how", ["updates", "plan"])
async def test_an_invalid_record_that_changes_nothing_is_still_an_error(patch, error, how):
    """A plain update refuses these before sending; comparing first must not turn
    them into "ok, unchanged" (the caller would believe Partner was cleared)."""
    store = Store(1, [definition(1, "Partner", "boolean")])
    store.customers[1].update(phone="5" * 40, custom_fields=[])
    async with client(store) as de:
        with pytest.raises(error):
            await de.update(1, patch)
        if how == "updates":
            results = de.iter_updates([(1, patch)], skip_unchanged=True)
        else:
            results = de.iter_plan([(1, patch)])
        [result] = [r async for r in results]
    assert isinstance(result.error, error)
    assert result.attempts == 0
    assert store.sent("PATCH") == []


# -- custom-field definitions -------------------------------------------------------------


SAME = {"items": [definition(1, "Same")] * 100, "count": 10**12}


def never_ending(request):
    """A page of new definitions at every offset, and a count that never runs out."""
    offset = int(parse_qs(urlsplit(request.url).query)["offset"][0])
    items = [
        definition(offset + i, "Same" if offset + i == 1 else f"F{offset + i}")
        for i in range(1, 101)
    ]
    return Response(status=200, body=json.dumps({"items": items, "count": 10**12}).encode())


@pytest.mark.parametrize(
    ("answer", "error", "per_read"),
    [
        pytest.param(
            lambda r: Response(status=403, body=b'{"detail": "no"}'),
            PermissionDeniedError,
            1,
            id="403",
        ),
        pytest.param(
            lambda r: Response(status=200, body=json.dumps(SAME).encode()),
            ResponseFormatError,
            2,  # the second page repeats the first: it does not page
            id="the-same-page-forever",
        ),
        pytest.param(never_ending, ResponseFormatError, 100, id="a-list-that-never-ends"),
    ],
)
async def test_definitions_that_cannot_be_read_are_not_read_again_for_every_record(
    answer, error, per_read
):
    """A final answer (not worth a retry) stands for the client: 200 records must not
    cost 200 reads of the definitions (20,000 requests for a list that never ends)."""

    def handler(request):
        if "custom-fields" in request.url:
            return answer(request)
        return Response(status=200, body=json.dumps(row(1)).encode())

    transport = MockTransport(handler)
    updates = [(1, CustomerPatch(custom_fields={"Same": "x"}))] * 200
    async with mock_client(transport) as de:
        results = [r async for r in de.iter_updates(updates, concurrency=4)]
        assert len(results) == 200
        assert all(isinstance(r.error, error) for r in results)
        assert len(transport.requests) == per_read
        with pytest.raises(error):
            await de.custom_field_definitions(refresh=True)  # asks again when told to
        assert len(transport.requests) == 2 * per_read


async def test_a_definition_listed_twice_is_one_field_not_a_shared_name():
    """Offset paging repeats a definition when one is added between two pages."""
    store = Store(1, [definition(5, "Tier"), definition(6, "Other"), definition(5, "Tier")])
    async with client(store) as de:
        await de.update(1, CustomerPatch(custom_fields={"Tier": "x"}))
    assert len(store.sent("PATCH")) == 1


@pytest.mark.parametrize(
    "odd",
    [{"id": [5]}, {"id": "5"}, {"id": True}, {"name": None}, {"name": ["Tier"]}],
    ids=["unhashable-id", "text-id", "boolean-id", "null-name", "list-name"],
)
async def test_a_definition_of_the_wrong_shape_is_a_format_error_not_a_crash(odd):
    store = Store(1, [{**definition(5, "Tier"), **odd}])
    async with client(store) as de:
        with pytest.raises(ResponseFormatError):
            await de.custom_field_definitions()
        [result] = [
            r async for r in de.iter_updates([(1, CustomerPatch(custom_fields={"Tier": "x"}))])
        ]
    assert isinstance(result.error, ResponseFormatError)
    assert result.attempts == 0
    assert store.sent("PATCH") == []


def one_definition_a_page(request):
    """Definitions one a page, with a count that never ends."""
    offset = int(parse_qs(urlsplit(request.url).query)["offset"][0])
    body = {"items": [definition(offset + 1, f"F{offset}")], "count": 10**9}
    return Response(status=200, body=json.dumps(body).encode())


async def test_definitions_drip_fed_one_a_page_are_read_for_a_hundred_pages_at_most():
    """The cap counted definitions, not requests: one a page, with a count that
    never ends, took 10,001 requests (about 2.8 hours at DualEntry's pace)."""
    transport = MockTransport(one_definition_a_page)
    async with mock_client(transport) as de:
        with pytest.raises(ResponseFormatError, match="of more than 100 pages"):
            await de.custom_field_definitions()
    assert len(transport.requests) == 100


async def test_a_read_of_many_pages_ends_within_one_time_budget():
    """Each page of the definitions had a time budget of its own: pages answered
    slowly, one definition each, held an update 100 budgets long (100 x 300 s
    with the defaults).  The whole read has one budget; after it, nothing more
    is sent.  (Fewer pages on a slower machine, never more.)"""

    async def answer(request):
        await asyncio.sleep(0.02)
        return one_definition_a_page(request)

    transport = MockTransport(answer)
    async with mock_client(transport, retry=RetryPolicy(timeout=0.2)) as de:
        with pytest.raises(TransportError, match=r"time budget \(RetryPolicy.timeout\)"):
            await de.update(1, CustomerPatch(custom_fields={"F0": "x"}))
    assert len(transport.requests) <= 11
    assert all(r.method == "GET" for r in transport.requests)


async def test_a_batch_read_of_many_pages_ends_within_one_time_budget():
    """The same for the read of a batch: a list answering one customer a page,
    slowly, held the batch's first result for 100 budgets."""
    store = Store(100)
    listing = store.transport.handler

    async def answer(request):
        if request.method == "GET":
            await asyncio.sleep(0.02)
        response = listing(request)
        if request.method == "GET" and "/customers/?" in request.url:
            body = json.loads(response.body)
            return list_answer(*body["items"][:1], count=body["count"])
        return response

    store.transport = MockTransport(answer)
    updates = [(cid, CustomerPatch(name="New")) for cid in range(1, 101)]
    async with client(store, retry=RetryPolicy(timeout=0.2)) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    assert len(results) == 100
    assert len(store.sent("GET")) <= 11
    assert store.sent("PATCH") == []
    # The budget spent on the pages, or (on a slow machine) while the pace held
    # the next request: either way it is the time budget that ended the read.
    assert {type(r.error) for r in results} <= {TransportError, RateLimitedError}
    assert all("time budget (RetryPolicy.timeout)" in str(r.error) for r in results)


async def test_definitions_kept_for_the_client_are_at_most_one_answers_worth():
    """The client keeps the definitions it read, JSON and all, for its lifetime:
    100 pages of 8 MiB made it keep gigabytes.  More than the 8 MiB of one answer,
    in all, is refused, and no page is asked for after."""
    pad = "p" * 30_000  # 100 definitions a page: about 3 MiB a page

    def answer(request):
        offset = int(parse_qs(urlsplit(request.url).query)["offset"][0])
        items = [{**definition(offset + i + 1, f"F{offset + i}"), "pad": pad} for i in range(100)]
        return Response(status=200, body=json.dumps({"items": items, "count": 10_000}).encode())

    transport = MockTransport(answer)
    async with mock_client(transport) as de:
        with pytest.raises(ResponseFormatError, match="more than 8 MiB"):
            await de.custom_field_definitions()
    assert len(transport.requests) == 3


async def test_one_page_a_transport_takes_past_8_mib_is_read():
    """A transport of the caller's may take answers past 8 MiB: one page of it
    is one answer's worth, and read (the cap counts what pages add up to)."""
    pad = "p" * 100_000  # 100 definitions: about 10 MB in one page

    def answer(request):
        items = [{**definition(i + 1, f"F{i}"), "pad": pad} for i in range(100)]
        return Response(status=200, body=json.dumps({"items": items, "count": 100}).encode())

    async with mock_client(answer) as de:
        assert len(await de.custom_field_definitions()) == 100


async def test_a_batch_read_holds_at_most_one_answers_worth_of_customers():
    """A list answering one customer of 1 MiB a page made a batch hold 100 MiB of
    JSON (a red team's 6 MiB customers: 627 MB at concurrency 1), whatever the
    concurrency.  More than one answer's 8 MiB for a batch is refused."""
    store = Store(100)
    listing = store.transport.handler
    pad = "p" * 1024 * 1024

    def answer(request):
        response = listing(request)
        if request.method == "GET" and "/customers/?" in request.url:
            body = json.loads(response.body)
            return list_answer({**body["items"][0], "pad": pad}, count=body["count"])
        return response

    store.transport = MockTransport(answer)
    updates = [(cid, CustomerPatch(name="New")) for cid in range(1, 101)]
    async with client(store) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    assert len(results) == 100
    assert len(store.sent("GET")) == 8  # 1 MiB and a little each: past 8 MiB at the 8th
    assert store.sent("PATCH") == []
    assert {type(r.error) for r in results} == {ResponseFormatError}
    assert "more than 8 MiB" in str(results[0].error)


async def test_records_waiting_on_a_failed_read_of_the_definitions_share_its_answer():
    """A 5xx is not kept (the next record asks again), but the records that waited
    for that very read take its answer: each read them again, one after another,
    so a run of records naming custom fields went at one read cycle a record."""

    async def answer(request):
        for _ in range(50):  # as the network takes its time: every record comes meanwhile
            await asyncio.sleep(0)
        return Response(status=503, body=b"{}")

    transport = MockTransport(answer)
    updates = [(i, CustomerPatch(custom_fields={"Partner": True})) for i in range(1, 9)]
    async with mock_client(transport, retry=None) as de:
        results = [r async for r in de.iter_updates(updates, concurrency=8)]
    assert len(results) == 8
    assert all(r.error is not None and r.error.status == 503 for r in results)
    assert len(transport.requests) == 1


async def test_a_failed_refresh_of_the_definitions_is_not_the_answer_of_a_plain_read():
    """The records waiting while a refresh failed took its error, though the
    definitions they asked for were read and kept."""
    failing = False

    async def answer(request):
        for _ in range(50):  # as the network takes its time: the other call comes meanwhile
            await asyncio.sleep(0)
        if failing:
            return Response(status=503, body=b"{}")
        body = {"items": [definition(1, "Partner", "boolean")], "count": 1}
        return Response(status=200, body=json.dumps(body).encode())

    async with mock_client(MockTransport(answer), retry=None) as de:
        await de.custom_field_definitions()
        failing = True
        refresh = asyncio.ensure_future(de.custom_field_definitions(refresh=True))
        await asyncio.sleep(0)
        kept = await de.custom_field_definitions()
        with pytest.raises(ServerError):
            await refresh
    assert [d.name for d in kept] == ["Partner"]


# -- iter_customers -----------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 99])
async def test_a_list_whose_count_says_fewer_than_it_shows_is_read_to_its_end(count):
    """A count lower than what the pages already showed is wrong, not the end:
    the customers after it are read, not silently left out."""
    rows = [row(i) for i in range(1, 151)]

    def answer(request):
        query = parse_qs(urlsplit(request.url).query)
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        return list_answer(*rows[offset : offset + limit], count=count)

    async with mock_client(answer) as de:
        ids = [c.id async for c in de.iter_customers()]
    assert ids == list(range(1, 151))


async def test_a_list_that_ends_short_of_its_own_count_is_an_error_not_the_end():
    """An empty page at offset 100 of a list that counts 150 in that same answer:
    the 50 it did not show are not left out without a word."""
    rows = [row(i) for i in range(1, 101)]

    def answer(request):
        query = parse_qs(urlsplit(request.url).query)
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        return list_answer(*rows[offset : offset + limit], count=150)

    ids = []
    async with mock_client(answer) as de:
        with pytest.raises(ResponseFormatError, match="counts 150"):
            async for c in de.iter_customers():
                ids.append(c.id)
    assert ids == list(range(1, 101))


async def test_a_row_deleted_between_a_lists_count_and_its_page_is_read_once_more():
    """An honest list counts in one query and slices in another: a customer
    deleted between them leaves the last page empty under the old count.  That
    page is read once more, and the list ends where the new count says."""
    rows = [row(i) for i in range(1, 101)]
    counts = iter([101, 101, 100])  # the first page, the empty one, once more

    def answer(request):
        query = parse_qs(urlsplit(request.url).query)
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        return list_answer(*rows[offset : offset + limit], count=next(counts))

    async with mock_client(answer) as de:
        ids = [c.id async for c in de.iter_customers()]
    assert ids == list(range(1, 101))


async def test_match_on_reads_once_more_a_list_that_counts_a_holder_it_does_not_show():
    """The holder was deleted between the list's count and its page: read once
    more, the list agrees with itself, and no customer has the key."""
    answers = iter([list_answer(count=1), list_answer(count=0)])

    async with mock_client(lambda request: next(answers)) as de:
        [result] = [
            r
            async for r in de.iter_updates(
                [("CRM-1", CustomerPatch(name="New"))], match_on="unique_id"
            )
        ]
    assert isinstance(result.error, NotFoundError), result.error


@pytest.mark.parametrize(
    ("pages", "count", "requests"),
    [
        ([range(1, 101)], 10**12, 2),  # the same page at every offset, no end in sight
        ([range(1, 101), range(51, 151)], 150, 2),  # ignores the offset, two pages in turn
        ([range(1, 101), range(101, 201), range(1, 101)], 0, 3),  # a count proven wrong
    ],
)
async def test_a_list_that_does_not_page_is_an_error_not_an_endless_list(pages, count, requests):
    """A list that shows the page before again, or, past a count it has proven
    wrong, anything it showed since, would be read (and yielded) forever."""
    turn = itertools.count()

    async def answer(request):
        await asyncio.sleep(0)  # lets the hang guard fire
        ids = pages[next(turn) % len(pages)]
        return list_answer(*[row(i) for i in ids], count=count)

    transport = MockTransport(answer)

    async def read_all():
        return [c async for c in de.iter_customers()]

    async with mock_client(transport) as de:
        with pytest.raises(ResponseFormatError, match="does not page"):
            await asyncio.wait_for(read_all(), HANG_GUARD)
    assert len(transport.requests) == requests


async def test_a_short_list_that_ignores_its_offset_and_its_count_is_read_once():
    """Fewer customers than a page, the same at every offset, and a count of 0:
    the short page is the end, as it was before counts were doubted."""
    transport = MockTransport(lambda r: list_answer(*[row(i) for i in range(1, 51)], count=0))
    async with mock_client(transport) as de:
        ids = [c.id async for c in de.iter_customers()]
        definitions_answer = {"items": [definition(i, f"F{i}") for i in range(1, 11)], "count": 0}
        transport.handler = lambda r: Response(
            status=200, body=json.dumps(definitions_answer).encode()
        )
        definitions = await asyncio.wait_for(de.custom_field_definitions(), HANG_GUARD)
    assert ids == list(range(1, 51))
    assert [d.id for d in definitions] == list(range(1, 11))
    assert len(transport.requests) == 2


@pytest.mark.parametrize("bad_id", [[1], {"id": 1}, "7", 0, True, None])
@pytest.mark.parametrize("count", [2, 0])
async def test_a_listed_customer_whose_id_is_not_an_id_is_a_format_error(bad_id, count):
    """Every listed customer is sent to by its id later: one of another shape
    (unhashable, a string for an integer id) fails its page, typed, whatever
    the count says, and is never handed out."""
    page = list_answer(row(1), {**row(2), "id": bad_id}, count=count)
    async with mock_client(lambda r: page) as de:
        with pytest.raises(ResponseFormatError, match="not an id dualentry gives"):
            [c async for c in de.iter_customers()]


async def test_definitions_whose_count_says_fewer_than_they_show_are_read_to_their_end():
    fields = [definition(i, f"F{i}") for i in range(1, 151)]

    def answer(request):
        query = parse_qs(urlsplit(request.url).query)
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        body = {"items": fields[offset : offset + limit], "count": 1}
        return Response(status=200, body=json.dumps(body).encode())

    async with mock_client(answer) as de:
        read = await de.custom_field_definitions()
    assert [d.id for d in read] == list(range(1, 151))


# -- what a batch read answers ------------------------------------------------------------


def batch_reads_answered_by(answer_list):
    """A Store whose list answers are rewritten by ``answer_list(items, query_ids)``."""
    store = Store(5)

    def answer(request):
        response = store.answer(request)
        if request.method == "GET" and "/customers/?" in request.url:
            query = parse_qs(urlsplit(request.url).query)
            body = json.loads(response.body)
            items = answer_list(body["items"], [int(i) for i in query.get("id", [])])
            return list_answer(*items, count=body["count"] if items else 0)
        return response

    store.transport = MockTransport(answer)
    return store


class _ListOnly(type(get_adapter("dualentry"))):
    """DualEntry as a provider with a list and no read of one customer would be."""

    def get_path(self, segment):
        return None


def with_get(get):
    """Client arguments for a provider that can (``True``) or cannot read one customer."""
    return {} if get else {"provider": _ListOnly()}


@pytest.mark.parametrize("get", [True, False])
async def test_a_customer_listed_twice_differently_is_not_guessed(get):
    """Which of the two rows is current is not known: comparing with either could
    skip a record that must be sent.  The customer is read on its own instead
    (where the provider has a read of one customer), and the write is sent."""
    store = batch_reads_answered_by(
        lambda items, ids: [row(1, name="Old"), row(1, name="C1"), *items[1:]]
    )
    updates = [(1, CustomerPatch(name="New")), (2, CustomerPatch(name="C2"))]
    async with client(store, **with_get(get)) as de:
        first, second = sorted(
            [r async for r in de.iter_updates(updates, skip_unchanged=True)],
            key=lambda r: r.index,
        )
    if get:
        assert first.ok
        assert first.changed
        assert [r.url.rsplit("/", 2)[-2] for r in store.sent("PATCH")] == ["1"]
    else:
        assert isinstance(first.error, ResponseFormatError)
        assert "twice" in str(first.error)
        assert store.sent("PATCH") == []
    assert second.ok  # the others of the page are read as usual
    assert not second.changed


async def test_a_customer_listed_twice_the_same_is_read_once():
    store = batch_reads_answered_by(lambda items, ids: [items[0], *items])
    async with client(store) as de:
        [result] = [
            r async for r in de.iter_updates([(1, CustomerPatch(name="C1"))], skip_unchanged=True)
        ]
    assert result.ok
    assert not result.changed


async def test_a_batch_read_whose_count_says_fewer_than_it_shows_reads_on():
    """Two customers a page, and a count of one: the others exist, and must not be
    reported as not found."""
    store = Store(5)

    def answer(request):
        response = store.answer(request)
        if request.method == "GET" and "/customers/?" in request.url:
            items = json.loads(response.body)["items"]  # the page asked for
            return list_answer(*items[:2], count=1)
        return response

    store.transport = MockTransport(answer)
    updates = [(cid, CustomerPatch(name=f"C{cid}")) for cid in range(1, 6)]
    async with client(store) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    assert [r.error for r in results] == [None] * 5
    assert not any(r.changed for r in results)


@pytest.mark.parametrize("get", [True, False])
async def test_a_batch_read_whose_pages_repeat_a_customer_says_who_is_missing_is_not_known(get):
    """Each page starts one row early (the provider's bug): the rows it repeats
    count towards the end of the read, so the last customer is never shown.
    It exists: "not found" would be a false answer.  It is read on its own
    instead, where the provider can read one customer."""
    store = Store(5)

    def answer(request):
        if request.method == "GET" and "/customers/?" in request.url:
            offset = int(parse_qs(urlsplit(request.url).query)["offset"][0])
            rows = [row(i, name=f"C{i}") for i in range(1, 6)]
            return list_answer(*rows[max(0, offset - 1) : offset + 1], count=5)
        return store.answer(request)

    store.transport = MockTransport(answer)
    updates = [(cid, CustomerPatch(name=f"C{cid}")) for cid in range(1, 6)]
    async with client(store, **with_get(get)) as de:
        results = {r.customer_id: r async for r in de.iter_updates(updates, skip_unchanged=True)}
    assert [results[cid].ok for cid in range(1, 5)] == [True] * 4
    if get:
        assert results[5].ok
        assert not results[5].changed
        assert store.sent("GET")[-1].url.endswith("/customers/5/")
    else:
        assert not isinstance(results[5].error, NotFoundError)
        assert isinstance(results[5].error, ResponseFormatError)
        assert "not known" in str(results[5].error)
    assert store.sent("PATCH") == []


async def test_a_batch_read_answered_in_short_pages_reads_on_instead_of_missing_customers():
    """The provider answers two customers a page whatever the limit asked, and says
    how many match: the others exist, and must not be reported as not found."""
    store = batch_reads_answered_by(lambda items, ids: items[:2])
    updates = [(cid, CustomerPatch(name=f"C{cid}")) for cid in range(1, 6)]
    async with client(store) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    assert [r.error for r in results] == [None] * 5
    assert not any(r.changed for r in results)
    queries = [parse_qs(urlsplit(r.url).query) for r in store.sent("GET")]
    assert [q["offset"] for q in queries] == [["0"], ["2"], ["4"]]
    assert all(q["ordering"] == ["id"] for q in queries)  # pages that do not move


@pytest.mark.parametrize("get", [True, False])
async def test_a_batch_read_that_ignores_its_id_filter_does_not_say_who_is_missing(get):
    """The list answered customers that were not asked for: it ignored the filter,
    so a customer it did not show may well exist (here it does)."""
    store = batch_reads_answered_by(lambda items, ids: [row(cid) for cid in range(3, 6)])
    updates = [(3, CustomerPatch(name="C3")), (1, CustomerPatch(name="x"))]
    async with client(store, **with_get(get)) as de:
        found, missing = sorted(
            [r async for r in de.iter_updates(updates, skip_unchanged=True)],
            key=lambda r: r.index,
        )
    assert found.ok
    assert not found.changed
    if get:
        assert missing.ok
        assert missing.changed
        assert store.customers[1]["name"] == "x"
    else:
        assert isinstance(missing.error, ResponseFormatError)
        assert not isinstance(missing.error, NotFoundError)
        assert store.sent("PATCH") == []


# -- what the list cannot settle, a read of the one customer does --------------------------


def malformed(cid):
    """A DualEntry customer whose custom fields are not a list: it cannot be read."""
    return {**row(cid), "custom_fields": "not a list"}


@pytest.mark.parametrize("get_too", [False, True])
async def test_one_malformed_customer_in_a_batch_read_fails_only_its_own_record(get_too, caplog):
    """A page with one customer that cannot be read cannot be read: its neighbours
    are read on their own, so that one customer's answer does not fail (again,
    on every rerun) the hundred records of its page."""
    store = Store(5)

    def answer(request):
        if request.method == "GET" and "/customers/?" in request.url:
            return list_answer(*[malformed(i) if i == 3 else row(i) for i in range(1, 6)])
        if get_too and request.method == "GET" and request.url.endswith("/customers/3/"):
            return Response(status=200, body=json.dumps(malformed(3)).encode())
        return store.answer(request)

    store.transport = MockTransport(answer)
    updates = [(cid, CustomerPatch(name=f"C{cid}")) for cid in range(1, 6)]
    async with client(store) as de:
        results = sorted(
            [r async for r in de.iter_updates(updates, skip_unchanged=True)],
            key=lambda r: r.index,
        )
    assert [r.ok for r in results] == [True, True, not get_too, True, True]
    if get_too:
        assert isinstance(results[2].error, ResponseFormatError)
    assert not any(r.changed for r in results)
    assert store.sent("PATCH") == []
    gets = [r.url.rsplit("/", 2)[-2] for r in store.sent("GET") if "?" not in r.url]
    assert sorted(gets) == ["1", "2", "3", "4", "5"]  # the page asked, each once
    assert "one at a time" in caplog.text


async def test_a_list_that_counts_customers_it_does_not_show_is_not_taken_at_its_word():
    """The list counts 3 customers with these ids and shows none: who is missing
    is not known, so each is read on its own (they exist), never "not found"."""
    store = Store(3)

    def answer(request):
        if request.method == "GET" and "/customers/?" in request.url:
            return list_answer(count=3)
        return store.answer(request)

    store.transport = MockTransport(answer)
    updates = [(cid, CustomerPatch(name="New")) for cid in range(1, 4)]
    async with client(store) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    assert sorted((r.customer_id, r.ok, r.changed) for r in results) == [
        (1, True, True),
        (2, True, True),
        (3, True, True),
    ]
    assert [c["name"] for c in store.customers.values()] == ["New"] * 3


async def test_match_on_a_list_that_counts_a_holder_it_does_not_show_is_a_format_error():
    """Not "no customer has it": the list says one does."""
    store = Store(1)
    store.customers[1]["unique_id"] = "CRM-1"

    def answer(request):
        if request.method == "GET" and "/customers/?" in request.url:
            return list_answer(count=1)
        return store.answer(request)

    store.transport = MockTransport(answer)
    async with client(store) as de:
        [result] = [
            r
            async for r in de.iter_updates(
                [("CRM-1", CustomerPatch(name="New"))], match_on="unique_id"
            )
        ]
    assert isinstance(result.error, ResponseFormatError), result.error
    assert "1" in str(result.error)
    assert store.sent("PATCH") == []


async def test_a_batch_read_without_a_read_of_one_customer_fails_the_page_typed():
    """A provider with a list but no read of one customer: the page's error is
    every record's of that page, and nothing is written."""
    store = Store(5)

    def answer(request):
        if request.method == "GET" and "/customers/?" in request.url:
            return list_answer(*[malformed(i) if i == 3 else row(i) for i in range(1, 6)])
        return store.answer(request)

    store.transport = MockTransport(answer)
    updates = [(cid, CustomerPatch(name=f"C{cid}")) for cid in range(1, 6)]
    async with client(store, **with_get(False)) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    assert all(isinstance(r.error, ResponseFormatError) for r in results)
    assert len(store.sent("GET")) == 1
    assert store.sent("PATCH") == []


async def test_a_batch_read_that_fails_otherwise_is_not_read_one_at_a_time():
    """A refusal (here a 403) would refuse every read of one customer too: the
    page's error is its records', for one request."""
    store = Store(5)

    def answer(request):
        if request.method == "GET" and "/customers/?" in request.url:
            return Response(status=403, body=b'{"detail": "no"}')
        return store.answer(request)

    store.transport = MockTransport(answer)
    updates = [(cid, CustomerPatch(name=f"C{cid}")) for cid in range(1, 6)]
    async with client(store) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    assert all(isinstance(r.error, PermissionDeniedError) for r in results)
    assert len(store.requests) == 1


BIG = 2**63  # past a 64-bit database id: the provider refuses it, even in a filter


def refusing_big_ids(store):
    """The store, with a provider's 400 for any request naming an id past 64 bits."""

    def answer(request):
        parts = urlsplit(request.url)
        named = parse_qs(parts.query).get("id", []) + [parts.path.strip("/").split("/")[-1]]
        if any(n.isdigit() and int(n) >= BIG for n in named):
            return Response(status=400, body=b'{"success": false, "errors": {"id": ["big"]}}')
        return store.answer(request)

    store.transport = MockTransport(answer)


async def test_one_id_the_list_filter_refuses_fails_only_its_own_record():
    """A batch read refused as a bad request (one id of its hundred the provider
    cannot take) failed all hundred records, and with a failure threshold the
    whole run stopped: each is read on its own instead."""
    store = Store(10)
    refusing_big_ids(store)
    updates = [(cid, CustomerPatch(name=f"N{cid}")) for cid in range(1, 11)]
    updates.insert(3, (BIG, CustomerPatch(name="typo")))
    async with client(store) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    failed = {r.customer_id: type(r.error) for r in results if not r.ok}
    assert failed == {BIG: BadRequestError}
    assert [store.customers[cid]["name"] for cid in range(1, 11)] == [
        f"N{cid}" for cid in range(1, 11)
    ]


@pytest.mark.parametrize("skip_unchanged", [False, True])
async def test_an_id_too_long_to_write_is_its_own_records_validation_error(skip_unchanged):
    """str() refuses an int of more than 4,300 digits: a bare ValueError, counted
    as an attempt (though nothing was sent), and with a read it failed the batch."""
    store = Store(3)
    huge = 10**5000
    updates = [(1, CustomerPatch(name="A")), (huge, CustomerPatch(name="B"))]
    updates.append((2, CustomerPatch(name="C")))
    async with client(store) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=skip_unchanged)]
        with pytest.raises(ValidationError, match="id"):
            de.prepare(huge, CustomerPatch(name="B"))
    [bad] = [r for r in results if not r.ok]
    assert bad.index == 1
    assert isinstance(bad.error, ValidationError)
    assert bad.attempts == 0
    assert len(results) == 3


class _IndexFails(list):
    def __getitem__(self, index):
        raise RuntimeError("no item by index")


async def test_a_pair_that_unpacks_but_cannot_be_indexed_is_read_like_any_other():
    """The read took the id by index (and failed quietly) while the record took
    the pair apart by iteration: it was sent unread, with no undo line."""
    store = Store(2)
    item = _IndexFails([1, CustomerPatch(name="C1")])  # C1 is what customer 1 holds
    async with client(store) as de:
        [result] = [r async for r in de.iter_updates([item], skip_unchanged=True)]
    assert result.ok
    assert not result.changed
    assert store.sent("PATCH") == []


# -- custom fields as a customer shows them -----------------------------------------------


def entry(fid, name, value, **field):
    """One of a customer's custom_fields as DualEntry shows it."""
    shown = {"id": fid, "name": name, "field_type": "boolean", **field}
    return {"field": shown, "value": {"custom_field_id": fid, "value": value}}


PARTNER_ONCE_LISTED_TWICE = [entry(41, "Partner", True), entry(41, "Partner", True)]
PARTNER_WITHOUT_ITS_NAME = [{**entry(41, None, True), "field": {"id": 41}}]


@pytest.mark.parametrize(
    "shown",
    [PARTNER_ONCE_LISTED_TWICE, PARTNER_WITHOUT_ITS_NAME],
    ids=["the-same-entry-twice", "an-entry-without-its-name"],
)
async def test_clearing_a_custom_field_the_read_shows_oddly_is_still_sent(shown):
    """Partner (41) holds True: a record clearing it must not be found "unchanged"
    because the read keyed it by id rather than by its name."""
    store = Store(1, [definition(41, "Partner", "boolean")])
    store.customers[1]["custom_fields"] = shown
    async with client(store) as de:
        [result] = [
            r
            async for r in de.iter_updates(
                [(1, CustomerPatch(custom_fields={"Partner": None}))], skip_unchanged=True
            )
        ]
    assert result.ok
    assert result.changed
    assert len(store.sent("PATCH")) == 1


PARTNER_UNNAMED = [entry(41, "", True)]


@pytest.mark.parametrize(
    "shown",
    [PARTNER_ONCE_LISTED_TWICE, PARTNER_WITHOUT_ITS_NAME, PARTNER_UNNAMED],
    ids=["the-same-entry-twice", "an-entry-without-its-name", "an-empty-name"],
)
async def test_clearing_a_custom_field_by_id_the_read_shows_oddly_is_still_sent(shown):
    """Field 41 holds True however it is shown: clearing it by id must be sent, and
    its undo must put True back.  (With an empty name the value was looked up
    under the name, which the read had not keyed it by, found "None", and the
    record ended ok with nothing sent.)"""
    store = Store(1, [definition(41, "Partner", "boolean")])
    store.customers[1]["custom_fields"] = shown
    patch = CustomerPatch(custom_fields={41: None})
    async with client(store) as de:
        [result] = [r async for r in de.iter_updates([(1, patch)], skip_unchanged=True)]
    assert result.ok
    assert result.changed
    assert len(store.sent("PATCH")) == 1
    before = get_adapter("dualentry").customer_from(row(1, custom_fields=shown))
    assert patch.changes_from(before)
    assert patch.undo_for(before) == (CustomerPatch(custom_fields={41: True}), ())


async def test_a_plan_does_not_guess_which_shown_field_a_name_it_did_not_show_sets():
    """The read shows field 41 with an empty name; a record sets "Partner" (41, by
    the definitions), the next sets 41 to True again.  The run sends the second
    (the first made 41 False), so the plan must too, not find it unchanged."""
    store = Store(1, [definition(41, "Partner", "boolean")])
    store.customers[1]["custom_fields"] = PARTNER_UNNAMED
    updates = [
        (1, CustomerPatch(custom_fields={"Partner": False})),
        (1, CustomerPatch(custom_fields={41: True})),
    ]
    async with client(store) as de:
        results = sorted([r async for r in de.iter_plan(updates)], key=lambda r: r.index)
    assert [(r.ok, r.changed) for r in results] == [(True, True), (True, True)]
    assert results[1].sent == CustomerPatch(custom_fields={41: True})
    assert store.sent("PATCH") == []


@pytest.mark.parametrize(
    ("first", "second", "which"),
    [
        (("Partner", True), ("Partner", False), "values"),
        (("Old", True), ("Partner", True), "names"),
    ],
)
def test_one_custom_field_shown_twice_otherwise_is_a_format_error(first, second, which):
    """Two values: which holds is not known.  Two names: by which it is keyed is
    not (a record by the other name would be compared with nothing, and an undo
    file would not see the two names are one field)."""
    adapter = get_adapter("dualentry")
    with pytest.raises(ValueError, match=f"custom field 41 is shown twice, with two {which}"):
        adapter.customer_from(row(1, custom_fields=[entry(41, *first), entry(41, *second)]))
    shown = adapter.customer_from(row(1, custom_fields=PARTNER_ONCE_LISTED_TWICE))
    assert shown.custom_fields == {"Partner": True}


@pytest.mark.parametrize("odd_id", ["Region", "5", True, 5.0, None, [5]])
def test_a_custom_field_whose_id_is_not_an_id_is_a_format_error(odd_id):
    """Values are keyed by name, and by id where two fields share a name: an id
    of another type could take a name's place ("Region" is then field 5's value
    and another's) and a write that must be sent would be found unchanged."""
    adapter = get_adapter("dualentry")
    shown = row(1, custom_fields=[entry(5, "Region", "US"), entry(odd_id, None, "EU")])
    with pytest.raises(TypeError, match="custom field's id"):
        adapter.customer_from(shown)


@pytest.mark.parametrize("odd_name", [["x"], {"x": 1}, 5, True])
def test_a_custom_field_whose_name_is_not_text_is_a_format_error(odd_name):
    """Two fields named by the same JSON list were read, then comparing a record
    with them raised TypeError (a list is no set member) out of the whole run."""
    adapter = get_adapter("dualentry")
    shown = row(1, custom_fields=[entry(50, odd_name, None), entry(51, odd_name, None)])
    with pytest.raises(TypeError, match="custom field's name"):
        adapter.customer_from(shown)


async def test_a_customer_with_oddly_named_custom_fields_fails_only_its_own_records():
    store = Store(2)
    store.customers[1]["custom_fields"] = [entry(50, ["x"], None), entry(51, ["x"], None)]
    updates = [
        (1, CustomerPatch(custom_fields={50: True})),
        (2, CustomerPatch(name="other")),
        (1, CustomerPatch(custom_fields={50: False})),
    ]
    async with client(store, check_custom_fields=False) as de:
        for skip_unchanged in (False, True):
            results = [r async for r in de.iter_updates(updates, skip_unchanged=skip_unchanged)]
            assert sorted(r.index for r in results) == [0, 1, 2]
            assert {r.index for r in results if r.ok} == {1}
            assert all(isinstance(r.error, ResponseFormatError) for r in results if r.index != 1)


# -- reads that fail with a bug -----------------------------------------------------------


class TransportBug(Exception):
    """Not a CustomerPatchError: a transport's (or an adapter's) bug."""


@pytest.mark.parametrize(
    ("provider", "options"),
    [("dualentry", {"match_on": "unique_id"}), ("qwoty", {"skip_unchanged": True})],
)
async def test_a_read_failing_with_a_bug_leaves_no_other_read_running(provider, options):
    """One request of a batch's reads (one a record) raises something that is
    not a CustomerPatchError: the batch's other reads are cancelled before the
    run goes on.  They ran on, unseen, after update_many had returned (and sent
    their requests then): asyncio.gather does not cancel the rest."""
    never = asyncio.Event()
    answered_late = []

    async def answer(request):
        if "BOOM" in request.url or request.url.endswith(QID_BOOM):
            raise TransportBug("a bug in the transport")
        await never.wait()  # answers only once the run is over, if ever
        answered_late.append(request.url)
        return Response(status=500)

    keys = ["BOOM", *(f"K{i}" for i in range(7))] if provider == "dualentry" else QIDS
    updates = [(key, CustomerPatch(name="New")) for key in keys]
    async with mock_client(answer, provider) as c:
        report = await asyncio.wait_for(
            c.update_many(updates, concurrency=8, **options), HANG_GUARD
        )
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        never.set()
        await asyncio.sleep(0)
    assert others == []
    assert answered_late == []
    assert sorted(r.index for r in report.results) == list(range(8))
    assert all(isinstance(r.error, TransportBug) for r in report.results)


async def test_a_read_that_swallows_its_cancel_is_cancelled_again():
    """The batch's other reads are cancelled when one fails: a transport that
    swallows one cancel and waits on held the run forever (run_bulk cancels its
    own tasks until they end; the reads were cancelled once)."""
    waiting = []
    both_waiting = asyncio.Event()

    async def answer(request):
        if "BOOM" in request.url:
            await both_waiting.wait()  # the others wait first
            raise TransportBug("a bug in the transport")
        waiting.append(request)
        if len(waiting) == 2:
            both_waiting.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()  # the first cancel, swallowed
        await asyncio.Event().wait()  # then waits on, until cancelled again
        return Response(status=500)

    updates = [(key, CustomerPatch(name="New")) for key in ("BOOM", "K1", "K2")]
    async with mock_client(answer) as c:
        run = c.update_many(updates, concurrency=3, match_on="unique_id")
        report = await asyncio.wait_for(run, HANG_GUARD)
    assert [type(r.error) for r in report.results] == [TransportBug] * 3


QID_BOOM = "00000000-0000-4000-8000-00000000b000"
QIDS = [QID_BOOM, *(f"00000000-0000-4000-8000-00000000000{i}" for i in range(7))]


# -- a closed client ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["updates", "plan"])
async def test_a_client_closed_mid_run_sends_no_more_reads(how):
    """aclose() in the middle of a skip_unchanged run or a plan: the pages still to
    read are not read (a closed client sends nothing), their records are not
    attempted, and the run does not die of the RuntimeError a closed client raises."""
    store = Store(300)
    updates = [(cid, CustomerPatch(name="New")) for cid in range(1, 301)]
    results = []
    de = client(store)
    if how == "updates":
        run = de.iter_updates(updates, concurrency=2, skip_unchanged=True)
    else:
        run = de.iter_plan(updates, concurrency=2)
    async for result in run:
        results.append(result)
        if len(results) == 1:
            await de.aclose()
            sent_before_close = len(store.requests)
    assert len(results) == 300
    assert len(store.requests) == sent_before_close
    left = [r for r in results if not r.ok]
    assert left
    assert all(isinstance(r.error, NotAttemptedError) and r.attempts == 0 for r in left)


# -- match_on -----------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["max_failures", "max_consecutive_failures"])
@pytest.mark.parametrize("reading", ["skip_unchanged", "match_on"])
async def test_a_file_of_wrong_ids_stops_at_the_failure_limit_when_reading_first(limit, reading):
    """A customer the read does not find fails its record as a 404 on the write
    would: the limits (there "so that a file of wrong ids does not send every
    record to fail") stop the run.  Reads run a batch ahead of the records, so
    what two batches read ends as read; the records after are not attempted
    (before this, every record was read, and failed)."""
    store = Store(0)
    if reading == "match_on":
        updates = [(f"CRM-{i}", CustomerPatch(name="x")) for i in range(20)]
        options, batch = {"match_on": "unique_id", "concurrency": 4}, 4
    else:
        updates = [(i, CustomerPatch(name="x")) for i in range(1, 351)]
        options, batch = {"skip_unchanged": True}, 100
    async with client(store) as de:
        results = [r async for r in de.iter_updates(updates, **options, **{limit: 3})]
    outcomes = [type(r.error).__name__ for r in sorted(results, key=lambda r: r.index)]
    found = outcomes.count("NotFoundError")
    assert 3 <= found <= 2 * batch
    assert outcomes == ["NotFoundError"] * found + ["NotAttemptedError"] * (len(updates) - found)
    if reading == "match_on":  # one lookup a key: none after the stop
        assert len(store.sent("GET")) == found


async def test_match_on_orders_the_records_of_one_customer_whatever_key_named_it():
    """Record 0 renames customer 1's unique_id from A to B; record 2, read in the next
    batch while record 0's answer is still on its way, names B: the same customer.
    Record 0's answer is lost and it is sent again: it must not land after record 2."""
    store = Store(2)
    store.customers[1]["unique_id"] = "A"
    store.customers[2]["unique_id"] = "Z"
    second_sent = asyncio.Event()
    first_tries = 0

    async def answer(request):
        nonlocal first_tries
        if request.method != "PATCH":
            return store.answer(request)
        cid = int(urlsplit(request.url).path.rstrip("/").rsplit("/", 1)[1])
        store.customers[cid].update(request.json())  # applied as it arrives
        if request.json().get("name") == "second":
            second_sent.set()
        elif request.json().get("name") == "first" and not first_tries:
            first_tries += 1
            with contextlib.suppress(TimeoutError):  # only a wait for a PATCH sent too soon
                await asyncio.wait_for(second_sent.wait(), 0.5)
            return Response(status=503, body=b"{}")  # the answer is lost: sent again
        return Response(status=200, body=json.dumps(store.customers[cid]).encode())

    store.transport = MockTransport(answer)
    updates = [
        ("A", CustomerPatch(unique_id="B", name="first")),
        ("Z", CustomerPatch(name="other")),
        ("B", CustomerPatch(name="second")),
    ]
    async with client(store) as de:
        results = await asyncio.wait_for(
            de.update_many(updates, concurrency=2, match_on="unique_id"), HANG_GUARD
        )
    assert [r.ok for r in results.results] == [True, True, True]
    assert results.results[2].customer.id == 1
    assert store.customers[1]["name"] == "second"  # the file's last word for customer 1


@pytest.mark.parametrize("value", ["20261122", "2026-W47-7", "2026-327"])
async def test_a_date_custom_field_takes_the_form_it_says_it_takes(value):
    """The check says "a date written YYYY-MM-DD"; Python's date.fromisoformat reads
    the ISO basic, week and ordinal forms too, which it must not let through."""
    store = Store(1, [definition(5, "Since", "date")])
    async with client(store) as de:
        with pytest.raises(ValidationError, match="YYYY-MM-DD"):
            await de.update(1, CustomerPatch(custom_fields={"Since": value}))
    assert store.sent("PATCH") == []


# -- a page is at most a page -------------------------------------------------------------


async def test_a_page_longer_than_any_page_asked_for_is_refused_before_it_is_read():
    """Every read asks for 100 items at most: a page of (say) 600,000 tiny items,
    within the 8 MiB body cap, would be 600,000 Customer objects (hundreds of MB)."""
    page = list_answer(*[{"id": i} for i in range(1, 102)], count=101)
    definitions = {"items": [definition(i, f"F{i}") for i in range(1, 102)], "count": 101}

    def answer(request):
        if "custom-fields" in request.url:
            return Response(status=200, body=json.dumps(definitions).encode())
        return page

    async with mock_client(answer) as de:
        with pytest.raises(ResponseFormatError, match="101 items"):
            [c async for c in de.iter_customers()]
        with pytest.raises(ResponseFormatError, match="101 items"):
            await de.custom_field_definitions()
        [result] = [
            r async for r in de.iter_updates([(1, CustomerPatch(name="x"))], skip_unchanged=True)
        ]
    assert isinstance(result.error, ResponseFormatError)


async def test_definitions_that_keep_failing_count_towards_the_thresholds():
    """A 5xx is worth a retry, so it is not kept: each record naming a custom field
    asks again. Those are requests that failed, as evidence as a failed write."""
    transport = MockTransport(lambda r: Response(status=500, body=b"{}"))
    updates = [(i, CustomerPatch(custom_fields={"Partner": True})) for i in range(1, 101)]
    async with mock_client(transport, retry=None) as de:
        results = [
            r async for r in de.iter_updates(updates, concurrency=1, max_consecutive_failures=5)
        ]
    assert len(results) == 100
    assert len(transport.requests) == 5
    assert sum(isinstance(r.error, NotAttemptedError) for r in results) == 95


@pytest.mark.parametrize("get", [True, False])
async def test_a_batch_read_in_short_pages_that_ignore_the_offset_stops_at_once(get):
    """Two customers a page, the same two whatever the offset: reading on would cost
    a request per id asked for, and the customers it never showed are not known
    to be missing (each is read on its own, where the provider can)."""
    store = Store(5)

    def answer(request):
        if request.method == "GET" and "/customers/?" in request.url:
            return list_answer(row(1), row(2), count=5)
        return store.answer(request)

    store.transport = MockTransport(answer)
    updates = [(cid, CustomerPatch(name=f"C{cid}")) for cid in range(1, 6)]
    async with client(store, **with_get(get)) as de:
        results = sorted(
            [r async for r in de.iter_updates(updates, skip_unchanged=True)],
            key=lambda r: r.index,
        )
    lists = [r for r in store.sent("GET") if "?" in r.url]
    assert len(lists) == 2
    if get:
        assert [r.ok for r in results] == [True] * 5
        assert len(store.sent("GET")) == 2 + 3
    else:
        assert [r.ok for r in results] == [True, True, False, False, False]
        assert all(isinstance(r.error, ResponseFormatError) for r in results[2:])
        assert len(store.sent("GET")) == 2
    assert store.sent("PATCH") == []


@pytest.mark.parametrize("shown_id", ["5", 5.0, True, None, [5]])
async def test_match_on_a_customer_whose_id_is_not_an_id_is_a_format_error(shown_id):
    """The key matched a customer whose id DualEntry could not have given: the
    answer is wrong, not the record (a ValidationError would blame the input)."""

    def answer(request):
        assert request.method == "GET", "nothing may be written"
        return list_answer(row(shown_id, unique_id="CRM-1"))

    async with mock_client(answer) as de:
        [result] = [
            r
            async for r in de.iter_updates(
                [("CRM-1", CustomerPatch(name="x"))], match_on="unique_id"
            )
        ]
    assert isinstance(result.error, ResponseFormatError)


# -- held: promises that kept under these answers (guards against regressions) -----------


@pytest.mark.parametrize("get", [True, False])
async def test_a_batch_read_answering_an_id_of_the_wrong_type_is_not_that_customer(get):
    """ "1" is not customer 1: no comparison with it, no write, and no "not found"."""
    store = batch_reads_answered_by(
        lambda items, ids: [{**item, "id": str(item["id"])} for item in items]
    )
    async with client(store, **with_get(get)) as de:
        [result] = [
            r async for r in de.iter_updates([(1, CustomerPatch(name="C1"))], skip_unchanged=True)
        ]
    if get:  # read on its own, it is customer 1, as the patch already has it
        assert result.ok
        assert not result.changed
    else:
        assert isinstance(result.error, ResponseFormatError)
    assert store.sent("PATCH") == []


@pytest.mark.parametrize("where", ["batch read", "whole-customer read", "definitions"])
async def test_cancelling_the_consumer_during_a_read_leaves_no_task(where):
    store = Store(20, [definition(1, "Partner", "boolean")])
    gate, reading = asyncio.Event(), asyncio.Event()
    held = {
        "batch read": lambda r: "/customers/?" in r.url,
        "whole-customer read": lambda r: r.method == "GET" and r.url.endswith("/1/"),
        "definitions": lambda r: "custom-fields" in r.url,
    }[where]

    async def answer(request):
        if held(request):
            reading.set()
            await gate.wait()  # never opened
        return store.answer(request)

    store.transport = MockTransport(answer)
    patch = CustomerPatch(country="FR", custom_fields={"Partner": True})  # lists lack country
    async with client(store) as de:

        async def consume():
            return [r async for r in de.iter_updates([(1, patch)], skip_unchanged=True)]

        task = asyncio.create_task(consume())
        await asyncio.wait_for(reading.wait(), HANG_GUARD)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, HANG_GUARD)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
