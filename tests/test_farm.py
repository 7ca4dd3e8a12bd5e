"""Farm integration: which task this is, which frames it renders, and the example job
definitions in examples/farm, each checked with the engine's own schema or parser."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from jitrender.errors import ConfigError, ExitCode
from jitrender.farm import TaskSlot, detect_task, task_frames

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "farm"


def config_error(flag_index: int | None, flag_count: int | None, env: dict[str, str]) -> str:
    """The ConfigError message detect_task raises; it must be exit 78 and one line."""
    with pytest.raises(ConfigError) as caught:
        detect_task(flag_index, flag_count, env)
    assert caught.value.exit_code == ExitCode.CONFIG
    assert "\n" not in caught.value.message
    return caught.value.message


# -- detection per engine --------------------------------------------------------------------


def test_no_flags_and_no_engine_means_no_slot() -> None:
    assert detect_task(None, None, {"PATH": "/usr/bin", "HOME": "/root"}) is None


def test_flags_alone_give_the_slot() -> None:
    assert detect_task(3, 10, {}) == TaskSlot(3, 10, "--task-index/--task-count")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"BATCH_TASK_INDEX": "7", "BATCH_TASK_COUNT": "40"},
            TaskSlot(7, 40, "BATCH_TASK_INDEX/BATCH_TASK_COUNT"),
        ),
        (
            {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "2"},
            TaskSlot(0, 2, "AWS_BATCH_JOB_ARRAY_INDEX/AWS_BATCH_JOB_ARRAY_SIZE"),
        ),
        (
            {"CLOUD_RUN_TASK_INDEX": "9", "CLOUD_RUN_TASK_COUNT": "10"},
            TaskSlot(9, 10, "CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT"),
        ),
        (
            {"JOB_COMPLETION_INDEX": "39", "JITRENDER_TASK_COUNT": "40"},
            TaskSlot(39, 40, "JOB_COMPLETION_INDEX/JITRENDER_TASK_COUNT"),
        ),
    ],
    ids=["gcp-batch", "aws-batch", "cloud-run", "kubernetes"],
)
def test_each_engine_is_detected_from_its_variables(
    env: dict[str, str], expected: TaskSlot
) -> None:
    assert detect_task(None, None, env) == expected


def test_kubernetes_index_takes_its_count_from_the_flag() -> None:
    slot = detect_task(None, 40, {"JOB_COMPLETION_INDEX": "5"})
    assert slot == TaskSlot(5, 40, "JOB_COMPLETION_INDEX/--task-count")


def test_kubernetes_index_without_a_count_names_the_variable_to_set() -> None:
    message = config_error(None, None, {"JOB_COMPLETION_INDEX": "5"})
    assert "JOB_COMPLETION_INDEX=5" in message
    assert "JITRENDER_TASK_COUNT" in message


def slurm_env(task_id: int, low: int, high: int, step: int, count: int) -> dict[str, str]:
    return {
        "SLURM_ARRAY_JOB_ID": "4711",
        "SLURM_ARRAY_TASK_ID": str(task_id),
        "SLURM_ARRAY_TASK_MIN": str(low),
        "SLURM_ARRAY_TASK_MAX": str(high),
        "SLURM_ARRAY_TASK_STEP": str(step),
        "SLURM_ARRAY_TASK_COUNT": str(count),
    }


@pytest.mark.parametrize(
    ("env", "index", "count"),
    [
        (slurm_env(0, 0, 39, 1, 40), 0, 40),  # --array=0-39
        (slurm_env(40, 1, 40, 1, 40), 39, 40),  # --array=1-40: the minimum is not index 0
        (slurm_env(7, 1, 9, 2, 5), 3, 5),  # --array=1-9:2 -> ids 1,3,5,7,9
        (slurm_env(5, 5, 5, 1, 1), 0, 1),  # --array=5: one task
    ],
    ids=["0-39", "1-40", "1-9:2", "single"],
)
def test_slurm_ids_are_normalised_to_dense_zero_based_indexes(
    env: dict[str, str], index: int, count: int
) -> None:
    slot = detect_task(None, None, env)
    assert slot is not None
    assert (slot.index, slot.count) == (index, count)
    assert slot.source == "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"


def test_slurm_count_is_derived_from_min_max_step_when_count_is_absent() -> None:
    env = slurm_env(10, 0, 10, 5, 3)
    del env["SLURM_ARRAY_TASK_COUNT"]
    slot = detect_task(None, None, env)
    assert slot is not None and (slot.index, slot.count) == (2, 3)


@given(
    low=st.integers(0, 1000),
    step=st.integers(1, 20),
    count=st.integers(1, 60),
)
def test_slurm_grid_maps_onto_every_index_once(low: int, step: int, count: int) -> None:
    high = low + step * (count - 1)
    indexes = []
    for task_id in range(low, high + 1, step):
        slot = detect_task(None, None, slurm_env(task_id, low, high, step, count))
        assert slot is not None and slot.count == count
        indexes.append(slot.index)
    assert indexes == list(range(count))


def test_slurm_sparse_array_list_is_refused() -> None:
    # --array=1,2,9,22,31: five tasks spread over 1..31
    message = config_error(None, None, slurm_env(9, 1, 31, 1, 5))
    assert "SLURM_ARRAY_TASK_COUNT=5" in message
    assert "sparse" in message


def test_slurm_id_off_the_step_grid_is_refused() -> None:
    message = config_error(None, None, slurm_env(4, 1, 9, 2, 5))
    assert "SLURM_ARRAY_TASK_ID=4" in message
    assert "SLURM_ARRAY_TASK_STEP=2" in message


# -- flags and environment together ---------------------------------------------------------


def test_flags_win_over_a_disagreeing_environment() -> None:
    env = {"BATCH_TASK_INDEX": "1", "BATCH_TASK_COUNT": "4"}
    assert detect_task(7, 8, env) == TaskSlot(7, 8, "--task-index/--task-count")


def test_flags_win_even_over_a_broken_environment() -> None:
    env = {"BATCH_TASK_INDEX": "nine", "AWS_BATCH_JOB_ARRAY_INDEX": "3"}
    assert detect_task(0, 1, env) == TaskSlot(0, 1, "--task-index/--task-count")


def test_flag_index_uses_the_engines_count() -> None:
    env = {"AWS_BATCH_JOB_ARRAY_INDEX": "1", "AWS_BATCH_JOB_ARRAY_SIZE": "20"}
    assert detect_task(4, None, env) == TaskSlot(4, 20, "--task-index/AWS_BATCH_JOB_ARRAY_SIZE")


def test_flag_index_can_take_its_count_from_the_task_count_variable() -> None:
    slot = detect_task(2, None, {"JITRENDER_TASK_COUNT": "6"})
    assert slot == TaskSlot(2, 6, "--task-index/JITRENDER_TASK_COUNT")


def test_flag_count_overrides_the_engines_count() -> None:
    env = {"BATCH_TASK_INDEX": "2", "BATCH_TASK_COUNT": "4"}
    assert detect_task(None, 10, env) == TaskSlot(2, 10, "BATCH_TASK_INDEX/--task-count")


def test_engines_that_agree_are_accepted() -> None:
    env = {
        "BATCH_TASK_INDEX": "3",
        "BATCH_TASK_COUNT": "6",
        "JOB_COMPLETION_INDEX": "3",
    }
    assert detect_task(None, None, env) == TaskSlot(3, 6, "BATCH_TASK_INDEX/BATCH_TASK_COUNT")


def test_empty_variables_count_as_unset() -> None:
    assert detect_task(None, None, {"BATCH_TASK_INDEX": "", "BATCH_TASK_COUNT": " "}) is None


# -- contradictions -> exit 78, naming the variables ----------------------------------------


def test_flag_index_without_any_count_is_a_config_error() -> None:
    message = config_error(2, None, {})
    assert "--task-index=2" in message and "--task-count" in message


def test_flag_count_without_any_index_is_a_config_error() -> None:
    message = config_error(None, 5, {})
    assert "--task-count=5" in message and "--task-index" in message


GCP_FULL = {"BATCH_TASK_INDEX": "40", "BATCH_TASK_COUNT": "40"}
RUN_OVER = {"CLOUD_RUN_TASK_INDEX": "3", "CLOUD_RUN_TASK_COUNT": "2"}
K8S_FULL = {"JOB_COMPLETION_INDEX": "8", "JITRENDER_TASK_COUNT": "8"}
AWS_FOUR = {"AWS_BATCH_JOB_ARRAY_INDEX": "0", "AWS_BATCH_JOB_ARRAY_SIZE": "4"}
GCP_NINE = {"BATCH_TASK_INDEX": "3", "BATCH_TASK_COUNT": "9"}


@pytest.mark.parametrize(
    ("flag_index", "flag_count", "env", "names"),
    [
        pytest.param(
            None, None, GCP_FULL, ["BATCH_TASK_INDEX=40", "BATCH_TASK_COUNT=40"], id="gcp"
        ),
        pytest.param(
            None, None, RUN_OVER, ["CLOUD_RUN_TASK_INDEX=3", "CLOUD_RUN_TASK_COUNT=2"], id="run"
        ),
        pytest.param(
            None, None, K8S_FULL, ["JOB_COMPLETION_INDEX=8", "JITRENDER_TASK_COUNT=8"], id="k8s"
        ),
        pytest.param(5, 5, {}, ["--task-index=5", "--task-count=5"], id="flags"),
        pytest.param(
            9, None, AWS_FOUR, ["--task-index=9", "AWS_BATCH_JOB_ARRAY_SIZE=4"], id="flag-index"
        ),
        pytest.param(None, 2, GCP_NINE, ["BATCH_TASK_INDEX=3", "--task-count=2"], id="flag-count"),
    ],
)
def test_index_not_below_count_names_both_values(
    flag_index: int | None, flag_count: int | None, env: dict[str, str], names: list[str]
) -> None:
    message = config_error(flag_index, flag_count, env)
    for name in names:
        assert name in message


AWS_NEGATIVE = {"AWS_BATCH_JOB_ARRAY_INDEX": "-2", "AWS_BATCH_JOB_ARRAY_SIZE": "4"}
GCP_ZERO = {"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "0"}


@pytest.mark.parametrize(
    ("flag_index", "flag_count", "env", "name"),
    [
        pytest.param(-1, 4, {}, "--task-index=-1", id="negative-flag"),
        pytest.param(None, None, AWS_NEGATIVE, "AWS_BATCH_JOB_ARRAY_INDEX=-2", id="negative-env"),
        pytest.param(0, 0, {}, "--task-count=0", id="zero-count-flag"),
        pytest.param(None, None, GCP_ZERO, "BATCH_TASK_COUNT=0", id="zero-count-env"),
    ],
)
def test_negative_index_or_empty_count_is_a_config_error(
    flag_index: int | None, flag_count: int | None, env: dict[str, str], name: str
) -> None:
    assert name in config_error(flag_index, flag_count, env)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (  # on the index
            {"BATCH_TASK_INDEX": "1", "BATCH_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "2"}
            | {"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}
            | {"SLURM_ARRAY_TASK_MAX": "3"},
            ("BATCH_TASK_INDEX=1", "SLURM_ARRAY_TASK_ID=2"),
        ),
        (  # on the count
            {"BATCH_TASK_INDEX": "1", "BATCH_TASK_COUNT": "4", "CLOUD_RUN_TASK_INDEX": "1"}
            | {"CLOUD_RUN_TASK_COUNT": "5"},
            ("BATCH_TASK_COUNT=4", "CLOUD_RUN_TASK_COUNT=5"),
        ),
    ],
)
def test_two_engines_disagreeing_name_both_variables(
    env: dict[str, str], named: tuple[str, str]
) -> None:
    message = config_error(None, None, env)
    assert all(variable in message for variable in named), message


def test_task_count_variable_disagreeing_with_the_engine_is_a_config_error() -> None:
    env = {"BATCH_TASK_INDEX": "1", "BATCH_TASK_COUNT": "4", "JITRENDER_TASK_COUNT": "8"}
    message = config_error(None, None, env)
    assert "JITRENDER_TASK_COUNT=8" in message and "BATCH_TASK_COUNT=4" in message


def test_a_non_integer_variable_is_named_with_its_value() -> None:
    message = config_error(None, None, {"BATCH_TASK_INDEX": "seven", "BATCH_TASK_COUNT": "8"})
    assert "BATCH_TASK_INDEX='seven'" in message


# -- task_frames -----------------------------------------------------------------------------


def slices(frames: list[int], count: int, chunk: int | None) -> list[list[int]]:
    return [task_frames(frames, TaskSlot(i, count, "test"), chunk) for i in range(count)]


def test_even_split_gives_the_first_tasks_one_frame_more() -> None:
    frames = list(range(1001, 1101))
    parts = slices(frames, 40, None)
    assert [len(p) for p in parts] == [3] * 20 + [2] * 20
    assert parts[0] == [1001, 1002, 1003]
    assert parts[39] == [1099, 1100]


def test_chunked_split_follows_the_chunk_size() -> None:
    frames = list(range(1, 11))
    assert slices(frames, 4, 3) == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]


def test_chunked_split_with_too_few_tasks_is_a_config_error_naming_the_source() -> None:
    with pytest.raises(ConfigError) as caught:
        task_frames(list(range(1, 101)), TaskSlot(0, 8, "BATCH_TASK_INDEX/BATCH_TASK_COUNT"), 10)
    assert caught.value.exit_code == ExitCode.CONFIG
    assert "BATCH_TASK_COUNT" in caught.value.message
    assert "81" in caught.value.message  # the first frame no task would render


def test_tasks_beyond_the_frames_get_nothing_to_do() -> None:
    assert slices([1, 2, 3], 5, None) == [[1], [2], [3], [], []]
    assert slices([1, 2, 3], 5, 2) == [[1, 2], [3], [], [], []]


def test_frame_order_of_the_job_is_kept() -> None:
    assert slices([10, 1, 5, 3], 2, None) == [[10, 1], [5, 3]]


@given(
    frames=st.lists(st.integers(-10_000, 100_000), unique=True, max_size=300),
    count=st.integers(1, 64),
)
def test_even_split_covers_every_frame_exactly_once_in_order(frames: list[int], count: int) -> None:
    parts = slices(frames, count, None)
    assert [f for part in parts for f in part] == frames
    lengths = [len(p) for p in parts]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)


@given(
    frames=st.lists(st.integers(-10_000, 100_000), unique=True, max_size=300),
    chunk=st.integers(1, 50),
    extra=st.integers(0, 5),
)
def test_chunked_split_covers_every_frame_exactly_once_in_order(
    frames: list[int], chunk: int, extra: int
) -> None:
    count = max(1, -(-len(frames) // chunk)) + extra
    parts = slices(frames, count, chunk)
    assert [f for part in parts for f in part] == frames
    assert all(len(p) <= chunk for p in parts)


def test_a_slot_outside_its_count_cannot_be_built() -> None:
    with pytest.raises(ConfigError):
        TaskSlot(4, 4, "test")


# -- examples/farm ---------------------------------------------------------------------------


def test_farm_examples_are_all_present() -> None:
    names = {p.name for p in EXAMPLES.iterdir()}
    assert names >= {
        "README.md",
        "gcp-batch.json",
        "k8s-indexed-job.yaml",
        "aws-batch.json",
        "slurm.sbatch",
        "openjd",
        "job.yaml",
        "generate.sh",
    }


def test_readme_has_the_exit_code_table() -> None:
    text = (EXAMPLES / "README.md").read_text()
    for code in ("| 0 |", "| 75 |", "| 65 |", "| 78 |"):
        assert code in text


def load_k8s() -> dict[str, Any]:
    """The Job of the example (the ConfigMap carrying the job file comes first)."""
    documents = list(yaml.safe_load_all((EXAMPLES / "k8s-indexed-job.yaml").read_text()))
    (job,) = [d for d in documents if d["kind"] == "Job"]
    data: dict[str, Any] = job
    return data


@pytest.mark.parametrize("version", ["1.29.0", "1.31.0", "1.33.0", "1.35.0", "1.37.0"])
def test_k8s_job_validates_against_the_kubernetes_api_schema(version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(load_k8s(), version, strict=True)


def test_k8s_job_retries_preemption_and_fails_the_index_on_65_and_78() -> None:
    job = load_k8s()
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["completionMode"] == "Indexed"
    assert spec["backoffLimitPerIndex"] >= 1
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] >= 15
    rules = spec["podFailurePolicy"]["rules"]
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert any(c["type"] == "DisruptionTarget" for r in ignore for c in r["onPodConditions"])
    (fail_index,) = [r for r in rules if r["action"] == "FailIndex"]
    assert fail_index["onExitCodes"]["operator"] == "In"
    assert set(fail_index["onExitCodes"]["values"]) == {65, 78}
    assert fail_index["onExitCodes"]["containerName"] == container["name"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["JITRENDER_TASK_COUNT"]) == spec["completions"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The cache folder is jitrender's own, below the volume's mount point.
    cache_parent = str(Path(env["JITRENDER_CACHE_DIR"]).parent)
    cache = next(name for name, path in mounts.items() if path == cache_parent)
    assert "emptyDir" in volumes[cache]
    last = spec["completions"] - 1
    pod_env = {"JOB_COMPLETION_INDEX": str(last), **env}
    assert detect_task(None, None, pod_env) == TaskSlot(
        last, spec["completions"], "JOB_COMPLETION_INDEX/JITRENDER_TASK_COUNT"
    )


def load_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return data


def test_gcp_batch_job_parses_as_a_batch_v1_job() -> None:
    from google.cloud import batch_v1
    from google.protobuf import json_format

    job = batch_v1.Job.pb()()
    json_format.ParseDict(load_json("gcp-batch.json"), job)  # unknown fields raise
    group = job.task_groups[0]
    assert group.task_count == 40 and group.parallelism >= 1
    policy = job.allocation_policy.instances[0].policy
    assert policy.provisioning_model == batch_v1.AllocationPolicy.ProvisioningModel.SPOT
    actions = {
        batch_v1.LifecyclePolicy.Action(p.action).name: set(p.action_condition.exit_codes)
        for p in group.task_spec.lifecycle_policies
    }
    assert actions["RETRY_TASK"] >= {50001, 75}
    assert actions["FAIL_TASK"] == {65, 78}
    assert group.task_spec.max_retry_count >= 1
    (ssd,) = [d for d in policy.disks if d.new_disk.type_ == "local-ssd"]
    (volume,) = [v for v in group.task_spec.volumes if v.device_name == ssd.device_name]
    cache_dir = Path(group.task_spec.environment.variables["JITRENDER_CACHE_DIR"])
    assert str(cache_dir.parent) == volume.mount_path


def test_aws_batch_requests_validate_against_the_batch_api_model() -> None:
    import botocore.session
    from botocore.validate import validate_parameters

    document = load_json("aws-batch.json")
    model = botocore.session.get_session().get_service_model("batch")
    validate_parameters(
        document["registerJobDefinition"],
        model.operation_model("RegisterJobDefinition").input_shape,
    )
    validate_parameters(document["submitJob"], model.operation_model("SubmitJob").input_shape)


def test_aws_batch_retries_75_and_lost_hosts_and_exits_on_65_and_78() -> None:
    document = load_json("aws-batch.json")
    strategy = document["registerJobDefinition"]["retryStrategy"]
    rules = strategy["evaluateOnExit"]
    assert 1 < strategy["attempts"] <= 10 and len(rules) <= 5
    retry_codes = {r.get("onExitCode") for r in rules if r["action"] == "RETRY"}
    exit_codes = {r.get("onExitCode") for r in rules if r["action"] == "EXIT"}
    assert "75" in retry_codes
    assert {"65", "78"} <= exit_codes
    assert any(
        r["action"] == "RETRY" and r.get("onStatusReason", "").startswith("Host EC2") for r in rules
    )
    assert rules[-1] == {"action": "EXIT", "onReason": "*"}  # unmatched failures do not retry
    size = document["submitJob"]["arrayProperties"]["size"]
    assert 2 <= size <= 10_000
    env = {"AWS_BATCH_JOB_ARRAY_INDEX": str(size - 1), "AWS_BATCH_JOB_ARRAY_SIZE": str(size)}
    assert detect_task(None, None, env) is not None


SLURM = EXAMPLES / "slurm.sbatch"


def sbatch_options() -> dict[str, str]:
    options = {}
    for line in SLURM.read_text().splitlines():
        if line.startswith("#SBATCH "):
            name, _, value = line.removeprefix("#SBATCH ").strip().partition("=")
            options[name] = value
    return options


def test_slurm_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SLURM)], check=True)


def test_slurm_script_asks_for_a_dense_requeueable_array_with_a_warning_signal() -> None:
    options = sbatch_options()
    assert "--requeue" in options
    assert re.fullmatch(r"\d+-\d+(:\d+)?(%\d+)?", options["--array"])
    assert re.fullmatch(r"B:TERM@\d+", options["--signal"])
    assert options["--open-mode"] == "append"


@pytest.fixture
def fake_slurm_node(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A PATH with a stand-in ``jitrender`` and ``scontrol``, and the array task's environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    jitrender = bin_dir / "jitrender"
    jitrender.write_text(
        "#!/bin/bash\n"
        'echo "$@" > "$FAKE_DIR/argv"\n'
        'echo "$JITRENDER_CACHE_DIR" > "$FAKE_DIR/cache"\n'
        "trap 'exit 75' TERM\n"
        'if [ "$FAKE_EXIT" = wait ]; then\n'
        '    touch "$FAKE_DIR/ready"; while :; do sleep 0.1; done\n'
        "fi\n"
        'exit "$FAKE_EXIT"\n'
    )
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/bash\necho "$@" >> "$FAKE_DIR/scontrol"\n')
    for tool in (jitrender, scontrol):
        tool.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_DIR": str(tmp_path),
        "JOB_YAML": "/jobs/sh010/job.yaml",
        "JITRENDER_CACHE_DIR": str(tmp_path / "cache"),
        "SLURM_ARRAY_JOB_ID": "4711",
        "SLURM_ARRAY_TASK_ID": "3",
    }
    return tmp_path, env


@pytest.mark.parametrize(("code", "requeued"), [(0, False), (75, True), (65, False), (78, False)])
def test_slurm_script_passes_the_exit_code_on_and_requeues_only_75(
    fake_slurm_node: tuple[Path, dict[str, str]], code: int, requeued: bool
) -> None:
    fake_dir, env = fake_slurm_node
    result = subprocess.run(
        ["bash", str(SLURM)], env={**env, "FAKE_EXIT": str(code)}, capture_output=True, timeout=30
    )
    assert result.returncode == code
    assert (fake_dir / "argv").read_text().split() == ["run", "/jobs/sh010/job.yaml"]
    assert (fake_dir / "cache").read_text().strip() == env["JITRENDER_CACHE_DIR"]
    log = fake_dir / "scontrol"
    assert (log.exists() and log.read_text().split() == ["requeue", "4711_3"]) == requeued


def test_slurm_script_stops_requeueing_after_the_limit(
    fake_slurm_node: tuple[Path, dict[str, str]],
) -> None:
    fake_dir, env = fake_slurm_node
    env = {**env, "FAKE_EXIT": "75", "SLURM_RESTART_COUNT": "3"}
    result = subprocess.run(["bash", str(SLURM)], env=env, capture_output=True, timeout=30)
    assert result.returncode == 75
    assert not (fake_dir / "scontrol").exists()


def test_slurm_script_forwards_sigterm_to_jitrender(
    fake_slurm_node: tuple[Path, dict[str, str]],
) -> None:
    fake_dir, env = fake_slurm_node
    script = subprocess.Popen(["bash", str(SLURM)], env={**env, "FAKE_EXIT": "wait"})
    deadline = time.monotonic() + 20
    while not (fake_dir / "ready").exists():
        assert time.monotonic() < deadline, "stand-in jitrender never started"
        time.sleep(0.05)
    script.send_signal(signal.SIGTERM)
    assert script.wait(timeout=20) == 75
    assert (fake_dir / "scontrol").read_text().split() == ["requeue", "4711_3"]


OPENJD = EXAMPLES / "openjd" / "template.yaml"


def test_openjd_template_validates_and_has_one_task_per_index() -> None:
    from openjd.model import (
        ParameterValue,
        ParameterValueType,
        StepParameterSpaceIterator,
        create_job,
        decode_job_template,
    )

    document = yaml.safe_load(OPENJD.read_text())
    assert document["specificationVersion"] == "jobtemplate-2023-09"
    template = decode_job_template(template=document)
    job = create_job(
        job_template=template,
        job_parameter_values={
            "JobFile": ParameterValue(type=ParameterValueType.PATH, value="/jobs/job.yaml")
        },
    )
    (step,) = job.steps
    assert step.parameterSpace is not None
    indexes = [
        int(task["Index"].value) for task in StepParameterSpaceIterator(space=step.parameterSpace)
    ]
    script = document["steps"][0]["script"]["embeddedFiles"][0]["data"]
    count = int(re.search(r"--task-count (\d+)", script).group(1))  # type: ignore[union-attr]
    assert indexes == list(range(count))
    assert '--task-index "{{Task.Param.Index}}"' in script
    assert '--path-map-rules "{{Session.PathMappingRulesFile}}"' in script


def test_openjd_validator_rejects_a_misspelt_reference() -> None:
    from openjd.model import DecodeValidationError, decode_job_template

    document = yaml.safe_load(OPENJD.read_text().replace("Task.Param.Index", "Task.Param.Idx"))
    with pytest.raises(DecodeValidationError):
        decode_job_template(template=document)


def test_openjd_embedded_script_is_valid_bash(tmp_path: Path) -> None:
    document = yaml.safe_load(OPENJD.read_text())
    script = document["steps"][0]["script"]["embeddedFiles"][0]["data"]
    resolved = re.sub(r"\{\{[^}]+\}\}", "x", script)
    target = tmp_path / "run.sh"
    target.write_text(resolved)
    subprocess.run(["bash", "-n", str(target)], check=True)
    assert script.startswith("#!/bin/bash\n")
