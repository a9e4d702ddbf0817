"""Write ``dualentry-openapi.json``: the facts of DualEntry's OpenAPI document.

    python tests/contract/regenerate.py NEW_COPY_OF/dualentry-openapi-customers.json

The suite must not depend on a copy of the spec outside the project, so it
keeps this one: the structure (paths, operations, parameters, schemas, enums,
constraints, defaults) without the document's prose (every ``description``,
``summary``, ``title`` and the tags).  It stays a valid OpenAPI document that
Prism can serve: ``info`` keeps its required title and version, and each
response its required ``description``, emptied.  ``x-extraction`` (where the
copy came from) is kept, and ``x-facts-only`` says how this file was made.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("dualentry-openapi.json")
PROSE = {"description", "summary", "title", "tags"}


def facts(node: Any, parent: str = "") -> Any:
    """``node`` without its prose; the keys of ``properties`` are names, all kept."""
    if isinstance(node, list):
        return [facts(item) for item in node]
    if not isinstance(node, dict):
        return node
    if parent == "properties":
        return {name: facts(schema) for name, schema in node.items()}
    kept = {key: facts(value, key) for key, value in node.items() if key not in PROSE}
    if parent == "responses":
        return {status: {"description": "", **response} for status, response in kept.items()}
    return kept


def document(spec: dict[str, Any], source: bytes, name: str) -> dict[str, Any]:
    """The facts-only document for ``spec``, read from ``source`` (a file called ``name``)."""
    out = facts(spec)
    out["info"] = {"title": spec["info"]["title"], "version": spec["info"]["version"]}
    out["servers"] = [{"url": server["url"]} for server in spec.get("servers", [])]
    out["x-facts-only"] = {
        "from": name,
        "sha256": hashlib.sha256(source).hexdigest(),
        "removed": sorted(PROSE) + ["servers[].description"],
        "regenerate": "python tests/contract/regenerate.py NEW_COPY.json",
    }
    return out


def dump(node: Any, indent: int = 0) -> str:
    """JSON, one line per member, except what fits on a short line (lists of codes)."""
    flat = json.dumps(node, ensure_ascii=False)
    if not isinstance(node, dict | list) or len(flat) + 2 * indent <= 96 or not node:
        return flat
    if isinstance(node, list) and not any(isinstance(item, dict | list) for item in node):
        return flat  # an enum stays on one line, however long
    pad = "  " * (indent + 1)
    if isinstance(node, dict):
        members = [f"{pad}{json.dumps(k)}: {dump(v, indent + 1)}" for k, v in node.items()]
        return "{\n" + ",\n".join(members) + "\n" + "  " * indent + "}"
    items = [pad + dump(item, indent + 1) for item in node]
    return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    source = Path(argv[1]).read_bytes()
    OUT.write_text(dump(document(json.loads(source), source, Path(argv[1]).name)) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
