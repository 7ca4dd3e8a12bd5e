"""The end of a batch of ranges: a worker with nothing queued takes the far half of the range
with the most bytes still to come, so connections finish together instead of one range's tail
arriving alone. In-process against fake-gcs-server, and a ``jitrender run`` through a proxy
that holds one range."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO

import yaml

from jitrender.storage import GCSStore, ObjectInfo
from jitrender.transfer import RangedDownloader
from tests.conftest import cli, put_object
from tests.faultproxy import Fault, FaultProxy, Request

MiB = 1 << 20


class _SlowFirstRange(GCSStore):
    """A GCS store whose range from offset 0 arrives slowly (each piece waits before it is
    written), recording every range asked for and how many bytes the slow one delivered."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[int, int | None]] = []
        self.slow_written = 0
        self._lock = threading.Lock()

    def download(
        self, info: ObjectInfo, sink: IO[bytes], start: int = 0, end: int | None = None
    ) -> None:
        with self._lock:
            self.asked.append((start, end))
        if start != 0:
            super().download(info, sink, start, end)
            return
        outer = self

        class Slow:
            def write(self, data: bytes) -> int:
                time.sleep(0.3)
                count = sink.write(data)  # raises once the range was cut
                outer.slow_written += len(data)
                return count

            def flush(self) -> None:
                return None

        super().download(info, Slow(), start, end)  # type: ignore[arg-type]


def test_an_idle_worker_takes_the_far_half_of_a_slow_range(gcs_bucket: str, tmp_path: Path) -> None:
    data = os.urandom(4 * MiB + 4321)
    url = f"{gcs_bucket}/plates/slow.exr"
    put_object(url, data)
    store = _SlowFirstRange()
    info = store.stat(url)
    assert info is not None
    ranged = RangedDownloader(
        chunk_bytes=info.size, workers=2, piece_bytes=info.size, cut_min_bytes=MiB
    )
    digest = ranged.download(info, store, tmp_path / "slow.part")
    ranged.close()
    assert (tmp_path / "slow.part").read_bytes() == data
    assert digest == info.crc32c
    assert store.asked[0] == (0, info.size)
    assert len(store.asked) >= 2 and all(start > 0 for start, _ in store.asked[1:])
    assert all(end == info.size for _, end in store.asked[1:2])  # the far half, to the end
    assert store.slow_written < info.size  # the slow reader stopped at the cut


def test_a_lone_range_is_shared_out_among_idle_workers_before_it_is_asked_for(
    gcs_bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(4 * MiB + 3)
    url = f"{gcs_bucket}/plates/lone.exr"
    put_object(url, data)
    put_object(f"{gcs_bucket}/plates/first.exr", b"x" * 10)
    store = _SlowFirstRange()
    info, first = store.stat(url), store.stat(f"{gcs_bucket}/plates/first.exr")
    assert info is not None and first is not None
    ranged = RangedDownloader(chunk_bytes=info.size, workers=4, piece_bytes=MiB)
    ranged.download(first, store, tmp_path / "first.part")  # starts the four workers
    time.sleep(0.2)  # all idle again
    store.asked.clear()
    store.slow_written = 0
    digest = ranged.download(info, store, tmp_path / "lone.part")
    ranged.close()
    assert (tmp_path / "lone.part").read_bytes() == data
    assert digest == info.crc32c
    # Four pieces asked for (none cut): they tile the object.
    assert sorted(store.asked) == [(0, 1048577), (1048577, 2097154), (2097154, 3145731),
                                   (3145731, info.size)]  # fmt: skip
    assert store.slow_written == 1048577


def _range_start(request: Request) -> int:
    return int(request.range.removeprefix("bytes=").split("-")[0] or 0)


def test_a_run_whose_range_stalls_cuts_it_and_still_installs_exact_bytes(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    # 40 MiB: ranges of 16, 16 and 8 MiB. The proxy holds the first one until a request for
    # bytes inside it arrives, which only cutting the held range makes.
    data = os.urandom(40 * MiB)
    url = f"{gcs_bucket}/plates/big.0001.exr"
    put_object(url, data)
    held: list[Fault] = []

    def hold_first(request: Request) -> Fault | None:
        if not (request.is_download and "big.0001.exr" in request.path):
            return None
        start = _range_start(request)
        if start == 0 and not held:
            held.append(Fault("hold", forward=True))
            return held[0]
        if held and 0 < start < 16 * MiB:
            held[0].release.set()
        return None

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
    proxy.rules.append(hold_first)
    env = dict(os.environ, STORAGE_EMULATOR_HOST=proxy.url, JITRENDER_PREEMPTION_WATCH="off")
    env["JITRENDER_CACHE_DIR"] = str(tmp_path / "cache")
    result = cli("run", str(job), "--progress", "plain", "--report", str(report), env=env)
    assert result.returncode == 0, result.stderr
    assert held and held[0].release.is_set()  # released by the cut, not by the hold's bound
    summed = (tmp_path / "renders" / "sum.0001.txt").read_text()
    assert summed == hashlib.sha256(data).hexdigest()
    fetched = yaml.safe_load(report.read_text())["cache"]["bytes_fetched"]
    assert fetched == len(data)
