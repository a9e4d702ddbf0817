"""Finding a token's echoes in what a provider sent, to mask them.

An echo is any run of at least :data:`LEAST` consecutive characters of the
token (all of it, if shorter), in any case (an ISO date parser upper-cases
what it reads), each character as is, JSON-escaped or percent-encoded, in
any mix, in UTF-8; or the whole token in UTF-16 or UTF-32.  A run, not only
the token whole: a provider can quote it cut short, or split it over two
fields.  Fewer characters than that cannot be told from ordinary text, but
where the client cut a text short (:func:`customer_patch._errors.cut`), the
piece of the token it ends with is masked too (:meth:`Echoes.cut_piece`).

How, in time linear in the text (an answer can hold 8 MiB): one regular
expression finds each maximal run of units that could belong to the token
(one of its bytes in either case, or an escape), at least :data:`LEAST`
units long; each run is decoded (escapes undone, case folded) and masked
whole if it holds a :data:`LEAST`-character window of the token.  Masking the
whole run masks a little more than the echo (a word glued to it), never
less.  Measured 2026-11-23 on a 2-core machine, for 8 MiB of hostile text:
at most about 1.3 s (JSON whose every value is a 20-letter word, runs of
percent-escapes), 0.3-0.6 s for other shapes; an answer of a few KiB takes
microseconds.
"""

from __future__ import annotations

import codecs
import re

LEAST = 12
"""The fewest consecutive characters of the token that make an echo."""

_ESCAPE = rb"%[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\[\\/\"]"
# The same, in text, ending where a search ends; and one a cut fell inside.
_ESCAPE_AT_END = re.compile(r"(?:%[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\[\\/\"])\Z")
_PARTIAL_ESCAPE = re.compile(r"(?:%[0-9a-fA-F]?|\\u[0-9a-fA-F]{0,3}|\\)\Z")


def _unescaped(escape: str) -> str:
    if escape[0] == "%":
        return chr(int(escape[1:], 16))
    if escape[1] == "u":
        return chr(int(escape[2:], 16))
    return escape[1]


_PERCENT = re.compile(rb"%(?=[0-9a-fA-F]{2})")
_ODD_PERCENT = re.compile(rb"%(?![0-9a-fA-F]{2})")


class Echoes:
    """The echoes of one token; holds it (as windows), so its repr says nothing."""

    __slots__ = ("_least", "_lower", "_runs", "_wide", "_windows")

    def __init__(self, token: str) -> None:
        raw = token.encode("utf-8", "surrogateescape")
        own = b"".join(re.escape(bytes([b])) for b in sorted(set(raw.lower() + raw.upper())))
        unit = b"[" + own + b"]"
        self._least = least = min(len(token), LEAST)
        self._lower = token.lower()
        # A run starts where no byte of the token precedes it (else the run from
        # there is longer, and found from there), and only if LEAST units follow:
        # the engine tries each start once, and short words cost no call below.
        self._runs = re.compile(
            b"(?<!" + unit + b")"
            + b"(?=(?:" + unit + b"|" + _ESCAPE + b"){%d})" % least
            + b"(?>(?:" + unit + b"+|" + _ESCAPE + b")+)"
        )  # fmt: skip
        # As a run decodes: escapes to characters, other bytes one character each.
        forms = {token.lower(), raw.decode("latin-1").lower()}
        self._windows = frozenset(
            f[i : i + least] for f in forms for i in range(len(f) - least + 1)
        )
        wide = [
            re.escape(token.encode(encoding, "surrogatepass"))
            for encoding in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
        ]
        self._wide = re.compile(b"|".join(wide), re.IGNORECASE)

    def __repr__(self) -> str:
        return "<echoes>"

    def cut_piece(self, text: str) -> int:
        """How many characters at the end of ``text`` (a text cut short) are a
        piece of the token, in any case, as written or escaped, 2 or more; 0 if
        none (an escape the cut fell inside counts with the piece before it).
        An echo a cut falls inside leaves fewer than :data:`LEAST` characters,
        which :meth:`masked` takes for text; at a cut, the rest may have followed.
        Longer pieces :meth:`masked` has found: at most ``LEAST - 1`` are read."""
        partial = _PARTIAL_ESCAPE.search(text[-6:])
        end = len(text) - (len(partial.group()) if partial else 0)
        piece, start, found = "", end, 0
        while start > 0 and len(piece) < self._least - 1:
            escape = _ESCAPE_AT_END.search(text, max(0, start - 6), start)
            unit = escape.group() if escape is not None else text[start - 1]
            read = _unescaped(unit) if escape is not None else unit
            if (read + piece).lower() not in self._lower:
                if escape is None or (unit + piece).lower() not in self._lower:
                    break
                read = unit  # the token holds it as written
            piece, start = read + piece, start - len(unit)
            if len(piece) >= 2:
                found = len(text) - start
        return found

    def masked(self, data: bytes, mask: bytes) -> bytes:
        """``data`` with every echo replaced by ``mask``."""
        return self._wide.sub(mask, self._runs.sub(lambda m: self._run(m, mask), data))

    def _run(self, match: re.Match[bytes], mask: bytes) -> bytes:
        original = run = match.group()
        if self._holds(run.decode("latin-1")):  # as it is: the token may hold "%41" itself
            return mask
        if b"%" in run:  # percent-escapes, undone in C: as \xNN (and a backslash kept)
            run = run.replace(b"\\", b"\\\\")
            # Only a % before two hex digits: a token may hold a % of its own.
            odd = _ODD_PERCENT.search(run) is not None
            run = codecs.escape_decode(
                _PERCENT.sub(rb"\\x", run) if odd else run.replace(b"%", b"\\x")
            )[0]
        if b"\\" in run:
            decoded = run.replace(b"\\/", b"/").decode("unicode_escape", "replace")
        elif run is original:
            return original  # no escape: decoding changes nothing
        else:
            decoded = run.decode("latin-1")
        return mask if self._holds(decoded) else original

    def _holds(self, text: str) -> bool:
        """Whether ``text`` holds a window of the token, in any case."""
        text = text.lower()
        least = self._least
        if len(text) < 256:
            return any(text[i : i + least] in self._windows for i in range(len(text) - least + 1))
        return any(w in text for w in self._windows)
