"""The JSON-ready neutral form of a patch, built with cattrs.

An absent key is UNSET, ``null`` clears, and unknown keys are errors.  Scalars
are strict: ``"12"`` is not an int and ``12`` is not a string, because a
silently coerced value is a wrong value sent to a customer record.
Custom fields take two forms: an object whose keys are names, or a list of
``{"name": ..., "value": ...}`` / ``{"id": ..., "value": ...}`` entries,
needed as soon as one field goes by id (JSON keys are always strings).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.cols import homogenous_tuple_structure_factory
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from customer_patch._errors import Problem, ValidationError, quoted
from customer_patch._model import (
    Address,
    CustomerPatch,
    CustomFieldKey,
    ExternalIds,
    TaxId,
    Unset,
)
from customer_patch.wire import type_name

for _cls in (TaxId, ExternalIds, Address, CustomerPatch):
    attrs.resolve_types(_cls)

_converter = cattrs.Converter(forbid_extra_keys=True)


def _strict(kind: type) -> Any:
    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {kind.__name__}, got bool")
        if not isinstance(value, kind):
            raise TypeError(f"expected {kind.__name__}, got {type_name(value)}")
        return value

    return structure


for _kind in (str, int, bool):
    _converter.register_structure_hook(_kind, _strict(_kind))


def _is_tuple(t: Any) -> bool:
    return typing.get_origin(t) is tuple


def _tuple_hook(t: Any) -> Any:
    items = homogenous_tuple_structure_factory(t, _converter)

    def structure(value: Any, type_: Any) -> tuple[Any, ...]:
        # Without this a string would be taken apart as a sequence of letters.
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {type_name(value)}")
        return items(value, type_)  # type: ignore[no-any-return]

    return structure


_converter.register_structure_hook_factory(_is_tuple, _tuple_hook)


def _is_tri_state(t: Any) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType) and Unset in typing.get_args(t)


def _tri_state_hook(t: Any) -> Any:
    args = typing.get_args(t)
    nullable = type(None) in args
    rest = [a for a in args if a is not type(None) and a != Unset]
    inner: Any = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007

    def structure(value: Any, _: Any) -> Any:
        if value is None:
            if nullable:
                return None
            raise ValueError("cannot be null")
        return _converter.structure(value, inner)

    return structure


_converter.register_structure_hook_factory(_is_tri_state, _tri_state_hook)


def _structure_custom_fields(value: Any, _: Any) -> dict[CustomFieldKey, Any]:
    if isinstance(value, Mapping):
        for name in value:
            if not isinstance(name, str):
                raise TypeError(f"keys must be names (strings), got {type_name(name)}")
        return dict(value)
    if not isinstance(value, list):
        raise TypeError(f"expected an object or a list, got {type_name(value)}")
    fields: dict[CustomFieldKey, Any] = {}
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping) or "value" not in entry or len(entry) != 2:
            raise ValueError(f"[{i}] must be {{'name' or 'id': ..., 'value': ...}}")
        key: CustomFieldKey
        if "name" in entry and isinstance(entry["name"], str):
            key = entry["name"]
        elif "id" in entry and isinstance(entry["id"], int) and not isinstance(entry["id"], bool):
            key = entry["id"]
        else:
            raise ValueError(f"[{i}] needs a string 'name' or an integer 'id'")
        if key in fields:
            raise ValueError(f"[{i}] sets {key!r} twice")
        fields[key] = entry["value"]
    return fields


def _unstructure_custom_fields(value: Mapping[CustomFieldKey, Any]) -> Any:
    if all(isinstance(key, str) for key in value):
        return dict(value)
    return [
        {"name" if isinstance(key, str) else "id": key, "value": v} for key, v in value.items()
    ]


def _structure_extra(value: Any, _: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected an object, got {type_name(value)}")
    return dict(value)


_converter.register_structure_hook(
    CustomerPatch,
    make_dict_structure_fn(
        CustomerPatch,
        _converter,
        _cattrs_forbid_extra_keys=True,
        custom_fields=override(struct_hook=_structure_custom_fields),
        extra=override(struct_hook=_structure_extra),
    ),
)
_converter.register_unstructure_hook(tuple, lambda t: [_converter.unstructure(x) for x in t])
for _cls in (TaxId, ExternalIds, Address):
    _converter.register_unstructure_hook(
        _cls, make_dict_unstructure_fn(_cls, _converter, _cattrs_omit_if_default=True)
    )
_converter.register_unstructure_hook(
    CustomerPatch,
    make_dict_unstructure_fn(
        CustomerPatch,
        _converter,
        _cattrs_omit_if_default=True,
        custom_fields=override(unstruct_hook=_unstructure_custom_fields),
    ),
)


def structure_patch(data: Any) -> CustomerPatch:
    if not isinstance(data, Mapping):
        raise ValidationError([Problem("", f"a patch must be an object, not {type_name(data)}")])
    keys = [k for k in data if not isinstance(k, str)]
    if keys:  # cattrs would fail on them with a TypeError, not a report
        listed = ", ".join(f"{quoted(k, 40)}" for k in keys)
        raise ValidationError([Problem("", f"field names must be strings, got {listed}")])
    try:
        return _converter.structure(data, CustomerPatch)
    except cattrs.BaseValidationError as e:
        raise ValidationError(_problems(e)) from None
    except RecursionError:
        raise ValidationError([Problem("", "is nested too deeply")]) from None


def unstructure_patch(patch: CustomerPatch) -> dict[str, Any]:
    result: dict[str, Any] = _converter.unstructure(patch)
    return result


def _message(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return "unknown field(s): " + ", ".join(sorted(exc.extra_fields))
    if isinstance(exc, KeyError):
        return "required field missing"
    # Our own hooks raise with messages written for people; keep them.
    return str(exc) or type(exc).__name__


def _problems(error: cattrs.BaseValidationError) -> list[Problem]:
    problems = []
    for text in cattrs.transform_error(error, path="$", format_exception=_message):
        message, _, path = text.rpartition(" @ ")
        problems.append(Problem(path.removeprefix("$").removeprefix("."), message or text))
    return problems
