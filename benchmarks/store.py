"""Store benchmark: bytes on disk and random single-sample read time of the float32 layout
(format version 1, what every store held before native images) against native-dtype images
(format version 2), for 8-bit grey, 16-bit depth and int16 CT images.

``python -m benchmarks.store [--samples N] [--reps N]`` prints the table. The images are
synthetic but image-like (a smooth field, a few warm blobs, sensor noise of 1 % of the range,
quantised to the native dtype), so the compression ratios are indicative, not universal: real
images with less noise compress better in both layouts. Each store is written through
:class:`~dsod_core.data.store.StoreWriter` exactly as the prepare stage writes it (gzip), then
read back through :class:`~dsod_core.data.store.StoreReader.read_image` in a random order, the
file in the page cache (the steady state of training), one thread.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Report, markdown_table

KIB = 1024


def _field(rng: np.random.Generator, h: int, w: int, lo: float, hi: float) -> np.ndarray:
    """A smooth field with warm blobs and 1 % noise in ``[lo, hi]`` (float64, rounded)."""
    from scipy import ndimage

    base = ndimage.gaussian_filter(rng.normal(size=(h, w)), 12)
    base = (base - base.min()) / (np.ptp(base) + 1e-9)
    img = lo + (hi - lo) * (0.2 + 0.6 * base)
    yy, xx = np.ogrid[:h, :w]
    for _ in range(6):
        y, x = rng.integers(0, h), rng.integers(0, w)
        r = rng.integers(5, 30)
        img[(yy - y) ** 2 + (xx - x) ** 2 < r * r] += (hi - lo) * 0.15
    img += rng.normal(0, (hi - lo) * 0.01, (h, w))
    return np.clip(np.round(img), lo, hi)


def _grey_float(codes: np.ndarray) -> Any:
    """Today's path through rgb: grey replicated to 3 float32 channels / 255."""
    from dsod_core.data.sample import Sample

    chw = np.repeat(codes.astype(np.uint8)[None], 3, 0)
    return Sample(chw.astype(np.float32) / 255.0, np.zeros((0, 4)), [], "x", "x", "train")


def _grey_native(channels: int) -> Callable[[np.ndarray], Any]:
    from dsod_core.data.sample import NativeImage, Sample

    def make(codes: np.ndarray) -> Any:
        chw = np.repeat(codes.astype(np.uint8)[None], channels, 0)
        native = NativeImage(chw, divisor=255.0)
        return Sample(native.decode(), np.zeros((0, 4)), [], "x", "x", "train", native=native)

    return make


def _scaled(dtype: Any, native: bool, **params: Any) -> Callable[[np.ndarray], Any]:
    from dsod_core.data.sample import NativeImage, Sample

    def make(codes: np.ndarray) -> Any:
        enc = NativeImage(codes.astype(dtype)[None], **params)
        image = enc.decode()
        return Sample(
            image, np.zeros((0, 4)), [], "x", "x", "train", native=enc if native else None
        )

    return make


CT_WINDOW = (-1000.0, 400.0)
_CT = dict(
    low=CT_WINDOW[0], high=CT_WINDOW[1], shift=CT_WINDOW[0], divisor=CT_WINDOW[1] - CT_WINDOW[0]
)
# (case, layout, (H, W), code range, sample maker)
CASES: list[tuple[str, str, tuple[int, int], tuple[float, float], Callable[..., Any]]] = [
    ("8-bit grey 512²", "today: rgb, 3 × float32", (512, 512), (0, 255), _grey_float),
    ("8-bit grey 512²", "native: 1 × uint8 (thermal-style)", (512, 512), (0, 255), _grey_native(1)),
    ("8-bit grey 512²", "native: 3 × uint8 (rgb)", (512, 512), (0, 255), _grey_native(3)),
    ("16-bit depth 480×640", "today: 1 × float32 m", (480, 640), (500, 8000),
     _scaled(np.uint16, False, scale=0.001)),
    ("16-bit depth 480×640", "native: 1 × uint16 mm", (480, 640), (500, 8000),
     _scaled(np.uint16, True, scale=0.001)),
    ("int16 CT 512²", "today: 1 × float32 window", (512, 512), (-1024, 1500),
     _scaled(np.int16, False, **_CT)),
    ("int16 CT 512²", "native: 1 × int16 HU + window", (512, 512), (-1024, 1500),
     _scaled(np.int16, True, **_CT)),
]  # fmt: skip


def measure(path: Path, make: Callable, shape, bounds, n: int, reps: int, seed: int) -> dict:
    """Write ``n`` samples to ``path``; bytes per sample and median random read seconds."""
    from dsod_core.data.store import StoreReader, StoreWriter

    rng = np.random.default_rng(seed)
    first = make(_field(rng, *shape, *bounds))
    names = [f"c{k}" for k in range(first.num_channels)]
    with StoreWriter(path, modality="bench", class_names=["a"], channel_names=names) as w:
        for i in range(n):
            sample = first if i == 0 else make(_field(rng, *shape, *bounds))
            sample.sample_id = f"s{i}"
            w.add(sample)
    reader = StoreReader(path)
    order = np.random.default_rng(seed + 1).permutation(n)
    for i in order[: min(5, n)]:
        reader.read_image(int(i))  # open the file, warm the caches
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for i in order:
            reader.read_image(int(i))
        times.append((time.perf_counter() - start) / n)
    dtype = str(reader._handle()["samples/0000000/image"].dtype)
    reader.close()
    return {
        "bytes_per_sample": os.path.getsize(path) / n,
        "read_s": float(np.median(times)),
        "dtype": dtype,
        "fallbacks": w.native_fallbacks,
    }


def bench_store(tmp: Path, report: Report, n: int = 40, reps: int = 3) -> dict[str, Any]:
    """The table of :data:`CASES`; returns the figures by case and layout."""
    out: dict[str, Any] = {}
    rows = []
    baseline: dict[str, float] = {}
    for k, (case, layout, shape, bounds, make) in enumerate(CASES):
        r = measure(tmp / f"store_{k}.h5", make, shape, bounds, n, reps, seed=k // 2)
        base = baseline.setdefault(case, r["bytes_per_sample"])
        r["size_vs_today"] = r["bytes_per_sample"] / base
        out.setdefault(case, {})[layout] = r
        rows.append(
            [case, layout, r["dtype"], r["bytes_per_sample"] / KIB, r["size_vs_today"],
             r["read_s"] * 1e3]
        )  # fmt: skip
    report.section(
        "Store: bytes and random sample read, float32 vs native dtype",
        markdown_table(
            ["images", "layout", "stored dtype", "KiB / sample", "÷ today", "read ms / sample"],
            rows,
        )
        + f"\n\n{n} synthetic samples per store (smooth field, warm blobs, 1 % noise), gzip as "
        "the prepare stage writes; read = `StoreReader.read_image` of every sample in a random "
        f"order, file in the page cache, median of {reps} passes, one thread.",
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dsod_bench_store_") as tmp:
        bench_store(Path(tmp), Report(), args.samples, args.reps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
