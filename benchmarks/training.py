"""Training step benchmark: time per image and memory of the plain and memory-efficient dense
layers (and the naive reference model, for ``dsod300``), each mode in a fresh process.

Memory = peak RSS − RSS after the model, optimiser and batch exist (activations, gradients,
momentum). The workers run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns every
large block to the system when it is freed: RSS then follows the memory in use instead of the
allocator's high-water mark.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from benchmarks.common import (
    Plan,
    Report,
    markdown_table,
    peak_rss_mib,
    plan_model,
    rss_mib,
    run_worker,
    synthetic_targets,
    timed,
)


def train_worker(plan: Plan, mode: str) -> dict[str, Any]:
    """One mode's training steps in this (fresh) process: time per image and peak memory."""
    from dsod_core.loss import MultiBoxLoss

    model = plan_model(plan, memory_efficient=mode.startswith("memory_efficient")).train()
    default_boxes = model.default_boxes
    if mode == "naive":
        from benchmarks.naive import build_naive

        model = build_naive(model).train()
    criterion = MultiBoxLoss(default_boxes)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1)
    size = plan.input_size
    images = torch.randn(plan.train_batch, plan.in_channels, size, size, generator=gen)
    if mode.endswith("channels_last"):
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    targets = synthetic_targets(plan.train_batch, size, plan.num_classes, gen)
    baseline = rss_mib()
    losses = []

    def step() -> None:
        loc, conf = model(images)
        loss = criterion(loc, conf, targets, image_size=(size, size))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    times = timed(step, plan.train_reps, plan.train_warmup, float("inf"))
    peak = peak_rss_mib()
    step_s = statistics.median(times)
    return {
        "mode": mode,
        "step_s": step_s,
        "step_times_s": times,
        "s_per_image": step_s / plan.train_batch,
        "images_per_s": plan.train_batch / step_s,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak,
        "train_memory_mib": peak - baseline,
        "first_loss": losses[0],
    }


def _run_rounds(
    plan: Plan, threads: int, modes: tuple[str, ...]
) -> dict[str, list[dict[str, Any]]]:
    """Interleaved rounds (naive, plain, efficient, naive, ...), each mode in a fresh process
    per round: on a shared machine a burst of load then hits every mode alike."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for _ in range(plan.train_rounds):
        for mode in modes:
            lines, error = run_worker(
                ["--worker", "train", "--mode", mode, "--plan", plan.name,
                 "--threads", str(threads)],
                timeout=900,
                env={"MALLOC_MMAP_THRESHOLD_": "65536"},
            )  # fmt: skip
            if error or not lines:
                raise RuntimeError(f"training worker ({mode}) failed: {error}")
            runs[mode].append(lines[-1])
    return runs


def _best_of_rounds(plan: Plan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode over all rounds: its best step (the least-disturbed one), the largest
    memory, the smallest baseline."""
    times = [t for r in rows for t in r["step_times_s"]]
    best = min(times)
    return {
        **rows[0],
        "step_s": best,
        "step_times_s": times,
        "s_per_image": best / plan.train_batch,
        "images_per_s": plan.train_batch / best,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
        "train_memory_mib": max(r["train_memory_mib"] for r in rows),
        "baseline_rss_mib": min(r["baseline_rss_mib"] for r in rows),
    }


def _training_section(
    plan: Plan, results: dict[str, Any], out: dict[str, Any], reference: str, report: Report
) -> None:
    rows = [
        [
            mode,
            r["s_per_image"],
            r["images_per_s"],
            r["train_memory_mib"],
            r["peak_rss_mib"],
            r["baseline_rss_mib"],
        ]
        for mode, r in results.items()
    ]
    rows.append(
        [
            f"ratio (memory_efficient ÷ {reference})",
            out["train_time_ratio"],
            float("nan"),
            out["train_memory_ratio"],
            out["peak_rss_ratio"],
            float("nan"),
        ]
    )
    report.section(
        f"Training step: {plan.variant}, {plan.input_size} px, batch {plan.train_batch}, CPU",
        markdown_table(
            [
                "dense layers",
                "s / image",
                "images / s",
                "memory MiB (peak − baseline)",
                "peak RSS MiB",
                "baseline RSS MiB",
            ],
            rows,
        )
        + f"\n\nBest of {plan.train_rounds} × {plan.train_reps} steps per mode: "
        f"{plan.train_rounds} interleaved rounds, each mode in a fresh process per round, "
        f"{plan.train_warmup} warm-up step first (SGD + MultiBoxLoss on a fixed random "
        "batch); memory is the round's maximum; baseline = RSS once "
        "model, optimiser and batch exist, so the memory column holds activations, gradients "
        "and momentum. Workers run with MALLOC_MMAP_THRESHOLD_=65536 so that RSS follows the "
        "memory in use rather than glibc's retained heap.",
    )


def bench_training(plan: Plan, threads: int, report: Report) -> dict[str, Any]:
    """Every mode's step time and memory, and memory_efficient ÷ the reference."""
    # The side-by-side reference is the naive model (benchmarks/naive.py) where the variant
    # has one; the project's plain dense layers otherwise.
    reference = "naive" if plan.variant == "dsod300" else "plain"
    modes = ("naive", "plain", "memory_efficient") if reference == "naive" else ("plain",)
    if reference == "plain":
        modes += ("memory_efficient",)
    runs = _run_rounds(plan, threads, modes)
    results = {mode: _best_of_rounds(plan, rows) for mode, rows in runs.items()}
    plain, eff = results[reference], results["memory_efficient"]
    out = {
        **results,
        "reference": reference,
        "train_memory_ratio": eff["train_memory_mib"] / plain["train_memory_mib"],
        "train_time_ratio": eff["step_s"] / plain["step_s"],
        "peak_rss_ratio": eff["peak_rss_mib"] / plain["peak_rss_mib"],
    }
    _training_section(plan, results, out, reference, report)
    return out
