"""Data path benchmark: the training loader (``DetectionDataset`` + the default training
augmentation + ``detection_collate``, one process) over synthetic stores of 1, 4 and 13
channels, in images/s against what the training step consumes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.common import Plan, Report, markdown_table


def bench_loader(plan: Plan, tmp: Path, train_images_per_s: float, report: Report) -> dict:
    """Images/s of the training loader per channel count, ÷ what training consumes."""
    from torch.utils.data import DataLoader

    from dsod_core.data.collate import detection_collate
    from dsod_core.data.dataset import DetectionDataset
    from dsod_core.data.store import StoreReader
    from dsod_core.data.transforms import build_train_transform
    from tests.synthetic import write_synthetic_store

    out: dict[str, Any] = {}
    rows = []
    for channels in plan.loader_channels:
        path = write_synthetic_store(
            tmp / f"loader_{channels}.h5",
            n=plan.loader_images,
            size=plan.loader_size,
            channels=channels,
            seed=channels,
            splits=(1.0, 0.0),
        )
        reader = StoreReader(path)
        transform = build_train_transform(
            plan.input_size,
            None,
            channel_names=reader.channel_names,
            channel_mean=reader.mean,
            channel_std=reader.std,
            value_range=1.0,
        )
        dataset = DetectionDataset(reader, "train", transform, seed=0)
        loader = DataLoader(
            dataset, batch_size=plan.train_batch, shuffle=True, collate_fn=detection_collate
        )
        next(iter(loader))  # open the file, warm the caches
        count = 0
        start = time.perf_counter()
        for epoch in range(2):
            dataset.set_epoch(epoch)
            for batch in loader:
                count += len(batch["images"])
        seconds = time.perf_counter() - start
        rate = count / seconds
        out[str(channels)] = {"images_per_s": rate, "ratio_to_train": rate / train_images_per_s}
        rows.append([channels, rate, rate / train_images_per_s])
        reader.close()
    worst = min(v["ratio_to_train"] for v in out.values())
    out["loader_to_train_ratio"] = worst
    report.section(
        f"Data path: store loader with training augmentation, {plan.input_size} px",
        markdown_table(["channels", "images / s (1 process)", "÷ training images / s"], rows)
        + f"\n\nStores of {plan.loader_images} synthetic {plan.loader_size}² float32 images "
        "(gzip, as the prepare stage writes them); augmentation = the training default "
        "(zoom-out p 0.5, min-IoU crop, resize, flip); one loader process, no workers. "
        f"Training consumes {train_images_per_s:.3g} images/s ({plan.variant}, plain).",
    )
    return out
