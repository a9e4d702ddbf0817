"""Reading before writing (issue 12): get, list, definitions, changes_from, skip_unchanged.

The client's logic runs against a MockTransport here; the sandbox's read
routes are proven against the spec in test_sandbox_reads.py, and whole runs
against the sandbox in test_read_runs.py.
"""

import asyncio
import collections
import itertools
import json
import random
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from customer_patch import (
    Address,
    AuthenticationError,
    Client,
    Customer,
    CustomerPatch,
    ExternalIds,
    NotAttemptedError,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    RateLimit,
    Response,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    TaxId,
    TransportError,
    UnknownCustomFieldError,
    UnsupportedOperationError,
    ValidationError,
    _bulk,
    get_adapter,
)
from customer_patch._pacing import Pacer
from customer_patch.sandbox import fake_for
from customer_patch.testing import MockTransport

HANG_GUARD = 10


def row(cid, **fields):
    """A DualEntry customer as a list shows it (no address, no country)."""
    return {
        "id": cid,
        "name": f"C{cid}",
        "unique_id": None,
        "email": "",
        "website": "",
        "phone": "",
        "customer_type": "business",
        "is_active": True,
        "full_address": None,
        "shipping_address": None,
        "custom_fields": [],
        **fields,
    }


class Store:
    """A DualEntry stand-in at the transport seam: enough to test the client's logic."""

    def __init__(self, count=0, definitions=()):
        self.customers = {cid: row(cid) for cid in range(1, count + 1)}
        self.definitions = list(definitions)
        self.transport = MockTransport(self.answer)

    @property
    def requests(self):
        return self.transport.requests

    def sent(self, method):
        return [r for r in self.requests if r.method == method]

    def answer(self, request):
        parts = urlsplit(request.url)
        query = parse_qs(parts.query)
        segments = parts.path.strip("/").split("/")
        if request.method == "GET" and segments[-1] == "custom-fields":
            return self.page(self.definitions, query)
        if request.method == "GET" and segments[-1] == "customers":
            items = [self.customers[k] for k in sorted(self.customers)]
            if "id" in query:
                wanted = {int(i) for i in query["id"]}
                items = [c for c in items if c["id"] in wanted]
            if "unique_id" in query:
                key = query["unique_id"][0].casefold()
                items = [c for c in items if (c["unique_id"] or "").casefold() == key]
            return self.page(items, query)
        customer = self.customers.get(int(segments[-1]))
        if customer is None:
            return Response(status=404, body=b'{"success": false, "errors": {"__all__": ["x"]}}')
        if request.method == "PATCH":
            customer.update(
                (k, v)
                for k, v in request.json().items()
                if k in ("name", "email", "phone", "unique_id")
            )
        return Response(status=200, body=json.dumps(customer).encode())

    @staticmethod
    def page(items, query):
        limit, offset = int(query["limit"][0]), int(query["offset"][0])
        body = {"items": items[offset : offset + limit], "count": len(items)}
        return Response(status=200, body=json.dumps(body).encode())


def client(store, provider="dualentry", **kwargs):
    kwargs.setdefault("rate_limit", None)
    return Client(provider, token="k", transport=store.transport, **kwargs)


# -- builders and parsers -------------------------------------------------------------------


def test_list_filters_are_checked_and_sent_as_the_spec_writes_them():
    adapter = get_adapter("dualentry")
    path, route = adapter.prepare_list(
        {"id": [3, 1], "unique_id": "CRM-42", "record_status": ["posted"]}, offset=200
    )
    assert path == (
        "/public/v2/customers/?id=3&id=1&unique_id=CRM-42&record_status=posted"
        "&limit=100&offset=200"
    )
    assert route == "GET /public/v2/customers/"
    with pytest.raises(ValidationError) as info:
        adapter.prepare_list(
            {"id": ["3"], "colour": "red", "record_status": ["gone"], "name": 5}, offset=0
        )
    assert {p.field for p in info.value.problems} == {"id", "colour", "record_status", "name"}


@pytest.mark.parametrize(
    "filters", [{"email": ""}, {"search": ""}, {"customer_type": ["company", ""]}]
)
async def test_an_empty_filter_is_refused_not_sent(filters):
    # "Contains nothing" matches every customer: code like iter_customers(email=addr)
    # with an empty addr would walk the whole list as if every one matched.
    store = Store(3)
    async with client(store) as de:
        with pytest.raises(ValidationError, match="must not be empty"):
            async for _ in de.iter_customers(**filters):
                pass
    assert store.requests == []


def test_text_filters_are_percent_encoded():
    adapter = get_adapter("dualentry")
    path, _ = adapter.prepare_list({"search": "a&b=c d/é"}, offset=0)
    assert path.startswith("/public/v2/customers/?search=a%26b%3Dc%20d%2F%C3%A9&")


async def test_a_provider_without_a_documented_list_refuses_before_any_request():
    store = Store()
    async with client(store, "qwoty") as qwoty:
        with pytest.raises(UnsupportedOperationError) as info:
            async for _ in qwoty.iter_customers():
                pass
        with pytest.raises(UnsupportedOperationError):
            await qwoty.custom_field_definitions()
    assert (info.value.provider, info.value.operation) == ("qwoty", "list customers")
    assert store.requests == []


async def test_an_undocumented_filter_is_refused_not_dropped():
    store = Store(3)
    async with client(store) as de:
        with pytest.raises(ValidationError, match="colour"):
            async for _ in de.iter_customers(colour="red"):
                pass
    assert store.requests == []


@pytest.mark.parametrize(
    "body",
    [b'{"items": {}, "count": 1}', b'{"items": [], "count": "1"}', b"[]", b'{"count": 0}'],
)
async def test_a_page_of_the_wrong_shape_is_a_format_error(body):
    transport = MockTransport(lambda r: Response(status=200, body=body))
    async with Client("dualentry", token="k", transport=transport, rate_limit=None) as de:
        with pytest.raises(ResponseFormatError):
            async for _ in de.iter_customers():
                pass


def test_a_list_item_says_which_fields_it_did_not_have():
    adapter = get_adapter("dualentry")
    customer = adapter.customer_from(row(7, full_address=None))
    assert "billing_address" in customer.read_fields
    assert "address" not in customer.read_fields  # lists do not show it
    assert "country" not in customer.read_fields


# -- get and iter_customers ----------------------------------------------------------------


async def test_get_reads_one_customer_and_a_missing_one_is_not_found():
    store = Store(2)
    async with client(store) as de:
        customer = await de.get(2)
        with pytest.raises(NotFoundError):
            await de.get(9)
        with pytest.raises(ValidationError):
            await de.get("two")
    assert (customer.id, customer.name) == (2, "C2")
    assert [(r.method, urlsplit(r.url).path) for r in store.requests] == [
        ("GET", "/public/v2/customers/2/"),
        ("GET", "/public/v2/customers/9/"),
    ]


async def test_customers_are_read_page_by_page_lazily_in_a_stable_order():
    store = Store(250)
    async with client(store) as de:
        customers = de.iter_customers()
        first = [await anext(customers) for _ in range(100)]
        assert len(store.requests) == 1  # the second page is not read before it is needed
        rest = [c async for c in customers]
    assert [c.id for c in first + rest] == list(range(1, 251))
    assert len(store.requests) == 3
    queries = [parse_qs(urlsplit(r.url).query) for r in store.requests]
    assert [q["offset"] for q in queries] == [["0"], ["100"], ["200"]]
    assert all(q["ordering"] == ["id"] for q in queries)  # not -updated_at, which moves


async def test_definitions_are_read_from_every_page_once_per_client():
    definitions = [
        {"id": i, "name": f"F{i}", "field_type": "text", "is_active": True} for i in range(150)
    ]
    store = Store(definitions=definitions)
    async with client(store) as de:
        first = await de.custom_field_definitions()
        again = await de.custom_field_definitions()
        refreshed = await de.custom_field_definitions(refresh=True)
    assert len(first) == 150
    assert first == again == refreshed
    assert len(store.requests) == 4  # two pages, twice


# -- custom fields checked before sending -------------------------------------------------


def definition(fid, name, field_type="text", *, options=None, active=True, for_customers=True):
    return {
        "id": fid,
        "name": name,
        "field_type": field_type,
        "is_active": active,
        "options": options,
        "applies_to": [{"type": "customer", "is_active": for_customers, "is_required": False}],
    }


DEFINITIONS = [
    definition(1, "Partner", "boolean"),
    definition(2, "Tier", "single_select", options=["Bronze", "Gold"]),
    definition(3, "Tags", "multi_select", options=["a", "b"]),
    definition(4, "Limit", "currency"),
    definition(5, "Since", "date"),
    definition(6, "Region"),
    definition(7, "Region"),
    definition(8, "Old", active=False),
    definition(9, "Elsewhere", for_customers=False),
    definition(10, "Count", "number"),
]


@pytest.mark.parametrize("name", ["Nope", "Old", "Elsewhere"])
async def test_an_unknown_or_inactive_name_costs_no_update(name):
    store = Store(1, DEFINITIONS)
    async with client(store) as de:
        with pytest.raises(UnknownCustomFieldError) as info:
            await de.update(1, CustomerPatch(custom_fields={name: "x", "Partner": True}))
    assert info.value.names == (name,)
    assert info.value.sent is False
    assert info.value.status == 422
    assert "answered" not in str(info.value)
    assert store.sent("PATCH") == []


async def test_a_shared_name_is_refused_naming_the_ids_to_use():
    store = Store(1, DEFINITIONS)
    async with client(store) as de:
        with pytest.raises(ValidationError, match="use an id: 6 and 7"):
            await de.update(1, CustomerPatch(custom_fields={"Region": "EMEA"}))
        await de.update(1, CustomerPatch(custom_fields={6: "EMEA"}))
    assert len(store.sent("PATCH")) == 1


@pytest.mark.parametrize("skip_unchanged", [False, True])
async def test_one_field_named_twice_by_name_and_by_id_is_refused(skip_unchanged):
    """``{"Tier": "Gold", 2: "Bronze"}``: two values for one field.  Which one
    landed depended on the body's order, and with skip_unchanged on which of
    them differed from what was read: refused, naming both keys."""
    store = Store(1, DEFINITIONS)
    patch = CustomerPatch(custom_fields={"Tier": "Gold", 2: "Bronze"})
    async with client(store) as de:
        [result] = [r async for r in de.iter_updates([(1, patch)], skip_unchanged=skip_unchanged)]
    assert isinstance(result.error, ValidationError), result.error
    assert "custom_fields[2]" in str(result.error)
    assert "'Tier'" in str(result.error)
    assert store.sent("PATCH") == []


@pytest.mark.parametrize(
    ("key", "value", "ok"),
    [
        ("Partner", True, True),
        ("Partner", "yes", False),
        ("Partner", 1, False),
        ("Tier", "Gold", True),
        ("Tier", "Platinum", False),
        ("Tags", ["a", "b"], True),
        ("Tags", ["a", "c"], False),
        ("Tags", "a", False),
        ("Limit", 12.5, True),
        ("Limit", "12.50", True),
        ("Limit", "twelve", False),
        ("Limit", "NaN", False),
        ("Count", True, False),
        ("Since", "2026-11-22", True),
        ("Since", "22/11/2026", False),
        (6, 5, False),
        (6, "EMEA", True),
        ("Tier", None, True),  # None clears, whatever the type
        (8, "x", False),  # an inactive field's id
        (99, "x", False),
    ],
)
async def test_values_are_checked_against_the_field_type(key, value, ok):
    store = Store(1, DEFINITIONS)
    async with client(store) as de:
        if ok:
            await de.update(1, CustomerPatch(custom_fields={key: value}))
        else:
            with pytest.raises(ValidationError):
                await de.update(1, CustomerPatch(custom_fields={key: value}))
    assert len(store.sent("PATCH")) == (1 if ok else 0)


async def test_the_check_can_be_turned_off():
    store = Store(1, DEFINITIONS)
    async with client(store, check_custom_fields=False) as de:
        await de.update(1, CustomerPatch(custom_fields={"Nope": 1}))
    assert [r.method for r in store.requests] == ["PATCH"]


async def test_definitions_that_cannot_be_read_fail_the_update_that_needs_them():
    def answer(request):
        if request.method == "GET":
            return Response(status=403, body=b'{"success": false, "errors": {"__all__": ["no"]}}')
        return Response(status=200, body=json.dumps(row(2)).encode())

    transport = MockTransport(answer)
    updates = [(1, CustomerPatch(custom_fields={"A1": 1})), (2, CustomerPatch(name="B"))]
    async with Client("dualentry", token="k", transport=transport, rate_limit=None) as de:
        first, second = sorted(
            [r async for r in de.iter_updates(updates, concurrency=1)], key=lambda r: r.index
        )
    assert isinstance(first.error, PermissionDeniedError)
    assert second.ok  # a token that may not read definitions may still patch
    assert [r.method for r in transport.requests] == ["GET", "PATCH"]


# -- changes_from ------------------------------------------------------------------------


def customer(**fields):
    return Customer(id=1, provider="test", **fields)


def test_changes_from_keeps_only_what_differs():
    before = customer(name="Acme", email="a@b.example", phone=None, website="")
    patch = CustomerPatch(name="Acme", email="A@b.example", phone=None, website=None)
    changes = patch.changes_from(before)
    # Text as sent (no case folding); None equals null only, not "".
    assert changes == CustomerPatch(email="A@b.example", website=None)
    assert not CustomerPatch(name="Acme").changes_from(before)
    assert not CustomerPatch()


def test_changes_from_never_guesses_a_field_that_was_not_read():
    before = customer(name="Acme", address=None, read_fields=frozenset({"name"}))
    changes = CustomerPatch(name="Acme", address=None).changes_from(before)
    assert changes == CustomerPatch(address=None)


def test_tax_ids_compare_unordered_and_travel_whole():
    before = customer(tax_ids=(TaxId("VAT", "1"), TaxId("EIN", "2")))
    same = CustomerPatch(tax_ids=[TaxId("EIN", "2"), TaxId("VAT", "1")])
    assert not same.changes_from(before)
    one_more = CustomerPatch(tax_ids=[TaxId("EIN", "2"), TaxId("VAT", "1"), TaxId("VAT", "3")])
    assert one_more.changes_from(before) == one_more
    assert CustomerPatch(tax_ids=[]).changes_from(before) == CustomerPatch(tax_ids=[])


def test_external_ids_compare_member_by_member():
    before = customer(external_ids=ExternalIds(crm="C1", erp=None, accounting="A1"))
    patch = CustomerPatch(external_ids=ExternalIds(crm="C1", erp=None, accounting="A2"))
    assert patch.changes_from(before) == CustomerPatch(external_ids=ExternalIds(accounting="A2"))


def test_addresses_compare_whole_with_the_defaults_filled():
    before = customer(billing_address=Address(street="1 Rd", city="X", postal_code="1"))
    same = CustomerPatch(billing_address=Address(street="1 Rd", city="X", postal_code="1"))
    assert not same.changes_from(before)
    other = CustomerPatch(
        billing_address=Address(street="1 Rd", city="X", postal_code="1", state="Y")
    )
    assert other.changes_from(before) == other


def test_custom_fields_compare_entry_by_entry_by_name_or_by_id():
    before = customer(
        custom_fields={"Partner": True, "Count": 1, 6: "EMEA", 7: None, "Tier": None},
        custom_field_ids={1: "Partner", 10: "Count", 6: "Region", 7: "Region", 2: "Tier"},
    )
    patch = CustomerPatch(
        custom_fields={
            "Partner": True,  # same
            1: True,  # same, by id
            "Count": True,  # True is not 1
            6: "EMEA",  # same, by id where the name is shared
            7: None,  # None equals no value
            "Tier": None,  # same
            "Region": "x",  # a shared name: cannot tell, kept
            99: "x",  # an id the read did not show: kept
            # A name the read did not show: not known to be a field at all, kept
            # (sent, DualEntry's 422 says so if it is not one; a spec audit found
            # it reported unchanged, never sent: an unknown name silently dropped).
            "New": None,
        }
    )
    assert patch.changes_from(before) == CustomerPatch(
        custom_fields={"Count": True, "Region": "x", 99: "x", "New": None}
    )


def test_extra_keys_compare_against_the_providers_own_json():
    before = customer(raw={"is_taxable": False, "memo": "x"})
    patch = CustomerPatch(extra={"memo": "x", "is_taxable": True, "other": 1})
    assert patch.changes_from(before) == CustomerPatch(extra={"is_taxable": True, "other": 1})


# -- skip_unchanged runs -------------------------------------------------------------------


async def test_skip_unchanged_reads_a_page_per_request_and_sends_only_what_differs():
    store = Store(250)
    updates = [
        (cid, CustomerPatch(name=f"C{cid}" if cid % 20 else "New")) for cid in range(1, 251)
    ]
    async with client(store) as de:
        results = [r async for r in de.iter_updates(updates, concurrency=8, skip_unchanged=True)]
    assert sorted(r.index for r in results) == list(range(250))
    changed = [r for r in results if r.changed]
    assert sorted(r.customer_id for r in changed) == list(range(20, 251, 20))
    assert all(r.ok for r in results)
    reads = store.sent("GET")
    assert len(reads) == 3  # 100 ids a request, in input order
    assert parse_qs(urlsplit(reads[0].url).query)["id"] == [str(i) for i in range(1, 101)]
    assert len(store.sent("PATCH")) == 12
    unchanged = next(r for r in results if not r.changed)
    assert unchanged.attempts == 0
    assert unchanged.before == unchanged.customer
    assert next(r for r in changed).before.name != "New"
    assert next(r for r in changed).sent == CustomerPatch(name="New")


async def test_an_async_input_as_fast_as_a_file_still_fills_its_batches():
    store = Store(250)

    async def updates():
        for cid in range(1, 251):
            if cid % 7 == 0:
                await asyncio.sleep(0)  # as the command line's reader does, now and then
            yield cid, CustomerPatch(name="New")

    async with client(store) as de:
        results = [r async for r in de.iter_updates(updates(), skip_unchanged=True)]
    assert len(results) == 250
    assert len(store.sent("GET")) == 3


async def test_a_steady_trickle_is_read_a_second_at_a_time_at_most(monkeypatch):
    """An item every 30 ms is never 50 ms late: its records waited for a batch
    of 100 (3 s).  A batch is read once its first record has waited 1 s (here
    0.2 s, to keep the test short)."""
    monkeypatch.setattr(_bulk, "_OLDEST", 0.2)
    store = Store(15)

    async def trickle():
        for cid in range(1, 16):
            await asyncio.sleep(0.03)
            yield cid, CustomerPatch(name="New")

    async with client(store) as de:
        results = [r async for r in de.iter_updates(trickle(), skip_unchanged=True)]
    assert len(results) == 15
    assert len(store.sent("GET")) >= 2  # 15 items take 0.45 s at least


@pytest.mark.parametrize("operation", ["iter_updates", "iter_plan"])
async def test_records_taken_are_read_and_done_while_the_input_waits_for_more(operation):
    """A pipe's producer that pauses: the records it gave are read and done
    without waiting for a batch of 100, or for the input to end (it hung)."""
    store = Store(3)
    more = asyncio.Event()

    async def updates():
        yield 1, CustomerPatch(name="One")
        yield 2, CustomerPatch(name="Two")
        await more.wait()  # the producer has more to say, later
        yield 3, CustomerPatch(name="Three")

    async with client(store) as de:
        if operation == "iter_updates":
            results = de.iter_updates(updates(), skip_unchanged=True)
        else:
            results = de.iter_plan(updates())
        first = [await asyncio.wait_for(anext(results), 20) for _ in range(2)]  # hang guard
        assert not more.is_set()
        more.set()
        rest = [r async for r in results]
    assert sorted((r.customer_id, r.ok, r.changed) for r in first) == [
        (1, True, True),
        (2, True, True),
    ]
    assert [(r.customer_id, r.changed) for r in rest] == [(3, True)]
    written = {1: "One", 2: "Two", 3: "Three"} if operation == "iter_updates" else {}
    assert {c: store.customers[c]["name"] for c in (1, 2, 3) if c in written} == written


async def test_skip_unchanged_reports_missing_and_invalid_customers_one_result_each():
    store = Store(3)
    updates = [
        (1, CustomerPatch(name="C1")),
        (404, CustomerPatch(name="x")),
        ("two", CustomerPatch(name="x")),
        (True, CustomerPatch(name="x")),
        ([1], CustomerPatch(name="x")),
        "not a pair",
        (2, CustomerPatch(phone="x" * 40)),
    ]
    async with client(store) as de:
        results = sorted(
            [r async for r in de.iter_updates(updates, skip_unchanged=True)], key=lambda r: r.index
        )
    assert len(results) == len(updates)
    assert results[0].ok
    assert not results[0].changed
    assert isinstance(results[1].error, NotFoundError)
    assert results[1].error.sent is False
    assert all(isinstance(r.error, ValidationError) for r in results[2:])
    assert store.sent("PATCH") == []


async def test_a_customers_later_record_is_compared_with_what_the_earlier_one_left():
    """A then B then A again: the third must be sent, though the read said A."""
    store = Store(1)
    store.customers[1]["name"] = "A"
    updates = [
        (1, CustomerPatch(name="A")),
        (1, CustomerPatch(name="B")),
        (1, CustomerPatch(name="A")),
        (1, CustomerPatch(name="A")),
    ]
    async with client(store) as de:
        results = sorted(
            [r async for r in de.iter_updates(updates, concurrency=4, skip_unchanged=True)],
            key=lambda r: r.index,
        )
    assert [r.changed for r in results] == [False, True, True, False]
    assert store.customers[1]["name"] == "A"
    assert [r.json() for r in store.sent("PATCH")] == [{"name": "B"}, {"name": "A"}]


def list_lagging_behind_writes(store, *, gets_too=False):
    """``store``'s list (and, ``gets_too``, its read of one customer) shows every
    customer as it was before the run (a cache or a replica that lags behind
    writes)."""
    before = json.loads(json.dumps(store.customers))

    def answer(request):
        if request.method == "GET" and ("/customers/?" in request.url or gets_too):
            current, store.customers = store.customers, {int(k): v for k, v in before.items()}
            try:
                return store.answer(request)
            finally:
                store.customers = current
        return store.answer(request)

    store.transport = MockTransport(answer)


def a_batch_apart(first, *later):
    """Customer 7's ``first`` patch, 99 records that change nothing, then ``later``
    (index 100 on: in the next read's batch)."""
    unchanged = [(cid, CustomerPatch(name=f"C{cid}")) for cid in range(20, 119)]
    return [(7, first), *unchanged, *later]


async def changes_to_7(store, updates):
    """Run ``updates`` with ``skip_unchanged``: ``(index, changed)`` of customer 7's records."""
    async with client(store) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    return [(r.index, r.changed) for r in results if r.customer_id == 7]


async def test_a_later_record_in_the_next_batch_is_not_compared_with_a_list_lagging_behind():
    """Customer 7 is set to A, then (100 records on, in the next read's batch) back
    to its old name: a list that still shows the old name must not make the run
    skip that write, which the run's own earlier answer says is needed."""
    store = Store(150)
    list_lagging_behind_writes(store)
    updates = a_batch_apart(CustomerPatch(name="A"), (7, CustomerPatch(name="C7")))
    assert await changes_to_7(store, updates) == [(0, True), (100, True)]
    assert [r.json() for r in store.sent("PATCH")] == [{"name": "A"}, {"name": "C7"}]
    assert store.customers[7]["name"] == "C7"


async def test_a_later_record_in_the_next_batch_still_sees_a_change_made_meanwhile():
    """The run set 7 to A; someone set it to B before the next batch was read; the
    later record sets A again: the read says B, so it is sent, whatever the run
    itself last saw."""
    store = Store(150)
    reads = itertools.count()

    def answer(request):
        if request.method == "GET" and "/customers/?" in request.url and next(reads) == 1:
            store.customers[7]["name"] = "B"  # just before the second batch's read
        return store.answer(request)

    store.transport = MockTransport(answer)
    updates = a_batch_apart(CustomerPatch(name="A"), (7, CustomerPatch(name="A")))
    assert await changes_to_7(store, updates) == [(0, True), (100, True)]
    assert store.customers[7]["name"] == "A"


async def test_a_malformed_patch_of_a_customer_written_a_batch_before_is_its_own_error():
    """Compared with both what the earlier record left and the new read, a patch
    that cannot be compared (custom fields as a list) is still that record's
    ValidationError, and the run goes on."""
    store = Store(150)
    updates = a_batch_apart(
        CustomerPatch(name="A"),
        (7, CustomerPatch(custom_fields=[{"Partner": True}])),
        (8, CustomerPatch(name="B")),
    )
    async with client(store) as de:
        results = sorted(
            [r async for r in de.iter_updates(updates, skip_unchanged=True)], key=lambda r: r.index
        )
    assert len(results) == len(updates)
    assert isinstance(results[100].error, ValidationError)
    assert results[101].ok
    assert store.customers[8]["name"] == "B"


async def test_a_field_disputed_by_a_lagging_list_is_sent_even_when_reads_of_one_lag_too():
    """The list and the read of one customer both show the name as it was before
    the run's first write (a replica serving every read): the field stays
    disputed, and is sent."""
    store = Store(150)
    list_lagging_behind_writes(store, gets_too=True)
    updates = a_batch_apart(  # the list shows no country
        CustomerPatch(name="A", country="FR"), (7, CustomerPatch(name="C7", country="FR"))
    )
    assert await changes_to_7(store, updates) == [(0, True), (100, True)]
    assert store.customers[7]["name"] == "C7"


async def test_customers_the_list_cannot_settle_are_read_at_most_concurrency_at_a_time():
    store = Store(20)
    in_flight, most = 0, 0

    async def answer(request):
        nonlocal in_flight, most
        if request.method == "GET" and "/customers/?" in request.url:
            return Response(status=200, body=b'{"items": [{"id": 1}], "count": "many"}')
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1
        return store.answer(request)

    store.transport = MockTransport(answer)
    updates = [(cid, CustomerPatch(name=f"C{cid}")) for cid in range(1, 21)]
    async with client(store) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True, concurrency=3)]
    assert [r.error for r in results] == [None] * 20
    assert most == 3


async def test_after_a_write_that_may_have_landed_a_lagging_read_does_not_skip_the_next():
    """Record 0 landed but its answer was lost; every read lags behind writes: the
    next record, setting the old name again, must be sent, not found unchanged."""
    store = Store(10)

    def lost(request):  # the connection lost
        raise TransportError("the answer was cut short", provider="dualentry")

    first_write_landed_then(store, lost)
    updates = [(7, CustomerPatch(name="A")), (7, CustomerPatch(name="C7"))]
    async with client(store, retry=None) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    first, second = sorted(results, key=lambda r: r.index)
    assert isinstance(first.error, TransportError)
    assert second.ok
    assert second.changed
    assert store.customers[7]["name"] == "C7"


@pytest.mark.parametrize("then", [429, 409])
async def test_after_a_write_that_landed_then_was_refused_the_next_is_still_sent(then):
    """The first attempt landed and its answer was lost; its retry was refused: the
    record fails with a 4xx, but what it sent may well be there."""
    store = Store(10)
    list_lagging_behind_writes(store, gets_too=True)
    lagging = store.transport.handler
    attempts = iter(["landed", "refused"])

    def answer(request):
        if request.method == "PATCH":
            what = next(attempts, None)
            if what == "landed":
                store.answer(request)
                raise TransportError("the answer was cut short", provider="dualentry")
            if what == "refused":
                return Response(status=then, headers={"Retry-After": "0"}, body=b"{}")
        return lagging(request)

    store.transport = MockTransport(answer)
    updates = [(7, CustomerPatch(name="A")), (7, CustomerPatch(name="C7"))]
    async with client(store, retry=RetryPolicy(attempts=2)) as de:
        results = sorted(
            [r async for r in de.iter_updates(updates, skip_unchanged=True)],
            key=lambda r: r.index,
        )
    assert results[0].error is not None
    assert results[1].changed
    assert store.customers[7]["name"] == "C7"


@pytest.mark.parametrize("status", [200, 303, 307, 500])
async def test_after_a_write_that_landed_and_was_answered_with_no_refusal_the_next_is_sent(
    status,
):
    """The write landed and the answer was a redirect (never followed) or a 5xx:
    not a refusal (a 4xx), so what it sent may be there.  A read that lags
    behind writes must not make the next record of that customer look unchanged
    (a red team found a 3xx taken for a refusal: the older value stayed)."""
    store = Store(10)

    def answered(request):
        if status == 200:  # said to have failed
            return Response(status=200, body=b'{"success": false, "errors": {}}')
        return Response(status=status, headers={"Location": request.url}, body=b"")

    first_write_landed_then(store, answered)
    updates = [(7, CustomerPatch(name="A")), (7, CustomerPatch(name="C7"))]
    async with client(store, retry=None) as de:
        results = sorted(
            [r async for r in de.iter_updates(updates, skip_unchanged=True)],
            key=lambda r: r.index,
        )
    assert isinstance(results[0].error, ProviderError)
    assert results[1].changed
    assert store.customers[7]["name"] == "C7"


async def test_after_a_failed_write_the_customer_is_read_once_not_twice():
    store = Store(10)
    first_write_answered(store, lambda request: Response(status=500, body=b"{}"))
    updates = [(7, CustomerPatch(name="A")), (7, CustomerPatch(name="B"))]
    async with client(store, retry=None) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    assert len(results) == 2
    assert [r.url for r in store.sent("GET")].count(store.sent("GET")[-1].url) == 1


def test_a_read_of_every_field_does_not_replace_what_an_earlier_record_left():
    """Merged with a read that shows every field, what was known stays: only the
    fields it did not know are taken from that read."""
    from customer_patch._bulk import _merged

    adapter = get_adapter("dualentry")
    known = adapter.customer_from(row(7, name="A"))  # a list row: no address, no country
    fuller = attrs.evolve(known, name="old", country="US", read_fields=None)
    merged = _merged(known, fuller)
    assert (merged.name, merged.country) == ("A", "US")


def first_write_landed_then(store, how):
    """``store``, every read lagging behind writes, its first PATCH applied, then
    answered by ``how(request)`` (which may raise, for an answer lost)."""
    list_lagging_behind_writes(store, gets_too=True)
    lagging = store.transport.handler
    first = iter([True])

    def answer(request):
        if request.method == "PATCH" and next(first, False):
            store.answer(request)
            return how(request)
        return lagging(request)

    store.transport = MockTransport(answer)


def first_write_answered(store, how):
    """``store``, its first PATCH answered by ``how(request)`` instead."""
    first = iter([True])

    def answer(request):
        if request.method == "PATCH" and next(first, False):
            return how(request)
        return store.answer(request)

    store.transport = MockTransport(answer)


async def test_a_write_whose_answer_does_not_show_it_leaves_that_field_unknown():
    """The provider applied A but answered with the customer as it was: the next
    record, setting the old name again, is sent rather than found unchanged."""
    store = Store(1)

    def applied_shown_as_before(request):
        shown = dict(store.customers[1])
        store.answer(request)
        return Response(status=200, body=json.dumps(shown).encode())

    first_write_answered(store, applied_shown_as_before)
    updates = [(1, CustomerPatch(name="A")), (1, CustomerPatch(name="C1"))]
    async with client(store) as de:
        results = sorted(
            [r async for r in de.iter_updates(updates, skip_unchanged=True)], key=lambda r: r.index
        )
    assert [r.changed for r in results] == [True, True]
    assert store.customers[1]["name"] == "C1"


async def test_after_a_failed_record_the_next_one_of_that_customer_reads_it_again():
    """A sent record that failed may have landed or not: the next record of that
    customer is compared with a fresh read, not with the first one or nothing."""
    store = Store(1)
    store.customers[1]["name"] = "A"
    refusal = Response(status=400, body=b'{"success": false, "errors": {"name": ["no"]}}')
    first_write_answered(store, lambda request: refusal)
    updates = [(1, CustomerPatch(name="B")), (1, CustomerPatch(name="A"))]
    async with client(store) as de:
        results = sorted(
            [r async for r in de.iter_updates(updates, skip_unchanged=True)], key=lambda r: r.index
        )
    assert not results[0].ok
    assert results[1].ok
    assert not results[1].changed  # the 400 changed nothing: still "A", as read again
    assert [urlsplit(r.url).path for r in store.sent("GET")][-1] == "/public/v2/customers/1/"


async def test_a_read_that_fails_is_the_result_of_every_record_it_was_for():
    def answer(request):
        return Response(status=500, body=b"{}")

    transport = MockTransport(answer)
    updates = [(i, CustomerPatch(name="x")) for i in range(1, 6)]
    async with Client(
        "dualentry", token="k", transport=transport, rate_limit=None, retry=None
    ) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    assert len(results) == 5
    assert all(r.error is not None and r.attempts == 0 for r in results)
    assert [r.method for r in transport.requests] == ["GET"]


async def test_qwoty_reads_one_customer_a_request():
    body = {
        "success": True,
        "data": {"id": None, "name": "Same", "type": "company", "tax_ids": []},
    }
    ids = [
        "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        "16fd2706-8baf-433b-82eb-8c7fada847da",
    ]

    def answer(request):
        cid = urlsplit(request.url).path.rsplit("/", 1)[1]
        return Response(
            status=200, body=json.dumps({**body, "data": {**body["data"], "id": cid}}).encode()
        )

    transport = MockTransport(answer)
    async with Client("qwoty", token="k", transport=transport, rate_limit=None) as qwoty:
        results = [
            r
            async for r in qwoty.iter_updates(
                [(i, CustomerPatch(name="Same")) for i in ids], skip_unchanged=True
            )
        ]
    assert [r.changed for r in results] == [False, False]
    assert [r.method for r in transport.requests] == ["GET", "GET"]


# -- pacing by route, on a fake clock -----------------------------------------------------


class FakeTime:
    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    async def sleep(self, seconds):
        self.now += seconds


async def test_each_route_has_its_own_bucket_and_all_share_the_client_bucket():
    time = FakeTime()
    pacer = Pacer(
        [RateLimit(burst=10, per_second=1, per_route=True), RateLimit(burst=50, per_second=5)],
        clock=time.clock,
        sleep=time.sleep,
    )
    # The per-route burst keeps tokens in hand for jitter: 9 go at once on each route.
    for _ in range(9):
        await pacer.acquire(route="PATCH /customers/{id}")
    assert time.now == 0
    for _ in range(9):
        await pacer.acquire(route="GET /customers/")
    assert time.now == 0  # the write route's empty bucket does not hold reads
    await pacer.acquire(route="PATCH /customers/{id}")
    assert time.now > 0.9  # but its own next request waits about a second


async def test_the_shared_bucket_holds_every_route():
    time = FakeTime()
    pacer = Pacer(
        [RateLimit(burst=10, per_second=1, per_route=True), RateLimit(burst=4, per_second=2)],
        clock=time.clock,
        sleep=time.sleep,
    )
    for route in ("a", "b", "c"):
        await pacer.acquire(route=route)
    assert time.now == 0
    await pacer.acquire(route="d")  # the shared bucket (3 in hand) is empty: wait
    assert time.now > 0


async def test_reads_and_writes_overlap_on_a_real_loop():
    """A changes-only run at DualEntry's declared limits, scaled up: its reads
    do not wait behind its writes (a hang guard only, no timing asserted)."""
    store = Store(300)
    limits = [
        RateLimit(burst=10, per_second=200, per_route=True),
        RateLimit(burst=50, per_second=1000),
    ]
    updates = [(cid, CustomerPatch(name="New")) for cid in range(1, 301)]
    async with client(store, rate_limit=limits) as de:
        results = await asyncio.wait_for(
            de.update_many(updates, concurrency=8, skip_unchanged=True), HANG_GUARD
        )
    assert len(results.succeeded) == 300


# -- match_on and plans -----------------------------------------------------------------


async def test_match_on_resolves_each_key_to_exactly_one_customer():
    store = Store(4)
    store.customers[1]["unique_id"] = "CRM-1"
    store.customers[2]["unique_id"] = "crm-2"
    store.customers[3]["unique_id"] = "DUP"
    store.customers[4]["unique_id"] = "dup"  # iexact: both match "dup"
    updates = [
        ("crm-1", CustomerPatch(name="One")),  # case-insensitive, as the filter is
        ("CRM-2", CustomerPatch(name="C2")),  # already so
        ("nobody", CustomerPatch(name="x")),
        ("DUP", CustomerPatch(name="x")),
        ("", CustomerPatch(name="x")),
        (7, CustomerPatch(name="x")),
    ]
    async with client(store) as de:
        results = sorted(
            [r async for r in de.iter_updates(updates, match_on="unique_id", skip_unchanged=True)],
            key=lambda r: r.index,
        )
    assert [r.ok for r in results] == [True, True, False, False, False, False]
    assert results[0].customer.id == 1
    assert results[0].customer_id == "crm-1"
    assert not results[1].changed
    assert isinstance(results[2].error, NotFoundError)
    assert isinstance(results[3].error, ValidationError)
    assert "matches 2 customers" in str(results[3].error)
    assert all(isinstance(r.error, ValidationError) for r in results[4:])
    assert [urlsplit(r.url).path for r in store.sent("PATCH")] == ["/public/v2/customers/1/"]
    assert (store.customers[3]["name"], store.customers[4]["name"]) == ("C3", "C4")


async def test_match_on_refuses_an_answer_about_another_customer():
    store = Store(2)
    store.customers[2]["unique_id"] = "OTHER"

    def answer(request):  # a list that ignores its filter
        if request.method == "GET":
            body = {"items": [store.customers[2]], "count": 1}
            return Response(status=200, body=json.dumps(body).encode())
        return pytest.fail("nothing may be sent")

    store.transport = MockTransport(answer)
    async with client(store) as de:
        [result] = [
            r
            async for r in de.iter_updates(
                [("CRM-1", CustomerPatch(name="x"))], match_on="unique_id"
            )
        ]
    assert isinstance(result.error, ResponseFormatError)


@pytest.mark.parametrize("match_on", [None, "unique_id"])
async def test_a_record_that_is_bad_input_says_so_even_when_its_customer_is_not_found(match_on):
    """Its own problems first, as a run that reads nothing reports them: a record
    whose key matched no customer (or whose id the read did not find) and whose
    patch the client refuses was "not found", and the same line was invalid
    under the CLI's --strict, which checks every line before the run."""
    store = Store(1, definitions=DEFINITIONS)
    key = "nobody" if match_on else 99
    updates = [
        (key, CustomerPatch(custom_fields={"Nope": True})),
        (key, CustomerPatch(custom_fields={"Partner": "not a boolean"})),
        (key, CustomerPatch(name="fine")),
    ]
    async with client(store) as de:
        results = [
            r async for r in de.iter_updates(updates, match_on=match_on, skip_unchanged=True)
        ]
    errors = [type(r.error) for r in sorted(results, key=lambda r: r.index)]
    assert errors == [UnknownCustomFieldError, ValidationError, NotFoundError]
    assert store.sent("PATCH") == []


async def read_before_write(transport, updates, **options):
    """Every result of a skip_unchanged run through ``transport``, no retries."""
    async with Client(
        "dualentry", token="k", transport=transport, rate_limit=None, retry=None
    ) as de:
        return [r async for r in de.iter_updates(updates, skip_unchanged=True, **options)]


@pytest.mark.parametrize(("status", "error"), [(401, AuthenticationError), (503, ServerError)])
async def test_a_read_refused_for_all_is_the_outcome_of_records_setting_custom_fields_too(
    status, error
):
    """Checking such a record's patch first read the definitions, which the same
    refusal (or outage) met: a 401 then stopped nothing (every batch was read
    with the bad key) and a 503 cost a read of the definitions a record."""
    transport = MockTransport(lambda r: Response(status=status, body=b"{}"))
    updates = [(i, CustomerPatch(custom_fields={"Partner": True})) for i in range(1, 301)]
    results = await read_before_write(transport, updates, max_consecutive_failures=5)
    kinds = collections.Counter(type(r.error) for r in results)
    assert kinds[error] == 100  # the first batch's records, from its one read
    assert kinds[NotAttemptedError] == 200
    assert len(transport.requests) == 1


async def collect(run):
    return [r async for r in run]


def matched_in_order(holders, updates):
    """What applying ``updates`` (matched on ``unique_id``) one after the other does:
    each record's outcome (the customer it changed, or the error's class) and
    every customer's ``(unique_id, name)`` at the end."""
    state = {cid: dict(fields) for cid, fields in holders.items()}
    outcomes = []
    for key, patch in updates:
        found = [
            c for c, f in state.items() if (f["unique_id"] or "").casefold() == key.casefold()
        ]
        if len(found) != 1:
            outcomes.append(NotFoundError if not found else ValidationError)
            continue
        state[found[0]].update(patch.to_dict())
        outcomes.append(found[0])
    return outcomes, {c: (f["unique_id"], f["name"]) for c, f in state.items()}


def keyed_store():
    """Three customers keyed K1, K2, K3; and each one's ``unique_id`` and ``name``
    as :func:`matched_in_order` starts from."""
    store = Store(3)
    for cid in (1, 2, 3):
        store.customers[cid]["unique_id"] = f"K{cid}"
    holders = {
        c: {"unique_id": f["unique_id"], "name": f["name"]} for c, f in store.customers.items()
    }
    return store, holders


async def run_matched(store, updates, *, concurrency, shuffle=None, **options):
    """A match_on run through ``store``; ``shuffle(request)`` is awaited before each answer."""
    if shuffle is not None:
        answer = store.answer

        async def shuffled(request):
            await shuffle(request)
            return answer(request)

        store.transport = MockTransport(shuffled)
    async with client(store) as de:
        run = de.iter_updates(updates, concurrency=concurrency, match_on="unique_id", **options)
        results = await asyncio.wait_for(collect(run), HANG_GUARD)
    results.sort(key=lambda r: r.index)
    outcomes = [r.customer.id if r.ok else type(r.error) for r in results]
    final = {c: (f["unique_id"], f["name"]) for c, f in store.customers.items()}
    return outcomes, final


@pytest.mark.parametrize("concurrency", [1, 2, 3, 8])
async def test_match_on_follows_a_key_that_an_earlier_record_renames(concurrency):
    """Two customers swap keys through a third, then a record names one of them:
    each key is the customer that holds it when its record's turn comes, as
    applying the file line by line would find it.  (The whole batch was looked
    up before any of it ran: the last record went to the key's first holder,
    and the third found no customer at all.)"""
    store, holders = keyed_store()
    updates = [
        ("K1", CustomerPatch(unique_id="TMP")),
        ("K2", CustomerPatch(unique_id="K1")),
        ("tmp", CustomerPatch(unique_id="K2")),  # the filter ignores case
        ("K1", CustomerPatch(name="the second holder of K1")),
        ("K3", CustomerPatch(name="no part of the swap")),
    ]
    expected = matched_in_order(holders, updates)
    assert expected == (
        [1, 2, 1, 2, 3],
        {1: ("K2", "C1"), 2: ("K1", "the second holder of K1"), 3: ("K3", "no part of the swap")},
    )
    assert await run_matched(store, updates, concurrency=concurrency) == expected


@settings(max_examples=60)
@given(
    records=st.lists(
        st.tuples(
            st.sampled_from(["K1", "K2", "k3", "TMP", "gone"]),
            st.sampled_from(["K1", "K2", "K3", "tmp", None]),  # None: set the name
        ),
        max_size=12,
    ),
    concurrency=st.integers(1, 6),
    skip_unchanged=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_match_on_ends_as_applying_the_records_in_order_would(
    records, concurrency, skip_unchanged, seed
):
    """Renames and writes by key, answered in a random order: every record's
    outcome and the customers' end state are those of the input applied in order."""
    updates = [
        (key, CustomerPatch(name=f"set by {i}") if new is None else CustomerPatch(unique_id=new))
        for i, (key, new) in enumerate(records)
    ]
    store, holders = keyed_store()
    rng = random.Random(seed)

    async def shuffle(request):
        for _ in range(rng.randrange(4)):
            await asyncio.sleep(0)

    got = asyncio.run(
        run_matched(
            store, updates, concurrency=concurrency, shuffle=shuffle, skip_unchanged=skip_unchanged
        )
    )
    assert got == matched_in_order(holders, updates)


async def plan_matched(store, updates, *, concurrency):
    """A plan matched on ``unique_id`` through ``store``: each record's outcome (the
    customer it would change, or the error's class), and each customer's last
    predicted ``(unique_id, name)``; the store is left as it was."""
    before = json.dumps(store.customers, sort_keys=True)
    async with client(store) as de:
        run = de.iter_plan(updates, concurrency=concurrency, match_on="unique_id")
        results = await asyncio.wait_for(collect(run), HANG_GUARD)
    assert json.dumps(store.customers, sort_keys=True) == before
    assert not store.sent("PATCH")
    results.sort(key=lambda r: r.index)
    predicted = {r.customer.id: (r.customer.unique_id, r.customer.name) for r in results if r.ok}
    return [r.customer.id if r.ok else type(r.error) for r in results], predicted


@settings(max_examples=60)
@given(
    records=st.lists(
        st.tuples(
            st.sampled_from(["K1", "K2", "k3", "TMP", "gone"]),
            st.sampled_from(["K1", "K2", "K3", "tmp", "clear", "name"]),
        ),
        max_size=12,
    ),
    concurrency=st.integers(1, 6),
)
def test_a_plan_matched_on_a_key_follows_the_renames_it_plans(records, concurrency):
    """A plan writes nothing, so the provider still shows every key's holder
    before the run: a record naming a key that an earlier record renames (or
    clears) is looked up through the plan's own renames, finding whom applying
    the records in order would, and predicting what that leaves.  (It was
    looked up as the provider held it: a record after a swap was shown against
    the key's old holder, and one naming a key an earlier record creates as
    not found.)"""
    updates = [
        (
            key,
            CustomerPatch(name=f"set by {i}")
            if new == "name"
            else CustomerPatch(unique_id=None if new == "clear" else new),
        )
        for i, (key, new) in enumerate(records)
    ]
    store, holders = keyed_store()
    expected, final = matched_in_order(holders, updates)
    outcomes, predicted = asyncio.run(plan_matched(store, updates, concurrency=concurrency))
    assert outcomes == expected
    assert predicted == {c: final[c] for c in predicted}


async def plan_and_apply(provider, records, *, concurrency, setup=None):
    """Each record's ``changed`` as a plan predicts it and as a skip_unchanged run
    finds it, each against a fresh fake seeded the same; and the run's end state."""
    runs = []
    for plan in (True, False):
        fake = fake_for(get_adapter(provider))(limits=())
        ids = fake.seed_demo(2)
        if setup is not None:
            setup(fake, ids)
        updates = [(ids[which], patch) for which, patch in records]
        async with (
            fake.running() as base,
            Client(provider, token=fake.token, base_url=base, rate_limit=None) as c,
        ):
            run = (
                c.iter_plan(updates, concurrency=concurrency)
                if plan
                else c.iter_updates(updates, concurrency=concurrency, skip_unchanged=True)
            )
            results = sorted([r async for r in run], key=lambda r: r.index)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        runs.append([r.changed for r in results])
    return runs


def _email(value):
    def setup(fake, ids):
        fake.customers[ids[0]]["email"] = value

    return setup


PLAN_CASES = {
    # DualEntry shows a text cleared with "" as "": read as None, so the plan
    # forgot the field and read the customer again, as the run left it:
    # before the run, in a plan.
    "a text cleared then set back": (
        "dualentry",
        [(0, CustomerPatch(email="")), (0, CustomerPatch(email="ops@acme.example"))],
        _email("ops@acme.example"),
        1,
    ),
    # The next batch's read shows the customer before the run (a plan writes
    # nothing): the plan took that for news of a change since.
    "replace-all tax ids over three batches": (
        "qwoty",
        [
            (0, CustomerPatch(tax_ids=[TaxId("VAT", "A")])),
            (0, CustomerPatch(tax_ids=[TaxId("VAT", "A")])),
            (0, CustomerPatch(tax_ids=[])),
        ],
        None,
        1,
    ),
    "a field set, another batch, then cleared": (
        "dualentry",
        [
            (0, CustomerPatch(email="x@y.example")),
            *[(1, CustomerPatch(name=f"n{i}")) for i in range(99)],
            (0, CustomerPatch(email="x@y.example")),
            (0, CustomerPatch(email=None)),
        ],
        None,
        1,
    ),
    # Far apart, a later record is compared with the read alone: right for a
    # run, whose read shows what the earlier one wrote; a plan's read shows
    # the customer before the run.
    "set, then cleared 250 records later": (
        "dualentry",
        [
            (0, CustomerPatch(email="x@y.example")),
            *[(1, CustomerPatch(name=f"n{i}")) for i in range(250)],
            (0, CustomerPatch(email=None)),
        ],
        None,
        4,
    ),
    "tax ids set, then removed ten batches later": (
        "qwoty",
        [
            (0, CustomerPatch(tax_ids=[TaxId("VAT", "A")])),
            *[(1, CustomerPatch(name=f"n{i}")) for i in range(10)],
            (0, CustomerPatch(tax_ids=[])),
        ],
        None,
        1,
    ),
}


@pytest.mark.parametrize("case", PLAN_CASES)
async def test_a_plan_predicts_which_records_a_run_sends(case):
    provider, records, setup, concurrency = PLAN_CASES[case]
    planned, applied = await plan_and_apply(
        provider, records, concurrency=concurrency, setup=setup
    )
    assert planned == applied


@settings(max_examples=40)
@given(
    records=st.lists(
        st.tuples(
            st.integers(0, 1),
            st.sampled_from(
                [
                    (field, value)
                    for field, values in {
                        "email": ["a@b.example", "c@d.example"],
                        "phone": ["555 0100", "555 0199"],
                        "website": ["https://a.example"],
                    }.items()
                    for value in ["", None, *values]
                ]
            ),
        ),
        max_size=10,
    ),
    concurrency=st.integers(1, 3),
    emails=st.tuples(*[st.sampled_from(["", "a@b.example", "c@d.example"])] * 2),
)
def test_a_plan_predicts_which_records_a_run_sends_for_any_text_changes(
    records, concurrency, emails
):
    """Texts set, cleared with None or "", and set back, on two customers."""
    patches = [(which, CustomerPatch(**{field: value})) for which, (field, value) in records]

    def setup(fake, ids):
        for cid, email in zip(ids, emails, strict=True):
            fake.customers[cid]["email"] = email

    planned, applied = asyncio.run(
        plan_and_apply("dualentry", patches, concurrency=concurrency, setup=setup)
    )
    assert planned == applied


async def test_match_on_a_key_the_provider_cannot_filter_by_is_refused_at_once():
    store = Store(1)
    async with client(store) as de:
        with pytest.raises(UnsupportedOperationError, match="email"):
            de.iter_updates([], match_on="email")
    async with client(store, "qwoty") as qwoty:
        with pytest.raises(UnsupportedOperationError):
            qwoty.iter_updates([], match_on="unique_id")


async def test_a_plan_reads_and_predicts_but_writes_nothing():
    store = Store(3, [definition(1, "Partner", "boolean")])
    store.customers[1]["name"] = "A"
    updates = [
        (1, CustomerPatch(name="B")),
        (1, CustomerPatch(name="A")),  # back to A: a change again after the first
        (2, CustomerPatch(name="C2")),
        (3, CustomerPatch(custom_fields={"Nope": 1})),
        (9, CustomerPatch(name="x")),
    ]
    async with client(store) as de:
        results = sorted(
            [r async for r in de.iter_plan(updates, concurrency=4)], key=lambda r: r.index
        )
    assert store.sent("PATCH") == []
    assert [r.changed for r in results[:3]] == [True, True, False]
    assert (results[0].before.name, results[0].customer.name) == ("A", "B")
    assert (results[1].before.name, results[1].customer.name) == ("B", "A")
    assert results[1].sent == CustomerPatch(name="A")
    assert isinstance(results[3].error, UnknownCustomFieldError)
    assert isinstance(results[4].error, NotFoundError)


async def test_a_field_the_list_does_not_show_is_read_from_the_customer_itself():
    """DualEntry's list has no address or country; its get has them."""
    store = Store(2)
    answer_list = store.answer

    def answer(request):
        response = answer_list(request)
        if request.method == "GET" and urlsplit(request.url).path.endswith("/customers/"):
            return response  # list rows as they are: no address, no country
        data = json.loads(response.body)
        data.update(address="1 Road", country="FR")
        return Response(status=response.status, body=json.dumps(data).encode())

    store.transport = MockTransport(answer)
    updates = [(1, CustomerPatch(address="1 Road")), (2, CustomerPatch(name="C2", country="DE"))]
    async with client(store) as de:
        results = sorted(
            [r async for r in de.iter_updates(updates, skip_unchanged=True)], key=lambda r: r.index
        )
    assert not results[0].changed  # compared with what the get showed, not sent blind
    assert results[1].sent == CustomerPatch(country="DE")
    assert results[1].before.country == "FR"  # known, so an undo can restore it
    gets = sorted(urlsplit(r.url).path for r in store.sent("GET"))
    assert gets == ["/public/v2/customers/", "/public/v2/customers/1/", "/public/v2/customers/2/"]


async def test_a_401_on_the_reads_stops_the_run():
    """Every later read would be refused the same way: stop, as for a 401 on a write."""

    def answer(request):
        return Response(status=401, body=b'{"success": false, "errors": {"__all__": ["no"]}}')

    transport = MockTransport(answer)
    updates = [(i, CustomerPatch(name="x")) for i in range(1, 1001)]
    async with Client("dualentry", token="k", transport=transport, rate_limit=None) as de:
        results = [r async for r in de.iter_updates(updates, skip_unchanged=True)]
    assert len(results) == 1000
    assert len(transport.requests) == 1  # not one read per page of the 1000
    assert sum(isinstance(r.error, NotAttemptedError) for r in results) == 900


async def test_reads_that_keep_failing_count_towards_the_thresholds():
    transport = MockTransport(lambda r: Response(status=500, body=b"{}"))
    updates = [(i, CustomerPatch(name="x")) for i in range(1, 1001)]
    results = await read_before_write(transport, updates, max_consecutive_failures=150)
    assert len(results) == 1000
    assert len(transport.requests) == 2  # the second page's failures cross the threshold


async def test_a_definitions_list_that_never_ends_is_a_format_error_not_a_hang():
    def page(request):  # new definitions at every offset, and a count that never runs out
        offset = int(parse_qs(urlsplit(request.url).query)["offset"][0])
        items = [definition(offset + i, f"F{offset + i}") for i in range(1, 101)]
        return Response(status=200, body=json.dumps({"items": items, "count": 10**12}).encode())

    transport = MockTransport(page)
    async with Client("dualentry", token="k", transport=transport, rate_limit=None) as de:
        with pytest.raises(ResponseFormatError, match="of more than 100 pages"):
            await asyncio.wait_for(de.custom_field_definitions(), HANG_GUARD)
    assert len(transport.requests) == 100


def test_a_request_built_outside_the_client_carries_its_route_too():
    adapter = get_adapter("dualentry")
    request = adapter.build_request(
        1, CustomerPatch(name="x"), base_url="https://api.dualentry.com", token="t"
    )
    assert request.route == "PATCH /public/v2/customers/{id}/"


async def test_a_patch_is_checked_against_the_definitions_its_keys_name(monkeypatch):
    """Every update that set custom fields rebuilt the check's indexes from every
    definition (a copy of the list, then two dicts): with thousands of definitions,
    a millisecond a record, and a minute for --strict's check of a large file.  The
    check is now given only the definitions the patch's keys can name, and decides
    exactly as with all of them."""
    many = [*DEFINITIONS, *(definition(100 + i, f"F{i}") for i in range(2000))]
    store = Store(1, many)
    given: list[int] = []
    adapter_class = type(Client("dualentry", token="k").adapter)
    check = adapter_class.check_custom_fields

    def counting(self, values, definitions):
        given.append(len(definitions))
        return check(self, values, definitions)

    monkeypatch.setattr(adapter_class, "check_custom_fields", counting)
    async with client(store) as de:
        await de.update(1, CustomerPatch(custom_fields={"F1999": "x", 105: "y"}))
        with pytest.raises(ValidationError, match="use an id: 6 and 7"):
            await de.update(1, CustomerPatch(custom_fields={"Region": "EMEA"}))
        with pytest.raises(UnknownCustomFieldError):
            await de.update(1, CustomerPatch(custom_fields={"Old": "x", "Tier": "Gold"}))
        with pytest.raises(ValidationError, match="not the id of an active"):
            await de.update(1, CustomerPatch(custom_fields={8: "x"}))
    assert given == [2, 2, 2, 1]
    assert len(store.sent("PATCH")) == 1


@pytest.mark.parametrize(
    ("definitions", "values"),
    [
        # A field renamed between two pages of the list: its last copy is the field.
        ([(50, "Old"), (51, "Other"), (50, "New")], {"Old": "x"}),
        ([(50, "Old"), (51, "Other"), (50, "New")], {"New": "x"}),
        ([(50, "Region"), (51, "Region"), (50, "Area")], {"Region": "x"}),
        ([(50, "Area"), (51, "Region"), (50, "Region")], {"Region": "x"}),
        ([(50, "Old", "boolean"), (50, "New")], {"Old": "x"}),
        ([(50, "Old"), (50, "Old", "boolean")], {"Old": "x"}),
        ([(50, "X"), (50, "X", "text", {"active": False})], {"X": "x"}),
        ([(50, "X", "text", {"active": False}), (50, "X")], {"X": "x"}),
        # The ids a shared name's problem lists, in the list's order.
        ([(44, "Region"), (45, "Region")], {45: "x", "Region": "y"}),
        ([(45, "45"), (46, "Region")], {"45": "x"}),
        ([(45, "Region"), (46, "45")], {46: "x", "45": "y", 45: "z"}),
        ([(41, "Partner")], {True: "x", 41: "y", "Partner": "z"}),
        ([(41, "Partner"), (41, "Partner")], {"Partner": "y", "Nope": 1, 99: 2}),
    ],
)
async def test_the_client_decides_as_the_adapter_does_with_every_definition(definitions, values):
    """The client gives the adapter's check only the definitions a patch's keys
    name; its decision must be the one the check makes with all of them (a red
    team found a field renamed between pages decided by its stale copy)."""
    store = Store(1, [definition(*d[:3], **(d[3] if len(d) > 3 else {})) for d in definitions])
    async with client(store) as de:
        read = await de.custom_field_definitions()
        patch = CustomerPatch(custom_fields=values)
        expected = de.adapter.check_custom_fields(patch.custom_fields, read)
        refused = await de._check_custom_fields(patch)
    unknown, problems = expected
    if unknown:
        assert isinstance(refused, UnknownCustomFieldError)
        assert refused.names == tuple(unknown)
    elif problems:
        assert isinstance(refused, ValidationError)
        assert refused.problems == tuple(problems)
    else:
        assert refused is None
