"""Nothing outside the job's own files crosses the workspace boundary (README, Security): a
symlink in outputs/ is refused, not uploaded; a node-local path in a scene from a bucket is
listed as unresolved, not pulled in; a stage-made symlink in inputs/ never makes jitrender
place (hardlink) a file outside the workspace. Through the ``jitrender`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from jitrender.agent import hooks_dir
from tests.conftest import cli, put_object
from tests.hooks.conftest import CLIENT_STAGE, make_bucket

SECRET = b"node-local secret: never upload me\n"


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, JITRENDER_CACHE_DIR=str(tmp_path / "cache"))
    env["JITRENDER_PREEMPTION_WATCH"] = "off"
    return cli(*args, env=env)


def job_with_stage(tmp_path: Path, script: str, **extra: Any) -> Path:
    stage = tmp_path / "stage.py"
    stage.write_text(script)
    job: dict[str, Any] = {
        "frames": "1",
        "stages": [{"name": "render", "command": [sys.executable, str(stage), str(hooks_dir())]}],
        "outputs": {"to": f"file://{tmp_path}/bucket/renders", "files": ["out.####.txt"]},
        **extra,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.parametrize("files", [["out.####.txt"], ["**/*"]])
def test_a_symlink_in_outputs_is_refused_and_not_uploaded(tmp_path: Path, files: list[str]) -> None:
    """The link's refusal is the frame's error, whether its pattern names the frame or not
    (a glob's: the final line said only "outputs not uploaded", the event "upload error")."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    job = job_with_stage(
        tmp_path,
        "import os\n"
        f"os.symlink({str(secret)!r}, os.path.join(os.environ['JITRENDER_OUTPUTS'],"
        " 'out.0001.txt'))\n",
        outputs={"to": f"file://{tmp_path}/bucket/renders", "files": files},
    )
    result = run_cli(tmp_path, "run", str(job), "--progress", "plain")
    assert result.returncode == 65, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("jitrender: error:") and "out.0001.txt: is a symlink" in last, last
    assert "upload error: out.0001.txt: is a symlink" in result.stderr
    assert not (tmp_path / "bucket" / "renders" / "out.0001.txt").exists()


def test_a_node_local_path_in_a_scene_from_a_bucket_is_unresolved_not_fetched(
    tmp_path: Path, gcs_bucket: str
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    put_object(f"{gcs_bucket}/shots/tex/a.png", b"texture")
    manifest = f"{gcs_bucket}/shots/deps.txt"
    put_object(manifest, f"tex/a.png\n{secret}\nfile://{secret}\n{tmp_path}/\n".encode())
    listed = run_cli(tmp_path, "deps", manifest, "--json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert [d["url"] for d in document["deps"]] == [f"{gcs_bucket}/shots/tex/a.png"]
    refused = {u["value"]: u["why"] for u in document["unresolved"]}
    assert set(refused) == {str(secret), f"file://{secret}", f"{tmp_path}/"}
    assert all("node-local path in a scene from gs://" in why for why in refused.values())
    # And a run of it puts no node-local file in the workspace.
    job = job_with_stage(
        tmp_path,
        "import os, pathlib\n"
        "names = sorted(str(p) for p in pathlib.Path(os.environ['JITRENDER_INPUTS']).rglob('*'))\n"
        "out = pathlib.Path(os.environ['JITRENDER_OUTPUTS']) / 'out.0001.txt'\n"
        "out.write_text('\\n'.join(names))\n",
        scene=manifest,
    )
    result = run_cli(tmp_path, "run", str(job), "--progress", "plain")
    assert result.returncode == 0, result.stderr
    seen = (tmp_path / "bucket" / "renders" / "out.0001.txt").read_text()
    assert "a.png" in seen and "secret" not in seen


def test_a_stage_made_symlink_in_inputs_never_places_a_file_outside_the_workspace(
    tmp_path: Path,
) -> None:
    bucket = make_bucket(tmp_path / "bucket", {"late/x.txt": b"fetched on request"})
    outside = tmp_path / "outside"
    outside.mkdir()
    job = job_with_stage(
        tmp_path,
        CLIENT_STAGE + f"mirror = os.environ['JITRENDER_INPUTS'] + '/file/_' + {str(bucket)!r}\n"
        "os.makedirs(mirror, exist_ok=True)\n"
        f"os.symlink({str(outside)!r}, mirror + '/late')\n"
        "try:\n"
        "    jitrender_client.Resolver().local('/mnt/show/late/x.txt')\n"
        "except Exception as exc:\n"
        "    print('agent said:', exc)\n"
        "    sys.exit(3)\n",
        path_map=[{"from": "/mnt/show", "to": f"file://{bucket}"}],
    )
    result = run_cli(tmp_path, "run", str(job), "--progress", "plain")
    assert result.returncode == 65, result.stderr
    assert "Traceback" not in result.stderr
    assert list(outside.iterdir()) == []  # nothing placed (or removed) through the link
    assert "is a symlink (made by a stage?)" in result.stdout + result.stderr
