"""`jitrender run` end to end against the real GCS API server, through the real command."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from jitrender.storage import GCSStore
from tests.conftest import cli, put_object
from tests.faultproxy import FaultProxy, Request, hold_first
from tests.renderjobs import finish, jitrender_env, make_job, start_run

ROOT = Path(__file__).resolve().parent.parent

# Render stage: copies the frame's plate into the frame's output (a stand-in renderer).
# Literal braces are doubled: commands are templates ({frame}, {inputs}...).
RENDER = (
    "import sys, pathlib; f = int(sys.argv[1]); ins = pathlib.Path(sys.argv[2]); "
    "plate = next(ins.rglob(f'p.{{f:04d}}.exr')).read_bytes(); "
    "tex = next(ins.rglob('wood.png')).read_bytes(); "
    "pathlib.Path(sys.argv[3], f'r.{{f:04d}}.exr').write_bytes(plate + tex)"
)


def make_show(bucket: str, frames: int = 100) -> dict[str, int]:
    """A shot with a long plate sequence, a texture, and data the job does not need."""
    sizes = {}
    for f in range(1, frames + 1):
        data = bytes([f % 251]) * (1000 + f)
        put_object(f"{bucket}/show/plates/p.{f:04d}.exr", data)
        sizes[f"p.{f:04d}.exr"] = len(data)
    put_object(f"{bucket}/show/tex/wood.png", b"w" * 5000)
    sizes["wood.png"] = 5000
    put_object(f"{bucket}/show/other_shot/huge.exr", b"z" * 200_000)
    return sizes


def write_job(tmp: Path, bucket: str, name: str = "job", **overrides: Any) -> Path:
    job: dict[str, Any] = {
        "name": name,
        "frames": "1-100",
        "path_map": [{"from": "/mnt/show", "to": f"{bucket}/show"}],
        "deps": ["/mnt/show/plates/p.####.exr", {"path": "/mnt/show/tex/wood.png"}],
        "stages": [
            {
                "name": "render",
                "command": [sys.executable, "-c", RENDER, "{frame}", "{inputs}", "{outputs}"],
            }
        ],
        "outputs": {"to": f"{bucket}/renders/{name}", "files": ["r.####.exr"]},
    }
    job.update(overrides)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def jitrender(*args: str, timeout: float = 120) -> tuple[int, dict[str, Any], str]:
    result = cli("run", *args, "--json", "--progress", "plain", timeout=timeout)
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, report, result.stderr


def test_cold_run_fetches_exactly_the_needed_files_warm_run_none(
    gcs_bucket: str, tmp_path: Path
) -> None:
    sizes = make_show(gcs_bucket)
    cache = str(tmp_path / "cache")
    code, report, err = jitrender(
        str(write_job(tmp_path, gcs_bucket, "a")), "--frames", "11-20", "--cache-dir", cache
    )
    assert code == 0, err
    needed = sum(sizes[f"p.{f:04d}.exr"] for f in range(11, 21)) + sizes["wood.png"]
    assert report["deps"]["count"] == 11
    assert report["deps"]["bytes_needed"] == needed
    assert report["cache"]["bytes_fetched"] == needed
    assert report["cache"]["fetch_ratio"] == 1.0
    assert report["frames"]["done"] == list(range(11, 21))
    store = GCSStore()
    for f in range(11, 21):
        data = store.read_bytes(f"{gcs_bucket}/renders/a/r.{f:04d}.exr")
        assert data == bytes([f % 251]) * (1000 + f) + b"w" * 5000

    # Another job on the same node needing the same files: nothing crosses the network.
    code, report, err = jitrender(
        str(write_job(tmp_path, gcs_bucket, "b")), "--frames", "11-20", "--cache-dir", cache
    )
    assert code == 0, err
    assert report["cache"]["bytes_fetched"] == 0
    assert report["cache"]["hits"] == 11
    assert report["cache"]["fetch_ratio"] == 0

    # A changed object is fetched again; the unchanged ones are not.
    put_object(f"{gcs_bucket}/show/plates/p.0012.exr", b"regraded")
    code, report, err = jitrender(
        str(write_job(tmp_path, gcs_bucket, "c")), "--frames", "11-20", "--cache-dir", cache
    )
    assert code == 0, err
    assert report["cache"]["misses"] == 1
    assert report["cache"]["bytes_fetched"] == len(b"regraded")


def test_rerun_skips_done_frames(gcs_bucket: str, tmp_path: Path) -> None:
    make_show(gcs_bucket, frames=10)
    job = str(write_job(tmp_path, gcs_bucket, frames="1-10"))
    cache = str(tmp_path / "cache")
    assert jitrender(job, "--frames", "1-3", "--cache-dir", cache)[0] == 0
    code, report, err = jitrender(job, "--cache-dir", cache)
    assert code == 0, err
    assert report["frames"]["skipped_already_done"] == [1, 2, 3]
    assert report["frames"]["done"] == list(range(4, 11))
    code, report, _ = jitrender(job, "--cache-dir", cache)
    assert code == 0 and report["frames"]["done"] == []
    assert report["cache"]["bytes_fetched"] == 0 and report["deps"]["count"] == 0


def test_outputs_reach_the_bucket_while_the_job_is_still_rendering(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """Frame 3's stage waits until frame 1's output is in the bucket; it fails otherwise."""
    make_show(gcs_bucket, frames=3)
    bucket_name = gcs_bucket[len("gs://") :]
    wait_for_frame_1 = (
        "import sys, time\n"
        "from google.auth.credentials import AnonymousCredentials\n"
        "from google.cloud import storage\n"
        "if int(sys.argv[1]) == 3:\n"
        "    client = storage.Client(project='t', credentials=AnonymousCredentials())\n"
        f"    blob = client.bucket('{bucket_name}').blob('renders/job/r.0001.exr')\n"
        "    deadline = time.time() + 30\n"
        "    while not blob.exists():\n"
        "        if time.time() > deadline: sys.exit('frame 1 never reached the bucket')\n"
        "        time.sleep(0.1)\n"
    )
    stages = [
        {"name": "wait", "command": [sys.executable, "-c", wait_for_frame_1, "{frame}"]},
        {
            "name": "render",
            "command": [sys.executable, "-c", RENDER, "{frame}", "{inputs}", "{outputs}"],
        },
    ]
    job = write_job(tmp_path, gcs_bucket, frames="1-3", stages=stages)
    code, report, err = jitrender(str(job), "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    assert report["frames"]["done"] == [1, 2, 3]


def test_existing_output_is_not_overwritten(gcs_bucket: str, tmp_path: Path) -> None:
    make_show(gcs_bucket, frames=2)
    url = f"{gcs_bucket}/renders/job/r.0001.exr"
    put_object(url, b"somebody else's frame")
    store = GCSStore()
    before = store.stat(url)
    assert before is not None
    job = str(write_job(tmp_path, gcs_bucket, frames="1-2"))
    code, report, err = jitrender(job, "--cache-dir", str(tmp_path / "cache"))
    assert code == 65, err
    assert report["frames"]["done"] == [2] and report["frames"]["failed"] == [1]
    assert "r.0001.exr" in report["outputs"]["conflicts"]
    after = store.stat(url)
    assert after is not None and after.generation == before.generation
    assert store.read_bytes(url) == b"somebody else's frame"

    code, report, err = jitrender(job, "--cache-dir", str(tmp_path / "cache"), "--overwrite")
    assert code == 0, err
    assert store.read_bytes(url) != b"somebody else's frame"


def test_missing_dependency_fails_before_rendering(gcs_bucket: str, tmp_path: Path) -> None:
    make_show(gcs_bucket, frames=5)
    job = str(write_job(tmp_path, gcs_bucket, frames="1-8"))
    code, report, err = jitrender(job, "--cache-dir", str(tmp_path / "cache"))
    assert code == 65
    assert "p.0006.exr" in err and "missing" in err
    assert report["outputs"]["count"] == 0
    assert [m["url"].rsplit("/", 1)[1] for m in report["deps"]["missing"]] == [
        "p.0006.exr",
        "p.0007.exr",
        "p.0008.exr",
    ]
    left = GCSStore().list(f"{gcs_bucket}/renders/")
    # Nothing but the task's heartbeat (tasks/<name>.json, saying why it failed): no output,
    # no marker.
    assert [i.url.rsplit("/", 2)[-2:] for i in left] == [["tasks", "frames-1-8.json"]]


def test_chunk_stage_and_failed_frame_report(gcs_bucket: str, tmp_path: Path) -> None:
    """A chunk stage renders all frames in one process, renaming each into place; one frame
    keeps failing: the frames renamed before the crash are delivered, the run exits 65 and
    the report says which frame and why."""
    make_show(gcs_bucket, frames=4)
    chunk = (
        "import sys, pathlib, time\n"
        "out = pathlib.Path(sys.argv[2])\n"
        "for f in sys.argv[1].split(','):\n"
        "    time.sleep(0.6)  # a frame takes time to render\n"
        "    if f == '3': sys.exit('renderer crashed on frame 3')\n"
        "    tmp = out / f'.r.{{int(f):04d}}.exr.tmp'\n"
        "    tmp.write_bytes(b'frame' + f.encode())\n"
        "    tmp.rename(out / f'r.{{int(f):04d}}.exr')  # renamed into place: frame final\n"
    )
    stages = [
        {
            "name": "render",
            "per": "chunk",
            "command": [sys.executable, "-c", chunk, "{frame_list}", "{outputs}"],
        }
    ]
    job = write_job(tmp_path, gcs_bucket, frames="1-4", stages=stages)
    code, report, err = jitrender(str(job), "--cache-dir", str(tmp_path / "cache"))
    assert code == 65, err
    assert report["frames"]["done"] == [1, 2]
    assert report["frames"]["failed"] == [3, 4]
    failure = report["frames"]["failures"][0]
    assert failure["frame"] == 3 and "renderer crashed on frame 3" in failure["why"]


def test_frames_renamed_in_from_scratch_and_into_new_folders_are_final_before_a_crash(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """The renames the outputs watch must see, whatever the renderer's habit: a frame
    rendered in ``{scratch}`` and renamed into ``outputs/``, and one renamed into a folder the
    renderer made during the run. Both are final when they land, so a crash after them leaves
    them uploaded (and only the crashed frame to render again)."""
    make_show(gcs_bucket, frames=3)
    chunk = (
        "import sys, pathlib, time\n"
        "out, scratch = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])\n"
        "for f in sys.argv[1].split(','):\n"
        "    time.sleep(0.3)\n"
        "    if f == '3': sys.exit('renderer crashed on frame 3')\n"
        "    folder = out / f'shot{{f}}'  # a folder of its own, made now\n"
        "    folder.mkdir()\n"
        "    time.sleep(0.2)  # (a rename in the instant after the mkdir: before its watch)\n"
        "    tmp = scratch / f'r.{{int(f):04d}}.exr'\n"
        "    tmp.write_bytes(b'frame' + f.encode())\n"
        "    tmp.rename(folder / f'r.{{int(f):04d}}.exr')\n"
    )
    stages = [
        {
            "name": "render",
            "per": "chunk",
            "command": [sys.executable, "-c", chunk, "{frame_list}", "{outputs}", "{scratch}"],
        }
    ]
    outputs = {"to": f"{gcs_bucket}/renders/job", "files": ["shot*/r.####.exr"]}
    job = write_job(tmp_path, gcs_bucket, frames="1-3", stages=stages, outputs=outputs)
    code, report, err = jitrender(str(job), "--cache-dir", str(tmp_path / "cache"))
    assert code == 65, err
    assert report["frames"]["done"] == [1, 2]
    assert report["frames"]["failed"] == [3]
    prefix = f"{gcs_bucket}/renders/job/"
    names = sorted(i.url.removeprefix(prefix) for i in GCSStore().list(prefix))
    assert [n for n in names if n.endswith(".exr")] == ["shot1/r.0001.exr", "shot2/r.0002.exr"]


# The stage's view of the cache index while it runs: each entry's uses, and the hits counter
# (looked at until the hits are there, 10 s at most: the feed records them as the stage starts).
_INDEX_PEEK = """
import json, sqlite3, sys, time
c = sqlite3.connect(sys.argv[1])
for _ in range(100):
    hits = dict(c.execute('SELECT name, value FROM counters')).get('hits', 0)
    if hits >= int(sys.argv[3]):
        break
    time.sleep(0.1)
uses = sorted(u for (u,) in c.execute('SELECT uses FROM entries'))
open(sys.argv[2], 'w').write(json.dumps([uses, hits]))
"""


def test_warm_run_indexes_its_hits_while_the_stage_runs_and_counts_them_once(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """A warm run records its cache hits (last use, counters) in the index by the time its
    stage runs, not only on the way out; the counters end the same as if done once."""
    make_show(gcs_bucket, frames=20)
    cache = tmp_path / "cache"
    job = write_job(tmp_path, gcs_bucket, "cold", frames="1-20")
    code, _, err = jitrender(str(job), "--cache-dir", str(cache))
    assert code == 0, err
    peek = tmp_path / "peek.json"
    command = [sys.executable, "-c", _INDEX_PEEK, str(cache / "index.sqlite"), str(peek), "21"]
    # (A frame with no output is a failed one: each frame leaves an empty file.)
    mark = 'for f in $(echo "$JITRENDER_FRAMES" | tr , " "); do : > "$JITRENDER_OUTPUTS/m.$f"; done'
    stage = {"name": "peek", "per": "chunk", "command": [
        "sh", "-c", f'"$@"; {mark}', "sh", *command]}  # fmt: skip
    warm = write_job(tmp_path, gcs_bucket, "warm", frames="1-20", stages=[stage],
                     outputs={"to": f"{gcs_bucket}/renders/warm"})  # fmt: skip
    code, report, err = jitrender(str(warm), "--cache-dir", str(cache))
    assert code == 0, err
    assert report["cache"]["hits"] == 21 and report["cache"]["misses"] == 0
    uses, hits = json.loads(peek.read_text())
    assert uses == [2] * 21 and hits == 21  # the cold run's use, then this run's
    stats = json.loads(cli("cache", "stats", "--cache-dir", str(cache), "--json").stdout)
    assert stats["hits"] == 21 and stats["misses"] == 21  # recorded once, not again at close


def test_a_relative_cache_dir_names_the_stage_folders_from_where_jitrender_ran(
    local_bucket: str, tmp_path: Path
) -> None:
    """`--cache-dir cache` is the folder beside the shell, whatever folder a stage runs in."""
    make_show(local_bucket, frames=2)
    job = write_job(tmp_path, local_bucket, frames="1-2")
    result = cli(
        "run", str(job), "--cache-dir", "cache", "--json", "--progress", "plain", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["frames"]["done"] == [1, 2]
    assert (tmp_path / "cache" / "objects").is_dir()
    assert (Path(local_bucket.removeprefix("file://")) / "renders/job/r.0002.exr").is_file()


def test_a_chunks_frame_markers_are_written_at_once_not_one_after_another(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """A chunk's frames finish together: their markers (a request each) go out concurrently.
    Here each frame's output is final (renamed into place) and uploaded while the chunk still
    runs, so all four markers are due when it ends. The first is held at the proxy; the others
    must arrive while it waits (one after another, none would)."""
    chunk = (
        'for f in $(echo "$JITRENDER_FRAMES" | tr , " "); do'
        ' echo $f > "$2/.frame.$f.tmp" && mv "$2/.frame.$f.tmp" "$2/frame.$f.txt"; done; sleep 2'
    )
    stage = {"name": "render", "per": "chunk", "command": ["sh", "-c", chunk, "sh", "{inputs}",
                                                            "{outputs}"]}  # fmt: skip
    job = make_job(tmp_path / "job", gcs_bucket, "1-4",
                   extra={"stages": [stage], "outputs": {"to": f"{gcs_bucket}/renders",
                                                         "files": ["frame.#.txt"]}})  # fmt: skip

    def is_marker(request: Request) -> bool:
        return request.is_upload and request.names("_jitrender/") and request.names(".json")

    hold = hold_first(proxy, is_marker)
    proc = start_run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    try:
        assert hold.held.wait(60), "no marker was written"
        deadline = time.monotonic() + 20
        while sum(map(is_marker, list(proxy.requests))) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        others = sum(map(is_marker, list(proxy.requests))) - 1
    finally:
        hold.release.set()
    code, out = finish(proc)
    assert code == 0, out
    assert others == 3, f"{others} other markers came while the first was held"
    report = json.loads((job.root / "report.json").read_text())
    assert report["frames"]["done"] == [1, 2, 3, 4]
