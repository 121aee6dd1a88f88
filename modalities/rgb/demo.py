"""The synthetic VOC demo set of the ``rgb`` adapter, written in the native VOC layout.

Three classes, ``circle``, ``square`` and ``triangle``, on cluttered backgrounds (gradients,
noise, blurred blobs, strokes). Each class draws its colour from a palette that overlaps the
others' (only red belongs to one class), so the shape decides. 1-3 objects per image, sides
30-55 % of the image; later objects may cover up to ~10 % of earlier ones (marked
``occluded``); about 6 % are drawn faint and marked ``difficult``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dsod_core.errors import ConfigError
from dsod_core.io import atomic_path, write_atomic
from modalities.rgb.voc import voc_xml

DEMO_CLASSES = ("circle", "square", "triangle")
"""The demo's classes, labels 1..3."""

DEMO_COLOURS = {
    "red": (220, 40, 40),
    "yellow": (230, 200, 30),
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "magenta": (200, 50, 200),
}
"""The base hues (RGB) objects are drawn in, before per-object jitter."""

DEMO_PALETTES = {
    "circle": ("red", "yellow", "blue"),
    "square": ("blue", "green", "magenta"),
    "triangle": ("green", "magenta", "yellow"),
}
"""Class -> the hues it may take: every colour but red belongs to two classes, so colour
alone does not decide the class."""


def write_demo(
    out_dir: str | Path, *, num_images: int = 240, image_size: int = 96, seed: int = 0
) -> dict[str, Any]:
    """Write ``JPEGImages/*.jpg`` (quality 95), ``Annotations/*.xml`` and
    ``ImageSets/Main/{train,val,test}.txt`` (about 70/15/15) directly under ``out_dir`` and
    return the adapter params (format voc, years ``["."]``) that read it with
    ``root=out_dir``."""
    if num_images < 3:
        raise ConfigError(f"write_demo needs num_images >= 3 (one per split), got {num_images}")
    if image_size < 32:
        raise ConfigError(f"write_demo needs image_size >= 32, got {image_size}")
    out = Path(out_dir)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_test = max(1, round(0.15 * num_images))
    n_val = max(1, round(0.15 * num_images))
    order = rng.permutation(num_images)
    split_of = np.full(num_images, "train", dtype=object)
    split_of[order[:n_test]] = "test"
    split_of[order[n_test : n_test + n_val]] = "val"
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i in range(num_images):
        image_id = f"{i:06d}"
        img, objects = demo_image(rng, image_size)
        with atomic_path(out / "JPEGImages" / f"{image_id}.jpg", suffix=".jpg") as tmp:
            img.save(tmp, format="JPEG", quality=95)
        write_atomic(
            out / "Annotations" / f"{image_id}.xml",
            voc_xml(f"{image_id}.jpg", image_size, image_size, objects),
        )
        lists[str(split_of[i])].append(image_id)
    for split, ids in lists.items():
        write_atomic(out / "ImageSets" / "Main" / f"{split}.txt", "\n".join(ids) + "\n")
    return {
        "format": "voc",
        "years": ["."],
        "train_sets": ["train"],
        "val_sets": ["val"],
        "test_sets": ["test"],
        "class_names": list(DEMO_CLASSES),
    }


def demo_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One cluttered RGB image and its objects (``name``, continuous xyxy ``box``,
    ``difficult``, ``occluded``)."""
    canvas = _demo_background(rng, size)
    objects: list[dict[str, Any]] = []
    boxes: list[np.ndarray] = []
    for _ in range(rng.integers(1, 4)):
        box = _place_box(rng, size, boxes)
        if box is None:
            continue
        name = DEMO_CLASSES[int(rng.integers(len(DEMO_CLASSES)))]
        canvas, difficult = _draw_object(rng, canvas, name, box)
        for prev, prev_box in zip(objects, boxes):  # drawn on top of earlier objects
            prev["occluded"] = prev["occluded"] or _overlap_fraction(prev_box, box) > 0
        boxes.append(box)
        objects.append(
            {"name": name, "box": box.tolist(), "difficult": difficult, "occluded": False}
        )

    arr = np.asarray(canvas.convert("RGB"), dtype=np.float64)
    arr += rng.normal(0, 6, arr.shape)  # modest sensor noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"), objects


def _demo_background(rng: np.random.Generator, size: int) -> Image.Image:
    """The RGBA background: a linear gradient between two muted colours plus blurred clutter
    (soft blobs and thin strokes)."""
    c0, c1 = rng.uniform(60, 190, 3), rng.uniform(60, 190, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = np.clip(0.5 + (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)), 0, 1)
    bg = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")

    clutter = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(clutter)
    for _ in range(rng.integers(3, 7)):  # soft blobs, 8-18 % of the side
        r = rng.uniform(0.04, 0.09) * size
        cx, cy = rng.uniform(0, size, 2)
        colour = tuple(int(v) for v in rng.uniform(30, 230, 3)) + (int(rng.uniform(60, 140)),)
        draw.ellipse([cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r], fill=colour)
    for _ in range(rng.integers(1, 4)):  # thin strokes
        pts = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
        colour = tuple(int(v) for v in rng.uniform(30, 230, 3)) + (110,)
        draw.line(pts, fill=colour, width=max(1, size // 48))
    clutter = clutter.filter(ImageFilter.GaussianBlur(radius=size / 64))
    return Image.alpha_composite(canvas.convert("RGBA"), clutter)


def _place_box(rng: np.random.Generator, size: int, boxes: list[np.ndarray]) -> np.ndarray | None:
    """A square box (xyxy) with side 30-55 % of ``size`` that covers at most ~10 % of each of
    ``boxes``, or ``None`` after 20 failed attempts."""
    for _attempt in range(20):
        side = rng.uniform(0.3, 0.55) * size
        x1, y1 = rng.uniform(0, size - side, 2)
        box = np.array([x1, y1, x1 + side, y1 + side])
        # Limit occlusion: a new object covers at most ~10 % of an earlier one.
        if all(_overlap_fraction(b, box) <= 0.10 for b in boxes):
            return box
    return None


def _draw_object(
    rng: np.random.Generator, canvas: Image.Image, name: str, box: np.ndarray
) -> tuple[Image.Image, bool]:
    """``canvas`` with one ``name`` shape composited into ``box`` (drawn at 4x and downsampled
    for anti-aliased edges), and whether it was drawn faint (``difficult``)."""
    scale = 4
    size = canvas.size[0]
    base = np.array(DEMO_COLOURS[DEMO_PALETTES[name][int(rng.integers(3))]], float)
    colour = np.clip(base + rng.normal(0, 18, 3), 0, 255)
    difficult = bool(rng.random() < 0.06)
    alpha = 90 if difficult else 255  # faint objects are the "difficult" ones
    layer = Image.new("RGBA", (size * scale, size * scale), (0, 0, 0, 0))
    ld = ImageDraw.Draw(layer)
    fill = tuple(int(v) for v in colour) + (alpha,)
    sb = (box * scale).tolist()
    if name == "circle":
        ld.ellipse(sb, fill=fill)
    elif name == "square":
        ld.rectangle(sb, fill=fill)
    else:
        ld.polygon([(sb[0], sb[3]), (sb[2], sb[3]), ((sb[0] + sb[2]) / 2, sb[1])], fill=fill)
    return Image.alpha_composite(canvas, layer.reduce(scale)), difficult


def _overlap_fraction(earlier: np.ndarray, later: np.ndarray) -> float:
    """Fraction of ``earlier``'s box area covered by ``later``'s box."""
    iw = max(0.0, min(earlier[2], later[2]) - max(earlier[0], later[0]))
    ih = max(0.0, min(earlier[3], later[3]) - max(earlier[1], later[1]))
    area = (earlier[2] - earlier[0]) * (earlier[3] - earlier[1])
    return float(iw * ih / area) if area > 0 else 0.0
