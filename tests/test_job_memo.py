"""A job file checked once on a node is read from the memo of its values (jitrender.job):
the same job, without PyYAML or pydantic. Through the CLI (``-X importtime``'s list of the
modules a real process imported); the memo folder is each test's own.

Markers are named by the job's hash, so the hash of a job must not change with how it was
read, nor between versions: the hashes below are those the pydantic models of version 0.1.0
(before the memo) gave these files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from jitrender.job import load_job
from tests.conftest import cli
from tests.renderjobs import imported_modules as _imported
from tests.renderjobs import jitrender_env, make_job, run

_SCHEMA = ("pydantic", "pydantic_core", "yaml", "annotated_types", "jitrender.jobcheck")

GOLDEN = {
    "4c9815583e1f9a06": """
frames: 1-10
stages: [{name: r, command: "echo {frame}"}]
outputs: {to: gs://b/renders}
""",
    "f63ee9afdc531fea": """
version: 1
name: shot010
scene: gs://show/shot010/comp.nk
resolver: nuke
frames: "1-100x2"
chunk: 5
path_map:
- {from: /mnt/show, to: gs://show, format: posix}
- {from: 'S:\\\\', to: gs://show/s/}
deps:
- gs://show/lut/a.cube
- {path: /mnt/show/tex/t.<UDIM>.exr, frames: 1-3}
- {prefix: gs://show/fonts/}
stages:
- name: pre
  per: chunk
  command: [python, pre.py, "{frames}"]
  env: {A: "1"}
  timeout: 30
- name: render
  engine: blender
  args: {engine: CYCLES, samples: 64, denoise: true, scale: 0.5, passes: [a, b], nested: {x: 1}}
  timeout: 600.5
outputs:
  to: gs://show/renders/shot010
  files: ["beauty.####.exr", "aov_*.####.exr"]
  checkpoints: gs://show/previews
cache: {dir: /scratch/c, max_size: 50GB}
retries: {frame: 3, storage: 10, storage_deadline: 60}
env: {OCIO: /mnt/show/ocio/config.ocio}
""",
    "59b9fac4fc0fd991": """
frames: 5
scene: /mnt/show/a.blend
path_map: {/mnt/show: gs://show}
stages: [{name: r, engine: blender}]
outputs: {to: /mnt/show/out}
""",
    "627428b72a10e12f": """
frames: "1,3,5"
path_map: {version: pathmapping-1.0, path_mapping_rules: [{source_path_format: POSIX, """
    """source_path: /mnt/x, destination_path: /tmp/x}]}
stages: [{name: r, command: "true"}]
outputs: {to: gs://b/o}
""",
    "29a596286a1857b5": """
frames: 1
scene: gs://s/a.blend
stages: [{name: r, engine: blender, split: {tiles: [2, 3], overscan: 8}}]
outputs: {to: gs://b/o}
""",
    "02b0f70e8561bac7": """
frames: 1-2
scene: gs://s/a.blend
stages: [{name: r, engine: blender, args: {engine: cycles}, split: {samples: 4}}]
outputs: {to: gs://b/o}
""",
    # YAML's dates and an infinity in an engine's args: no memo (JSON would change them).
    "60be0b2ec2607e50": """
frames: 1
stages: [{name: r, engine: blender, args: {when: 2024-01-01, t: 2024-01-01 10:00:00, """
    """tz: 2024-01-01T10:00:00+02:00, inf: .inf, big: 12345678901234567890}}]
outputs: {to: gs://b/o}
""",
}


@pytest.mark.parametrize("expected", sorted(GOLDEN))
def test_a_job_hashes_as_it_always_did_read_afresh_or_from_the_memo(
    expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JITRENDER_JOB_MEMO_DIR", str(tmp_path / "memo"))
    job_file = tmp_path / "job.yaml"
    job_file.write_text(GOLDEN[expected])
    first, second = load_job(job_file), load_job(job_file)
    assert first.job_hash() == second.job_hash() == expected
    assert first == second and second.source == job_file.resolve()
    kept = list((tmp_path / "memo").glob("*.json"))
    assert len(kept) == (0 if "when:" in GOLDEN[expected] else 1)


def test_a_memo_keeps_the_order_of_an_engines_args(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JITRENDER_JOB_MEMO_DIR", str(tmp_path / "memo"))
    job_file = tmp_path / "job.yaml"
    job_file.write_text(GOLDEN["f63ee9afdc531fea"])
    order = ["engine", "samples", "denoise", "scale", "passes", "nested"]
    assert list(load_job(job_file).stages[1].args) == order
    assert list(load_job(job_file).stages[1].args) == order  # from the memo


def _schema(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.startswith(_SCHEMA))


def test_a_second_run_of_a_job_file_reads_it_from_the_memo(
    local_bucket: str, tmp_path: Path
) -> None:
    """The first run of a job on a node checks it (PyYAML, pydantic); the next reads its
    values from the memo, imports neither, and renders the same: the same marker folder."""
    job = make_job(tmp_path / "job", local_bucket, "1-2")
    memo = tmp_path / "memo"
    env = jitrender_env(job, PYTHONPROFILEIMPORTTIME="1", JITRENDER_JOB_MEMO_DIR=str(memo))
    code, out, first = run(job, env=env)
    assert code == 0, out
    assert "jitrender.jobcheck" in _schema(_imported(out))
    assert len(list(memo.glob("*.json"))) == 1
    assert (memo.stat().st_mode & 0o777) == 0o700
    code, out, second = run(job, "--rerender", env=env, report="again.json")
    assert code == 0, out
    assert _schema(_imported(out)) == []
    assert second["job"]["hash"] == first["job"]["hash"]
    assert second["frames"]["done"] == first["frames"]["done"] == [1, 2]
    env["JITRENDER_JOB_MEMO_DIR"] = ""  # no memo: checked every time
    for report in ("third.json", "fourth.json"):
        code, out, _ = run(job, "--rerender", env=env, report=report)
        assert code == 0, out
        assert "jitrender.jobcheck" in _schema(_imported(out))


def test_an_edited_job_file_is_checked_again(local_bucket: str, tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", local_bucket, "1")
    env = jitrender_env(job, JITRENDER_JOB_MEMO_DIR=str(tmp_path / "memo"))
    code, out, _ = run(job, env=env)
    assert code == 0, out
    text = job.job_file.read_text()
    job.job_file.write_text(text.replace("frames: '1'", "frames: '1'\nchunk: 0"))
    code, out, _ = run(job, env=env, report="edited.json")
    assert code == 78, out
    assert re.search(r"job\.yaml:\d+: chunk: Input should be greater than or equal to 1", out)


def test_a_memo_folder_others_may_write_is_a_mistake_never_a_memo(
    local_bucket: str, tmp_path: Path
) -> None:
    """A memo names the commands a job runs: ``$JITRENDER_JOB_MEMO_DIR`` naming a folder
    another user could write (or a link, or a file) is a mistake said before anything runs,
    never a memo believed nor a setting ignored. A memo that does not read back as a job is
    no memo: the job file is checked again."""
    job = make_job(tmp_path / "job", local_bucket, "1")
    memo = tmp_path / "memo"
    env = jitrender_env(job, JITRENDER_JOB_MEMO_DIR=str(memo))
    code, out, _ = run(job, env=env)
    assert code == 0, out
    (kept,) = memo.glob("*.json")
    planted = tmp_path / "planted"
    values = json.loads(kept.read_text())
    values["stages"][0]["command"] = ["touch", str(planted)]
    kept.write_text(json.dumps(values))
    os.chmod(memo, 0o777)
    code, out, _ = run(job, "--rerender", env=env, report="shared.json")
    assert code == 78, out
    assert f"JITRENDER_JOB_MEMO_DIR: {memo}: group or others may write it" in out
    assert "Traceback" not in out and not planted.exists()
    for wrong, problem in (
        (tmp_path / "a-file", "is not a folder"),
        (tmp_path / "a-link", "is a link"),
    ):
        if wrong.name == "a-file":
            wrong.write_text("")
        else:
            wrong.symlink_to(memo)
        code, out, _ = run(job, "--rerender", env=env | {"JITRENDER_JOB_MEMO_DIR": str(wrong)})
        assert code == 78 and f"JITRENDER_JOB_MEMO_DIR: {wrong}: {problem}" in out, out
    os.chmod(memo, 0o700)
    kept.write_text('{"stages": "not a job"')
    code, out, _ = run(job, "--rerender", env=env, report="garbled.json")
    assert code == 0, out


def test_a_size_read_once_is_read_from_the_memo(local_bucket: str, tmp_path: Path) -> None:
    """``--cache-max-size 500GB`` on every task of a farm: read by pydantic's ByteSize the first
    time, from the memo after; a size that is wrong is said every time."""
    job = make_job(tmp_path / "job", local_bucket, "1")
    memo = tmp_path / "memo"
    env = jitrender_env(job, PYTHONPROFILEIMPORTTIME="1", JITRENDER_JOB_MEMO_DIR=str(memo))
    code, out, _ = run(job, "--cache-max-size", "500GB", env=env)
    assert code == 0, out
    code, out, _ = run(job, "--cache-max-size", "500GB", "--rerender", env=env, report="b.json")
    assert code == 0, out
    assert _schema(_imported(out)) == []
    for attempt in ("c.json", "d.json"):
        code, out, _ = run(job, "--cache-max-size", "500 parsecs", env=env, report=attempt)
        assert code == 78, out
        assert "--cache-max-size: '500 parsecs' is not a size" in out


def test_the_memo_lives_in_the_node_cache_once_there_is_one(
    local_bucket: str, tmp_path: Path
) -> None:
    """Without ``$JITRENDER_JOB_MEMO_DIR`` the memo is ``<cache>/memo/``, which outlives a
    farm task's temporary folder: a node's first run makes the cache (the memo does not make
    it before it, with other modes), its second keeps the job's values, its third reads them."""
    job = make_job(tmp_path / "job", local_bucket, "1")
    env = jitrender_env(job, PYTHONPROFILEIMPORTTIME="1")
    env.pop("JITRENDER_JOB_MEMO_DIR", None)
    kept = job.cache_dir / "memo"
    for attempt, (schema, memos) in enumerate([(True, 0), (True, 1), (False, 1)]):
        args = ("--rerender",) if attempt else ()
        code, out, _ = run(job, *args, env=env, report=f"{attempt}.json")
        assert code == 0, out
        assert bool(_schema(_imported(out))) == schema, attempt
        assert len(list(kept.glob("*.json"))) == memos, attempt
    assert (kept.stat().st_mode & 0o777) == 0o700
    cleared = cli("cache", "clear", "--json", env=env)  # forgets it: read afresh next time
    assert cleared.returncode == 0, cleared.stderr
    assert json.loads(cleared.stdout)["memo_forgotten"] == 1
    code, out, _ = run(job, "--rerender", env=env, report="after-clear.json")
    assert code == 0, out
    assert "jitrender.jobcheck" in _schema(_imported(out))
