"""Bytes are what they claim to be: file:// objects carry a crc32c like GCS ones, "identical"
means identical bytes, and a cache folder nobody but its user controls (no planted objects,
no symlinks followed inside it). Through the ``jitrender`` CLI, on file:// and fake-gcs-server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from jitrender.storage import LocalStore, crc32c_of_bytes
from tests.conftest import cli, put_object
from tests.renderjobs import expected_output, jitrender_env, make_job, run


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


# -- item 6: a cache folder someone else made is not trusted --------------------------------


def other_user() -> tuple[int, int]:
    """A second local user (created once with useradd), for folders the running user did not
    make. Skips where the tests do not run as root."""
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root (to create a second user and chown to it)")
    name = "jitrender-other"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", name], capture_output=True, check=False
        )
        if made.returncode not in (0, 9):  # 9: made meanwhile by a parallel test
            pytest.skip(f"useradd failed: {made.stderr.decode().strip()}")
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_world_writable_cache_folder_made_by_another_user_is_refused(
    tmp_path: Path, local_bucket: str
) -> None:
    uid, gid = other_user()
    job = make_job(tmp_path / "job", local_bucket, "1", texture_size=3000)
    first = make_job(tmp_path / "first", local_bucket, "1", texture_size=3000, name="first")
    assert run(first)[0] == 0
    # The other user copies a warm cache and swaps in an object of the right size, wrong bytes.
    shutil.copytree(first.cache_dir, job.cache_dir)
    planted = cache_objects(job.cache_dir)[0]
    os.chmod(planted, 0o644)
    planted.write_bytes(b"E" * planted.stat().st_size)
    for path in [job.cache_dir, *job.cache_dir.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)
        os.chmod(path, 0o777)
    code, out, _ = run(job)
    assert code == 78, out
    assert "Traceback" not in out
    line = next(line for line in out.splitlines() if "error:" in line)
    assert f"{job.cache_dir}: cache folder is owned by jitrender-other" in line
    stats = cli("cache", "stats", "--cache-dir", str(job.cache_dir))
    assert stats.returncode == 78 and "owned by jitrender-other" in one_error_line(stats)


def test_a_cache_folder_of_the_running_user_writable_by_others_is_refused(
    tmp_path: Path, local_bucket: str
) -> None:
    job = make_job(tmp_path / "job", local_bucket, "1", texture_size=3000)
    job.cache_dir.mkdir()
    os.chmod(job.cache_dir, 0o777)
    code, out, _ = run(job)
    assert code == 78, out
    assert "writable by group or others (mode 0777)" in out and "Traceback" not in out


def test_a_symlinked_objects_folder_is_never_followed(tmp_path: Path, local_bucket: str) -> None:
    job = make_job(tmp_path / "job", local_bucket, "1-2", texture_size=3000)
    assert run(job)[0] == 0
    victim = cache_objects(job.cache_dir)[0]
    folder = victim.parent
    outside = tmp_path / "outside"
    outside.mkdir()
    # Elsewhere, a file of the right size under the object's name, and the folder swapped for
    # a link to there: neither may be read nor written through.
    (outside / victim.name).write_bytes(b"E" * victim.stat().st_size)
    shutil.rmtree(folder)
    folder.symlink_to(outside)
    again = make_job(
        tmp_path / "again", local_bucket, "1-2", texture_size=3000, name="again", upload=False
    )
    # Another version of the job over the same outputs: --overwrite lets it start at all.
    env = jitrender_env(again, JITRENDER_CACHE_DIR=str(job.cache_dir))
    code, out, _ = run(again, "--overwrite", env=env)
    assert code == 78, out
    assert f"{folder}: is a symlink inside the cache folder" in out and "Traceback" not in out
    assert [p.name for p in outside.iterdir()] == [victim.name]
    assert (outside / victim.name).read_bytes() == b"E" * victim.stat().st_size
    verify = cli("cache", "verify", "--cache-dir", str(job.cache_dir))
    assert verify.returncode == 78 and "is a symlink" in one_error_line(verify)
    assert [p.name for p in outside.iterdir()] == [victim.name]  # verify removed nothing there


def test_an_object_file_not_made_by_the_cache_is_dropped_not_served(
    tmp_path: Path, local_bucket: str
) -> None:
    uid, gid = other_user()
    job = make_job(tmp_path / "job", local_bucket, "1", texture_size=3000)
    assert run(job)[0] == 0
    for planted in cache_objects(job.cache_dir):
        size = planted.stat().st_size
        planted.unlink()
        planted.write_bytes(b"E" * size)  # right size, wrong bytes, someone else's
        os.chown(planted, uid, gid)
    again = make_job(
        tmp_path / "again", local_bucket, "1", texture_size=3000, name="again", upload=False
    )
    # Another version of the job over the same outputs: --overwrite lets it start at all.
    env = jitrender_env(again, JITRENDER_CACHE_DIR=str(job.cache_dir))
    code, out, report = run(again, "--overwrite", env=env)
    assert code == 0, out
    assert report["cache"]["misses"] == 2  # both refetched
    output = Path(again.output_url(1).removeprefix("file://")).read_bytes()
    assert output == expected_output(1, again.frame_inputs(1))
    assert all(p.stat().st_uid == os.geteuid() for p in cache_objects(job.cache_dir))


def test_an_object_the_index_does_not_know_is_served_only_if_its_bytes_match(
    tmp_path: Path, gcs_bucket: str
) -> None:
    import sqlite3

    job = make_job(tmp_path / "job", gcs_bucket, "1", texture_size=3000)
    assert run(job)[0] == 0
    good, bad = cache_objects(job.cache_dir)
    with sqlite3.connect(job.cache_dir / "index.sqlite") as db:
        db.execute("DELETE FROM entries")  # as if a crash came between install and index
    os.chmod(bad, 0o600)
    bad.write_bytes(b"E" * bad.stat().st_size)  # the right size, ours, but other bytes
    os.chmod(bad, 0o400)
    again = make_job(
        tmp_path / "again", gcs_bucket, "1", texture_size=3000, name="again", upload=False
    )
    # Another version of the job over the same outputs: --overwrite lets it start at all.
    env = jitrender_env(again, JITRENDER_CACHE_DIR=str(job.cache_dir))
    code, out, report = run(again, "--overwrite", env=env)
    assert code == 0, out
    assert (report["cache"]["hits"], report["cache"]["misses"]) == (1, 1)  # good kept, bad not
    assert bucket_bytes(again.output_url(1)) == expected_output(1, again.frame_inputs(1))
    assert good.exists() and bad.read_bytes() != b"E" * bad.stat().st_size


def bucket_bytes(url: str) -> bytes:
    from tests.renderjobs import bucket_objects

    bucket, _, name = url.removeprefix("gs://").partition("/")
    return bucket_objects(f"gs://{bucket}", name)[name][1]


def test_in_a_read_only_bucket_folder_stat_reads_no_bytes_and_puts_compare_bytes(
    tmp_path: Path, local_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jitrender.storage as storage

    url = f"{local_bucket}/plate.exr"
    put_object(url, b"plate bytes")
    monkeypatch.setattr(storage.os, "access", lambda *_args: False)
    real_crc = storage.crc32c_of_file

    def no_reads(path: Path, block: int = 4 << 20) -> str:
        if path == Path(url.removeprefix("file://")):
            raise AssertionError("stat read the whole object, on every run")
        return real_crc(path, block)

    monkeypatch.setattr(storage, "crc32c_of_file", no_reads)
    info = LocalStore().stat(url)
    assert info is not None and info.crc32c is None
    same, other = tmp_path / "same", tmp_path / "other"
    same.write_bytes(b"plate bytes")
    other.write_bytes(b"plate bytez")
    assert LocalStore().put_if_absent(same, url).outcome == "identical"
    assert LocalStore().put_if_absent(other, url).outcome == "conflict"
