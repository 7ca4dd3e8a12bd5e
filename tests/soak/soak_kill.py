"""Kill soak: random kill -9 / SIGTERM of real ``jitrender run`` processes at every phase
(fetch, render, upload/marker), on file:// and gs:// (fake-gcs-server), each followed by a
rerun that must finish the job. Reports what the promises forbid, all of which must be 0:

- partial:      an output object in the bucket whose bytes are not a whole render
- overwritten:  an output object present after the kill that the rerun replaced
- mixed:        a frame whose post output describes another render than the stored one
- unmarked:     a frame marked done whose outputs are not all in the bucket
- verify:       ``jitrender cache verify`` entries found bad
- leftovers:    temp/part files, dead workspaces, agent folders left after the rerun
- rerun_failed: reruns that did not exit 0
- sigterm_not_75: SIGTERMed runs that did not exit 75 (-15: killed by the signal itself); a
  0 counts as right when the run's report says "succeeded" with every frame done (the TERM
  came after the last frame was marked: the exit code says what is in the bucket)

and the slowest SIGTERM exit (must be under 15 s). Run: ``make soak`` (100 trials) or
``python -m tests.soak.soak_kill --trials 12``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import gcs_client, start_fake_gcs
from tests.renderjobs import (
    RenderJob,
    bucket_objects,
    expected_output,
    jitrender_env,
    make_job,
    start_run,
)

PHASES = ("fetch", "render", "upload")
SIGNALS = ("KILL", "TERM")
TERM_DEADLINE_S = 15.0

# A per-frame post stage whose output names the render it read (that render's tag and crc32),
# so a frame whose post output was derived from another render than the stored one shows. A
# rerun's post may describe an earlier attempt's stored render: that is the promise kept.
POST = """
import os, pathlib, sys, zlib
frame = int(sys.argv[1]); out = pathlib.Path(sys.argv[2])
body = (out / f"frame.{frame:04d}.txt").read_bytes()
tag = body[: body.index(b":") + 1].decode() if body.startswith(b"attempt-") else ""
tmp = out / f".meta.{frame:04d}.tmp"
tmp.write_text(f"{tag}|{zlib.crc32(body)}")
os.replace(tmp, out / f"meta.{frame:04d}.txt")
"""


@dataclass
class Tally:
    trials: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    partial: int = 0
    overwritten: int = 0
    mixed: int = 0
    unmarked: int = 0
    verify: int = 0
    leftovers: int = 0
    rerun_failed: int = 0
    term_exits: list[float] = field(default_factory=list)
    term_codes: Counter[int] = field(default_factory=Counter)
    term_done_0: int = 0  # exit 0 after a TERM, with a report saying every frame was done
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "by_kind": dict(sorted(self.by_kind.items())),
            "partial": self.partial,
            "overwritten": self.overwritten,
            "mixed_attempt_frames": self.mixed,
            "marked_without_outputs": self.unmarked,
            "verify_failures": self.verify,
            "leftovers": self.leftovers,
            "rerun_failed": self.rerun_failed,
            "sigterm_exits": len(self.term_exits),
            "sigterm_not_75": sum(n for code, n in self.term_codes.items() if code != 75)
            - self.term_done_0,
            "sigterm_0_all_done": self.term_done_0,
            "sigterm_exit_codes": dict(self.term_codes),
            "slowest_sigterm_exit_s": round(max(self.term_exits, default=0.0), 2),
            "notes": self.notes[:20],
        }


def objects(bucket: str, prefix: str) -> dict[str, tuple[str, bytes]]:
    """``relative name -> (generation, bytes)`` below ``bucket/prefix``."""
    if bucket.startswith("gs://"):
        return {
            k[len(prefix) :]: (str(g), b) for k, (g, b) in bucket_objects(bucket, prefix).items()
        }
    root = Path(bucket.removeprefix("file://")) / prefix
    found = {}
    for path in root.rglob("*") if root.is_dir() else ():
        if path.is_file():
            st = path.stat()
            found[path.relative_to(root).as_posix()] = (
                f"{st.st_mtime_ns}-{st.st_ino}",
                path.read_bytes(),
            )
    return found


def check_bucket(job: RenderJob, tally: Tally, when: str) -> dict[str, str]:
    """Count partial, mixed and marked-without-outputs frames; return name -> generation."""
    found = objects(job.bucket, "renders/")
    for frame in job.frames:
        render = found.get(f"frame.{frame:04d}.txt")
        meta = found.get(f"meta.{frame:04d}.txt")
        if render is not None:
            body = render[1]
            whole = expected_output(frame, job.frame_inputs(frame))
            tag = body[: len(body) - len(whole)]
            if not body.endswith(whole) or not tag.startswith(b"attempt-"):
                tally.partial += 1
                tally.notes.append(f"{when}: partial {job.bucket} frame {frame}")
            elif meta is not None and meta[1].decode() != f"{tag.decode()}|{zlib.crc32(body)}":
                tally.mixed += 1
                tally.notes.append(f"{when}: mixed {job.bucket} frame {frame}")
        marked = any(k.endswith(f"/frame.{frame}.json") for k in found)
        if marked and (render is None or meta is None):
            tally.unmarked += 1
            tally.notes.append(f"{when}: marked without outputs {job.bucket} frame {frame}")
    return {name: generation for name, (generation, _) in found.items()}


def wait_phase(
    job: RenderJob, phase: str, proc: subprocess.Popen[bytes], rng: random.Random
) -> None:
    """Return at a random moment inside ``phase`` of ``proc``'s run (or when it ended)."""
    deadline = time.monotonic() + 60
    if phase == "fetch":
        time.sleep(rng.uniform(0.2, 1.2))  # the CLI imports, resolves, then fetches
        return
    kind = "start" if phase == "render" else "done"
    while not job.phases(kind) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.3 if phase == "render" else 0.05))


def _all_done(job: RenderJob) -> bool:
    with contextlib.suppress(OSError, ValueError):
        report = json.loads((job.root / "report.json").read_text())
        done = set(report["frames"]["done"]) | set(report["frames"]["skipped_already_done"])
        return bool(report["status"] == "succeeded" and done == set(job.frames))
    return False


def leftovers(cache_dir: Path, tmpdir: Path, job: RenderJob) -> list[str]:
    left = [f"tmp/{p.name}" for p in (cache_dir / "tmp").iterdir()]
    left += [f"runs/{p.name}" for p in (cache_dir / "runs").iterdir()]
    left += [p.name for p in tmpdir.iterdir() if p.name.startswith("jitrender-")]
    if job.bucket.startswith("file://"):
        bucket = Path(job.bucket.removeprefix("file://"))
        left += [p.name for p in bucket.rglob("*.jitrender-part")]
    return left


def one_trial(
    index: int,
    backend: str,
    cache_dir: Path,
    tmpdir: Path,
    rng: random.Random,
    signals: tuple[str, ...] = SIGNALS,
    phases: tuple[str, ...] = PHASES,
) -> tuple[str, str, float | None, int, RenderJob, dict[str, str]]:
    """Start a run, interrupt it at a random phase; (signal, phase, SIGTERM exit s, code, ...)."""
    sig, phase = rng.choice(signals), rng.choice(phases)
    root = Path(tempfile.mkdtemp(prefix=f"trial{index}-", dir=tmpdir.parent))
    if backend == "gs":
        name = f"soak-{uuid.uuid4().hex[:10]}"
        gcs_client().create_bucket(name)  # type: ignore[attr-defined]
        bucket = f"gs://{name}"
    else:
        bucket = f"file://{root}/bucket"
        Path(root, "bucket").mkdir()
    renderer = root / "job" / "renderer.py"
    post = root / "post.py"
    post.write_text(POST)
    stages = [
        {
            "name": "render",
            "command": [sys.executable, str(renderer), "{frame}", "{inputs}", "{outputs}"],
        },
        {"name": "post", "command": [sys.executable, str(post), "{frame}", "{outputs}"]},
    ]
    outputs = {"to": f"{bucket}/renders", "files": ["frame.####.txt", "meta.####.txt"]}
    job = make_job(
        root / "job",
        bucket,
        rng.choice(("1-3", "1-4", "1-6")),
        texture_size=rng.choice((2_000, 300_000)),
        extra={"stages": stages, "outputs": outputs},
    )
    env = jitrender_env(
        job,
        JITRENDER_CACHE_DIR=str(cache_dir),
        TMPDIR=str(tmpdir),
        OUTPUT_TAG="attempt-1:",
        RENDER_SLEEP=str(rng.choice((0, 0.05, 0.3))),
        # Heartbeats and frame claims on, as on a farm: a killed run's claims must never
        # keep its rerun from the frames (jitrender.claims).
        JITRENDER_HEARTBEAT_INTERVAL="0.5",
    )
    proc = start_run(job, env=env)
    wait_phase(job, phase, proc, rng)
    term_s: float | None = None
    if proc.poll() is None:
        sent = time.monotonic()
        proc.send_signal(signal.SIGKILL if sig == "KILL" else signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        if sig == "TERM":
            term_s = time.monotonic() - sent
    else:
        proc.communicate()
    if sig == "KILL":  # the orphaned stage processes die with their parent on a real node
        for started in job.phase_dir.glob("start.*"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(started.name.split(".")[2]), signal.SIGKILL)
    return sig, phase, term_s, proc.returncode, job, env


def soak(
    trials: int,
    backends: list[str],
    seed: int,
    signals: tuple[str, ...] = SIGNALS,
    phases: tuple[str, ...] = PHASES,
) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    work = Path(tempfile.mkdtemp(prefix="jrsoak", dir="/tmp"))
    server = None
    try:
        if "gs" in backends:
            server, url = start_fake_gcs()
            os.environ["STORAGE_EMULATOR_HOST"] = url
            os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
        tmpdir = work / "t"
        tmpdir.mkdir()
        for index in range(trials):
            backend = backends[index % len(backends)]
            cache_dir = work / f"cache-{backend}"
            sig, phase, term_s, code, job, env = one_trial(
                index, backend, cache_dir, tmpdir, rng, signals, phases
            )
            tally.trials += 1
            tally.by_kind[f"{backend}/{sig}/{phase}"] += 1
            if term_s is not None:
                tally.term_exits.append(term_s)
                tally.term_codes[code] += 1
                if code == 0 and _all_done(job):
                    tally.term_done_0 += 1
            before = check_bucket(job, tally, f"trial {index} after {sig} at {phase}")
            env = dict(env, OUTPUT_TAG="attempt-2:", RENDER_SLEEP="0")
            rerun = start_run(job, env=env, report="rerun.json")
            out, _ = rerun.communicate(timeout=180)
            if rerun.returncode != 0:
                tally.rerun_failed += 1
                tally.notes.append(f"trial {index}: rerun exit {rerun.returncode}: {out[-300:]!r}")
            after = check_bucket(job, tally, f"trial {index} after rerun")
            for name, generation in before.items():
                rewritten = "/tasks/" in name or "/claims/" in name  # heartbeats, leases
                if after.get(name, generation) != generation and not name.startswith("."):
                    if rewritten:
                        continue
                    tally.overwritten += 1
                    tally.notes.append(f"trial {index}: overwritten {name}")
            verified = subprocess.run(
                [sys.executable, "-m", "jitrender.cli", "cache", "verify", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            tally.verify += json.loads(verified.stdout or '{"bad": 1}').get("bad", 1)
            left = leftovers(cache_dir, tmpdir, job)
            if left:
                tally.leftovers += len(left)
                tally.notes.append(f"trial {index}: leftovers {left[:3]}")
            shutil.rmtree(job.root.parent, ignore_errors=True)
            print(
                f"trial {index + 1}/{trials} {backend} {sig} at {phase}: exit {code}"
                + (f" after {term_s:.2f} s" if term_s is not None else ""),
                file=sys.stderr,
                flush=True,
            )
    finally:
        if server is not None:
            server.terminate()
        shutil.rmtree(work, ignore_errors=True)
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--backends", default="file,gs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--signals", default=",".join(SIGNALS), help="KILL,TERM")
    parser.add_argument("--phases", default=",".join(PHASES), help="fetch,render,upload")
    args = parser.parse_args()
    started = time.monotonic()
    signals, phases = tuple(args.signals.split(",")), tuple(args.phases.split(","))
    tally = soak(args.trials, args.backends.split(","), args.seed, signals, phases)
    result = tally.to_json()
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    bad = sum(
        result[k]
        for k in (
            "partial",
            "overwritten",
            "mixed_attempt_frames",
            "marked_without_outputs",
            "verify_failures",
            "leftovers",
            "rerun_failed",
            "sigterm_not_75",
        )
    )
    sys.exit(1 if bad or result["slowest_sigterm_exit_s"] >= TERM_DEADLINE_S else 0)


if __name__ == "__main__":
    main()
