"""The layers import downward only: HTTP values at the bottom, the client at the top."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "customer_patch"


def imported(module: str) -> set[str]:
    """The customer_patch modules ``module`` imports, anywhere in its source."""
    tree = ast.parse((CORE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("customer_patch"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("customer_patch")}
    return found


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        ("_checks", {"customer_patch._errors"}),
        ("_http", {"customer_patch._checks", "customer_patch._errors"}),
        ("_errors", set()),
        ("_transport", {"customer_patch._http", "customer_patch._errors"}),
        ("_retry", {"customer_patch._checks", "customer_patch._http", "customer_patch._errors"}),
        ("_pacing", {"customer_patch._http"}),
        ("_bulk", {"customer_patch._checks", "customer_patch._model", "customer_patch._errors"}),
    ],
)
def test_each_lower_layer_imports_only_what_is_below_it(module, allowed):
    assert imported(module) <= allowed


def test_importing_the_transport_loads_neither_the_adapters_nor_the_pacer():
    code = (
        "import customer_patch._transport, sys; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('customer_patch'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "customer_patch._adapter" not in loaded
    assert "customer_patch._pacing" not in loaded
    assert set(loaded) == {
        "customer_patch",
        "customer_patch._checks",
        "customer_patch._errors",
        "customer_patch._http",
        "customer_patch._transport",
    }
