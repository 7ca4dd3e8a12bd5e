"""A run's first storage request goes out while the process still imports
(:mod:`jitrender.headstart`): real ``jitrender run`` processes against fake-gcs-server behind
the fault proxy, which records every request in order.

The promises: the scene's stat is the run's first request (before the done markers are
listed) and is made once; what the head start could not do (an error, a scene that does not
exist, a job file it did not guess) the run does itself, exactly as without it; a SIGTERM while
the head start's request hangs ends the run at once with 75 and nothing written. A small scene
the cache lacks is downloaded by the head start, once, and installed by the run (counted as a
fetch); a cached one is not downloaded at all; bytes that do not match its stat are never
installed (the run downloads it again)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import cli, put_object
from tests.faultproxy import Fault, FaultProxy, Request, first_only
from tests.renderjobs import (
    RenderJob,
    bucket_objects,
    cache_verify,
    finish,
    jitrender_env,
    make_job,
    run,
)
from tests.renderjobs import start_run as start


def _scene_job(root: Path, bucket: str, frames: str = "1-2", **extra: object) -> RenderJob:
    """The shared job, its dependencies named by a manifest scene in ``bucket``."""
    lines = f"{bucket}/assets/lut.bin\n{bucket}/assets/tex.####.bin\n"
    put_object(f"{bucket}/scenes/shot.txt", lines.encode())
    return make_job(root, bucket, frames, extra={"scene": f"{bucket}/scenes/shot.txt", **extra})


def _is_scene_stat(request: Request) -> bool:
    return (
        request.method == "GET" and "scenes/shot.txt" in request.path and not (request.is_download)
    )


def _is_scene_get(request: Request) -> bool:
    return request.is_download and "scenes/shot.txt" in request.path


def _cache_files(job: RenderJob) -> list[Path]:
    return sorted(p for p in (job.cache_dir / "objects").rglob("*") if p.is_file())


def _after_warmup(proxy: FaultProxy) -> list[Request]:
    return [r for r in proxy.requests if not r.is_upload]


def test_scene_stat_is_the_runs_first_request_and_made_once(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = _scene_job(tmp_path / "job", gcs_bucket)
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code == 0, out
    assert report["frames"]["done"] == [1, 2] and report["cache"]["fetch_ratio"] == 1.0
    requests = _after_warmup(proxy)
    assert _is_scene_stat(requests[0]), [r.path for r in requests[:5]]
    assert sum(map(_is_scene_stat, requests)) == 1, [r.path for r in requests]


def test_a_manifests_frame_lines_are_listed_ahead_once_for_this_tasks_frames(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """The run tells the head start its task's frames as soon as the job is read: the frame
    line's one ranged listing (for those frames only) and the plain file's stat go out right
    after the scene's download, before the run's own first request, and are not made again."""
    job = _scene_job(tmp_path / "job", gcs_bucket, "1-20")
    env = jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url)
    code, out, report = run(job, "--task-index", "1", "--task-count", "2", env=env)
    frames = report["frames"]["requested"]
    assert code == 0 and report["frames"]["done"] == frames, out
    assert 8 <= len(frames) < 20, frames  # this task's: a ranged listing, not the job's 20

    def asks_about_assets(request: Request) -> bool:  # a stat or a listing (JSON API)
        return request.path.startswith("/storage/v1/") and "assets/" in request.path

    requests = _after_warmup(proxy)
    paths = [r.path for r in requests]
    assert _is_scene_stat(requests[0]) and _is_scene_get(requests[1]), paths[:6]
    # The plain file and the task's frames share a folder: one ranged listing holds them all,
    # the head start's, right after the scene's download (before the run's markers listing).
    asked = [r.path for r in requests if asks_about_assets(r)]
    assert len(asked) == 1 and asked[0] == paths[2], paths[:6]
    assert "prefix=assets/" in asked[0] and "startOffset=assets/lut.bin" in asked[0], asked
    assert report["cache"]["fetch_ratio"] == 1.0


def test_a_mapped_scene_path_gets_its_head_start_once_the_job_is_read(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """A scene written as a studio path (``path_map`` makes it a gs:// URL) is not guessed
    from the file: its stat starts once the job is validated, still before the markers."""
    job = _scene_job(
        tmp_path / "job",
        gcs_bucket,
        path_map=[{"from": "/mnt/show", "to": gcs_bucket}],
    )
    text = job.job_file.read_text().replace(f"scene: {gcs_bucket}/", "scene: /mnt/show/")
    assert "scene: /mnt/show/scenes/shot.txt" in text, text
    job.job_file.write_text(text)
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code == 0 and report["frames"]["done"] == [1, 2], out
    requests = _after_warmup(proxy)
    assert _is_scene_stat(requests[0]), [r.path for r in requests[:5]]
    assert sum(map(_is_scene_stat, requests)) == 1
    # Its bytes once (by this late head start, or by the run where it asks first).
    assert sum(map(_is_scene_get, requests)) == 1, [r.path for r in requests]
    assert report["cache"]["bytes_fetched"] == report["deps"]["bytes_needed"]


def test_head_start_failure_is_retried_by_the_run(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = _scene_job(tmp_path / "job", gcs_bucket)
    first_scene_stat_fails, failed = first_only(_is_scene_stat, "503")
    proxy.rules.append(first_scene_stat_fails)
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code == 0, out
    assert failed and report["frames"]["done"] == [1, 2]
    assert sum(map(_is_scene_stat, proxy.requests)) == 2  # the head start's, the run's own


def test_missing_gcs_scene_is_the_same_one_line_config_error(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1", extra={"scene": f"{gcs_bucket}/no.txt"})
    code, out, report = run(job)
    assert code == 78, out
    assert report["error"] == f"{job.job_file}: scene: {gcs_bucket}/no.txt does not exist"
    assert "Traceback" not in out


def test_an_option_value_naming_another_scene_is_not_taken_for_the_job(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """Which argument is the job only typer knows when the head start begins: a file given
    as an option's value before the job (here a YAML file that names a scene) may be read
    too and costs one stat at most; the run renders its own job's scene."""
    job = _scene_job(tmp_path / "job", gcs_bucket)
    decoy = tmp_path / "decoy.yaml"
    decoy.write_text(f"scene: {gcs_bucket}/scenes/decoy.txt\n")
    env = jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url)
    result = cli("run", "--report", str(decoy), str(job.job_file), env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(decoy.read_text())["frames"]["done"] == [1, 2]
    assert sum(map(_is_scene_stat, proxy.requests)) == 1
    assert sum("scenes/decoy.txt" in r.path for r in proxy.requests) <= 1


def test_sigterm_while_the_head_start_hangs_exits_75_at_once(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = _scene_job(tmp_path / "job", gcs_bucket)
    code, out, took = _sigterm_while_held(job, proxy, _is_scene_stat, "asked for the scene")
    assert code == 75, out
    assert took < 10, took
    assert bucket_objects(job.bucket, "renders/") == {}, "a stopped start-up wrote outputs"


def test_a_small_scene_is_downloaded_once_ahead_and_cached_by_the_run(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = _scene_job(tmp_path / "job", gcs_bucket)
    env = jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url)
    code, out, report = run(job, env=env)
    assert code == 0 and report["frames"]["done"] == [1, 2], out
    requests = _after_warmup(proxy)
    # The head start's: right after its stat, before the run's first request (the markers').
    assert _is_scene_stat(requests[0]) and _is_scene_get(requests[1]), [
        r.path for r in requests[:5]
    ]
    assert sum(map(_is_scene_get, requests)) == 1, [r.path for r in requests]
    cache = report["cache"]
    assert (
        cache["bytes_fetched"] == report["deps"]["bytes_needed"] > 0 and cache["fetch_ratio"] == 1.0
    )
    assert cache_verify(job)["bad"] == 0

    proxy.requests.clear()  # warm: the scene is cached at this generation
    code, out, report = run(job, "--rerender", env=env)
    assert code == 0 and report["frames"]["done"] == [1, 2], out
    assert not any(map(_is_scene_get, proxy.requests)), [r.path for r in proxy.requests]
    assert report["cache"]["bytes_fetched"] == 0


def test_scene_bytes_corrupted_on_the_way_are_never_cached(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = _scene_job(tmp_path / "job", gcs_bucket)
    first_scene_get_corrupt, corrupted = first_only(_is_scene_get, "corrupt")
    proxy.rules.append(first_scene_get_corrupt)
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code == 0 and report["frames"]["done"] == [1, 2], out
    assert corrupted and sum(map(_is_scene_get, proxy.requests)) == 2  # the run's own, right
    cache = report["cache"]
    assert cache["bytes_fetched"] == report["deps"]["bytes_needed"]
    assert cache_verify(job)["bad"] == 0


def test_sigterm_during_the_head_starts_download_exits_75_with_nothing_cached(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = _scene_job(tmp_path / "job", gcs_bucket)
    code, out, _ = _sigterm_while_held(job, proxy, _is_scene_get, "downloaded the scene")
    assert code == 75, out
    assert _cache_files(job) == []
    assert list((job.cache_dir / "tmp").glob("*")) == []
    assert bucket_objects(job.bucket, "renders/") == {}


def test_the_cache_folder_is_guessed_as_the_cli_picks_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pure part: where the head start looks for the scene before downloading it; None
    (no download) where the job file may set ``cache.dir``."""
    from jitrender.headstart import _cache_dir_of

    plain, own = tmp_path / "plain.yaml", tmp_path / "own.yaml"
    plain.write_text("scene: gs://b/s.txt\ncache:\n  max_size: 1GB\n")
    own.write_text("scene: gs://b/s.txt\ncache:\n  dir: /scratch/c\n")
    monkeypatch.setenv("JITRENDER_CACHE_DIR", "/env/c")
    assert _cache_dir_of(["--cache-dir", "/arg/c", str(own)], [str(own)]) == Path("/arg/c")
    assert _cache_dir_of(["--cache-dir=/arg/c", str(own)], [str(own)]) == Path("/arg/c")
    assert _cache_dir_of([str(own)], [str(own)]) == Path("/env/c")
    monkeypatch.delenv("JITRENDER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert _cache_dir_of([str(own)], [str(own)]) is None
    assert _cache_dir_of([str(plain)], [str(plain)]) == Path("/xdg/jitrender")


def test_the_head_start_looks_where_the_cache_keeps_the_scene(tmp_path: Path) -> None:
    from jitrender.cache import Cache
    from jitrender.headstart import _cached_object
    from jitrender.storage import ObjectInfo

    info = ObjectInfo(url="gs://b/s.txt", size=3, generation="17", crc32c=None)
    cache = Cache(tmp_path / "c")
    assert _cached_object(tmp_path / "c", info) == str(cache.object_path(info))


def test_scene_urls_are_read_from_top_level_scene_lines(tmp_path: Path) -> None:
    """The pure part: which ``scene:`` lines of the file arguments give a URL to stat."""
    from jitrender.headstart import _scenes_named

    texts = {
        "plain.yaml": "name: a\nscene: gs://b/shot.nk  # the comp\n",
        "quoted.yaml": "scene: 'gs://b/q.usda'\n",
        "job.json": '{\n  "name": "j",\n  "scene": "gs://b/j.blend",\n  "frames": "1"\n}\n',
        "nested.yaml": "stages:\n  - scene: gs://b/not-the-job.nk\n",
        "local.yaml": "scene: /mnt/show/shot.nk\n",
        "glued.yaml": "scene:gs://b/not-a-key\n",
    }
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    files = [tmp_path / n for n in texts] + [tmp_path / "absent.yaml", tmp_path]
    assert _scenes_named(files) == ["gs://b/shot.nk", "gs://b/q.usda", "gs://b/j.blend"]


def _sigterm_while_held(
    job: RenderJob, proxy: FaultProxy, matches: Callable[[Request], bool], what: str
) -> tuple[int, str, float]:
    """Run ``job`` through ``proxy`` with the requests that ``matches`` held unanswered,
    SIGTERM it once the first is in, and give back its exit code, output and the seconds
    from the signal to its end."""
    hold = Fault("hold", forward=False)
    proxy.rules.append(lambda request: hold if matches(request) else None)
    proc = start(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    try:
        assert hold.held.wait(30), f"the head start never {what}"
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code, out = finish(proc, timeout=30)
        return code, out, time.monotonic() - started
    finally:
        hold.release.set()
        if proc.poll() is None:
            proc.kill()


def test_frame_lines_name_the_frames_files_and_nothing_the_resolve_must_list() -> None:
    """The pure part: which files a manifest's frame lines name for the task's frames, as the
    manifest resolver expands them; tiles, views and too many frames are left to the run."""
    from jitrender.headstart import FRAMES_AHEAD_MAX, _frame_files

    lines = [
        "gs://b/shot/beauty.####.exr",
        "gs://b/shot/depth.%04d.exr",
        "gs://b/tex/wood.<UDIM>.tx",
        "gs://b/plates/%V/plate.####.exr",
        "gs://b/lut.cube",
        "gs://b/shot/",
    ]
    assert _frame_files(lines, (1001, 1002)) == [
        "gs://b/shot/beauty.1001.exr",
        "gs://b/shot/beauty.1002.exr",
        "gs://b/shot/depth.1001.exr",
        "gs://b/shot/depth.1002.exr",
    ]
    assert _frame_files(lines, None) == [] and _frame_files(lines, ()) == []
    assert _frame_files(lines, range(1, FRAMES_AHEAD_MAX + 2)) == []
