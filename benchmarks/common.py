"""What every benchmark of ``python -m benchmarks.run`` shares: the run's sizes (:class:`Plan`,
``FULL`` and ``QUICK``), the targets, timing and memory helpers, the markdown report, and the
subprocess workers' launcher."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dsod_core.io import write_atomic

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


@dataclass(frozen=True)
class Plan:
    """Sizes of one run (``FULL`` is what the issue asks for, ``QUICK`` a smoke test)."""

    name: str
    variant: str
    input_size: int
    in_channels: int
    num_classes: int
    train_batch: int
    train_warmup: int
    train_reps: int
    train_rounds: int  # interleaved fresh processes per mode
    infer_batches: tuple[int, ...]
    infer_reps: int
    infer_max_seconds: float
    compile_guard_s: float  # 0 = do not try torch.compile
    mm_size: int
    loader_channels: tuple[int, ...]
    loader_images: int
    loader_size: int
    eval_images: int
    eval_dets: int
    eval_classes: int
    lowp_variant: str  # the model the reduced-precision accuracy is checked on
    lowp_images: int
    lowp_size: int
    lowp_epochs: int
    lowp_batch: int
    lowp_lr: float
    calib_count: int


FULL = Plan(
    name="full",
    variant="dsod300",
    input_size=300,
    in_channels=3,
    num_classes=20,
    train_batch=4,
    train_warmup=1,
    train_reps=3,
    train_rounds=2,
    infer_batches=(1, 8),
    infer_reps=3,
    infer_max_seconds=25.0,
    compile_guard_s=120.0,
    mm_size=3072,
    loader_channels=(1, 4, 13),
    loader_images=32,
    loader_size=300,
    eval_images=5000,
    eval_dets=100,
    eval_classes=80,
    lowp_variant="dsod300",
    lowp_images=100,
    lowp_size=300,
    lowp_epochs=7,
    lowp_batch=4,
    lowp_lr=0.05,
    calib_count=8,
)
QUICK = Plan(
    name="quick",
    variant="dsod_tiny",
    input_size=64,
    in_channels=3,
    num_classes=4,
    train_batch=2,
    train_warmup=1,
    train_reps=1,
    train_rounds=1,
    infer_batches=(1, 2),
    infer_reps=2,
    infer_max_seconds=2.0,
    compile_guard_s=0.0,
    mm_size=512,
    loader_channels=(1, 4, 13),
    loader_images=8,
    loader_size=64,
    eval_images=100,
    eval_dets=20,
    eval_classes=5,
    lowp_variant="dsod_tiny",
    lowp_images=40,
    lowp_size=32,
    lowp_epochs=1,
    lowp_batch=16,
    lowp_lr=0.1,
    calib_count=4,
)

# Targets of the issue.
TARGET_MEMORY = 0.5
TARGET_TIME = 1.0
TARGET_CEILING = 0.92
TARGET_LOWP_LATENCY = 0.20
TARGET_LOWP_MAP_DROP = 1.0
TARGET_LOADER = 10.0
TARGET_EVAL = 0.5
PAPER_TITAN_X_FPS = 17.4

FP32_PATHS = (
    "eager",
    "eager_channels_last",
    "bn_folded",
    "torch_compile",
    "onnx_fp32",
    "openvino_fp32",
)
LOWP_PATHS = ("onnx_int8", "openvino_int8", "bf16")


def plan_model(plan: Any, **overrides: Any) -> torch.nn.Module:
    """The random-weight model of a benchmark plan (seed 0)."""
    from dsod_core.model import build_model

    torch.manual_seed(0)
    return build_model(
        plan.variant,
        in_channels=plan.in_channels,
        num_classes=plan.num_classes,
        input_size=plan.input_size,
        **overrides,
    )


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def rss_mib() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(fn: Callable[[], Any], reps: int, warmup: int, max_seconds: float) -> list[float]:
    """Seconds of ``reps`` timed calls after ``warmup`` untimed ones; stops adding timed calls
    once ``max_seconds`` have been spent on them (at least one is always made)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < reps:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if sum(times) > max_seconds:
            break
    return times


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            if math.isnan(v):
                return "–"
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """Collects the sections' markdown and prints each as it is made."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def section(self, title: str, body: str) -> None:
        text = f"## {title}\n\n{body}\n"
        print(text, flush=True)
        self.parts.append(text)


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model and flags, versions, thread count and load average of this run."""
    import onnxruntime

    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpu_flags": {f: f in flags for f in wanted},
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cuda": torch.cuda.is_available(),
        "load_average_start": list(os.getloadavg()),
    }


def synthetic_targets(
    batch: int, size: int, num_classes: int, gen: torch.Generator
) -> list[dict[str, torch.Tensor]]:
    """``batch`` random targets of three boxes each (labels 1..num_classes, none difficult)."""
    targets = []
    for _ in range(batch):
        n = 3
        xy = torch.rand(n, 2, generator=gen) * size * 0.6
        wh = torch.rand(n, 2, generator=gen) * size * 0.35 + size * 0.05
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1),
                "labels": torch.randint(1, num_classes + 1, (n,), generator=gen),
                "difficult": torch.zeros(n, dtype=torch.bool),
            }
        )
    return targets


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1, default=float))


def write_text(path: Path, text: str) -> None:
    write_atomic(path, text)


def run_worker(args: list[str], timeout: float, env: dict[str, str] | None = None):
    """Run ``python -m benchmarks.run <args>``; returns (JSON lines printed, error or None)."""
    cmd = [sys.executable, "-m", "benchmarks.run", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    error = None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        error = f"timed out after {timeout:.0f} s"
    if error is None and proc.returncode != 0:
        error = f"exit {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}"
    lines = []
    for line in out.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines, error
