"""The ``post`` stage, one frame: a thumbnail and a small JSON record next to the render.

Both are written to a hidden temporary name and renamed into ``outputs/``, so the uploader
only ever sees whole files. The record carries what the prep stage did to the plate.

    python3 -m post --render OUTPUTS/turntable.NNNN.png --frame N --scratch DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from pngio import read_png, write_png

THUMB_STEP = 4  # a 320x240 render gives an 80x60 thumbnail


def thumbnail(image: np.ndarray, step: int) -> np.ndarray:
    """Box-filtered down by ``step`` in each direction."""
    height, width = (image.shape[0] // step) * step, (image.shape[1] // step) * step
    blocks = image[:height, :width, :3].astype(np.float64)
    blocks = blocks.reshape(height // step, step, width // step, step, 3)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(prog="post", description=__doc__.splitlines()[0])
    parser.add_argument("--render", type=Path, required=True, help="this frame's render")
    parser.add_argument("--frame", type=int, required=True)
    parser.add_argument("--scratch", type=Path, required=True)
    options = parser.parse_args()

    render: Path = options.render
    image = read_png(render)
    write_png(render.parent / "thumbs" / render.name, thumbnail(image, THUMB_STEP))

    prep_note = options.scratch / "prep" / f"plate.{options.frame:04d}.json"
    record = {
        "frame": options.frame,
        "render": render.name,
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "mean_rgb": [round(float(v), 2) for v in image[..., :3].mean(axis=(0, 1))],
        "sha256": hashlib.sha256(render.read_bytes()).hexdigest(),
        "prep": json.loads(prep_note.read_text()) if prep_note.is_file() else None,
    }
    target = render.with_suffix(".json")
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temp, target)
    print(f"post: frame {options.frame} -> {target.name}, thumbs/{render.name}")


if __name__ == "__main__":
    main()
