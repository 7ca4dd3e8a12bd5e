"""Path semantics in one place: scene paths as written <-> object URLs <-> workspace paths.

URLs are plain ``scheme://netloc/path`` strings, never percent-encoded (``file:///abs/path``,
``gs://bucket/key``), so they compare as strings and round-trip through scene files.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from jitrender.errors import ConfigError, ObjectNameError

_URL_RE = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]+)://(?P<rest>.*)$")
_DRIVE_RE = re.compile(r"^[a-zA-Z]:[\\/]")
# The longest file or folder name ext4, xfs, btrfs and tmpfs hold, in bytes.
NAME_MAX = 255

PathFormat = Literal["posix", "windows"]


# A scheme and a colon, then not the two slashes of a URL (``gs:/show``, ``gs:show``): read as
# a relative path, it put outputs in a local folder named ``gs:``.
_ALMOST_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:(?!//)")
# The characters of a GCS bucket name (a space or a capital letter is never one).
_GCS_BUCKET = re.compile(r"^[a-z0-9._-]+$")


def location_problem(value: str, example: str) -> str | None:
    """What is wrong with a URL or path a job names (scene, deps, outputs, a path mapping's
    destination), or None; ``example`` is a path to show in the URL it suggests."""
    if value.startswith("~"):
        return (
            f"{value!r}: '~' is not expanded here (it would be read as a folder named '~'); "
            "write the absolute path or a URL"
        )
    if not is_url(value):
        if _ALMOST_URL.match(value):  # (a drive letter is one letter: never a scheme)
            scheme = value.split(":", 1)[0]
            return f"{value!r} is not a URL (write {scheme}://bucket/{example})"
        return None
    scheme, netloc, _ = split_url(value)
    if scheme != "file" and not netloc:
        return f"{value!r} names no bucket (write e.g. {scheme}://bucket/{example})"
    if scheme == "gs" and not _GCS_BUCKET.match(netloc):
        return (
            f"{value!r}: {netloc!r} is not a GCS bucket name (lowercase letters, digits, '-', "
            "'_' and '.')"
        )
    return None


def is_url(value: str) -> bool:
    return _URL_RE.match(value) is not None and not _DRIVE_RE.match(value)


def split_url(url: str) -> tuple[str, str, str]:
    """``gs://b/a`` -> ``("gs", "b", "/a")``; ``file:///x/y`` -> ``("file", "", "/x/y")``."""
    match = _URL_RE.match(url)
    if match is None:
        raise ValueError(f"not a URL: {url!r}")
    scheme = match["scheme"].lower()
    rest = match["rest"]
    netloc, slash, path = rest.partition("/")
    return scheme, netloc, slash + path


def join_url(base_url: str, relative: str) -> str:
    """Resolve ``relative`` (posix, may hold ``..``) against the *folder* URL ``base_url``."""
    scheme, netloc, path = split_url(base_url)
    joined = posixpath.normpath(posixpath.join(path or "/", relative))
    if joined.startswith("//"):
        joined = "/" + joined.lstrip("/")
    return f"{scheme}://{netloc}{joined}"


def url_dirname(url: str) -> str:
    scheme, netloc, path = split_url(url)
    return f"{scheme}://{netloc}{posixpath.dirname(path)}"


def url_basename(url: str) -> str:
    return posixpath.basename(split_url(url)[2])


def file_url(path: str | Path) -> str:
    """The ``file://`` URL of a local path (made absolute). URLs are UTF-8 text: a path with a
    name in another encoding raises :class:`ConfigError` (exit 78) naming it."""
    text = Path(path).absolute().as_posix()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise ConfigError(
            f"{shown}: a folder or file name here is not valid UTF-8, so no URL can name it; "
            "rename it (or give absolute URLs in the job)"
        ) from None
    return "file://" + text


def local_path_of(url: str) -> Path:
    """The local path behind a ``file://`` URL."""
    scheme, netloc, path = split_url(url)
    if scheme != "file":
        raise ValueError(f"not a file:// URL: {url}")
    return Path(f"//{netloc}{path}" if netloc else path)


def workspace_relpath(url: str) -> PurePosixPath:
    """Where an object lives below a workspace's ``inputs/``: ``<scheme>/<netloc>/<path>``.

    The bucket's own layout is kept under its root, so paths relative to a scene keep working.
    Raises :class:`ObjectNameError` (one line, exit 65) for a name with a ``..`` segment
    (it would land outside ``inputs/``) or one too long for the local file system."""
    return PurePosixPath(workspace_relstr(url))


def workspace_relstr(url: str) -> str:
    """:func:`workspace_relpath` as a string (no pathlib parsing: asked once per input)."""
    scheme, netloc, path = split_url(url)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ObjectNameError(
            f"{url}: the object name holds a '..' segment, which would place it outside the "
            "workspace; refusing it (rename the object)"
        )
    for part in parts:
        if len(part) <= NAME_MAX // 4:  # at most 4 bytes a character: short enough
            continue
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            raise ObjectNameError(
                f"{url}: a name in it is {size} bytes long; the local file system holds at "
                f"most {NAME_MAX} bytes per file or folder name (shorten it)"
            )
    return "/".join((scheme, netloc or "_", *parts))


def is_windows_path(path: str) -> bool:
    return bool(_DRIVE_RE.match(path)) or path.startswith("\\\\")


def _normalise_scene_path(path: str) -> str:
    """Backslashes to slashes for Windows paths; duplicate slashes folded (not a leading ``//``)."""
    if is_windows_path(path) or ("\\" in path and "/" not in path):
        path = path.replace("\\", "/")
    head = "//" if path.startswith("//") else ""
    return head + re.sub(r"/{2,}", "/", path[len(head) :])


@dataclass(frozen=True)
class PathRule:
    """Scene paths starting with ``source`` map to ``destination`` (a URL prefix).

    ``source_format`` says how ``source`` is spelled; Windows sources match case-insensitively
    and with either slash.
    """

    source: str
    destination: str
    source_format: PathFormat = "posix"

    def _source_key(self) -> str:
        source = _normalise_scene_path(self.source).rstrip("/")
        return source.lower() if self.source_format == "windows" else source

    def match(self, path: str) -> str | None:
        """The rest of ``path`` after the source prefix (``""`` for the prefix itself), or None."""
        candidate = _normalise_scene_path(path)
        key = self._source_key()
        compare = candidate.lower() if self.source_format == "windows" else candidate
        if compare == key:
            return ""
        if compare.startswith(key + "/"):
            return candidate[len(key) + 1 :]
        return None

    def reverse(self, url: str) -> str | None:
        dest = self.destination.rstrip("/")
        if url == dest:
            rest = ""
        elif url.startswith(dest + "/"):
            rest = url[len(dest) + 1 :]
        else:
            return None
        source = self.source.rstrip("/\\")
        if self.source_format == "windows":
            return source + ("\\" + rest.replace("/", "\\") if rest else "")
        return source + ("/" + rest if rest else "")


class PathMap:
    """Prefix rules from scene paths to URLs and back; longest source prefix wins.

    ``before`` is an earlier stage of rules applied first (a farm's Open Job Description rules,
    which turn the submitting workstation's paths into this node's): a path it maps to a local
    path then goes through these rules, so ``P:\\show`` -> ``/mnt/show`` -> ``gs://show``.
    """

    def __init__(self, rules: Iterable[PathRule] = (), before: PathMap | None = None) -> None:
        self.rules = sorted(rules, key=lambda r: len(r._source_key()), reverse=True)
        self.before = before if before else None

    def __repr__(self) -> str:
        return f"PathMap({self.rules!r}, before={self.before!r})"

    def __bool__(self) -> bool:
        return bool(self.rules) or self.before is not None

    def chained_after(self, first: PathMap) -> PathMap:
        """These rules, applied to what ``first`` (and its own earlier stages) made of a path."""
        if not first:
            return self
        earlier = first if self.before is None else self.before.chained_after(first)
        return PathMap(self.rules, earlier)

    def to_url(self, path: str, relative_to: str | None = None, *, blender: bool = False) -> str:
        """Map a path as written in a scene to an object URL.

        ``relative_to`` is the URL of the folder relative paths start from (the scene's folder).
        With ``blender=True`` a leading ``//`` means "relative to the .blend file", as in Blender.
        """
        path = path.strip()
        if is_url(path):
            return path
        if blender and path.startswith("//"):
            return self._relative(path[2:], relative_to, path)
        if self.before is not None and self.before.is_mapped(path):
            earlier = self.before.to_url(path, relative_to)
            if not earlier.startswith("file://") or not self._matches(earlier[len("file://") :]):
                return earlier
            path = earlier[len("file://") :]
        for rule in self.rules:
            rest = rule.match(path)
            if rest is not None:
                dest = rule.destination.rstrip("/")
                return join_url(dest + "/", rest) if rest else dest
        normal = _normalise_scene_path(path)
        if normal.startswith("/") or is_windows_path(path):
            absolute = normal if normal.startswith("/") else "/" + normal
            return "file://" + posixpath.normpath(absolute)
        return self._relative(normal, relative_to, path)

    @staticmethod
    def _relative(rel: str, relative_to: str | None, original: str) -> str:
        if relative_to is None:
            raise ValueError(f"relative path {original!r} with nothing to be relative to")
        return join_url(relative_to, _normalise_scene_path(rel))

    def to_scene_path(self, url: str) -> str | None:
        """The path a scene would write for ``url`` under the first rule that maps it, if any
        (through the earlier stages too: back to the workstation's path where one maps)."""
        found: str | None = None
        for rule in sorted(self.rules, key=lambda r: len(r.destination), reverse=True):
            found = rule.reverse(url)
            if found is not None:
                break
        if self.before is not None:
            earlier = self.before.to_scene_path(url if found is None else _as_url(found))
            if earlier is not None:
                return earlier
        return found

    def _matches(self, path: str) -> bool:
        return any(rule.match(path) is not None for rule in self.rules)

    def is_mapped(self, path: str) -> bool:
        return self._matches(path) or (self.before is not None and self.before.is_mapped(path))

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_pairs(cls, pairs: Iterable[str]) -> PathMap:
        """From ``FROM=TO`` strings as given on the command line."""
        rules = []
        for pair in pairs:
            source, sep, dest = pair.partition("=")
            if not sep or not source or not dest:
                raise ConfigError(f"--path-map {pair!r}: expected FROM=TO")
            problem = location_problem(dest, "show")
            if problem is not None:
                raise ConfigError(f"--path-map {pair!r}: {problem}")
            rules.append(rule_from(source, dest))
        return cls(rules)

    @classmethod
    def from_openjd(cls, document: Mapping[str, Any], where: str = "path mapping") -> PathMap:
        """From Open Job Description path-mapping rules (``pathmapping-1.0`` JSON). An empty
        document (``{}``, what a farm writes when it has no rules) means no rules."""
        if not isinstance(document, Mapping):
            raise ConfigError(
                f"{where}: expected an Open Job Description document (a JSON object with "
                f"'version' and 'path_mapping_rules'), not {type(document).__name__}"
            )
        unknown = sorted(str(k) for k in document if k not in ("version", "path_mapping_rules"))
        if unknown:
            raise ConfigError(
                f"{where}: {unknown[0]!r}: not an Open Job Description key (a document holds "
                "'version' and 'path_mapping_rules'; for FROM: TO pairs leave both out)"
            )
        version = document.get("version", "pathmapping-1.0")
        if version != "pathmapping-1.0":
            raise ConfigError(f"{where}: version {version!r}: expected 'pathmapping-1.0'")
        rules_json = document.get("path_mapping_rules", [])
        if not isinstance(rules_json, list):
            raise ConfigError(f"{where}: expected a 'path_mapping_rules' list")
        rules = []
        for index, item in enumerate(rules_json):
            try:
                fmt = str(item["source_path_format"]).lower()
                source, dest = item["source_path"], item["destination_path"]
                if not (isinstance(source, str) and source and isinstance(dest, str) and dest):
                    raise TypeError("a path that is not text")
            except (KeyError, TypeError):
                raise ConfigError(
                    f"{where}: path_mapping_rules[{index}] needs source_path_format, "
                    "source_path and destination_path (the paths as non-empty strings)"
                ) from None
            if fmt not in ("posix", "windows"):
                raise ConfigError(
                    f"{where}: path_mapping_rules[{index}].source_path_format must be "
                    "POSIX or WINDOWS"
                )
            rules.append(PathRule(source, _as_url(dest), fmt))  # type: ignore[arg-type]
        return cls(rules)

    @classmethod
    def from_mapping(
        cls,
        mapping: Mapping[Any, Any],
        where: str = "path_map",
        resolve: Callable[[str], str] | None = None,
    ) -> PathMap:
        """From the ``{FROM: TO}`` form. Raises :class:`ConfigError` naming the first key whose
        source or destination is not a non-empty string."""
        rules = []
        for source, dest in mapping.items():
            if not isinstance(source, str) or not source.strip():
                raise ConfigError(f"{where}: key {source!r}: expected a path prefix")
            if not isinstance(dest, str) or not dest.strip():
                raise ConfigError(
                    f"{where}: {source!r}: expected the URL or path it maps to, got {dest!r}"
                )
            rules.append(rule_from(source, resolve(dest) if resolve is not None else dest))
        return cls(rules)

    @classmethod
    def load_openjd(cls, path: Path) -> PathMap:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read path mapping rules: {exc}") from None
        return cls.from_openjd(document, str(path))

    def merged(self, other: PathMap) -> PathMap:
        """Both maps' rules as one stage (longest prefix wins); their earlier stages chained,
        ``other``'s first."""
        before: PathMap | None = None
        for stage in (other.before, self.before):
            if stage is not None:
                before = stage if before is None else stage.chained_after(before)
        return PathMap([*other.rules, *self.rules], before)


def _as_url(destination: str) -> str:
    if is_url(destination):
        return destination.rstrip("/")
    return file_url(destination).rstrip("/")


def rule_from(source: str, destination: str) -> PathRule:
    fmt: PathFormat = "windows" if is_windows_path(source) or "\\" in source else "posix"
    return PathRule(source, _as_url(destination), fmt)
