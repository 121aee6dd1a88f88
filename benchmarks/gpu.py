"""GPU benchmark: ``dsod300`` training and inference throughput, the loader against it, and
evaluation on the GPU, in one run (``make bench-gpu``; ``python -m benchmarks.gpu``).

Writes its figures into ``benchmarks/results.json`` (key ``gpu``, the rest of the file kept)
and a "GPU" section of ``benchmarks/RESULTS.md`` (between markers, the rest kept), with the
GPU's name, memory, compute capability, driver and CUDA versions.

Measured, each on a fixed synthetic batch, after warm-up, with ``torch.cuda.synchronize``
around the timed passes:

- training images/s at ``--train-batch`` (default 32), 300 px: float32; AMP (bfloat16 where
  the GPU has it, else float16 + GradScaler: ``train.amp``); AMP + channels-last; AMP +
  channels-last + ``torch.compile`` (``train.compile``), with peak GPU memory;
- the training loader (the default augmentation, ``DetectionDataset`` + ``DataLoader``
  workers + pinned memory, as ``train.num_workers`` sets them) in images/s for 0 and
  ``--workers`` processes, ÷ the fastest training figure (target ≥ 2×);
- inference images/s at batch 1 and 32: float32, bfloat16/float16 autocast, + channels-last,
  + ``torch.compile``, + a CUDA graph (batch 1), via :func:`dsod_core.runners.cuda_runner`;
- evaluation on the GPU: the evaluate stage's engine (:func:`create_evaluator`) over a
  synthetic store split, images/s, and the VOC/COCO scoring time after it;
- from the training figure: how long the paper's VOC 07+12 recipe (100k iterations at batch
  128) takes on this GPU, and on 8 with DDP assuming linear scaling (not measured).

``--smoke`` runs the same code on the CPU at tiny sizes (``dsod_tiny``, 64 px; CUDA graphs
and AMP skipped) and writes nothing unless ``--out`` is given: a test of the script, not
figures (``tests/test_gpu.py``). Without CUDA and without ``--smoke`` it says so and exits 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
PAPER_TITAN_X_FPS = 17.4
VOC_ITERATIONS = 100_000
VOC_BATCH = 128
BEGIN = "<!-- gpu:begin -->"
END = "<!-- gpu:end -->"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 3) -> float:
    """Median seconds of ``reps`` calls of ``fn`` after ``warmup`` (synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gpu_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
    }
    if device.type != "cuda":
        return info
    props = torch.cuda.get_device_properties(device)
    info.update(
        {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "bf16_supported": bool(torch.cuda.is_bf16_supported()),
        }
    )
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        info["driver"] = None
    return info


def _targets(batch: int, size: int, classes: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        n = 3
        xy = torch.rand(n, 2, generator=gen) * size * 0.6
        wh = torch.rand(n, 2, generator=gen) * size * 0.3 + size * 0.05
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(1, classes + 1, (n,), generator=gen)
        out.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return out


def _train_mode(
    args, device: torch.device, amp: torch.dtype | None, cl: bool, comp: bool
) -> dict[str, Any]:
    """Images/s of one training configuration (a fresh model, optimiser and batch)."""
    from dsod_core.engine.trainer import CompiledForward
    from dsod_core.loss import MultiBoxLoss
    from dsod_core.model import build_model

    size, batch = args.size, args.train_batch
    torch.manual_seed(0)
    model = build_model(args.variant, in_channels=3, num_classes=20, input_size=size)
    model = model.to(device).train()
    if cl:
        model = model.to(memory_format=torch.channels_last)
    forward = CompiledForward(model) if comp else model
    criterion = MultiBoxLoss(model.default_boxes)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    images = torch.randn(batch, 3, size, size, device=device)
    if cl:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = _targets(batch, size, 20, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loc, conf = forward(images)
        loss = criterion(loc.float(), conf.float(), targets, image_size=(size, size))["loss"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    step()  # includes compiling
    first = time.perf_counter() - start
    seconds = timed(step, device, args.reps, warmup=2)
    row: dict[str, Any] = {"images_per_s": batch / seconds, "step_s": seconds}
    row["first_step_s"] = first
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if comp:
        row["compile_failed"] = forward.failed
    return row


def bench_training(args, device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    size, batch = args.size, args.train_batch
    modes = [("fp32", None, False, False)]
    if dtype is not None:
        modes += [
            ("amp", dtype, False, False),
            ("amp_channels_last", dtype, True, False),
            ("amp_channels_last_compile", dtype, True, True),
        ]
    else:  # CPU smoke: the layout and compile paths still run
        modes += [("channels_last", None, True, False), ("channels_last_compile", None, True, True)]
    results: dict[str, Any] = {}
    for name, amp, cl, comp in modes:
        results[name] = _train_mode(args, device, amp, cl, comp)
        print(f"  train {name}: {results[name]['images_per_s']:.1f} images/s", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    best = max(results, key=lambda k: results[k]["images_per_s"])
    return {"batch": batch, "size": size, "modes": results, "best": best}


def bench_loader(args, tmp: Path, train_ips: float) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from dsod_core.data.collate import detection_collate
    from dsod_core.data.dataset import DetectionDataset
    from dsod_core.data.store import StoreReader
    from dsod_core.data.transforms import build_train_transform
    from tests.synthetic import write_synthetic_store

    store = write_synthetic_store(
        tmp / "loader.h5", n=args.loader_images, size=args.size, channels=3, seed=3, splits=(1, 0)
    )
    reader = StoreReader(store)
    dataset = DetectionDataset(reader, "train", build_train_transform(args.size), seed=0)
    out = {}
    for workers in sorted({0, args.workers}):
        loader = DataLoader(
            dataset,
            batch_size=min(args.train_batch, len(dataset)),
            shuffle=True,
            num_workers=workers,
            collate_fn=detection_collate,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
            persistent_workers=False,
        )
        start = time.perf_counter()
        seen = 0
        for _ in range(args.loader_passes):
            for batch in loader:
                seen += len(batch["images"])
        seconds = time.perf_counter() - start
        out[str(workers)] = {"images_per_s": seen / seconds, "ratio": seen / seconds / train_ips}
        print(f"  loader {workers} workers: {seen / seconds:.0f} images/s", flush=True)
    return {"workers": out, "train_images_per_s": train_ips}


def bench_inference(args, device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    from dsod_core.model import build_model
    from dsod_core.runners import cuda_runner, eager_runner

    size = args.size
    torch.manual_seed(0)
    base = build_model(args.variant, in_channels=3, num_classes=20, input_size=size).eval()
    paths: dict[str, Callable[[], Callable]] = {}
    if device.type == "cuda":

        def make(**kw) -> Callable[[], Callable]:
            import copy

            return lambda: cuda_runner(copy.deepcopy(base).to(device), **kw)

        paths["fp32"] = make(dtype=None, channels_last=False)
        if dtype is not None:
            paths["amp"] = make(dtype=dtype, channels_last=False)
            paths["amp_channels_last"] = make(dtype=dtype)
            paths["amp_channels_last_compile"] = make(dtype=dtype, compile=True)
            paths["amp_channels_last_cuda_graph"] = make(dtype=dtype, cuda_graph=True)
    else:
        paths["fp32"] = lambda: eager_runner(base)
        paths["channels_last"] = lambda: eager_runner(base, channels_last=True)
    results: dict[str, Any] = {}
    for name, make_runner in paths.items():
        runner = make_runner()
        row = {}
        for batch in (1, args.infer_batch):
            if batch != 1 and name.endswith("cuda_graph"):
                continue
            x = torch.randn(batch, 3, size, size, device=device)
            seconds = timed(lambda r=runner, x=x: r(x), device, args.reps)
            row[str(batch)] = batch / seconds
        results[name] = row
        print(f"  infer {name}: " + ", ".join(f"b{b} {v:.0f}/s" for b, v in row.items()))
    best1 = max(results, key=lambda k: results[k]["1"])
    bestn = max(
        (k for k in results if str(args.infer_batch) in results[k]),
        key=lambda k: results[k][str(args.infer_batch)],
    )
    return {"images_per_s": results, "best_batch1": best1, "best_batch_n": bestn}


def bench_eval(args, tmp: Path, device: torch.device) -> dict[str, Any]:
    from dsod_core.data.store import StoreReader
    from dsod_core.engine.evaluator import create_evaluator, eval_loader, score_predictions
    from dsod_core.model import build_model
    from tests.synthetic import write_synthetic_store

    store = write_synthetic_store(
        tmp / "eval.h5", n=args.eval_images, size=args.size, channels=3, seed=5, splits=(0.2, 0)
    )
    reader = StoreReader(store)
    torch.manual_seed(0)
    model = build_model(args.variant, in_channels=3, num_classes=2, input_size=args.size)
    model = model.to(device).eval()
    loader = eval_loader(reader, "test", args.size, args.infer_batch, num_workers=args.workers)
    evaluator = create_evaluator(model, device, {"score_threshold": 0.01})
    start = time.perf_counter()
    evaluator.run(loader)
    _sync(device)
    network_s = time.perf_counter() - start
    start = time.perf_counter()
    score_predictions(reader, evaluator.state.predictions)
    scoring_s = time.perf_counter() - start
    n = len(reader.split_indices("test"))
    return {
        "images": n,
        "network_and_nms_s": network_s,
        "images_per_s": n / network_s,
        "scoring_s": scoring_s,
    }


def voc_estimate(train_ips: float) -> dict[str, float]:
    hours = VOC_ITERATIONS * VOC_BATCH / train_ips / 3600
    return {"one_gpu_hours": hours, "eight_gpus_linear_hours": hours / 8}


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        "## GPU",
        "",
        f"Run {info['date_utc']} with `python -m benchmarks.gpu`"
        + (" --smoke (CPU, tiny sizes: not figures)" if results.get("smoke") else "")
        + ".",
        "",
        "| machine | |",
        "|---|---|",
    ]
    for key in ("gpu", "gpu_memory_gib", "compute_capability", "driver", "cuda", "cudnn",
                "bf16_supported", "torch", "python"):  # fmt: skip
        if key in info:
            lines.append(f"| {key} | {info[key]} |")
    tr = results["training"]
    lines += ["", f"Training, {results['variant']} at {tr['size']} px, batch {tr['batch']}:", ""]
    lines += ["| mode | images/s | first step s | peak GPU memory GiB |", "|---|---|---|---|"]
    for name, row in tr["modes"].items():
        note = f" (compile failed: {row['compile_failed']})" if row.get("compile_failed") else ""
        lines.append(
            f"| {name}{note} | {row['images_per_s']:.1f} | {row['first_step_s']:.1f} | "
            f"{row.get('peak_memory_gib', float('nan')):.2f} |"
        )
    ld = results["loader"]
    lines += ["", "| loader workers | images/s | ÷ best training images/s |", "|---|---|---|"]
    for w, row in ld["workers"].items():
        lines.append(f"| {w} | {row['images_per_s']:.0f} | {row['ratio']:.2f} |")
    inf = results["inference"]["images_per_s"]
    batches = sorted({b for row in inf.values() for b in row}, key=int)
    lines += ["", "| inference path | " + " | ".join(f"b{b} images/s" for b in batches) + " |"]
    lines.append("|---|" + "---|" * len(batches))
    for name, row in inf.items():
        cells = " | ".join(f"{row[b]:.0f}" if b in row else "–" for b in batches)
        lines.append(f"| {name} | {cells} |")
    best1 = results["inference"]["best_batch1"]
    ev = results["evaluation"]
    voc = results["voc_estimate"]
    lines += [
        "",
        f"Batch 1: {inf[best1]['1']:.0f} images/s ({best1}); the paper: "
        f"{PAPER_TITAN_X_FPS} fps on a Titan X.",
        f"Evaluation on the device: {ev['images']} images, network + NMS "
        f"{ev['images_per_s']:.0f} images/s, VOC/COCO scoring {ev['scoring_s']:.1f} s.",
        f"The paper's VOC 07+12 recipe ({VOC_ITERATIONS} iterations at batch {VOC_BATCH}) at "
        f"the best training figure ({tr['modes'][tr['best']]['images_per_s']:.1f} images/s, "
        f"{tr['best']}): {voc['one_gpu_hours']:.1f} h on this GPU; "
        f"{voc['eight_gpus_linear_hours']:.1f} h on 8 with DDP if scaling were linear "
        "(not measured).",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(results: dict[str, Any], out_dir: Path) -> None:
    from dsod_core.io import write_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["gpu"] = results
    write_atomic(path, json.dumps(data, indent=1, default=str) + "\n")
    md = out_dir / "RESULTS.md"
    text = md.read_text() if md.is_file() else "# DSOD benchmarks\n"
    block = f"{BEGIN}\n{markdown(results)}{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_atomic(md, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: a test only")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--infer-batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    if args.smoke:
        device = torch.device("cpu")
        args.variant, args.size = "dsod_tiny", 64
        args.train_batch, args.infer_batch, args.reps = 2, 2, 1
        args.workers = min(args.workers, 1)
        args.loader_images, args.loader_passes, args.eval_images = 8, 1, 8
    elif not torch.cuda.is_available():
        print("benchmarks.gpu: no CUDA device on this machine (use --smoke to test the script)",
              file=sys.stderr)  # fmt: skip
        return 2
    else:
        device = torch.device("cuda")
        args.variant, args.size = "dsod300", 300
        args.loader_images, args.loader_passes, args.eval_images = 256, 2, 500
        torch.backends.cudnn.benchmark = True
    from dsod_core.engine.trainer import amp_dtype

    dtype = amp_dtype(True, device)
    results: dict[str, Any] = {
        "machine": gpu_info(device),
        "variant": args.variant,
        "smoke": bool(args.smoke),
        "amp_dtype": str(dtype).replace("torch.", "") if dtype else None,
    }
    with tempfile.TemporaryDirectory(prefix="dsod_gpu_") as tmp_name:
        tmp = Path(tmp_name)
        results["training"] = bench_training(args, device, dtype)
        best = results["training"]["modes"][results["training"]["best"]]["images_per_s"]
        results["loader"] = bench_loader(args, tmp, best)
        results["inference"] = bench_inference(args, device, dtype)
        results["evaluation"] = bench_eval(args, tmp, device)
    results["voc_estimate"] = voc_estimate(best)
    print(markdown(results))
    out = args.out if args.out is not None else (None if args.smoke else ROOT / "benchmarks")
    if out is not None:
        write_outputs(results, out)
        print(f"wrote {out / 'results.json'} (key gpu) and {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
