import os
import signal
from types import SimpleNamespace

import aiohttp
import aioresponses.core
import pytest
from hypothesis import settings

from customer_patch import RetryPolicy

pytest_plugins = ["customer_patch.testing"]

# The suite starts about 90 Python processes (the CLI, the docs' examples),
# which inherit the environment set here:
# - an empty certificate store: importing aiohttp loads the system's for the
#   TLS contexts it makes at import (a sixth of such a process's CPU), and
#   they speak plain HTTP to 127.0.0.1 only.  The tests of TLS bring their
#   own certificates; an empty store could only refuse more.
# - bytecode: with PYTHONDONTWRITEBYTECODE set (as on these machines) each of
#   them compiled the package from source, 0.05-0.09 s of CPU a process.  It
#   is written where Python writes it by default, beside the sources (and
#   gitignored); a PYTHONPYCACHEPREFIX would disown the bytecode pip and the
#   interpreter installed, and a fresh machine's first processes compiled the
#   standard library and every dependency again (1.8 s of CPU for the first).
os.environ["SSL_CERT_FILE"] = os.devnull
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# The CLI keeps a signal that was ignored when it started ignored (nohup, a
# script's `&`), as documented, and the signal tests need it not ignored.  A
# suite started with SIGINT or SIGHUP ignored (a CI script's `&`, nohup) failed
# 17 of them.  It handles them instead, doing nothing, so it goes on as it
# would have; what it starts sees them at their default (exec resets a handler,
# not an ignored signal), and the CLI run in-process sees them not ignored.
for _signum in (signal.SIGINT, getattr(signal, "SIGHUP", signal.SIGINT)):  # none on Windows
    if signal.getsignal(_signum) is signal.SIG_IGN:
        signal.signal(_signum, lambda signum, frame: None)

# Property tests check values, never time.  Hypothesis's default deadline
# (200 ms an example, for examples that typically take 0-4 ms here) failed one
# in a fresh clone on a loaded machine, three workers on two cores, and
# passed on the rerun: a timing-dependent assertion, which no test may make.
settings.register_profile("customer-patch", deadline=None)
settings.load_profile("customer-patch")


# aioresponses fakes aiohttp itself: it is for the aiohttp transport's own tests
# (what AiohttpTransport asks aiohttp to send, how aiohttp's errors become
# TransportError).  Tests of the client's logic use customer_patch.testing's
# MockTransport instead, and need none of this.
#
# Why a shim: aioresponses 0.7.9 builds each mocked ClientResponse without the
# ``stream_writer`` argument aiohttp 3.14 requires, so every mocked request
# fails with a TypeError (pnuckowski/aioresponses#289, open).  A mocked
# response writes nothing, so a stand-in writer is enough.  Delete the class
# and the monkeypatch once an aioresponses release passes ``stream_writer``.
class _CompatResponse(aiohttp.ClientResponse):
    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(*args, **kwargs)


@pytest.fixture
def mocked(monkeypatch):
    """aioresponses, working with the aiohttp this project supports (see above)."""
    monkeypatch.setattr(aioresponses.core, "ClientResponse", _CompatResponse)
    with aioresponses.aioresponses() as m:
        yield m


@pytest.fixture(autouse=True)
def _no_retry_waits(request, monkeypatch):
    """Retries keep their count but skip their jittered waits, so tests stay fast.

    A ``Retry-After`` is still honoured; tests marked ``real_waits`` keep every wait.
    """
    if request.node.get_closest_marker("real_waits") is None:
        monkeypatch.setattr(RetryPolicy, "backoff", lambda self, retry_number: 0.0)


# The modules whose tests wait on other processes or on real time, first: the
# workers of pytest-xdist then end on the many short tests, together, rather
# than one of them running a 3 s test while the others have nothing left.
# (test_docs.py is not among them: its examples start with the session, and
# its tests wait for them, so it comes later.)
_LONG_FIRST = [
    "test_cli_signals.py",
    "test_cli_inputs.py",
    "test_cli.py",
    "test_cli_read.py",
    "test_client_promises.py",
    "test_sandbox.py",
    "test_prism.py",
]


@pytest.fixture(scope="session", autouse=True)
def _docs_examples_started(request, tmp_path_factory):
    """The docs' examples start as the session does (see tests/test_docs.py)."""
    if any(item.name.startswith("test_python_example_runs[") for item in request.session.items):
        from tests.test_docs import examples_folder, start_examples

        start_examples(examples_folder(tmp_path_factory))


def pytest_collection_modifyitems(items):
    rank = {name: n for n, name in enumerate(_LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
