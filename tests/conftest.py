"""Shared fixtures and helpers: a real GCS JSON API server (fake-gcs-server, started by
tests/fakegcs.py as the benchmarks start it) with buckets in it, a local folder acting as a
bucket, and the one CLI runner (:func:`cli`).

The suite runs in parallel (``make unit``: pytest-xdist, ``--dist loadscope``): each worker
starts its own fake-gcs-server and has its own default cache folder (``$XDG_CACHE_HOME``),
and all tests of one module run on one worker, so a module-scoped fixture (a rendered job, a
Slurm cluster) is built once. A test must not use a fixed port or a fixed path outside its
``tmp_path``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import settings

from tests.fakegcs import emulator_env, start_fake_gcs
from tests.faultproxy import FaultProxy

# CI runs the fuzzers on fixed examples so a run is repeatable; locally they explore freely.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def own_default_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs that name no cache folder use one of this session's (this xdist worker's), not
    the user's ``~/.cache/jitrender`` shared with other sessions and workers; so does the
    memo of checked job files (jitrender.job), in place of the node's temporary folder."""
    own = {
        "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("xdg-cache")),
        "JITRENDER_JOB_MEMO_DIR": str(tmp_path_factory.mktemp("job-memo")),
    }
    saved = {name: os.environ.get(name) for name in own}
    os.environ.update(own)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def cli(
    *args: str,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``jitrender ARGS`` the way a user runs it: a real process, text output captured; the
    exit code is the caller's to check. The one CLI runner of the suite."""
    return subprocess.run(
        [sys.executable, "-m", "jitrender.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=None if env is None else dict(env),
        check=False,
    )


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    """A fake-gcs-server for the whole session; sets the two emulator variables DESIGN.md names
    (also inherited by the jitrender processes the tests start)."""
    proc, url = start_fake_gcs()
    with emulator_env(url):
        yield url
    proc.terminate()
    proc.wait(timeout=10)


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


@pytest.fixture
def proxy(gcs_server: str, request: pytest.FixtureRequest) -> Iterator[FaultProxy]:
    """A fault-injecting proxy (:mod:`tests.faultproxy`) in front of the session's server;
    no faults until the test sets them. A module that wants other settings (a stall length,
    a seed) names them in a module-level ``PROXY_SETTINGS`` dict."""
    settings = getattr(request.module, "PROXY_SETTINGS", {})
    with FaultProxy(gcs_server, **settings) as running:
        yield running


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
