"""Which slice of a job this farm task renders: the task index and count, and its frames.

A farm runs one job as N tasks of the same command; each task learns its index from flags
(``--task-index/--task-count``) or from the variables its engine exports:

=====================  ==============================  =======================================
engine                 index                           count
=====================  ==============================  =======================================
GCP Batch              ``BATCH_TASK_INDEX``            ``BATCH_TASK_COUNT``
Kubernetes Indexed Job ``JOB_COMPLETION_INDEX``        ``JITRENDER_TASK_COUNT`` or
                                                       ``--task-count`` (Kubernetes exports no
                                                       completions count: set the variable to
                                                       ``spec.completions``)
AWS Batch array job    ``AWS_BATCH_JOB_ARRAY_INDEX``   ``AWS_BATCH_JOB_ARRAY_SIZE``
Slurm job array        ``SLURM_ARRAY_TASK_ID``         ``SLURM_ARRAY_TASK_COUNT``, normalised
                                                       with ``SLURM_ARRAY_TASK_MIN``/``MAX``/
                                                       ``STEP`` so ``--array=1-9:2`` gives
                                                       indexes 0..4 of 5
Cloud Run job          ``CLOUD_RUN_TASK_INDEX``        ``CLOUD_RUN_TASK_COUNT``
=====================  ==============================  =======================================

``JITRENDER_TASK_COUNT`` also supplies the count to any engine that exports an index without
one, and to a lone ``--task-index``. Every contradiction is a :class:`ConfigError` (exit 78)
whose one line names the variables and their values: a farm that retries a misconfigured task
would only fail again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from jitrender.errors import ConfigError

FLAG_SOURCE = "--task-index/--task-count"
COUNT_VARIABLE = "JITRENDER_TASK_COUNT"


@dataclass(frozen=True)
class TaskSlot:
    """This task's 0-based ``index`` among ``count`` tasks; ``source`` names where each came
    from, as ``<index source>/<count source>`` (``"BATCH_TASK_INDEX/BATCH_TASK_COUNT"``,
    ``"--task-index/--task-count"``, ``"JOB_COMPLETION_INDEX/JITRENDER_TASK_COUNT"``)."""

    index: int
    count: int
    source: str

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(
                f"task slot from {self.source}: index {self.index} is not in 0..count-1 "
                f"for count {self.count}"
            )


@dataclass(frozen=True)
class _Reading:
    """What one engine's variables say, with the ``NAME=value`` text to quote in errors."""

    engine: str
    index: int
    index_text: str
    index_name: str
    count: int | None = None
    count_text: str | None = None
    count_name: str | None = None


# What the task count is, in each engine's own words, for the error that asks for it.
_COUNT_IS = {
    "Kubernetes Indexed Job": "the Job's completions",
    "Slurm job array": "the array's size",
    "AWS Batch array job": "the array job's size",
}


def _value(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value, or None when unset or empty (an exported empty name says nothing)."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return None
    return raw.strip()


def _integer(env: Mapping[str, str], name: str) -> int | None:
    raw = _value(env, name)
    if raw is None:
        return None
    try:
        return int(raw, 10)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def _simple(
    engine: str, index_name: str, count_name: str
) -> Callable[[Mapping[str, str]], _Reading | None]:
    """A detector for engines that export a 0-based index and a count as two variables."""

    def detect(env: Mapping[str, str]) -> _Reading | None:
        index = _integer(env, index_name)
        if index is None:
            return None
        count = _integer(env, count_name)
        return _Reading(
            engine,
            index,
            f"{index_name}={index}",
            index_name,
            count,
            f"{count_name}={count}" if count is not None else None,
            count_name if count is not None else None,
        )

    return detect


def _kubernetes(env: Mapping[str, str]) -> _Reading | None:
    index = _integer(env, "JOB_COMPLETION_INDEX")
    if index is None:
        return None
    # The Job API puts only the index in the pod; the count has to be passed in by hand.
    return _Reading(
        "Kubernetes Indexed Job", index, f"JOB_COMPLETION_INDEX={index}", "JOB_COMPLETION_INDEX"
    )


def _slurm(env: Mapping[str, str]) -> _Reading | None:
    task_id = _integer(env, "SLURM_ARRAY_TASK_ID")
    if task_id is None:
        return None
    low = _integer(env, "SLURM_ARRAY_TASK_MIN")
    high = _integer(env, "SLURM_ARRAY_TASK_MAX")
    step = _integer(env, "SLURM_ARRAY_TASK_STEP")
    count = _integer(env, "SLURM_ARRAY_TASK_COUNT")
    first = 0 if low is None else low
    stride = 1 if step is None else step
    described = f"SLURM_ARRAY_TASK_ID={task_id}" + (
        f" (SLURM_ARRAY_TASK_MIN={low}, SLURM_ARRAY_TASK_STEP={stride})" if low is not None else ""
    )
    if stride < 1:
        raise ConfigError(f"SLURM_ARRAY_TASK_STEP={stride} must be at least 1")
    if task_id < first or (task_id - first) % stride:
        raise ConfigError(
            f"SLURM_ARRAY_TASK_ID={task_id} is not on the array's grid "
            f"SLURM_ARRAY_TASK_MIN={first}, SLURM_ARRAY_TASK_STEP={stride}"
        )
    dense: int | None = None
    if high is not None:
        if high < first or (high - first) % stride:
            raise ConfigError(
                f"SLURM_ARRAY_TASK_MAX={high} is not on the array's grid "
                f"SLURM_ARRAY_TASK_MIN={first}, SLURM_ARRAY_TASK_STEP={stride}"
            )
        dense = (high - first) // stride + 1
    if count is not None and dense is not None and count != dense:
        # A list like --array=1,2,9 has holes: indexes would not map onto contiguous chunks.
        raise ConfigError(
            f"SLURM_ARRAY_TASK_COUNT={count} but SLURM_ARRAY_TASK_MIN={first}, "
            f"SLURM_ARRAY_TASK_MAX={high}, SLURM_ARRAY_TASK_STEP={stride} span {dense} tasks: "
            "a sparse --array list cannot be split; use a range (--array=0-N) or pass "
            "--task-index/--task-count"
        )
    count_text: str | None = None
    count_name: str | None = None
    if count is not None:
        count_text, count_name = f"SLURM_ARRAY_TASK_COUNT={count}", "SLURM_ARRAY_TASK_COUNT"
    elif dense is not None:
        count = dense
        count_text = f"SLURM_ARRAY_TASK_MIN={first}..SLURM_ARRAY_TASK_MAX={high} step {stride}"
        count_name = "SLURM_ARRAY_TASK_MAX"
    return _Reading(
        "Slurm job array",
        (task_id - first) // stride,
        described,
        "SLURM_ARRAY_TASK_ID",
        count,
        count_text,
        count_name,
    )


_ENGINES: tuple[Callable[[Mapping[str, str]], _Reading | None], ...] = (
    _simple("GCP Batch", "BATCH_TASK_INDEX", "BATCH_TASK_COUNT"),
    _kubernetes,
    _simple("AWS Batch array job", "AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE"),
    _slurm,
    _simple("Cloud Run job", "CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_COUNT"),
)


def _from_environment(env: Mapping[str, str]) -> _Reading | None:
    """The one task position the engines' variables agree on, with the count filled in from
    ``JITRENDER_TASK_COUNT`` when the engine exports none."""
    readings = [reading for detect in _ENGINES if (reading := detect(env)) is not None]
    if not readings:
        return None
    chosen = readings[0]
    for other in readings[1:]:
        if other.index != chosen.index:
            raise ConfigError(
                f"two farm engines disagree on the task index: {chosen.index_text} "
                f"({chosen.engine}) vs {other.index_text} ({other.engine})"
            )
        if other.count is not None:
            if chosen.count is None:
                chosen = _Reading(
                    chosen.engine,
                    chosen.index,
                    chosen.index_text,
                    chosen.index_name,
                    other.count,
                    other.count_text,
                    other.count_name,
                )
            elif other.count != chosen.count:
                raise ConfigError(
                    f"two farm engines disagree on the task count: {chosen.count_text} "
                    f"({chosen.engine}) vs {other.count_text} ({other.engine})"
                )
    override = _integer(env, COUNT_VARIABLE)
    if override is not None:
        if chosen.count is None:
            return _Reading(
                chosen.engine,
                chosen.index,
                chosen.index_text,
                chosen.index_name,
                override,
                f"{COUNT_VARIABLE}={override}",
                COUNT_VARIABLE,
            )
        if override != chosen.count:
            raise ConfigError(
                f"{COUNT_VARIABLE}={override} disagrees with {chosen.count_text} "
                f"({chosen.engine}); unset one of them"
            )
    return chosen


def _checked(index: int, count: int, index_text: str, count_text: str, source: str) -> TaskSlot:
    if count < 1:
        raise ConfigError(f"task count must be at least 1: {count_text}")
    if index < 0:
        raise ConfigError(f"task index must not be negative: {index_text}")
    if index >= count:
        raise ConfigError(
            f"task index out of range: {index_text} is not below {count_text} (indexes are 0-based)"
        )
    return TaskSlot(index, count, source)


def detect_task(
    flag_index: int | None, flag_count: int | None, env: Mapping[str, str]
) -> TaskSlot | None:
    """This task's slot, or None when neither flags nor any farm engine name one (a plain run
    renders every frame).

    Flags win over the environment, each separately: ``--task-index`` with the engine's count,
    or the engine's index with ``--task-count``, is fine. A flag with no partner anywhere, an
    index outside ``0..count-1``, a count below 1, two engines' variables disagreeing or a
    malformed variable raise :class:`ConfigError`.
    """
    if flag_index is not None and flag_count is not None:
        return _checked(
            flag_index,
            flag_count,
            f"--task-index={flag_index}",
            f"--task-count={flag_count}",
            FLAG_SOURCE,
        )
    reading = _from_environment(env)
    if flag_index is not None:
        if reading is not None and reading.count_text is not None and reading.count_name:
            count, count_text, count_name = reading.count, reading.count_text, reading.count_name
        else:
            count = _integer(env, COUNT_VARIABLE)
            count_text, count_name = f"{COUNT_VARIABLE}={count}", COUNT_VARIABLE
        if count is None:
            raise ConfigError(
                f"--task-index={flag_index} needs --task-count (or {COUNT_VARIABLE}): no farm "
                "engine's task count is in the environment"
            )
        return _checked(
            flag_index,
            count,
            f"--task-index={flag_index}",
            count_text,
            f"--task-index/{count_name}",
        )
    if reading is None:
        if flag_count is not None:
            raise ConfigError(
                f"--task-count={flag_count} needs --task-index (no farm engine's task index "
                "is in the environment)"
            )
        return None
    if flag_count is not None:
        return _checked(
            reading.index,
            flag_count,
            reading.index_text,
            f"--task-count={flag_count}",
            f"{reading.index_name}/--task-count",
        )
    if reading.count is None or reading.count_text is None or reading.count_name is None:
        size = _COUNT_IS.get(reading.engine, "the number of tasks")
        raise ConfigError(
            f"{reading.index_text} ({reading.engine}) but no task count: set "
            f"{COUNT_VARIABLE} (to {size}) or pass --task-count"
        )
    return _checked(
        reading.index,
        reading.count,
        reading.index_text,
        reading.count_text,
        f"{reading.index_name}/{reading.count_name}",
    )


def task_frames(frames: Sequence[int], slot: TaskSlot, chunk: int | None) -> list[int]:
    """The contiguous run of ``frames`` (in the job's order) that task ``slot`` renders.

    With ``chunk`` (frames per task) task *i* gets ``frames[i*chunk:(i+1)*chunk]``, and
    ``slot.count`` must cover every chunk. Without it the frames split into ``slot.count`` runs
    as even as can be, the first ones one frame longer. Deterministic: every task of a job
    computes the same split, so the runs of all indexes cover the frames exactly once. A task
    past the last frame gets ``[]`` (more tasks than frames is legitimate).
    """
    total = len(frames)
    if chunk is not None:
        if chunk < 1:
            raise ConfigError(f"chunk must be at least 1 frame per task, not {chunk}")
        needed = -(-total // chunk)
        if slot.count < needed:
            raise ConfigError(
                f"chunk {chunk} splits {total} frames into {needed} tasks but the task count "
                f"is {slot.count} ({slot.source}): frames from {frames[slot.count * chunk]} on "
                "would never render; raise the task count or the chunk"
            )
        return list(frames[slot.index * chunk : (slot.index + 1) * chunk])
    base, longer = divmod(total, slot.count)
    start = slot.index * base + min(slot.index, longer)
    length = base + (1 if slot.index < longer else 0)
    return list(frames[start : start + length])


def task_parts(
    frames: Sequence[int], parts: int, slot: TaskSlot, chunk: int | None
) -> list[tuple[int, int]]:
    """The (frame, part) pairs task ``slot`` renders of a split job whose frames have ``parts``
    parts each: the pairs in frame-then-part order, spread over the tasks exactly as
    :func:`task_frames` spreads frames (``chunk`` counts pairs per task)."""
    pairs = [(frame, part) for frame in frames for part in range(parts)]
    return [pairs[i] for i in task_frames(range(len(pairs)), slot, chunk)]
