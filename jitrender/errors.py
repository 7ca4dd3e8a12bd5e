"""Exit codes (a contract farms key their retry policies on) and the errors that map to them."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes. Documented in the README; never renumber."""

    OK = 0
    DATA = 65  # the job's data is wrong: missing dependency, frame failed after retries
    TEMPFAIL = 75  # preempted, SIGTERM, transient storage failure after retries: retry
    CONFIG = 78  # bad job.yaml, bad flags, permission denied, task index mismatch
    UNHEALTHY = 69  # this node is drained (or blocked this job): run the frames elsewhere
    SOFTWARE = 70  # a bug in jitrender itself (traceback on stderr); the report is still written


class JitrenderError(Exception):
    """Base of every error that ends a command with a one-line message and an exit code."""

    exit_code: ExitCode = ExitCode.DATA

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(JitrenderError):
    """The user's configuration (job file, flags, credentials) is wrong. Exit 78."""

    exit_code = ExitCode.CONFIG


class DataError(JitrenderError):
    """The job's data is wrong: a missing dependency, a malformed scene. Exit 65."""

    exit_code = ExitCode.DATA


class SceneParseError(DataError):
    """A scene file could not be parsed; the message names the file and the position."""


class MissingDependencyError(DataError):
    """An object the job needs does not exist in storage."""

    def __init__(self, url: str, source: str | None = None) -> None:
        where = f" (asked for by {source})" if source else ""
        super().__init__(f"{url}: dependency does not exist in storage{where}")
        self.url = url
        self.source = source


class NoSuchBucketError(MissingDependencyError):
    """A listing of ``url`` found no bucket: it does not exist, or these credentials cannot
    see it. For the job's ``outputs.to`` the run says so as a configuration error."""

    def __init__(self, url: str, bucket: str) -> None:
        super().__init__(url)
        self.message = (
            f"{url}: bucket {bucket!r} does not exist in storage (or these credentials cannot "
            "see it)"
        )
        self.args = (self.message,)
        self.bucket = bucket


class ObjectNameError(DataError, ValueError):
    """An object or path name this node cannot hold: a ``..`` segment, a name longer than the
    local file system allows, bytes that are not UTF-8. Exit 65."""


class TransientError(JitrenderError):
    """A storage or network failure that outlasted its retries. Exit 75: retry the task."""

    exit_code = ExitCode.TEMPFAIL


class PermissionDeniedError(ConfigError):
    """401/403 from storage: credentials or IAM are wrong. Exit 78."""


class Preempted(JitrenderError):
    """The run was asked to stop (SIGTERM/SIGINT or a preemption notice). Exit 75."""

    exit_code = ExitCode.TEMPFAIL


class NodeUnavailable(JitrenderError):
    """This node is drained, or has blocked this job after failing its frames. Exit 69."""

    exit_code = ExitCode.UNHEALTHY
