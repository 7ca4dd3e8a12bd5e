"""3. Overlap: 20 frames, each with its own large inputs, a render stage of fixed length.
Fetch+render time vs the ideal (first fetch + max(total render, total fetch)) and vs
fetch-everything-then-render, all cold except the render-only baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import BUCKET, MARK_FRAMES, MiB, ratio

TITLE = "Overlap: frame-ahead prefetch behind a fixed-length render"
FRAMES = 20


def _phase(report: Any) -> float:
    """From the first fetch to the last stage's end (the report's ``fetch_render_s``)."""
    return float(report.timings["fetch_render_s"])


def run(quick: bool) -> dict[str, Any]:
    import google.cloud.storage  # noqa: F401  (import time is not transfer time)

    per_frame = 16 * MiB if quick else 64 * MiB
    with common.workdir("overlap") as root:
        data = root / "data"
        for frame in range(1, FRAMES + 1):
            common.write_object(data, f"overlap/cache/sim.{frame:04d}.vdb", per_frame)
        deps = [f"gs://{BUCKET}/overlap/cache/sim.####.vdb"]

        def job(tag: str, frames: str, stages: list[dict[str, Any]]) -> Path:
            return common.write_job(
                root / f"{tag}.yaml", frames=frames, deps=deps, stages=stages, outputs=root / tag
            )

        touch = [{"name": "wait", "per": "chunk", "command": MARK_FRAMES}]
        with common.emulator(data) as emu:
            _, first = common.run_job_here(job("first", "1", touch), root / "c-first")
            _, fetch_all = common.run_job_here(job("all", f"1-{FRAMES}", touch), root / "c-all")
            fetch_total = float(fetch_all.timings["fetch_s"])
            first_fetch = float(first.timings["fetch_s"])
            # The hardest case for overlap: each frame renders as long as its fetch takes.
            render_s = round(max(0.1, fetch_total / FRAMES), 3)
            sleep = common.then_mark_frames(f"sleep {render_s}")
            render = [{"name": "render", "per": "frame", "command": sleep}]
            _, overlapped = common.run_job_here(
                job("overlap", f"1-{FRAMES}", render), root / "c-ov"
            )
            _, serial = common.run_job_here(
                job("serial", f"1-{FRAMES}", touch + render), root / "c-serial"
            )
            _, warm = common.run_job_here(job("warm", f"1-{FRAMES}", render), root / "c-ov")
            emu.reset()
    render_total = _phase(warm)  # the renders alone: every input already cached
    ideal = first_fetch + max(render_total, fetch_total)
    rows = {
        "ideal: first fetch + max(render, fetch)": ideal,
        "jitrender (prefetch overlapped)": _phase(overlapped),
        "fetch everything, then render": _phase(serial),
        "render only (warm cache)": render_total,
        "fetch only (no render)": fetch_total,
    }
    over_ideal = ratio(rows["jitrender (prefetch overlapped)"], ideal)
    text = common.table(
        TITLE,
        ["schedule", "fetch+render s", "vs ideal"],
        [[name, value, ratio(value, ideal)] for name, value in rows.items()],
        note=(
            f"{FRAMES} frames x {per_frame // MiB} MiB input each, render {render_s} s per frame"
            f" (set equal to the measured fetch time per frame); first fetch {first_fetch:.3f} s"
        ),
    )
    return {
        "title": TITLE,
        "table": text,
        "frames": FRAMES,
        "input_bytes_per_frame": per_frame,
        "render_s_per_frame": render_s,
        "seconds": {k: round(v, 3) for k, v in rows.items()},
        "overlapped_over_ideal": over_ideal,
        "targets": {"within_15_percent_of_ideal": over_ideal is not None and over_ideal <= 1.15},
    }
