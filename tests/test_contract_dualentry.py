"""The DualEntry adapter and fake against DualEntry's OpenAPI document.

What the adapter sends must be valid for the PATCH schema, its field map must
agree with the schema field by field, and every answer of the fake (success
and error) must be valid for the spec's response schemas; the fake must accept
exactly the bodies the schema accepts.  The document is ``tests/contract/``'s
facts-only copy; see docs/providers/dualentry.md for how to refresh it.
"""

import string

import aiohttp
import pytest

from customer_patch import Address, RateLimit
from customer_patch.sandbox import Faults
from customer_patch_dualentry import DualEntryAdapter
from customer_patch_dualentry._fake import CUSTOM_FIELDS
from tests.contract import PATCHES, SCHEMAS, SPEC, problems, unknown_keys
from tests.helpers import DEID, build

FAST = {"limits": (), "rate_limit": None}
PATCH_SCHEMA = SCHEMAS["CustomerSchemaPatchIn"]["properties"]
FIELDS = DualEntryAdapter.fields
# Where the adapter is deliberately stricter than the spec, and why.
STRICTER = {
    ("custom_fields", "nullable"): "the spec allows null but not what it does",
}


def body(patch):
    return build(DualEntryAdapter(), DEID, patch).json()


# -- the copy of the spec ----------------------------------------------------------------


def prose(node, path=""):
    """Paths of prose left in the copy (response descriptions, required, must be empty)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from prose(item, f"{path}/{i}")
    elif isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}/{key}"
            if path.endswith("/properties"):
                yield from prose(value, here)  # a field named "description" is a fact
            elif key in ("description", "summary", "title", "tags") and here != "/info/title":
                if not (key == "description" and value == "" and "/responses/" in here):
                    yield here
            elif not here.startswith("/x-"):
                yield from prose(value, here)


def test_the_copy_is_facts_only_and_says_where_it_came_from():
    assert list(prose(SPEC)) == []
    assert SPEC["x-extraction"]["source"].startswith("github.com/")
    assert "regenerate" in SPEC["x-facts-only"]
    patch = SPEC["paths"]["/public/v2/customers/{customer_id}/"]["patch"]
    assert patch["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CustomerSchemaPatchIn"
    }
    # Facts a field named like prose must keep.
    assert "description" in SCHEMAS["CustomFieldSchemaOut"]["required"]


def test_nullable_is_read_as_or_null_and_patterns_as_javascript():
    assert problems("CustomerSchemaPatchIn", {"name": None, "full_address": None}) == []
    assert problems("CustomerSchemaPatchIn", {"phone": "1\ufeff2"}) == []
    assert problems("CustomerSchemaPatchIn", {"phone": "1\x1c2"}) != []
    assert problems("CustomerSchemaPatchIn", {"state": None}) == []  # not a top-level field
    address = {"street": "s", "city": "c", "postal_code": "p"}
    assert problems("AddressSchemaIn", {**address, "state": None}) != []
    assert problems("AuditActorSchemaOut", {"timestamp": "2024-05-01t12:00:00z"}) == []
    assert problems("AuditActorSchemaOut", {"timestamp": "2024-05-01 12:00"}) != []


# -- what the adapter sends ------------------------------------------------------------------


@pytest.mark.parametrize("case", PATCHES)
def test_every_request_body_is_valid_for_the_patch_schema(case):
    sent = body(PATCHES[case])
    assert problems("CustomerSchemaPatchIn", sent) == []
    assert unknown_keys(sent) == [], "DualEntry would ignore these keys"


def test_the_patches_cover_every_field_and_every_clearing():
    sent = [body(patch) for patch in PATCHES.values()]
    assert {key for b in sent for key in b} == set(PATCH_SCHEMA)
    cleared = {key for b in sent for key, value in b.items() if value is None}
    assert cleared == {spec.wire for spec in FIELDS.values() if spec.nullable}
    items = [item for b in sent for item in b.get("custom_fields", ())]
    assert any("field" in item for item in items)  # by id
    assert any("field" not in item for item in items)  # by name
    assert any(None in item.values() for item in items)  # cleared by name
    addresses = [b[k] for b in sent for k in ("full_address", "shipping_address") if b.get(k)]
    assert {a["country"] for a in addresses} >= {"", "US", "XK"}
    assert {a["name"] for a in addresses} >= {None, "HQ"}


# -- the field map against the schema --------------------------------------------------------


def test_the_field_map_names_every_field_of_the_schema_and_no_other():
    assert sorted(spec.wire for spec in FIELDS.values()) == sorted(PATCH_SCHEMA)


@pytest.mark.parametrize("path", FIELDS)
def test_nullability_agrees_with_the_schema(path):
    spec = FIELDS[path]
    assert spec.wire in PATCH_SCHEMA
    nullable = PATCH_SCHEMA[spec.wire].get("nullable", False)
    if (path, "nullable") in STRICTER:
        assert (nullable, spec.nullable) == (True, False), STRICTER[path, "nullable"]
    else:
        assert spec.nullable == nullable


# Characters where regular expression dialects and whitespace sets differ.
SPACES = "\t\n\x0b\x0c\r \x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u200b\u2028\u2029\u202f\u205f\u3000\ufeff"
PROBE_CHARS = string.printable + SPACES + "é٣"  # "٣" is a digit to Python, not to JavaScript


def string_probes(schema):
    """Strings at and around each length bound, and one per probe character."""
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    lengths = {0, 1, 2, low - 1, low, low + 1, 40, 100}
    if high is not None:
        lengths |= {high - 1, high, high + 1}
    yield from ("1" * n for n in sorted(lengths) if n >= 0)
    yield from (f"1{c}2" for c in PROBE_CHARS)


@pytest.mark.parametrize(
    "path", [p for p, s in FIELDS.items() if PATCH_SCHEMA.get(s.wire, {}).get("type") == "string"]
)
def test_string_constraints_agree_with_the_schema(path):
    spec = FIELDS[path]
    pointer = f"/components/schemas/CustomerSchemaPatchIn/properties/{spec.wire}"
    disagree = [
        (value, not problems(pointer, value), not spec.check(value))
        for value in string_probes(PATCH_SCHEMA[spec.wire])
        if (not problems(pointer, value)) != (not spec.check(value))
    ]
    assert disagree == [], "(value, schema accepts, adapter accepts)"


@pytest.mark.parametrize("path", ["billing_address", "shipping_address"])
def test_address_constraints_agree_with_the_schema(path):
    spec = FIELDS[path]
    assert PATCH_SCHEMA.get(spec.wire, {}).get("$ref") == "#/components/schemas/AddressSchemaIn"
    probes = [
        Address(street="s", city="c", postal_code="p", country=country, name=name)
        for country in ("", "US", "XK", "ZZ", "xk", "Xk", "X", "XKX", "12", " X", "\u0130S")
        for name in (None, "", "HQ")
    ]
    disagree = [
        (a.country, a.name)
        for a in probes
        if (not problems("AddressSchemaIn", spec.encode(a))) != (not spec.check(a))
    ]
    assert disagree == []


# -- what the fake answers ---------------------------------------------------------------


@pytest.mark.parametrize("case", PATCHES)
async def test_every_answer_to_a_patch_is_a_valid_customer(sandbox, case):
    sb = await sandbox("dualentry", customers=1, **FAST)
    customer = await sb.client.update(sb.ids[0], PATCHES[case])
    assert problems("CustomerSchemaOut", customer.raw) == []
    assert customer.updated_at is not None
    async with (
        aiohttp.ClientSession(headers={"X-API-KEY": sb.fake.token}) as s,
        s.get(f"{sb.base_url}/public/v2/customers/{sb.ids[0]}/") as r,
    ):
        assert r.status == 200
        assert await r.json() == customer.raw
    for path, value in PATCHES[case].set_fields():
        if path in ("name", "email", "address", "country", "website", "phone") and value is None:
            assert customer.raw[path] == ""  # required strings: "" when empty, never null


async def get_json(url, **headers):
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.json()


async def test_the_custom_field_list_is_paged_as_the_spec_says(sandbox):
    sb = await sandbox("dualentry", **FAST)
    url = f"{sb.base_url}/public/v2/custom-fields/?record_type=customer"
    key = {"X-API-KEY": sb.fake.token}
    status, page = await get_json(url, **key)
    assert status == 200
    assert problems("PagedPublicCustomFieldSchemaOut", page) == []
    assert page == {"items": CUSTOM_FIELDS, "count": 5}
    for item in page["items"]:  # the same definitions appear inside a customer
        assert problems("CustomFieldSchemaOut", item) == []
    status, page = await get_json(f"{url}&limit=2&offset=1", **key)
    assert [f["id"] for f in page["items"]] == [42, 43]
    assert page["count"] == 5
    for bad in ("limit=0", "offset=-1", "limit=x"):
        status, error = await get_json(f"{url}&{bad}", **key)
        assert (status, problems("ErrorSchema", error)) == (400, [])


async def test_the_customer_list_is_paged_as_the_spec_says(sandbox):
    sb = await sandbox("dualentry", customers=3, **FAST)
    await sb.client.update(sb.ids[0], PATCHES["every field"])
    url = f"{sb.base_url}/public/v2/customers/"
    key = {"X-API-KEY": sb.fake.token}
    status, page = await get_json(url, **key)
    assert status == 200
    assert problems("PagedCustomerListSchemaOut", page) == []
    assert page["count"] == 3
    assert page["items"][0]["full_address"]["name"] == "HQ"  # lists show full_address
    status, page = await get_json(f"{url}?limit=500&offset=2&ordering=id", **key)
    assert ([c["id"] for c in page["items"]], page["count"]) == ([sb.ids[2]], 3)
    # The spec's default order is -updated_at: the customer just updated comes first.
    status, page = await get_json(url, **key)
    assert page["items"][0]["id"] == sb.ids[0]
    status, page = await get_json(f"{url}?unique_id=demo-1002", **key)  # exact, any case
    assert [c["id"] for c in page["items"]] == [sb.ids[1]]


async def answer(base_url, method, path, *, key="sandbox-token", json=None, data=None):
    headers = {"X-API-KEY": key} if key else {}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, base_url + path, headers=headers, json=json, data=data) as r,
    ):
        return r.status, await r.json()


@pytest.mark.parametrize(
    ("status", "request_kwargs"),
    [
        (400, {"json": {"phone": "call me"}}),
        (400, {"data": b"{not json"}),
        (400, {"json": [{"name": "A"}]}),
        (401, {"key": None, "json": {"name": "A"}}),
        (403, {"key": "wrong", "json": {"name": "A"}}),
        (404, {"path": "/public/v2/customers/999/", "json": {"name": "A"}}),
        (404, {"method": "GET", "path": "/public/v2/customers/999/"}),
        (422, {"json": {"custom_fields": [{"Partner": True}, {"Nope": 1}]}}),
    ],
)
async def test_every_error_of_the_fake_has_the_spec_error_body(sandbox, status, request_kwargs):
    sb = await sandbox("dualentry", customers=1, **FAST)
    method = request_kwargs.pop("method", "PATCH")
    path = request_kwargs.pop("path", f"/public/v2/customers/{sb.ids[0]}/")
    got, error = await answer(sb.base_url, method, path, **request_kwargs)
    assert got == status
    assert problems("ErrorSchema", error) == []
    assert error["success"] is False


async def test_rate_limit_and_server_errors_have_the_spec_error_body(sandbox):
    limited = await sandbox(
        "dualentry", customers=1, limits=(RateLimit(burst=1, per_second=0.01),)
    )
    path = f"/public/v2/customers/{limited.ids[0]}/"
    status, customer = await answer(limited.base_url, "PATCH", path, json={"name": "A"})
    assert (status, problems("CustomerSchemaOut", customer)) == (200, [])
    status, error = await answer(limited.base_url, "PATCH", path, json={"name": "A"})
    assert (status, problems("ErrorSchema", error)) == (429, [])
    for fault in ("500", "503"):
        sb = await sandbox("dualentry", customers=1, limits=(), faults=Faults(rates={fault: 1.0}))
        status, error = await answer(sb.base_url, "PATCH", path, json={"name": "A"})
        assert (status, problems("ErrorSchema", error)) == (int(fault), [])


# -- the fake accepts exactly what the schema accepts ---------------------------------------

ADDRESS = {"street": "s", "city": "c", "postal_code": "p"}
BODIES = [
    {},
    {"name": None},
    {"name": ""},
    {"name": 5},
    {"unique_id": ""},
    {"unique_id": "U" * 64},
    {"unique_id": "U" * 65},
    {"unique_id": None},
    {"email": None},
    {"email": ["a@b.example"]},
    {"country": "anything at all"},
    {"phone": "+1 (555) 010-0199"},
    {"phone": "1" * 33},
    {"phone": "1\ufeff2"},
    {"phone": "1\x852"},
    {"phone": "1\x1f2"},
    {"phone": "12\n"},
    {"phone": "x"},
    {"phone": None},
    {"website": True},
    {"full_address": None},
    {"full_address": ADDRESS},
    {"full_address": {**ADDRESS, "country": "XK", "name": None}},
    {"full_address": {**ADDRESS, "country": "xk"}},
    {"full_address": {**ADDRESS, "country": "FRA"}},
    {"full_address": {**ADDRESS, "country": None}},
    {"full_address": {**ADDRESS, "state": None}},
    {"full_address": {**ADDRESS, "second_line": 2}},
    {"full_address": {**ADDRESS, "name": 2}},
    {"full_address": {**ADDRESS, "floor": 3}},
    {"full_address": {"street": "s", "city": "c"}},
    {"shipping_address": "1 Main St"},
    {"shipping_address": {**ADDRESS, "country": ""}},
    {"custom_fields": None},
    {"custom_fields": []},
    {"custom_fields": [{"Partner": True}, {"field": {"id": 42}, "value": {"value": "x"}}]},
    {"custom_fields": {"Partner": True}},
    {"custom_fields": ["Partner"]},
    {"preferred_language": "fr"},
    {"customer_type": "person", "is_active": False},
]


@pytest.mark.parametrize("sent", BODIES, ids=[str(b)[:60] for b in BODIES])
async def test_the_fake_accepts_exactly_what_the_schema_accepts(sandbox, sent):
    sb = await sandbox("dualentry", customers=1, **FAST)
    path = f"/public/v2/customers/{sb.ids[0]}/"
    status, answered = await answer(sb.base_url, "PATCH", path, json=sent)
    valid = not problems("CustomerSchemaPatchIn", sent)
    assert status == (200 if valid else 400), answered
    assert problems("CustomerSchemaOut" if valid else "ErrorSchema", answered) == []
    if not valid:
        assert set(answered["errors"]) <= set(sent)  # each error names a field sent


async def test_keys_the_schema_does_not_know_are_ignored_not_stored(sandbox):
    sb = await sandbox("dualentry", customers=1, **FAST)
    before = dict(sb.fake.customers[sb.ids[0]])
    path = f"/public/v2/customers/{sb.ids[0]}/"
    extra = {"preferred_language": "fr", "customer_type": "person"}
    status, answered = await answer(sb.base_url, "PATCH", path, json=extra)
    assert status == 200
    assert "preferred_language" not in answered
    assert answered["customer_type"] == before["customer_type"]
