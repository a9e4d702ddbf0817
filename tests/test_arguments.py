"""A careless caller's arguments: refused at once, with the parameter named,
before anything is sent (not a TypeError from deep inside, nor a run that
fails record by record, nor a value quietly read as something else)."""

import asyncio
import functools
import math
from unittest import mock

import aiohttp
import pytest

from customer_patch import (
    Client,
    CustomerPatch,
    ListFilter,
    RateLimit,
    Response,
    RetryPolicy,
    TransportError,
    ValidationError,
    WireField,
)
from customer_patch.sandbox import Faults
from customer_patch.testing import MockTransport
from customer_patch.wire import text
from customer_patch_dualentry._fake import DualEntryFake

from .helpers import TOKEN, drain, mock_client, ok_answer

NAN, INF = math.nan, math.inf


def client(**options):
    return Client("dualentry", token=TOKEN, **options)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        # A per-attempt timeout that is not a finite number of seconds: an
        # attempt that never times out (nan, inf) or a TypeError at the first send.
        (
            {"timeout": None},
            ValueError,
            r"^timeout must be a finite number of seconds above 0 and at most a day \(86400\), got None$",
        ),
        ({"timeout": NAN}, ValueError, "^timeout must be"),
        ({"timeout": INF}, ValueError, "^timeout must be"),
        ({"timeout": "30"}, ValueError, "^timeout must be"),
        ({"timeout": True}, ValueError, "^timeout must be"),
        # aiohttp reads a limit of 0 as "no limit at all".
        (
            {"max_connections": 0},
            ValueError,
            r"^max_connections must be a whole number of at least 1 or None, got 0$",
        ),
        ({"max_connections": -1}, ValueError, "^max_connections must be"),
        ({"max_connections": 2.5}, ValueError, "^max_connections must be"),
        ({"max_connections": True}, ValueError, "^max_connections must be"),
        ({"max_connections": "10"}, ValueError, "^max_connections must be"),
        # Sent as a header with every request: a line break would end it.
        (
            {"user_agent": "a\r\nX-Injected: 1"},
            ValueError,
            "^user_agent must not contain control characters",
        ),
        ({"user_agent": ""}, ValueError, "^user_agent must be a non-empty string or None"),
        ({"user_agent": 5}, ValueError, "^user_agent must be a non-empty string or None, got 5$"),
        ({"retry": 3}, TypeError, r"^retry must be a RetryPolicy or None, got 3$"),
        ({"retry": RetryPolicy}, TypeError, "^retry must be a RetryPolicy or None"),
        (
            {"rate_limit": 5},
            TypeError,
            r"^rate_limit must be a RateLimit, several, or None, got 5$",
        ),
        ({"rate_limit": "5/s"}, TypeError, "^rate_limit must be a RateLimit, several, or None"),
        ({"rate_limit": [RateLimit(5, 1.0), 3]}, TypeError, "^rate_limit must be"),
        # "no" is true: the check would run.
        (
            {"check_custom_fields": "no"},
            ValueError,
            r"^check_custom_fields must be True or False, got 'no'$",
        ),
        ({"check_custom_fields": None}, ValueError, "^check_custom_fields must be True or False"),
        ({"session": 5}, TypeError, r"^session must be an aiohttp.ClientSession or None, got 5$"),
        (
            {"transport": 5},
            TypeError,
            r"^transport must have async send\(\) and aclose\(\), got 5$",
        ),
    ],
)
def test_a_client_refuses_what_it_cannot_use(options, error, message):
    with pytest.raises(error, match=message):
        client(**options)


def test_the_arguments_a_client_takes_still_work():
    # The other side of each check: what the signature promises is accepted.
    kept = client(
        timeout=0.5,
        max_connections=1,
        user_agent="my-app/1.0 (ops@example.com)",
        retry=None,
        rate_limit=[RateLimit(5, 1.0), RateLimit(100, 10.0, per_route=True)],
        check_custom_fields=False,
    )
    assert kept.user_agent == "my-app/1.0 (ops@example.com)"
    client(rate_limit=RateLimit(5, 1.0))
    client(rate_limit=(RateLimit(5, 1.0),))
    client(rate_limit=None)
    client(timeout=30)  # an int is a number of seconds too
    client(transport=MockTransport(ok_answer))


async def test_a_client_takes_an_aiohttp_session():
    async with aiohttp.ClientSession() as session:
        client(session=session)
        client(session=session, max_connections=None)  # None: the built-in pool's default
    client(transport=MockTransport(ok_answer), max_connections=None)


async def test_timeout_bounds_each_attempt_through_a_transport_of_the_callers():
    """``timeout`` is the seconds an attempt may take, whatever sends it: with a
    transport of the caller's it was silently unused, and an attempt that never
    ended hung the update (no RetryPolicy budget here)."""
    never = asyncio.Event()

    async def silent(request):
        await never.wait()

    transport = MockTransport(silent)
    async with client(transport=transport, timeout=0.05, retry=None, rate_limit=None) as c:
        update = c.update(1001, CustomerPatch(name="x"))
        with pytest.raises(TransportError, match=r"^dualentry: no complete answer within 0.05s$"):
            await asyncio.wait_for(update, 20)  # a guard against a hang, not a timing
    assert len(transport.requests) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attempts": 2.5}, r"^attempts must be a whole number of at least 1, got 2.5$"),
        ({"attempts": True}, "^attempts must be a whole number"),
        ({"attempts": "3"}, "^attempts must be a whole number"),
        ({"attempts": 0}, "^attempts must be a whole number"),
        (
            {"timeout": INF},
            r"^timeout must be a finite number of seconds above 0 and at most a day \(86400\) or None, got inf$",
        ),
        ({"timeout": True}, "^timeout must be"),
        ({"timeout": "3"}, "^timeout must be"),
        ({"timeout": NAN}, "^timeout must be"),
        # A wait of forever, with no budget to end it: a run that hangs on one 500.
        (
            {"wait_max": INF},
            r"^wait_max must be a finite number of seconds above 0 and at most a day \(86400\), got inf$",
        ),
        ({"wait_initial": INF}, "^wait_initial must be"),
        ({"wait_initial": "1"}, "^wait_initial must be"),
        (
            {"max_retry_after": INF},
            r"^max_retry_after must be a finite number of seconds, 0 or more, and at most a day \(86400\), got inf$",
        ),
        ({"max_retry_after": -1}, "^max_retry_after must be"),
    ],
)
def test_a_retry_policy_refuses_what_it_cannot_use(options, message):
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**options)


def test_a_retry_policy_takes_what_it_promises():
    assert RetryPolicy(attempts=1, timeout=None, max_retry_after=0).attempts == 1
    assert RetryPolicy(timeout=10, wait_initial=1, wait_max=2).timeout == 10


def test_a_rate_limit_per_route_is_true_or_false():
    with pytest.raises(ValueError, match=r"^per_route must be True or False, got 'no'$"):
        RateLimit(5, 1.0, per_route="no")


BULK_MISTAKES = [
    (
        {"concurrency": "8"},
        ValueError,
        r"^concurrency must be a whole number of at least 1, got '8'$",
    ),
    (
        {"max_failures": 2.5},
        ValueError,
        r"^max_failures must be a whole number of at least 1 or None, got 2.5$",
    ),
    ({"max_failures": True}, ValueError, "^max_failures must be"),
    ({"max_failures": "3"}, ValueError, "^max_failures must be"),
    ({"max_failures": NAN}, ValueError, "^max_failures must be"),
    ({"max_consecutive_failures": 2.5}, ValueError, "^max_consecutive_failures must be"),
    ({"max_consecutive_failures": "3"}, ValueError, "^max_consecutive_failures must be"),
    ({"total": -1}, ValueError, r"^total must be a whole number of at least 0 or None, got -1$"),
    ({"total": "3"}, ValueError, "^total must be"),
    ({"total": 2.5}, ValueError, "^total must be"),
    # Called after the first record is sent: a TypeError then ends the run midway.
    ({"progress": 5}, TypeError, r"^progress must be callable or None, got 5$"),
    ({"skip_unchanged": "no"}, ValueError, r"^skip_unchanged must be True or False, got 'no'$"),
    ({"skip_unchanged": None}, ValueError, "^skip_unchanged must be True or False"),
    (
        {"before_write": 5, "skip_unchanged": True},
        TypeError,
        r"^before_write must be callable or None, got 5$",
    ),
]
# A plan takes what paces and reports a run, nothing about writing or stopping.
PLAN_MISTAKES = [m for m in BULK_MISTAKES if set(m[0]) <= {"concurrency", "total", "progress"}]


@pytest.mark.parametrize(
    ("method", "options", "error", "message"),
    [("update_many", *m) for m in BULK_MISTAKES]
    + [("iter_updates", *m) for m in BULK_MISTAKES]
    + [("iter_plan", *m) for m in PLAN_MISTAKES],
)
async def test_a_bulk_run_refuses_its_arguments_before_anything_is_sent(
    method, options, error, message
):
    transport = MockTransport(ok_answer)
    async with mock_client(transport) as c:
        updates = [(1, CustomerPatch(name="Acme"))]
        with pytest.raises(error, match=message):
            if method == "update_many":
                await c.update_many(updates, **options)
            else:
                await drain(getattr(c, method)(updates, **options))
    assert transport.requests == []


# -- a second pass: the hooks a run calls, huge waits, strings where a URL goes ----------


async def test_extra_that_is_not_a_mapping_is_a_validation_error_of_that_record_alone():
    # It failed deep in the adapter (AttributeError); with skip_unchanged it
    # ended the whole run after the records before it were sent.
    transport = MockTransport(ok_answer)
    bad = CustomerPatch(name="x", extra=[("zz", 1)])  # type: ignore[arg-type]
    async with mock_client(transport) as c:
        with pytest.raises(ValidationError, match="extra: must be a mapping"):
            c.prepare(1, bad)
        report = await c.update_many(
            [(1, CustomerPatch(name="a")), (2, bad), (3, CustomerPatch(name="c"))]
        )
    assert [r.index for r in report.failed] == [1]
    assert isinstance(report.failed[0].error, ValidationError)
    assert [r.index for r in report.succeeded] == [0, 2]


async def test_before_write_without_a_read_is_refused():
    # Called with the customer as read: with nothing read it was never called,
    # and the undo record the caller asked for was silently not written.
    async with mock_client(MockTransport(ok_answer)) as c:
        with pytest.raises(ValueError, match="before_write needs skip_unchanged=True or match_on"):
            await c.update_many([(1, CustomerPatch(name="a"))], before_write=lambda *a: None)


async def test_hooks_that_cannot_take_their_arguments_are_refused_before_anything_is_sent():
    async def later(*args):  # a coroutine function: it would never be awaited
        return None

    transport = MockTransport(ok_answer)
    async with mock_client(transport) as c:
        updates = [(1, CustomerPatch(name="a"))]
        with pytest.raises(TypeError, match=r"^progress must take one argument \(a Progress\)"):
            await c.update_many(updates, progress=lambda: None)
        with pytest.raises(
            TypeError, match=r"^progress must be a plain function, not a coroutine function"
        ):
            await c.update_many(updates, progress=later)
        with pytest.raises(
            TypeError, match=r"^before_write must be a plain function, not a coroutine"
        ):
            await c.update_many(updates, skip_unchanged=True, before_write=later)
        with pytest.raises(TypeError, match=r"^before_write must take three arguments"):
            await c.update_many(
                updates, skip_unchanged=True, before_write=lambda customer_id: None
            )
    assert transport.requests == []


@pytest.mark.parametrize("name", ["wait_initial", "wait_max", "max_retry_after", "timeout"])
@pytest.mark.parametrize("value", [1e9, 10**400])
def test_a_retry_policy_waits_at_most_a_day(name, value):
    # 1e9 seconds is a hang with another name; 10**400 overflowed a float.
    with pytest.raises(
        ValueError, match=rf"^{name} must be a finite number of seconds.* and at most a day"
    ):
        RetryPolicy(**{name: value})


@pytest.mark.parametrize("value", [10**400, 1e9])
def test_a_client_timeout_of_more_than_a_day_is_refused(value):
    with pytest.raises(ValueError, match=r"^timeout must be a finite number of seconds"):
        client(timeout=value)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8080/\n",
        " http://127.0.0.1:8080",
        "http://127.0.0.1:8080\t",
        "http://127.0.0.1:8080 ",
    ],
)
def test_a_base_url_with_whitespace_is_refused(base_url):
    # urlsplit drops a tab or a line break, so the checks passed, and the URL
    # kept them: requests went to '////public/...'.
    with pytest.raises(
        ValueError, match=r"^base_url must not contain whitespace or control characters"
    ):
        client(base_url=base_url)


def test_a_token_passed_where_another_argument_goes_is_not_echoed():
    with pytest.raises(ValueError) as info:
        Client("dualentry", token="https://api.dualentry.com", base_url=TOKEN)
    assert TOKEN not in str(info.value)
    with pytest.raises(Exception) as info:  # any error, as long as it is quiet
        Client(TOKEN, token=TOKEN)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"transport": MockTransport}, TypeError, "^transport must be an instance"),
        ({"registry": "x"}, TypeError, "^registry must be an AdapterRegistry or None"),
        (
            {"rate_limit": []},
            ValueError,
            "^rate_limit must hold at least one RateLimit; None turns pacing off",
        ),
        (
            {"session": "placeholder", "transport": MockTransport(ok_answer)},
            ValueError,
            "^session and transport: give one",
        ),
        # The pool it sizes is the one the client opens: with a session or a
        # transport of the caller's, there is none, and the limit was dropped.
        (
            {"transport": MockTransport(ok_answer), "max_connections": 5},
            ValueError,
            r"^max_connections sizes the connection pool the client opens; with transport= "
            r"or session=, the pool is yours to size$",
        ),
        (
            {"session": "placeholder", "max_connections": 5},
            ValueError,
            "^max_connections sizes the connection pool the client opens",
        ),
    ],
)
async def test_a_client_refuses_more_mistakes(options, error, message):
    if options.get("session") == "placeholder":
        async with aiohttp.ClientSession() as session:
            with pytest.raises(error, match=message):
                client(**{**options, "session": session})
        return
    with pytest.raises(error, match=message):
        client(**options)


def test_a_rate_limit_per_second_is_not_a_flag():
    with pytest.raises(ValueError, match=r"^per_second must be a finite rate"):
        RateLimit(10, True)


async def test_refresh_is_true_or_false():
    async with mock_client(MockTransport(ok_answer)) as c:
        with pytest.raises(ValueError, match=r"^refresh must be True or False, got 'no'$"):
            await c.custom_field_definitions(refresh="no")


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        (None, "^updates must be an iterable of"),
        (5, "^updates must be an iterable of"),
        ({1: CustomerPatch(name="a")}, r"^updates must be .* not a dict: pass its \.items\(\)"),
    ],
)
async def test_updates_of_the_wrong_kind_are_refused_naming_them(updates, message):
    async with mock_client(MockTransport(ok_answer)) as c:
        with pytest.raises(TypeError, match=message):
            await c.update_many(updates)


async def test_match_on_must_be_a_name():
    async with mock_client(MockTransport(ok_answer)) as c:
        with pytest.raises(
            ValueError, match=r"^match_on must be a string or None, got \['unique_id'\]$"
        ):
            await c.update_many([], match_on=["unique_id"])


async def test_a_mock_transport_handler_must_answer_with_a_response():
    async with mock_client(MockTransport(lambda request: {"id": 1})) as c:
        with pytest.raises(
            TypeError, match=r"^the MockTransport handler must return a Response, got dict"
        ):
            await c.update(1, CustomerPatch(name="a"))


@pytest.mark.parametrize("status", ["200", 99, 1000, True])
async def test_a_mock_transport_handler_answers_with_an_http_status(status):
    async with mock_client(MockTransport(lambda request: Response(status=status))) as c:
        with pytest.raises(
            ValueError,
            match=r"Response.status must be a whole number of at least 100 and at most 999",
        ):
            await c.update(1, CustomerPatch(name="a"))


# -- the sandbox's own arguments ----------------------------------------------------------


def test_a_fake_takes_one_rate_limit_as_a_client_does():
    # A RateLimit alone answered every request with a 500 (not iterable).
    fake = DualEntryFake(limits=RateLimit(5, 1.0))
    assert fake.limits == (RateLimit(5, 1.0),)
    with pytest.raises(TypeError, match=r"^limits must be a RateLimit, several, or None"):
        DualEntryFake(limits=5)
    with pytest.raises(TypeError, match=r"^faults must be a Faults or None, got '500=0.1'$"):
        DualEntryFake(faults="500=0.1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"rates": {"500": NAN}},
            r"^fault rates must be numbers from 0 to 1 and add up to at most 1",
        ),
        ({"rates": {"500": "0.1"}}, r"^fault rates must be numbers from 0 to 1"),
        ({"latency": "1"}, r"^latency must be a finite number of seconds, 0 or more"),
        ({"latency": INF}, r"^latency must be a finite number of seconds"),
        ({"hang": "no"}, r"^hang must be True or False, got 'no'$"),
        ({"retry_after": -1}, r"^retry_after must be a whole number of at least 0"),
        ({"seed": "x"}, r"^seed must be a whole number or None"),
        (
            {"retry_after": 10**6},
            r"^retry_after must be a whole number of at least 0 and at most 86400",
        ),
    ],
)
def test_faults_refuse_what_they_cannot_use(options, message):
    with pytest.raises(ValueError, match=message):
        Faults(**options)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("500=abc", r"^--faults 500=abc: expected a number from 0 to 1"),
        ("seed=x", r"^--faults seed=x: expected a whole number"),
        ("hang=maybe", r"^--faults hang=maybe: expected true or false"),
        ("latency=x", r"^--faults latency=x: expected a number of seconds"),
    ],
)
def test_a_faults_spec_names_the_part_it_cannot_read(spec, message):
    with pytest.raises(ValueError, match=message):
        Faults.parse(spec)


def test_a_faults_spec_reads_every_form_it_documents():
    faults = Faults.parse(
        "latency=0.05,429=0.05,500=0.1,drop=0.02,seed=7,hang=false,retry_after=2"
    )
    assert faults == Faults(
        latency=0.05, rates={"429": 0.05, "500": 0.1, "drop": 0.02}, seed=7, retry_after=2
    )
    assert Faults.parse("hang=true").hang is True
    # The words click reads as a flag, as this option read them before.
    words = ("1", "yes", "on", "0", "no", "off")
    assert [Faults.parse(f"hang={w}").hang for w in words] == [True] * 3 + [False] * 3
    assert Faults(seed=-1).seed == -1  # random.Random takes any integer


# -- what an adapter's author declares ----------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        # One string is a collection of its characters: "ab" was "one of 'abc'".
        (
            lambda: text(choices="abc"),
            TypeError,
            r"^choices must be a collection of strings, not one string",
        ),
        (
            lambda: ListFilter(wire="x", choices="abc"),
            TypeError,
            r"^choices must be a collection of strings",
        ),
        (
            lambda: ListFilter(wire="x", many="no"),
            ValueError,
            r"^many must be True or False, got 'no'$",
        ),
        (
            lambda: WireField(wire="x", nullable="no"),
            ValueError,
            r"^nullable must be True or False, got 'no'$",
        ),
        (lambda: WireField(wire=5), ValueError, r"^wire must be a non-empty string, got 5$"),
        (lambda: WireField(wire=""), ValueError, r"^wire must be a non-empty string, got ''$"),
        (lambda: WireField(wire="x", check=5), TypeError, r"^check must be callable"),
        (lambda: WireField(wire="x", decode="str"), TypeError, r"^decode must be callable"),
    ],
)
def test_an_adapter_declaration_refuses_what_it_cannot_use(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_choices_still_take_any_collection_of_strings():
    assert text(choices=("a", "b"))("a") == []
    assert text(choices=frozenset({"a"}))("b")
    assert ListFilter(wire="x", choices=frozenset({"a"})).check("a") == []


# -- what a careful reviewer found the checks refusing wrongly ------------------------------


def _on_progress(progress):
    return None


@pytest.mark.parametrize(
    "hook",
    [
        # Users' tests pass mocks; one made with a spec passes for a function.
        mock.Mock(spec=_on_progress),
        mock.MagicMock(spec=_on_progress),
        mock.create_autospec(_on_progress),
        mock.Mock(),
        functools.partial(lambda prefix, progress: None, "p"),
        print,
    ],
)
async def test_hooks_that_can_be_called_so_are_taken(hook):
    async with mock_client(MockTransport(ok_answer)) as c:
        report = await c.update_many([(1, CustomerPatch(name="a"))], progress=hook)
    assert not report.failed


async def test_a_decorated_hook_is_judged_by_its_own_signature():
    calls = []

    def counting(f):
        @functools.wraps(f)
        def wrapper(*args):  # takes what the run gives
            calls.append(args)
            return f(*args)

        return wrapper

    async with mock_client(MockTransport(ok_answer)) as c:
        await c.update_many([(1, CustomerPatch(name="a"))], progress=counting(lambda p: None))
    assert len(calls) == 1


async def test_a_class_as_a_hook_is_judged_by_its_constructor():
    class Seen:
        def __init__(self, progress):
            self.progress = progress

        async def __call__(self):  # its instances' business, not the hook's
            return None

    async with mock_client(MockTransport(ok_answer)) as c:
        assert not (await c.update_many([(1, CustomerPatch(name="a"))], progress=Seen)).failed


@pytest.mark.parametrize(
    "option", ["rate_limit", "registry", "retry", "session", "transport", "timeout"]
)
def test_a_token_passed_as_any_argument_is_not_quoted(option):
    with pytest.raises((TypeError, ValueError)) as info:
        client(**{option: TOKEN})
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(vars(info.value))


def test_a_token_given_as_the_adapter_name_is_masked_in_the_error_it_keeps():
    with pytest.raises(Exception) as info:  # any error, as long as it is quiet
        Client(TOKEN, token=TOKEN)
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(vars(info.value))


def test_a_user_agent_that_holds_the_token_is_refused():
    # Sent with every request, in a header no one masks.
    with pytest.raises(ValueError, match=r"^user_agent must not contain the token"):
        client(user_agent=f"my-app {TOKEN}")


def test_a_short_token_does_not_garble_the_errors():
    with pytest.raises(ValueError) as info:
        Client("dualentry", token="test", base_url="http://api.test.internal/v1")
    assert "api.test.internal" in str(info.value)


def test_whole_numbers_and_seconds_of_other_numeric_types_are_taken():
    from fractions import Fraction

    class Count:  # an integer type of its own, as numpy's are
        def __index__(self):
            return 4

    assert RetryPolicy(attempts=Count(), timeout=Fraction(1, 2)).timeout == Fraction(1, 2)
