"""Start-up stays cheap: a command imports only what its work needs (``-X importtime``'s list of
every module a real ``jitrender`` process imported, read from its stderr).

A warm run (every dependency in the cache) fetches nothing, so none of the download machinery
(aiohttp and asyncio, gcsfs, google-cloud-storage) nor fileseq for a plain frame range may be
imported; a local job needs no HTTP client at all. The dependencies are the shared job
builder's (tests/renderjobs.py): what they hold does not matter here, only where they live."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, gcs_client, put_object
from tests.renderjobs import IMPORTED as _IMPORTED
from tests.renderjobs import bucket_objects, expected_output, jitrender_env, make_job, run
from tests.renderjobs import imported_modules as _imported

# Imported by a run that downloads (or by no run at all): never by a warm one.
FETCHING = ("aiohttp", "asyncio", "gcsfs", "google.cloud.storage", "OpenImageIO", "numpy")


def _top(names: set[str], wanted: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == w or n.startswith(w + ".") for w in wanted))


def _warm_rerun_imports(tmp_path: Path, deps_bucket: str, outputs: str) -> set[str]:
    renders = {"to": f"{outputs}/renders", "files": ["frame.####.txt"]}
    job = make_job(tmp_path / "job", deps_bucket, "1-2", extra={"outputs": renders})
    code, out, _ = run(job)  # cold: fills the cache
    assert code == 0, out
    env = jitrender_env(job, PYTHONPROFILEIMPORTTIME="1", JITRENDER_HEARTBEAT_INTERVAL="10")
    code, out, report = run(job, "--rerender", env=env, report="warm.json")
    assert code == 0, out
    assert report["cache"]["misses"] == 0 and report["cache"]["hits"] == 3, report["cache"]
    return _imported(out)


def test_warm_run_from_gcs_imports_no_download_machinery(
    gcs_bucket: str, local_bucket: str, tmp_path: Path
) -> None:
    names = _warm_rerun_imports(tmp_path, gcs_bucket, local_bucket)
    assert _top(names, (*FETCHING, "fileseq")) == []
    # Its arguments read by jitrender.runcmd: no typer (nor the pydantic adapters it builds).
    assert _top(names, ("typer", "jitrender.cli", "rich")) == []
    # The job file run before: its values from the memo, not read by PyYAML and pydantic.
    assert _top(names, ("pydantic", "pydantic_core", "yaml", "jitrender.jobcheck")) == []


def test_warm_local_run_imports_no_http_client(local_bucket: str, tmp_path: Path) -> None:
    names = _warm_rerun_imports(tmp_path, local_bucket, local_bucket)
    assert _top(names, (*FETCHING, "fileseq", "urllib3", "urllib.request")) == []


def test_cli_module_and_version_import_no_job_or_storage_code() -> None:
    """What every command pays before its own work: typer and the CLI's definitions only."""
    probe = (
        "import sys, jitrender.cli; "
        "print(' '.join(m for m in sys.modules if m.startswith(('jitrender.', 'pydantic', "
        "'yaml', 'urllib3', 'asyncio', 'fileseq', 'watchdog', 'google'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    assert sorted(loaded) == ["jitrender.cli", "jitrender.errors", "jitrender.runcmd"]


def test_only_run_starts_storage_requests_early(gcs_bucket: str, tmp_path: Path) -> None:
    """``jitrender run`` stats its scene from the first milliseconds (jitrender.headstart);
    ``validate`` of the same job reads no bucket, so it imports no HTTP client at all."""
    job = make_job(tmp_path / "job", gcs_bucket, "1", extra={"scene": f"{gcs_bucket}/s.txt"})
    env = jitrender_env(job, PYTHONPROFILEIMPORTTIME="1")
    result = subprocess.run(
        [sys.executable, "-m", "jitrender.cli", "validate", str(job.job_file)],
        capture_output=True, text=True, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    names = _imported(result.stderr)
    assert _top(names, ("jitrender.headstart", "urllib3", *FETCHING)) == []


def test_runs_writing_small_outputs_to_gcs_import_no_google_cloud_storage(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """Outputs, done markers, heartbeats and job logs up to storage.MULTIPART_UPLOAD_BYTES go
    to gs:// as JSON API multipart uploads, so neither a cold run nor a warm rerun imports
    google-cloud-storage, and what lands is what it wrote: bytes, metadata, content type."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    env = jitrender_env(job, PYTHONPROFILEIMPORTTIME="1", JITRENDER_HEARTBEAT_INTERVAL="0.1")
    code, out, report = run(job, env=env)
    assert code == 0, out
    assert _top(_imported(out), ("google.cloud.storage", "google.api_core", "requests")) == []
    landed = bucket_objects(gcs_bucket, "renders/", logs=True)
    meta = f"renders/_jitrender/{report['job']['hash']}"
    for frame in job.frames:
        data = landed[f"renders/frame.{frame:04d}.txt"][1]
        assert data == expected_output(frame, job.frame_inputs(frame))
        assert f"{meta}/frame.{frame}.json" in landed  # the done marker
    assert f"{meta}/tasks/frames-1-2.json" in landed  # the heartbeat (replace_bytes)
    assert [n for n in landed if n.startswith(f"{meta}/logs/") and n.endswith("render.1.0.log")]
    client: Any = gcs_client()
    blob = client.bucket(gcs_bucket[len("gs://") :]).get_blob("renders/frame.0001.txt")
    assert blob.content_type == "text/plain"  # guessed from the name, as the library did
    assert blob.metadata == {"jitrender-job": report["job"]["hash"], "jitrender-frame": "1"}
    before = bucket_objects(gcs_bucket, "renders/")
    code, out, _ = run(job, "--rerender", env=env, report="warm.json")
    assert code == 0, out
    assert _top(_imported(out), ("google.cloud.storage", "google.api_core", "requests")) == []
    after = bucket_objects(gcs_bucket, "renders/")
    for name in (f"renders/frame.{f:04d}.txt" for f in job.frames):
        assert after[name] == before[name]  # identical bytes: the generation left as it was


def test_run_imports_its_storage_client_before_the_job_schema(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """``jitrender run`` of a job whose scene is in a bucket: the head start's thread imports
    the storage code and the HTTP client its scene's stat goes through first, alone (the
    process waits for it), and only then does the run import pydantic and the job's schema, so
    the stat's round trips overlap those imports instead of queuing behind them. Plain
    arguments are read without typer (jitrender.runcmd): it is not imported at all."""
    lines = f"{gcs_bucket}/assets/lut.bin\n"
    put_object(f"{gcs_bucket}/scenes/early.txt", lines.encode())
    scene = {"scene": f"{gcs_bucket}/scenes/early.txt"}
    job = make_job(tmp_path / "job", gcs_bucket, "1", extra=scene)
    env = jitrender_env(job, PYTHONPROFILEIMPORTTIME="1")
    code, out, _ = run(job, env=env)
    assert code == 0, out
    order = _IMPORTED.findall(out)
    missing = [n for n in ("jitrender.storage", "urllib3") if n not in order]
    assert not missing, [line for line in out.splitlines() if "urllib3" in line]
    # The schema's first line: any of its modules (a line the head start's thread was writing
    # meanwhile may garble one of them, so no one name is required).
    schema = [i for i, n in enumerate(order) if n.startswith(("pydantic", "yaml", "jitrender.job"))]
    assert schema, order
    assert order.index("jitrender.storage") < schema[0], order[: schema[0] + 1]
    assert order.index("urllib3") < schema[0], order[: schema[0] + 1]
    assert [n for n in order if n.startswith(("typer", "jitrender.cli"))] == []


def test_run_collects_garbage_again_once_its_modules_are_imported(
    local_bucket: str, tmp_path: Path
) -> None:
    """The entry point pauses garbage collection while ``jitrender run`` imports (what that
    creates lives until exit) and turns it back on before the run's work, start-up's objects
    frozen: a long run's garbage is collected as ever (read at exit, in the process)."""
    job = make_job(tmp_path / "job", local_bucket, "1")
    probe = (
        "import atexit, gc, sys; "
        "atexit.register(lambda: print('gc', gc.isenabled(), gc.get_freeze_count() > 0)); "
        "sys.argv[0] = 'jitrender'; from jitrender.entry import main; main()"
    )
    argv = ["run", str(job.job_file), "--progress", "quiet", "--report", str(tmp_path / "r.json")]
    result = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        capture_output=True, text=True, cwd=ROOT, env=jitrender_env(job), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "gc True True", result.stdout


# Installed in the jitrender process by PYTHONPATH: says each file it opens on stderr.
_OPENS = """import sys
sys.addaudithook(lambda event, args: event == "open" and print("opened", args[0], file=sys.stderr))
"""


def test_a_run_reading_a_new_job_file_scans_no_installed_packages(
    local_bucket: str, tmp_path: Path
) -> None:
    """pydantic looks for plugins in every installed package's entry points when it builds a
    reader: not for the job file's, nor for a size's (they want none)."""
    extra = {"outputs": {"to": f"{local_bucket}/renders", "files": ["frame.####.txt"]}}
    job = make_job(
        tmp_path / "job", local_bucket, "1", extra=extra | {"cache": {"max_size": "1GB"}}
    )
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_OPENS)
    env = jitrender_env(job, PYTHONPROFILEIMPORTTIME="1", JITRENDER_JOB_MEMO_DIR="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    code, out, _ = run(job, env=env)
    assert code == 0, out
    assert "jitrender.jobcheck" in _imported(out)  # read afresh, by pydantic
    opened = [line for line in out.splitlines() if line.startswith("opened ")]
    assert any("jitrender" in line for line in opened)  # (the hook ran)
    assert [line for line in opened if "entry_points" in line] == []
