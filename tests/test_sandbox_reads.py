"""The read side of the fake providers, over real HTTP on 127.0.0.1.

Plain aiohttp requests (no library client): DualEntry's customer list with
every filter its OpenAPI document lists, ``ordering`` and paging; one
customer; the custom field definitions, seeded per fake; the per-route and
per-key rate limit buckets (exhausted by count, never by time); and Qwoty's
"Get Customer".  Every DualEntry answer is checked against the document's
schema (``tests/contract``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from customer_patch import RateLimit
from customer_patch.sandbox import Faults
from customer_patch_dualentry import DualEntryAdapter
from customer_patch_dualentry._fake import (
    CUSTOM_FIELDS,
    FIELD_TYPES,
    DualEntryFake,
    applies_to_customers,
    definition,
)
from customer_patch_qwoty._fake import QwotyFake
from tests.contract import SCHEMAS, SPEC, problems

KEY = "sandbox-token"
V2 = "/public/v2"
# Tiny refills: a bucket emptied by count stays empty for the whole test.
SLOW = 0.001
Query = Sequence[tuple[str, str]]


class Api:
    """Requests to one running fake; each answer as ``(status, body, headers)``."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def call(
        self, method: str, path: str, query: Query = (), **kwargs: Any
    ) -> tuple[int, Any, Any]:
        async with self.session.request(
            method, self.base_url + path, params=list(query), **kwargs
        ) as r:
            return r.status, await r.json(), r.headers

    async def get(self, path: str, query: Query = (), **kwargs: Any) -> tuple[int, Any, Any]:
        return await self.call("GET", path, query, **kwargs)

    async def ok(self, path: str, query: Query = (), schema: str | None = None) -> Any:
        status, body, _ = await self.get(path, query)
        assert status == 200, body
        if schema is not None:
            assert problems(schema, body) == []
        return body

    async def bad(self, path: str, query: Query = (), status: int = 400) -> dict[str, Any]:
        got, body, _ = await self.get(path, query)
        assert got == status, body
        assert problems("ErrorSchema", body) == []
        return body


@asynccontextmanager
async def serving(fake: Any, headers: dict[str, str] | None = None) -> AsyncIterator[Api]:
    async with fake.running() as base_url, aiohttp.ClientSession(headers=headers) as session:
        assert base_url.startswith("http://127.0.0.1:")
        yield Api(session, base_url)


def dualentry(**options: Any) -> DualEntryFake:
    options.setdefault("limits", ())
    return DualEntryFake(**options)


def address(state: str) -> dict[str, Any]:
    return {
        "street": "1 Main St",
        "city": "Springfield",
        "state": state,
        "postal_code": "62701",
        "country": "US",
        "second_line": "",
        "name": None,
    }


def seed_varied(fake: DualEntryFake) -> None:
    """Four customers that the filters tell apart."""
    fake.add(
        id=1,
        name="Acme Holdings",
        unique_id="ACME-001",
        email="billing@acme.example",
        website="https://acme.example",
        address="1 Main St, Springfield",
        country="United States",
        phone="+1 555 0100",
        full_address=address("IL"),
    )
    fake.add(
        id=2,
        name="Beta GmbH",
        unique_id="beta-002",
        email="ap@beta.example",
        website="https://beta.example",
        address="Hauptstr. 5, Berlin",
        country="Germany",
        phone="+49 30 1234",
        record_status="draft",
        approval_status="pending",
        full_address=address("Berlin"),
    )
    fake.add(
        id=3,
        name="carol smith",
        email="carol@mail.example",
        customer_type="individual",
        record_status="archived",
        approval_status="rejected",
    )
    fake.add(
        id=4,
        name="Delta ACME",
        unique_id="ACME-001X",
        customer_type="individual",
        full_address=address("il"),
    )


def ids(page: dict[str, Any]) -> list[int]:
    return [item["id"] for item in page["items"]]


def spec_parameters(path: str) -> set[str]:
    return {p["name"] for p in SPEC["paths"][path]["get"]["parameters"]}


async def patch(api: Api, customer_id: int, body: Any, version: str = "v2") -> tuple[int, Any]:
    status, answer, _ = await api.call(
        "PATCH", f"/public/{version}/customers/{customer_id}/", json=body
    )
    return status, answer


# -- one customer ---------------------------------------------------------------------------


async def test_get_one_customer_and_its_errors():
    fake = dualentry()
    seed_varied(fake)
    async with serving(fake, {"X-API-KEY": KEY}) as api:
        for version in ("v1", "v2"):
            one = await api.ok(f"/public/{version}/customers/2/", schema="CustomerSchemaOut")
            assert (one["id"], one["unique_id"], one["record_status"]) == (2, "beta-002", "draft")
        assert "Not found." in str(await api.bad(f"{V2}/customers/99/", status=404))
        for odd in ("abc", "1_001", "\u0661\u0660\u0660\u0661", "+1001"):
            error = await api.bad(f"{V2}/customers/{odd}/", status=400)
            assert list(error["errors"]) == ["customer_id"], odd
    async with serving(fake) as anonymous:
        await anonymous.bad(f"{V2}/customers/1/", status=401)
        await anonymous.bad(f"{V2}/customers/", status=401)
        await anonymous.bad(f"{V2}/custom-fields/", status=401)
    async with serving(fake, {"X-API-KEY": "wrong"}) as wrong:
        await wrong.bad(f"{V2}/customers/1/", status=403)
        await wrong.bad(f"{V2}/customers/", status=403)


# -- custom field definitions ----------------------------------------------------------------

SEEDED = [
    definition(1, "Notes", "text"),
    definition(2, "Seats", "number"),
    definition(3, "Budget", "currency"),
    definition(4, "Renewal", "date"),
    definition(5, "Partner", "boolean"),
    definition(6, "Tier", "single_select", ["Bronze", "Silver", "Gold"]),
    definition(7, "Tags", "multi_select", ["VIP", "Reseller"]),
    definition(8, "Homepage", "link"),
    definition(9, "Summary", "paragraph", description="Long free text"),
    definition(10, "Region", "text"),
    definition(11, "Region", "text"),  # an active pair sharing a name
    definition(12, "Legacy", "text", is_active=False),
    definition(13, "Old Code", "text", applies_to=[{"type": "customer", "is_active": False}]),
    definition(14, "PO Number", "text", applies_to=["invoice", "bill"]),
    definition(
        15, "Tax Class", "text", applies_to=[{"type": "customer", "is_required": True}, "vendor"]
    ),
    definition(16, "Scoped", "text", company_id=7, company_ids=[7]),
]
FOR_CUSTOMERS = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 16}
# A value of each type, as a PATCH by name would write it.
VALUES = {
    "Notes": "hello",
    "Seats": 12,
    "Budget": "1500.00",
    "Renewal": "2025-01-31",
    "Partner": True,
    "Tier": "Gold",
    "Tags": ["VIP", "Reseller"],
    "Homepage": "https://acme.example",
    "Summary": "Line one\nLine two",
    "Region": "EMEA",
    "Tax Class": "B",
    "Scoped": "x",
}


def test_the_seeded_definitions_cover_every_field_type_and_case():
    assert {f["field_type"] for f in SEEDED} == set(FIELD_TYPES)
    assert set(FIELD_TYPES) == set(SCHEMAS["FieldType"]["enum"])
    assert {f["id"] for f in SEEDED if applies_to_customers(f)} == FOR_CUSTOMERS
    for f in SEEDED:
        assert problems("PublicCustomFieldSchemaOut", f) == []
        assert problems("CustomFieldSchemaOut", f) == []


def test_definition_refuses_what_dualentry_would_not_hold():
    with pytest.raises(ValueError, match="field_type"):
        definition(1, "Notes", "string")
    for name in ("N", "N" * 33):
        with pytest.raises(ValueError, match="2 to 32"):
            definition(1, name, "text")
    with pytest.raises(ValueError, match="applies_to"):
        definition(1, "Notes", "text", applies_to=["customers"])
    with pytest.raises(ValueError, match="unique"):
        DualEntryFake(custom_fields=[definition(1, "Aa", "text"), definition(1, "Bb", "text")])


async def test_the_default_definitions_are_unchanged():
    assert DualEntryFake().custom_fields == CUSTOM_FIELDS
    assert [f["id"] for f in CUSTOM_FIELDS] == [41, 42, 43, 44, 45]
    async with serving(dualentry(), {"X-API-KEY": KEY}) as api:
        page = await api.ok(f"{V2}/custom-fields/", schema="PagedPublicCustomFieldSchemaOut")
    assert page == {"items": CUSTOM_FIELDS, "count": 5}


FIELD_FILTERS: list[tuple[str, Query, list[int], int]] = [
    ("none: the order given", [], list(range(1, 17)), 16),
    (
        "record_type customer",
        [("record_type", "customer")],
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16],
        15,
    ),
    ("record_type invoice", [("record_type", "invoice")], [14], 1),
    ("record_type vendor", [("record_type", "vendor")], [15], 1),
    ("record_type nothing has", [("record_type", "contract")], [], 0),
    ("is_active", [("is_active", "false")], [12], 1),
    (
        "active for customers",
        [("record_type", "customer"), ("is_active", "true"), ("is_active_record", "true")],
        sorted(FOR_CUSTOMERS),
        13,
    ),
    ("is_active_record", [("record_type", "customer"), ("is_active_record", "false")], [13], 1),
    ("is_required", [("record_type", "customer"), ("is_required", "true")], [15], 1),
    (
        "is_required without record_type is ignored",
        [("is_required", "true")],
        list(range(1, 17)),
        16,
    ),
    ("name icontains", [("name", "REGION")], [10, 11], 2),
    ("name icontains part", [("name", "tag")], [7], 1),
    ("field_type", [("field_type", "multi_select")], [7], 1),
    ("id repeated", [("id", "5"), ("id", "14"), ("id", "99")], [5, 14], 2),
    ("search name", [("search", "tier")], [6], 1),
    ("search description", [("search", "FREE TEXT")], [9], 1),
    ("company_id: org-wide and its own", [("company_id", "7")], list(range(1, 17)), 16),
    ("company_id: another company", [("company_id", "8")], list(range(1, 16)), 15),
    ("ordering id desc", [("ordering", "-id"), ("limit", "3")], [16, 15, 14], 16),
    (
        "ordering name, ties by id",
        [("ordering", "name"), ("limit", "6")],
        [3, 8, 12, 1, 13, 5],
        16,
    ),
    (
        "ordering -name, ties by id",
        [("ordering", "-name"), ("limit", "6")],
        [6, 15, 7, 9, 2, 16],
        16,
    ),
    (
        "ordering updated_at: given order reversed",
        [("ordering", "updated_at"), ("limit", "2")],
        [16, 15],
        16,
    ),
    (
        "ordering -updated_at: given order",
        [("ordering", "-updated_at"), ("limit", "2")],
        [1, 2],
        16,
    ),
    ("paged", [("limit", "3"), ("offset", "14")], [15, 16], 16),
    (
        "paged and filtered",
        [("record_type", "customer"), ("limit", "2"), ("offset", "9")],
        [10, 11],
        15,
    ),
    ("unknown parameters are ignored", [("record", "invoice")], list(range(1, 17)), 16),
]


@pytest.mark.parametrize(
    ("query", "expected", "count"),
    [c[1:] for c in FIELD_FILTERS],
    ids=[c[0] for c in FIELD_FILTERS],
)
async def test_the_custom_field_list_filters_seeded_definitions(query, expected, count):
    async with serving(dualentry(custom_fields=SEEDED), {"X-API-KEY": KEY}) as api:
        page = await api.ok(f"{V2}/custom-fields/", query, "PagedPublicCustomFieldSchemaOut")
    by_id = {f["id"]: f for f in SEEDED}
    assert (ids(page), page["count"]) == (expected, count)
    assert page["items"] == [by_id[i] for i in expected]


def test_the_custom_field_cases_cover_the_spec_parameters():
    covered = {name for _, query, _, _ in FIELD_FILTERS for name, _ in query}
    assert spec_parameters(f"{V2}/custom-fields/") <= covered


@pytest.mark.parametrize("field_type", FIELD_TYPES)
async def test_each_field_type_is_listed_by_its_type(field_type):
    async with serving(dualentry(custom_fields=SEEDED), {"X-API-KEY": KEY}) as api:
        page = await api.ok(
            f"{V2}/custom-fields/", [("field_type", field_type)], "PagedPublicCustomFieldSchemaOut"
        )
    assert page["items"]
    assert {f["field_type"] for f in page["items"]} == {field_type}


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ([("record_type", "customers")], "record_type"),
        ([("field_type", "string")], "field_type"),
        ([("is_active", "maybe")], "is_active"),
        ([("record_type", "customer"), ("is_required", "2")], "is_required"),
        ([("id", "x")], "id"),
        ([("company_id", "x")], "company_id"),
        ([("ordering", "field_type")], "ordering"),
        ([("limit", "0")], "limit"),
    ],
)
async def test_a_custom_field_filter_the_spec_refuses_is_a_400(query, parameter):
    async with serving(dualentry(custom_fields=SEEDED), {"X-API-KEY": KEY}) as api:
        error = await api.bad(f"{V2}/custom-fields/", query)
    assert list(error["errors"]) == [parameter]


async def test_seeded_definitions_shape_customers_and_what_a_patch_may_write():
    fake = dualentry(custom_fields=SEEDED)
    fake.add(id=1, name="Acme")
    async with serving(fake, {"X-API-KEY": KEY}) as api:
        one = await api.ok(f"{V2}/customers/1/", schema="CustomerSchemaOut")
        # Entries for the fields that apply to customers, and only those.
        assert [e["field"]["id"] for e in one["custom_fields"]] == sorted(FOR_CUSTOMERS)
        assert all(e["value"] is None for e in one["custom_fields"])

        status, answer = await patch(
            api, 1, {"custom_fields": [{k: v} for k, v in VALUES.items()]}
        )
        assert (status, problems("CustomerSchemaOut", answer)) == (200, [])
        written = {e["field"]["id"]: e["value"] for e in answer["custom_fields"]}
        for e in answer["custom_fields"]:
            value = e["value"]
            assert value["value"] == VALUES[e["field"]["name"]]
            assert value["custom_field_type"] == e["field"]["field_type"]
        assert written[10]["value"] == written[11]["value"] == "EMEA"  # both of the shared name
        listed = await api.ok(f"{V2}/customers/", schema="PagedCustomerListSchemaOut")
        assert listed["items"][0]["custom_fields"] == answer["custom_fields"]

        # Inactive, inactive for customers, or for other records only: unknown, 422.
        for name in ("Legacy", "Old Code", "PO Number", "Nope"):
            status, error = await patch(api, 1, {"custom_fields": [{name: "x"}]})
            assert (status, problems("ErrorSchema", error)) == (422, []), name
            assert name in error["errors"]["custom_fields"][0]
        for field_id in (12, 13, 14):
            body = {"custom_fields": [{"field": {"id": field_id}, "value": {"value": "x"}}]}
            status, error = await patch(api, 1, body)
            assert (status, problems("ErrorSchema", error)) == (422, [])
        # By id, a field of a shared name alone.
        body = {
            "custom_fields": [
                {"field": {"id": 11}, "value": {"custom_field_id": 11, "value": "APAC"}}
            ]
        }
        status, answer = await patch(api, 1, body)
        written = {e["field"]["id"]: e["value"]["value"] for e in answer["custom_fields"]}
        assert (status, written[10], written[11]) == (200, "EMEA", "APAC")


async def test_definitions_given_as_schema_shaped_mappings():
    minimal = [
        {
            "id": 7,
            "name": "Segment",
            "field_type": "single_select",
            "is_active": True,
            "options": ["A", "B"],
            "applies_to": [{"type": "customer"}],
        },
        {
            "id": 8,
            "name": "Nowhere",
            "field_type": "text",
            "is_active": True,
        },  # applies to nothing
    ]
    fake = dualentry(custom_fields=minimal)
    customer = fake.add(id=1)
    assert [e["field"]["id"] for e in customer["custom_fields"]] == [7]
    async with serving(fake, {"X-API-KEY": KEY}) as api:
        page = await api.ok(f"{V2}/custom-fields/", schema="PagedPublicCustomFieldSchemaOut")
        assert page["items"][0]["applies_to"] == [
            {"type": "customer", "is_active": True, "is_required": False}
        ]
        assert page["items"][1]["applies_to"] == []
        assert ids(await api.ok(f"{V2}/custom-fields/", [("record_type", "customer")])) == [7]
        status, _ = await patch(api, 1, {"custom_fields": [{"Nowhere": "x"}]})
        assert status == 422


# -- rate limit buckets -------------------------------------------------------------------------

ROUTES = [
    ("GET", f"{V2}/customers/1/"),
    ("GET", f"{V2}/customers/"),
    ("GET", f"{V2}/custom-fields/"),
    ("PATCH", f"{V2}/customers/1/"),
]


async def send(api: Api, method: str, path: str) -> tuple[int, Any, Any]:
    body = {"name": "Acme"} if method == "PATCH" else None
    return await api.call(method, path, json=body)


def assert_limited(status: int, body: Any, headers: Any) -> None:
    assert status == 429
    assert problems("ErrorSchema", body) == []
    assert body["errors"] == {"__all__": ["Rate limit exceeded. Please try again later."]}
    assert int(headers["Retry-After"]) >= 1


def test_the_fake_enforces_the_documented_limits_by_default():
    assert DualEntryFake().limits == DualEntryAdapter.rate_limits
    route, key = DualEntryAdapter.rate_limits
    assert (route.burst, route.per_second, key.burst, key.per_second) == (10, 1.0, 50, 5.0)


async def test_each_route_and_method_has_its_own_bucket():
    fake = DualEntryFake(
        limits=(
            RateLimit(burst=2, per_second=SLOW, per_route=True),
            RateLimit(burst=100, per_second=SLOW),
        )
    )
    fake.add(id=1)
    async with serving(fake, {"X-API-KEY": KEY}) as api:
        for _ in range(2):
            assert (await send(api, "PATCH", f"{V2}/customers/1/"))[0] == 200
        assert_limited(*await send(api, "PATCH", f"{V2}/customers/1/"))
        assert_limited(*await send(api, "PATCH", "/public/v1/customers/1/"))  # one resource
        # The PATCH route's empty bucket leaves every GET route answering.
        for method, path in ROUTES[:3]:
            assert (await send(api, method, path))[0] == 200
        assert (await send(api, "GET", f"{V2}/customers/1/"))[0] == 200
        assert_limited(*await send(api, "GET", "/public/v1/customers/1/"))
        # GET one customer and the list are two routes.
        assert (await send(api, "GET", f"{V2}/customers/"))[0] == 200
        assert_limited(*await send(api, "GET", f"{V2}/customers/"))
        assert (await send(api, "GET", f"{V2}/custom-fields/"))[0] == 200
        assert_limited(*await send(api, "GET", f"{V2}/custom-fields/"))
    assert fake.answered_429 == 5


async def test_an_injected_429_answers_as_the_providers_own_does():
    """Fault injection's 429 said "injected fault": a client tested against it
    met a body the provider never sends."""
    fake = dualentry(faults=Faults(rates={"429": 1.0}, retry_after=2))
    fake.add(id=1)
    async with serving(fake, {"X-API-KEY": KEY}) as api:
        status, body, headers = await send(api, "PATCH", f"{V2}/customers/1/")
    assert_limited(status, body, headers)
    assert headers["Retry-After"] == "2"


async def test_an_address_takes_the_specs_defaults_for_the_parts_left_out():
    """AddressSchemaIn: ``state``, ``second_line`` and ``country`` default to "".
    The client always sends every part, so only a raw request shows them."""
    fake = dualentry()
    fake.add(id=1)
    sent = {"street": "1 Main St", "city": "Springfield", "postal_code": "12345"}
    async with serving(fake, {"X-API-KEY": KEY}) as api:
        status, answer = await patch(api, 1, {"full_address": sent})
    assert status == 200, answer
    stored = fake.customers[1]["full_address"]
    assert {k: stored[k] for k in ("state", "second_line", "country")} == dict.fromkeys(
        ("state", "second_line", "country"), ""
    )
    assert {k: stored[k] for k in sent} == sent


async def test_every_route_shares_the_keys_bucket():
    fake = DualEntryFake(
        limits=(
            RateLimit(burst=10, per_second=SLOW, per_route=True),
            RateLimit(burst=3, per_second=SLOW),
        )
    )
    fake.add(id=1)
    async with serving(fake, {"X-API-KEY": KEY}) as api:
        for method, path in ROUTES[:3]:
            assert (await send(api, method, path))[0] == 200
        for method, path in ROUTES:
            assert_limited(*await send(api, method, path))
    # A wrong key is refused (403) before any bucket is asked.
    async with serving(fake, {"X-API-KEY": "wrong"}) as wrong:
        status, _, _ = await send(wrong, "GET", f"{V2}/customers/")
        assert status == 403


# -- the customer list ----------------------------------------------------------------------

CUSTOMER_FILTERS: list[tuple[str, Query, set[int]]] = [
    ("id repeated", [("id", "1"), ("id", "3")], {1, 3}),
    ("id one", [("id", "2")], {2}),
    ("id unknown", [("id", "99")], set()),
    ("company_id: no companies", [("company_id", "1")], set()),
    ("customer_type one", [("customer_type", "individual")], {3, 4}),
    ("customer_type repeated", [("customer_type", "business"), ("customer_type", "x")], {1, 2}),
    ("customer_type comma is one value", [("customer_type", "business,individual")], set()),
    ("name icontains", [("name", "acme")], {1, 4}),
    ("name empty is every name", [("name", "")], {1, 2, 3, 4}),
    ("email icontains", [("email", "ACME.EXAMPLE")], {1}),
    ("website icontains", [("website", "BeTa")], {2}),
    ("address icontains", [("address", "springfield")], {1}),
    ("country icontains", [("country", "GERM")], {2}),
    ("phone icontains", [("phone", "555")], {1}),
    ("unique_id iexact", [("unique_id", "acme-001")], {1}),
    ("unique_id iexact upper", [("unique_id", "BETA-002")], {2}),
    ("unique_id is not contains", [("unique_id", "ACME")], set()),
    ("state of the full_address", [("state", "il")], {1, 4}),
    ("state icontains", [("state", "ERL")], {2}),
    ("search name", [("search", "acme")], {1, 4}),
    ("search unique_id", [("search", "beta-00")], {2}),
    ("search email", [("search", "carol@")], {3}),
    ("record_status one", [("record_status", "posted")], {1, 4}),
    (
        "record_status repeated",
        [("record_status", "draft"), ("record_status", "archived")],
        {2, 3},
    ),
    ("approval_status", [("approval_status", "pending")], {2}),
    (
        "approval_status repeated",
        [("approval_status", "approved"), ("approval_status", "rejected")],
        {1, 3, 4},
    ),
    (
        "filters combine with and",
        [("name", "acme"), ("record_status", "posted"), ("customer_type", "individual")],
        {4},
    ),
    (
        "unknown parameters are ignored",
        [("colour", "red"), ("unique_id__iexact", "x")],
        {1, 2, 3, 4},
    ),
]


def test_the_cases_cover_every_parameter_of_the_list_operation():
    covered = {name for _, query, _ in CUSTOMER_FILTERS for name, _ in query}
    assert spec_parameters(f"{V2}/customers/") - {"ordering", "limit", "offset"} <= covered


@pytest.mark.parametrize(
    ("query", "expected"), [c[1:] for c in CUSTOMER_FILTERS], ids=[c[0] for c in CUSTOMER_FILTERS]
)
async def test_every_filter_of_the_customer_list(query, expected):
    fake = dualentry()
    seed_varied(fake)
    async with serving(fake, {"X-API-KEY": KEY}) as api:
        for version in ("v1", "v2"):
            page = await api.ok(
                f"/public/{version}/customers/", query, "PagedCustomerListSchemaOut"
            )
            assert set(ids(page)) == expected
            assert page["count"] == len(expected)


async def test_list_items_are_the_list_schema_not_the_get_schema():
    fake = dualentry()
    seed_varied(fake)
    async with serving(fake, {"X-API-KEY": KEY}) as api:
        page = await api.ok(f"{V2}/customers/", [("id", "1")], "PagedCustomerListSchemaOut")
        one = await api.ok(f"{V2}/customers/1/", schema="CustomerSchemaOut")
    [item] = page["items"]
    assert set(item) == set(SCHEMAS["CustomerListSchemaOut"]["properties"])
    assert item["full_address"]["state"] == "IL"
    assert "full_address" not in one
    assert one["address"] == "1 Main St, Springfield"
    assert {k: one[k] for k in item if k != "full_address"} == {
        k: v for k, v in item.items() if k != "full_address"
    }


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ([("id", "x")], "id"),
        ([("id", "1,2")], "id"),  # arrays are repeated parameters, not comma-separated
        ([("id", "1"), ("id", "")], "id"),
        ([("company_id", "acme")], "company_id"),
        ([("record_status", "deleted")], "record_status"),
        ([("record_status", "posted"), ("record_status", "POSTED")], "record_status"),
        ([("limit", "0")], "limit"),
        ([("limit", "x")], "limit"),
        # Integers as the spec's validators read them: what Python's int() also
        # takes (underscores, spaces, another script's digits) is no integer.
        ([("limit", "1_0")], "limit"),
        ([("limit", " 10")], "limit"),
        ([("id", "\u0661\u0660\u0660\u0661")], "id"),
        ([("offset", "-1")], "offset"),
        ([("ordering", "colour")], "ordering"),
        ([("ordering", "name,-id")], "ordering"),
        ([("ordering", "")], "ordering"),
    ],
)
async def test_a_value_the_spec_refuses_is_a_400_naming_the_parameter(query, parameter):
    fake = dualentry()
    seed_varied(fake)
    async with serving(fake, {"X-API-KEY": KEY}) as api:
        error = await api.bad(f"{V2}/customers/", query)
    assert list(error["errors"]) == [parameter]


async def test_ordering_is_deterministic_and_defaults_to_most_recently_updated_first():
    fake = dualentry()
    names = {1: "beta", 2: "Alpha", 3: "alpha", 4: "Gamma", 5: "ALPHA"}
    for n in (5, 3, 1, 4, 2):  # stored out of id order: ties must not follow the store
        fake.add(id=n, name=names[n])
    async with serving(fake, {"X-API-KEY": KEY}) as api:
        status, _ = await patch(api, 3, {"email": "a@b.example"})
        assert status == 200

        async def order(*ordering: str) -> list[int]:
            query = [("ordering", o) for o in ordering]
            return ids(await api.ok(f"{V2}/customers/", query, "PagedCustomerListSchemaOut"))

        assert await order() == await order("-updated_at") == [3, 2, 4, 1, 5]
        assert await order("updated_at") == [5, 1, 4, 2, 3]
        assert await order("created_at") == [5, 3, 1, 4, 2]
        assert await order("-created_at") == [2, 4, 1, 3, 5]
        assert await order("id") == [1, 2, 3, 4, 5]
        assert await order("-id") == [5, 4, 3, 2, 1]
        # Case-insensitive names; equal names by ascending id, in both directions.
        assert await order("name") == [2, 3, 5, 1, 4]
        assert await order("-name") == [4, 1, 2, 3, 5]
        assert await order("id", "-id") == [5, 4, 3, 2, 1]  # repeated: the last one
        assert await order() == [3, 2, 4, 1, 5]  # reading changes nothing


async def test_paging_over_more_than_a_hundred_customers():
    fake = dualentry()
    for n in range(1, 251):
        fake.add(id=n, name=f"Customer {n}", unique_id=f"U-{n}")
    async with serving(fake, {"X-API-KEY": KEY}) as api:
        url = f"{V2}/customers/"
        seen: list[int] = []
        for offset in (0, 100, 200):
            page = await api.ok(
                url, [("ordering", "id"), ("offset", str(offset))], "PagedCustomerListSchemaOut"
            )
            assert page["count"] == 250
            seen += ids(page)
        assert seen == list(range(1, 251))
        default = await api.ok(url)
        assert (len(default["items"]), default["count"]) == (100, 250)
        assert ids(default)[:3] == [250, 249, 248]  # -updated_at: the last added first
        capped = await api.ok(url, [("limit", "500"), ("offset", "120"), ("ordering", "id")])
        assert ids(capped) == list(range(121, 221))
        small = await api.ok(url, [("limit", "7"), ("offset", "3"), ("ordering", "-id")])
        assert ids(small) == list(range(247, 240, -1))
        past = await api.ok(url, [("offset", "250")], "PagedCustomerListSchemaOut")
        assert past == {"items": [], "count": 250}
        # The count is of what the filters keep, not of the page.
        page = await api.ok(url, [("name", "customer 1"), ("limit", "5"), ("ordering", "id")])
        assert page["count"] == 111  # 1, 10-19, 100-199
        assert ids(page) == [1, 10, 11, 12, 13]
        by_id = [("id", str(n)) for n in range(1, 151)] + [("ordering", "id"), ("offset", "140")]
        page = await api.ok(url, by_id, "PagedCustomerListSchemaOut")
        assert (ids(page), page["count"]) == (list(range(141, 151)), 150)


# -- Qwoty ----------------------------------------------------------------------------------------

QWOTY_FIELDS = {
    "id",
    "workspace_id",
    "name",
    "type",
    "segment_id",
    "logo",
    "tax_ids",
    "id_crm",
    "id_erp",
    "id_accounting",
    "contact_ids",
    "address_ids",
    "created_at",
    "updated_at",
}


def qwoty(**options: Any) -> tuple[QwotyFake, str]:
    fake = QwotyFake(**options)
    [customer_id] = fake.seed_demo(1)
    fake.customers[customer_id].update(
        contact_ids=["0b6b2a52-1c1a-4a0e-9a43-5e5c0c2d0a11"],
        address_ids=["6b8e1f4e-3f0a-4d8e-8c1b-2d6a3e9f7c21"],
    )
    return fake, customer_id


async def test_qwoty_get_customer_answers_the_whole_customer_under_api():
    fake, customer_id = qwoty()
    async with serving(fake, {"Authorization": f"Bearer {fake.token}"}) as api:
        assert api.base_url.endswith("/api")
        status, body, _ = await api.call(
            "PATCH",
            f"/customers/{customer_id}",
            json={"tax_ids": [{"tax": "VAT", "tax_value": "FR1"}]},
        )
        assert status == 200
        assert "tax_ids" not in body["data"]  # the documented PATCH answer leaves it out
        body = await api.ok(f"/customers/{customer_id}")
    assert set(body) == {"success", "data"}
    assert body["success"] is True
    customer = body["data"]
    assert set(customer) == QWOTY_FIELDS
    assert customer["id"] == customer_id
    assert customer["tax_ids"] == [{"tax": "VAT", "tax_value": "FR1"}]
    assert customer["contact_ids"] == ["0b6b2a52-1c1a-4a0e-9a43-5e5c0c2d0a11"]
    assert customer["address_ids"] == ["6b8e1f4e-3f0a-4d8e-8c1b-2d6a3e9f7c21"]
    assert isinstance(customer["workspace_id"], str)
    for stamp in ("created_at", "updated_at"):
        assert dt.datetime.fromisoformat(customer[stamp]).tzinfo is not None
    assert [r.path for r in fake.requests] == [f"/api/customers/{customer_id}"] * 2


async def qwoty_error(api: Api, method: str, path: str, status: int) -> str:
    got, body, _ = await api.call(method, path, json={"name": "A"} if method == "PATCH" else None)
    assert got == status, body
    assert set(body) == {"success", "error"}
    assert body["success"] is False
    assert isinstance(body["error"], str)
    return body["error"]


async def test_qwoty_get_customer_errors_and_no_list():
    fake, customer_id = qwoty()
    async with serving(fake, {"Authorization": f"Bearer {fake.token}"}) as api:
        for unknown in ("00000000-0000-4000-8000-000000000000", "not-a-uuid"):
            assert (
                await qwoty_error(api, "GET", f"/customers/{unknown}", 404) == "Customer not found"
            )
        for path in ("/customers", "/customers/"):  # Qwoty documents no list
            async with api.session.get(api.base_url + path) as r:
                assert r.status == 404
        async with api.session.get(
            api.base_url.removesuffix("/api") + f"/customers/{customer_id}"
        ) as r:
            assert r.status == 404  # only under /api, as Qwoty's base URL
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": fake.token}):
        async with serving(fake, headers) as anonymous:
            error = await qwoty_error(anonymous, "GET", f"/customers/{customer_id}", 401)
            assert error == "Invalid API token"


SEGMENT = "0b6b2a52-1c1a-4a0e-9a43-5e5c0c2d0a11"


@pytest.mark.parametrize(
    ("body", "accepted"),
    [
        # providers.md, Qwoty "body fields" and "semantics", rule by rule.
        ({"name": "A"}, True),
        ({"name": None}, False),  # not nullable
        ({"name": 5}, False),
        ({"type": "company"}, True),
        ({"type": "individual"}, True),
        ({"type": "person"}, False),
        ({"segment_id": SEGMENT}, True),
        ({"segment_id": None}, True),  # null unsets
        ({"segment_id": "{" + SEGMENT + "}"}, False),  # a UUID as written, not another form
        ({"segment_id": "urn:uuid:" + SEGMENT}, False),
        ({"segment_id": SEGMENT.replace("-", "")}, False),
        ({"segment_id": "not-a-uuid"}, False),
        ({"logo": "https://x.example/l.png"}, True),
        ({"logo": None}, True),
        ({"logo": "not a url"}, False),
        ({"logo": "ftp://x.example/l.png"}, False),
        ({"tax_ids": [{"tax": "VAT", "tax_value": "FR1"}]}, True),
        ({"tax_ids": []}, True),
        ({"tax_ids": None}, False),
        ({"tax_ids": [{"tax": "VAT"}]}, False),  # each entry needs both keys
        ({"tax_ids": [{"tax": 1, "tax_value": None}]}, False),
        ({"tax_ids": [{"tax": "VAT", "tax_value": "1", "x": "y"}]}, False),
        *(({key: None}, True) for key in ("id_crm", "id_erp", "id_accounting")),
        *(({key: "x1"}, True) for key in ("id_crm", "id_erp", "id_accounting")),
        *(({key: 1}, False) for key in ("id_crm", "id_erp", "id_accounting")),
        ({"workspace_id": SEGMENT}, False),  # not a field a PATCH takes
    ],
)
async def test_qwoty_sandbox_takes_what_the_documentation_allows_and_nothing_else(body, accepted):
    """A spec audit changed each of these rules in the fake in turn and no test
    failed: the sandbox took values the client itself refuses."""
    fake, customer_id = qwoty()
    before = dict(fake.customers[customer_id])
    async with serving(fake, {"Authorization": f"Bearer {fake.token}"}) as api:
        status, answer, _ = await api.call("PATCH", f"/customers/{customer_id}", json=body)
    assert status == (200 if accepted else 422), answer
    [(key, value)] = body.items()
    if accepted:
        assert fake.customers[customer_id][key] == value
    else:
        assert answer["success"] is False
        assert fake.customers[customer_id] == before


async def test_qwoty_get_and_patch_share_the_workspace_bucket():
    fake, customer_id = qwoty(limits=(RateLimit(burst=3, per_second=SLOW),))
    async with serving(fake, {"Authorization": f"Bearer {fake.token}"}) as api:
        path = f"/customers/{customer_id}"
        assert (await api.get(path))[0] == 200
        assert (await api.call("PATCH", path, json={"name": "B"}))[0] == 200
        assert (await api.get(path))[0] == 200
        for method in ("GET", "PATCH"):
            got, body, headers = await api.call(
                method, path, json={"name": "C"} if method == "PATCH" else None
            )
            assert (got, body["success"]) == (429, False)
            assert int(headers["Retry-After"]) >= 1
    assert fake.customers[customer_id]["name"] == "B"
