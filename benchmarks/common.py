"""What every benchmark shares: a fake-gcs-server behind the latency/bandwidth proxy, jobs,
timing, tables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.fakegcs import emulator_env, free_port, start_fake_gcs, wait_http

REPO = Path(__file__).resolve().parent.parent
BUCKET = "bench"
# A stage that only reads its inputs still leaves one (empty) output a frame: a frame with no
# output is a failed frame (final means final), so ``true`` alone would fail every run.
MARK_FRAMES = [
    "sh",
    "-c",
    'for f in $(echo "$JITRENDER_FRAMES" | tr , " "); do'
    ' : > "$JITRENDER_OUTPUTS/frame.$f.done"; done',
]


def then_mark_frames(shell: str) -> list[str]:
    """A stage command running the ``sh`` command line ``shell``, then marking each frame
    as :data:`MARK_FRAMES` does (so the frames count as done)."""
    return ["sh", "-c", f"{shell}; {MARK_FRAMES[2]}"]


# The stage of the benchmarks that measure fetching: it reads nothing and marks each frame.
MARK_STAGE: dict[str, Any] = {"name": "render", "per": "chunk", "command": MARK_FRAMES}
MiB = 1 << 20


def link_settings() -> tuple[float, float]:
    """(latency ms, bandwidth MB/s per connection), set by ``python -m benchmarks`` flags."""
    return (
        float(os.environ.get("JITRENDER_BENCH_LATENCY_MS", "20")),
        float(os.environ.get("JITRENDER_BENCH_BANDWIDTH_MBS", "100")),
    )


class Emulator:
    """fake-gcs-server preloaded from ``data`` (``data/<bucket>/<object path>``), reached only
    through the proxy: every client in the benchmark pays the same latency and bandwidth."""

    def __init__(
        self,
        data: Path,
        *,
        bandwidth_mbs: float | None = None,
        connect_ms: float = 0.0,
        node_mbs: float = 0.0,
    ) -> None:
        """``bandwidth_mbs`` overrides the suite's per-connection cap (0: none); ``connect_ms``
        and ``node_mbs`` add the proxy's handshake cost and node-wide cap (0: none)."""
        latency_ms, bandwidth = link_settings()
        if bandwidth_mbs is not None:
            bandwidth = bandwidth_mbs
        self.proxy_port = free_port()
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        # Loading ``-data`` takes fake-gcs-server time quadratic in the objects (10k: ~60 s).
        self.server, self.direct = start_fake_gcs(
            data=data, public_port=self.proxy_port, timeout=600
        )
        self.port = int(self.direct.rsplit(":", 1)[1])
        self.proxy = subprocess.Popen(
            [
                sys.executable, "-m", "benchmarks.proxy",
                "--upstream", f"127.0.0.1:{self.port}", "--port", str(self.proxy_port),
                "--latency-ms", str(latency_ms), "--bandwidth-mbs", str(bandwidth),
                "--connect-ms", str(connect_ms), "--node-mbs", str(node_mbs),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_http(f"{self.url}/__proxy/stats", self.proxy, "proxy")
        except BaseException:
            self.stop()
            raise
        self._env = emulator_env(self.url)
        self._env.__enter__()

    def stats(self, reset: bool = False) -> dict[str, int]:
        path = "reset" if reset else "stats"
        with urllib.request.urlopen(f"{self.url}/__proxy/{path}", timeout=10) as response:
            return dict(json.load(response))

    def reset(self) -> None:
        self.stats(reset=True)

    def stop(self) -> None:
        for proc in (self.proxy, self.server):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        env = getattr(self, "_env", None)
        if env is not None:
            env.__exit__(None, None, None)
            self._env = None


@contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A scratch folder removed afterwards (benchmarks can write gigabytes)."""
    root = Path(tempfile.mkdtemp(prefix=f"jitrender-bench-{name}-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def emulator(data: Path, **link: float) -> Iterator[Emulator]:
    emu = Emulator(data, **link)
    try:
        yield emu
    finally:
        emu.stop()


def write_object(data_dir: Path, name: str, size: int, seed: int = 0) -> Path:
    """A file of ``size`` pseudo-random bytes at ``data/<bucket>/<name>`` (incompressible)."""
    path = data_dir / BUCKET / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(os.urandom(size))
    return path


def gcs_client() -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="bench", credentials=AnonymousCredentials())


def gcsfs_fs() -> Any:
    import gcsfs

    return gcsfs.GCSFileSystem(
        token="anon", endpoint_url=os.environ["STORAGE_EMULATOR_HOST"], skip_instance_cache=True
    )


def write_job(
    path: Path,
    *,
    frames: str,
    deps: Sequence[str],
    stages: Sequence[dict[str, Any]] = (MARK_STAGE,),
    outputs: Path,
) -> Path:
    """A job file at ``path`` (named after it) fetching ``deps`` for ``frames``, running
    ``stages`` (by default :data:`MARK_STAGE`) and writing its outputs to the ``outputs``
    folder."""
    job = {
        "version": 1,
        "name": path.stem,
        "frames": frames,
        "deps": list(deps),
        "stages": list(stages),
        "outputs": {"to": outputs.as_uri()},
    }
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def run_job_here(job_path: Path, cache_dir: Path, **options: Any) -> tuple[float, Any]:
    """Run a job in this process (what ``jitrender run`` does after its imports); returns
    (wall seconds, report)."""
    from jitrender.job import load_job
    from jitrender.run import RunOptions, run_job

    job = load_job(job_path)
    started = time.perf_counter()
    report = run_job(job, RunOptions(cache_dir=cache_dir, **options))
    wall = time.perf_counter() - started
    if report.exit_code not in (0, None):
        raise RuntimeError(f"{job_path.name}: run failed ({report.exit_code}): {report.error}")
    return wall, report


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = call()
    return time.perf_counter() - started, value


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> str:
    """A plain-text table (also valid Markdown), with ``note`` (what the figures mean, how
    they were measured) below it after a blank line."""
    cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [f"### {title}", ""]
    for index, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if note:
        lines += ["", note]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None
