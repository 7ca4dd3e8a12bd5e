"""The scriptable commands: deps (and its --check pre-flight), status, validate, cache."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import cli, put_object

ROOT = Path(__file__).resolve().parent.parent


def test_deps_lists_exactly_the_requested_frames(gcs_bucket: str, tmp_path: Path) -> None:
    for f in range(1, 101):
        put_object(f"{gcs_bucket}/plates/p.{f:04d}.exr", b"x" * f)
    put_object(f"{gcs_bucket}/tex/a.png", b"tex")
    manifest = f"{gcs_bucket}/shots/sh010/deps.txt"
    put_object(manifest, b"# plates\n/mnt/show/plates/p.####.exr\n../../tex/a.png  # texture\n")
    result = cli(
        "deps", manifest, "--frames", "11-20", "--path-map", f"/mnt/show={gcs_bucket}",
        "--json", "--cache-dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["frames"] == list(range(11, 21))
    by_url = {d["url"]: d for d in document["deps"]}
    plates = sorted(u for u in by_url if "/plates/" in u)
    assert plates == [f"{gcs_bucket}/plates/p.{f:04d}.exr" for f in range(11, 21)]
    assert by_url[f"{gcs_bucket}/plates/p.0015.exr"]["frames"] == [15]
    assert by_url[f"{gcs_bucket}/plates/p.0015.exr"]["size"] == 15
    assert by_url[f"{gcs_bucket}/tex/a.png"]["frames"] is None
    assert by_url[f"{gcs_bucket}/tex/a.png"]["source"].endswith("deps.txt:3")
    assert document["missing"] == [] and document["unresolved"] == []


def test_deps_of_a_manifest_of_folders_lists_every_object_of_each_and_names_an_empty_one(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """Folder lines are listed at once (one round trip for all), with the same answer as one
    after another: every object below each, in order, and an empty folder reported."""
    for folder in ("a", "b", "c"):
        for index in range(3):
            put_object(f"{gcs_bucket}/set/{folder}/f{index}.bin", folder.encode() * (index + 1))
    manifest = f"{gcs_bucket}/set/deps.txt"
    lines = [f"{gcs_bucket}/set/{f}/" for f in ("a", "b", "empty", "c")]
    put_object(manifest, "".join(f"{line}\n" for line in lines).encode())
    result = cli("deps", manifest, "--frames", "1", "--json", "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    expected = [f"{gcs_bucket}/set/{f}/f{i}.bin" for f in ("a", "b", "c") for i in range(3)]
    assert [d["url"] for d in document["deps"]] == expected
    assert {d["source"].rsplit(":", 1)[1] for d in document["deps"] if "/c/" in d["url"]} == {"4"}
    assert [d["size"] for d in document["deps"][:3]] == [1, 2, 3]
    assert [u["value"] for u in document["unresolved"]] == [f"{gcs_bucket}/set/empty/"]


def test_deps_check_fails_naming_each_missing_file(gcs_bucket: str, tmp_path: Path) -> None:
    put_object(f"{gcs_bucket}/plates/p.0001.exr", b"x")
    manifest = tmp_path / "deps.txt"
    manifest.write_text(f"{gcs_bucket}/plates/p.####.exr\n")
    result = cli("deps", str(manifest), "--frames", "1-3", "--check")
    assert result.returncode == 65
    lines = [line for line in result.stderr.splitlines() if "missing:" in line]
    assert len(lines) == 2
    assert "p.0002.exr" in lines[0] and f"{manifest}" in lines[0]
    table = cli("deps", str(manifest), "--frames", "1-3")
    assert table.returncode == 0 and "MISSING" in table.stdout


def test_deps_unknown_scene_type_is_a_config_error(tmp_path: Path) -> None:
    scene = tmp_path / "scene.xyz"
    scene.write_text("")
    result = cli("deps", str(scene))
    assert result.returncode == 78
    assert "no resolver for this file type" in result.stderr
    assert "Traceback" not in result.stderr


def _job(tmp_path: Path, bucket: str) -> Path:
    job: dict[str, Any] = {
        "frames": "1-4",
        "stages": [
            {
                "name": "render",
                "command": [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write('r')",
                            "{outputs}/r.{frame:04d}.txt"],
            }
        ],
        "outputs": {"to": f"{bucket}/out", "files": ["r.####.txt"]},
    }  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_status_reads_done_frames_from_the_bucket(gcs_bucket: str, tmp_path: Path) -> None:
    job = _job(tmp_path, gcs_bucket)
    cache = str(tmp_path / "cache")
    assert cli("run", str(job), "--frames", "2-3", "--cache-dir", cache).returncode == 0
    result = cli("status", str(job), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["frames"]["done"] == [2, 3]
    assert document["frames"]["missing"] == [1, 4]
    assert document["complete"] is False
    assert cli("validate", str(job)).returncode == 0


def test_cache_commands_report_json(gcs_bucket: str, tmp_path: Path) -> None:
    job = _job(tmp_path, gcs_bucket)
    cache = str(tmp_path / "cache")
    put_object(f"{gcs_bucket}/dep.bin", b"d" * 1000)
    text = job.read_text() + f"deps: ['{gcs_bucket}/dep.bin']\n"
    job.write_text(text)
    assert cli("run", str(job), "--cache-dir", cache).returncode == 0
    stats = json.loads(cli("cache", "stats", "--cache-dir", cache, "--json").stdout)
    assert stats["entries"] == 1 and stats["bytes"] == 1000 and stats["misses"] == 1
    verify = cli("cache", "verify", "--cache-dir", cache, "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["bad"] == 0
    prune = json.loads(
        cli("cache", "prune", "--cache-dir", cache, "--max-size", "1GB", "--json").stdout
    )
    assert prune["evicted"] == 0
    cleared = json.loads(cli("cache", "clear", "--cache-dir", cache, "--json").stdout)
    assert cleared["evicted"] == 1
    assert json.loads(cli("cache", "stats", "--cache-dir", cache, "--json").stdout)["entries"] == 0
    bad = cli("cache", "prune", "--cache-dir", cache, "--max-size", "lots")
    assert bad.returncode == 78 and "--max-size" in bad.stderr


def test_malformed_scene_is_exit_65_one_line(tmp_path: Path) -> None:
    scene = tmp_path / "comp.nk"
    scene.write_text('Root {\n first_frame 1\n}\nRead {\n file "/mnt/show/a.####.exr\n')
    result = cli("deps", str(scene), "--frames", "1-3")
    assert result.returncode == 65, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert re.search(r"comp\.nk:\d+:\d+: ", lines[0]), lines[0]


def test_the_report_is_readable_as_any_file_the_user_writes(
    local_bucket: str, tmp_path: Path
) -> None:
    """``--report``'s file takes the umask's mode (0644 under 022), not mkstemp's 0600, so a
    farm's log shipper or a wrangler running as another user can read it; nothing is left
    beside it."""
    import os
    import stat

    from tests.renderjobs import make_job, run

    job = make_job(tmp_path / "job", local_bucket, "1")
    code, out, report = run(job, report="reports/r.json")
    assert code == 0 and report["status"] == "succeeded", out
    umask = os.umask(0)
    os.umask(umask)
    written = job.root / "reports" / "r.json"
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in written.parent.iterdir()] == ["r.json"]


def test_the_deps_table_in_a_pipe_shows_every_url_whole(tmp_path: Path) -> None:
    """Piped (80 columns), the table cut URLs to ``file:///tmp/…/te…``, naming no file; they
    are folded onto more lines instead, so each one's file name is there."""
    folder = tmp_path / "a-long-show-folder-name" / "textures-for-the-shot"
    folder.mkdir(parents=True)
    (folder / "present-texture.png").write_bytes(b"png")
    scene = tmp_path / "scene.txt"
    scene.write_text(f"{folder}/present-texture.png\n{folder}/missing-texture.png\n")
    result = cli("deps", str(scene))
    assert result.returncode == 0, result.stderr
    text = "".join(line.strip("│ ") for line in result.stdout.splitlines())
    assert "present-texture.png" in text and "missing-texture.png" in text, result.stdout
    assert "…" not in result.stdout.split("dependencies", 1)[1], result.stdout


def test_every_json_command_that_fails_prints_one_json_document(tmp_path: Path) -> None:
    """``--json`` promises one JSON document on stdout: a failure (a usage error typer finds,
    a missing job file, a folder that is no cache) is one too, ``{"ok": false, "exit_code",
    "error"}`` (``run``'s with ``status`` "failed", as its report says it), beside the usual
    line on stderr, with the same exit code."""
    missing = str(tmp_path / "missing.yaml")
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "notes.txt").write_text("not a cache")
    cases = [
        (["deps", "--json", "--bogus"], False),
        (["deps", missing, "--json"], False),
        (["status", missing, "--json"], False),
        (["validate", missing, "--json"], False),
        (["cache", "stats", "--json", "--cache-dir", str(crowded)], False),
        (["run", missing, "--json"], True),
        (["run", missing, "--json", "--progress", "json"], True),
        (["run", missing, "--json", "--bogus"], True),  # read by typer, not jitrender.runcmd
    ]
    for args, is_run in cases:
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 78, (args, result.stderr)
        document = json.loads(result.stdout)  # one document, nothing else
        assert document["ok"] is False and document["exit_code"] == 78, (args, document)
        assert ("status" in document) == is_run and document.get("status", "failed") == "failed"
        assert document["error"] in result.stderr, (args, result.stderr)
