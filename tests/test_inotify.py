"""The outputs watch's inotify reader on a real folder (Linux's inotify; a unit test in
addition to the CLI's, tests/test_run.py and tests/test_outputs_final.py, which watch through
it). What it tells is what the uploader acts on: ``renamed`` is final, ``closed`` is not."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="inotify is Linux's")

from jitrender import inotify, outputs  # noqa: E402
from jitrender.inotify import InotifyWatch  # noqa: E402
from tests.renderjobs import descriptors_taken  # noqa: E402


class Heard:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.changed = threading.Condition()

    def closed(self, path: Path) -> None:
        self._add("closed", path)

    def renamed(self, path: Path) -> None:
        self._add("renamed", path)

    def _add(self, kind: str, path: Path) -> None:
        with self.changed:
            self.events.append((kind, str(path)))
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.events) >= count, timeout)
            return list(self.events)


def _watch(tmp_path: Path) -> tuple[Path, Heard, InotifyWatch]:
    folder = tmp_path / "outputs"
    folder.mkdir()
    heard = Heard()
    return folder, heard, InotifyWatch(folder, heard.closed, heard.renamed)


def _rename_is_heard(folder: Path, heard: Heard) -> None:
    (folder / ".r.tmp").write_bytes(b"1")
    os.replace(folder / ".r.tmp", folder / "r.exr")
    assert ("renamed", str(folder / "r.exr")) in heard.wait_for(2)


def test_writes_and_renames_are_told_in_the_order_they_happened(tmp_path: Path) -> None:
    folder, heard, watch = _watch(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    try:
        (folder / "log.txt").write_text("a line")  # written in place: closed
        (folder / ".r.1.tmp").write_bytes(b"1")
        os.replace(folder / ".r.1.tmp", folder / "r.1.exr")  # renamed within
        (scratch / "r.2.exr").write_bytes(b"2")
        os.replace(scratch / "r.2.exr", folder / "r.2.exr")  # renamed in from elsewhere
        events = heard.wait_for(4)
    finally:
        watch.stop()
        watch.join(5)
    assert events == [
        ("closed", str(folder / "log.txt")),
        ("closed", str(folder / ".r.1.tmp")),
        ("renamed", str(folder / "r.1.exr")),
        ("renamed", str(folder / "r.2.exr")),
    ]


def test_new_folders_are_watched_and_a_folder_renamed_in_brings_its_files_finished(
    tmp_path: Path,
) -> None:
    folder, heard, watch = _watch(tmp_path)
    try:
        (folder / "shot" / "deep").mkdir(parents=True)
        time.sleep(0.2)  # the watches of the new folders are added as their events come
        (folder / "shot" / "deep" / "a.tmp").write_bytes(b"a")
        os.replace(folder / "shot" / "deep" / "a.tmp", folder / "shot" / "deep" / "a.exr")
        done = tmp_path / "done"
        (done / "sub").mkdir(parents=True)
        (done / "sub" / "b.exr").write_bytes(b"b")
        os.replace(done, folder / "done")  # a finished folder renamed in
        events = heard.wait_for(3)
        # A folder renamed within the tree keeps its watch, under its new name.
        os.replace(folder / "shot", folder / "shot2")
        time.sleep(0.2)
        os.replace(folder / "shot2" / "deep" / "a.exr", folder / "shot2" / "deep" / "c.exr")
        events = heard.wait_for(5)
    finally:
        watch.stop()
        watch.join(5)
    assert ("renamed", str(folder / "shot" / "deep" / "a.exr")) in events
    assert ("renamed", str(folder / "done" / "sub" / "b.exr")) in events
    assert events[-1] == ("renamed", str(folder / "shot2" / "deep" / "c.exr"))


def test_stopping_ends_the_thread_and_closes_its_descriptors(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    folder, heard, watch = _watch(tmp_path)
    watch.stop()
    watch.join(5)
    watch.stop()  # again: nothing is written to a descriptor that is closed (or reused)
    assert not watch._thread.is_alive()
    assert len(os.listdir("/proc/self/fd")) == before
    (folder / "late.txt").write_text("after the stop")
    time.sleep(0.1)
    assert heard.events == []


def test_without_inotify_the_outputs_watch_is_watchdogs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another system (no inotify in libc) or inotify's limits reached: watchdog watches."""

    def no_inotify() -> object:
        raise AttributeError("inotify_init1")

    monkeypatch.setattr(inotify, "_lib", no_inotify)
    folder, heard = tmp_path / "outputs", Heard()
    folder.mkdir()
    observer = outputs._observe(folder, heard)  # type: ignore[arg-type]
    try:
        assert type(observer).__module__.startswith("watchdog")
        _rename_is_heard(folder, heard)
    finally:
        observer.stop()
        observer.join(5)


def test_the_watch_works_with_descriptors_past_1024(tmp_path: Path) -> None:
    """A busy run holds many sockets and files: select() fails past descriptor 1,023."""
    with descriptors_taken():
        folder, heard, watch = _watch(tmp_path)
        try:
            assert watch._fd > 1024
            _rename_is_heard(folder, heard)
        finally:
            watch.stop()
            watch.join(5)
