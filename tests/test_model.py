import copy
import pickle

import attrs
import pytest

from customer_patch import (
    UNSET,
    Address,
    CustomerPatch,
    ExternalIds,
    TaxId,
    ValidationError,
)


def test_unset_is_a_falsy_singleton_with_a_clear_repr():
    assert not UNSET
    assert repr(UNSET) == "UNSET"
    assert copy.copy(UNSET) is UNSET
    assert copy.deepcopy(UNSET) is UNSET
    assert pickle.loads(pickle.dumps(UNSET)) is UNSET


def test_patch_defaults_to_all_unset_and_is_frozen():
    patch = CustomerPatch()
    assert patch.is_empty()
    assert list(patch.set_fields()) == []
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        patch.name = "x"  # type: ignore[misc]


def test_patch_copies_mutable_inputs():
    tax_ids = [TaxId("VAT", "FR1")]
    custom = {"Partner": True}
    patch = CustomerPatch(tax_ids=tax_ids, custom_fields=custom)
    tax_ids.append(TaxId("VAT", "FR2"))
    custom["Tier"] = "Gold"
    assert patch.tax_ids == (TaxId("VAT", "FR1"),)
    assert patch.custom_fields == {"Partner": True}


def test_set_fields_flattens_external_ids_and_keeps_none():
    patch = CustomerPatch(name="A", logo=None, external_ids=ExternalIds(crm="c1", erp=None))
    assert dict(patch.set_fields()) == {
        "name": "A",
        "logo": None,
        "external_ids.crm": "c1",
        "external_ids.erp": None,
    }


def test_a_subclass_holding_a_field_in_a_slot_is_still_read():
    # attrs makes a subclass slotted: a field it declares again lives in a slot,
    # not in the __dict__ of CustomerPatch (a dict class).
    @attrs.frozen(kw_only=True)
    class Trimmed(CustomerPatch):
        name: str | None = attrs.field(
            default=UNSET,
            converter=lambda value: value.strip() if isinstance(value, str) else value,
        )
        country: str = "FR"

    patch = Trimmed(name="  Acme  ")
    assert dict(patch.set_fields()) == {"name": "Acme", "country": "FR"}
    assert patch
    assert not patch.is_empty()


def test_patch_and_unset_survive_pickle():
    patch = CustomerPatch(name="A", external_ids=ExternalIds(crm=None))
    again = pickle.loads(pickle.dumps(patch))
    assert again == patch
    assert again.type is UNSET
    assert again.external_ids.erp is UNSET  # type: ignore[union-attr]


FULL = CustomerPatch(
    name="Acme",
    type="company",
    segment_id=None,
    logo="https://acme.example/logo.png",
    tax_ids=[TaxId("VAT", "FR98765432100")],
    external_ids=ExternalIds(crm="crm_1", erp=None),
    unique_id="ACME-1",
    email="billing@acme.example",
    phone="+33 1 23 45 67 89",
    website=None,
    address="1 rue de la Paix, Paris",
    country="FR",
    billing_address=Address(street="1 rue de la Paix", city="Paris", postal_code="75002"),
    shipping_address=None,
    custom_fields={"Partner": True, 42: "Acme", "Tier": None},
    extra={"vendor_flag": [1, 2]},
)


@pytest.mark.parametrize(
    "patch",
    [
        CustomerPatch(),
        CustomerPatch(name="x"),
        CustomerPatch(tax_ids=[]),
        CustomerPatch(external_ids=ExternalIds()),
        CustomerPatch(custom_fields={}),
        CustomerPatch(custom_fields={"Partner": None}),
        FULL,
    ],
)
def test_from_dict_to_dict_round_trips(patch):
    assert CustomerPatch.from_dict(patch.to_dict()) == patch


def test_to_dict_is_the_neutral_json_form():
    assert FULL.to_dict() == {
        "name": "Acme",
        "type": "company",
        "segment_id": None,
        "logo": "https://acme.example/logo.png",
        "tax_ids": [{"tax": "VAT", "value": "FR98765432100"}],
        "external_ids": {"crm": "crm_1", "erp": None},
        "unique_id": "ACME-1",
        "email": "billing@acme.example",
        "phone": "+33 1 23 45 67 89",
        "website": None,
        "address": "1 rue de la Paix, Paris",
        "country": "FR",
        "billing_address": {"street": "1 rue de la Paix", "city": "Paris", "postal_code": "75002"},
        "shipping_address": None,
        "custom_fields": [
            {"name": "Partner", "value": True},
            {"id": 42, "value": "Acme"},
            {"name": "Tier", "value": None},
        ],
        "extra": {"vendor_flag": [1, 2]},
    }


def test_from_dict_absent_is_unset_and_null_clears():
    patch = CustomerPatch.from_dict({"name": "A", "logo": None})
    assert patch.name == "A"
    assert patch.logo is None
    assert patch.email is UNSET
    assert patch.external_ids is UNSET


def test_from_dict_accepts_custom_fields_by_name_as_an_object():
    patch = CustomerPatch.from_dict({"custom_fields": {"Partner": True, "42": "x"}})
    # A JSON key is always a name; ids need the list form.
    assert patch.custom_fields == {"Partner": True, "42": "x"}


def test_from_dict_reports_every_problem_at_once_with_its_path():
    with pytest.raises(ValidationError) as info:
        CustomerPatch.from_dict(
            {
                "name": 12,
                "tax_ids": [{"tax": "VAT"}],
                "external_ids": {"crm": 5, "bogus": 1},
                "billing_address": {"street": "x"},
                "custom_fields": [{"id": True, "value": 1}],
                "colour": "red",
            }
        )
    problems = {(p.field, p.message) for p in info.value.problems}
    assert ("name", "expected str, got int") in problems
    assert ("tax_ids[0].value", "required field missing") in problems
    assert ("external_ids.crm", "expected str, got int") in problems
    assert ("billing_address.city", "required field missing") in problems
    assert ("billing_address.postal_code", "required field missing") in problems
    assert any(f == "custom_fields" and "integer 'id'" in m for f, m in problems)
    assert ("", "unknown field(s): colour") in problems
    assert any("bogus" in m for _, m in problems)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": 1.5}, "name"),
        ({"name": True}, "name"),
        ({"tax_ids": "VAT"}, "tax_ids"),
        ({"external_ids": None}, "external_ids"),
        ({"custom_fields": None}, "custom_fields"),
        (
            {"custom_fields": [{"name": "A", "value": 1}, {"name": "A", "value": 2}]},
            "custom_fields",
        ),
        ({"extra": []}, "extra"),
    ],
)
def test_from_dict_is_strict(data, field):
    with pytest.raises(ValidationError) as info:
        CustomerPatch.from_dict(data)
    assert [p.field for p in info.value.problems] == [field]


def test_from_dict_rejects_a_non_object():
    with pytest.raises(ValidationError, match="must be an object"):
        CustomerPatch.from_dict(["name"])  # type: ignore[arg-type]
