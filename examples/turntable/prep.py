"""The ``prep`` stage, one frame: take the exposure flicker out of the plate the render reads.

The plate in the workspace (``<scene folder>/plates/plate.NNNN.png``, where the .blend's
``//plates/`` points) is a hardlink into the node's shared cache. It is never written through:
the graded plate is written to a new file and renamed over the link, so the cached copy that
other jobs on the node share stays as it came from the bucket. The original link is kept in
``scratch/`` first, so a retry grades the original again rather than the graded plate.

    python3 -m prep --scene SCENE --frame N --scratch DIR [--target 0.55]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from pngio import read_png, write_png


def deflicker(plate: np.ndarray, target: float) -> tuple[np.ndarray, float]:
    """The plate scaled so its mean brightness is ``target``, and the gain applied."""
    mean = float(plate.astype(np.float64).mean()) / 255
    gain = target / mean if mean > 0 else 1.0
    graded = np.clip(plate.astype(np.float64) * gain, 0, 255).round().astype(np.uint8)
    return graded, gain


def main() -> None:
    parser = argparse.ArgumentParser(prog="prep", description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=Path, required=True, help="the scene in the workspace")
    parser.add_argument("--frame", type=int, required=True)
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--target", type=float, default=0.55, help="mean brightness, 0-1")
    options = parser.parse_args()

    plate = options.scene.parent / "plates" / f"plate.{options.frame:04d}.png"
    original = options.scratch / "prep" / plate.name
    original.parent.mkdir(parents=True, exist_ok=True)
    if not original.exists():
        os.link(plate, original)  # the link from the cache, before the plate is replaced
    graded, gain = deflicker(read_png(original), options.target)
    write_png(plate, graded)  # a new file renamed over the link: the cache is untouched
    note = {"frame": options.frame, "plate": plate.name, "gain": round(gain, 4)}
    (original.parent / f"plate.{options.frame:04d}.json").write_text(json.dumps(note))
    print(f"prep: frame {options.frame} plate {plate.name} gain {gain:.3f}")


if __name__ == "__main__":
    main()
