"""Blender's frame arithmetic for file sequences, re-implemented without Blender.

Each function answers "which file number does scene frame F load?" exactly as Blender 5.0
computes it, so a resolver can list the files a frame range needs without opening Blender.
C's ``%`` truncates towards zero and Python's floors; ``_c_mod`` keeps Blender's results for
negative frames.

Standard library only, and it must stay so: the ``blender`` engine's script
(:mod:`jitrender.engines.blender_render`) loads this file by path inside Blender, where
jitrender may not be importable, so that the resolver's prediction and the engine's check of
a frame's images share one copy of the arithmetic.
"""

from __future__ import annotations

import math
import re
import struct
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


def udim_tile_path(pattern: str, tile: int) -> str:
    """The file of tile number ``tile`` (1001, 1002, ...) of a tiled image's path: Blender's
    ``BKE_image_set_filepath_from_tile_number`` puts the number in place of ``<UDIM>``, and
    ``u<U>_v<V>`` (counted from 1, ten tiles a row) in place of ``<UVTILE>``."""
    u, v = (tile - 1001) % 10 + 1, (tile - 1001) // 10 + 1
    return pattern.replace("<UDIM>", str(tile)).replace("<UVTILE>", f"u{u}_v{v}")


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


# Strip.flag bits and Strip.type values (Blender's DNA_sequence_types.h, eStripFlag / StripType).
STRIP_MUTE = 1 << 5
STRIP_REVERSE_FRAMES = 1 << 7
STRIP_AUTO_PLAYBACK_RATE = 1 << 17
STRIP_SINGLE_FRAME_CONTENT = 1 << 18
STRIP_TYPE_IMAGE = 0
STRIP_TYPE_META = 1
STRIP_TYPE_MOVIE = 3
STRIP_TYPE_SOUND_RAM = 4
STRIP_TYPE_SOUND_HD = 5
STRIP_TYPE_EFFECT = 8  # a bit: every effect type has it
STRIP_TYPE_SPEED = 29
CHANNEL_MUTE = 1 << 1  # SeqTimelineChannel.flag (eSeqChannelFlag)
BLEND_REPLACE = 0  # Strip.blend_mode (STRIP_BLEND_REPLACE)


def _f32(value: float) -> float:
    """``value`` rounded to a C float: the sequencer does its frame arithmetic in floats."""
    return float(struct.unpack("f", struct.pack("f", value))[0])


@dataclass(frozen=True)
class StripTiming:
    """The DNA fields that place a video-sequencer strip on its timeline and pick the frame of
    its content shown at a timeline frame: ``start``, ``len``, ``startofs``, ``endofs``,
    ``anim_startofs``, ``flag``, ``strobe``, ``media_playback_rate`` (and, for an effect with
    inputs, ``startdisp``/``enddisp``, which are then its handles)."""

    start: float
    length: int
    start_offset: float = 0.0
    end_offset: float = 0.0
    anim_start_offset: int = 0
    flag: int = 0
    strobe: float = 1.0
    playback_rate: float = 0.0
    scene_fps: float = 24.0
    is_image: bool = False
    effect_range: tuple[int, int] | None = None

    def _rate_factor(self) -> float:
        # time_media_playback_rate_factor_get (strip_time.cc)
        if not self.flag & STRIP_AUTO_PLAYBACK_RATE or self.playback_rate == 0.0:
            return 1.0
        return _f32(self.playback_rate / _f32(self.scene_fps))

    def _content_end(self) -> float:
        # time_content_end_frame_get: start + time_strip_length_get (len / rate factor, as int)
        return _f32(self.start + int(_f32(self.length / self._rate_factor())))

    def left_handle(self) -> int:
        """The first timeline frame the strip shows (``time_left_handle_frame_get``)."""
        if self.effect_range is not None:
            return self.effect_range[0]
        return int(_f32(self.start + self.start_offset))

    def right_handle(self) -> int:
        """The timeline frame after its last (``time_right_handle_frame_get``)."""
        if self.effect_range is not None:
            return self.effect_range[1]
        return int(_f32(self._content_end() - self.end_offset))

    def shows(self, frame: int) -> bool:
        """``time_strip_intersects_frame``: left handle <= frame < right handle."""
        return self.left_handle() <= frame < self.right_handle()

    def frame_index(self, frame: float) -> float | None:
        """The index into the strip's content shown at timeline ``frame``; ``None`` for an empty
        strip. Blender's ``give_frame_index`` (``sequencer/intern/strip_time.cc``, 5.0) for a
        strip that is not retimed and not an effect:

        1. ``end = start + length - 1``; ``end < start`` -> -1 (nothing).
        2. A single-image strip (``SEQ_SINGLE_FRAME_CONTENT``) -> 0.
        3. ``index = end - frame`` when Reverse Frames is on, else ``frame - start``; at least 0.
        4. Times the media playback rate factor; clamped to ``0 .. len - 1`` (so holds before
           and after the content show its first and last frame).
        5. Strobe above 1: ``index -= fmod(index, strobe)``.
        """
        start = _f32(self.start)
        end = _f32(self._content_end() - 1)
        if end < start:
            return None
        if self.is_image and self.flag & STRIP_SINGLE_FRAME_CONTENT:
            return 0.0
        index = _f32(end - frame) if self.flag & STRIP_REVERSE_FRAMES else _f32(frame - start)
        index = _f32(max(index, 0.0) * self._rate_factor())
        index = min(max(index, 0.0), float(self.length - 1))
        if self.strobe > 1.0:
            index = _f32(index - _f32(math.fmod(index, _f32(self.strobe))))
        return index

    def element_index(self, frame: int) -> int | None:
        """The image strip element (index into ``StripData.stripdata``) shown at ``frame``:
        ``render_give_stripelem`` (``sequencer/intern/render.cc``) rounds the frame index
        (``round_fl_to_int``: floor of index + 0.5) and adds ``anim_startofs``."""
        index = self.frame_index(frame)
        if index is None:
            return None
        return math.floor(_f32(index + 0.5)) + self.anim_start_offset

    def inner_frame(self, frame: int) -> int | None:
        """The timeline frame inside a meta strip that its parent's ``frame`` renders:
        ``do_render_strip_seqbase`` renders the meta's strips at ``int(start) + frame_index``,
        which the strips below read as an int (C truncation)."""
        index = self.frame_index(frame)
        if index is None:
            return None
        return int(_f32(index + int(self.start)))


@dataclass(frozen=True)
class SequencerStrip:
    """One strip of a scene's video sequencer, as read from the .blend file.

    ``muted`` is the strip's own Mute or its channel's. ``files`` are the paths as written
    (the strip's folder joined with each element's file name): one per element of an image
    strip, the one file of a movie or sound strip. ``inputs`` are the positions, in the same
    list, of an effect's input strips; ``strips`` a meta strip's own strips. ``retimed``: it
    has speed (retiming) keys, which move both its content and its handles.
    """

    name: str
    kind: int
    channel: int
    muted: bool
    timing: StripTiming
    files: tuple[str, ...] = ()
    inputs: tuple[int, ...] = ()
    strips: tuple[SequencerStrip, ...] = ()
    retimed: bool = False
    replaces: bool = False  # blend mode Replace: the strips below it are not rendered


def strips_rendered_at(
    strips: tuple[SequencerStrip, ...], frame: int | None
) -> list[tuple[SequencerStrip, int | None]]:
    """The image and movie strips the sequencer renders at timeline ``frame``, each with the
    frame it is rendered at (``None``: any of its frames, because a speed effect or retiming
    remaps it; also what ``frame=None`` asks for).

    Blender's ``query_rendered_strips`` (``sequencer/intern/iterator.cc``) takes the strips
    whose handles contain the frame, minus sound strips and muted ones (``render_is_muted``:
    the strip's Mute or its channel's); each effect then renders its inputs at the same frame
    (``seq_render_effect_strip_impl``, muted or not; a Speed Control at a remapped frame), and
    a meta strip its own strips at ``int(start) + frame_index`` (``do_render_strip_seqbase``).
    ``seq_render_strip_stack`` renders the stack from the top channel down and stops at the
    first strip whose blend mode is Replace: strips in lower channels are not rendered there.
    Strips under an opaque Alpha Over strip are still listed: whether they are covered depends
    on the images' pixels.
    """
    pulled: dict[int, int | None] = {}
    queue: list[tuple[int, int | None]] = []
    for position, strip in enumerate(strips):
        if strip.muted or strip.kind in (STRIP_TYPE_SOUND_RAM, STRIP_TYPE_SOUND_HD):
            continue
        if frame is None:
            queue.append((position, None))
        elif strip.retimed:
            # speed keys move its right handle; its left one is still start + startofs
            if frame >= strip.timing.left_handle():
                queue.append((position, None))
        elif strip.timing.shows(frame):
            queue.append((position, frame))
    # a retimed strip may not show at this frame, so only a strip known to be there cuts
    cuts = [strips[p].channel for p, at in queue if at is not None and strips[p].replaces]
    if cuts:
        queue = [(p, at) for p, at in queue if strips[p].channel >= max(cuts)]
    while queue:
        position, at = queue.pop()
        if position in pulled and (pulled[position] is None or pulled[position] == at):
            continue
        # the same strip at two frames (direct and through a speed effect): any frame
        pulled[position] = None if position in pulled else at
        strip = strips[position]
        if strip.kind & STRIP_TYPE_EFFECT:
            remapped = strip.kind == STRIP_TYPE_SPEED or at is None
            for source in strip.inputs:
                if 0 <= source < len(strips):
                    queue.append((source, None if remapped else at))
    out: list[tuple[SequencerStrip, int | None]] = []
    for position in sorted(pulled):
        strip, at = strips[position], pulled[position]
        if strip.kind == STRIP_TYPE_META:
            inner = None if at is None or strip.retimed else strip.timing.inner_frame(at)
            if at is not None and inner is None:
                continue  # an empty meta strip
            out.extend(strips_rendered_at(strip.strips, inner))
        elif strip.kind in (STRIP_TYPE_IMAGE, STRIP_TYPE_MOVIE):
            out.append((strip, at))
    return out


def strips_heard(strips: tuple[SequencerStrip, ...]) -> list[SequencerStrip]:
    """The sound strips that are not muted, themselves or through a meta strip around them
    (Blender reads a sound strip's whole file for the scene's audio, whatever the frame)."""
    out: list[SequencerStrip] = []
    for strip in strips:
        if strip.muted:
            continue
        if strip.kind == STRIP_TYPE_META:
            out.extend(strips_heard(strip.strips))
        elif strip.kind in (STRIP_TYPE_SOUND_RAM, STRIP_TYPE_SOUND_HD):
            out.append(strip)
    return out
