"""The real client against the fake providers over loopback HTTP."""

import datetime as dt
import json
import shlex
import time

import aiohttp
import pytest

from customer_patch import (
    AuthenticationError,
    CustomerPatch,
    ExternalIds,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    RateLimit,
    RateLimitedError,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    TaxId,
    TransportError,
    UnknownCustomFieldError,
    get_adapter,
)
from customer_patch.sandbox import FakeProvider, Faults, fake_for
from tests import seeds

FAST = {"limits": (), "rate_limit": None}  # no limits on either side, for speed


async def test_qwoty_seed_example_end_to_end(sandbox):
    """The page's update, through the client, of the page's customer."""
    sb = await sandbox("qwoty")
    sb.fake.seed_examples()
    sb.fake.customers[seeds.QWOTY_CUSTOMER_ID]["tax_ids"] = [{"tax": "VAT", "tax_value": "OLD"}]
    customer = await sb.client.update(
        seeds.QWOTY_CUSTOMER_ID,
        CustomerPatch(name="Acme Corp (Renamed)", tax_ids=[TaxId("VAT", "FR98765432100")]),
    )
    page = json.loads(seeds.QWOTY_RESPONSE)["data"]
    assert customer.name == page["name"]
    assert customer.external_ids.crm == page["id_crm"]
    assert customer.created_at == dt.datetime.fromisoformat(page["created_at"])
    assert customer.updated_at > customer.created_at
    [request] = sb.fake.requests
    assert request.body == json.loads(seeds.QWOTY_REQUEST)
    stored = sb.fake.customers[seeds.QWOTY_CUSTOMER_ID]
    assert stored["tax_ids"] == [
        {"tax": "VAT", "tax_value": "FR98765432100"}
    ]  # replaced, not merged


def _curl(command, base_url):
    """The method, URL, headers and body of a ``curl`` command, its documented
    host swapped for ``base_url``."""
    words = shlex.split(command.replace("\\\n", " "))  # a line continued, as a shell reads it
    assert words[:3] == ["curl", "-X", "PATCH"]
    method, url, headers, body = words[2], words[3], {}, None
    rest = iter(words[4:])
    for flag in rest:
        value = next(rest)
        if flag == "-H":
            name, _, header = value.partition(": ")
            headers[name] = header
        else:
            assert flag == "-d", flag
            body = value
    return method, url.replace("https://qwoty.app/api", base_url), headers, body


async def test_the_qwoty_pages_curl_example_runs_as_written_and_answers_as_the_page_shows():
    """The page's command, its host swapped for the sandbox's, with the page's
    token (``customer-patch sandbox --token``): the page's answer, its
    ``updated_at`` aside (the time of the update)."""
    fake = fake_for(get_adapter("qwoty"))(token="qwoty_your_token", limits=())
    async with fake.running() as base:
        assert fake.seed_examples() == [seeds.QWOTY_CUSTOMER_ID]
        method, url, headers, body = _curl(seeds.QWOTY_CURL, base)
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, url, headers=headers, data=body.encode()) as response,
        ):
            status, answer = response.status, await response.json()
    page = json.loads(seeds.QWOTY_RESPONSE)
    assert status == 200
    assert dt.datetime.fromisoformat(answer["data"].pop("updated_at")) > dt.datetime.fromisoformat(
        answer["data"]["created_at"]
    )
    del page["data"]["updated_at"]
    assert answer == page
    stored = fake.customers[seeds.QWOTY_CUSTOMER_ID]
    assert stored["tax_ids"] == [{"tax": "VAT", "tax_value": "FR98765432100"}]


async def test_qwoty_null_unsets_and_empty_tax_ids_remove_all(sandbox):
    sb = await sandbox("qwoty", customers=1)
    [cid] = sb.ids
    sb.fake.customers[cid].update(
        logo="https://x.example/l.png", tax_ids=[{"tax": "VAT", "tax_value": "1"}]
    )
    await sb.client.update(
        cid, CustomerPatch(logo=None, tax_ids=[], external_ids=ExternalIds(crm=None))
    )
    stored = sb.fake.customers[cid]
    assert (stored["logo"], stored["tax_ids"], stored["id_crm"]) == (None, [], None)
    assert stored["name"] == "Demo Customer 1"  # untouched


@pytest.mark.parametrize(("patch", "literal"), seeds.dualentry_examples())
async def test_dualentry_seed_examples_end_to_end(sandbox, patch, literal):
    sb = await sandbox("dualentry", **FAST)
    sb.fake.add(id=1234, name="Acme")
    customer = await sb.client.update(1234, patch)
    [request] = [r for r in sb.fake.requests if r.method == "PATCH"]
    assert request.path == "/public/v2/customers/1234/"
    assert request.body == json.loads(literal)
    for path, value in patch.set_fields():
        if path == "custom_fields":
            for key, v in value.items():
                assert customer.custom_fields[key if key != 42 else "Partner Name"] == v
        else:
            assert getattr(customer, path) == value


async def test_dualentry_custom_fields_mixed_by_name_and_id(sandbox):
    sb = await sandbox("dualentry", customers=1, **FAST)
    [cid] = sb.ids
    customer = await sb.client.update(
        cid, CustomerPatch(custom_fields={"Partner": True, 44: "EMEA", 45: "North"})
    )
    # Two fields share the name "Region": the result keys them by id.
    assert customer.custom_fields["Partner"] is True
    assert (customer.custom_fields[44], customer.custom_fields[45]) == ("EMEA", "North")
    cleared = await sb.client.update(cid, CustomerPatch(custom_fields={"Partner": None}))
    assert cleared.custom_fields["Partner"] is None


async def test_dualentry_unknown_custom_field_is_a_422_and_changes_nothing(sandbox):
    sb = await sandbox("dualentry", customers=1, **FAST)
    [cid] = sb.ids
    before = json.dumps(sb.fake.customers[cid], sort_keys=True)
    with pytest.raises(UnknownCustomFieldError) as info:
        await sb.client.update(
            cid, CustomerPatch(name="New", custom_fields={"Partner": True, "Nope": 1})
        )
    assert info.value.names == ("Nope",)
    assert info.value.status == 422
    assert json.dumps(sb.fake.customers[cid], sort_keys=True) == before


async def test_dualentry_clearing_an_unknown_custom_field_is_a_422_even_when_compared(sandbox):
    """Unchecked by the client, compared with the read first: the name the read
    does not show is sent, and DualEntry's 422 names it, never "unchanged"."""
    sb = await sandbox("dualentry", customers=1, check_custom_fields=False, **FAST)
    [cid] = sb.ids
    report = await sb.client.update_many(
        [(cid, CustomerPatch(custom_fields={"Nope": None}))], skip_unchanged=True
    )
    [result] = report.results
    assert isinstance(result.error, UnknownCustomFieldError)
    assert result.error.names == ("Nope",)


async def test_dualentry_addresses_get_their_defaults(sandbox):
    from customer_patch import Address

    sb = await sandbox("dualentry", customers=1, **FAST)
    [cid] = sb.ids
    customer = await sb.client.update(
        cid,
        CustomerPatch(
            shipping_address=Address(
                street="1 Main", city="Lyon", postal_code="69001", country="FR"
            )
        ),
    )
    assert customer.shipping_address == Address(
        street="1 Main", city="Lyon", postal_code="69001", country="FR"
    )
    assert sb.fake.customers[cid]["shipping_address"]["second_line"] == ""


async def test_dualentry_v1_paths_work(sandbox):
    from customer_patch_dualentry import DualEntryAdapter

    sb = await sandbox(DualEntryAdapter(api_version="v1"), customers=1, **FAST)
    await sb.client.update(sb.ids[0], CustomerPatch(name="v1"))
    assert sb.fake.requests[0].path.startswith("/public/v1/customers/")


async def test_wrong_credentials(sandbox):
    q = await sandbox("qwoty", customers=1)
    de = await sandbox("dualentry", customers=1, **FAST)
    from customer_patch import Client

    async with Client("qwoty", token="wrong", base_url=q.base_url) as bad:
        with pytest.raises(AuthenticationError, match="Invalid API token"):
            await bad.update(q.ids[0], CustomerPatch(name="x"))
    async with Client("dualentry", token="wrong", base_url=de.base_url, rate_limit=None) as bad:
        with pytest.raises(PermissionDeniedError):
            await bad.update(de.ids[0], CustomerPatch(name="x"))
    async with (
        aiohttp.ClientSession() as s,
        s.patch(f"{de.base_url}/public/v2/customers/{de.ids[0]}/", json={}) as r,
    ):
        assert r.status == 401  # no key at all


async def test_the_fake_answers_get_for_stored_state(sandbox):
    sb = await sandbox("dualentry", customers=1, **FAST)
    await sb.client.update(sb.ids[0], CustomerPatch(email="a@b.example"))
    headers = {"X-API-KEY": "sandbox-token"}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{sb.base_url}/public/v2/customers/{sb.ids[0]}/", headers=headers) as r,
    ):
        assert (await r.json())["email"] == "a@b.example"


async def test_documented_rate_limits_are_enforced_and_paced_to(sandbox):
    limits = (RateLimit(burst=3, per_second=20), RateLimit(burst=50, per_second=100))
    unpaced = await sandbox("dualentry", customers=12, limits=limits, rate_limit=None)
    report = await unpaced.client.update_many([(i, CustomerPatch(name="x")) for i in unpaced.ids])
    assert len(report.succeeded) == 12  # 429s were retried after Retry-After
    assert unpaced.fake.answered_429 > 0

    # Paced at half the rate.  This fake shares the client's loop, so a block
    # of the loop can still hand it a request late, together with the next
    # ones the pacer lets go; at half the rate its burst of 3 holds them,
    # whatever the scheduling.  Pacing at exactly the documented limit is
    # proven in virtual time, blocked loops included
    # (test_requests_held_by_a_stalled_loop_leave_at_the_pace_not_all_at_once).
    paced = await sandbox(
        "dualentry", customers=12, limits=limits, rate_limit=RateLimit(burst=1, per_second=10)
    )
    report = await paced.client.update_many([(i, CustomerPatch(name="x")) for i in paced.ids])
    assert len(report.succeeded) == 12
    assert paced.fake.answered_429 == 0


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("429", RateLimitedError),
        ("500", ServerError),
        ("503", ServerError),
        ("drop", TransportError),
        ("truncate", TransportError),
        ("garbage", ResponseFormatError),
        ("false_success", ProviderError),
    ],
)
async def test_each_fault_kind_gives_its_typed_error(sandbox, kind, error):
    sb = await sandbox(
        "qwoty", customers=1, faults=Faults(rates={kind: 1.0}, retry_after=0), retry=None
    )
    with pytest.raises(error) as info:
        await sb.client.update(sb.ids[0], CustomerPatch(name="x"))
    assert type(info.value) is error
    assert sb.fake.injected[kind] == 1


@pytest.mark.parametrize("kind", ["429", "500", "503", "drop", "truncate", "garbage"])
async def test_transient_faults_are_retried_to_success(sandbox, kind):
    faults = Faults(rates={kind: 0.3}, retry_after=0, seed=1)
    # Ten attempts: at 30% faults, five would leave an honest failure in a few runs.
    sb = await sandbox(
        "dualentry",
        customers=40,
        faults=faults,
        limits=(),
        rate_limit=None,
        retry=RetryPolicy(attempts=10),
    )
    report = await sb.client.update_many(
        [(i, CustomerPatch(name=f"N{i}")) for i in sb.ids], concurrency=8
    )
    assert not report.failed
    assert sb.fake.injected[kind] > 0
    assert all(sb.fake.customers[i]["name"] == f"N{i}" for i in sb.ids)


async def test_latency_is_added(sandbox):
    sb = await sandbox("qwoty", customers=1, faults=Faults(latency=0.2))
    started = time.monotonic()
    await sb.client.update(sb.ids[0], CustomerPatch(name="x"))
    assert time.monotonic() - started >= 0.2


async def test_a_hanging_provider_is_bounded_by_the_timeout(sandbox):
    sb = await sandbox("qwoty", customers=1, faults=Faults(hang=True), timeout=0.3, retry=None)
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"within 0\.3"):
        await sb.client.update(sb.ids[0], CustomerPatch(name="x"))
    assert time.monotonic() - started < 2


def test_faults_parse_and_reject_nonsense():
    faults = Faults.parse("latency=0.05,429=0.05,500=0.1,drop=0.02,seed=7,retry_after=2")
    assert faults.latency == 0.05
    assert faults.rates == {"429": 0.05, "500": 0.1, "drop": 0.02}
    assert (faults.seed, faults.retry_after) == (7, 2)
    with pytest.raises(ValueError, match="unknown fault"):
        Faults.parse("teapot=0.1")
    with pytest.raises(ValueError, match="add up"):
        Faults.parse("500=0.7,503=0.7")
    with pytest.raises(ValueError, match="key=value"):
        Faults.parse("latency")


async def test_a_sandbox_whose_client_options_are_refused_leaves_no_fake_running(
    sandbox, monkeypatch
):
    """sandbox() started the fake, then the client refused an option: the fake
    was never stopped (the fixture kept only what it had returned)."""
    started, stopped = [], []
    start, stop = FakeProvider.start, FakeProvider.stop

    async def starting(self, **kwargs):
        started.append(self)
        return await start(self, **kwargs)

    async def stopping(self):
        stopped.append(self)
        await stop(self)

    monkeypatch.setattr(FakeProvider, "start", starting)
    monkeypatch.setattr(FakeProvider, "stop", stopping)
    with pytest.raises(ValueError, match="timeout"):
        await sandbox("dualentry", customers=1, timeout=-1)
    assert len(started) == 1
    assert stopped == started


@pytest.mark.parametrize("kind", ["garbage", "truncate"])
async def test_a_fault_that_spoils_successes_only_is_counted_when_it_spoils_one(sandbox, kind):
    """garbage and truncate change a success's answer; drawn for a 404, the 404
    went out as it was, and the fake counted the fault all the same."""
    sb = await sandbox("dualentry", customers=1, faults=Faults(rates={kind: 1.0}), retry=None)
    for _ in range(3):
        with pytest.raises(NotFoundError):
            await sb.client.update(999_999, CustomerPatch(name="x"))
    assert sb.fake.injected[kind] == 0
    with pytest.raises((ResponseFormatError, TransportError)):  # not JSON, or cut short
        await sb.client.update(sb.ids[0], CustomerPatch(name="x"))
    assert sb.fake.injected[kind] == 1
