"""DualEntry's wire format, without any I/O: ``PATCH`` and ``GET`` of
``/public/v2/customers/{id}/``, the customer list ``GET /public/v2/customers/``
(its documented filters, paged by ``limit`` and ``offset``) and the customer
custom-field definitions ``GET /public/v2/custom-fields/?record_type=customer``.

Requests carry ``X-API-KEY``; a success is the bare customer object, an error
is ``{"success": false, "errors": {field: [messages]}}``.  Custom fields go by
name (``{"Partner": true}``) or by id (``{"field": {"id": 42}, "value": {...}}``),
mixed freely in one list.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, Literal

from customer_patch import (
    Adapter,
    Address,
    Customer,
    CustomFieldDefinition,
    ListFilter,
    RateLimit,
    Tooling,
    WireField,
    wire,
)
from customer_patch.wire import address, parse_datetime, text, type_name

# As DualEntry's OpenAPI document writes it: ECMA-262, so "\s" is JavaScript's.
PHONE_PATTERN = r"^[0-9\s\+\-\.\(\)]*$"
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _custom_fields(value: Any) -> list[str]:
    if not isinstance(value, Mapping):
        return [f"must be a mapping, not {type_name(value)}"]
    problems = []
    for key, field_value in value.items():
        if isinstance(key, bool) or not isinstance(key, str | int):
            problems.append(f"key {key!r} must be a name (str) or an id (int)")
        elif isinstance(key, str) and not 2 <= len(key) <= 32:
            problems.append(f"name {key!r} must be 2 to 32 characters long")
        elif isinstance(key, int) and key <= 0:
            problems.append(f"id {key} must be a positive integer")
        try:
            json.dumps(field_value, allow_nan=False)
        except (TypeError, ValueError):
            problems.append(f"[{key!r}] value of type {type_name(field_value)} is not JSON")
    return problems


def _encode_custom_fields(value: Mapping[str | int, Any]) -> list[dict[str, Any]]:
    return [
        {key: v}
        if isinstance(key, str)
        else {"field": {"id": key}, "value": {"custom_field_id": key, "value": v}}
        for key, v in value.items()
    ]


def _encode_address(value: Address) -> dict[str, str | None]:
    # Sent whole: a part left out would take its default, so every part is
    # written, and a name of None clears the address's name.
    return {
        "street": value.street,
        "city": value.city,
        "postal_code": value.postal_code,
        "state": value.state,
        "second_line": value.second_line,
        "country": value.country,
        "name": value.name,
    }


def _address_from(value: Any) -> Address | None:
    if value is None:
        return None
    return Address(
        street=value["street"],
        city=value["city"],
        postal_code=value["postal_code"],
        state=value.get("state", ""),
        second_line=value.get("second_line", ""),
        country=value.get("country", ""),
        name=value.get("name"),
    )


def _field_id(field: Mapping[str, Any]) -> int:
    # Values are keyed by name, and by id where two fields share a name: an id
    # of another type ("Region", "5") could take a name's place.
    field_id = field["id"]
    if isinstance(field_id, bool) or not isinstance(field_id, int):
        raise TypeError(f"a custom field's id should be an integer, got {type_name(field_id)}")
    return field_id


def _empty_as_null(value: Any) -> str | None:
    # These are strings that are never null in an answer (the spec's
    # CustomerSchemaOut): a field cleared with null reads back as "".  Empty is
    # cleared, read as None, as it is written, so a clear is not found changed.
    if value is None or isinstance(value, str):
        return value or None
    raise TypeError(f"expected a string or null, got {type_name(value)}")


def _field_name(field: Mapping[str, Any]) -> str | None:
    # A name keys the values, is compared and counted: one of another type (a
    # list) would break that far from here.  None: the answer left it out.
    name = field.get("name")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"a custom field's name should be text, got {type_name(name)}")
    return name


def _custom_fields_from(items: Any) -> dict[str | int, Any] | None:
    if items is None:
        return None
    if items == []:  # a customer without custom fields: no pass over nothing
        return {}
    entries: dict[Any, tuple[Any, Any]] = {}  # field id -> (name, value)
    for item in items:
        field = item["field"]
        value = item.get("value")
        entry = (_field_name(field), value["value"] if value else None)
        field_id = _field_id(field)
        # One field shown twice is one field; with two values, which holds is not
        # known, and with two names, by which it is keyed (a record by either
        # name would be compared with nothing, or an undo miss the other).
        shown = entries.setdefault(field_id, entry)
        if shown != entry:
            which = "values" if shown[1] != entry[1] else "names"
            raise ValueError(f"custom field {field_id} is shown twice, with two {which}")
    # Counted once: a count per field would take a minute for an answer of 100,000.
    names = collections.Counter(name for name, _ in entries.values() if name)
    # Keyed by name, which people know; two fields sharing a name go by id.
    return {
        name if name and names[name] == 1 else field_id: value
        for field_id, (name, value) in entries.items()
    }


def _custom_field_ids(items: Any) -> dict[int, str | None] | None:
    if items is None:
        return None
    if items == []:
        return {}
    return {_field_id(item["field"]): _field_name(item["field"]) for item in items}


def _actor_time(data: Mapping[str, Any], key: str) -> Any:
    actor = data.get(key)
    return actor.get("timestamp") if isinstance(actor, dict) else None


class DualEntryAdapter(Adapter):
    """DualEntry: integer customer ids, custom fields by name or id, per-key rate limits."""

    provider = "dualentry"
    default_base_url = "https://api.dualentry.com"
    fields: ClassVar[Mapping[str, WireField]] = {
        "name": WireField(wire="name", check=text(), decode=_empty_as_null),
        "unique_id": WireField(wire="unique_id", check=text(min_len=1, max_len=64)),
        "email": WireField(wire="email", check=text(), decode=_empty_as_null),
        "address": WireField(wire="address", check=text(), decode=_empty_as_null),
        "country": WireField(wire="country", check=text(), decode=_empty_as_null),
        "website": WireField(wire="website", check=text(), decode=_empty_as_null),
        "phone": WireField(
            wire="phone",
            check=text(max_len=32, schema_pattern=PHONE_PATTERN),
            decode=_empty_as_null,
        ),
        "billing_address": WireField(
            wire="full_address", check=address, encode=_encode_address, decode=_address_from
        ),
        "shipping_address": WireField(
            wire="shipping_address", check=address, encode=_encode_address, decode=_address_from
        ),
        # The spec lets custom_fields be null but not what that does: refused.
        "custom_fields": WireField(
            wire="custom_fields",
            nullable=False,
            check=_custom_fields,
            encode=_encode_custom_fields,
            decode=_custom_fields_from,
        ),
    }
    read_only = frozenset(
        {
            "customer_type",
            "is_active",
            "is_taxable",
            "default_tax_code",
            "tax_registration_number",
            "default_currency",
            "record_status",
        }
    )
    # Per API key: this route and method, then all endpoints.
    rate_limits = (
        RateLimit(burst=10, per_second=1.0, per_route=True),
        RateLimit(burst=50, per_second=5.0),
    )
    customer_id_type = int
    tooling = Tooling(
        token_env="DUALENTRY_API_KEY",  # noqa: S106 - a variable's name, not a secret
        sandbox="customer_patch_dualentry._fake:DualEntryFake",
    )

    def __init__(self, *, api_version: Literal["v1", "v2"] = "v2") -> None:
        if api_version not in ("v1", "v2"):
            raise ValueError(f"api_version must be 'v1' or 'v2', not {api_version!r}")
        self.api_version = api_version

    def __repr__(self) -> str:
        return f"DualEntryAdapter(api_version={self.api_version!r})"

    def update_path(self, segment: str) -> str:
        return f"/public/{self.api_version}/customers/{segment}/"

    def auth_headers(self, token: str) -> Mapping[str, str]:
        return {"X-API-KEY": token}

    def error_details(
        self, status: int, data: Any
    ) -> tuple[str, Mapping[str, Sequence[str]]] | None:
        if not isinstance(data, dict):
            return None
        if data.get("success") is not False and not (status >= 400 and "errors" in data):
            if status >= 400 and isinstance(data.get("detail"), str):
                return data["detail"], {}
            return None
        field_errors = wire.field_errors(data.get("errors"))
        general = field_errors.get("__all__")
        message = "; ".join(general) if general else "request rejected"
        return message, field_errors

    def unknown_custom_fields(
        self, field_errors: Mapping[str, Sequence[str]], sent: Mapping[str, Any]
    ) -> list[str]:
        messages = [*field_errors.get("custom_fields", ()), *field_errors.get("__all__", ())]
        sent_names = [
            name
            for item in sent.get("custom_fields") or ()
            if isinstance(item, dict) and len(item) == 1
            for name in item
        ]
        # Whole words only: a field named "ab" is not named by "Tablet".
        return [
            name
            for name in sent_names
            if any(re.search(rf"(?<!\w){re.escape(name)}(?!\w)", m) for m in messages)
        ]

    # -- reading ------------------------------------------------------------------

    list_filters: ClassVar[Mapping[str, ListFilter]] = {
        # The spec's CustomerListFilterSchema, by its query parameter names.
        "id": ListFilter(wire="id", item=int, many=True),
        "company_id": ListFilter(wire="company_id", item=int, many=True),
        "customer_type": ListFilter(wire="customer_type", many=True),
        "record_status": ListFilter(
            wire="record_status", many=True, choices=frozenset({"draft", "posted", "archived"})
        ),
        "approval_status": ListFilter(wire="approval_status", many=True),
        "unique_id": ListFilter(wire="unique_id"),  # exact, case-insensitive
        "search": ListFilter(wire="search"),
        **{
            name: ListFilter(wire=name)  # "contains", case-insensitive
            for name in ("name", "email", "website", "address", "country", "state", "phone")
        },
        "ordering": ListFilter(wire="ordering"),
    }
    # The default ordering (-updated_at) moves a customer to the front when it
    # is updated: paging by offset while a run writes would skip customers.
    list_defaults: ClassVar[Mapping[str, Any]] = {"ordering": "id"}
    ids_filter = "id"
    match_keys = frozenset({"unique_id"})  # unique_id__iexact

    def list_path(self) -> str:
        return f"/public/{self.api_version}/customers/"

    def custom_fields_path(self) -> str:
        return f"/public/{self.api_version}/custom-fields/?record_type=customer"

    def definition_from(self, data: Any) -> CustomFieldDefinition:
        if not isinstance(data, dict):
            raise TypeError(f"a custom field should be an object, got {type_name(data)}")
        for_customers = [
            a
            for a in data.get("applies_to") or ()
            if isinstance(a, dict) and a.get("type") == "customer"
        ]
        options = data.get("options")
        # Checked: updates look fields up by id and by name in dicts.
        field_id, name, field_type = _field_id(data), data["name"], data["field_type"]
        if not isinstance(name, str) or not isinstance(field_type, str):
            raise TypeError("a custom field's name and field_type should be strings")
        return CustomFieldDefinition(
            id=field_id,
            name=name,
            field_type=field_type,
            # Listed for customers (record_type=customer) and active there too.
            is_active=data.get("is_active") is not False
            and all(a.get("is_active", True) is not False for a in for_customers),
            options=tuple(options) if isinstance(options, list) else None,
            raw=data,
        )

    def check_custom_field_value(self, definition: CustomFieldDefinition, value: Any) -> list[str]:
        # The docs do not say how each type's value is written: what is checked
        # is what any reading of them implies (see docs/plan.md).
        kind, options = definition.field_type, definition.options
        if kind == "boolean":
            return [] if isinstance(value, bool) else [f"must be true or false for a {kind} field"]
        if kind in ("number", "currency"):
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                return [f"must be a number for a {kind} field"]
            try:
                number = Decimal(str(value).strip())
            except InvalidOperation:
                return [f"must be a number for a {kind} field, got {value!r}"]
            return [] if number.is_finite() else [f"must be a finite number, got {value!r}"]
        if kind == "date":
            # fromisoformat alone also reads 20261122 and 2026-W47-7 (Python 3.11+).
            written = value if isinstance(value, str) and _DATE.fullmatch(value) else ""
            try:
                dt.date.fromisoformat(written)
            except ValueError:
                return [f"must be a date written YYYY-MM-DD, got {value!r}"]
            return []
        if kind == "single_select":
            if not isinstance(value, str):
                return [f"must be one of the field's options, not {type_name(value)}"]
            if options is not None and value not in options:
                return [f"must be one of {', '.join(map(repr, options))}; got {value!r}"]
            return []
        if kind == "multi_select":
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                return ["must be a list of the field's options"]
            wrong = [v for v in value if options is not None and v not in options]
            if wrong:
                return [f"has values that are not options: {', '.join(map(repr, wrong))}"]
            return []
        if kind in ("text", "paragraph", "link") and not isinstance(value, str):
            return [f"must be text for a {kind} field, not {type_name(value)}"]
        return []

    def customer_from(self, data: Any) -> Customer:
        if not isinstance(data, dict):
            raise TypeError(f"the customer should be an object, got {type_name(data)}")
        return Customer(
            id=data["id"],
            provider=self.provider,
            **self.fields_from(data),
            custom_field_ids=_custom_field_ids(data.get("custom_fields")),
            created_at=parse_datetime(_actor_time(data, "created_by")),
            updated_at=parse_datetime(_actor_time(data, "updated_by")),
            raw=data,
        )
