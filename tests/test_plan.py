"""The run plan's pure parts: the order inputs are fetched in."""

from __future__ import annotations

import random

from jitrender.deps import Dependency
from jitrender.plan import fetch_order


def test_fetch_order_is_every_frames_files_then_by_first_frame_then_url() -> None:
    rng = random.Random(17)
    for _ in range(200):
        deps = [
            Dependency(
                "p",
                f"gs://b/{rng.randint(0, 30)}",
                rng.choice([None, (), tuple(sorted(rng.sample(range(-3, 12), rng.randint(1, 3))))]),
            )
            for _ in range(rng.randint(0, 40))
        ]
        expected = sorted(deps, key=lambda d: (min(d.frames) if d.frames else -(2**31), d.url))
        assert fetch_order(deps) == tuple(expected)
