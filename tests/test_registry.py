import subprocess
import sys
from pathlib import Path

import pytest

from customer_patch import (
    AdapterRegistrationError,
    AdapterRegistry,
    Client,
    UnknownAdapterError,
    available_adapters,
    get_adapter,
)
from customer_patch_dualentry import DualEntryAdapter
from customer_patch_qwoty import QwotyAdapter

CORE = Path(__file__).parent.parent / "customer_patch"


def test_first_party_adapters_arrive_through_entry_points():
    registry = AdapterRegistry()
    assert {"qwoty", "dualentry"} <= set(registry.names())
    assert isinstance(registry.get("qwoty"), QwotyAdapter)
    assert isinstance(registry.get("dualentry"), DualEntryAdapter)
    assert registry.get("qwoty") is registry.get("qwoty")
    assert {"qwoty", "dualentry"} <= set(available_adapters())
    assert isinstance(get_adapter("qwoty"), QwotyAdapter)


def test_a_registry_without_entry_points_knows_nothing():
    registry = AdapterRegistry(entry_point_group=None)
    with pytest.raises(UnknownAdapterError) as info:
        registry.get("qwoty")
    assert info.value.available == ()


def test_unknown_name_lists_what_is_available():
    with pytest.raises(UnknownAdapterError, match=r"available: .*dualentry.*qwoty") as info:
        AdapterRegistry().get("qwotty")
    assert info.value.name == "qwotty"


def test_custom_adapter_in_three_lines_works_with_client():
    registry = AdapterRegistry()

    @registry.register("acme")
    class Acme(QwotyAdapter):
        default_base_url = "https://acme.example/api"

    client = Client("acme", token="t", registry=registry)
    assert isinstance(client.adapter, Acme)
    assert client.base_url == "https://acme.example/api"


def test_register_instance_and_import_string():
    registry = AdapterRegistry(entry_point_group=None)
    v1 = DualEntryAdapter(api_version="v1")
    assert registry.register("de-v1", v1) is v1
    registry.register("q", "customer_patch_qwoty:QwotyAdapter")
    assert registry.get("de-v1") is v1
    assert isinstance(registry.get("q"), QwotyAdapter)
    assert registry.names() == ["de-v1", "q"]


def test_taken_names_need_replace():
    registry = AdapterRegistry()
    with pytest.raises(AdapterRegistrationError, match="replace=True"):
        registry.register("qwoty", DualEntryAdapter)
    registry.register("qwoty", DualEntryAdapter, replace=True)
    assert isinstance(registry.get("qwoty"), DualEntryAdapter)  # latest registration wins


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("no_such_module:X", "cannot load"),
        ("customer_patch_qwoty:Nope", "cannot load"),
        ("customer_patch:Client", "is not an Adapter"),
    ],
)
def test_bad_sources_fail_on_first_use_with_a_clear_error(source, message):
    registry = AdapterRegistry(entry_point_group=None)
    registry.register("bad", source)
    with pytest.raises(AdapterRegistrationError, match=message):
        registry.get("bad")


def test_register_rejects_non_adapters_at_once():
    with pytest.raises(AdapterRegistrationError, match="expected an Adapter"):
        AdapterRegistry().register("x", object())  # type: ignore[call-overload]


def test_core_never_imports_an_adapter():
    code = (
        "import sys, customer_patch, customer_patch.wire\n"
        "customer_patch.available_adapters()\n"
        "print(sorted(m for m in sys.modules if 'qwoty' in m or 'dualentry' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_core_source_knows_no_provider_by_name():
    offenders = [
        str(path.relative_to(CORE))
        for path in CORE.rglob("*.py")
        if any(name in path.read_text().lower() for name in ("qwoty", "dualentry"))
    ]
    assert offenders == []
