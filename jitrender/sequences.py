"""Frame, tile and view tokens in file paths, expanded for exactly the frames requested.

Shared by every resolver. Padding counts one digit per ``#`` or ``@`` (as Nuke, Houdini and
Blender do); ``%04d``/``%d``, ``$F``/``$F4`` and ``{frame:04d}`` are understood too. With
``style="nuke"`` only Nuke's own tokens count (``#…`` and ``%0Nd``): in a Nuke path ``@`` and
``$F`` are literal characters. UDIM
(``<UDIM>``, ``<udim>``, ``%(UDIM)d``) and ``<UVTILE>`` tiles are matched against a folder
listing, never probed one request per tile.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from jitrender.errors import ConfigError

# One alternative per spelling; the named group tells which.
_FRAME_TOKEN = re.compile(
    r"(?P<hash>#+)"
    r"|(?P<at>@+)"
    r"|%(?P<printf>0?\d*)d"
    r"|\$F(?P<houdini>\d?)(?![A-Za-z_])"
    r"|\{frame(?::(?P<fmt>0?\d*)d)?\}"
)
_NUKE_FRAME_TOKEN = re.compile(r"(?P<hash>#+)|%(?P<printf>0?\d*)d")
_TOKENS = {"any": _FRAME_TOKEN, "nuke": _NUKE_FRAME_TOKEN}
_UDIM_TOKEN = re.compile(r"<UDIM>|<udim>|%\(UDIM\)d|<UVTILE>|<uvtile>")
_VIEW_TOKEN = re.compile(r"%V|%v")


@dataclass(frozen=True)
class FrameToken:
    """Where the frame number goes in a path, and how wide it is (0 = no padding)."""

    start: int
    end: int
    padding: int

    def format(self, frame: int) -> str:
        if frame < 0:
            return "-" + str(-frame).zfill(max(self.padding - 1, 0))
        return str(frame).zfill(self.padding)


def _token_regex(style: str) -> re.Pattern[str]:
    try:
        return _TOKENS[style]
    except KeyError:
        raise ValueError(f"unknown frame token style {style!r}") from None


def _padding(match: re.Match[str]) -> int:
    groups = match.groupdict()
    if groups["hash"] is not None:
        return len(groups["hash"])
    if groups.get("at") is not None:
        return len(groups["at"])
    if groups["printf"] is not None:
        return int(groups["printf"] or "0")
    if groups.get("houdini") is not None:
        return int(groups["houdini"] or "0")
    return int(groups.get("fmt") or "0")


def find_frame_token(path: str, style: str = "any") -> FrameToken | None:
    """The last frame token in ``path`` (the file name's, when folders have tokens too)."""
    found: FrameToken | None = None
    for match in _token_regex(style).finditer(path):
        found = FrameToken(match.start(), match.end(), _padding(match))
    return found


def frame_tokens(path: str, style: str = "any") -> list[FrameToken]:
    """Every frame token in ``path``, in order: those :func:`expand_frame` replaces."""
    return [FrameToken(m.start(), m.end(), _padding(m)) for m in _token_regex(style).finditer(path)]


def has_frame_token(path: str, style: str = "any") -> bool:
    return find_frame_token(path, style) is not None


def has_udim_token(path: str) -> bool:
    return _UDIM_TOKEN.search(path) is not None


def has_view_token(path: str) -> bool:
    return _VIEW_TOKEN.search(path) is not None


def expand_frame(path: str, frame: int, style: str = "any") -> str:
    """``path`` with every frame token replaced by ``frame`` at that token's padding."""

    def substitute(match: re.Match[str]) -> str:
        return FrameToken(match.start(), match.end(), _padding(match)).format(frame)

    return _token_regex(style).sub(substitute, path)


def expand_frames(path: str, frames: Iterable[int], style: str = "any") -> dict[str, list[int]]:
    """Each distinct path the frames need -> the frames that need it (a path without a token:
    one entry for all of them)."""
    result: dict[str, list[int]] = {}
    for frame in frames:
        result.setdefault(expand_frame(path, frame, style), []).append(frame)
    return result


def expand_views(path: str, views: Sequence[str]) -> list[str]:
    """``%V`` -> each view's name, ``%v`` -> its first letter (Nuke's convention)."""
    if not has_view_token(path):
        return [path]
    out = []
    for view in views:
        out.append(path.replace("%V", view).replace("%v", view[:1]))
    return list(dict.fromkeys(out))


def udim_token_at(path: str, index: int) -> re.Match[str] | None:
    """The UDIM/UVTILE token that starts at ``index`` of ``path``, if one does."""
    return _UDIM_TOKEN.match(path, index)


def tile_regex(token: str) -> str:
    """The regex of the tile numbers a UDIM/UVTILE token stands for."""
    return r"u\d+_v\d+" if token.lower() == "<uvtile>" else r"1\d{3}"


def udim_regex(file_name: str) -> re.Pattern[str]:
    """A regex that matches the names a UDIM/UVTILE file-name pattern stands for."""
    pieces = []
    last = 0
    for match in _UDIM_TOKEN.finditer(file_name):
        pieces.append(re.escape(file_name[last : match.start()]))
        pieces.append(tile_regex(match.group(0)))
        last = match.end()
    pieces.append(re.escape(file_name[last:]))
    return re.compile("".join(pieces) + r"\Z")


def match_udim_tiles(file_name: str, names_in_folder: Iterable[str]) -> list[str]:
    """The names in a folder listing that are tiles of the UDIM pattern ``file_name``."""
    regex = udim_regex(file_name)
    return sorted(name for name in names_in_folder if regex.match(name))


# More frames than any one job renders; past it a typo (1-100000000) would take minutes and
# gigabytes just to list. fileseq itself stops at 10,000,000.
MAX_FRAMES = 1_000_000
_RANGE_TERM = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)")
# The everyday spellings (1001, 1-100, 1-100x2), read without fileseq (60 ms to import).
_PLAIN_TERM = re.compile(r"([1-9]\d*|0)(?:-([1-9]\d*|0)(?:x([1-9]\d*))?)?")


def parse_frames(spec: str | int, where: str = "frames") -> list[int]:
    """Frames from farm syntax (``1001-1100``, ``1-100x2``, ``1,5,9-12``): unique, in order.
    A range runs upwards (``10-1`` is refused, not read as a countdown) and a job holds at most
    :data:`MAX_FRAMES` frames; each mistake is one :class:`ConfigError` line."""
    text = str(spec).strip()
    if not text:
        raise ConfigError(f"{where}: empty frame range")
    for term in text.split(","):
        backwards = _RANGE_TERM.match(term)
        if backwards is not None and int(backwards[1]) > int(backwards[2]):
            first, last = backwards[1], backwards[2]
            raise ConfigError(
                f"{where}: {term.strip()!r} runs backwards ({first} down to {last}); "
                f"write {last}-{first}"
            )
    plain = _plain_frames(text)
    if plain is not None:
        return plain
    from fileseq.exceptions import MaxSizeException, ParseException
    from fileseq.frameset import FrameSet

    try:
        frame_set = FrameSet(text)
    except MaxSizeException as exc:
        size = re.search(r"(\d+) >", str(exc))
        count = size[1] if size is not None else "more than 10000000"
        raise ConfigError(_too_many(where, text, count)) from None
    except (ParseException, ValueError, TypeError):
        raise ConfigError(
            f"{where}: {text!r} is not a frame range (use e.g. 1001-1100, 1-100x2, 1,5,9-12)"
        ) from None
    if len(frame_set) > MAX_FRAMES:
        raise ConfigError(_too_many(where, text, str(len(frame_set))))
    frames = list(dict.fromkeys(int(f) for f in frame_set))
    if not frames:
        raise ConfigError(f"{where}: {text!r} selects no frames")
    return frames


def _plain_frames(text: str) -> list[int] | None:
    """The frames of ``text`` when every term is ``N``, ``A-B`` or ``A-BxS`` (non-negative,
    upwards, at most :data:`MAX_FRAMES` in all), as fileseq reads them; None for anything
    else, which fileseq reads (and words the errors of)."""
    ranges = []
    count = 0
    for term in text.split(","):
        match = _PLAIN_TERM.fullmatch(term)
        if match is None:
            return None
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        step = int(match[3]) if match[3] is not None else 1
        count += (last - first) // step + 1
        if last < first or count > MAX_FRAMES:
            return None
        ranges.append(range(first, last + 1, step))
    return list(dict.fromkeys(frame for frames in ranges for frame in frames))


def _too_many(where: str, text: str, count: str) -> str:
    return (
        f"{where}: {text!r} is too many frames ({count}); the limit is {MAX_FRAMES} per job "
        "(split the range into several jobs)"
    )


def format_frames(frames: Iterable[int]) -> str:
    """The compact farm spelling of a frame list (``1-5,7``)."""
    values = sorted(set(frames))
    if not values:
        return ""
    if values[-1] - values[0] + 1 == len(values):  # one run, the common case: no fileseq
        return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"
    from fileseq.frameset import FrameSet

    return str(FrameSet(values))
