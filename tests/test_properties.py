"""Property tests: the model round-trips, bodies hold exactly the set fields,
validation lets no documented constraint through and raises nothing else."""

import json
import re
import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from customer_patch import (
    UNSET,
    Address,
    CustomerPatch,
    CustomerPatchError,
    ExternalIds,
    Response,
    TaxId,
    UnsupportedFieldError,
    ValidationError,
    wire,
)
from customer_patch_dualentry import DualEntryAdapter
from customer_patch_dualentry._adapter import PHONE_PATTERN
from customer_patch_qwoty import QwotyAdapter
from tests.helpers import QID, build

text = st.text(max_size=40)
json_scalar = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text


def tri(values):
    return st.just(UNSET) | st.none() | values


addresses = st.builds(
    Address,
    street=text,
    city=text,
    postal_code=text,
    state=text,
    second_line=text,
    country=st.sampled_from(["", "FR", "US", "DE"]),
    name=st.none() | text,
)
custom = st.dictionaries(
    st.text(min_size=2, max_size=32) | st.integers(1, 10_000), json_scalar, max_size=4
)
patches = st.builds(
    CustomerPatch,
    name=tri(text),
    type=tri(text),
    segment_id=tri(text),
    logo=tri(text),
    tax_ids=tri(st.lists(st.builds(TaxId, text, text), max_size=3)),
    external_ids=st.just(UNSET)
    | st.builds(ExternalIds, crm=tri(text), erp=tri(text), accounting=tri(text)),
    unique_id=tri(text),
    email=tri(text),
    phone=tri(text),
    website=tri(text),
    address=tri(text),
    country=tri(text),
    billing_address=tri(addresses),
    shipping_address=tri(addresses),
    custom_fields=st.just(UNSET) | custom,
    extra=st.dictionaries(
        st.text(min_size=1, max_size=10).map(lambda s: "x_" + s), json_scalar, max_size=3
    ),
)


@given(patches)
def test_from_dict_to_dict_round_trips(patch):
    data = patch.to_dict()
    assert CustomerPatch.from_dict(json.loads(json.dumps(data))) == patch


qwoty_patches = st.builds(
    CustomerPatch,
    name=st.just(UNSET) | st.text(max_size=20),
    type=st.just(UNSET) | st.sampled_from(["company", "individual"]),
    segment_id=tri(st.uuids().map(str)),
    logo=tri(st.just("https://x.example/logo.png")),
    tax_ids=st.just(UNSET)
    | st.lists(
        st.builds(TaxId, st.text(min_size=1, max_size=5), st.text(min_size=1, max_size=12)),
        max_size=3,
    ),
    external_ids=st.just(UNSET)
    | st.builds(ExternalIds, crm=tri(text), erp=tri(text), accounting=tri(text)),
)


def strict_json(raw):
    """json.loads that refuses NaN and Infinity, which are not JSON."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(raw, parse_constant=refuse)


phones = st.text(alphabet=string.digits + " +-.()", max_size=32)
dualentry_patches = st.builds(
    CustomerPatch,
    name=st.just(UNSET) | st.text(max_size=20),
    unique_id=tri(st.text(min_size=1, max_size=64)),
    email=tri(text),
    address=tri(text),
    country=tri(text),
    website=tri(text),
    phone=tri(phones),
    billing_address=tri(addresses),
    shipping_address=tri(addresses),
    custom_fields=st.just(UNSET) | custom,
)


# Each provider with a customer id and the patches it accepts.
BODY_CASES = {
    "qwoty": (QwotyAdapter(), QID, qwoty_patches),
    "dualentry": (DualEntryAdapter(), 1, dualentry_patches),
}


@pytest.mark.parametrize("provider", list(BODY_CASES))
@given(data=st.data())
def test_body_holds_exactly_the_set_fields(provider, data):
    adapter, customer_id, provider_patches = BODY_CASES[provider]
    patch = data.draw(provider_patches, label="patch")
    assume(not patch.is_empty())  # an empty patch is refused: see the last test
    body = strict_json(build(adapter, customer_id, patch).body)
    set_fields = dict(patch.set_fields())
    assert set(body) == {adapter.fields[path].wire for path in set_fields}
    for path, value in set_fields.items():
        sent = body[adapter.fields[path].wire]
        assert (sent is None) == (value is None)
    if patch.custom_fields is not UNSET:
        assert len(body["custom_fields"]) == len(patch.custom_fields)


anything = st.recursive(
    json_scalar | st.floats(allow_nan=True),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3),
    max_leaves=6,
)
hostile = st.builds(
    CustomerPatch,
    name=tri(anything),
    type=tri(anything),
    phone=tri(anything),
    unique_id=tri(anything),
    tax_ids=tri(anything),
    custom_fields=st.just(UNSET) | anything,
    billing_address=tri(anything),
    external_ids=st.just(UNSET) | anything,
    extra=st.dictionaries(text, anything, max_size=2),
)
PHONE = re.compile(wire.ecma_pattern(PHONE_PATTERN))  # as DualEntry checks it: JavaScript


@settings(max_examples=300)
@given(
    hostile,
    st.sampled_from([QwotyAdapter(), DualEntryAdapter()]),
    st.one_of(st.just(QID), st.integers(), anything),
)
def test_validation_raises_only_its_own_errors_and_lets_no_constraint_through(
    patch, adapter, customer_id
):
    try:
        request = build(adapter, customer_id, patch)
    except (ValidationError, UnsupportedFieldError):
        return
    body = strict_json(request.body)  # whatever passed is valid JSON (no NaN either)
    if isinstance(adapter, DualEntryAdapter):
        assert isinstance(customer_id, int)
        assert customer_id > 0
        if isinstance(body.get("phone"), str):
            assert len(body["phone"]) <= 32
            assert PHONE.search(body["phone"])
        if "unique_id" in body and body["unique_id"] is not None:
            assert 1 <= len(body["unique_id"]) <= 64
    else:
        assert body.get("type", "company") in ("company", "individual")
        assert body.get("name", "") is not None
        for tax in body.get("tax_ids", []):
            assert tax["tax"]
            assert tax["tax_value"]


@settings(max_examples=300)
@given(
    st.integers(100, 599),
    st.one_of(anything.map(lambda v: json.dumps(v).encode()), st.binary(max_size=50)),
)
def test_any_response_is_a_customer_or_a_typed_error(status, body):
    for adapter, customer_id in ((QwotyAdapter(), QID), (DualEntryAdapter(), 1)):
        request = build(adapter, customer_id, CustomerPatch(name="A"))
        try:
            adapter.parse_response(Response(status=status, body=body), request=request)
        except CustomerPatchError:
            pass


def test_an_empty_patch_is_refused_not_sent_as_an_empty_body():
    for adapter, customer_id in ((QwotyAdapter(), QID), (DualEntryAdapter(), 1)):
        with pytest.raises(ValidationError, match="sets no field"):
            build(adapter, customer_id, CustomerPatch())
