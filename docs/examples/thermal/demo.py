"""Synthetic thermal frames written in the native format: 16-bit PNG counts + VOC XML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dsod_core.io import write_atomic, write_with
from modalities.rgb.voc import voc_xml

CLASSES = ("person", "vehicle")


def write_demo(out_dir: Path, num_images: int, image_size: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    (out_dir / "thermal").mkdir(parents=True, exist_ok=True)
    (out_dir / "Annotations").mkdir(exist_ok=True)
    for i in range(num_images):
        kelvin = rng.normal(288.0, 0.5, (image_size, image_size))  # a 15 °C background
        objects = []
        for _ in range(int(rng.integers(1, 3))):
            name = CLASSES[int(rng.integers(len(CLASSES)))]
            w = int(rng.integers(image_size // 6, image_size // 3))
            x, y = (int(v) for v in rng.integers(0, image_size - w, 2))
            kelvin[y : y + w, x : x + w] = 310.0 if name == "person" else 330.0
            objects.append({"name": name, "box": [x, y, x + w, y + w]})
        counts = np.round(kelvin / 0.01).astype(np.uint16)  # 0.01 K per count
        write_with(
            out_dir / "thermal" / f"f{i:04d}.png",
            lambda tmp, c=counts: Image.fromarray(c).save(tmp, format="PNG"),
        )
        xml = voc_xml(f"f{i:04d}.png", image_size, image_size, objects, depth=1)
        write_atomic(out_dir / "Annotations" / f"f{i:04d}.xml", xml)
    return {"kelvin_per_count": 0.01}
