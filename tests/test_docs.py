"""The documentation cannot rot: its examples run, its tables match the code,
and the site builds with warnings as errors.

Every fenced ``python`` block in ``docs/**/*.md`` runs as a script of its own,
in a process of its own (forked from one that has imported the library once),
behind an audit hook that refuses any connection that is not to a loopback
address.  A block defining ``test_*`` functions runs under
pytest instead, with the ``customer_patch.testing`` plugin enabled, as the
testing page tells readers to do.  When a ``text`` or ``json`` block follows a
python block with nothing but blank lines between them, it is the block's
output, and stdout must match it exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs
import filelock
import pytest

import customer_patch
from customer_patch import get_adapter
from tests.helpers import alive

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)

# Python must go in plain ```python fences, where the test below finds it;
# any other tag that would highlight as Python is refused, so no example can
# escape being run.  Anything that is not meant to run uses one of these.
LANGUAGES = {
    "python",
    "text",
    "json",
    "console",
    "toml",
    "{eval-rst}",
    "{toctree}",
    "{include}",
}

FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")


@attrs.frozen
class Block:
    page: Path
    line: int  # of the opening fence, from 1
    language: str
    code: str
    output: str | None = None  # the text/json block that follows, if any

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(DOCS)}:{self.line}"

    @property
    def is_pytest(self) -> bool:
        return re.search(r"^(async )?def test_", self.code, re.MULTILINE) is not None


def fenced_blocks(page: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    last_end: int | None = None  # line index just after the last python block
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, info = match.groups()
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].strip() == fence),
            None,
        )
        assert end is not None, f"{page}:{i + 1}: unclosed code fence"
        language = info.strip().split(" ")[0] if info.strip() else ""
        code = "\n".join(lines[i + 1 : end]) + "\n"
        follows_python = (
            last_end is not None
            and blocks
            and blocks[-1].language == "python"
            and all(not line.strip() for line in lines[last_end:i])
        )
        if follows_python and language in ("text", "json"):
            blocks[-1] = attrs.evolve(blocks[-1], output=code)
        blocks.append(Block(page, i + 1, language, code))
        last_end = end + 1 if language == "python" else None
        i = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language == "python"]

# One process imports the library (a third of a second of CPU each time) and
# forks a child per example, a few at a time.  It imports `customer_patch`
# and nothing more, so a child starts as an example that imports it first
# does: an example using a module it never imported fails here as by hand
# (a preloaded `customer_patch.sandbox` would be bound on the package).  A
# child is a process of its own, as a script run by hand is: its own module
# namespace (a missing import still fails), its own cwd, files for its stdout and
# stderr, and the interpreter's normal exit, where "Unclosed" warnings are
# written.  Before running its example, a child installs an audit hook that
# lets it reach loopback only: the docs promise that examples start whatever
# server they talk to on 127.0.0.1, and this keeps that promise checked.
ZYGOTE = r"""
import ipaddress, json, os, runpy, signal, socket, sys, time

import customer_patch  # what every example imports first, and only that

def loopback(host):
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", None, ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False

def audit(event, args):
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and not loopback(address[0]):
            raise RuntimeError(f"a docs example tried to connect to {address!r}")
    elif event == "socket.getaddrinfo" and not loopback(args[0]):
        raise RuntimeError(f"a docs example tried to resolve {args[0]!r}")

def alive(pid):  # tests.helpers.alive, here: this process imports nothing of the tests
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid is another user's now: not known to be gone
        return True
    try:  # a zombie (ended, not yet reaped) has ended
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:  # no /proc: the signal's answer stands
        return True

def reap():
    # Waits for one child to end.  Meanwhile a child past its limit and a grace
    # (one that ignores SIGALRM) is killed, and if the session that wants the
    # outcomes is gone (ended early, interrupted), so is the whole group.
    checked = 0.0
    while True:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid:
            ended[running.pop(pid)[0]] = os.waitstatus_to_exitcode(status)
            return
        now = time.monotonic()
        for pid, (_, due) in running.items():
            if now > due:
                os.kill(pid, signal.SIGKILL)
        if now - checked > 0.5:
            checked = now
            if not alive(watch):
                os.killpg(0, signal.SIGKILL)
        time.sleep(0.02)

jobs, at_once, out, watch = json.loads(sys.stdin.read())
running, ended = {}, {}
job = None
for one in jobs:
    while len(running) >= at_once:
        reap()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        job = one
        break
    limit = one["limit"]
    running[pid] = (one["id"], time.monotonic() + limit + max(1, limit // 10))
if job is None:  # the zygote: every child has been started
    while running:
        reap()
    with open(out + ".part", "w") as f:
        json.dump(ended, f)
    os.replace(out + ".part", out)  # whole, or not there
    sys.exit(0)
# A child: becomes the example's process.
signal.alarm(job["limit"])  # a hang ends the child (SIGALRM), not the session
os.chdir(job["cwd"])
written = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, job["stdout"], written), (2, job["stderr"], written)):
    opened = os.open(path, mode)
    os.dup2(opened, fd)
    os.close(opened)
del jobs, running, ended, one, watch
sys.addaudithook(audit)
mode, target, *rest = job["args"]
sys.argv = [target, *rest]
if mode == "script":
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module("pytest", run_name="__main__")
"""

CONFTEST = 'pytest_plugins = ["customer_patch.testing"]\n'
EXAMPLE_TIMEOUT = 120  # seconds: a hang guard only


def job_for(block: Block, workdir: Path, limit: int) -> dict[str, object]:
    """The example's files written in ``workdir``, and the zygote's job to run it."""
    workdir.mkdir(parents=True)
    if block.is_pytest:
        (workdir / "conftest.py").write_text(CONFTEST)
        (workdir / "test_example.py").write_text(block.code)
        args = [
            "pytest",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "test_example.py",
        ]
    else:
        (workdir / "example.py").write_text(block.code)
        args = ["script", "example.py"]
    return {
        "id": block.id,
        "cwd": str(workdir),
        "args": args,
        "stdout": str(workdir / "stdout"),
        "stderr": str(workdir / "stderr"),
        "limit": limit,
    }


AT_ONCE = max(2, os.cpu_count() or 2)


def start_blocks(folder: Path, blocks: list[Block], limits: list[int], *, watch: int) -> None:
    """Start running ``blocks`` in the background, in one zygote, a few at a
    time (they are independent processes), each ended by SIGALRM after its
    limit in seconds (killed a little later if it ignores that), and every one
    of them killed once process ``watch`` (which wants their outcomes) is gone.
    :func:`finish_blocks` waits for them; any process may."""
    folder.mkdir(parents=True)
    jobs = [
        job_for(block, folder / f"block{n}", limit)
        for n, (block, limit) in enumerate(zip(blocks, limits, strict=True))
    ]
    # If every child ran until the zygote killed it, in turn: then the zygote is stuck.
    waves = -(-len(jobs) // AT_ONCE)
    deadline = waves * (max(limits) + max(1, max(limits) // 10) + 1) + 30
    (folder / "jobs.json").write_text(json.dumps([jobs, deadline]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    with (folder / "zygote.stderr").open("wb") as stderr:
        zygote = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            text=True,
            start_new_session=True,  # its group, children included, can be stopped
        )
    (folder / "zygote.pid").write_text(str(zygote.pid))
    assert zygote.stdin is not None
    with zygote.stdin:
        zygote.stdin.write(json.dumps([jobs, AT_ONCE, str(folder / "status.json"), watch]))
    # Reaped here, whoever waits for it: its pid then says whether it still runs.
    threading.Thread(target=zygote.wait, daemon=True).start()


def finish_blocks(folder: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """The runs that :func:`start_blocks` started in ``folder``, once all ended."""
    jobs, wait = json.loads((folder / "jobs.json").read_text())
    status_file = folder / "status.json"
    pid = int((folder / "zygote.pid").read_text())
    deadline = time.monotonic() + wait
    while not status_file.is_file():
        gone = not alive(pid)
        if status_file.is_file():
            break
        if gone or time.monotonic() > deadline:
            if not gone:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            what = "ended" if gone else f"was still running after {wait} s (stopped)"
            stderr = (folder / "zygote.stderr").read_text(errors="replace")
            pytest.fail(f"the examples' zygote {what} without their outcomes:\n{stderr}")
        time.sleep(0.05)
    status = json.loads(status_file.read_text())

    def read(path: str) -> str:
        return Path(path).read_text(encoding="utf-8", errors="replace")

    return {
        job["id"]: subprocess.CompletedProcess(
            job["args"], status[job["id"]], read(job["stdout"]), read(job["stderr"])
        )
        for job in jobs
    }


def run_blocks(
    folder: Path, blocks: list[Block], limits: list[int]
) -> dict[str, subprocess.CompletedProcess[str]]:
    start_blocks(folder, blocks, limits, watch=os.getpid())
    return finish_blocks(folder)


def examples_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the docs' examples run, once per session: in the directory the
    workers of pytest-xdist share (its own recipe for running something once)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:  # no workers (or no xdist)
        return tmp_path_factory.getbasetemp() / "docs-examples"
    return tmp_path_factory.getbasetemp().parent / "docs-examples"


def start_examples(folder: Path) -> None:
    """Start every example running, unless a worker has: conftest.py calls this
    as a session begins, so that their seconds of CPU overlap other tests
    rather than hold up the first worker to need them."""
    # The session's main process: a worker of pytest-xdist may end before
    # another has read the outcomes; the session ends with its main process.
    session = os.getppid() if "PYTEST_XDIST_WORKER" in os.environ else os.getpid()
    with filelock.FileLock(f"{folder}.lock"):
        if not folder.exists():
            start_blocks(
                folder, PYTHON_BLOCKS, [EXAMPLE_TIMEOUT] * len(PYTHON_BLOCKS), watch=session
            )


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory):
    """Every python block's run, once per test session: pytest-xdist would
    run them all (seconds of CPU) once per worker."""
    folder = examples_folder(tmp_path_factory)
    start_examples(folder)  # if nothing started them (a test run by its id)
    return finish_blocks(folder)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the examples run in forked processes")
def test_an_example_runs_as_a_script_run_by_hand_would(tmp_path):
    """What the zygote's children must still catch: each has its own names,
    exit status, loopback-only network and interpreter exit, and a hang ends."""
    examples = {
        "import missing": "print(json.dumps(1))\n",
        "exit status": "import sys\nprint('out')\nsys.exit(3)\n",
        "network": "import socket\nsocket.create_connection(('10.9.8.7', 80), timeout=1)\n",
        "unclosed": "import aiohttp, asyncio\n\n\nasync def main():\n"
        "    global s\n    s = aiohttp.ClientSession()\n\n\nasyncio.run(main())\n",
        "hang": "import time\ntime.sleep(600)\n",
        "deaf hang": "import signal, time\n\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        "time.sleep(600)\n",
        "fine": "import os\nprint(sorted(os.listdir('.')))\n",
        "not imported": "import customer_patch\n\nprint(customer_patch.sandbox)\n",
    }
    page = DOCS / "example.md"
    blocks = [Block(page, n, "python", code) for n, code in enumerate(examples.values())]
    # The hangs are ended after 1 s (the deaf one 2 s: time to ignore the alarm
    # first); the others have time enough on a loaded machine.
    limits = [{"hang": 1, "deaf hang": 2}.get(name, EXAMPLE_TIMEOUT) for name in examples]
    runs = run_blocks(tmp_path / "examples", blocks, limits)
    result = dict(zip(examples, (runs[block.id] for block in blocks), strict=True))
    assert result["import missing"].returncode == 1
    assert "NameError: name 'json' is not defined" in result["import missing"].stderr
    assert (result["exit status"].returncode, result["exit status"].stdout) == (3, "out\n")
    assert "tried to resolve '10.9.8.7'" in result["network"].stderr
    assert "Unclosed client session" in result["unclosed"].stderr
    assert result["hang"].returncode == -signal.SIGALRM
    # One that ignores the alarm is killed by the zygote a little later.
    assert result["deaf hang"].returncode == -signal.SIGKILL
    assert result["fine"].returncode == 0
    assert result["fine"].stdout == "['example.py', 'stderr', 'stdout']\n"
    # A module the example never imported is not there, as by hand.
    assert "has no attribute 'sandbox'" in result["not imported"].stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the examples run in forked processes")
def test_examples_end_once_the_session_that_wants_them_is_gone(tmp_path):
    """A session ended early (-x, Ctrl-C) does not leave its examples running."""
    session = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    pids = tmp_path / "pids"
    code = f"import os, time\nopen({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\ntime.sleep(600)\n"
    page = DOCS / "example.md"
    blocks = [Block(page, n, "python", code) for n in range(AT_ONCE + 1)]
    folder = tmp_path / "examples"
    start_blocks(folder, blocks, [EXAMPLE_TIMEOUT] * len(blocks), watch=session.pid)
    zygote = int((folder / "zygote.pid").read_text())
    try:
        # Until every example of the first wave has started (or far too long).
        give_up = time.monotonic() + EXAMPLE_TIMEOUT
        while len(started(pids)) < AT_ONCE and time.monotonic() < give_up:
            time.sleep(0.05)
    finally:
        session.kill()
        session.wait()
    children = started(pids)
    assert len(children) == AT_ONCE, children
    give_up = time.monotonic() + EXAMPLE_TIMEOUT  # an outcome, not a time: far off
    while any(alive(pid) for pid in [zygote, *children]) and time.monotonic() < give_up:
        time.sleep(0.05)
    assert not [pid for pid in [zygote, *children] if alive(pid)]
    assert not (folder / "status.json").exists()  # nobody is told they passed
    assert len(started(pids)) == AT_ONCE  # the one waiting for a slot never started


def started(pids: Path) -> list[int]:
    return [int(pid) for pid in pids.read_text().split()] if pids.exists() else []


def test_the_docs_have_examples():
    assert len(PYTHON_BLOCKS) >= 10
    assert PAGES


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[b.id for b in ALL_BLOCKS])
def test_code_blocks_use_known_languages(block):
    assert block.language in LANGUAGES, (
        f"{block.id}: fence tagged {block.language!r}; Python goes in ```python "
        f"(and is run), anything else in one of {sorted(LANGUAGES)}"
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the examples run in forked processes")
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_python_example_runs(block, example_runs):
    result = example_runs[block.id]
    report = f"{block.id}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, report
    # Examples clean up after themselves: no unclosed session or connector.
    assert "Unclosed" not in result.stderr, report
    assert "Task was destroyed" not in result.stderr, report
    if block.output is not None and not block.is_pytest:
        shown = [line.rstrip() for line in block.output.strip("\n").splitlines()]
        printed = [line.rstrip() for line in result.stdout.strip("\n").splitlines()]
        assert printed == shown, report


# -- provider pages --------------------------------------------------------------


def markdown_table(page: Path, first_header: str) -> list[list[str]]:
    """The body rows of the table whose header row starts with ``first_header``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    start = next(
        i
        for i, line in enumerate(lines)
        if line.startswith("|") and line.strip("| ").startswith(first_header)
    )
    rows = []
    for line in lines[start + 2 :]:  # after the header and the |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def code_text(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"expected a `code` cell, got {cell!r}"
    return match.group(1)


@pytest.mark.parametrize("provider", ["qwoty", "dualentry"])
def test_field_map_matches_the_adapter(provider):
    rows = markdown_table(DOCS / "providers" / f"{provider}.md", "Neutral field")
    documented = {
        code_text(neutral): (code_text(wire), {"yes": True, "no": False}[nullable])
        for neutral, wire, nullable, _constraints in rows
    }
    actual = {
        path: (spec.wire, spec.nullable) for path, spec in get_adapter(provider).fields.items()
    }
    assert documented == actual
    assert len(rows) == len(actual), "a field is listed twice"


def test_rate_limits_match_the_adapters():
    rows = markdown_table(DOCS / "providers" / "dualentry.md", "Bucket")
    documented = [
        (int(burst), float(per_second.removesuffix("/s"))) for _, burst, per_second in rows
    ]
    actual = [(limit.burst, limit.per_second) for limit in get_adapter("dualentry").rate_limits]
    assert documented == actual
    # Qwoty publishes no numbers, and its page says the adapter declares none.
    assert get_adapter("qwoty").rate_limits == ()
    assert "declares no rate limits" in (DOCS / "providers" / "qwoty.md").read_text()


@pytest.mark.parametrize("provider", ["qwoty", "dualentry"])
def test_provider_page_states_auth_path_and_not_patchable(provider):
    adapter = get_adapter(provider)
    text = (DOCS / "providers" / f"{provider}.md").read_text(encoding="utf-8")
    assert f"`{adapter.default_base_url}`" in text
    assert f"`{adapter.tooling.token_env}`" in text
    for header in adapter.auth_headers("TOKEN"):
        assert f"`{header}" in text
    for key in adapter.read_only:
        assert f"`{key}`" in text, f"read-only {key!r} is not on the page"
    unmapped = {a.name for a in attrs.fields(customer_patch.CustomerPatch)} - {"extra"}
    unmapped -= {path.split(".")[0] for path in adapter.fields}
    for name in unmapped:
        assert f"`{name}`" in text, f"{name!r} cannot be patched; the page should say so"


# -- the API reference and the build ---------------------------------------------


def test_api_reference_covers_every_public_name():
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. auto\w+:: (\S+)", text, re.MULTILINE))
    missing = [name for name in customer_patch.__all__ if name not in documented]
    assert not missing
    for module in ("customer_patch.wire", "customer_patch.sandbox", "customer_patch.testing"):
        assert module in documented


def test_every_public_attribute_has_text_in_the_api_reference():
    """autodoc shows an attribute's docstring; a field without one is a bare name."""
    import inspect

    import attrs
    from sphinx.pycode import ModuleAnalyzer

    import customer_patch

    missing = []
    for name in customer_patch.__all__:
        obj = getattr(customer_patch, name)
        if inspect.isclass(obj) and attrs.has(obj):
            documented = ModuleAnalyzer.for_module(obj.__module__).find_attr_docs()
            missing += [
                f"{name}.{f.name}"
                for f in attrs.fields(obj)
                if (obj.__qualname__, f.name) not in documented
            ]
    assert missing == []
