"""Blender's frame arithmetic for file sequences, re-implemented without Blender.

Each function answers "which file number does scene frame F load?" exactly as Blender 5.0
computes it, so a resolver can list the files a frame range needs without opening Blender.
C's ``%`` truncates towards zero and Python's floors; ``_c_mod`` keeps Blender's results for
negative frames.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Blender's file-name sequence number: the last run of digits in the name (before the extension).
_DIGITS = re.compile(r"\d+")


def _c_mod(value: int, divisor: int) -> int:
    """C's ``value % divisor`` for a positive divisor (the sign follows ``value``)."""
    rest = abs(value) % divisor
    return -rest if value < 0 else rest


def sequence_pattern(path: str) -> tuple[str, int] | None:
    """A Blender sequence path as a ``#`` pattern, and the number it was written with.

    Blender stores the path of one file of a sequence (``//tex.0001.png``), never a token: the
    last run of digits in the file name (before the extension, if the stem has digits) is the
    frame number, and its length is the padding (``BLI_path_sequence_decode``). ``None`` when
    the file name has no digits.
    """
    slash = max(path.rfind("/"), path.rfind("\\"))
    name_start = slash + 1
    name = path[name_start:]
    dot = name.rfind(".")
    stem_end = dot if dot > 0 else len(name)
    runs = list(_DIGITS.finditer(name, 0, stem_end)) or list(_DIGITS.finditer(name))
    if not runs:
        return None
    run = runs[-1]
    start, end = name_start + run.start(), name_start + run.end()
    return path[:start] + "#" * (end - start) + path[end:], int(run.group(0))


@dataclass(frozen=True)
class ImageUser:
    """The ``ImageUser`` DNA fields that pick a sequence frame: Frames (``frames``), Start Frame
    (``sfra``), Offset (``offset``) and Cyclic (``cycl``), as set on an image texture node or a
    texture datablock."""

    frames: int
    start: int
    offset: int
    cyclic: bool

    def file_frame(self, scene_frame: int) -> tuple[int, bool]:
        """The file number scene frame ``scene_frame`` loads, and whether it is in range.

        Blender's ``BKE_image_user_frame_get`` (what ``BKE_image_user_frame_calc`` stores in
        ``iuser->framenr``, and what Cycles asks for each image sequence):

        1. ``len = frames``; when it is 0 the frame number is 0.
        2. ``cfra = scene_frame - start + 1``.
        3. Cyclic: ``cfra = cfra % len`` (C remainder), negative -> ``+ len``, 0 -> ``len``;
           always in range.
        4. Then ``cfra`` is clamped to ``0..len`` (clamping means out of range).
        5. ``framenr = min(cfra, frames)``; cyclic wraps it again the same way.
        6. ``framenr += offset`` — after wrapping, so a loop can cycle frames 100-110.

        The file is the stored path with its sequence number replaced by ``framenr``.
        """
        length = self.frames
        if length == 0:
            return 0, False
        cfra = scene_frame - self.start + 1
        in_range = False
        if self.cyclic:
            cfra = _wrap(cfra, length)
            in_range = True
        if cfra < 0:
            cfra = 0
        elif cfra > length:
            cfra = length
        else:
            in_range = True
        framenr = min(cfra, self.frames)
        if self.cyclic:
            framenr = _wrap(framenr, length)
        return framenr + self.offset, in_range


def _wrap(frame: int, length: int) -> int:
    frame = _c_mod(frame, length)
    while frame < 0:
        frame += length
    return length if frame == 0 else frame


# Volume.sequence_mode values (DNA VolumeSequenceMode).
VOLUME_CLIP, VOLUME_EXTEND, VOLUME_REPEAT, VOLUME_PING_PONG = 0, 1, 2, 3


def volume_file_frame(
    scene_frame: int, *, start: int, duration: int, offset: int, mode: int
) -> int | None:
    """The file number a volume sequence loads at ``scene_frame`` (``volume_sequence_frame``
    in Blender's ``volume.cc``); ``None`` when the volume is empty on that frame (Clip mode
    outside its range, or a zero duration)."""
    if duration == 0:
        return None
    frame = scene_frame - start + 1
    if mode == VOLUME_EXTEND:
        frame = min(max(frame, 1), duration)
    elif mode == VOLUME_REPEAT:
        frame = _c_mod(frame, duration)
        if frame < 0:
            frame += duration
        if frame == 0:
            frame = duration
    elif mode == VOLUME_PING_PONG:
        period = duration * 2 - 2
        if period <= 0:
            frame = 1
        else:
            frame = _c_mod(frame, period)
            if frame < 0:
                frame += period
            if frame == 0:
                frame = period
            if frame > duration:
                frame = duration * 2 - frame
    elif frame < 1 or frame > duration:
        return None
    return frame + offset


def clip_file_frame(scene_frame: int, *, first_number: int, start: int, offset: int) -> int:
    """The file number an image-sequence movie clip loads at ``scene_frame``.

    Blender's ``get_sequence_filepath`` (``movieclip.cc``): the clip's path names its first
    file, whose number is the base; the number loaded is
    ``base + scene_frame - start_frame + frame_offset``.
    """
    return first_number + scene_frame - start + offset


def cache_file_frame(scene_frame: int, *, override: bool, frame: float) -> int:
    """The file number a cache-file sequence (``CacheFile.is_sequence``) loads: the scene frame,
    or the cache file's own Frame when Override Frame is on (``BKE_cachefile_time_offset``)."""
    return int(frame) if override else scene_frame
