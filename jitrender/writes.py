"""Downloaded bytes into files, in slices the page cache takes cheaply.

Linux sizes a page-cache folio by the write that makes it (ext4's large folios, 6.x): one
``write`` of 4 MiB asks for 2 MiB folios. On a virtual machine whose balloon reports free
memory to its host (Firecracker here; free page reporting works on such large blocks), those
blocks' first touch costs the host's page faults, charged to the copy into the page cache.
Measured on this machine, 923 MB written by one process after the memory had been reported
(``perf``: ``copy_folio_from_iter_atomic``): in 4 MiB writes 4.7 s of system CPU, 1 MiB 4.2 s,
512 KiB 2.9 s, 256 KiB 0.25 s, 128 KiB 0.21 s. rclone writes 32 KiB at a time and never paid
it; jitrender's shot of 71 files spent 2.3-5 s of its 3-6 s of CPU there. In ``make bench``,
where every tool's 923 MB is deleted after its round, 128 KiB slices still paid it in part:
the shot's CPU 1.64-2.33 s in 128 KiB slices, 1.29-1.40 s in 32 KiB ones (two runs of each,
3 rounds, on one machine; wall 2.72 -> 2.65 s); 4 x 512 MiB the same in both (2.26 s). A
slice of ``SLICE_BYTES`` costs one more syscall per 32 KiB, nothing measurable next to that.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

SLICE_BYTES = 32 << 10


def slices(data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
    """``data`` as views of at most ``SLICE_BYTES`` (no copies)."""
    view = memoryview(data)
    for start in range(0, len(view), SLICE_BYTES):
        yield view[start : start + SLICE_BYTES]


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` at ``fd``'s position, a slice at a time."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:SLICE_BYTES]) :]


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    """Write all of ``data`` at ``offset``, a slice at a time; the offset after it."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view[:SLICE_BYTES], offset)
        offset += written
        view = view[written:]
    return offset
