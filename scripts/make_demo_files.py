"""Regenerate the demo files the adapters ship (run from the repository root).

The ids match what each fake seeds with ``seed_demo``; a few records fail on
purpose, so the demo shows that every record gets exactly one result.
"""

import csv
import json
import uuid
from pathlib import Path

from customer_patch_dualentry._fake import DEMO_FIRST_ID
from customer_patch_qwoty._fake import demo_id

COUNT = 300


def qwoty(path: Path) -> None:
    lines = []
    for n in range(1, COUNT + 1):
        patch: dict[str, object] = [
            {
                "name": f"Demo Customer {n} (Renamed)",
                "tax_ids": [{"tax": "VAT", "value": f"FR{n:011d}"}],
            },
            {
                "external_ids": {
                    "crm": f"crm_{n:04d}_new",
                    "erp": f"erp_{n:04d}",
                    "accounting": None,
                }
            },
            {"type": "individual", "logo": None},
            {"name": f"Demo Customer {n}", "tax_ids": []},
            {"segment_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"segment-{n % 3}"))},
        ][n % 5]
        lines.append({"id": demo_id(n), "patch": patch})
    lines.insert(
        100, {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "nobody")), "patch": {"name": "Ghost"}}
    )  # 404
    lines.insert(
        200, {"id": demo_id(7), "patch": {"name": None}}
    )  # invalid: name cannot be cleared
    lines.insert(
        250, {"id": demo_id(8), "patch": {"email": "x@example.com"}}
    )  # Qwoty has no email
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def dualentry(path: Path) -> None:
    columns = [
        "id",
        "name",
        "phone",
        "website",
        "email",
        "custom_fields.Partner",
        "custom_fields.Tier",
        "custom_fields.Segmnt",
    ]
    rows = []
    for n in range(DEMO_FIRST_ID, DEMO_FIRST_ID + COUNT):
        k = n % 4
        rows.append(
            [
                n,
                f"Demo Customer {n} Inc." if k == 0 else "",
                f"+1 555-{n:04d}" if k in (1, 2) else "",
                f"https://customer{n}.example" if k == 2 else "",
                "null" if k == 3 else "",
                "true" if k in (0, 3) else ("false" if k == 1 else ""),
                ["Gold", "Silver", "", "Bronze"][k],
                "",
            ]
        )
    rows.insert(100, [9999, "Nobody", "", "", "", "", "", ""])  # 404
    rows.insert(
        150, [DEMO_FIRST_ID + 5, "", "", "", "", "", "", "Retail"]
    )  # unknown custom field: 422
    rows.insert(200, [DEMO_FIRST_ID + 6, "", "call me maybe", "", "", "", "", ""])  # invalid phone
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)


if __name__ == "__main__":
    qwoty(Path("adapters/qwoty/customer_patch_qwoty/demo/updates.jsonl"))
    dualentry(Path("adapters/dualentry/customer_patch_dualentry/demo/updates.csv"))
