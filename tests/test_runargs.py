"""``jitrender run``'s arguments are read the same with or without typer.

:mod:`jitrender.runcmd` reads plain argument lists itself (typer builds pydantic adapters on
every start) and hands everything else to typer, which stays the command's definition. These
tests hold the two together: the option table against typer's own options, and every
generated argument list (with the two environment variables set, empty or unset) against what
typer passes the command, wherever runcmd reads it at all. A list runcmd reads that typer
refuses, or reads otherwise, fails here.

The run itself through both ways: the last test here (a list typer reads), and every other
``jitrender run`` test (plain lists: runcmd).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.main import get_command

from jitrender import cli, runcmd
from tests.renderjobs import bucket_objects, expected_output, jitrender_env, make_job, run

ENV_NAMES = ("JITRENDER_CACHE_DIR", "JITRENDER_HEARTBEAT_INTERVAL")


class _Called(Exception):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs


def _capture(**kwargs: Any) -> Any:
    raise _Called(kwargs)


def _typer_reads(args: list[str], env: dict[str, str]) -> dict[str, Any] | None:
    """The keyword arguments typer calls ``run_command`` with, or None where it refuses."""
    clean = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    with (
        mock.patch.dict(os.environ, {**clean, **env}, clear=True),
        mock.patch.object(runcmd, "run_command", _capture),
    ):
        try:
            get_command(cli.app).main(args=["run", *args], standalone_mode=False, obj=None)
        except _Called as called:
            kwargs = called.kwargs
            kwargs.pop("stop"), kwargs.pop("early")
            return kwargs
        except Exception:  # usage errors (click's), and typer's own
            return None
    raise AssertionError("typer neither called the command nor refused")


def test_the_table_is_typers_options() -> None:
    """Each option runcmd knows is one of typer's, with its names, default and variable;
    typer has no option that runcmd does not know (a new one would be read as unknown, so
    typer would get every list naming it: correct, but the table should say it)."""
    command: Any = get_command(cli.app)
    params = {p.name: p for p in command.commands["run"].params}
    assert params.pop("job_file").param_type_name == "argument"
    names: dict[str, list[str]] = {}
    for name, (param, kind, default, envvar) in runcmd.OPTIONS.items():
        names.setdefault(param, []).append(name)
        option = params[param]
        assert option.default == default, name
        assert option.envvar == envvar, name
        assert option.multiple == (kind == "texts"), name
        assert option.is_flag == (kind == "flag"), name
    for short, name in runcmd.SHORT.items():
        names[runcmd.OPTIONS[name][0]].append(short)
    assert set(names) == set(params), set(params) ^ set(names)
    for param, option in params.items():
        assert set(option.opts) == set(names[param]), param


_NAMES = [*runcmd.OPTIONS, *runcmd.SHORT, "--no-overwrite", "--help", "-h", "--bogus", "-x"]
_VALUES = [
    "1001-1010", "1", "0", "007", "12", "3.0", "2.5", "1e3", "-1", "+4", " 5", "10x", "",
    "=", "a b", "~/job.yaml", "./x/", "x//y", "/abs/path", "200GB", "quiet", "json", "nan",
    "inf", "１２", "1_000", "--json", "-", "a=b", "/mnt/show=gs://show",
]  # fmt: skip
_ARG = st.one_of(
    st.sampled_from(_NAMES),
    st.sampled_from(_VALUES),
    st.builds(lambda n, v: f"{n}={v}", st.sampled_from(_NAMES), st.sampled_from(_VALUES)),
    st.just("job.yaml"),
    st.just("--"),
)


def _pair(name: str) -> st.SearchStrategy[list[str]]:
    kind = runcmd.OPTIONS[runcmd.SHORT.get(name, name)][1]
    if kind == "flag":
        return st.just([name])
    value = st.sampled_from(_VALUES)
    return st.one_of(value.map(lambda v: [name, v]), value.map(lambda v: [f"{name}={v}"]))


# Lists mostly of the run's own options with a value each, the job somewhere among them.
_PAIRS = st.lists(st.sampled_from([*runcmd.OPTIONS, *runcmd.SHORT]).flatmap(_pair), max_size=5)
_LIST = st.tuples(_PAIRS, st.integers(0, 5)).map(
    lambda t: (
        [a for pair in t[0][: t[1]] for a in pair]
        + ["job.yaml"]
        + [a for pair in t[0][t[1] :] for a in pair]
    )
)
_ENV = st.dictionaries(st.sampled_from(ENV_NAMES), st.sampled_from(["", "/c", "2", "0.5", "x"]))


def _same(args: list[str], env: dict[str, str]) -> None:
    fast = runcmd.parse(args, env)
    if fast is None:
        return  # typer's to read, whatever it makes of it
    assert _typer_reads(args, env) == fast, (args, env)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(_ARG, max_size=7), _LIST), _ENV)
@example(["job.yaml", "--frames", "1-3", "--progress", "quiet"], {})
@example(["--cache-dir", "/c", "job.yaml", "-f", "4", "--path-map", "a=b", "--path-map=c=d"], {})
@example(["job.yaml", "--heartbeat-interval=2.5", "--task-index", "007", "--json"], {})
@example(["job.yaml", "--frames", "1", "--frames", "2"], {"JITRENDER_CACHE_DIR": ""})
@example(["--", "job.yaml"], {"JITRENDER_HEARTBEAT_INTERVAL": "0.5"})
def test_runcmd_reads_every_list_as_typer_does(args: list[str], env: dict[str, str]) -> None:
    _same(args, env)


@pytest.mark.parametrize(
    "args",
    [
        ["job.yaml", "--frames", "1-3", "--progress", "quiet", "--report", "r.json"],
        ["job.yaml", "--task-index", "2", "--task-count", "4", "--cache-max-size", "2GB"],
        ["--mount", "/m", "--path-map-rules", "rules.json", "job.yaml", "--overwrite"],
    ],
)
def test_plain_lists_are_read_without_typer(args: list[str]) -> None:
    """What farms pass is read by runcmd (so these lists are what the test above compares)."""
    parsed = runcmd.parse(args, {})
    assert parsed is not None and parsed["job_file"] == Path("job.yaml")
    _same(args, {})


@pytest.mark.parametrize(
    "args",
    [
        ["job.yaml", "--help"],
        ["job.yaml", "--no-overwrite"],
        ["job.yaml", "--frames"],
        ["job.yaml", "--frames", "-5"],
        ["job.yaml", "--task-index", "+1"],
        ["job.yaml", "--heartbeat-interval", "1e1"],
        ["job.yaml", "--json=yes"],
        ["job.yaml", "other.yaml"],
        [],
        ["-f=1", "job.yaml"],
        ["job.yaml", "--fram", "1"],
    ],
)
def test_other_lists_go_to_typer(args: list[str]) -> None:
    assert runcmd.parse(args, {}) is None


@pytest.mark.parametrize("typer_reads", [False, True])
def test_a_run_ends_the_same_whichever_reads_its_arguments(
    typer_reads: bool, gcs_bucket: str, tmp_path: Path
) -> None:
    """Through the CLI: ``--heartbeat-interval 0e0`` (a number runcmd leaves to typer) and a
    plain list
    render the same frames to the same outputs and report; only the first imports typer."""
    renders = {"to": f"{gcs_bucket}/renders", "files": ["frame.####.txt"]}
    job = make_job(tmp_path / "job", gcs_bucket, "1-2", extra={"outputs": renders})
    env = jitrender_env(job, PYTHONPROFILEIMPORTTIME="1")
    code, out, report = run(job, *(["--heartbeat-interval", "0e0"] if typer_reads else []), env=env)
    assert code == 0, out[-3000:]
    assert report["status"] == "succeeded" and report["frames"]["done"] == [1, 2], report
    landed = bucket_objects(gcs_bucket, "renders/")
    for frame in job.frames:
        assert landed[f"renders/frame.{frame:04d}.txt"][1] == expected_output(
            frame, job.frame_inputs(frame)
        )
    assert ("import time:" in out) and ((" typer" in out) == typer_reads), out[-2000:]
