"""A careless caller's arguments: refused at once, with the parameter named,
before anything is sent (not a TypeError from deep inside, nor a run that
fails record by record, nor a value quietly read as something else)."""

import math

import aiohttp
import pytest

from customer_patch import Client, CustomerPatch, RateLimit, RetryPolicy
from customer_patch.testing import MockTransport

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
            r"^timeout must be a finite number of seconds above 0, got None$",
        ),
        ({"timeout": NAN}, ValueError, "^timeout must be"),
        ({"timeout": INF}, ValueError, "^timeout must be"),
        ({"timeout": "30"}, ValueError, "^timeout must be"),
        ({"timeout": True}, ValueError, "^timeout must be"),
        # aiohttp reads a limit of 0 as "no limit at all".
        (
            {"max_connections": 0},
            ValueError,
            r"^max_connections must be a whole number of at least 1, got 0$",
        ),
        ({"max_connections": -1}, ValueError, "^max_connections must be"),
        ({"max_connections": 2.5}, ValueError, "^max_connections must be"),
        ({"max_connections": True}, ValueError, "^max_connections must be"),
        ({"max_connections": None}, ValueError, "^max_connections must be"),
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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attempts": 2.5}, r"^attempts must be a whole number of at least 1, got 2.5$"),
        ({"attempts": True}, "^attempts must be a whole number"),
        ({"attempts": "3"}, "^attempts must be a whole number"),
        ({"attempts": 0}, "^attempts must be a whole number"),
        (
            {"timeout": INF},
            r"^timeout must be a finite number of seconds above 0 or None, got inf$",
        ),
        ({"timeout": True}, "^timeout must be"),
        ({"timeout": "3"}, "^timeout must be"),
        ({"timeout": NAN}, "^timeout must be"),
        # A wait of forever, with no budget to end it: a run that hangs on one 500.
        ({"wait_max": INF}, r"^wait_max must be a finite number of seconds above 0, got inf$"),
        ({"wait_initial": INF}, "^wait_initial must be"),
        ({"wait_initial": "1"}, "^wait_initial must be"),
        (
            {"max_retry_after": INF},
            r"^max_retry_after must be a finite number of seconds, 0 or more, got inf$",
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
    ({"before_write": 5}, TypeError, r"^before_write must be callable or None, got 5$"),
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
