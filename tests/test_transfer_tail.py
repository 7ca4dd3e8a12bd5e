"""A range taken while other range workers are free, with nothing else queued, is shared out
among them before it is asked for: a lone object goes over several connections, and the end
of a batch finishes together. In-process against fake-gcs-server, and through ``jitrender
run`` behind a proxy that records the ranges asked for."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import IO

import yaml

from jitrender.storage import GCSStore, ObjectInfo
from jitrender.transfer import MIN_CHUNK_BYTES, PIECE_BYTES, RangedDownloader
from tests.conftest import cli, put_object
from tests.faultproxy import FaultProxy

MiB = 1 << 20


class _Recording(GCSStore):
    """A GCS store that records every range asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[int, int | None]] = []
        self._lock = threading.Lock()

    def download(
        self, info: ObjectInfo, sink: IO[bytes], start: int = 0, end: int | None = None
    ) -> None:
        with self._lock:
            self.asked.append((start, end))
        super().download(info, sink, start, end)


def _stored(bucket: str, name: str, size: int) -> tuple[bytes, _Recording, ObjectInfo]:
    """``size`` random bytes put at ``bucket/plates/name``; a recording store and their stat."""
    data = os.urandom(size)
    url = f"{bucket}/plates/{name}"
    put_object(url, data)
    store = _Recording()
    info = store.stat(url)
    assert info is not None
    return data, store, info


def test_a_lone_range_is_shared_out_among_free_workers_before_it_is_asked_for(
    gcs_bucket: str, tmp_path: Path
) -> None:
    data, store, info = _stored(gcs_bucket, "lone.exr", 4 * MiB + 3)
    ranged = RangedDownloader(chunk_bytes=info.size, workers=4, piece_bytes=MiB)
    digest = ranged.download(info, store, tmp_path / "lone.part")
    ranged.close()
    assert (tmp_path / "lone.part").read_bytes() == data
    assert digest == info.crc32c
    piece = -(-info.size // 4)
    assert sorted(store.asked) == [(i * piece, min(info.size, (i + 1) * piece)) for i in range(4)]


def test_ranges_taken_while_others_are_queued_are_not_shared(
    gcs_bucket: str, tmp_path: Path
) -> None:
    # Two workers, four ranges: the first three are taken with others still queued (nothing
    # to share: each is one request); only the last may be shared with a free worker.
    data, store, info = _stored(gcs_bucket, "busy.exr", 4 * MiB)
    ranged = RangedDownloader(chunk_bytes=MiB, workers=2, piece_bytes=MiB // 2)
    assert ranged.download(info, store, tmp_path / "busy.part") == info.crc32c
    ranged.close()
    assert (tmp_path / "busy.part").read_bytes() == data
    asked = sorted(store.asked)
    assert asked[:3] == [(0, MiB), (MiB, 2 * MiB), (2 * MiB, 3 * MiB)]
    assert asked[3:] in ([(3 * MiB, 4 * MiB)], [(3 * MiB, 7 * MiB // 2), (7 * MiB // 2, 4 * MiB)])


def test_in_the_end_game_the_last_ranges_are_cut_into_pieces_even_with_no_worker_free(
    gcs_bucket: str, tmp_path: Path
) -> None:
    # One worker (never a free one to share with), 2 MiB ranges: while more bytes are still
    # to be asked for than the worker keeps busy, each range is one request; once the owner
    # says few are left (pending), the range taken is cut into piece_bytes pieces.
    data, store, info = _stored(gcs_bucket, "endgame.exr", 6 * MiB)
    ranged = RangedDownloader(chunk_bytes=2 * MiB, workers=1, piece_bytes=MiB)
    left = [info.size]

    def started(size: int) -> None:
        left[0] -= size

    ranged.pending = lambda: left[0]
    with ranged.scheduled(ranged.reserve(), started):
        assert ranged.download(info, store, tmp_path / "endgame.part") == info.crc32c
    ranged.close()
    assert (tmp_path / "endgame.part").read_bytes() == data
    # 6 MiB to come > 1 worker x 2 MiB, 4 MiB too; at the last range 2 MiB: cut in two.
    assert sorted(store.asked) == [(0, 2 * MiB), (2 * MiB, 4 * MiB), (4 * MiB, 5 * MiB),
                                   (5 * MiB, 6 * MiB)]  # fmt: skip


def test_a_run_fetches_a_lone_large_object_over_several_connections(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    # One request would do for an object of MIN_CHUNK_BYTES among many; alone, it goes as
    # PIECE_BYTES pieces over that many connections at once.
    data = os.urandom(MIN_CHUNK_BYTES)
    url = f"{gcs_bucket}/plates/big.0001.exr"
    put_object(url, data)
    stage = tmp_path / "stage.py"
    stage.write_text(
        "import hashlib, os, pathlib\n"
        "src = next(pathlib.Path(os.environ['JITRENDER_INPUTS']).rglob('big.0001.exr'))\n"
        "out = pathlib.Path(os.environ['JITRENDER_OUTPUTS']) / 'sum.0001.txt'\n"
        "out.write_text(hashlib.sha256(src.read_bytes()).hexdigest())\n"
    )
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "frames": "1",
                "deps": [url],
                "stages": [{"name": "render", "command": [sys.executable, str(stage)]}],
                "outputs": {"to": f"file://{tmp_path}/renders", "files": ["sum.####.txt"]},
            }
        )
    )
    report = tmp_path / "report.json"
    env = dict(os.environ, STORAGE_EMULATOR_HOST=proxy.url, JITRENDER_PREEMPTION_WATCH="off")
    env["JITRENDER_CACHE_DIR"] = str(tmp_path / "cache")
    result = cli("run", str(job), "--progress", "plain", "--report", str(report), env=env)
    assert result.returncode == 0, result.stderr
    asked = sorted(r.range for r in proxy.requests if r.is_download and "big.0001" in r.path)
    pieces = MIN_CHUNK_BYTES // PIECE_BYTES
    assert asked == sorted(
        f"bytes={i * PIECE_BYTES}-{(i + 1) * PIECE_BYTES - 1}" for i in range(pieces)
    )
    summed = (tmp_path / "renders" / "sum.0001.txt").read_text()
    assert summed == hashlib.sha256(data).hexdigest()
    assert json.loads(report.read_text())["cache"]["bytes_fetched"] == len(data)
