"""One registry for the plug-in kinds (resolvers, engines, stores): by name, built-in or from
an entry point group, the way fsspec's ``registry`` maps a protocol to an implementation."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> plug-ins of one kind.

    A name is looked up in what :meth:`register` added, then in ``builtin_modules`` (a
    module that registers the name when imported, so start-up stays free of heavy imports),
    then in the ``group`` entry points. Import errors of a built-in module propagate (the
    caller says which extra to install)."""

    def __init__(self, group: str, builtin_modules: Mapping[str, str] | None = None) -> None:
        self.group = group
        self.builtin_modules = dict(builtin_modules or {})
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make the decorated object the plug-in called ``name``."""

        def decorate(item: T) -> T:
            self._items[name] = item
            return item

        return decorate

    def add(self, name: str, item: T) -> None:
        self._items[name] = item

    def get(self, name: str) -> T | None:
        if name in self._items:
            return self._items[name]
        module = self.builtin_modules.get(name)
        if module is not None:
            importlib.import_module(module)
            return self._items.get(name)
        for entry in entry_points(group=self.group):
            if entry.name == name:
                item: T = entry.load()
                self._items[name] = item
                return item
        return None

    def names(self) -> list[str]:
        found = set(self.builtin_modules) | set(self._items)
        found |= {entry.name for entry in entry_points(group=self.group)}
        return sorted(found)
