"""pydantic's readers of the job file's values and of sizes.

:func:`adapter` is pydantic's ``TypeAdapter`` of a type, built once a process and without
pydantic's search for plugins, which reads every installed package's entry points (~8-20 ms
a start; pydantic's plugins observe validation, which a job file's reading does not want).
``PYDANTIC_DISABLE_PLUGINS`` set by the user is kept as it is.

:func:`reader` is the job classes' validator and serializer. Building them from the classes is
pydantic's Python work, the same at every start: its import (~50 ms) and the generation of
the core schema (~70 ms), for each job file new to the node (a job file read before is not
validated again: see :mod:`jitrender.memo`). The validator and serializer themselves are
pydantic-core's, built from that schema in under a millisecond. So the schema, once generated,
is kept as Python keeps a module's compiled code: beside the bytecode of the module that
defines the classes (``importlib.util.cache_from_source``: its ``__pycache__``, or
``sys.pycache_prefix``), written only where and when Python writes bytecode. It is JSON; its
classes and functions are written by name, only that module's own (and ``list``, ``dict``),
and read back only if each name finds the same kind of object. It is named by a hash of that
module's file, this file, and pydantic's and pydantic-core's (their stat), so an edit or an
upgrade generates it again; anything odd about it means generating it afresh. Whoever can
write there can already replace the module's bytecode, so it trusts no one new. Later starts
import pydantic-core alone (~30 ms).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import os
import sys
from typing import Any

from jitrender.memo import code_stamp, package_files

_PLUGINS = "PYDANTIC_DISABLE_PLUGINS"
_NAME = "$name"  # a class or function written by name (no key of a core schema)
_BUILTINS = {"list": list, "dict": dict}


@functools.cache
def adapter(kind: Any) -> Any:
    """The ``TypeAdapter`` of ``kind``."""
    from pydantic import TypeAdapter

    if _PLUGINS in os.environ:
        return TypeAdapter(kind)
    os.environ[_PLUGINS] = "__all__"
    try:
        return TypeAdapter(kind)
    finally:
        os.environ.pop(_PLUGINS, None)


@functools.cache
def reader(kind: type) -> tuple[Any, Any]:
    """The ``SchemaValidator`` and ``SchemaSerializer`` of ``kind`` (a class of a jitrender
    module), from its kept schema where there is one, else from pydantic (keeping it)."""
    where = _schema_file(kind)
    if where is not None:
        schema = _recalled(where, kind)
        if schema is not None:
            from pydantic_core import SchemaSerializer, SchemaValidator

            try:
                return SchemaValidator(schema), SchemaSerializer(schema)
            except Exception:  # a schema this pydantic-core does not take: generate it
                pass
    made = adapter(kind)
    if where is not None and not sys.dont_write_bytecode:
        _keep(where, kind, made.core_schema)
    return made.validator, made.serializer


def _schema_file(kind: type) -> tuple[str, str] | None:
    """Where ``kind``'s schema is kept, and the stamp it must carry; None: nowhere."""
    module = sys.modules.get(kind.__module__)
    source = getattr(module, "__file__", None)
    if source is None or not source.endswith(".py"):
        return None
    try:
        compiled = importlib.util.cache_from_source(source)
        files = (source, __file__, *package_files("pydantic", "pydantic_core"))
        stamp = code_stamp(f"jitrender schema 1\0{kind.__qualname__}", files)
    except (OSError, NotImplementedError, ValueError):
        return None
    base = compiled.removesuffix(".pyc")
    return f"{base}.{kind.__qualname__}.schema.json", stamp


def _recalled(where: tuple[str, str], kind: type) -> Any:
    path, stamp = where
    try:
        with open(path, encoding="utf-8") as kept:
            document = json.load(kept)
        if not isinstance(document, dict) or document.get("stamp") != stamp:
            return None
        return _decoded(document["schema"], kind.__module__)
    except (OSError, ValueError, LookupError, TypeError, AttributeError):
        return None


def _keep(where: tuple[str, str], kind: type, schema: Any) -> None:
    """Write ``schema`` for later starts, whole or not at all; never one that would not read
    back as exactly this schema."""
    path, stamp = where
    part = f"{path}.{os.getpid()}.part"
    try:
        text = json.dumps({"stamp": stamp, "schema": _encoded(schema, kind.__module__)})
        if _decoded(json.loads(text)["schema"], kind.__module__) != schema:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(part, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(part, path)
    except (OSError, ValueError, TypeError, AttributeError):
        with contextlib.suppress(OSError):
            os.unlink(part)


def _encoded(value: Any, module: str) -> Any:
    if isinstance(value, dict):
        if _NAME in value or not all(isinstance(key, str) for key in value):
            raise ValueError("not a schema's mapping")
        return {key: _encoded(item, module) for key, item in value.items()}
    if isinstance(value, list):
        return [_encoded(item, module) for item in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    name = getattr(value, "__qualname__", None)
    if isinstance(name, str) and _named(f"{value.__module__}:{name}", module) is value:
        return {_NAME: f"{value.__module__}:{name}"}
    raise ValueError(f"{value!r} cannot be written by name")


def _decoded(value: Any, module: str) -> Any:
    if isinstance(value, dict):
        if _NAME in value:
            return _named(value[_NAME], module)
        return {key: _decoded(item, module) for key, item in value.items()}
    if isinstance(value, list):
        return [_decoded(item, module) for item in value]
    return value


def _named(name: str, module: str) -> Any:
    """The class or function ``module:qualname`` names: one of ``module``'s own, or ``list`` or
    ``dict``; ValueError for anything else."""
    owner, _, path = name.partition(":")
    if owner == "builtins" and path in _BUILTINS:
        return _BUILTINS[path]
    if owner != module or not path or "<" in path:
        raise ValueError(f"{name}: not a name of {module}")
    found: Any = importlib.import_module(module)
    for part in path.split("."):
        found = getattr(found, part)
    if not callable(found) or getattr(found, "__module__", None) != module:
        raise ValueError(f"{name}: not a class or function of {module}")
    return found
