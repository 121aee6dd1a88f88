"""GPU section of ``python -m benchmarks.run``: AMP training and inference throughput of the
plan's variant, beside the paper's DSOD300 figure (skipped without a CUDA device). The full
GPU benchmark is ``benchmarks/gpu.py`` (``make bench-gpu``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import PAPER_TITAN_X_FPS, Plan, Report, markdown_table, synthetic_targets


def _sync_timed(fn: Callable[[], Any], reps: int) -> float:
    """Seconds per call of ``fn`` after three warm-up calls, synchronised around the timing."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps


def _train_images_per_s(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    size: int,
) -> float:
    """SGD steps with float16 autocast and a GradScaler on a fixed batch."""
    from dsod_core.loss import MultiBoxLoss

    criterion = MultiBoxLoss(model.default_boxes)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")

    def train_step() -> None:
        with torch.autocast("cuda", dtype=torch.float16):
            loc, conf = model(images)
        loss = criterion(loc.float(), conf.float(), targets, image_size=(size, size))["loss"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    return len(images) / _sync_timed(train_step, 10)


def _infer_images_per_s(model: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Images/s of float16 autocast inference at batch 1 and 32."""
    model.eval()
    infer = {}
    for b in (1, 32):
        x = images[:b]

        @torch.inference_mode()
        def forward(x: torch.Tensor = x) -> None:
            with torch.autocast("cuda", dtype=torch.float16):
                model(x)

        infer[str(b)] = b / _sync_timed(forward, 20)
    return infer


def bench_gpu(plan: Plan, report: Report) -> dict[str, Any]:
    """Training (batch 32) and inference (batch 1, 32) images/s on the GPU."""
    if not torch.cuda.is_available():
        report.section("GPU", "Skipped: no CUDA device on this machine.")
        return {"skipped": "no CUDA device"}
    from dsod_core.model import build_model

    device = torch.device("cuda")
    size = plan.input_size
    model = build_model(
        plan.variant, in_channels=3, num_classes=plan.num_classes, input_size=size
    ).to(device, memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    batch = 32
    images = torch.randn(batch, 3, size, size).to(device, memory_format=torch.channels_last)
    targets = [
        {k: v.to(device) for k, v in t.items()}
        for t in synthetic_targets(batch, size, plan.num_classes, gen)
    ]
    train_ips = _train_images_per_s(model, images, targets, size)
    infer = _infer_images_per_s(model, images)
    out = {
        "device": torch.cuda.get_device_name(),
        "train_images_per_s": train_ips,
        "infer_images_per_s": infer,
    }
    report.section(
        f"GPU: {out['device']}",
        markdown_table(
            ["measure", "images / s"],
            [
                ["training (AMP fp16 + channels_last, batch 32)", train_ips],
                ["inference batch 1 (AMP)", infer["1"]],
                ["inference batch 32 (AMP)", infer["32"]],
                ["paper: DSOD300 on a Titan X (batch 1)", PAPER_TITAN_X_FPS],
            ],
        ),
    )
    return out
