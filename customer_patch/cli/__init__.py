"""The ``customer-patch`` command (install the ``cli`` extra for it)."""

from __future__ import annotations

import signal
import sys


def stopping_signals() -> list[int]:
    """The signals that stop a command: SIGINT (Ctrl-C), SIGTERM and SIGHUP (its
    terminal closed, an SSH connection lost), less those ignored when it was
    started: ``nohup`` ignores SIGHUP, and a shell script's ``&`` SIGINT, so that
    the command goes on through them.  Taken over, they stopped it anyway."""
    found = (getattr(signal, name, None) for name in ("SIGINT", "SIGTERM", "SIGHUP"))
    return [int(s) for s in found if s is not None and signal.getsignal(s) != signal.SIG_IGN]


class _Stopped(BaseException):
    """A stopping signal came while the command's modules were loading."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def main() -> None:
    """Entry point of the ``customer-patch`` command."""
    # The command's own handlers come with its modules (a second or so on a
    # cold machine); until then SIGTERM and SIGHUP ended it with no word.
    # (SIGINT is Python's KeyboardInterrupt already.)
    taken = {sig: signal.signal(sig, _stop) for sig in stopping_signals() if sig != signal.SIGINT}
    try:
        from customer_patch.cli._commands import cli
    except ImportError as e:  # click or rich missing: the extra is not installed
        print(
            f"customer-patch: the command line needs the 'cli' extra ({e.name} is missing):\n"
            "    pip install 'customer-patch[cli]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    except (KeyboardInterrupt, _Stopped) as e:
        # Before anything could be sent: one line, not a traceback.
        print("customer-patch: interrupted while starting; nothing was sent", file=sys.stderr)
        raise SystemExit(128 + e.signum if isinstance(e, _Stopped) else 130) from None
    finally:
        for sig, previous in taken.items():
            # None: not set from Python; the system's default, then.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
    cli()
