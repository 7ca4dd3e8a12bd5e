"""Downloaded bytes are written in slices (small page-cache folios: see jitrender.writes)."""

from __future__ import annotations

import os
from pathlib import Path

from jitrender.writes import SLICE_BYTES, pwrite_all, slices, write_all


def test_slices_cover_the_bytes_in_order_none_longer_than_a_slice() -> None:
    data = os.urandom(3 * SLICE_BYTES + 7)
    pieces = list(slices(data))
    assert [len(p) for p in pieces] == [SLICE_BYTES] * 3 + [7]
    assert b"".join(pieces) == data
    assert list(slices(b"")) == []


def test_write_all_and_pwrite_all_write_every_byte_where_asked(tmp_path: Path) -> None:
    data = os.urandom(5 * SLICE_BYTES + 3)
    target = tmp_path / "f"
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, data[:100])
        assert pwrite_all(fd, data, 100) == 100 + len(data)
        write_all(fd, b"end")  # (pwrite moves no position: this lands at 100)
    finally:
        os.close(fd)
    assert target.read_bytes() == data[:100] + b"end" + data[3:]
