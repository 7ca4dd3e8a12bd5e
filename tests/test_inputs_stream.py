"""Dependencies flow into fetching as soon as each one's stat is in, not after the whole
resolve and stat: real ``jitrender run`` processes against fake-gcs-server behind the fault
proxy, which holds one listing while the test watches what else goes on.

The promises: with a sequence's listing held, the first download (a file every frame needs,
known from its folder's listing) is already asked for; on a warm cache its workspace link is
made meanwhile; no stage starts before every stat is in; the run still ends with the right
outputs, fetching exactly the bytes it needs (cold) or none (warm). A manifest's folder
listing and its sequences' listings go out together; a dependency missing from a sequence
still fails the run with 65 before any stage runs, and a failed listing is retried."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from jitrender.errors import ObjectNameError
from jitrender.inputs import _LocalNames
from jitrender.paths import workspace_relstr
from jitrender.transfer import listing_groups, listing_ranges
from tests.conftest import gcs_client, put_object
from tests.faultproxy import MAX_HOLD_S, Fault, FaultProxy, Request, first_only, hold_first
from tests.renderjobs import (
    RenderJob,
    bucket_objects,
    expected_output,
    finish,
    jitrender_env,
    make_job,
    run,
    shared_lut,
    start_run,
    texture,
    wait_for,
)

FRAMES = "1-10"  # ten frames of one sequence: one ranged listing, not ten stats
# How long a test watches for what must happen while a request is held: well inside the
# proxy's own ceiling on a hold, after which it lets the request go anyway.
HOLD_CHECK_S = MAX_HOLD_S - 10


def _manifest_job(root: Path, bucket: str) -> RenderJob:
    """The shared job (a LUT every frame needs, a texture per frame), its dependencies named
    by a manifest: a folder line (``shared/``, holding the LUT) and a sequence line."""
    job = make_job(root, bucket, FRAMES, extra={"scene": f"{bucket}/scenes/shot.txt", "deps": []})
    put_object(f"{bucket}/shared/lut.bin", shared_lut(job.texture_size))
    lines = f"{bucket}/shared/\n{bucket}/assets/tex.####.bin\n"
    put_object(f"{bucket}/scenes/shot.txt", lines.encode())
    return job


def _is_sequence_listing(request: Request) -> bool:
    return "/storage/v1/b/" in request.path and "startOffset=assets/tex." in request.path


def _is_folder_listing(request: Request) -> bool:
    return "/storage/v1/b/" in request.path and "prefix=shared/" in request.path


def _is_lut_download(request: Request) -> bool:
    # A media GET (JSON API) or the XML API's /BUCKET/NAME; never a stat or a listing.
    return "shared/lut.bin" in request.path and (
        request.is_download or not request.path.startswith("/storage/")
    )


def _outputs_right(job: RenderJob) -> None:
    found = bucket_objects(job.bucket, "renders/")
    for frame in job.frames:
        name = f"renders/frame.{frame:04d}.txt"
        assert found.get(name) is not None, sorted(found)
        # The renderer reads its inputs sorted by path: assets/tex.* before shared/lut.bin.
        read = texture(frame, job.texture_size) + shared_lut(job.texture_size)
        assert found[name][1] == expected_output(frame, read), frame


def test_the_first_download_goes_out_while_a_sequence_listing_is_still_held(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = _manifest_job(tmp_path / "job", gcs_bucket)
    hold = hold_first(proxy, _is_sequence_listing)
    proc = start_run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    try:
        assert hold.held.wait(30), "the sequence was never listed"
        wait_for(lambda: any(map(_is_lut_download, proxy.requests)), timeout=HOLD_CHECK_S)
        assert job.phases("start") == [], "a stage started before every stat was in"
    finally:
        hold.release.set()
    code, out = finish(proc)
    assert code == 0, out
    report = json.loads((job.root / "report.json").read_text())
    assert report["frames"]["done"] == job.frames
    cache = report["cache"]
    assert cache["bytes_fetched"] == report["deps"]["bytes_needed"] > 0, cache
    _outputs_right(job)


def test_a_warm_run_links_what_it_knows_while_a_listing_is_held_and_ends_right(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = _manifest_job(tmp_path / "job", gcs_bucket)
    env = jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url)
    code, out, _ = run(job, env=env)
    assert code == 0, out
    job.clear_phases()
    hold = hold_first(proxy, _is_sequence_listing)
    proc = start_run(job, "--rerender", env=env)
    try:
        assert hold.held.wait(30), "the sequence was never listed"
        # The LUT (from the folder's listing) is linked from the cache meanwhile.
        wait_for(
            lambda: any((job.cache_dir / "runs").glob("*/inputs/**/shared/lut.bin")),
            timeout=HOLD_CHECK_S,
        )
        assert job.phases("start") == [], "a stage started before every stat was in"
    finally:
        hold.release.set()
    code, out = finish(proc)
    assert code == 0, out
    report = json.loads((job.root / "report.json").read_text())
    assert report["frames"]["done"] == job.frames
    cache = report["cache"]
    assert cache["bytes_fetched"] == 0 and cache["hits"] == report["deps"]["count"], cache
    _outputs_right(job)


def test_a_manifests_folder_and_sequence_listings_go_out_together(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """The sequence's listing is asked before the folder's answers: one round trip, not two."""
    job = _manifest_job(tmp_path / "job", gcs_bucket)
    hold = hold_first(proxy, _is_folder_listing)
    proc = start_run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    try:
        assert hold.held.wait(30), "the folder was never listed"
        wait_for(lambda: any(map(_is_sequence_listing, proxy.requests)), timeout=HOLD_CHECK_S)
    finally:
        hold.release.set()
    code, out = finish(proc)
    assert code == 0, out


def test_a_frame_missing_from_a_sequence_fails_with_65_before_any_stage(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = _manifest_job(tmp_path / "job", gcs_bucket)
    bucket = gcs_client().bucket(gcs_bucket[len("gs://") :])  # type: ignore[attr-defined]
    bucket.blob("assets/tex.0007.bin").delete()
    code, out, report = run(job)
    assert code == 65, out
    assert [d["url"] for d in report["deps"]["missing"]] == [f"{gcs_bucket}/assets/tex.0007.bin"]
    assert job.phases("start") == [], "a stage ran with a dependency missing"
    assert bucket_objects(job.bucket, "renders/") == {}


@pytest.mark.parametrize("which", ["sequence", "head_start_folder"])
def test_a_failed_listing_is_made_again_and_the_run_ends_right(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy, which: str
) -> None:
    """A sequence's listing (the run's), or a folder line's listing made by the head start,
    answered 503 once: the run lists it again and ends right."""
    make, listing = {
        "sequence": (_manifest_job, _is_sequence_listing),
        "head_start_folder": (_explicit_job, _is_folder_listing),
    }[which]
    job = make(tmp_path / "job", gcs_bucket)
    rule, failed = first_only(listing, "503")
    proxy.rules.append(rule)
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code == 0, out
    assert failed and sum(map(listing, proxy.requests)) == 2
    assert report["cache"]["bytes_fetched"] == report["deps"]["bytes_needed"]
    _outputs_right(job)


def test_sigterm_while_a_sequence_listing_hangs_exits_75_at_once_with_nothing_partial(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """The run waits for its stats while the prefetch has begun: a stop ends both, without
    waiting for the listing, and leaves no partial download and no output."""
    job = _manifest_job(tmp_path / "job", gcs_bucket)
    hold = Fault("hold", forward=False)
    proxy.rules.append(lambda request: hold if _is_sequence_listing(request) else None)
    proc = start_run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    try:
        assert hold.held.wait(30), "the sequence was never listed"
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code, out = finish(proc, timeout=30)
        took = time.monotonic() - started
    finally:
        hold.release.set()
        if proc.poll() is None:
            proc.kill()
    assert code == 75, out
    assert took < 5, took  # not the listing's (held) answer, nor the stop's 12 s backstop
    report = json.loads((job.root / "report.json").read_text())
    assert report["status"] == "preempted", report
    assert job.phases("start") == []
    assert list((job.cache_dir / "tmp").glob("*")) == [], "a partial download was left"
    assert bucket_objects(job.bucket, "renders/") == {}


def test_workspace_names_worked_out_per_folder_equal_the_full_check() -> None:
    """The pure part: the feed's per-folder shortcut gives every input the same place below
    the workspace as the full check, and the same error for a name the workspace refuses."""

    def full(url: str) -> str:
        return os.path.join("/ws/inputs", workspace_relstr(url))

    urls = [f"gs://b/seq/d{i // 3}/f{i:04d}.exr" for i in range(9)]
    urls += ["gs://b/a/./x.bin", "gs://b/a//y.bin", "gs://b//z", "gs://b/a/.", "gs://b/a/"]
    urls += ["file:///mnt/show/a.tx", "gs://b/a/x.bin", "gs://b/a/" + "n" * 70]
    local = _LocalNames(full)
    assert [local(url) for url in urls] == [full(url) for url in urls]
    for bad in ("gs://b/a/../x.bin", "gs://b/a/" + "é" * 200):
        with pytest.raises(ObjectNameError):
            local(bad)


def _explicit_job(root: Path, bucket: str) -> RenderJob:
    """The shared job, its manifest naming every file on its own line (no tokens): the LUT's
    folder line and the ten textures, which a ranged listing of their folder answers."""
    job = make_job(root, bucket, FRAMES, extra={"scene": f"{bucket}/scenes/shot.txt", "deps": []})
    put_object(f"{bucket}/shared/lut.bin", shared_lut(job.texture_size))
    lines = [f"{bucket}/shared/"] + [f"{bucket}/assets/tex.{f:04d}.bin" for f in job.frames]
    put_object(f"{bucket}/scenes/shot.txt", "".join(f"{line}\n" for line in lines).encode())
    return job


def _is_outputs_listing(request: Request) -> bool:  # the resume step's: the run's first own
    return "/storage/v1/b/" in request.path and "prefix=renders/" in request.path


def _is_texture_listing(request: Request) -> bool:
    return "/storage/v1/b/" in request.path and "prefix=assets/tex." in request.path


@pytest.mark.parametrize("warm", [False, True])
def test_a_manifests_listings_are_made_once_while_the_run_still_imports(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy, warm: bool
) -> None:
    """The head start lists a small manifest's folder lines and its files' busy folders (from
    the bytes it downloaded, or the cached scene) before the run's first request of its own;
    the run asks storage for none of them again."""
    job = _explicit_job(tmp_path / "job", gcs_bucket)
    env = jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url)
    if warm:
        code, out, _ = run(job, env=env)
        assert code == 0, out
        proxy.requests.clear()
    code, out, report = run(job, *(["--rerender"] if warm else []), env=env)
    assert code == 0, out
    paths = [r.path for r in proxy.requests]
    first_own = next(i for i, r in enumerate(proxy.requests) if _is_outputs_listing(r))
    for kind in (_is_folder_listing, _is_texture_listing):
        asked = [i for i, r in enumerate(proxy.requests) if kind(r)]
        assert len(asked) == 1 and asked[0] < first_own, (kind.__name__, paths)
    cache = report["cache"]
    assert cache["bytes_fetched"] == (0 if warm else report["deps"]["bytes_needed"]), cache
    _outputs_right(job)


def test_a_manifests_files_alone_in_their_folders_are_stated_once_while_the_run_imports(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """Files a manifest names that share their folder with too few others for a ranged listing
    (here three textures, each in its own folder, and one that does not exist) are stated by
    the head start, before the run's first request of its own; the run asks for none of the
    found ones again and finds the missing one missing itself (65, naming it)."""
    frames = [1, 2, 3]
    job = make_job(tmp_path / "job", gcs_bucket, "1-3",
                   extra={"scene": f"{gcs_bucket}/scenes/shot.txt", "deps": []})  # fmt: skip
    put_object(f"{gcs_bucket}/shared/lut.bin", shared_lut(job.texture_size))
    names = [f"assets/f{f}/tex.{f:04d}.bin" for f in frames]
    for frame, name in zip(frames, names, strict=True):
        put_object(f"{gcs_bucket}/{name}", texture(frame, job.texture_size))
    lines = [f"{gcs_bucket}/shared/lut.bin", *(f"{gcs_bucket}/{n}" for n in names)]
    put_object(f"{gcs_bucket}/scenes/shot.txt", "".join(f"{line}\n" for line in lines).encode())
    env = jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url)
    code, out, report = run(job, env=env)
    assert code == 0, out
    first_own = next(i for i, r in enumerate(proxy.requests) if _is_outputs_listing(r))
    for name in ["shared/lut.bin", *names]:
        stats = [i for i, r in enumerate(proxy.requests)
                 if not r.is_download and r.path.split("?")[0].endswith(f"/o/{name}")]  # fmt: skip
        assert len(stats) == 1 and stats[0] < first_own, (name, [r.path for r in proxy.requests])
    assert report["cache"]["bytes_fetched"] == report["deps"]["bytes_needed"]
    gone = f"{gcs_bucket}/assets/gone/tex.0009.bin"
    put_object(f"{gcs_bucket}/scenes/shot.txt",
               "".join(f"{line}\n" for line in [*lines, gone]).encode())  # fmt: skip
    code, out, _ = run(job, "--rerender", env=env, report="again.json")
    assert code == 65 and "gone/tex.0009.bin" in out, out


def test_listing_groups_are_listing_ranges_with_the_urls_each_covers() -> None:
    """The pure part: the stat's one pass over the URLs gives the listings listing_ranges
    gives, each with exactly the URLs between its ends in its folder, and the rest alone."""
    urls = [f"gs://b/plates/plate.{f:04d}.exr" for f in range(1001, 1011)]
    urls += [f"gs://b/tex/t{i:02d}.tx" for i in range(8)] + ["gs://b/tex/sub/x.tx"]
    urls += ["gs://b/lut.cube", "gs://b/a/one.bin", "gs://b/plates/other/plate.1001.exr"]
    ranges, alone = listing_groups(urls)
    assert [listing for listing, _ in ranges] == listing_ranges(urls)
    assert ranges[0] == (
        ("gs://b/plates/plate.10", "gs://b/plates/plate.1001.exr", "gs://b/plates/plate.1010.exr"),
        urls[:10],
    )
    assert ranges[1][0][0] == "gs://b/tex/t0" and ranges[1][1] == urls[10:18]
    assert sorted(alone) == sorted(urls[18:])
