"""A real one-node Slurm cluster for tests, from Debian's ``slurm-wlm`` and ``munge``.

Started as root (nothing is installed here: ``scripts/ci-system-deps.sh`` does that, best
effort): a private ``munged`` on its own socket and key (owned by ``munge``), then
``slurmctld`` and ``slurmd`` in the foreground as children of the test process, with
``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``, ``SlurmUser=root`` and the
node declared with ``CPUS`` CPUs (one per array task). Everything lives in a temporary folder;
``SLURM_CONF`` points the clients (and the jobs, which inherit it) at its slurm.conf.
``cred_expire=5`` (default 120): Slurm holds a requeued job for that long (a job credential
revoked at requeue must expire before the same job id can start again), so a requeued task
starts again after about 6 s instead of 2 minutes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "runuser")
CPUS = 4


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    env: dict[str, str]  # os.environ plus SLURM_CONF
    started_s: float  # seconds from the first daemon's start to the node being idle

    def scontrol(self, *args: str) -> str:
        done = subprocess.run(
            ["scontrol", *args], env=self.env, capture_output=True, text=True, timeout=30
        )
        return done.stdout + done.stderr

    def job_states(self, job_id: str) -> dict[str, str]:
        """``array index -> JobState`` of an array job (kept by slurmctld for MinJobAge)."""
        states: dict[str, str] = {}
        for line in self.scontrol("show", "job", "-o", job_id).splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "ArrayTaskId" in fields and "JobState" in fields:
                states[fields["ArrayTaskId"]] = fields["JobState"]
        return states


def why_not() -> str | None:
    """Why a cluster cannot start here, or None when it can."""
    if os.geteuid() != 0:
        return "the Slurm cluster fixture must run as root (slurmd starts jobs as any user)"
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return (
            f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; "
            "scripts/ci-system-deps.sh does it as root)"
        )
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (the munge package creates it)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _conf(root: Path, host: str, munge_socket: Path) -> str:
    return f"""\
ClusterName=jitrender-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=5
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=600
MailProg=/bin/true
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as sink:
        return subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def slurm_cluster(root: Path) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd under ``root``; stop them (by pid) on exit. Raises
    RuntimeError, with the daemons' log tail, when the node does not come up in 30 s."""
    munge = pwd.getpwnam("munge")
    # munged runs as munge, which cannot enter pytest's root-only temporary folders.
    munge_dir = Path(tempfile.mkdtemp(prefix="jitrender-munge-"))
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    for path, mode in ((munge_dir, 0o700), (key, 0o400)):
        os.chown(path, munge.pw_uid, munge.pw_gid)
        os.chmod(path, mode)
    munge_socket = munge_dir / "munge.socket"
    host = socket.gethostname().split(".")[0]
    for folder in ("state", "spool"):
        (root / folder).mkdir(parents=True)
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, host, munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started = time.monotonic()
    daemons = [
        _start(
            [
                "runuser", "-u", "munge", "--", "munged", "--foreground", "--force",
                f"--socket={munge_socket}", f"--key-file={key}",
                f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
                f"--seed-file={munge_dir}/munged.seed",
            ],
            root / "munged.out",
        )
    ]  # fmt: skip
    try:
        _wait_for(
            lambda: munge_socket.exists() or daemons[0].poll() is not None, 10, root, "munged"
        )
        if daemons[0].poll() is not None:
            _wait_for(lambda: False, 0, root, "munged")
        # The socket folder is munge's own (0700): slurm's daemons run as root and can reach it.
        daemons.append(_start(["slurmctld", "-D", "-f", str(conf)], root / "slurmctld.out"))
        daemons.append(_start(["slurmd", "-D", "-f", str(conf)], root / "slurmd.out"))
        cluster = SlurmCluster(root, conf, env, 0.0)

        def idle() -> bool:
            return "State=IDLE" in cluster.scontrol("show", "node", host)

        _wait_for(idle, 30, root, "slurmd")
        cluster.started_s = time.monotonic() - started
        yield cluster
    finally:
        for daemon in reversed(daemons):
            if daemon.poll() is None:
                daemon.terminate()
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=5)
        shutil.rmtree(munge_dir, ignore_errors=True)


def _wait_for(ready: object, timeout: float, root: Path, what: str) -> None:
    assert callable(ready)
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tails = []
            for log in sorted(root.glob("*.log")) + sorted(root.glob("*.out")):
                tail = " | ".join(log.read_text(errors="replace").splitlines()[-5:])
                tails.append(f"{log.name}: {tail}")
            raise RuntimeError(f"{what} did not come up in {timeout:.0f} s; " + "; ".join(tails))
        time.sleep(0.2)
