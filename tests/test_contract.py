"""Issue 12, the job and CLI contract, each promise the way a user meets it (``jitrender``
processes against fake-gcs-server): path mapping as studios write it, validate = run's checks,
missing extras, the output contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import put_object
from tests.renderjobs import RenderJob, make_job, run

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jitrender.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


def _rewrite(job: RenderJob, **changes: Any) -> None:
    data = yaml.safe_load(job.job_file.read_text())
    data.update(changes)
    job.job_file.write_text(yaml.safe_dump(data))


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("jitrender: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


# -- 1. path_map ---------------------------------------------------------------------------


def test_mapping_form_path_map_maps_scene_deps_and_outputs(gcs_bucket: str, tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    put_object(f"{gcs_bucket}/shots/deps.txt", b"/mnt/show/assets/lut.bin\n")
    _rewrite(
        job,
        path_map={"/mnt/show/": f"{gcs_bucket}/"},
        scene="/mnt/show/shots/deps.txt",
        deps=["/mnt/show/assets/tex.####.bin"],
        outputs={"to": "/mnt/show/renders", "files": ["frame.####.txt"]},
    )
    assert cli("validate", str(job.job_file)).returncode == 0
    code, out, report = run(job)
    assert code == 0, out
    assert report["deps"]["count"] == 4  # scene, lut, two textures: all gs://, nothing file://
    assert sorted(report["outputs"]["urls"]) == [job.output_url(1), job.output_url(2)]


def test_unreadable_path_map_is_78_naming_the_key(tmp_path: Path) -> None:
    base = {"frames": 1, "stages": [{"name": "r", "command": "true"}], "outputs": {"to": "out"}}
    cases = {
        "'/mnt/show/'": {"/mnt/show/": 3},
        "'rules'": {"version": "pathmapping-1.0", "rules": []},
        "'/mnt/x'": {"/mnt/x": None},
    }
    for key, path_map in cases.items():
        job_file = tmp_path / "job.yaml"
        job_file.write_text(yaml.safe_dump({**base, "path_map": path_map}))
        for command in ("validate", "run"):
            result = cli(command, str(job_file))
            assert result.returncode == 78, (command, result.stderr)
            line = _error_line(result.stderr)
            assert "path_map" in line and key in line, line


def test_farm_openjd_rules_chain_before_the_jobs_own_with_windows_paths(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """Documented order: the farm's rules (workstation -> node path) first, then the job's
    (node path -> bucket); ``P:\\show`` -> ``/mnt/show`` -> ``gs://...``."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    put_object(
        f"{gcs_bucket}/shots/deps.txt",
        b"P:\\show\\assets\\lut.bin\np:/SHOW/assets/tex.####.bin\n",
    )
    _rewrite(
        job,
        path_map={"/mnt/show": gcs_bucket},
        scene="P:\\show\\shots\\deps.txt",
        deps=[],
        outputs={"to": "P:\\show\\renders", "files": ["frame.####.txt"]},
    )
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            {
                "version": "pathmapping-1.0",
                "path_mapping_rules": [
                    {
                        "source_path_format": "WINDOWS",
                        "source_path": "P:\\show",
                        "destination_path": "/mnt/show",
                    }
                ],
            }
        )
    )
    listed = cli(
        "deps", "P:\\show\\shots\\deps.txt", "--job", str(job.job_file), "--frames", "2",
        "--path-map-rules", str(rules), "--json", "--cache-dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert document["scene"] == f"{gcs_bucket}/shots/deps.txt"
    assert sorted(d["url"] for d in document["deps"]) == [
        f"{gcs_bucket}/assets/lut.bin",
        f"{gcs_bucket}/assets/tex.0002.bin",
    ]
    code, out, report = run(job, "--path-map-rules", str(rules))
    assert code == 0, out
    assert sorted(report["outputs"]["urls"]) == [job.output_url(1), job.output_url(2)]
    # Without the farm's rules the Windows paths are not the bucket's: said, not guessed.
    code, out, _ = run(job)
    assert code == 78, out
