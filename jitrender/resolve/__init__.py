"""Dependency resolvers: one module per scene format, registered by name and by entry point.

A resolver is a function ``(ResolveContext) -> Dependencies``. It reads the scene from the
local copy the context gives it and asks storage nothing except through the context's
callbacks (folder listings for UDIM tiles, local copies of referenced files such as linked
libraries or precomps). Studios add their own with the ``jitrender.resolvers`` entry point.
"""

from __future__ import annotations

from collections.abc import Callable

from jitrender.deps import Dependencies
from jitrender.errors import ConfigError
from jitrender.registry import Registry
from jitrender.resolve.base import ResolveContext

Resolver = Callable[[ResolveContext], Dependencies]

# name -> module that registers it on import; keeps start-up free of heavy imports (pxr, BAT).
_BUILTIN_MODULES = {
    "manifest": "jitrender.resolve.manifest",
    "nuke": "jitrender.resolve.nuke",
    "blender": "jitrender.resolve.blend",
    "usd": "jitrender.resolve.usd",
}
_BUILTIN_SUFFIXES = {
    ".nk": "nuke",
    ".nknc": "nuke",
    ".blend": "blender",
    ".usd": "usd",
    ".usda": "usd",
    ".usdc": "usd",
    ".usdz": "usd",
    ".txt": "manifest",
    ".manifest": "manifest",
}

_registry: Registry[Resolver] = Registry("jitrender.resolvers", _BUILTIN_MODULES)
_suffixes: dict[str, str] = {}


def register(name: str, *suffixes: str) -> Callable[[Resolver], Resolver]:
    """Decorator: make ``fn`` the resolver called ``name``, and the ``auto`` choice for files
    ending in ``suffixes``."""

    def decorate(fn: Resolver) -> Resolver:
        _registry.add(name, fn)
        for suffix in suffixes:
            _suffixes[suffix.lower()] = name
        return fn

    return decorate


def _load(name: str) -> Resolver | None:
    try:
        return _registry.get(name)
    except ImportError as exc:
        raise ConfigError(missing_extra(f"the {name!r} resolver", exc)) from None


# The optional extra that provides each importable package a built-in resolver needs.
_EXTRAS = {"pxr": "usd"}
# The versions the built-in resolvers are written against, where a newer API breaks them.
_SUPPORTED = {"blender_asset_tracer": "blender-asset-tracer>=1.23,<2"}


def missing_extra(who: str, exc: ImportError) -> str:
    """One line saying which extra to install for ``who`` when an import failed."""
    package = (exc.name or "").split(".")[0]
    if not isinstance(exc, ModuleNotFoundError):  # installed, but lacks what is imported
        wanted = _SUPPORTED.get(package, package or "?")
        return f"{who} cannot use the installed {package} ({exc}): pip install '{wanted}'"
    extra = _EXTRAS.get(package)
    install = f"pip install 'jitrender[{extra}]'" if extra else f"pip install {package or '?'}"
    return f"{who} needs the Python package {package!r}, which is not installed: {install}"


def available() -> list[str]:
    return _registry.names()


def resolver_for(name: str, scene_url: str) -> tuple[str, Resolver]:
    """The resolver to use: by name, or with ``auto`` by the scene's file type."""
    if name == "auto":
        lower = scene_url.lower()
        suffix = "." + lower.rsplit(".", 1)[-1] if "." in lower.rsplit("/", 1)[-1] else ""
        name = _suffixes.get(suffix) or _BUILTIN_SUFFIXES.get(suffix) or ""
        if not name:
            raise ConfigError(
                f"{scene_url}: no resolver for this file type; set 'resolver:' to one of "
                f"{', '.join(available())}"
            )
    resolver = _load(name)
    if resolver is None:
        raise ConfigError(f"resolver {name!r} is not known; available: {', '.join(available())}")
    return name, resolver


__all__ = ["ResolveContext", "Resolver", "available", "register", "resolver_for"]
