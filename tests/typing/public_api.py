"""Type-checked (not run): the public API as users write it, under mypy --strict.

`.ci/run` runs `mypy tests/typing`; a signature that stops accepting these
calls, or returns a different type, fails the build.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator
from typing import Any, assert_type

import customer_patch
from customer_patch import (
    UNSET,
    Address,
    BulkReport,
    Client,
    Customer,
    CustomerPatch,
    ExternalIds,
    Progress,
    ProviderError,
    RateLimit,
    RetryPolicy,
    TaxId,
    UnknownCustomFieldError,
    Unset,
    UpdateResult,
    ValidationError,
    register_adapter,
)
from customer_patch.sandbox import FakeProvider, Faults, fake_for


async def single() -> None:
    patch = CustomerPatch(
        name="Acme",
        tax_ids=[TaxId("VAT", "FR98765432100")],
        external_ids=ExternalIds(crm=None),
        billing_address=Address(street="1 Main St", city="Lyon", postal_code="69001"),
        custom_fields={"Partner": True, 42: "Acme"},
        extra={"vendor_flag": 1},
    )
    assert_type(patch.name, str | None | Unset)
    assert patch.segment_id is UNSET
    assert_type(patch.to_dict(), dict[str, Any])
    assert_type(CustomerPatch.from_dict({"name": None}), CustomerPatch)
    async with Client("dualentry", token="t", rate_limit=RateLimit(burst=50, per_second=5)) as de:
        customer = await de.update(1234, patch)
        assert_type(customer, Customer)
        assert_type(customer.updated_at, dt.datetime | None)
        try:
            await de.update(1, CustomerPatch(phone=None))
        except UnknownCustomFieldError as e:
            assert_type(e.names, tuple[str, ...])
        except ProviderError as e:
            assert_type(e.status, int)
        except ValidationError as e:
            for problem in e.problems:
                assert_type(problem.field, str)


async def bulk(updates: list[tuple[int, CustomerPatch]]) -> None:
    def on_progress(progress: Progress) -> None:
        assert_type(progress.total, int | None)

    async with Client("qwoty", token="t", retry=RetryPolicy(attempts=3), rate_limit=None) as q:
        report = await q.update_many(updates, concurrency=16, progress=on_progress)
        assert_type(report, BulkReport)
        assert_type(report.failed, list[UpdateResult])
        stream = q.iter_updates(updates)
        assert_type(stream, AsyncGenerator[UpdateResult, None])
        async for result in stream:
            assert_type(result.ok, bool)
            assert_type(result.error, Exception | None)


def plugins() -> None:
    adapter = customer_patch.get_adapter("qwoty")
    fake_cls = fake_for(adapter)
    assert_type(fake_cls, type[FakeProvider])
    fake = fake_cls(faults=Faults.parse("500=0.1"))
    assert_type(fake.seed_demo(3), list[Any])
    register_adapter("acme", "customer_patch_qwoty:QwotyAdapter")
    assert_type(customer_patch.available_adapters(), list[str])
