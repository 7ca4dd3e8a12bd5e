"""``jitrender submit``: write a farm's own job from a job file and submit it with that farm's
own client.

Deciding (pure, no I/O) and submitting are separate: :func:`plan_tasks` and :func:`farm_job`
turn a :class:`~jitrender.job.Job` and :class:`SubmitOptions` into a :class:`FarmJob` (the
document ``--dry-run`` prints, byte for byte the same every time); :func:`submit` hands it to
the farm (``sbatch``, the kubernetes client, google-cloud-batch, boto3, ``deadline bundle
submit``) and returns the farm's job id.

Every document runs ``jitrender run <job>`` once per task, the task's slice of the frames chosen
from the index the farm exports (see :mod:`jitrender.farm`), and maps jitrender's exit codes onto
the farm's retry policy: 75 (preempted, transient) is retried, 69 (this node is drained or
blocked the job) is retried elsewhere where the farm can, 65 (data) and 78 (configuration)
fail at once. Where a farm cannot key on exit codes, the README says so.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jitrender import __version__
from jitrender.errors import ConfigError, JitrenderError, TransientError
from jitrender.job import Job

FARMS = ("slurm", "kubernetes", "gcp-batch", "aws-batch", "openjd")
DEFAULT_IMAGE = f"jitrender:{__version__}"
# Where a container finds the job file when submit ships it in (a Kubernetes ConfigMap).
CONTAINER_JOB_DIR = "/etc/jitrender"
# Kubernetes gained per-index retries (backoffLimitPerIndex, FailIndex) as beta in 1.29.
PER_INDEX_SINCE = (1, 29)


@dataclass(frozen=True)
class SubmitOptions:
    """What the farm document says beyond the job file. Sizes are bytes, times seconds."""

    farm: str
    tasks: int | None = None
    chunk: int | None = None
    name: str | None = None
    image: str = DEFAULT_IMAGE
    job_path: str | None = None  # the job file as the farm's nodes see it
    queue: str | None = None  # Slurm partition, AWS Batch job queue
    cpus: int = 16
    memory_bytes: int = 60 * 1000**3
    time_limit_s: int = 6 * 3600
    parallelism: int | None = None  # tasks at once (default: all)
    max_retries: int = 3  # retries per task of exit 75 / preemption
    cache_dir: str | None = None  # the node-local cache folder on the farm's nodes
    jitrender: str = "jitrender"  # the command that starts jitrender on a node
    log_dir: Path | None = None  # Slurm's -o folder (created by submit)
    bundle_dir: Path | None = None  # where the OpenJD job bundle is written
    namespace: str = "default"
    kubernetes_version: str = "1.29"
    project: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class TaskPlan:
    """``count`` tasks share ``frames`` frames; ``chunk`` is the job's own frames per task."""

    count: int
    frames: int
    chunk: int | None


@dataclass(frozen=True)
class FarmJob:
    """The farm's own job: ``document`` is what ``--dry-run`` prints; ``files`` are written next
    to it (an OpenJD bundle's ``parameter_values.yaml``), keyed by file name."""

    farm: str
    name: str
    document: str
    plan: TaskPlan
    data: Any = None  # the document as objects, for the farm's client
    files: dict[str, str] = field(default_factory=dict)


def plan_tasks(job: Job, tasks: int | None, chunk: int | None) -> TaskPlan:
    """How many tasks the farm starts. ``--tasks N`` is N tasks; ``--chunk K`` is one task per K
    frames (then the split is even, at most K frames each); neither takes the job's ``chunk``.
    A plan that would leave frames unrendered, or contradicts the job's chunk, is a
    :class:`ConfigError`."""
    split = job.split_stage.split if job.split_stage is not None else None
    # A split job's tasks share (frame, part) pairs, spread as frames are (farm.task_parts).
    frames = len(job.frame_list()) * (split.parts if split is not None else 1)
    where = f"{job.source or 'job'}"
    if tasks is not None and chunk is not None:
        raise ConfigError("--tasks and --chunk both given: pass one")
    if tasks is not None:
        if tasks < 1:
            raise ConfigError(f"--tasks {tasks}: must be at least 1")
        if job.chunk is not None and tasks * job.chunk < frames:
            raise ConfigError(
                f"--tasks {tasks} with {where}: chunk {job.chunk} needs "
                f"{-(-frames // job.chunk)} tasks for {frames} frames"
            )
        return TaskPlan(tasks, frames, job.chunk)
    if chunk is not None:
        if chunk < 1:
            raise ConfigError(f"--chunk {chunk}: must be at least 1 frame per task")
        if job.chunk is not None and job.chunk != chunk:
            raise ConfigError(
                f"--chunk {chunk} contradicts {where}: chunk {job.chunk}; pass --chunk "
                f"{job.chunk} or --tasks"
            )
        return TaskPlan(-(-frames // chunk), frames, job.chunk)
    if job.chunk is None:
        raise ConfigError(f"{where}: no 'chunk' in the job: pass --tasks N or --chunk K")
    return TaskPlan(-(-frames // job.chunk), frames, job.chunk)


# The options only some farms read: given for another farm, they would be taken and unused.
FARM_OPTIONS: dict[str, tuple[str, ...]] = {
    "--queue": ("slurm", "aws-batch"),
    "--image": ("kubernetes", "gcp-batch", "aws-batch"),
    "--log-dir": ("slurm",),
    "--bundle-dir": ("openjd",),
    "--project": ("gcp-batch",),
    "--region": ("gcp-batch", "aws-batch"),
}


def check_farm_options(farm: str, given: dict[str, object]) -> None:
    """Refuse an option (``given``: flag -> value, None where not given) that ``farm`` does
    not read, naming the farms that do."""
    if farm not in FARMS:
        raise ConfigError(f"--farm {farm!r}: use one of {', '.join(FARMS)}")
    for flag, value in given.items():
        farms = FARM_OPTIONS[flag]
        if value is not None and farm not in farms:
            raise ConfigError(
                f"{flag} {value}: --farm {farm} does not use it (it is for {', '.join(farms)})"
            )


def farm_job(job: Job, options: SubmitOptions) -> FarmJob:
    """The farm's document for ``job`` (no I/O). Raises :class:`ConfigError` for an unknown
    farm or options the farm cannot express."""
    if options.farm not in FARMS:
        raise ConfigError(f"--farm {options.farm!r}: use one of {', '.join(FARMS)}")
    plan = plan_tasks(job, options.tasks, options.chunk)
    if options.parallelism is not None and options.parallelism < 1:
        raise ConfigError(f"--parallelism {options.parallelism}: must be at least 1")
    if options.cpus < 1:
        raise ConfigError(f"--cpus {options.cpus}: must be at least 1")
    # Each farm reads 0 otherwise (Slurm's --time=0 and --mem=0 are "no limit", Kubernetes
    # refuses a negative backoff limit): refused here, for every farm alike.
    if options.memory_bytes < 1024 * 1024:
        raise ConfigError(f"--memory {options.memory_bytes} bytes: must be at least 1MiB")
    if options.time_limit_s < 1:
        raise ConfigError(f"--time-limit {options.time_limit_s}: must be at least 1 second")
    if options.max_retries < 0:
        raise ConfigError(f"--max-retries {options.max_retries}: must be 0 or more")
    writer = {
        "slurm": _slurm,
        "kubernetes": _kubernetes,
        "gcp-batch": _gcp_batch,
        "aws-batch": _aws_batch,
        "openjd": _openjd,
    }[options.farm]
    return writer(job, plan, options)


# -- names and paths ----------------------------------------------------------------------


def job_name(job: Job, options: SubmitOptions) -> str:
    """``jitrender-<name>-<job hash prefix>``, lower case, letters, digits and dashes: valid as
    a Kubernetes, GCP Batch and AWS Batch name, and the same for the same job definition."""
    base = re.sub(r"[^a-z0-9]+", "-", (options.name or job.display_name).lower()).strip("-")
    return f"jitrender-{base[:40].strip('-') or 'job'}-{job.job_hash()[:8]}"


def _job_path(job: Job, options: SubmitOptions) -> str:
    if options.job_path is not None:
        return options.job_path
    if job.source is None:
        raise ConfigError("the job has no file: pass --job-path")
    return str(job.source)


def _cache_dir(options: SubmitOptions, default: str) -> str:
    return options.cache_dir or default


def _cache_mount(cache_dir: str) -> str:
    """The volume's mount point for a cache folder: its parent. jitrender creates the folder
    itself (0700, its own user), as it refuses a mount point owned by root or world-writable
    (an emptyDir is 0777)."""
    return str(Path(cache_dir).parent)


def _mib(options: SubmitOptions) -> int:
    return max(1, options.memory_bytes // (1024 * 1024))


def _run_argv(options: SubmitOptions, job_path: str) -> list[str]:
    return [*shlex.split(options.jitrender), "run", job_path]


def _status_hint(job: Job) -> str:
    return f"jitrender status {shlex.quote(str(job.source or 'job.yaml'))}"


# -- Slurm --------------------------------------------------------------------------------

_SLURM_BODY = """\
# --requeue: a task whose node fails or that is preempted (PreemptMode=REQUEUE) goes back to
#   the queue under the same array index; jitrender skips the frames already in the bucket.
# --signal=B:TERM@120: SIGTERM to this batch shell 120 s before the time limit; the trap below
#   passes it to jitrender, which stops cleanly and exits 75.
# --open-mode=append: a requeued task appends to its log instead of truncating it.
# The --output folder must exist before the job starts (Slurm writes nothing otherwise):
# jitrender submit creates it.

set -u

JOB_YAML=${{JOB_YAML:-{job_yaml}}}
MAX_REQUEUES=${{MAX_REQUEUES:-{max_requeues}}}
# The cache lives on the node's local disk and is shared by every task that lands on the node.
export JITRENDER_CACHE_DIR=${{JITRENDER_CACHE_DIR:-{cache_dir}}}
export JITRENDER_ATTEMPT=${{SLURM_RESTART_COUNT:-0}}

{run} "$JOB_YAML" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT

# wait returns early (status > 128) when the trap runs; wait again until jitrender has exited.
status=0
while :; do
    wait "$child"
    status=$?
    kill -0 "$child" 2>/dev/null || break
done

case "$status" in
    0)
        echo "jitrender: task ${{SLURM_ARRAY_TASK_ID}} done"
        ;;
    75)
        # Preempted, SIGTERM or a transient storage failure: requeue the same index, boundedly.
        restarts=${{SLURM_RESTART_COUNT:-0}}
        if [ "$restarts" -lt "$MAX_REQUEUES" ]; then
            echo "jitrender: exit 75, requeue $((restarts + 1)) of ${{MAX_REQUEUES}}"
            scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}" || true
        else
            echo "jitrender: exit 75 after ${{restarts}} requeues, giving up"
        fi
        ;;
    69)
        # This node is drained or has blocked this job (jitrender health): run it elsewhere.
        restarts=${{SLURM_RESTART_COUNT:-0}}
        if [ "$restarts" -lt "$MAX_REQUEUES" ] && [ -n "${{SLURMD_NODENAME:-}}" ]; then
            echo "jitrender: exit 69 on ${{SLURMD_NODENAME}}, requeue on another node"
            scontrol update JobId="${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}" \
                ExcNodeList="${{SLURMD_NODENAME}}" || true
            scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}" || true
        else
            echo "jitrender: exit 69 (node unhealthy for this job), giving up" >&2
        fi
        ;;
    65)
        echo "jitrender: exit 65, the job's data is wrong (missing input, failed frame)" >&2
        ;;
    78)
        echo "jitrender: exit 78, configuration error (job.yaml, flags, permissions): no retry" >&2
        ;;
    *)
        echo "jitrender: unexpected exit ${{status}}" >&2
        ;;
esac
exit "$status"
"""


def _slurm_log_dir(job: Job, options: SubmitOptions) -> str:
    if options.log_dir is not None:
        return str(options.log_dir)
    return str(Path(_job_path(job, options)).parent / "logs")


def _slurm(job: Job, plan: TaskPlan, options: SubmitOptions) -> FarmJob:
    name = job_name(job, options)
    job_path = _job_path(job, options)
    throttle = f"%{options.parallelism}" if options.parallelism else ""
    minutes = -(-options.time_limit_s // 60)
    lines = [
        "#!/bin/bash",
        "# jitrender as a Slurm job array: one array task per jitrender task, written by",
        f"# `jitrender submit --farm slurm` for {plan.frames} frames in {plan.count} tasks.",
        "#",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --array=0-{plan.count - 1}{throttle}",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={options.cpus}",
        f"#SBATCH --mem={_mib(options)}M",
        f"#SBATCH --time={minutes // 60:02d}:{minutes % 60:02d}:00",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={_slurm_log_dir(job, options)}/%x_%A_%a.out",
        "#SBATCH --signal=B:TERM@120",
    ]
    if options.queue:
        lines.append(f"#SBATCH --partition={options.queue}")
    body = _SLURM_BODY.format(
        job_yaml=shlex.quote(job_path),
        max_requeues=options.max_retries,
        cache_dir=shlex.quote(_cache_dir(options, "/local/scratch/jitrender-cache")),
        run=shlex.join([*shlex.split(options.jitrender), "run"]),
    )
    document = "\n".join([*lines, "#", body])
    return FarmJob("slurm", name, document, plan)


# -- Kubernetes ---------------------------------------------------------------------------


def _version(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"v?(\d+)\.(\d+)(\.\d+)?", text.strip())
    if match is None:
        raise ConfigError(f"--kubernetes-version {text!r}: use MAJOR.MINOR, e.g. 1.29")
    return int(match.group(1)), int(match.group(2))


def _kubernetes(job: Job, plan: TaskPlan, options: SubmitOptions) -> FarmJob:
    name = job_name(job, options)
    per_index = _version(options.kubernetes_version) >= PER_INDEX_SINCE
    ships_job = options.job_path is None
    job_path = f"{CONTAINER_JOB_DIR}/job.yaml" if ships_job else options.job_path
    assert job_path is not None
    cache = _cache_dir(options, "/cache/jitrender")
    # 65 and 78 would fail the same way again; before 1.29 only the whole Job can fail.
    fail_rule: dict[str, Any] = {
        "action": "FailIndex" if per_index else "FailJob",
        "onExitCodes": {"containerName": "jitrender", "operator": "In", "values": [65, 78]},
        "onPodConditions": [],  # required (and empty) in the 1.28 schema
    }
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": plan.count,
        "parallelism": options.parallelism or plan.count,
    }
    if per_index:
        spec.update(
            backoffLimitPerIndex=options.max_retries,
            maxFailedIndexes=max(1, plan.count // 10),
            podReplacementPolicy="Failed",
        )
    else:
        spec["backoffLimit"] = options.max_retries * plan.count
    mounts: list[dict[str, Any]] = [{"name": "cache", "mountPath": _cache_mount(cache)}]
    volumes: list[dict[str, Any]] = [{"name": "cache", "emptyDir": {}}]
    if ships_job:
        mounts.insert(0, {"name": "job", "mountPath": CONTAINER_JOB_DIR, "readOnly": True})
        volumes.insert(0, {"name": "job", "configMap": {"name": f"{name}-job"}})
    memory = f"{_mib(options)}Mi"
    spec.update(
        ttlSecondsAfterFinished=7 * 86400,
        podFailurePolicy={
            "rules": [
                # Node drained, spot VM reclaimed, pod preempted: retry without counting it.
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
                fail_rule,
                # Anything else (75, OOM kills, crashes) counts against the retry budget.
            ]
        },
        template={
            "metadata": {"labels": {"app.kubernetes.io/name": "jitrender"}},
            "spec": {
                "restartPolicy": "Never",  # required by podFailurePolicy
                "activeDeadlineSeconds": options.time_limit_s,  # per attempt, not the Job
                # jitrender flushes finished uploads and exits 75 on SIGTERM well inside this.
                "terminationGracePeriodSeconds": 60,
                "containers": [
                    {
                        "name": "jitrender",
                        "image": options.image,
                        "command": _run_argv(options, job_path),
                        "env": [
                            {"name": "JITRENDER_TASK_COUNT", "value": str(plan.count)},
                            {"name": "JITRENDER_CACHE_DIR", "value": cache},
                        ],
                        "resources": {
                            "requests": {"cpu": str(options.cpus), "memory": memory},
                            "limits": {"memory": memory},
                        },
                        "volumeMounts": mounts,
                    }
                ],
                "volumes": volumes,
            },
        },
    )
    labels = {"app.kubernetes.io/name": "jitrender", "jitrender/job-hash": job.job_hash()}
    documents: list[dict[str, Any]] = []
    if ships_job:
        assert job.source is not None
        documents.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"{name}-job", "namespace": options.namespace},
                "data": {"job.yaml": job.source.read_text()},
            }
        )
    documents.append(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": options.namespace, "labels": labels},
            "spec": spec,
        }
    )
    header = (
        f"# jitrender on Kubernetes {options.kubernetes_version}+: an Indexed Job, one pod per "
        f"task index\n# ({plan.count} tasks, {plan.frames} frames), written by `jitrender submit "
        "--farm kubernetes`.\n"
    )
    body = yaml.dump_all(documents, Dumper=_BlockDumper, sort_keys=False, width=100)
    document = header + body
    return FarmJob("kubernetes", name, document, plan, documents)


# -- GCP Batch ----------------------------------------------------------------------------


def _gcp_batch(job: Job, plan: TaskPlan, options: SubmitOptions) -> FarmJob:
    name = job_name(job, options)
    job_path = _job_path(job, options)
    cache = _cache_dir(options, "/mnt/disks/local-ssd/jitrender")
    volumes: list[dict[str, Any]] = [
        {
            "deviceName": "jitrender-cache",
            "mountPath": _cache_mount(cache),
            "mountOptions": ["rw", "async"],
        }
    ]
    if job_path.startswith("gs://"):
        # The node reads the job file (and files next to it) through a Cloud Storage volume.
        folder, _, file_name = job_path[len("gs://") :].rpartition("/")
        volumes.append({"gcs": {"remotePath": folder}, "mountPath": "/mnt/disks/job"})
        job_path = f"/mnt/disks/job/{file_name}"
    document: dict[str, Any] = {
        "labels": {"app": "jitrender", "jitrender-job-hash": job.job_hash()},
        "taskGroups": [
            {
                "taskCount": str(plan.count),
                "parallelism": str(options.parallelism or plan.count),
                "taskSpec": {
                    "runnables": [
                        {
                            "displayName": "jitrender",
                            "container": {
                                "imageUri": options.image,
                                "entrypoint": _run_argv(options, job_path)[0],
                                "commands": _run_argv(options, job_path)[1:],
                            },
                        }
                    ],
                    "environment": {"variables": {"JITRENDER_CACHE_DIR": cache}},
                    "computeResource": {
                        "cpuMilli": str(options.cpus * 1000),
                        "memoryMib": str(_mib(options)),
                    },
                    "maxRunDuration": f"{options.time_limit_s}s",
                    "maxRetryCount": options.max_retries,
                    "lifecyclePolicies": [
                        # 50001: the Spot VM was preempted; 75: jitrender was stopped or storage
                        # failed transiently. Both resume from the frames already done.
                        # 69: this VM is drained or blocked the job; a retry may land elsewhere.
                        {"action": "RETRY_TASK", "actionCondition": {"exitCodes": [50001, 75, 69]}},
                        {"action": "FAIL_TASK", "actionCondition": {"exitCodes": [65, 78]}},
                    ],
                    "volumes": volumes,
                },
            }
        ],
        "allocationPolicy": {
            "instances": [
                {
                    "policy": {
                        "machineType": f"n2-standard-{_gcp_machine_cpus(options.cpus)}",
                        "provisioningModel": "SPOT",
                        "disks": [
                            {
                                "newDisk": {"type": "local-ssd", "sizeGb": "375"},
                                "deviceName": "jitrender-cache",
                            }
                        ],
                    }
                }
            ]
        },
        "logsPolicy": {"destination": "CLOUD_LOGGING"},
    }
    text = json.dumps(document, indent=2) + "\n"
    return FarmJob("gcp-batch", name, text, plan, document)


def _gcp_machine_cpus(cpus: int) -> int:
    """The smallest n2-standard size with at least ``cpus`` vCPUs beyond one for the OS."""
    for size in (2, 4, 8, 16, 32, 48, 64, 80, 96, 128):
        if size > cpus:
            return size
    return 128


# -- AWS Batch ----------------------------------------------------------------------------


def _aws_batch(job: Job, plan: TaskPlan, options: SubmitOptions) -> FarmJob:
    name = job_name(job, options)
    job_path = _job_path(job, options)
    cache = _cache_dir(options, "/cache/jitrender")
    definition: dict[str, Any] = {
        "jobDefinitionName": name,
        "type": "container",
        "platformCapabilities": ["EC2"],
        "parameters": {"jobfile": job_path},
        "containerProperties": {
            "image": options.image,
            "command": [*_run_argv(options, "Ref::jobfile")],
            "resourceRequirements": [
                {"type": "VCPU", "value": str(options.cpus)},
                {"type": "MEMORY", "value": str(_mib(options))},
            ],
            "environment": [{"name": "JITRENDER_CACHE_DIR", "value": cache}],
            "volumes": [{"name": "cache", "host": {"sourcePath": "/local-nvme/jitrender-cache"}}],
            "mountPoints": [{"sourceVolume": "cache", "containerPath": _cache_mount(cache)}],
            # An init process passes SIGTERM (spot reclaim, cancel) on to jitrender.
            "linuxParameters": {"initProcessEnabled": True},
        },
        "retryStrategy": {
            "attempts": min(10, options.max_retries + 1),
            "evaluateOnExit": [
                # A reclaimed Spot instance ends the task with "Host EC2 ... terminated".
                {"action": "RETRY", "onStatusReason": "Host EC2*"},
                {"action": "RETRY", "onExitCode": "75"},
                {"action": "EXIT", "onExitCode": "65"},
                {"action": "EXIT", "onExitCode": "78"},
                {"action": "EXIT", "onReason": "*"},
            ],
        },
        "timeout": {"attemptDurationSeconds": options.time_limit_s},
        "propagateTags": True,
        "tags": {"app": "jitrender", "jitrender-job-hash": job.job_hash()},
    }
    request: dict[str, Any] = {
        "jobName": name,
        "jobQueue": options.queue or "render",
        "jobDefinition": name,
        "parameters": {"jobfile": job_path},
    }
    if plan.count > 1:
        # AWS Batch arrays have 2..10,000 children; one task is a plain job (index 0 by flag).
        request["arrayProperties"] = {"size": plan.count}
    else:
        definition["containerProperties"]["command"] += ["--task-index", "0", "--task-count", "1"]
    document = {"registerJobDefinition": definition, "submitJob": request}
    text = json.dumps(document, indent=2) + "\n"
    return FarmJob("aws-batch", name, text, plan, document)


# -- Open Job Description -----------------------------------------------------------------

_OPENJD_SCRIPT = """\
#!/bin/bash
set -u
args=(run "{{Param.JobFile}}" --task-index "{{Task.Param.Index}}" --task-count %(count)d)
if [ "{{Session.HasPathMappingRules}}" = "true" ]; then
    args+=(--path-map-rules "{{Session.PathMappingRulesFile}}")
fi
export JITRENDER_CACHE_DIR="{{Param.CacheDir}}"
exec %(run)s "${args[@]}"
"""


def _openjd(job: Job, plan: TaskPlan, options: SubmitOptions) -> FarmJob:
    name = job_name(job, options)
    script = _OPENJD_SCRIPT % {
        "count": plan.count,
        "run": shlex.join(shlex.split(options.jitrender)),
    }
    template: dict[str, Any] = {
        "specificationVersion": "jobtemplate-2023-09",
        "name": name,
        "description": (
            f"Render one jitrender job as {plan.count} tasks ({plan.frames} frames). Exit codes: "
            "0 done, 75 preempted or transient, 65 data error, 78 configuration error. OpenJD "
            "cannot key retries on exit codes: the farm's own retry count applies to all."
        ),
        "parameterDefinitions": [
            {
                "name": "JobFile",
                "type": "PATH",
                "objectType": "FILE",
                "dataFlow": "IN",
                "description": "The jitrender job.yaml.",
            },
            {
                "name": "CacheDir",
                "type": "STRING",
                "description": "Node-local folder for jitrender's shared dependency cache.",
                "default": _cache_dir(options, "/mnt/local-ssd/jitrender-cache"),
            },
        ],
        "steps": [
            {
                "name": "Render",
                "parameterSpace": {
                    "taskParameterDefinitions": [
                        {"name": "Index", "type": "INT", "range": f"0-{plan.count - 1}"}
                    ]
                },
                "hostRequirements": {
                    "amounts": [
                        {"name": "amount.worker.vcpu", "min": options.cpus},
                        {"name": "amount.worker.memory", "min": _mib(options)},
                    ],
                    "attributes": [{"name": "attr.worker.os.family", "anyOf": ["linux"]}],
                },
                "script": {
                    "embeddedFiles": [
                        {"name": "Run", "type": "TEXT", "runnable": True, "data": script}
                    ],
                    "actions": {
                        "onRun": {
                            "command": "{{Task.File.Run}}",
                            "timeout": options.time_limit_s,
                            # jitrender flushes finished uploads and exits 75 on SIGTERM.
                            "cancelation": {
                                "mode": "NOTIFY_THEN_TERMINATE",
                                "notifyPeriodInSeconds": 60,
                            },
                        }
                    },
                },
            }
        ],
    }
    values = {"parameterValues": [{"name": "JobFile", "value": _job_path(job, options)}]}
    document = yaml.dump(template, Dumper=_BlockDumper, sort_keys=False, width=100)
    files = {"parameter_values.yaml": yaml.safe_dump(values, sort_keys=False)}
    return FarmJob("openjd", name, document, plan, template, files)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the embedded script) as readable ``|`` blocks."""


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _block_strings)


def bundle_dir(job: Job, farm: FarmJob, options: SubmitOptions) -> Path:
    """The OpenJD bundle folder: ``--bundle-dir``, or ``<name>.openjd`` next to the job file."""
    if options.bundle_dir is not None:
        return options.bundle_dir
    parent = job.source.parent if job.source is not None else Path.cwd()
    return parent / f"{farm.name}.openjd"


def write_bundle(folder: Path, farm: FarmJob) -> Path:
    """Write ``template.yaml`` and ``parameter_values.yaml`` (the layout ``deadline bundle
    submit`` and ``openjd run`` read) into ``folder``; returns the folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "template.yaml").write_text(farm.document)
        for file_name, text in farm.files.items():
            (folder / file_name).write_text(text)
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot write the OpenJD bundle: {exc}") from None
    return folder


# -- submitting ---------------------------------------------------------------------------

_EXTRAS = {"kubernetes": "kubernetes", "gcp-batch": "gcp-batch", "aws-batch": "aws"}


def _missing_extra(farm: str, module: str) -> ConfigError:
    extra = _EXTRAS[farm]
    return ConfigError(
        f"--farm {farm} needs the Python package {module!r}: pip install 'jitrender[{extra}]'"
    )


def submit(job: Job, farm: FarmJob, options: SubmitOptions) -> str:
    """Hand ``farm`` to the farm's own client; returns the farm's job id. A missing client is a
    :class:`ConfigError` naming the extra to install; a refused submission is one line with
    the farm's reason (78, or 75 when the farm could not be reached)."""
    if farm.farm == "slurm":
        return _submit_slurm(job, farm, options)
    if farm.farm == "openjd":
        return _submit_openjd(job, farm, options)
    if farm.farm == "kubernetes":
        return _submit_kubernetes(farm, options)
    if farm.farm == "gcp-batch":
        return _submit_gcp_batch(farm, options)
    return _submit_aws_batch(farm, options)


def _run_client(argv: list[str], what: str) -> str:
    if shutil.which(argv[0]) is None:
        raise ConfigError(f"{argv[0]} is not on PATH: cannot submit {what}")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        raise TransientError(f"{argv[0]} did not answer within 120 s") from None
    if done.returncode != 0:
        why = " ".join((done.stderr or done.stdout).split()) or f"exit {done.returncode}"
        raise ConfigError(f"{shlex.join(argv[:3])}: {why}")
    return done.stdout


def _submit_slurm(job: Job, farm: FarmJob, options: SubmitOptions) -> str:
    logs = Path(_slurm_log_dir(job, options))
    try:
        logs.mkdir(parents=True, exist_ok=True)  # Slurm silently drops output otherwise
        script = logs / f"{farm.name}.sbatch"
        script.write_text(farm.document)
    except OSError as exc:
        raise ConfigError(f"{logs}: cannot create the Slurm log folder: {exc}") from None
    out = _run_client(["sbatch", "--parsable", str(script)], "to Slurm")
    return out.strip().split(";")[0]


def _submit_openjd(job: Job, farm: FarmJob, options: SubmitOptions) -> str:
    folder = write_bundle(bundle_dir(job, farm, options), farm)
    if shutil.which("deadline") is None:
        raise ConfigError(
            f"the Deadline Cloud CLI ('deadline', pip install deadline) is not on PATH; the "
            f"bundle is in {folder}: submit it with `deadline bundle submit {folder}` or run "
            f"it here with `openjd run {folder}/template.yaml -p JobFile={_job_path(job, options)}`"
        )
    out = _run_client(["deadline", "bundle", "submit", str(folder), "--yes"], "the bundle")
    found = re.search(r"job-[0-9a-f]{32}", out)
    return found.group(0) if found else out.strip().splitlines()[-1]


def _submit_kubernetes(farm: FarmJob, options: SubmitOptions) -> str:
    try:
        from kubernetes import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
            client,
            config,
        )
    except ImportError:
        raise _missing_extra("kubernetes", "kubernetes") from None
    try:
        config.load_config()
    except Exception as exc:  # the client raises its own ConfigException or OSError
        raise ConfigError(f"kubernetes: no cluster configuration: {exc}") from None
    try:
        for document in farm.data:
            if document["kind"] == "ConfigMap":
                client.CoreV1Api().create_namespaced_config_map(options.namespace, document)
            else:
                created = client.BatchV1Api().create_namespaced_job(options.namespace, document)
    except Exception as exc:  # ApiException carries the API server's reason
        raise _refused("kubernetes", exc) from None
    return f"{options.namespace}/{created.metadata.name} (uid {created.metadata.uid})"


def _submit_gcp_batch(farm: FarmJob, options: SubmitOptions) -> str:
    try:
        # By name: a typed google.cloud.batch_v1 would change how mypy sees google.cloud.
        batch_v1: Any = importlib.import_module("google.cloud.batch_v1")
    except ImportError:
        raise _missing_extra("gcp-batch", "google-cloud-batch") from None
    if not options.project or not options.region:
        raise ConfigError("--farm gcp-batch needs --project and --region")
    try:
        created = batch_v1.BatchServiceClient().create_job(
            parent=f"projects/{options.project}/locations/{options.region}",
            job=batch_v1.Job.from_json(json.dumps(farm.data)),
            job_id=farm.name,
        )
    except Exception as exc:  # google.api_core errors name the reason
        raise _refused("gcp-batch", exc) from None
    return str(created.name)


def _submit_aws_batch(farm: FarmJob, options: SubmitOptions) -> str:
    try:
        import boto3  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise _missing_extra("aws-batch", "boto3") from None
    try:
        batch = boto3.client("batch", region_name=options.region)
        registered = batch.register_job_definition(**farm.data["registerJobDefinition"])
        request = {**farm.data["submitJob"], "jobDefinition": registered["jobDefinitionArn"]}
        return str(batch.submit_job(**request)["jobId"])
    except Exception as exc:  # botocore's ClientError / NoCredentialsError
        raise _refused("aws-batch", exc) from None


def _refused(farm: str, exc: Exception) -> JitrenderError:
    why = " ".join(str(exc).split())[:300]
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if isinstance(status, int) and status >= 500:
        return TransientError(f"{farm}: the farm did not accept the job now: {why}")
    return ConfigError(f"{farm}: the farm refused the job: {why}")


def status_command(job: Job) -> str:
    """The command that follows the submitted job."""
    return _status_hint(job)
