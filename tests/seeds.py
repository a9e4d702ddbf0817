"""The examples of the two documentation pages the project started from.

Each literal here is copied verbatim from ``tests/seeds/`` (copies of
``shared/seeds/``); ``test_seeds_are_verbatim`` proves it.
"""

from pathlib import Path

SEEDS = Path(__file__).parent / "seeds"
QWOTY_PAGE = (SEEDS / "qwoty_update_customer.txt").read_text()
DUALENTRY_PAGE = (SEEDS / "dualentry_update_customer.txt").read_text()

QWOTY_REQUEST = """{
"name": "Acme Corp (Renamed)",
"tax_ids": [
{ "tax": "VAT", "tax_value": "FR98765432100" }
]
}"""

# The page's request skeleton: every patchable field, with placeholders.
QWOTY_SKELETON = """{
"name": "<string>",
"type": "<string>",
"segment_id": {},
"logo": {},
"tax_ids": [
{}
],
"id_crm": {},
"id_erp": {},
"id_accounting": {}
}"""

QWOTY_RESPONSE = """{
"success": true,
"data": {
"id": "550e8400-e29b-41d4-a716-446655440000",
"name": "Acme Corp (Renamed)",
"type": "company",
"segment_id": null,
"logo": null,
"id_crm": "crm_001",
"id_erp": null,
"id_accounting": null,
"created_at": "2026-01-15T10:30:00Z",
"updated_at": "2026-03-24T14:00:00Z"
}
}"""

QWOTY_CUSTOMER_ID = "550e8400-e29b-41d4-a716-446655440000"

# The page's example request, as a command to run.
QWOTY_CURL = """curl -X PATCH https://qwoty.app/api/customers/550e8400-e29b-41d4-a716-446655440000 \\
-H "Authorization: Bearer qwoty_your_token" \\
-H "Content-Type: application/json" \\
-d '{
"name": "Acme Corp (Renamed)",
"tax_ids": [
{ "tax": "VAT", "tax_value": "FR98765432100" }
]
}'"""

DUALENTRY_RENAME = '{"name": "Acme Holdings, Inc."}'
DUALENTRY_PHONE_WEBSITE = '{"phone": "555-0199", "website": "https://acme.example"}'
DUALENTRY_CUSTOM_BY_NAME = '{"custom_fields": [{"Partner": true}, {"Tier": "Gold"}]}'
DUALENTRY_CUSTOM_BY_ID = (
    '{"custom_fields": [{"field": {"id": 42}, "value": {"custom_field_id": 42, "value": "Acme"}}]}'
)


def dualentry_examples() -> list[tuple[object, str]]:
    """Each DualEntry example body with the neutral patch that must produce it."""
    from customer_patch import CustomerPatch

    return [
        (CustomerPatch(name="Acme Holdings, Inc."), DUALENTRY_RENAME),
        (CustomerPatch(phone="555-0199", website="https://acme.example"), DUALENTRY_PHONE_WEBSITE),
        (CustomerPatch(custom_fields={"Partner": True, "Tier": "Gold"}), DUALENTRY_CUSTOM_BY_NAME),
        (CustomerPatch(custom_fields={42: "Acme"}), DUALENTRY_CUSTOM_BY_ID),
    ]
