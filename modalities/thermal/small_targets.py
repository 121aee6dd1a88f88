"""A synthetic infrared small-target set, written as such sets ship: 8-bit grey PNG frames of
at least 512 px with targets of 4-8 px, Pascal VOC XML, and background frames.

It is the project's check that the documented small-object path learns (``docs/
small_objects.md``): whole frames resized to a small network input lose such targets, tiles
keep them. Frames are cluttered sky/ground scenes (a smooth random field, a horizon, sensor
noise and bright clutter blobs larger than targets) with 1-3 point-like warm targets each
(a Gaussian blob of 4-8 px whose peak stands 25-60 grey levels above its surroundings);
every fifth frame has no target and its XML no ``<object>`` (a background frame).

    python -m modalities.thermal.small_targets --out data/small_targets

writes ``images/st*.png`` and ``annotations/st*.xml`` and prints the params that read them
with the thermal adapter.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dsod_core.errors import ConfigError
from dsod_core.io import write_atomic, write_with
from modalities.formats.voc import voc_xml

#: The one class of the set.
CLASS_NAME = "target"


def _field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random background in grey levels: coarse noise upsampled, a horizon band,
    sensor noise."""
    coarse = rng.normal(0.0, 1.0, size=(size // 64 + 2, size // 64 + 2))
    img = np.asarray(
        Image.fromarray(coarse.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC)
    )
    img = 90.0 + 18.0 * img
    horizon = int(rng.integers(size // 4, 3 * size // 4))
    img[horizon:] += 25.0  # warmer ground below the horizon
    return img + rng.normal(0.0, 3.0, size=(size, size))


def _blob(img: np.ndarray, cx: float, cy: float, sigma: float, peak: float) -> None:
    """Add a Gaussian blob in place (cut off at 3 sigma)."""
    r = int(np.ceil(3 * sigma))
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, img.shape[1])
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, img.shape[0])
    yy, xx = np.mgrid[y0:y1, x0:x1]
    img[y0:y1, x0:x1] += peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))


def small_target_frame(
    rng: np.random.Generator, size: int, targets: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One ``uint8 [size, size]`` frame and its objects (``name``, continuous xyxy ``box``)."""
    img = _field(rng, size)
    for _ in range(int(rng.integers(2, 6))):  # clutter: broad, dim blobs (not targets)
        _blob(img, *rng.uniform(0, size, 2), rng.uniform(6, 14), rng.uniform(10, 30))
    objects: list[dict[str, Any]] = []
    while len(objects) < targets:
        side = float(rng.uniform(4.0, 8.0))  # the target's visible extent in pixels
        cx, cy = rng.uniform(side + 2, size - side - 2, 2)
        box = [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]
        if any(_overlaps(box, o["box"], margin=4) for o in objects):
            continue
        _blob(img, cx, cy, side / 4.0, rng.uniform(25.0, 60.0))
        objects.append({"name": CLASS_NAME, "box": box})
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


def _overlaps(a: list[float], b: list[float], margin: float) -> bool:
    return not (
        a[2] + margin < b[0] or b[2] + margin < a[0] or a[3] + margin < b[1] or b[3] + margin < a[1]
    )


def write_small_target_demo(
    out_dir: str | Path, *, num_images: int = 60, image_size: int = 512, seed: int = 0
) -> dict[str, Any]:
    """Write the set under ``out_dir``; return the thermal adapter params that read it (VOC
    labels, a 20/20 % val/test hash split)."""
    if image_size < 512:
        raise ConfigError(f"the small-target set needs image_size >= 512, got {image_size}")
    if num_images < 10:
        raise ConfigError(f"the small-target set needs num_images >= 10, got {num_images}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        stem = f"st{i:04d}"
        frame, objects = small_target_frame(
            rng, image_size, 0 if i % 5 == 4 else int(rng.integers(1, 4))
        )
        write_with(out / "images" / f"{stem}.png", lambda tmp, f=frame: _save_png(f, tmp))
        xml = voc_xml(f"{stem}.png", image_size, image_size, objects, depth=1, folder="images")
        write_atomic(out / "annotations" / f"{stem}.xml", xml)
    return {
        "labels": "voc",
        "image_dir": "images",
        "label_dir": "annotations",
        "class_names": [CLASS_NAME],
        "val_fraction": 0.2,
        "test_fraction": 0.2,
    }


def _save_png(frame: np.ndarray, path: Path) -> None:
    Image.fromarray(frame, mode="L").save(path, format="PNG")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to write the set into")
    ap.add_argument("--num-images", type=int, default=60)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    params = write_small_target_demo(
        args.out, num_images=args.num_images, image_size=args.image_size, seed=args.seed
    )
    print(json.dumps(params))
    return 0


if __name__ == "__main__":  # pragma: no cover - a command-line entry
    raise SystemExit(main())
