"""Assembling one frame from its parts' multilayer EXRs (OpenImageIO, extra ``split``).

A part file is what :mod:`jitrender.engines.blender_render` writes for ``--part-tile`` or
``--part-samples``: a 32-bit multilayer (multi-part) EXR, one subimage per view layer pass.
:func:`describe_part` stamps into it what it holds (its data window inside the frame for a
tile, its sample count for a sample subset), so a part file says where it belongs by itself.
:func:`assemble_frame` pastes tiles by their data windows (the overscan trimmed) or averages
sample parts weighted by their sample counts, and writes the whole frame with every layer and
pass of the parts, 32-bit float, with the first part's metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jitrender.errors import ConfigError, DataError

# Passes Cycles writes from a pixel's first sample only (not averaged over samples): a sample
# split takes them from the part holding sample 0, which is what an unsplit render has.
FIRST_SAMPLE_PASSES = ("Depth", "Position", "Object Index", "Material Index")
_OWN_ATTRIBUTES = ("jitrender:core", "jitrender:samples", "jitrender:offset")


def _oiio() -> Any:
    try:
        import OpenImageIO
    except ImportError:
        raise ConfigError(
            "split jobs need OpenImageIO to assemble frames: pip install 'jitrender[split]'"
        ) from None
    return OpenImageIO


@dataclass
class _Layer:
    """One subimage (a view layer's pass) of an EXR: its spec and float pixels (H, W, C)."""

    name: str
    spec: Any
    pixels: Any


def read_layers(path: Path) -> list[_Layer]:
    """Every subimage of ``path`` as float32 pixels; :class:`DataError` when it is unreadable."""
    oiio = _oiio()
    layers: list[_Layer] = []
    index = 0
    while True:
        buf = oiio.ImageBuf(str(path), index, 0)
        if index > 0 and (not buf.initialized or buf.has_error):
            break
        if buf.has_error or not buf.initialized:
            raise DataError(f"{path.name}: not a readable EXR: {buf.geterror()}")
        spec = buf.spec()
        pixels = buf.get_pixels(oiio.FLOAT)
        name = spec.get_string_attribute("oiio:subimagename") or spec.get_string_attribute("name")
        layers.append(_Layer(name, spec, pixels))
        index += 1
        if index >= max(1, spec.get_int_attribute("oiio:subimages", 1)):
            break
    return layers


def write_layers(path: Path, layers: Sequence[_Layer]) -> None:
    """Write ``layers`` as one (multi-part) float EXR, via a temp name and a rename."""
    oiio = _oiio()
    temp = path.with_name(f".{path.stem}.writing.exr")  # OpenImageIO picks the format by name
    out = oiio.ImageOutput.create(str(temp))
    if out is None:
        raise DataError(f"cannot write {path.name}: {oiio.geterror()}")
    specs = [layer.spec for layer in layers]
    ok = out.open(str(temp), specs)
    for index, layer in enumerate(layers):
        if index > 0:
            ok = ok and out.open(str(temp), layer.spec, "AppendSubimage")
        ok = ok and out.write_image(layer.pixels)
    error = out.geterror()
    out.close()
    if not ok:
        temp.unlink(missing_ok=True)
        raise DataError(f"cannot write {path.name}: {error}")
    temp.replace(path)


def describe_part(path: Path, description: Mapping[str, Any]) -> None:
    """Stamp what a part holds into its file: a tile's data window (its place in the frame,
    overscan included) and core, a sample part's sample count and offset."""
    width, height = description["size"]
    layers = read_layers(path)
    for layer in layers:
        spec = layer.spec
        spec.full_x, spec.full_y, spec.full_width, spec.full_height = 0, 0, width, height
        if description["kind"] == "tiles":
            x0, y0, x1, y1 = description["window"]
            if (spec.width, spec.height) != (x1 - x0, y1 - y0):
                raise DataError(
                    f"{path.name}: Blender rendered {spec.width}x{spec.height} pixels for a "
                    f"{x1 - x0}x{y1 - y0} tile"
                )
            spec.x, spec.y = x0, y0
            spec.attribute("jitrender:core", ",".join(str(v) for v in description["core"]))
        else:
            spec.attribute("jitrender:samples", int(description["samples"]))
            spec.attribute("jitrender:offset", int(description["offset"]))
    write_layers(path, layers)


def _clean(spec: Any, width: int, height: int, samples: int | None = None) -> Any:
    """The whole frame's spec from a part's: its size, float, Cycles' per-layer metadata with
    the frame's sample count (``samples``, for sample parts) and no per-part timings."""
    oiio = _oiio()
    whole = oiio.ImageSpec(spec)
    whole.x, whole.y, whole.width, whole.height = 0, 0, width, height
    whole.full_x, whole.full_y, whole.full_width, whole.full_height = 0, 0, width, height
    whole.set_format(oiio.FLOAT)
    whole.attribute("compression", "none")  # a scratch file Blender reads once: no zip time
    for name in _OWN_ATTRIBUTES:
        whole.erase_attribute(name)
    for attribute in list(spec.extra_attribs):
        name = attribute.name
        if name.startswith("cycles.") and name.endswith("_time"):
            whole.erase_attribute(name)  # one part's timing, not the frame's
        elif samples is not None and name.startswith("cycles.") and name.endswith(".samples"):
            whole.attribute(name, str(samples))
    return whole


def carry_render_metadata(assembled: Path, frame: Path) -> None:
    """Add Cycles' per-layer metadata (``cycles.<layer>.samples``…) of the assembled file to
    the finished frame, which Blender wrote from its compositor without rendering. EXR frames
    only: rewriting them is lossless."""
    if frame.suffix.lower() != ".exr":
        return
    oiio = _oiio()
    source = oiio.ImageBuf(str(assembled), 0, 0).spec()
    wanted = [(a.name, a.value) for a in source.extra_attribs if a.name.startswith("cycles.")]
    if not wanted:
        return
    buf = oiio.ImageBuf(str(frame))
    if not buf.read(force=True):
        raise DataError(f"{frame.name}: cannot read the finished frame: {buf.geterror()}")
    for name, value in wanted:
        buf.specmod().attribute(name, value)
    temp = frame.with_name(f".{frame.stem}.writing.exr")
    if not buf.write(str(temp)):
        raise DataError(f"cannot write {frame.name}: {buf.geterror()}")
    temp.replace(frame)


def _same_layout(parts: Sequence[list[_Layer]], names: Sequence[str]) -> None:
    first = [(layer.name, tuple(layer.spec.channelnames)) for layer in parts[0]]
    for name, layers in zip(names, parts, strict=True):
        if [(layer.name, tuple(layer.spec.channelnames)) for layer in layers] != first:
            raise DataError(f"{name}: its layers and passes differ from {names[0]}'s")


def assemble_frame(parts: Sequence[Path], out: Path) -> None:
    """Assemble ``parts`` (every part of one frame, described by :func:`describe_part`) into
    the whole frame at ``out``. :class:`DataError` when they do not fit together."""
    import numpy as np

    names = [p.name for p in parts]
    read = [read_layers(p) for p in parts]
    _same_layout(read, names)
    first = read[0][0].spec
    width, height = first.full_width, first.full_height
    tiles = read[0][0].spec.get_string_attribute("jitrender:core") != ""
    whole: list[_Layer] = []
    if tiles:
        for index, layer in enumerate(read[0]):
            pixels = np.zeros((height, width, layer.spec.nchannels), dtype=np.float32)
            covered = np.zeros((height, width), dtype=np.int32)
            for name, layers in zip(names, read, strict=True):
                spec, data = layers[index].spec, layers[index].pixels
                x0, y0, x1, y1 = (
                    int(v) for v in spec.get_string_attribute("jitrender:core").split(",")
                )
                wx, wy = spec.x, spec.y
                if not (wx <= x0 and wy <= y0 and x1 <= wx + spec.width and y1 <= wy + spec.height):
                    raise DataError(f"{name}: its core {x0},{y0}-{x1},{y1} is outside its pixels")
                pixels[y0:y1, x0:x1] = data[y0 - wy : y1 - wy, x0 - wx : x1 - wx]
                covered[y0:y1, x0:x1] += 1
            if (covered != 1).any():
                raise DataError(f"{names[0]}…: the tiles do not cover the frame exactly once")
            whole.append(_Layer(layer.name, _clean(layer.spec, width, height), pixels))
    else:
        counts = [layers[0].spec.get_int_attribute("jitrender:samples") for layers in read]
        offsets = [layers[0].spec.get_int_attribute("jitrender:offset") for layers in read]
        total = sum(counts)
        if total < 1 or 0 not in offsets:
            raise DataError(f"{names[0]}…: the sample parts do not start at sample 0")
        starter = offsets.index(0)
        for index, layer in enumerate(read[0]):
            pass_name = layer.name.split(".", 1)[-1]
            if pass_name in FIRST_SAMPLE_PASSES:
                pixels = read[starter][index].pixels.astype(np.float32)
            else:
                acc = np.zeros(layer.pixels.shape, dtype=np.float64)
                for count, layers in zip(counts, read, strict=True):
                    acc += layers[index].pixels * (count / total)
                pixels = acc.astype(np.float32)
            whole.append(_Layer(layer.name, _clean(layer.spec, width, height, total), pixels))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_layers(out, whole)
