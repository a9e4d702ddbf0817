"""DualEntry's OpenAPI document as the suite's contract.

``dualentry-openapi.json`` beside this file is the facts-only copy of the
document (``regenerate.py`` makes it).  Here it becomes JSON Schema validators
(with ``$ref`` resolved, OpenAPI 3.0's ``nullable: true`` read as "or null",
patterns matched as ECMA-262 and ``date-time`` as RFC 3339), and the patches
every contract test sends (to the schema, the fake and Prism).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema import ValidationError as SchemaError
from jsonschema.validators import extend
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from customer_patch import Address, CustomerPatch
from customer_patch.wire import ecma_pattern
from customer_patch_dualentry import DualEntryAdapter
from tests import seeds

SPEC_FILE = Path(__file__).with_name("dualentry-openapi.json")
SPEC: dict[str, Any] = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]
_URI = "urn:dualentry-openapi"


def or_null(node: Any, names: bool = False) -> Any:
    """``node`` with each ``nullable: true`` schema turned into ``anyOf: [schema, null]``."""
    if isinstance(node, list):
        return [or_null(item) for item in node]
    if not isinstance(node, dict):
        return node
    if names:  # the keys of "properties" are field names, not keywords
        return {name: or_null(schema) for name, schema in node.items()}
    out = {k: or_null(v, names=k == "properties") for k, v in node.items() if k != "nullable"}
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string") and not re.search(ecma_pattern(pattern), instance):
        yield SchemaError(f"{instance!r} does not match {pattern!r}")


_RFC3339 = re.compile(
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)"
)
FORMATS = FormatChecker(formats=())
FORMATS.checks("date-time")(lambda v: not isinstance(v, str) or bool(_RFC3339.fullmatch(v)))

_Validator = extend(Draft202012Validator, {"pattern": _ecma_pattern})
_REGISTRY = Registry().with_resource(_URI, DRAFT202012.create_resource(or_null(SPEC)))


def problems(pointer: str, instance: Any) -> list[str]:
    """What the schema at ``pointer`` (``"CustomerSchemaOut"`` or a JSON pointer) refuses."""
    ref = pointer if pointer.startswith("/") else f"/components/schemas/{pointer}"
    validator = _Validator({"$ref": f"{_URI}#{ref}"}, registry=_REGISTRY, format_checker=FORMATS)
    found = []
    for error in validator.iter_errors(instance):
        where = "/".join(map(str, error.absolute_path)) or "(body)"
        why = "; ".join(sub.message for sub in error.context or ()) or error.message
        found.append(f"{where}: {why}")
    return found


def unknown_keys(body: dict[str, Any]) -> list[str]:
    """Keys of a PATCH body that the schema does not list (DualEntry would ignore them)."""
    known = SCHEMAS["CustomerSchemaPatchIn"]["properties"]
    address = SCHEMAS["AddressSchemaIn"]["properties"]
    found = [key for key in body if key not in known]
    for key in ("full_address", "shipping_address"):
        if isinstance(body.get(key), dict):
            found += [f"{key}.{part}" for part in body[key] if part not in address]
    return found


# -- the patches every contract test sends --------------------------------------------

# One valid value for each neutral field the adapter maps; a field added to
# the map without a value here fails the tests (KeyError), as it should.
VALUES: dict[str, Any] = {
    "name": "Acme Holdings, Inc.",
    "unique_id": "ACME-0001",
    "email": "billing@acme.example",
    "address": "1 Main St, Springfield",
    "country": "United States",
    "website": "https://acme.example",
    "phone": "+1 (555) 010-0199",
    "billing_address": Address(
        street="1 Main St",
        city="Springfield",
        postal_code="62701",
        state="IL",
        second_line="Suite 2",
        country="US",
        name="HQ",
    ),
    "shipping_address": Address(
        street="Rr. Agim Ramadani 1", city="Pristina", postal_code="10000", country="XK"
    ),
    "custom_fields": {"Partner": True, "Tier": "Gold"},
}


def patches() -> dict[str, CustomerPatch]:
    """Named patches: every field set, every nullable field cleared, custom
    fields by name, by id and mixed, both addresses, the edges of each constraint."""
    fields = DualEntryAdapter.fields
    assert not any("." in path for path in fields), "nested paths need their own VALUES"
    cases = {"every field": CustomerPatch(**VALUES)}
    for path, spec in fields.items():
        cases[f"set {path}"] = CustomerPatch(**{path: VALUES[path]})
        if spec.nullable:
            cases[f"clear {path}"] = CustomerPatch(**{path: None})
    cases["clear every nullable field"] = CustomerPatch(
        **{path: None for path, spec in fields.items() if spec.nullable}
    )
    cases.update(
        {
            "custom fields by id": CustomerPatch(custom_fields={42: "Acme"}),
            "custom fields mixed": CustomerPatch(
                custom_fields={"Partner": True, 42: "Acme", 44: "EMEA", 45: "North"}
            ),
            "custom fields cleared by name and id": CustomerPatch(
                custom_fields={"Tier": None, 44: None}
            ),
            "both addresses, one without country or name": CustomerPatch(
                billing_address=VALUES["billing_address"],
                shipping_address=Address(street="s", city="c", postal_code="p"),
            ),
            "phone at 32 characters with JavaScript whitespace": CustomerPatch(
                phone=f"{'+1 (555)':\ufeff<16}{'010':\u3000<16}"
            ),
            "empty phone": CustomerPatch(phone=""),
            "unique_id of 1 and name of 0 characters": CustomerPatch(unique_id="A", name=""),
            "unique_id of 64 characters": CustomerPatch(unique_id="U" * 64),
        }
    )
    for n, (patch, _) in enumerate(seeds.dualentry_examples(), 1):
        cases[f"docs example {n}"] = patch  # type: ignore[assignment]
    return cases


PATCHES = patches()
