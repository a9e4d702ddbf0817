"""The ``customer-patch`` command (install the ``cli`` extra for it)."""

from __future__ import annotations

import sys


def main() -> None:
    """Entry point of the ``customer-patch`` command."""
    try:
        from customer_patch.cli._commands import cli
    except ImportError as e:  # click or rich missing: the extra is not installed
        print(
            f"customer-patch: the command line needs the 'cli' extra ({e.name} is missing):\n"
            "    pip install 'customer-patch[cli]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        # Ctrl-C while Python loads the command's modules (a second or so on a
        # cold machine): before anything could be sent, so one line, not a traceback.
        print("customer-patch: interrupted while starting; nothing was sent", file=sys.stderr)
        raise SystemExit(130) from None
    cli()
