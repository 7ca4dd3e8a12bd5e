"""Bytes are what they claim to be: file:// objects carry a crc32c like GCS ones, "identical"
means identical bytes, and a cache folder nobody but its user controls (no planted objects,
no symlinks followed inside it). Through the ``jitrender`` CLI, on file:// and fake-gcs-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jitrender.storage import LocalStore, crc32c_of_bytes
from tests.conftest import put_object
from tests.renderjobs import expected_output, jitrender_env, make_job, run


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jitrender.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def cache_objects(cache_dir: Path) -> list[Path]:
    return sorted(p for p in (cache_dir / "objects").glob("*/*") if p.is_file())


# -- item 4: file:// objects carry a crc32c --------------------------------------------------


def test_file_objects_report_the_crc32c_of_their_bytes(local_bucket: str) -> None:
    url = f"{local_bucket}/tex/a.bin"
    put_object(url, b"plain file nobody tagged")
    info = LocalStore().stat(url)
    assert info is not None and info.crc32c == crc32c_of_bytes(b"plain file nobody tagged")
    listed = LocalStore().list(f"{local_bucket}/tex/")
    assert [i.crc32c for i in listed] == [info.crc32c]  # and the tag is no object of its own


def test_flipped_byte_in_a_file_bucket_cache_object_is_found_by_cache_verify(
    tmp_path: Path, local_bucket: str
) -> None:
    job = make_job(tmp_path / "job", local_bucket, "1-2", texture_size=5000)
    code, out, _ = run(job)
    assert code == 0, out
    objects = cache_objects(job.cache_dir)
    assert len(objects) == 3  # the LUT and two textures
    victim = objects[0]
    os.chmod(victim, 0o600)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    env = jitrender_env(job)
    checked = cli("cache", "verify", "--json", env=env)
    assert checked.returncode == 65, checked.stderr
    assert json.loads(checked.stdout)["bad"] == 1
    assert not victim.exists()  # dropped: never served again
    again = cli("cache", "verify", "--json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["bad"] == 0


def test_an_existing_file_output_of_the_same_size_but_other_bytes_is_a_conflict(
    tmp_path: Path, local_bucket: str
) -> None:
    job = make_job(tmp_path / "job", local_bucket, "1", texture_size=3000)
    right = expected_output(1, job.frame_inputs(1))
    stranger = bytes(b ^ 0x20 for b in right)  # same length, other bytes
    put_object(job.output_url(1), stranger)
    code, out, report = run(job)
    assert code == 65, out
    assert "frame.0001.txt" in " ".join(report["outputs"]["conflicts"])
    assert Path(job.output_url(1).removeprefix("file://")).read_bytes() == stranger


def test_an_existing_file_output_with_the_same_bytes_is_identical(
    tmp_path: Path, local_bucket: str
) -> None:
    job = make_job(tmp_path / "job", local_bucket, "1", texture_size=3000)
    put_object(job.output_url(1), expected_output(1, job.frame_inputs(1)))
    code, out, report = run(job)
    assert code == 0, out
    assert report["outputs"]["conflicts"] == []


def test_without_xattrs_the_crc32c_lives_in_a_hidden_sidecar_that_is_no_object(
    local_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_xattrs(*_args: object) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_xattrs)
    monkeypatch.setattr(os, "getxattr", no_xattrs)
    url = f"{local_bucket}/a.bin"
    put_object(url, b"bytes")
    first = LocalStore().stat(url)
    assert first is not None and first.crc32c == crc32c_of_bytes(b"bytes")
    assert (Path(local_bucket.removeprefix("file://")) / ".a.bin.jitrender-crc32c").exists()
    assert [i.url for i in LocalStore().list(f"{local_bucket}/")] == [url]
