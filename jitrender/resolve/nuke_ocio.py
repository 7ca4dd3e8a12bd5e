"""The LUT files an OpenColorIO config needs: every ``FileTransform``'s ``src``, found through
the config's ``search_path`` (relative to the config's folder, first match wins, as OCIO does)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from jitrender.deps import Dependencies, Unresolved
from jitrender.errors import JitrenderError
from jitrender.paths import is_url, join_url, url_dirname
from jitrender.resolve.base import ResolveContext, file_dependencies

_ENV_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_TAG_KEY = "__ocio_tag__"


class _OcioLoader(yaml.SafeLoader):
    """SafeLoader that accepts OCIO's ``!<ColorSpace>``-style tags and records them."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        mapping = loader.construct_mapping(node, deep=True)
        mapping[_TAG_KEY] = suffix.strip("!<>")
        return mapping
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


# OCIO writes verbatim tags (``!<FileTransform>``), which PyYAML reads as ``FileTransform``.
_OcioLoader.add_multi_constructor("", _tagged)


def _file_transforms(tree: Any) -> Iterator[str]:
    stack = [tree]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue  # YAML aliases share nodes; walking them again could be exponential
        seen.add(id(item))
        if isinstance(item, dict):
            if item.get(_TAG_KEY) == "FileTransform" and isinstance(item.get("src"), str):
                yield item["src"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _expand(text: str, environ: Mapping[str, str], defaults: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        found = environ.get(name, defaults.get(name))
        if found is None:
            raise KeyError(name)
        return str(found)

    return _ENV_VAR.sub(value, text)


def ocio_config_dependencies(
    ctx: ResolveContext,
    written: str,
    source: str,
    environ: Mapping[str, str],
    relative_to: str | None = None,
) -> Dependencies:
    """The config file itself (every frame) and the LUTs its FileTransforms reference."""
    out = file_dependencies(ctx, written, source, relative_to=relative_to)
    try:
        config_url = ctx.map(written, relative_to=relative_to)
        text = ctx.fetch(config_url).read_bytes()
        config = yaml.load(text, Loader=_OcioLoader)  # a SafeLoader subclass
    except (JitrenderError, OSError, ValueError) as exc:
        out.unresolved.append(Unresolved(source, written, f"cannot read the OCIO config: {exc}"))
        return out
    except (yaml.YAMLError, RecursionError) as exc:
        why = f"the OCIO config is not valid YAML: {str(exc).splitlines()[0]}"
        out.unresolved.append(Unresolved(source, written, why))
        return out
    if not isinstance(config, dict):
        out.unresolved.append(Unresolved(source, written, "the OCIO config is not a mapping"))
        return out
    defaults_raw = config.get("environment")
    defaults = (
        {str(k): str(v) for k, v in defaults_raw.items()} if isinstance(defaults_raw, dict) else {}
    )
    raw_search = config.get("search_path", "")
    if isinstance(raw_search, list):
        entries = [str(entry) for entry in raw_search]
    else:
        entries = [entry for entry in str(raw_search or "").split(":") if entry]
    folder = url_dirname(config_url)
    for src in dict.fromkeys(_file_transforms(config)):
        lut_source = f"{source} ({src})"
        try:
            search = [_expand(entry, environ, defaults) for entry in entries] or ["."]
            expanded = _expand(src, environ, defaults)
        except KeyError as exc:
            why = f"OCIO context variable {exc.args[0]} is not set"
            out.unresolved.append(Unresolved(lut_source, src, why))
            continue
        if is_url(expanded) or expanded.startswith("/"):
            out.extend(file_dependencies(ctx, expanded, lut_source))
            continue
        try:
            found = _search(ctx, folder, search, expanded)
        except ValueError as exc:
            out.unresolved.append(Unresolved(lut_source, src, str(exc)))
            continue
        if found is None:
            why = f"not found in the config's search_path ({':'.join(search)})"
            out.unresolved.append(Unresolved(lut_source, src, why))
        else:
            out.extend(file_dependencies(ctx, found, lut_source))
    return out


def _search(ctx: ResolveContext, config_folder: str, search: list[str], src: str) -> str | None:
    for entry in search:
        base = entry if is_url(entry) else None
        if base is None:
            base = ctx.map(entry, relative_to=config_folder)
        candidate = join_url(base, src)
        folder = url_dirname(candidate)
        if posixpath.basename(candidate) in ctx.names_in_folder(folder):
            return candidate
    return None
