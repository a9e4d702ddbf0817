"""Tools for adapter authors: checks for what goes out, readers for what comes back.

A check takes a (non-``None``) value and returns the list of what is wrong
with it; an empty list means the value is acceptable.  Checks never raise:
validation collects every problem of a patch and reports them at once.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Collection, Mapping
from typing import Any

from customer_patch._model import Address

Check = Callable[[Any], list[str]]
"""A check: a (non-``None``) value in, the list of what is wrong with it out."""

# ISO 3166-1 alpha-2, the 249 officially assigned codes (checked against
# pycountry's database when this list was written).
ISO_COUNTRIES = frozenset(
    [
        "AD",
        "AE",
        "AF",
        "AG",
        "AI",
        "AL",
        "AM",
        "AO",
        "AQ",
        "AR",
        "AS",
        "AT",
        "AU",
        "AW",
        "AX",
        "AZ",
        "BA",
        "BB",
        "BD",
        "BE",
        "BF",
        "BG",
        "BH",
        "BI",
        "BJ",
        "BL",
        "BM",
        "BN",
        "BO",
        "BQ",
        "BR",
        "BS",
        "BT",
        "BV",
        "BW",
        "BY",
        "BZ",
        "CA",
        "CC",
        "CD",
        "CF",
        "CG",
        "CH",
        "CI",
        "CK",
        "CL",
        "CM",
        "CN",
        "CO",
        "CR",
        "CU",
        "CV",
        "CW",
        "CX",
        "CY",
        "CZ",
        "DE",
        "DJ",
        "DK",
        "DM",
        "DO",
        "DZ",
        "EC",
        "EE",
        "EG",
        "EH",
        "ER",
        "ES",
        "ET",
        "FI",
        "FJ",
        "FK",
        "FM",
        "FO",
        "FR",
        "GA",
        "GB",
        "GD",
        "GE",
        "GF",
        "GG",
        "GH",
        "GI",
        "GL",
        "GM",
        "GN",
        "GP",
        "GQ",
        "GR",
        "GS",
        "GT",
        "GU",
        "GW",
        "GY",
        "HK",
        "HM",
        "HN",
        "HR",
        "HT",
        "HU",
        "ID",
        "IE",
        "IL",
        "IM",
        "IN",
        "IO",
        "IQ",
        "IR",
        "IS",
        "IT",
        "JE",
        "JM",
        "JO",
        "JP",
        "KE",
        "KG",
        "KH",
        "KI",
        "KM",
        "KN",
        "KP",
        "KR",
        "KW",
        "KY",
        "KZ",
        "LA",
        "LB",
        "LC",
        "LI",
        "LK",
        "LR",
        "LS",
        "LT",
        "LU",
        "LV",
        "LY",
        "MA",
        "MC",
        "MD",
        "ME",
        "MF",
        "MG",
        "MH",
        "MK",
        "ML",
        "MM",
        "MN",
        "MO",
        "MP",
        "MQ",
        "MR",
        "MS",
        "MT",
        "MU",
        "MV",
        "MW",
        "MX",
        "MY",
        "MZ",
        "NA",
        "NC",
        "NE",
        "NF",
        "NG",
        "NI",
        "NL",
        "NO",
        "NP",
        "NR",
        "NU",
        "NZ",
        "OM",
        "PA",
        "PE",
        "PF",
        "PG",
        "PH",
        "PK",
        "PL",
        "PM",
        "PN",
        "PR",
        "PS",
        "PT",
        "PW",
        "PY",
        "QA",
        "RE",
        "RO",
        "RS",
        "RU",
        "RW",
        "SA",
        "SB",
        "SC",
        "SD",
        "SE",
        "SG",
        "SH",
        "SI",
        "SJ",
        "SK",
        "SL",
        "SM",
        "SN",
        "SO",
        "SR",
        "SS",
        "ST",
        "SV",
        "SX",
        "SY",
        "SZ",
        "TC",
        "TD",
        "TF",
        "TG",
        "TH",
        "TJ",
        "TK",
        "TL",
        "TM",
        "TN",
        "TO",
        "TR",
        "TT",
        "TV",
        "TW",
        "TZ",
        "UA",
        "UG",
        "UM",
        "US",
        "UY",
        "UZ",
        "VA",
        "VC",
        "VE",
        "VG",
        "VI",
        "VN",
        "VU",
        "WF",
        "WS",
        "YE",
        "YT",
        "ZA",
        "ZM",
        "ZW",
    ]
)


def type_name(value: object) -> str:
    """The name of ``value``'s type, for messages."""
    return type(value).__name__


def text(
    *,
    min_len: int | None = None,
    max_len: int | None = None,
    pattern: str | None = None,
    choices: Collection[str] | None = None,
) -> Check:
    """A string, optionally of bounded length, matching a pattern or one of ``choices``."""
    compiled = re.compile(pattern) if pattern is not None else None

    def check(value: Any) -> list[str]:
        if not isinstance(value, str):
            return [f"must be a string, not {type_name(value)}"]
        problems = []
        if min_len is not None and len(value) < min_len:
            problems.append(f"must be at least {min_len} characters long")
        if max_len is not None and len(value) > max_len:
            problems.append(f"must be at most {max_len} characters long (got {len(value)})")
        if compiled is not None and not compiled.fullmatch(value):
            problems.append(f"must match {pattern}")
        if choices is not None and value not in choices:
            problems.append(f"must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return problems

    return check


def uuid_text(value: Any) -> list[str]:
    """A UUID in its string form."""
    if not isinstance(value, str):
        return [f"must be a UUID string, not {type_name(value)}"]
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        return [f"must be a UUID, got {value!r}"]
    # uuid.UUID() also reads "{...}", "urn:uuid:..." and hex without dashes,
    # none of which a provider's path or field expects.
    if value.lower() != canonical:
        return [f"must be a UUID in its usual form ({canonical}), got {value!r}"]
    return []


def iso_country(value: Any) -> list[str]:
    """An ISO 3166-1 alpha-2 country code such as ``"FR"``."""
    if not isinstance(value, str):
        return [f"must be a string, not {type_name(value)}"]
    if value not in ISO_COUNTRIES:
        return [f"must be an ISO 3166-1 alpha-2 code such as 'FR', got {value!r}"]
    return []


def address(value: Any) -> list[str]:
    """An :class:`~customer_patch.Address` with string parts and an ISO (or empty) country."""
    if not isinstance(value, Address):
        return [f"must be an Address, not {type_name(value)}"]
    problems = []
    for part in ("street", "city", "postal_code", "state", "second_line", "country"):
        part_value = getattr(value, part)
        if not isinstance(part_value, str):
            problems.append(f"{part} must be a string, not {type_name(part_value)}")
    if value.name is not None and not isinstance(value.name, str):
        problems.append(f"name must be a string, not {type_name(value.name)}")
    if isinstance(value.country, str) and value.country:
        problems.extend(f"country {p}" for p in iso_country(value.country))
    return problems


def parse_datetime(value: Any) -> dt.datetime | None:
    """An aware datetime from an ISO 8601 string; a naive one is taken as UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 string, got {type_name(value)}")
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def optional_str(data: Mapping[str, Any], key: str) -> str | None:
    """``data[key]`` if it is a string, ``None`` if absent or null; else ``TypeError``."""
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{key} should be a string, got {type_name(value)}")


def field_errors(value: Any) -> dict[str, list[str]]:
    """``{field: [messages]}`` from a provider's errors object; tolerant of odd shapes."""
    if not isinstance(value, Mapping):
        return {}
    return {
        str(k): [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in value.items()
    }
