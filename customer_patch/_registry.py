"""The adapter registry: provider names to adapters.

Adapters come from the ``customer_patch.adapters`` entry-point group (which
is how the first-party adapters arrive too) or from :func:`register_adapter`.
Entry points are listed lazily and an adapter's module is imported only when
a client first asks for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar, overload

from customer_patch._adapter import Adapter
from customer_patch._errors import AdapterRegistrationError, UnknownAdapterError

ENTRY_POINT_GROUP = "customer_patch.adapters"

AdapterSource = Adapter | type[Adapter] | str
"""An adapter instance, an adapter class (made with no arguments), or ``"pkg.mod:Class"``."""

S = TypeVar("S", bound=AdapterSource)


class AdapterRegistry:
    """Maps names to adapters.  :data:`default_registry` is the one clients use."""

    def __init__(self, *, entry_point_group: str | None = ENTRY_POINT_GROUP) -> None:
        self._group = entry_point_group
        self._sources: dict[str, AdapterSource] = {}
        self._loaded: dict[str, Adapter] = {}
        self._entry_points: dict[str, list[EntryPoint]] | None = None

    def __repr__(self) -> str:
        return f"AdapterRegistry(names={self.names()!r})"

    @overload
    def register(self, name: str, adapter: S, *, replace: bool = False) -> S: ...

    @overload
    def register(
        self, name: str, adapter: None = None, *, replace: bool = False
    ) -> Callable[[S], S]: ...

    def register(
        self, name: str, adapter: S | None = None, *, replace: bool = False
    ) -> S | Callable[[S], S]:
        """Register ``adapter`` under ``name``; without ``adapter``, a class decorator.

        A name that is taken (by an earlier registration or an installed entry
        point) raises :class:`AdapterRegistrationError` unless ``replace=True``.
        """
        if adapter is None:

            def decorator(source: S) -> S:
                return self.register(name, source, replace=replace)

            return decorator
        if not isinstance(name, str) or not name:
            raise AdapterRegistrationError(f"adapter names are non-empty strings, not {name!r}")
        if not isinstance(adapter, str | Adapter) and not (
            isinstance(adapter, type) and issubclass(adapter, Adapter)
        ):
            raise AdapterRegistrationError(
                f"{name!r}: expected an Adapter, an Adapter subclass or 'pkg.mod:Class', "
                f"got {adapter!r}"
            )
        if not replace and name in self.names():
            raise AdapterRegistrationError(
                f"an adapter named {name!r} is already registered; pass replace=True to replace it"
            )
        self._sources[name] = adapter
        self._loaded.pop(name, None)
        return adapter

    def get(self, name: str) -> Adapter:
        """The adapter registered as ``name``; :class:`UnknownAdapterError` if none is."""
        if name in self._loaded:
            return self._loaded[name]
        source: Any = self._sources.get(name)
        if source is None:
            found = self._discover().get(name)
            if not found:
                raise UnknownAdapterError(name, available=self.names())
            if len({ep.value for ep in found}) > 1:
                values = ", ".join(sorted({ep.value for ep in found}))
                raise AdapterRegistrationError(
                    f"several installed packages provide an adapter named {name!r}: {values}"
                )
            source = found[0].value
        adapter = _load(name, source)
        self._loaded[name] = adapter
        return adapter

    def names(self) -> list[str]:
        """Every name that :meth:`get` can resolve, sorted."""
        return sorted(self._sources.keys() | self._discover().keys())

    def _discover(self) -> dict[str, list[EntryPoint]]:
        if self._entry_points is None:
            found: dict[str, list[EntryPoint]] = {}
            if self._group is not None:
                for ep in entry_points(group=self._group):
                    found.setdefault(ep.name, []).append(ep)
            self._entry_points = found
        return self._entry_points


def _load(name: str, source: AdapterSource) -> Adapter:
    if isinstance(source, str):
        module_name, _, attr = source.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split(".") if attr else ():
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise AdapterRegistrationError(
                f"cannot load adapter {name!r} from {source!r}: {e}"
            ) from e
        source = obj
    if isinstance(source, type) and issubclass(source, Adapter):
        source = source()
    if not isinstance(source, Adapter):
        raise AdapterRegistrationError(f"adapter {name!r} is not an Adapter: {source!r}")
    return source


default_registry = AdapterRegistry()
"""The registry :class:`~customer_patch.Client` looks names up in."""


def register_adapter(name: str, adapter: Any = None, *, replace: bool = False) -> Any:
    """Register an adapter in the default registry (also usable as a decorator).

    ``adapter`` is an :class:`Adapter` instance, a subclass (made with no
    arguments when first used), or an import string ``"pkg.mod:Class"``.
    """
    return default_registry.register(name, adapter, replace=replace)


def available_adapters() -> list[str]:
    """The names of every adapter the default registry knows, sorted."""
    return default_registry.names()


def get_adapter(name: str) -> Adapter:
    """The adapter registered in the default registry as ``name``."""
    return default_registry.get(name)
