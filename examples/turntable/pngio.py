"""Reading and writing 8-bit PNG files with numpy and zlib only (no imaging library needed on
the render node). Reads what Blender and this module write: 8-bit grey/RGB/RGBA, any row
filter, not interlaced."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> channels


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def encode_png(pixels: npt.NDArray[np.uint8], level: int = 6) -> bytes:
    """PNG bytes of an (height, width, 3|4) or (height, width) uint8 array."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = np.concatenate(
        [np.zeros((height, 1), np.uint8), pixels.reshape(height, width * channels)], axis=1
    )
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
        + _chunk(b"IEND", b"")
    )


def write_png(path: Path, pixels: npt.NDArray[np.uint8], level: int = 6) -> None:
    """Write atomically: a temporary name in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_bytes(encode_png(pixels, level))
    os.replace(temp, path)


def read_png(path: Path) -> npt.NDArray[np.uint8]:
    """An (height, width, channels) uint8 array."""
    data = path.read_bytes()
    if not data.startswith(_SIGNATURE):
        raise ValueError(f"{path}: not a PNG file")
    offset, idat = len(_SIGNATURE), b""
    width = height = channels = 0
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or interlace or colour not in _CHANNELS:
                raise ValueError(f"{path}: only 8-bit, non-interlaced grey/RGB(A) PNGs are read")
            channels = _CHANNELS[colour]
        elif kind == b"IDAT":
            idat += body
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * channels)
    return _unfilter(raw, channels).reshape(height, width, channels)


def _unfilter(raw: npt.NDArray[np.uint8], bpp: int) -> npt.NDArray[np.uint8]:
    out = np.zeros((raw.shape[0], raw.shape[1] - 1), np.int32)
    previous = np.zeros(raw.shape[1] - 1, np.int32)
    for y in range(raw.shape[0]):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 0:
            row = line
        elif kind == 1:  # Sub: a running sum per channel
            row = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) & 0xFF
        elif kind == 2:  # Up
            row = (line + previous) & 0xFF
        else:  # Average and Paeth depend on the pixel to the left: one pixel at a time
            row = np.zeros_like(line)
            for x in range(0, line.size, bpp):
                a = row[x - bpp : x] if x else np.zeros(bpp, np.int32)
                b = previous[x : x + bpp]
                if kind == 3:
                    row[x : x + bpp] = (line[x : x + bpp] + (a + b) // 2) & 0xFF
                else:
                    c = previous[x - bpp : x] if x else np.zeros(bpp, np.int32)
                    p = a + b - c
                    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
                    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
                    row[x : x + bpp] = (line[x : x + bpp] + pred) & 0xFF
        out[y] = row
        previous = row
    return out.astype(np.uint8)
