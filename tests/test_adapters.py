"""Both adapters, without any network: bodies, validation, and response mapping."""

import datetime
import json

import pytest

from customer_patch import (
    Address,
    AuthenticationError,
    BadRequestError,
    CustomerPatch,
    ExternalIds,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    RateLimitedError,
    Response,
    ResponseFormatError,
    ServerError,
    TaxId,
    UnknownCustomFieldError,
    UnprocessableEntityError,
    UnsupportedFieldError,
    ValidationError,
)
from customer_patch_dualentry import DualEntryAdapter
from customer_patch_qwoty import QwotyAdapter
from tests.helpers import DEID, QID, TOKEN, build


def problems(excinfo):
    return {(p.field, p.message) for p in excinfo.value.problems}


# -- Qwoty --------------------------------------------------------------------------


def test_qwoty_request_line_and_headers():
    request = build(QwotyAdapter(), QID, CustomerPatch(name="A"))
    assert request.method == "PATCH"
    assert request.url == f"https://h/api/customers/{QID}"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.redacted_headers()["Authorization"] == "********"
    assert TOKEN not in repr(request)


def test_qwoty_null_unsets_external_ids_and_empty_tax_ids_remove_all():
    patch = CustomerPatch(
        segment_id=None, logo=None, tax_ids=[], external_ids=ExternalIds(crm=None, erp="E1")
    )
    assert build(QwotyAdapter(), QID, patch).json() == {
        "segment_id": None,
        "logo": None,
        "tax_ids": [],
        "id_crm": None,
        "id_erp": "E1",
    }


def test_qwoty_accepts_a_uuid_object_as_id():
    import uuid

    request = build(QwotyAdapter(), uuid.UUID(QID), CustomerPatch(name="A"))
    assert request.url.endswith(QID)


def test_qwoty_reports_every_problem_at_once():
    patch = CustomerPatch(
        name=None,
        type="corporation",
        segment_id="not-a-uuid",
        logo="ftp://x",
        tax_ids=[TaxId("VAT", ""), "FR1"],  # type: ignore[list-item]
    )
    with pytest.raises(ValidationError) as info:
        build(QwotyAdapter(), "../x", patch)
    found = problems(info)
    assert ("id", "must be a UUID, got '../x'") in found
    assert ("name", "cannot be cleared (None) at qwoty") in found
    assert any(f == "type" and "'company', 'individual'" in m for f, m in found)
    assert any(f == "segment_id" for f, _ in found)
    assert any(f == "logo" for f, _ in found)
    assert ("tax_ids", "[0].value must be a non-empty string") in found
    assert ("tax_ids", "[1] must be a TaxId, not str") in found
    assert info.value.provider == "qwoty"


def test_qwoty_cannot_clear_tax_ids_with_null():
    with pytest.raises(ValidationError, match=r"tax_ids: cannot be cleared"):
        build(QwotyAdapter(), QID, CustomerPatch(tax_ids=None))


@pytest.mark.parametrize(
    "patch",
    [
        CustomerPatch(email="a@b.example"),
        CustomerPatch(phone="1", unique_id="u", custom_fields={"Tier": "Gold"}),
        CustomerPatch(billing_address=None),
    ],
)
def test_qwoty_refuses_fields_it_cannot_patch(patch):
    with pytest.raises(UnsupportedFieldError) as info:
        build(QwotyAdapter(), QID, patch)
    assert info.value.provider == "qwoty"
    assert set(info.value.fields) == {path for path, _ in patch.set_fields()}


@pytest.mark.parametrize(
    ("status", "payload", "error", "message"),
    [
        (401, {"success": False, "error": "Invalid API token"}, AuthenticationError, "Invalid"),
        (403, {"success": False, "error": "Forbidden"}, PermissionDeniedError, "Forbidden"),
        (404, {"success": False, "error": "Not found"}, NotFoundError, "Not found"),
        (429, {"success": False, "error": "Slow down"}, RateLimitedError, "Slow down"),
        (503, "Service Unavailable", ServerError, "Service Unavailable"),
        (200, {"success": False, "error": "Nope"}, ProviderError, "Nope"),
        (400, {"success": False, "error": {"code": 7}}, BadRequestError, "code"),
        (409, {"success": False, "error": "Conflict"}, ProviderError, "Conflict"),
    ],
)
def test_qwoty_errors_are_typed(status, payload, error, message):
    adapter = QwotyAdapter()
    request = build(adapter, QID, CustomerPatch(name="A"))
    raw = json.dumps(payload).encode() if isinstance(payload, dict) else payload.encode()
    with pytest.raises(error) as info:
        adapter.parse_response(Response(status=status, body=raw), request=request)
    assert type(info.value) is error
    assert info.value.status == status
    assert info.value.provider == "qwoty"
    assert info.value.body == raw
    assert message in info.value.message


@pytest.mark.parametrize(
    "raw",
    [b"<html>oops</html>", b'{"success": true}', b'{"success": true, "data": []}', b"[]"],
)
def test_qwoty_unexpected_success_bodies_are_format_errors(raw):
    adapter = QwotyAdapter()
    request = build(adapter, QID, CustomerPatch(name="A"))
    with pytest.raises(ResponseFormatError) as info:
        adapter.parse_response(Response(status=200, body=raw), request=request)
    assert info.value.body == raw


def test_qwoty_parses_full_customer_with_tax_ids():
    data = {
        "success": True,
        "data": {
            "id": QID,
            "workspace_id": "w",
            "name": "A",
            "tax_ids": [{"tax": "VAT", "tax_value": "FR1"}],
            "contact_ids": [],
            "created_at": "2026-01-15T10:30:00+01:00",
            "updated_at": "2026-01-15T10:30:00",
        },
    }
    customer = QwotyAdapter().customer_from(data)
    assert customer.tax_ids == (TaxId("VAT", "FR1"),)
    assert customer.created_at.utcoffset().total_seconds() == 3600
    assert customer.updated_at.tzinfo is not None  # naive is read as UTC


# -- DualEntry ----------------------------------------------------------------------


def test_dualentry_request_line_and_headers():
    request = build(DualEntryAdapter(), DEID, CustomerPatch(name="A"))
    assert request.url == f"https://h/api/public/v2/customers/{DEID}/"
    assert request.headers["X-API-KEY"] == TOKEN
    assert "Authorization" not in request.headers
    assert request.redacted_headers()["X-API-KEY"] == "********"


def test_dualentry_v1_is_selectable():
    request = build(DualEntryAdapter(api_version="v1"), 7, CustomerPatch(name="A"))
    assert request.url == "https://h/api/public/v1/customers/7/"
    with pytest.raises(ValueError, match="api_version"):
        DualEntryAdapter(api_version="v3")  # type: ignore[arg-type]


def test_dualentry_custom_fields_by_name_and_id_mixed_and_cleared():
    patch = CustomerPatch(custom_fields={"Partner": True, 42: "Acme", "Tier": None, 7: None})
    assert build(DualEntryAdapter(), 1, patch).json() == {
        "custom_fields": [
            {"Partner": True},
            {"field": {"id": 42}, "value": {"custom_field_id": 42, "value": "Acme"}},
            {"Tier": None},
            {"field": {"id": 7}, "value": {"custom_field_id": 7, "value": None}},
        ]
    }


def test_dualentry_addresses_and_clearing():
    patch = CustomerPatch(
        billing_address=Address(
            street="1 Main St", city="Springfield", postal_code="12345", country="US", name="HQ"
        ),
        shipping_address=None,
        email=None,
        name=None,
    )
    assert build(DualEntryAdapter(), 1, patch).json() == {
        "name": None,  # the spec lets a name be cleared
        "email": None,
        "full_address": {
            "street": "1 Main St",
            "city": "Springfield",
            "postal_code": "12345",
            "state": "",
            "second_line": "",
            "country": "US",
            "name": "HQ",
        },
        "shipping_address": None,
    }


def test_dualentry_address_is_sent_whole_and_any_two_letter_country_is_taken():
    patch = CustomerPatch(
        shipping_address=Address(street="1 Rr", city="Pristina", postal_code="10000", country="XK")
    )
    assert build(DualEntryAdapter(), 1, patch).json()["shipping_address"] == {
        "street": "1 Rr",
        "city": "Pristina",
        "postal_code": "10000",
        "state": "",
        "second_line": "",
        "country": "XK",
        "name": None,  # no name: sent as null, which clears a previous one
    }
    for country in ("xk", "XKX", "K"):
        address = Address(street="s", city="c", postal_code="p", country=country)
        with pytest.raises(ValidationError, match="two upper-case letters"):
            build(DualEntryAdapter(), 1, CustomerPatch(billing_address=address))


def test_dualentry_reports_every_problem_at_once():
    patch = CustomerPatch(
        name=None,
        phone="call me +1",
        unique_id="x" * 65,
        billing_address=Address(street="s", city="c", postal_code="p", country="France"),
        custom_fields={"X": 1, 0: "a", "Ok name": object()},
    )
    with pytest.raises(ValidationError) as info:
        build(DualEntryAdapter(), str(DEID), patch)
    found = problems(info)
    assert ("id", "must be an integer, not str") in found
    assert not any(f == "name" for f, _ in found)  # clearing a name is allowed
    assert any(f == "phone" and "must match" in m for f, m in found)
    assert ("unique_id", "must be at most 64 characters long (got 65)") in found
    assert any(f == "billing_address" and "ISO 3166-1" in m for f, m in found)
    assert ("custom_fields", "name 'X' must be 2 to 32 characters long") in found
    assert ("custom_fields", "id 0 must be a positive integer") in found
    assert any(f == "custom_fields" and "not JSON" in m for f, m in found)


def test_dualentry_phone_limits():
    adapter = DualEntryAdapter()
    build(adapter, 1, CustomerPatch(phone="+1 (555) 010-0199.12"))
    build(adapter, 1, CustomerPatch(phone="1" * 32))
    with pytest.raises(ValidationError, match="at most 32"):
        build(adapter, 1, CustomerPatch(phone="1" * 33))


# The phone pattern is ECMA-262: "\s" is JavaScript's whitespace, which is not
# Python's in six characters.
@pytest.mark.parametrize("space", ["\ufeff", "\u00a0", "\u3000", "\u2028", "\t", "\x0b"])
def test_dualentry_phone_takes_javascript_whitespace(space):
    phone = f"+1{space}555"
    assert build(DualEntryAdapter(), 1, CustomerPatch(phone=phone)).json() == {"phone": phone}


@pytest.mark.parametrize("space", ["\x1c", "\x1d", "\x1e", "\x1f", "\x85"])
def test_dualentry_phone_refuses_what_only_python_calls_whitespace(space):
    with pytest.raises(ValidationError, match=r"phone: must match \^\[0-9\\s"):
        build(DualEntryAdapter(), 1, CustomerPatch(phone=f"+1{space}555"))


@pytest.mark.parametrize("customer_id", [True, 0, -3, 1.5, None, "12"])
def test_dualentry_rejects_ids_of_the_wrong_kind(customer_id):
    with pytest.raises(ValidationError) as info:
        build(DualEntryAdapter(), customer_id, CustomerPatch(name="A"))
    assert [p.field for p in info.value.problems] == ["id"]


def test_dualentry_refuses_unpatchable_fields_even_through_extra():
    with pytest.raises(UnsupportedFieldError) as info:
        build(DualEntryAdapter(), 1, CustomerPatch(type="company", segment_id=None))
    assert info.value.fields == ("type", "segment_id")
    with pytest.raises(UnsupportedFieldError, match=r"extra\.customer_type"):
        build(DualEntryAdapter(), 1, CustomerPatch(extra={"customer_type": "x"}))


def test_extra_is_sent_verbatim_but_may_not_shadow_a_mapped_field():
    adapter = DualEntryAdapter()
    assert build(adapter, 1, CustomerPatch(name="A", extra={"vendor_x": {"a": [1]}})).json() == {
        "name": "A",
        "vendor_x": {"a": [1]},
    }
    with pytest.raises(ValidationError) as info:
        build(adapter, 1, CustomerPatch(extra={"full_address": {}, "bad": {1, 2}}))
    fields = {p.field for p in info.value.problems}
    assert fields == {"extra.full_address", "extra.bad"}


def dualentry_error(status, payload, patch=CustomerPatch(name="A"), headers=None):  # noqa: B008
    adapter = DualEntryAdapter()
    request = build(adapter, 1, patch)
    response = Response(status=status, body=json.dumps(payload).encode(), headers=headers or {})
    return adapter.parse_response(response, request=request)


def test_dualentry_unknown_custom_field_names_are_listed():
    patch = CustomerPatch(custom_fields={"Partner": True, "Tier": "Gold", 42: "x"})
    payload = {"success": False, "errors": {"custom_fields": ["Unknown custom field: 'Tier'"]}}
    with pytest.raises(UnknownCustomFieldError) as info:
        dualentry_error(422, payload, patch)
    assert info.value.names == ("Tier",)
    assert info.value.field_errors == {"custom_fields": ("Unknown custom field: 'Tier'",)}
    assert isinstance(info.value, UnprocessableEntityError)


def test_dualentry_other_422s_stay_plain():
    payload = {"success": False, "errors": {"phone": ["Invalid phone."]}}
    with pytest.raises(UnprocessableEntityError) as info:
        dualentry_error(422, payload)
    assert type(info.value) is UnprocessableEntityError
    assert "phone: Invalid phone." in str(info.value)


def test_dualentry_rate_limit_carries_retry_after():
    payload = {
        "success": False,
        "errors": {"__all__": ["Rate limit exceeded. Please try again later."]},
    }
    with pytest.raises(RateLimitedError) as info:
        dualentry_error(429, payload, headers={"Retry-After": "3"})
    assert info.value.retry_after == 3.0
    assert info.value.message == "Rate limit exceeded. Please try again later."


def test_dualentry_parses_its_customer():
    data = {
        "id": DEID,
        "name": "Acme",
        "unique_id": None,
        "email": "a@acme.example",
        "customer_type": "business",
        "default_currency": "",
        "shipping_address": {"street": "s", "city": "c", "postal_code": "p", "country": "US"},
        "custom_fields": [
            {
                "field": {"id": 42, "name": "Partner"},
                "value": {"custom_field_id": 42, "value": True},
            },
            {"field": {"id": 7, "name": "Tier"}, "value": None},
            {"field": {"id": 8, "name": "Dup"}, "value": {"custom_field_id": 8, "value": 1}},
            {"field": {"id": 9, "name": "Dup"}, "value": {"custom_field_id": 9, "value": 2}},
        ],
        "created_by": {"actor_type": "user", "timestamp": "2026-01-02T03:04:05Z"},
        "updated_by": {"actor_type": "user", "timestamp": "2026-01-02t03:04:06z"},
        "approval_status": "approved",
    }
    customer = DualEntryAdapter().customer_from(data)
    assert customer.id == DEID
    assert customer.shipping_address == Address(
        street="s", city="c", postal_code="p", country="US"
    )
    assert customer.custom_fields == {"Partner": True, "Tier": None, 8: 1, 9: 2}
    assert customer.created_at.year == 2026
    # RFC 3339 lets "t" and "z" be lower case.
    assert customer.updated_at == customer.created_at + datetime.timedelta(seconds=1)
    assert customer.raw is data
    assert DualEntryAdapter().customer_from({**data, "updated_by": None}).updated_at is None


def test_dualentry_declares_its_documented_rate_limits():
    limits = {(limit.burst, limit.per_second) for limit in DualEntryAdapter.rate_limits}
    assert limits == {(10, 1.0), (50, 5.0)}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b'{"name": "no id"}',
        b'{"id": 1, "name": 5}',
        b'{"id": 1, "custom_fields": [1]}',
    ],
)
def test_dualentry_malformed_success_bodies(raw):
    adapter = DualEntryAdapter()
    request = build(adapter, 1, CustomerPatch(name="A"))
    with pytest.raises(ResponseFormatError):
        adapter.parse_response(Response(status=200, body=raw), request=request)


def test_redirects_are_errors_not_followed():
    adapter = DualEntryAdapter()
    request = build(adapter, 1, CustomerPatch(name="A"))
    response = Response(status=307, headers={"Location": "https://evil.example/x"})
    with pytest.raises(ProviderError, match="not followed"):
        adapter.parse_response(response, request=request)
