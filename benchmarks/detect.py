"""``dsod detect`` speed and memory: whole multispectral scenes per backend, a whole CT volume.

``python -m benchmarks.detect [--sizes 10000,12000] [--backends eager,onnx,int8]
[--size-backends eager] [--ct 512x512x300] [--out benchmarks/detect_results.json]``

Needs the demo models of ``make repro`` (``--ms-model``, ``--ct-model``; defaults
``models/multispectral_demo/scratch-f1.0/seed-0/model.pt`` and
``models/medical_demo/scratch-f1.0/seed-0/model.pt``).

Method. Scenes: an 8-band uint16 GeoTIFF (deflate, 256 px tiles, UTM) of side S, tiled from
the demo's ``scene_00.tif`` so it holds real-looking ground and objects, written once per size
into a temporary folder. Each measurement is ``python -m pipelines.detect`` in a fresh
process (default window and overlap: the model's 64 px chip, 32 px overlap); its wall time
and its peak resident set (``ru_maxrss`` from ``wait4``, the process alone) are recorded.
Megapixels per second = S^2 / wall time, so model loading, the statistics read and the
GeoJSON writing are included. The first size runs every backend in ``--backends``; the other
sizes run ``--size-backends`` (default eager), to show that memory does not grow with the
scene. CT: a 512 x 512 x 300 int16 NIfTI (0.7 x 0.7 x 1.25 mm) with spheres, through the
medical demo model; slices per second = slices / wall time. ``--quick`` runs tiny sizes (a
smoke test of the script, not figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_scene(path: Path, size: int, source: Path) -> Path:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(source) as src:
        tile, crs, transform, nodata = src.read(), src.crs, src.transform, src.nodata
    th, tw = tile.shape[1:]
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=tile.shape[0],
        dtype=tile.dtype, crs=crs, transform=transform, nodata=nodata, tiled=True,
        blockxsize=256, blockysize=256, compress="deflate",
    ) as ds:  # fmt: skip
        for row in range(0, size, 1024):
            h = min(1024, size - row)
            rows = np.tile(tile, (1, h // th + 2, size // tw + 2))
            ds.write(rows[:, :h, :size], window=Window(0, row, size, h))
    return path


def write_ct(path: Path, shape: tuple[int, int, int]) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(0)
    vol = rng.normal(-800, 30, shape).astype(np.float32)
    i, j, k = np.ogrid[: shape[0], : shape[1], : shape[2]]
    spacing = np.array([0.7, 0.7, 1.25])
    for _ in range(12):
        c = rng.uniform(0.2, 0.8, 3) * shape
        r = rng.uniform(4, 12)  # mm
        d2 = (((i - c[0]) * spacing[0]) ** 2 + ((j - c[1]) * spacing[1]) ** 2
              + ((k - c[2]) * spacing[2]) ** 2)  # fmt: skip
        vol[d2 <= r * r] = 40.0
    affine = np.diag([-0.7, -0.7, 1.25, 1.0])
    nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), str(path))
    return path


def measure(args: list[str], threads: int) -> dict:
    """Wall time and peak RSS of one ``pipelines.detect`` process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "pipelines.detect", *args, "--no-progress"]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark run failed: {' '.join(cmd)}\n{err.strip()}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "line": out.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,12000")
    parser.add_argument("--backends", default="eager,onnx,int8")
    parser.add_argument("--size-backends", default="eager")
    parser.add_argument("--ct", default="512x512x300")
    runs = "models/{}/scratch-f1.0/seed-0/model.pt"
    parser.add_argument("--ms-model", default=runs.format("multispectral_demo"))
    parser.add_argument("--ct-model", default=runs.format("medical_demo"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/detect_results.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    a = parser.parse_args(argv)
    if a.quick:
        a.sizes, a.ct, a.backends = "300,400", "64x64x12", "eager,onnx"
    for m in (a.ms_model, a.ct_model):
        if not (ROOT / m).is_file() and not Path(m).is_file():
            raise SystemExit(f"error: {m}: no model (run `make repro` first, or pass --*-model)")
    sizes = [int(s) for s in a.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dsod-bench-detect-") as tmp:
        tmp = Path(tmp)
        for n, size in enumerate(sizes):
            scene = write_scene(
                tmp / f"scene_{size}.tif", size, ROOT / "data/demo/multispectral/scene_00.tif"
            )
            backends = a.backends if n == 0 else a.size_backends
            for backend in backends.split(","):
                r = measure(
                    ["--model", a.ms_model, "--out", str(tmp / "out"), str(scene),
                     "--backend", backend, "--batch-size", str(a.batch_size)],
                    a.threads,
                )  # fmt: skip
                r.update(
                    input=f"{size} x {size} x 8 GeoTIFF",
                    backend=backend,
                    megapixels_per_s=size * size / 1e6 / r["seconds"],
                )
                rows.append(r)
                print(
                    f"{r['input']:>26}  {backend:>5}  {r['seconds']:8.1f} s  "
                    f"{r['megapixels_per_s']:6.2f} MP/s  peak RSS {r['peak_rss_mb']:7.0f} MB",
                    flush=True,
                )
            scene.unlink()
        shape = tuple(int(v) for v in a.ct.split("x"))
        ct = write_ct(tmp / "ct.nii.gz", shape)
        r = measure(
            ["--model", a.ct_model, "--out", str(tmp / "out"), str(ct),
             "--batch-size", str(a.batch_size)],
            a.threads,
        )  # fmt: skip
        r.update(input=f"{a.ct} CT NIfTI", backend="eager", slices_per_s=shape[2] / r["seconds"])
        rows.append(r)
        print(
            f"{r['input']:>26}  eager  {r['seconds']:8.1f} s  {r['slices_per_s']:6.1f} slices/s"
            f"  peak RSS {r['peak_rss_mb']:7.0f} MB"
        )
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    doc = {"machine": machine, "threads": a.threads, "quick": a.quick, "rows": rows}
    if not a.quick:
        from dsod_core.io import write_json

        write_json(ROOT / a.out, doc, indent=1)
    print(json.dumps({"machine": machine, "threads": a.threads}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
