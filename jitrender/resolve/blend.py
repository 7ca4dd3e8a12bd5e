"""Blender ``.blend`` scenes, read without Blender (blender-asset-tracer 1.x).

BAT enumerates the datablocks and the paths they use; the per-frame expansion is done here,
because BAT's own sequence expansion globs whatever is on the local disk. What a frame range
needs:

- images: single files, movies (one file), UDIM tiles (those in the image's own tile list,
  whether or not they exist in storage), sequences per frame through each image user's
  Frames/Start/Offset/Cyclic (:class:`~jitrender.resolve.blend_frames.ImageUser`);
- linked libraries, recursively: each library is fetched and only the datablocks this file
  links from it (and what they use) are followed; cycles are cut;
- sounds, fonts, movie clips, volumes, cache files (Alembic/USD), IES lights, external mesh
  data, and simulation caches (point caches, fluid, ocean, geometry-nodes bakes) per frame; a
  cache-file sequence's file for a frame only if it exists (Blender skips a missing one); a
  cloth's point cache from after its start frame (its end frame past the end), a particle
  system's from its start frame (:func:`_point_cache_rule`);
- a sequence whose frame settings are animated (keyframes or drivers on an image user's
  Offset/Start/Frames/Cyclic, a volume's or cache file's frame settings): every file of it in
  storage for every frame, and one ``unresolved`` entry (:func:`_whole_sequence`);
- video-sequencer strips, read from their DNA (BAT names only an image strip's first file):
  per frame, the element an image strip shows there and the movie a movie strip plays; sound
  strips whole; nothing for muted strips
  (:func:`~jitrender.resolve.blend_frames.strips_rendered_at`).

In the main file, the datablocks a chain of pointers reaches from a scene count (in node
trees, only nodes that feed an output), and every library; not orphans, nor what only brushes
use, nor objects disabled in renders that are only members of a collection, nor the 3D scene of
a scene whose render runs no render engine (an active sequencer, or a compositor without a
Render Layers node) (:func:`_used_by_scenes`). In a library, only what the linking file asks
for. Old files' ``Main``-list links and per-face images, and their Smoke and Fluidsim modifiers
(replaced on load), need nothing. Paths Blender
derives from the file's own name (point-cache folders) use the name in ``scene_url``. A
datablock that does not read (a dangling pointer) is one ``unresolved`` entry.
"""

from __future__ import annotations

import fnmatch
import functools
import posixpath
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard
from blender_asset_tracer import blendfile, cdefs
from blender_asset_tracer.blendfile import exceptions as bat_exceptions
from blender_asset_tracer.blendfile import iterators
from blender_asset_tracer.trace import blocks2assets, expanders, modifier_walkers

from jitrender.deps import Dependencies, Dependency, Unresolved
from jitrender.errors import JitrenderError, MissingDependencyError, SceneParseError
from jitrender.paths import url_basename, url_dirname
from jitrender.resolve import register
from jitrender.resolve.base import ResolveContext, file_dependencies
from jitrender.resolve.blend_frames import (
    BLEND_REPLACE,
    CHANNEL_MUTE,
    STRIP_MUTE,
    STRIP_TYPE_IMAGE,
    STRIP_TYPE_META,
    STRIP_TYPE_MOVIE,
    STRIP_TYPE_SOUND_HD,
    STRIP_TYPE_SOUND_RAM,
    ImageUser,
    SequencerStrip,
    StripTiming,
    cache_file_frame,
    clip_file_frame,
    sequence_pattern,
    strips_heard,
    strips_rendered_at,
    udim_tile_path,
    volume_file_frame,
)
from jitrender.sequences import expand_frame, has_udim_token

Block = Any  # blender_asset_tracer.blendfile.BlendFileBlock (BAT ships no type hints)

MCLIP_SRC_SEQUENCE = 1
# Errors BAT raises (or lets through) on a malformed or truncated file.
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    bat_exceptions.BlendFileError,
    bat_exceptions.SegmentationFault,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AssertionError,
    AttributeError,
    UnicodeDecodeError,
    zstandard.ZstdError,  # a zstd-compressed file (Blender 3.0+) whose frames do not decode
)
_POINT_CACHE_NAME = re.compile(r"_(?P<frame>\d{6})_\d{2}\.[^.]+$")
_LAST_DIGITS = re.compile(r"(\d+)(?!.*\d)")


@dataclass
class _Walk:
    """State of one resolve across the main file and its libraries."""

    out: Dependencies = field(default_factory=Dependencies)
    # Library URL -> ID names (b"OBChair") already followed there; cuts cycles.
    followed: dict[str, set[bytes]] = field(default_factory=dict)


@dataclass
class _Parsed:
    """What one .blend file asks for: its dependencies, and IDs to follow into libraries."""

    deps: Dependencies = field(default_factory=Dependencies)
    # Library path as written -> ID names linked from it.
    links: dict[str, set[bytes]] = field(default_factory=dict)


@register("blender", ".blend")
def resolve_blend(ctx: ResolveContext) -> Dependencies:
    """The files a .blend scene's requested frames need (see the module docstring)."""
    walk = _Walk()
    _resolve_file(ctx, None, walk)
    return walk.out.merged()


def _resolve_file(ctx: ResolveContext, names: set[bytes] | None, walk: _Walk) -> None:
    parsed = _parse(ctx, names)
    walk.out.extend(parsed.deps)
    for written, wanted in parsed.links.items():
        source = f"LI:{posixpath.basename(_slashes(written))}"
        try:
            lib_url = ctx.map(written, blender=True)
        except ValueError as exc:
            walk.out.unresolved.append(Unresolved(source, written, str(exc)))
            continue
        seen = walk.followed.setdefault(lib_url, set())
        new = wanted - seen
        if not new:
            continue  # already followed (a cycle, or two files linking the same IDs)
        seen.update(new)
        try:
            local: Path | None = ctx.fetch(lib_url)
        except (MissingDependencyError, FileNotFoundError):
            local = None
        if local is None or not Path(local).is_file():
            continue  # the library's own dependency entry is reported missing by the stat
        _resolve_file(ctx.with_scene(lib_url, Path(local)), new, walk)


def _parse(ctx: ResolveContext, names: set[bytes] | None) -> _Parsed:
    try:
        bfile = blendfile.BlendFile(Path(ctx.scene_file))
    except _PARSE_ERRORS as exc:
        raise SceneParseError(f"{ctx.scene_url}: not a readable .blend file: {_why(exc)}") from None
    try:
        return _parse_open(ctx, bfile, names)
    except JitrenderError:
        raise
    except _PARSE_ERRORS as exc:
        raise SceneParseError(f"{ctx.scene_url}: malformed .blend file: {_why(exc)}") from None
    finally:
        bfile.close()


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


def _parse_open(ctx: ResolveContext, bfile: Any, names: set[bytes] | None) -> _Parsed:
    parsed = _Parsed()
    library = "" if names is None else f"@{url_basename(ctx.scene_url)}"
    blocks, placeholders = _blocks_in_scope(bfile, names, parsed)
    for placeholder in placeholders:
        lib = placeholder.get_pointer(b"lib")
        if lib is None:
            continue
        written = _text(lib[b"name"])
        parsed.links.setdefault(written, set()).add(bytes(placeholder[b"name"]).rstrip(b"\0"))
        if names is not None:
            blocks.append(lib)  # a library used by a library: its file is a dependency too
    users = _image_users(blocks)
    cache_kinds = _point_cache_kinds(blocks)
    animated = _animated_sequences(bfile, blocks)
    seen: set[int] = set()
    for block in blocks:
        if block.addr_old in seen:
            continue
        seen.add(block.addr_old)
        if block.code == b"SC":
            # BAT names only an image strip's first file: the sequencer is read here instead.
            try:
                parsed.deps.extend(_sequencer(ctx, block, library))
            except _PARSE_ERRORS as exc:
                parsed.deps.unresolved.append(_unreadable(block.id_name, library, exc))
            continue
        usages, broken = _block_usages(block, library)
        parsed.deps.unresolved.extend(broken)
        for usage in usages:
            written = _own_cache_name(ctx, usage, _text(bytes(usage.asset_path)))
            if not written:
                continue
            source = _source(usage.block_name, library)
            handler = _HANDLERS.get(usage.block.code)
            if usage.block.addr_old in animated:
                handler = _whole_sequence
            elif handler is None and usage.is_sequence and _is_point_cache(usage.block):
                handler = functools.partial(
                    _cache_folder, frame_rule=_point_cache_rule(usage.block, cache_kinds)
                )
            elif handler is None:
                handler = _cache_folder if usage.is_sequence else _single
            parsed.deps.extend(handler(ctx, usage.block, written, source, users))
    return parsed


# An animated (keyframed or driven) property that picks a sequence's frame: an image user's
# (on a node, ``nodes["Name"].image_user.frame_offset``; a compositor Image node's own; a
# texture's ``image_user.…``), or a volume's or cache file's own.
_NODE_FRAME_SETTING = re.compile(
    rb'^nodes\["((?:[^"\\]|\\.)*)"\]\.(?:image_user\.)?'
    rb"(?:frame_offset|frame_start|frame_duration|use_cyclic)$"
)
_ID_FRAME_SETTING = re.compile(
    rb"^(?:image_user\.)?(?:frame_offset|frame_start|frame_duration|use_cyclic|sequence_mode"
    rb"|is_sequence|override_frame|frame)$"
)


def _animated_sequences(bfile: Any, blocks: list[Block]) -> set[int]:
    """Addresses of the image, volume and cache-file blocks whose frame settings an F-curve
    (keyframes or a driver) animates somewhere in the file: which file a frame reads is then
    not computed (:func:`_whole_sequence`). A node is known by its name, in any node tree."""
    node_names: set[bytes] = set()
    id_level = False
    for block in bfile.blocks:
        if block.dna_type_name != "FCurve":
            continue
        for index in range(max(int(block.count), 1)):
            try:
                address = int(block.get(b"rna_path", array_index=index))
            except _PARSE_ERRORS:
                continue
            target = bfile.block_from_addr.get(address) if address else None
            if target is None:
                continue
            path = bytes(target.raw_data()).split(b"\0", 1)[0]
            found = _NODE_FRAME_SETTING.match(path)
            if found is not None:
                node_names.add(found.group(1).replace(b'\\"', b'"'))
            elif _ID_FRAME_SETTING.match(path):
                id_level = True
    if not node_names and not id_level:
        return set()
    out: set[int] = set()
    for block in blocks:
        animated = block.get_pointer(b"adt", default=None) is not None
        if block.code in (b"VO", b"CF") and id_level and animated:
            out.add(block.addr_old)
        if block.code == b"TE" and id_level and animated:
            image = block.get_pointer(b"ima", default=None)
            if image is not None:
                out.add(image.addr_old)
        for tree in [block] if block.code == b"NT" else _embedded_trees(block):
            if tree.get_pointer(b"adt", default=None) is None:
                continue
            for node in iterators.listbase(tree.get_pointer((b"nodes", b"first"))):
                image = node.get_pointer(b"id", default=None)
                name = bytes(node[b"name"]).split(b"\0", 1)[0]
                if image is not None and image.code == b"IM" and name in node_names:
                    out.add(image.addr_old)
    return out


def _whole_sequence(
    ctx: ResolveContext, block: Block, written: str, source: str, users: dict[int, list[ImageUser]]
) -> Dependencies:
    """A sequence whose frame settings are animated: every file of it in storage, for every
    frame, and one ``unresolved`` entry saying so."""
    why = "sequence frame settings are animated (keyframes or drivers): every file is listed"
    found = sequence_pattern(written)
    kind = block.get(b"source", default=cdefs.IMA_SRC_SEQUENCE) if block.code == b"IM" else None
    sequence = kind in (None, cdefs.IMA_SRC_SEQUENCE) and bool(
        block.get(b"is_sequence", default=1) if block.code != b"IM" else 1
    )
    if found is None or not sequence:
        return _files(ctx, written, source, None)
    try:
        pattern_url = ctx.map(found[0], blender=True)
    except ValueError as exc:
        return Dependencies([], [Unresolved(source, written, str(exc))])
    name = url_basename(pattern_url)
    head, _, tail = name.partition("#" * name.count("#"))
    matcher = re.compile(re.escape(head) + r"\d+" + re.escape(tail) + "$")
    folder = url_dirname(pattern_url)
    out = Dependencies([], [Unresolved(source, written, why)])
    for other in sorted(ctx.names_in_folder(folder)):
        if matcher.match(other):
            url = folder.rstrip("/") + "/" + other
            out.deps.append(Dependency(written, url, None, source))
    return out


def _block_usages(block: Block, library: str) -> tuple[list[Any], list[Unresolved]]:
    """BAT's asset usages of one ID block. A part that does not read (a dangling pointer, say)
    becomes one unresolved entry and the rest of the block still counts; an object's modifiers
    are read one by one, so one broken modifier does not hide the others."""
    if block.code != b"OB":
        try:
            return list(blocks2assets.iter_assets(block)), []
        except _PARSE_ERRORS as exc:
            return [], [_unreadable(block.id_name, library, exc)]
    usages: list[Any] = []
    broken: list[Unresolved] = []
    owner = modifier_walkers.ModifierContext(owner=block)
    try:
        modifiers = list(iterators.modifiers(block))
    except _PARSE_ERRORS as exc:
        return [], [_unreadable(block.id_name, library, exc)]
    for index, modifier in enumerate(modifiers):
        name = b"%s.modifiers[%d]" % (bytes(block.id_name), index)
        try:
            kind = int(modifier[b"modifier", b"type"])
            handler = modifier_walkers.modifier_handlers.get(kind)
            if handler is None or kind in _REPLACED_ON_LOAD or _has_no_bakes(modifier, kind):
                continue
            usages.extend(handler(owner, modifier, name))
        except _PARSE_ERRORS as exc:
            broken.append(_unreadable(name, library, exc))
    return usages, broken


# Smoke and Fluidsim modifiers (before Blender 2.82): Blender replaces each with a new Fluid
# modifier when it reads the file (``modifier_replace_with_fluid``), whose cache folder is a new
# default one; the old point cache or ``surfdataPath`` files are never read.
_REPLACED_ON_LOAD = frozenset({cdefs.eModifierType_Smokesim, cdefs.eModifierType_Fluidsim})


def _has_no_bakes(modifier: Block, kind: int) -> bool:
    """A Geometry Nodes modifier with ``bakes_num`` 0: Blender never reads its ``bakes`` pointer
    (files saved by Blender 5.1 leave it dangling)."""
    return (
        kind == cdefs.eModifierType_Nodes
        and modifier.dna_type.has_field(b"bakes_num")
        and int(modifier[b"bakes_num"]) == 0
    )


def _unreadable(block_name: bytes, library: str, exc: BaseException) -> Unresolved:
    source = _source(bytes(block_name), library)
    return Unresolved(source, source, f"datablock does not read: {_why(exc)}")


def _own_cache_name(ctx: ResolveContext, usage: Any, written: str) -> str:
    """A disk point cache's folder as Blender names it: ``//blendcache_<the .blend's name>/``.

    BAT derives the name from the local copy's file name, which may be a cache object's; Blender
    uses the file's own name (``ptcache_path``: the name less its last 6 characters, ".blend").
    """
    block = usage.block
    if block.dna_type_name != "PointCache" or int(block[b"flag"]) & cdefs.PTCACHE_EXTERNAL:
        return written
    local = f"//{cdefs.PTCACHE_PATH.decode()}{Path(ctx.scene_file).stem}/"
    if not written.startswith(local):
        return written
    name = url_basename(ctx.scene_url)
    own = name[:-6] if len(name) > 6 else name
    return f"//{cdefs.PTCACHE_PATH.decode()}{own}/" + written[len(local) :]


def _blocks_in_scope(
    bfile: Any, names: set[bytes] | None, parsed: _Parsed
) -> tuple[list[Block], list[Block]]:
    """ID blocks whose paths count, and the linked-ID placeholders met on the way.

    The main file: every ID block. A library: the named IDs and everything they reach through
    BAT's expanders (plus the pointers those miss: cache files of modifiers, speaker sounds).
    """
    placeholders: list[Block] = []
    if names is None:
        blocks = []
        used = _used_by_scenes(bfile)
        for block in bfile.blocks:
            if block.code == b"ID":
                placeholders.append(block)
            elif len(block.code) <= 2 and (block.code == b"LI" or block.addr_old in used):
                # Blender opens every library at load; other datablocks only when rendered.
                blocks.append(block)
        return blocks, placeholders
    queue: list[Block] = []
    for name in sorted(names):
        found = [b for b in bfile.find_blocks_from_code(name[:2]) if b.id_name == name]
        if not found:
            parsed.deps.unresolved.append(
                Unresolved(f"{name[:2].decode()}:{_text(name[2:])}", _text(name), "not in library")
            )
        queue.extend(found)
    reached: dict[int, Block] = {}
    while queue:
        block = queue.pop()
        if block.addr_old in reached:
            continue
        reached[block.addr_old] = block
        if block.code == b"ID":
            placeholders.append(block)
            continue
        try:
            queue.extend(b for b in _expand(block) if b is not None and b.addr_old not in reached)
        except _PARSE_ERRORS as exc:
            parsed.deps.unresolved.append(_unreadable(block.id_name, "", exc))
    return [b for b in reached.values() if b.code != b"ID"], placeholders


def _used_by_scenes(bfile: Any) -> set[int]:
    """Addresses of the blocks a chain of pointers reaches from any scene: what a render of one
    of the file's scenes may read. Orphan datablocks (no users, saved anyway) and those only a
    brush uses are left out; Blender renders neither.

    Every aligned pointer-sized word of a block's data that is the address of a block counts as
    a pointer (a stray integer equal to an address only makes the answer more conservative).
    """
    size = int(bfile.header.pointer_size)
    order = "<" if bfile.header.is_little_endian else ">"
    word = f"{order}{'Q' if size == 8 else 'I'}"
    addresses = bfile.block_from_addr
    version = int(bfile.header.version)
    # Each queued block with the scene whose render-less part reached it (see below), if any.
    queue: list[tuple[Block, int | None]] = [
        (block, None) for block in bfile.blocks if block.code == b"SC"
    ]
    used = {block.addr_old for block, _ in queue}
    # Scenes whose render runs no render engine (_scene_without_render): only their sequencer or
    # compositor is followed, unless another scene renders them (a background set, a scene
    # strip, a Render Layers node), which follows them whole.
    without_render: set[int] = set()
    rendered_by_others: set[int] = set()
    pointing: dict[bytes, bool] = {}
    links: dict[bytes, tuple[int, ...]] = {}

    def reach(target: Block, origin: int | None) -> None:
        if target.code == b"SC" and origin != target.addr_old:
            rendered_by_others.add(target.addr_old)
            if target.addr_old in without_render:
                without_render.discard(target.addr_old)
                queue.append((target, None))
        if target.addr_old not in used:
            used.add(target.addr_old)
            queue.append((target, origin))

    while queue:
        block, origin = queue.pop()
        if block.code == b"SC" and block.addr_old not in rendered_by_others:
            try:
                parts = _scene_without_render(block, version)
            except _PARSE_ERRORS:
                parts = None  # unreadable render settings: follow the whole scene
            if parts is not None:
                without_render.add(block.addr_old)
                for part in parts:
                    reach(part, block.addr_old)
                continue
        if block.dna_type_name == "bNodeTree":
            for node in _live_nodes(block):
                reach(node, origin)
        if block.dna_type_name in _NOT_FOLLOWED:
            continue
        if block.dna_type.fields:
            if not _may_point(block.dna_type, pointing):
                continue  # a struct without pointers (vertices, say): nothing to follow
        elif block.size > _RAW_SCAN_LIMIT:
            continue  # untyped data this large is geometry or pixels, not a pointer array
        data = bytearray(block.raw_data())
        data = data[: len(data) - len(data) % size]
        for offset in _id_links(block, size, links):
            data[offset : offset + size] = bytes(size)
        for (value,) in set(struct.iter_unpack(word, data)):
            target = addresses.get(value) if value else None
            if target is None or target.code in _NOT_RENDERED:
                continue
            if block.code in _NO_TEXTURE_SLOTS and target.dna_type_name == "MTex":
                continue
            if block.dna_type_name in _MEMBERSHIPS and _hidden_from_render(target):
                continue
            if target.dna_type_name != "bNode":  # nodes count only when live (above)
                reach(target, origin)
    return used


def _hidden_from_render(block: Block) -> bool:
    """An object with Disable in Renders (``OB_HIDE_RENDER`` of ``visibility_flag``, before
    Blender 3.0 ``OB_RESTRICT_RENDER`` of ``restrictflag``: the same bit)."""
    if block.code != b"OB":
        return False
    flag = _field(block, (b"visibility_flag", b"restrictflag"), 0)
    return bool(int(flag) & _OB_HIDE_RENDER)


# Where an object is a member of a collection (or a 2.7x group, or a scene or view layer's
# object list): a render skips members that are disabled in renders, in the scene and in the
# collections it instances (FOREACH_COLLECTION_VISIBLE_OBJECT_RECURSIVE). Other pointers to
# such an object (a modifier's, a particle system's instance object) still count.
_MEMBERSHIPS = frozenset({"CollectionObject", "Base", "GroupObject"})
_OB_HIDE_RENDER = 1 << 2


def _scene_without_render(scene: Block, version: int) -> list[Block] | None:
    """What a render of ``scene`` reads when it runs no render engine for the scene's own view
    layers (``do_render_full_pipeline``, Blender 5.0): ``None`` when it does. It does not when

    - the video sequencer is active (``RE_seq_render_active``: Sequencer on in the post
      processing options and a top-level strip that is not a sound strip and not muted): only
      the strips are rendered, not the 3D scene; or
    - compositing is on and the compositor's node tree has no unmuted Render Layers node (or
      Cryptomatte node reading the render) of this scene (``compositor_needs_render``): only
      the compositor's nodes run. Files before Blender 5.0 turn compositing off with the
      compositor's Use Nodes (``do_version_scene_remove_use_nodes``).

    The blocks returned are where that render reads from (the sequencer, or the compositor's
    node tree)."""
    scemode = int(scene.get((b"r", b"scemode"), default=0))
    editing = scene.get_pointer(b"ed", default=None)
    if scemode & _R_DOSEQ and editing is not None and _sequencer_renders(editing):
        return [editing]
    tree = _compositor_tree(scene)
    if tree is None or not scemode & _R_DOCOMP:
        return None
    if version < 500 and scene.dna_type.has_field(b"use_nodes") and not int(scene[b"use_nodes"]):
        return None  # compositing off: the render engine runs
    for node in iterators.listbase(tree.get_pointer((b"nodes", b"first"))):
        if int(node[b"flag"]) & _NODE_MUTED:
            continue
        idname = _text(bytes(node[b"idname"])) if node.dna_type.has_field(b"idname") else ""
        if idname == "CompositorNodeRLayers" or (
            idname == "CompositorNodeCryptomatteV2"
            and int(node[b"custom1"]) == _CRYPTOMATTE_SOURCE_RENDER
        ):
            source = node.get_pointer(b"id", default=None)
            if source is None or source.addr_old == scene.addr_old:
                return None
    return [tree]


def _sequencer_renders(editing: Block) -> bool:
    """Whether a top-level strip of the sequencer is neither a sound strip nor muted."""
    channels = _channels(editing)
    for strip in iterators.listbase(editing.get_pointer((b"seqbase", b"first"))):
        if int(strip[b"type"]) == STRIP_TYPE_SOUND_RAM or int(strip[b"flag"]) & STRIP_MUTE:
            continue
        channel = int(_field(strip, (b"channel", b"machine"), 0))
        if 0 <= channel < len(channels) and int(channels[channel][b"flag"]) & CHANNEL_MUTE:
            continue
        return True
    return False


def _compositor_tree(scene: Block) -> Block | None:
    """The compositor's node tree: ``compositing_node_group`` (Blender 5.0), or the embedded
    ``nodetree`` of older files."""
    for name in (b"compositing_node_group", b"nodetree"):
        if scene.dna_type.has_field(name):
            tree = scene.get_pointer(name, default=None)
            if tree is not None:
                return tree
    return None


_R_DOSEQ = 1 << 0  # RenderData.scemode
_R_DOCOMP = 1 << 6
_NODE_MUTED = 1 << 9  # bNode.flag
_CRYPTOMATTE_SOURCE_RENDER = 0  # bNode.custom1 of a Cryptomatte node


def _id_links(block: Block, size: int, known: dict[bytes, tuple[int, ...]]) -> tuple[int, ...]:
    """Offsets, in an ID block, of the ``ID`` header's pointers that are not references: the
    links of the ``Main`` list the datablock was in (``next``/``prev``, written as they were in
    memory, so they name the neighbouring datablocks of the same kind, used or not) and runtime
    pointers (``newid``, ``orig_id``). Blender rebuilds these on load and renders nothing through
    them. Memoised in ``known`` by struct name."""
    struct_type = block.dna_type
    name = bytes(struct_type.dna_type_id)
    if name not in known:
        offsets: list[int] = []
        fields = struct_type.fields
        if name == b"ID":  # a linked datablock's placeholder
            for member in _ID_LINKS:
                if struct_type.has_field(member):
                    offsets.append(struct_type.field_from_path(size, (member,))[1])
        elif fields and fields[0].name.name_only == b"id":
            header = fields[0].dna_type
            for member in _ID_LINKS if header.dna_type_id == b"ID" else ():
                if header.has_field(member):
                    offsets.append(struct_type.field_from_path(size, (b"id", member))[1])
        known[name] = tuple(offsets)
    return known[name]


_ID_LINKS = (b"next", b"prev", b"newid", b"orig_id")
# Structs whose pointers Blender no longer follows: the per-face images of Blender 2.7x meshes
# (``MTexPoly``/``MTFace`` layers: Blender 2.80 and later keep only their UVs).
_NOT_FOLLOWED = frozenset({"MTexPoly", "MTFace"})


# Blender 4+ writes pointer arrays (a mesh's materials, say) as untyped ``raw_data`` blocks,
# like attribute arrays; only those up to this size are read for pointers.
_RAW_SCAN_LIMIT = 1 << 20


def _may_point(struct_type: Any, known: dict[bytes, bool]) -> bool:
    """Whether a DNA struct has a pointer field, itself or in a struct it embeds (memoised in
    ``known`` by struct name)."""
    name = bytes(struct_type.dna_type_id)
    if name not in known:
        known[name] = False  # a struct cannot embed itself; this also ends the recursion
        known[name] = any(
            field.name.is_pointer
            or (bool(field.dna_type.fields) and _may_point(field.dna_type, known))
            for field in struct_type.fields
        )
    return known[name]


def _live_nodes(tree: Block) -> list[Block]:
    """The nodes of a node tree that feed one of its outputs (material, world or light output,
    group output, compositor outputs): what Blender evaluates. Muted links and links from a
    shader socket into a non-shader socket (which Blender marks invalid) feed nothing. A tree
    without an output node is taken whole."""
    nodes = list(iterators.listbase(tree.get_pointer((b"nodes", b"first"))))
    live = [node for node in nodes if _is_output(node)]
    if not live:
        return nodes
    feeders: dict[int, list[int]] = {}
    for link in iterators.listbase(tree.get_pointer((b"links", b"first"))):
        if int(link[b"flag"]) & _NODE_LINK_MUTED:
            continue
        from_socket = link.get_pointer(b"fromsock", default=None)
        to_socket = link.get_pointer(b"tosock", default=None)
        if from_socket is None or to_socket is None:
            continue
        if int(from_socket[b"type"]) == _SOCK_SHADER != int(to_socket[b"type"]):
            continue
        feeders.setdefault(int(link[b"tonode"]), []).append(int(link[b"fromnode"]))
    by_address = {node.addr_old: node for node in nodes}
    seen = {node.addr_old for node in live}
    stack = list(seen)
    while stack:
        for address in feeders.get(stack.pop(), []):
            if address in by_address and address not in seen:
                seen.add(address)
                stack.append(address)
                live.append(by_address[address])
    return live


def _is_output(node: Block) -> bool:
    idname = _text(bytes(node[b"idname"])) if node.dna_type.has_field(b"idname") else ""
    return "Output" in idname or idname in ("CompositorNodeComposite", "CompositorNodeViewer")


_SOCK_SHADER = 3  # bNodeSocket.type (eNodeSocketDatatype)
_NODE_LINK_MUTED = 1 << 4  # bNodeLink.flag


# Datablocks a render never reads through: brushes (and what only they use), screens, windows.
# File blocks that are no datablock (file globals: the window's scene and view layer; render
# info; thumbnail) are never a pointer's target: their "old address" is a small number that
# ordinary integers equal.
_NOT_RENDERED = frozenset(
    {b"BR", b"SR", b"WM", b"WS", b"PL", b"PC", b"GLOB", b"REND", b"TEST", b"USER", b"DNA1"}
)
# Blender Internal texture slots of materials, lights and worlds (files before 2.80): Blender
# 2.80 and later drop them on load, so the textures only they use are never read.
_NO_TEXTURE_SLOTS = frozenset({b"MA", b"LA", b"WO"})


def _expand(block: Block) -> Iterator[Block | None]:
    yield from expanders.expand_block(block)
    # BAT 1.23 looks for Blender 5 materials' trees under the compositor's field name.
    for tree in _embedded_trees(block):
        for node in iterators.listbase(tree.get_pointer((b"nodes", b"first"))):
            yield node.get_pointer(b"id", default=None)
            for socket in iterators.listbase(node.get_pointer((b"inputs", b"first"))):
                value = socket.get_pointer(b"default_value", default=None)
                if value is not None and value.dna_type.has_field(b"value"):
                    pointer = value.get_pointer(b"value", default=None)
                    if isinstance(pointer, blendfile.BlendFileBlock):
                        yield pointer
    if block.code == b"OB":
        for modifier in iterators.modifiers(block):
            yield modifier.get_pointer(b"cache_file", default=None)
    elif block.code == b"SK":
        yield block.get_pointer(b"sound", default=None)


def _embedded_trees(block: Block) -> list[Block]:
    """The node trees a material, world, light, texture or scene embeds."""
    trees = []
    for name in (b"nodetree", b"compositing_node_group"):
        if block.dna_type.has_field(name):
            tree = block.get_pointer(name, default=None)
            if tree is not None and tree.dna_type_name == "bNodeTree":
                trees.append(tree)
    return trees


def _image_users(blocks: Iterable[Block]) -> dict[int, list[ImageUser]]:
    """Image block address -> the image users (texture nodes, textures) that show it."""
    users: dict[int, list[ImageUser]] = {}
    for block in blocks:
        if block.code == b"TE":
            _add_user(users, block.get_pointer(b"ima", default=None), block, b"iuser")
        for tree in [block] if block.code == b"NT" else _embedded_trees(block):
            for node in iterators.listbase(tree.get_pointer((b"nodes", b"first"))):
                image = node.get_pointer(b"id", default=None)
                storage = node.get_pointer(b"storage", default=None)
                if image is None or image.code != b"IM" or storage is None:
                    continue
                if storage.dna_type_name == "ImageUser":
                    _add_user(users, image, storage, None)
                elif storage.dna_type.has_field(b"iuser"):
                    _add_user(users, image, storage, b"iuser")
    return users


def _add_user(
    users: dict[int, list[ImageUser]], image: Block | None, holder: Block, prefix: bytes | None
) -> None:
    if image is None:
        return

    def get(name: bytes) -> int:
        return int(holder[(prefix, name)] if prefix else holder[name])

    user = ImageUser(get(b"frames"), get(b"sfra"), get(b"offset"), bool(get(b"cycl")))
    found = users.setdefault(image.addr_old, [])
    if user not in found:
        found.append(user)


# -- one function per datablock kind ------------------------------------------------------

Handler = Callable[[ResolveContext, Block, str, str, dict[int, list[ImageUser]]], Dependencies]


def _single(
    ctx: ResolveContext, block: Block, written: str, source: str, users: dict[int, list[ImageUser]]
) -> Dependencies:
    """One file every frame needs (single images, movies, sounds, fonts, libraries...)."""
    return _files(ctx, written, source, None)


def _image(
    ctx: ResolveContext, block: Block, written: str, source: str, users: dict[int, list[ImageUser]]
) -> Dependencies:
    kind = block.get(b"source", default=cdefs.IMA_SRC_FILE)
    if kind == cdefs.IMA_SRC_TILED:
        return _udim_tiles(ctx, block, written, source)
    if kind != cdefs.IMA_SRC_SEQUENCE:
        return _files(ctx, written, source, None)
    image_users = users.get(block.addr_old, [])
    if not image_users:
        return Dependencies(
            [],
            [Unresolved(source, written, "image sequence with no image user: frames unknown")],
        )
    wanted: dict[int, set[int]] = {}
    optional: dict[int, set[int]] = {}
    for user in image_users:
        for frame in ctx.frames:
            number, in_range = user.file_frame(frame)
            # Before the first frame or clamped past the last: Blender loads the file if it is
            # there and renders without it if not, so only an existing file is needed.
            target = wanted if in_range and number > user.offset else optional
            target.setdefault(number, set()).add(frame)
    return _numbered(ctx, written, source, wanted, optional)


def _udim_tiles(ctx: ResolveContext, block: Block, written: str, source: str) -> Dependencies:
    """A tiled image's files: one per tile in the image's own tile list (``Image.tiles``), which
    is what Blender loads; other files that match the pattern are not read. A listed tile that
    is not in storage is a missing dependency. Files without a tile list (none is written before
    Blender 2.82) fall back to the tiles that exist in storage."""
    pattern = _udim_pattern(written)
    if not block.dna_type.has_field(b"tiles") or not has_udim_token(pattern):
        return _files(ctx, pattern, source, None)
    numbers = sorted(
        {
            int(tile[b"tile_number"])
            for tile in iterators.listbase(block.get_pointer((b"tiles", b"first")))
        }
    )
    if not numbers:
        return _files(ctx, pattern, source, None)
    out = Dependencies()
    for number in numbers:
        out.extend(_literal_file(ctx, udim_tile_path(pattern, number), source, None))
    return out


def _volume(
    ctx: ResolveContext, block: Block, written: str, source: str, users: dict[int, list[ImageUser]]
) -> Dependencies:
    if not block.get(b"is_sequence", default=0):
        return _files(ctx, written, source, None)

    def file_frame(frame: int) -> int | None:
        return volume_file_frame(
            frame,
            start=int(block[b"frame_start"]),
            duration=int(block[b"frame_duration"]),
            offset=int(block[b"frame_offset"]),
            mode=int(block[b"sequence_mode"]),
        )

    return _sequence_files(ctx, written, source, file_frame)


def _movie_clip(
    ctx: ResolveContext, block: Block, written: str, source: str, users: dict[int, list[ImageUser]]
) -> Dependencies:
    found = sequence_pattern(written)
    if block.get(b"source", default=0) != MCLIP_SRC_SEQUENCE or found is None:
        return _files(ctx, written, source, None)
    wanted: dict[int, set[int]] = {}
    optional: dict[int, set[int]] = {}
    for frame in ctx.frames:
        number = clip_file_frame(
            frame,
            first_number=found[1],
            start=int(block[b"start_frame"]),
            offset=int(block[b"frame_offset"]),
        )
        # Before the clip's first file Blender shows nothing rather than failing.
        (wanted if number >= found[1] else optional).setdefault(number, set()).add(frame)
    return _numbered(ctx, written, source, wanted, optional)


def _cache_file(
    ctx: ResolveContext, block: Block, written: str, source: str, users: dict[int, list[ImageUser]]
) -> Dependencies:
    if not block.get(b"is_sequence", default=0):
        return _files(ctx, written, source, None)
    override, own_frame = bool(block[b"override_frame"]), float(block[b"frame"])
    # BKE_cachefile_filepath_get: a frame whose file does not exist keeps the open archive (or
    # none) and the render goes on, so only the files that exist are needed.
    optional: dict[int, set[int]] = {}
    for frame in ctx.frames:
        number = cache_file_frame(frame, override=override, frame=own_frame)
        optional.setdefault(number, set()).add(frame)
    return _numbered(ctx, written, source, {}, optional)


def _sequence_files(
    ctx: ResolveContext, written: str, source: str, file_frame: Callable[[int], int | None]
) -> Dependencies:
    """The files of a sequence the context's frames load: ``file_frame`` gives the file number
    a scene frame loads (``None``: none)."""
    wanted: dict[int, set[int]] = {}
    for frame in ctx.frames:
        number = file_frame(frame)
        if number is not None:
            wanted.setdefault(number, set()).add(frame)
    return _numbered(ctx, written, source, wanted, {})


def _sequencer(ctx: ResolveContext, scene: Block, library: str) -> Dependencies:
    """A scene's video-sequencer strips: for each requested frame, the element file each image
    strip shows there and the file of each movie strip that plays there; the whole file of each
    sound strip. Muted strips (and strips in muted channels or meta strips) need nothing;
    which strips render at a frame is :func:`~jitrender.resolve.blend_frames.strips_rendered_at`.
    """
    editing = scene.get_pointer(b"ed", default=None)
    if editing is None:
        return Dependencies()
    rate = float(scene.get((b"r", b"frs_sec"), default=24))
    base = float(scene.get((b"r", b"frs_sec_base"), default=1.0)) or 1.0
    strips = _read_strips(
        editing.get_pointer((b"seqbase", b"first")),
        _channels(editing),
        rate / base,
        set(),
    )
    scene_name = _text(bytes(scene.id_name))[2:]

    def source(strip: SequencerStrip) -> str:
        return f"SC:{scene_name}/{strip.name}{library}"

    out = Dependencies()
    needs: dict[tuple[str, str], set[int]] = {}
    reported: set[str] = set()

    def report(strip: SequencerStrip, why: str) -> None:
        if source(strip) not in reported:
            reported.add(source(strip))
            out.unresolved.append(Unresolved(source(strip), strip.files[0], why))

    for frame in ctx.frames:
        for strip, at in strips_rendered_at(strips, frame):
            for written in _shown_files(strip, at, report):
                needs.setdefault((written, source(strip)), set()).add(frame)
    for (written, label), frames in needs.items():
        out.extend(_literal_file(ctx, written, label, tuple(sorted(frames))))
    for strip in strips_heard(strips):
        if strip.files:
            out.extend(_literal_file(ctx, strip.files[0], source(strip), None))
    return out


def _shown_files(
    strip: SequencerStrip, at: int | None, report: Callable[[SequencerStrip, str], None]
) -> tuple[str, ...]:
    """The files an image or movie strip reads when rendered at its frame ``at`` (``None``:
    any of its frames): the element shown there, or the movie."""
    if strip.kind != STRIP_TYPE_IMAGE or not strip.files:
        return strip.files[:1]
    if at is None:
        report(strip, _REMAPPED)
        return strip.files
    index = strip.timing.element_index(at)
    if index is None:
        return ()  # an empty strip
    if not 0 <= index < len(strip.files):
        report(strip, f"sequencer image strip shows element {index + 1}, past its end")
        return ()
    return (strip.files[index],)


_REMAPPED = (
    "sequencer strip retimed or under a Speed Control effect: which file each frame shows is "
    "not computed, so every file of the strip is listed for the frames it may render"
)


def _read_strips(
    first: Block | None, channels: list[Block], fps: float, visited: set[int]
) -> tuple[SequencerStrip, ...]:
    """The strips of one sequencer list (the scene's top level, or a meta strip's), read from
    the DNA under either naming: ``Sequence``/``Strip`` as Blender 5.0 still writes them, or
    ``Strip``/``StripData`` with the field names Blender 4.4 gave them at run time."""
    blocks = [b for b in iterators.listbase(first) if b.addr_old not in visited]
    visited.update(b.addr_old for b in blocks)
    positions = {block.addr_old: position for position, block in enumerate(blocks)}
    strips = []
    for block in blocks:
        kind = int(block[b"type"])
        flag = int(block[b"flag"])
        channel = int(_field(block, (b"channel", b"machine"), 0))
        input_pointers = [int(_field(block, names, 0)) for names in _INPUT_FIELDS]
        effect_range = None
        if any(input_pointers):
            effect_range = (int(block[b"startdisp"]), int(block[b"enddisp"]))
        timing = StripTiming(
            start=float(block[b"start"]),
            length=int(block[b"len"]),
            start_offset=float(block[b"startofs"]),
            end_offset=float(block[b"endofs"]),
            anim_start_offset=int(block[b"anim_startofs"]),
            flag=flag,
            strobe=float(block.get(b"strobe", default=1.0)),
            playback_rate=float(block.get(b"media_playback_rate", default=0.0)),
            scene_fps=fps,
            is_image=kind == STRIP_TYPE_IMAGE,
            effect_range=effect_range,
        )
        channel_muted = 0 <= channel < len(channels) and bool(
            int(channels[channel][b"flag"]) & CHANNEL_MUTE
        )
        children: tuple[SequencerStrip, ...] = ()
        if kind == STRIP_TYPE_META:
            children = _read_strips(
                block.get_pointer((b"seqbase", b"first")), _channels(block), fps, visited
            )
        strips.append(
            SequencerStrip(
                name=_text(bytes(block[b"name"]))[2:],  # after the ID-style "SQ"
                kind=kind,
                channel=channel,
                muted=bool(flag & STRIP_MUTE) or channel_muted,
                timing=timing,
                files=_strip_files(block, kind),
                inputs=tuple(positions[p] for p in input_pointers if p in positions),
                strips=children,
                retimed=int(_field(block, (b"retiming_keys_num", b"retiming_handle_num"), 0)) > 1,
                replaces=int(_field(block, (b"blend_mode",), -1)) == BLEND_REPLACE,
            )
        )
    return tuple(strips)


_INPUT_FIELDS = ((b"input1", b"seq1"), (b"input2", b"seq2"))


def _channels(holder: Block) -> list[Block]:
    """The channels (``SeqTimelineChannel``, indexed by channel number) of an ``Editing`` or a
    meta strip; files from before Blender 3.3 have none."""
    if not holder.dna_type.has_field(b"channels"):
        return []
    return list(iterators.listbase(holder.get_pointer((b"channels", b"first"))))


def _strip_files(block: Block, kind: int) -> tuple[str, ...]:
    """The files of an image (one per element) or movie strip, as written: the strip data's
    folder joined with each ``StripElem`` file name (``BLI_path_join``); a sound strip's is its
    sound datablock's file."""
    if kind in (STRIP_TYPE_SOUND_RAM, STRIP_TYPE_SOUND_HD):
        # Blender plays a sound strip from its sound datablock; the strip's own folder and
        # name are only where the sound was first loaded from, and may be stale.
        sound = block.get_pointer(b"sound", default=None)
        if sound is None:
            return ()
        written = _text(bytes(_field(sound, (b"filepath", b"name"), b"")))  # DNA: name
        return (written,) if written else ()
    if kind not in (STRIP_TYPE_IMAGE, STRIP_TYPE_MOVIE):
        return ()
    data = block.get_pointer(b"data" if block.dna_type.has_field(b"data") else b"strip")
    if data is None:
        return ()
    elements = data.get_pointer(b"stripdata", default=None)
    if elements is None:
        return ()
    folder = _text(bytes(_field(data, (b"dirpath", b"dir"), b"")))
    name_field = b"filename" if elements.dna_type.has_field(b"filename") else b"name"
    count = elements.count if kind == STRIP_TYPE_IMAGE else 1
    files = []
    for index in range(count):
        name = _text(bytes(elements.get(name_field, array_index=index)))
        if not folder or folder.endswith(("/", "\\")):
            files.append(folder + name)
        else:
            files.append(f"{folder}/{name}")
    return tuple(files)


def _field(block: Block, names: tuple[bytes, ...], default: Any) -> Any:
    """The first of ``names`` the block's DNA struct has (fields renamed between versions)."""
    for name in names:
        if block.dna_type.has_field(name):
            return block[name]
    return default


def _literal_file(
    ctx: ResolveContext, written: str, source: str, frames: tuple[int, ...] | None
) -> Dependencies:
    """One file named exactly as written (a strip's file names are never patterns)."""
    try:
        url = ctx.map(written, blender=True)
    except ValueError as exc:
        return Dependencies([], [Unresolved(source, written, str(exc))])
    return Dependencies([Dependency(written, url, frames, source)])


def _cache_folder(
    ctx: ResolveContext,
    block: Block,
    written: str,
    source: str,
    users: dict[int, list[ImageUser]],
    frame_rule: Callable[[int], int | None] | None = None,
) -> Dependencies:
    """A simulation cache (point cache, fluid, ocean, bake folder): one listing, then per frame
    the file of that frame, or the nearest cached frames either side (Blender interpolates
    between them); files without a frame number are needed by every frame. ``frame_rule``
    gives the cache frame a scene frame reads (``None``: none), for point caches."""
    path = _slashes(written)
    if "*" in posixpath.basename(path):
        folder, pattern = posixpath.dirname(path), posixpath.basename(path)
    else:
        folder, pattern = path.rstrip("/"), "*"
    try:
        folder_url = ctx.map(folder, blender=True)
    except ValueError as exc:
        return Dependencies([], [Unresolved(source, written, str(exc))])
    prefix = folder_url.rstrip("/") + "/"
    by_frame: dict[int, list[str]] = {}
    always: list[str] = []
    for info in ctx.list_prefix(prefix, pattern == "*"):
        name = posixpath.basename(info.url)
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        number = _cache_frame_number(name)
        if number is None:
            always.append(info.url)
        else:
            by_frame.setdefault(number, []).append(info.url)
    if not by_frame and not always:
        return Dependencies([], [Unresolved(source, written, f"no cache files below {prefix}")])
    out = Dependencies([Dependency(written, url, None, source) for url in always])
    cached = sorted(by_frame)
    needs: dict[str, set[int]] = {}
    for frame in ctx.frames:
        looked_up = frame if frame_rule is None else frame_rule(frame)
        if looked_up is None:
            continue
        for number in _nearest(cached, looked_up):
            for url in by_frame[number]:
                needs.setdefault(url, set()).add(frame)
    out.deps.extend(
        Dependency(written, url, tuple(sorted(frames)), source) for url, frames in needs.items()
    )
    return out


_CLOTH, _PARTICLES = "cloth", "particles"


def _is_point_cache(block: Block) -> bool:
    return bool(block.dna_type_name == "PointCache")


def _point_cache_kinds(blocks: Iterable[Block]) -> dict[int, str]:
    """PointCache address -> the kind of simulation that owns it (cloth modifiers and particle
    systems: those whose frame rules differ, see :func:`_point_cache_rule`)."""
    kinds: dict[int, str] = {}
    for block in blocks:
        if block.code != b"OB":
            continue
        try:
            for modifier in iterators.modifiers(block):
                kind = int(modifier[b"modifier", b"type"])
                if kind == cdefs.eModifierType_Cloth:
                    cache = modifier.get_pointer(b"point_cache", default=None)
                    if cache is not None:
                        kinds[cache.addr_old] = _CLOTH
                elif kind == cdefs.eModifierType_ParticleSystem:
                    psys = modifier.get_pointer(b"psys", default=None)
                    cache = None if psys is None else psys.get_pointer(b"pointcache", default=None)
                    if cache is not None:
                        kinds[cache.addr_old] = _PARTICLES
        except _PARSE_ERRORS:
            continue
    return kinds


def _point_cache_rule(cache: Block, kinds: dict[int, str]) -> Callable[[int], int | None] | None:
    """The cache frame a scene frame reads from a point cache, as Blender 5.0 does (``strace``
    of a baked disk cache): a cloth reads nothing up to its cache's start frame (before it the
    simulation is off, at it the cloth is at rest) and its end frame after the end; a particle
    system reads its start frame before the start. Other caches: the frame itself."""
    kind = kinds.get(cache.addr_old)
    try:
        start, end = int(cache[b"startframe"]), int(cache[b"endframe"])
    except _PARSE_ERRORS:
        return None
    if kind == _CLOTH:
        return lambda frame: None if frame <= start else min(frame, end)
    if kind == _PARTICLES:
        return lambda frame: max(frame, start)
    return None


def _cache_frame_number(name: str) -> int | None:
    point_cache = _POINT_CACHE_NAME.search(name)
    if point_cache is not None:
        return int(point_cache["frame"])
    stem = name.rsplit(".", 1)[0] if "." in name else name
    found = _LAST_DIGITS.search(stem)
    return int(found.group(1)) if found else None


def _nearest(cached: list[int], frame: int) -> list[int]:
    if frame in cached:
        return [frame]
    before = [n for n in cached if n < frame]
    after = [n for n in cached if n > frame]
    return ([before[-1]] if before else []) + ([after[0]] if after else [])


_HANDLERS: dict[bytes, Handler] = {
    b"IM": _image,
    b"VO": _volume,
    b"MC": _movie_clip,
    b"CF": _cache_file,
}


# -- shared helpers ---------------------------------------------------------------------


def _files(
    ctx: ResolveContext, written: str, source: str, frame_map: dict[int, list[int]] | None
) -> Dependencies:
    return file_dependencies(ctx, written, source, frame_map=frame_map, blender=True)


def _numbered(
    ctx: ResolveContext,
    written: str,
    source: str,
    wanted: dict[int, set[int]],
    optional: dict[int, set[int]],
) -> Dependencies:
    """A sequence's files by number: ``wanted`` always, ``optional`` only if it exists."""
    found = sequence_pattern(written)
    if found is None:
        frames = set().union(*wanted.values(), *optional.values())
        return _files(ctx, written, source, None) if frames else Dependencies()
    pattern = found[0]
    if optional:
        try:
            pattern_url = ctx.map(pattern, blender=True)
        except ValueError as exc:
            return Dependencies([], [Unresolved(source, written, str(exc))])
        for number, frames in optional.items():
            url = expand_frame(pattern_url, number)
            if url_basename(url) in ctx.names_in_folder(url_dirname(url)):
                wanted.setdefault(number, set()).update(frames)
    if not wanted:
        return Dependencies()
    frame_map = {number: sorted(frames) for number, frames in wanted.items()}
    return _files(ctx, pattern, source, frame_map)


def _udim_pattern(written: str) -> str:
    """Tiled images store ``<UDIM>`` since Blender 2.93; older files store the first tile."""
    if "<UDIM>" in written or "<UVTILE>" in written:
        return written
    head, _, name = _slashes(written).rpartition("/")
    tile = list(re.finditer(r"(?<!\d)1\d{3}(?!\d)", name))
    if not tile:
        return written
    match = tile[-1]
    replaced = name[: match.start()] + "<UDIM>" + name[match.end() :]
    return f"{head}/{replaced}" if head or written.startswith("/") else replaced


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _slashes(path: str) -> str:
    return path.replace("\\", "/")


def _source(block_name: bytes, library: str) -> str:
    name = _text(block_name)
    return f"{name[:2]}:{name[2:]}{library}"
