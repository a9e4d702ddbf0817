"""Every example of the two seed pages, reproduced exactly (as parsed JSON)."""

import datetime as dt
import json

import pytest

from customer_patch import CustomerPatch, ExternalIds, Response, TaxId
from customer_patch_dualentry import DualEntryAdapter
from customer_patch_qwoty import QwotyAdapter
from tests import seeds
from tests.helpers import DEID, build


@pytest.mark.parametrize(
    ("page", "literal"),
    [
        (seeds.QWOTY_PAGE, seeds.QWOTY_REQUEST),
        (seeds.QWOTY_PAGE, seeds.QWOTY_SKELETON),
        (seeds.QWOTY_PAGE, seeds.QWOTY_RESPONSE),
        (seeds.QWOTY_PAGE, seeds.QWOTY_CURL),
        (seeds.DUALENTRY_PAGE, seeds.DUALENTRY_RENAME),
        (seeds.DUALENTRY_PAGE, seeds.DUALENTRY_PHONE_WEBSITE),
        (seeds.DUALENTRY_PAGE, seeds.DUALENTRY_CUSTOM_BY_NAME),
        (seeds.DUALENTRY_PAGE, seeds.DUALENTRY_CUSTOM_BY_ID),
    ],
)
def test_seeds_are_verbatim(page, literal):
    assert literal in page


def body(adapter, customer_id, patch):
    return build(adapter, customer_id, patch).json()


def test_qwoty_rename_with_tax_ids():
    patch = CustomerPatch(name="Acme Corp (Renamed)", tax_ids=[TaxId("VAT", "FR98765432100")])
    assert body(QwotyAdapter(), seeds.QWOTY_CUSTOMER_ID, patch) == json.loads(seeds.QWOTY_REQUEST)


def test_qwoty_skeleton_lists_exactly_the_fields_the_adapter_can_send():
    patch = CustomerPatch(
        name="n",
        type="company",
        segment_id=None,
        logo=None,
        tax_ids=[],
        external_ids=ExternalIds(crm=None, erp=None, accounting=None),
    )
    sent = body(QwotyAdapter(), seeds.QWOTY_CUSTOMER_ID, patch)
    assert list(sent) == list(json.loads(seeds.QWOTY_SKELETON))


def test_qwoty_response_parses():
    customer = QwotyAdapter().customer_from(json.loads(seeds.QWOTY_RESPONSE))
    assert customer.id == seeds.QWOTY_CUSTOMER_ID
    assert customer.provider == "qwoty"
    assert customer.name == "Acme Corp (Renamed)"
    assert customer.type == "company"
    assert customer.segment_id is None
    assert customer.external_ids == ExternalIds(crm="crm_001", erp=None, accounting=None)
    assert customer.tax_ids is None  # the example leaves them out
    assert customer.created_at == dt.datetime(2026, 1, 15, 10, 30, tzinfo=dt.UTC)
    assert customer.updated_at == dt.datetime(2026, 3, 24, 14, 0, tzinfo=dt.UTC)
    assert customer.raw == json.loads(seeds.QWOTY_RESPONSE)["data"]


def test_qwoty_response_parses_through_the_full_response_path():
    adapter = QwotyAdapter()
    request = build(adapter, seeds.QWOTY_CUSTOMER_ID, CustomerPatch(name="x"))
    response = Response(status=200, body=seeds.QWOTY_RESPONSE.encode())
    assert adapter.parse_response(response, request=request).name == "Acme Corp (Renamed)"


@pytest.mark.parametrize(("patch", "expected"), seeds.dualentry_examples())
def test_dualentry_examples(patch, expected):
    assert body(DualEntryAdapter(), DEID, patch) == json.loads(expected)
