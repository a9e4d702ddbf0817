"""The real client against Prism, a mock server that someone else wrote.

Prism (``@stoplight/prism-cli``) serves DualEntry's OpenAPI document (our
facts-only copy) and, with ``--errors``, answers any request the document
does not allow with a 422 naming the violation in an ``sl-violations`` header.
Every patch of the contract set must be accepted and its answer read into a
``Customer``.  ``bash .ci/run`` installs Prism under ``.ci/node/``; to run this
module locally, see CONTRIBUTING.md.  Skipped, saying why, only when neither
that install, ``prism`` nor ``npx`` is found; in CI (``CI=true``) it fails instead.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import aiohttp
import filelock
import pytest

from customer_patch import Client, Customer, CustomerPatch, ProviderError, Response
from customer_patch_dualentry import DualEntryAdapter
from tests.contract import PATCHES, SPEC_FILE, problems
from tests.helpers import DEID, alive, build

ROOT = Path(__file__).resolve().parents[1]
LOCAL_PRISM = ROOT / ".ci" / "node" / "node_modules" / ".bin" / "prism"
INSTALL = "npm install --prefix .ci/node @stoplight/prism-cli@5"
READY_WITHIN = 120.0  # seconds; npx may first have to download Prism


def prism_command() -> list[str] | None:
    if LOCAL_PRISM.exists():
        return [str(LOCAL_PRISM)]
    if found := shutil.which("prism"):
        return [found]
    if npx := shutil.which("npx"):
        return [npx, "--yes", "@stoplight/prism-cli@5"]
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_prism(folder: Path) -> tuple[str, int]:
    """``prism mock --errors`` serving the spec on 127.0.0.1: its base URL and
    process group, once it listens."""
    command = prism_command()
    if command is None:
        message = f"Prism not found (no .ci/node install, no prism, no npx): {INSTALL}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the Prism tests. {message}")
        pytest.skip(message)
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    # The one addition to the spec: an example id, so that Prism's answers
    # are about the customer asked for, as DualEntry's are (the client checks).
    spec = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    spec["components"]["schemas"]["CustomerSchemaOut"]["properties"]["id"]["examples"] = [DEID]
    (folder / "openapi.json").write_text(json.dumps(spec), encoding="utf-8")
    log = folder / "prism.log"
    args = ["mock", "--errors", "--seed", "customer-patch", "--host", "127.0.0.1"]
    args += ["--port", str(port), str(folder / "openapi.json")]
    with log.open("wb") as out:
        # Its own process group: npx starts Prism as a child, and both must stop.
        proc = subprocess.Popen(
            [*command, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    # Reaped here whoever stops it (another worker may): a child left unreaped
    # would still count as a member of its group.
    threading.Thread(target=proc.wait, daemon=True).start()
    deadline = time.monotonic() + READY_WITHIN
    try:
        while not listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PrismFailed(
                    f"Prism did not start on port {port}:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.1)
    except BaseException:  # a Ctrl-C too: never left running with no one to stop it
        stop_prism(proc.pid)
        raise
    return f"http://127.0.0.1:{port}", proc.pid


class PrismFailed(Exception):
    pass


def stop_prism(group: int) -> None:
    """Stop Prism's process group and wait until it has gone: SIGTERM, then
    SIGKILL if it is still there 10 s later."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 10
        try:
            os.killpg(group, signum)
            while time.monotonic() < deadline:
                time.sleep(0.05)
                os.killpg(group, 0)  # ProcessLookupError once every member has gone
        except ProcessLookupError:
            return


@pytest.fixture(scope="session")
def prism(tmp_path_factory):
    """The base URL of one Prism for the whole session, shared by the workers
    of pytest-xdist: starting it costs 3 to 4 s of CPU, once per worker before.
    The first worker to ask starts it, and a failure to start is kept, for the
    others to fail at once.  Each worker using it records its pid in the
    session's shared directory; the last to finish (of those still alive: a
    worker that crashed never finishes) stops it."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # no workers (or no xdist)
        try:
            url, group = start_prism(tmp_path_factory.mktemp("prism"))
        except PrismFailed as e:
            pytest.fail(str(e))
        yield url
        stop_prism(group)
        return
    shared = tmp_path_factory.getbasetemp().parent
    state = shared / "prism.json"

    def save(running: dict[str, object]) -> None:
        state.with_suffix(".part").write_text(json.dumps(running))
        state.with_suffix(".part").replace(state)  # whole, or as it was

    with filelock.FileLock(shared / "prism.lock"):
        running = json.loads(state.read_text()) if state.is_file() else None
        if running is None:
            try:
                url, group = start_prism(shared / "prism")
            except PrismFailed as e:
                save({"failed": str(e)})
                pytest.fail(str(e))
            running = {"url": url, "group": group, "users": []}
        if "failed" in running:
            pytest.fail(f"another worker could not start Prism: {running['failed']}")
        running["users"].append(os.getpid())
        save(running)
    yield running["url"]
    with filelock.FileLock(shared / "prism.lock"):
        running = json.loads(state.read_text())
        running["users"] = [pid for pid in running["users"] if pid != os.getpid() and alive(pid)]
        if running["users"]:
            save(running)
        else:
            state.unlink()
            stop_prism(running["group"])


@pytest.mark.parametrize("case", PATCHES)
async def test_prism_accepts_every_patch_and_its_answer_is_read(prism, case):
    # Prism answers the definitions with made-up names: the pre-flight check
    # of custom fields is the sandbox's to prove; here the PATCH contract is.
    async with Client(
        "dualentry", token="prism-key", base_url=prism, retry=None, check_custom_fields=False
    ) as client:
        try:
            customer = await client.update(DEID, PATCHES[case])
        except ProviderError as e:
            violations = e.headers.get("sl-violations", "(no sl-violations header)")
            pytest.fail(f"Prism refused {case!r} with {e.status}: {violations}")
    assert isinstance(customer, Customer)
    assert customer.id == DEID
    assert customer.created_at is not None  # the example's date-time was read


async def test_answers_made_up_from_the_schema_are_valid_and_read(prism):
    # Prism's dynamic mode (seeded, so the same each run) invents answers the
    # schema allows: nulls, custom fields of every type, odd strings, any id
    # (so they are read without the check that the id is the one asked for).
    adapter = DualEntryAdapter()
    patch = CustomerPatch(name="A")
    request = build(adapter, DEID, patch, base_url=prism, token="k")
    headers = {**request.headers, "Prefer": "dynamic=true"}
    async with aiohttp.ClientSession() as s:
        for _ in range(40):
            async with s.patch(request.url, data=request.body, headers=headers) as r:
                response = Response(status=r.status, headers=r.headers, body=await r.read())
            assert response.status == 200
            assert problems("CustomerSchemaOut", json.loads(response.body)) == []
            customer = adapter.parse_response(response, request=request)
            assert customer.raw == json.loads(response.body)


async def send_phone(prism: str, phone: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as s,
        s.patch(f"{prism}/public/v2/customers/1/", json={"phone": phone}) as r,
    ):
        return r.status, r.headers.get("sl-violations", "")


async def test_prism_refuses_what_the_spec_refuses(prism):
    # Without --errors Prism would accept anything, and the test above would prove nothing.
    status, violations = await send_phone(prism, "call me")
    assert status == 422
    assert '"phone"' in violations


# JavaScript (Prism) and Python disagree on these; the adapter must side with JavaScript.
@pytest.mark.parametrize(
    "space", ["\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\ufeff", "\xa0", "\u2028"]
)
async def test_the_adapter_checks_the_phone_pattern_as_javascript_does(prism, space):
    phone = f"+1{space}555"
    status, violations = await send_phone(prism, phone)
    assert status in (200, 422), violations
    prism_accepts = status == 200
    adapter_accepts = not DualEntryAdapter.fields["phone"].check(phone)
    assert adapter_accepts == prism_accepts
