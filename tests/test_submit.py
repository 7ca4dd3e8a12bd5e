"""``jitrender submit``: the documents ``--dry-run`` prints for the five farms are the files in
examples/farm (so the examples cannot drift), each passes its farm's own validator, the task
count follows frames and chunk, and a missing farm client is exit 78 naming the extra.
The OpenJD bundle runs to completion under ``openjd run`` (openjd-cli)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "farm"
PYTHON_JITRENDER = f"{shlex.quote(sys.executable)} -m jitrender.cli"


def generate_lines() -> list[tuple[list[str], str]]:
    """``(submit argv, output file)`` for each line of examples/farm/generate.sh."""
    text = (EXAMPLES / "generate.sh").read_text()
    image = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("IMAGE="))
    found = []
    for line in text.splitlines():
        if not line.startswith("jitrender submit "):
            continue
        command, _, target = line.partition(" > ")
        argv = shlex.split(command.replace('"$IMAGE"', image))[1:]
        found.append((argv, target.strip()))
    return found


@pytest.mark.parametrize(
    ("argv", "target"),
    generate_lines(),
    ids=[target for _, target in generate_lines()],
)
def test_farm_examples_are_exactly_what_dry_run_prints(
    argv: list[str], target: str, tmp_path: Path
) -> None:
    if "--bundle-dir" in argv:
        argv[argv.index("--bundle-dir") + 1] = str(tmp_path / "bundle")
    done = cli(*argv, cwd=EXAMPLES)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (EXAMPLES / target).read_text(), (
        f"examples/farm/{target} drifted from `jitrender {shlex.join(argv)}`: "
        "run examples/farm/generate.sh"
    )
    if "--bundle-dir" in argv:
        for written in (tmp_path / "bundle").iterdir():
            assert written.read_text() == (EXAMPLES / "openjd" / written.name).read_text()


def dry_run(job: Path, farm: str, *extra: str) -> str:
    done = cli("submit", str(job), "--farm", farm, "--dry-run", *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout


def write_job(root: Path, frames: str = "1-20", chunk: int | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    job: dict[str, Any] = {
        "name": "sub",
        "frames": frames,
        "stages": [{"name": "render", "command": ["true"]}],
        "outputs": {"to": f"file://{root}/bucket/out", "files": ["f.####.txt"]},
    }
    if chunk is not None:
        job["chunk"] = chunk
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.parametrize("version", ["1.28.0", "1.29.0", "1.31.0", "1.33.0", "1.35.0", "1.37.0"])
def test_kubernetes_document_validates_on_each_supported_version(
    version: str, tmp_path: Path
) -> None:
    import kubernetes_validate

    target = version.rsplit(".", 1)[0]
    text = dry_run(
        write_job(tmp_path), "kubernetes", "--tasks", "4", "--kubernetes-version", target
    )
    documents = list(yaml.safe_load_all(text))
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)
    (job,) = [d for d in documents if d["kind"] == "Job"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    # Before 1.29 per-index retries are alpha (off): a 65/78 fails the Job as a whole.
    action = "FailJob" if target == "1.28" else "FailIndex"
    assert [r["action"] for r in rules] == ["Ignore", action]
    assert ("backoffLimitPerIndex" in job["spec"]) == (target != "1.28")


def test_gcp_batch_and_aws_batch_documents_pass_their_client_models(tmp_path: Path) -> None:
    import botocore.session
    from botocore.validate import validate_parameters
    from google.cloud import batch_v1
    from google.protobuf import json_format

    job = write_job(tmp_path)
    gcp = batch_v1.Job.pb()()
    json_format.ParseDict(json.loads(dry_run(job, "gcp-batch", "--tasks", "7")), gcp)
    assert gcp.task_groups[0].task_count == 7
    model = botocore.session.get_session().get_service_model("batch")
    for tasks in ("1", "7"):
        document = json.loads(dry_run(job, "aws-batch", "--tasks", tasks))
        validate_parameters(
            document["registerJobDefinition"],
            model.operation_model("RegisterJobDefinition").input_shape,
        )
        validate_parameters(document["submitJob"], model.operation_model("SubmitJob").input_shape)
        # AWS Batch arrays start at 2 children; one task is a plain job told its slot by flags.
        assert ("arrayProperties" in document["submitJob"]) == (tasks == "7")


@pytest.mark.parametrize(
    ("frames", "chunk", "flags", "count"),
    [
        ("1-20", None, ["--tasks", "4"], 4),
        ("1-20", None, ["--chunk", "6"], 4),
        ("1-20", 5, [], 4),
        ("1-21", 5, [], 5),
        ("1-20", 5, ["--tasks", "8"], 8),
    ],
)
def test_task_count_follows_frames_and_chunk(
    frames: str, chunk: int | None, flags: list[str], count: int, tmp_path: Path
) -> None:
    text = dry_run(write_job(tmp_path, frames, chunk), "slurm", *flags)
    assert f"#SBATCH --array=0-{count - 1}\n" in text


@pytest.mark.parametrize(
    ("chunk", "flags", "words"),
    [
        (None, [], ["chunk", "--tasks"]),
        (None, ["--tasks", "2", "--chunk", "3"], ["--tasks", "--chunk"]),
        (5, ["--chunk", "4"], ["--chunk 4", "chunk 5"]),
        (5, ["--tasks", "3"], ["--tasks 3", "4 tasks"]),
        (None, ["--tasks", "4", "--farm", "nomad"], ["nomad", "slurm"]),
        (None, ["--tasks", "4", "--kubernetes-version", "new"], ["--kubernetes-version"]),
    ],
)
def test_impossible_plans_are_one_line_exit_78(
    chunk: int | None, flags: list[str], words: list[str], tmp_path: Path
) -> None:
    job = write_job(tmp_path, "1-20", chunk)
    farm = "kubernetes" if "--kubernetes-version" in flags else "slurm"
    done = cli("submit", str(job), "--farm", farm, "--dry-run", *flags)
    assert done.returncode == 78, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr


@pytest.mark.parametrize(
    ("farm", "module", "extra"),
    [("kubernetes", "kubernetes", "kubernetes"), ("aws-batch", "boto3", "aws")],
)
def test_a_missing_farm_client_is_exit_78_naming_the_extra(
    farm: str, module: str, extra: str, tmp_path: Path
) -> None:
    try:
        __import__(module)
    except ImportError:
        pass
    else:
        pytest.skip(f"{module} is installed here: the missing-client path cannot be seen")
    done = cli("submit", str(write_job(tmp_path)), "--farm", farm, "--tasks", "2")
    assert done.returncode == 78
    assert f"jitrender[{extra}]" in done.stderr and module in done.stderr


def test_gcp_batch_submit_without_a_project_is_exit_78(tmp_path: Path) -> None:
    done = cli("submit", str(write_job(tmp_path)), "--farm", "gcp-batch", "--tasks", "2")
    assert done.returncode == 78
    assert "--project" in done.stderr


OPENJD = shutil.which(
    "openjd", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
)


@pytest.mark.skipif(OPENJD is None, reason="openjd-cli (test extra) is not installed")
def test_openjd_bundle_renders_every_frame_under_openjd_run(tmp_path: Path) -> None:
    root = tmp_path / "job"
    root.mkdir()
    job = {
        "name": "ojd",
        "frames": "1-6",
        "stages": [
            {
                "name": "render",
                "command": [
                    sys.executable,
                    "-c",
                    "import sys; open(sys.argv[1] + '/f.%04d.txt' % int(sys.argv[2]), 'w')"
                    ".write(sys.argv[2])",
                    "{outputs}",
                    "{frame}",
                ],
            }
        ],
        "outputs": {"to": f"file://{tmp_path}/bucket/out", "files": ["f.####.txt"]},
    }
    job_file = root / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    bundle = tmp_path / "bundle"
    done = cli(
        "submit", str(job_file), "--farm", "openjd", "--tasks", "3", "--cpus", "1",
        "--memory", "100MB", "--jitrender", PYTHON_JITRENDER, "--bundle-dir", str(bundle),
    )  # fmt: skip
    env = {**os.environ, "PATH": os.environ.get("PATH", "")}
    if shutil.which("deadline") is None:
        # No Deadline Cloud here: the bundle is written and the message says how to run it.
        assert done.returncode == 78 and "openjd run" in done.stderr
    values = yaml.safe_load((bundle / "parameter_values.yaml").read_text())
    assert values == {"parameterValues": [{"name": "JobFile", "value": str(job_file)}]}
    env.update(
        JITRENDER_CACHE_DIR=str(tmp_path / "cache"),
        JITRENDER_PREEMPTION_WATCH="off",
        PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT)),
    )
    assert OPENJD is not None
    ran = subprocess.run(
        [OPENJD, "run", str(bundle / "template.yaml"), "-p", f"JobFile={job_file}"],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "Chunks run: 3" in ran.stdout or "Tasks run: 3" in ran.stdout, ran.stdout[-1000:]
    out = tmp_path / "bucket" / "out"
    assert sorted(p.name for p in out.glob("f.*.txt")) == [f"f.{f:04d}.txt" for f in range(1, 7)]
    markers = list(out.glob("_jitrender/*/frame.*.json"))
    assert len(markers) == 6
