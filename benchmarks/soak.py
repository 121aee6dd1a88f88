"""Soak: train the tiny variant for many iterations and watch the resident memory.

``python -m benchmarks.soak [--iterations 1000]`` (from the repository root) trains
``dsod_tiny`` (input 48, batch 8, the training augmentation on) on a synthetic 2-channel store,
through the trainer's own pieces (the ``setup_*`` functions of
:mod:`dsod_core.engine.trainer`: the same optimiser, schedule, update step, loss, sampler and
transforms as a real run) plus a checkpoint written at every epoch end as a real run does.
Every ``--sample-every`` iterations it reads the process's resident set size
(``/proc/self/statm``; ``ru_maxrss``, the peak, where /proc is missing) and prints a table,
then a verdict.

Verdict: the first ``--warmup`` fraction of iterations (default 20 %) is warm-up (allocator
pools, autograd buffers, DataLoader caches fill up). Growth = median RSS of the last three
samples minus the RSS at the end of warm-up. PASS when growth < ``--max-growth-mib`` (20 MiB)
and < ``--max-growth-pct`` (5 %) of the warm-up RSS; exit status 0 on PASS, 1 on FAIL. The
least-squares slope after warm-up (MiB per 1000 iterations) is printed as well: a steady leak
shows there even when the run is too short for the growth to cross the threshold.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from dsod_core.data.store import StoreReader
from dsod_core.engine.checkpoint import checkpointer
from dsod_core.engine.config import TrainConfig
from dsod_core.engine.trainer import (
    setup_data,
    setup_model,
    setup_optimizer,
    setup_scaler,
    setup_scheduler,
    setup_trainer,
    unwrap,
)
from dsod_core.io import write_json
from dsod_core.loss import MultiBoxLoss

MIB = 2**20


def rss_mib() -> float:
    """Current resident set size of this process in MiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / MIB
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, B on macOS
        return peak / (MIB if sys.platform == "darwin" else 1024)


def synthetic_store(path: Path, n: int, size: int, channels: int) -> Path:
    """A store of squares and discs on noise (the engine tests' generator)."""
    try:
        from tests.synthetic import write_synthetic_store
    except ImportError as exc:  # run from elsewhere than the repository root
        raise SystemExit(f"run from the repository root (tests/synthetic.py): {exc}") from exc
    return write_synthetic_store(path, n=n, size=size, channels=channels)


def soak(
    store: Path,
    work: Path,
    iterations: int,
    sample_every: int,
    batch_size: int = 8,
    input_size: int = 48,
    num_workers: int = 0,
) -> list[dict[str, float]]:
    """Train ``iterations`` steps; returns the samples ``{iteration, rss_mib, seconds, loss}``."""
    config = TrainConfig(
        store=str(store),
        out_dir=str(work),
        variant="dsod_tiny",
        input_size=input_size,
        batch_size=batch_size,
        iterations=iterations,
        warmup_steps=20,
        lr=0.05,
        grad_clip=10.0,
        num_workers=num_workers,
        progress=False,
        dvclive=False,
        eval_every=0,
        augmentation={"zoom_out": 0.3, "crop": True, "flip": True, "noise_std": 0.05},
    )
    device = torch.device("cpu")
    reader = StoreReader(store)
    model, _ = setup_model(config, reader, device)
    optimizer = setup_optimizer(config, model)
    loader, sampler = setup_data(config, reader)
    epochs = math.ceil(iterations / sampler.steps_per_epoch)
    scheduler = setup_scheduler(config, optimizer, iterations)
    criterion = MultiBoxLoss(unwrap(model).default_boxes)
    scaler = setup_scaler(config, device)  # off on the CPU
    trainer: Engine = setup_trainer(config, model, optimizer, criterion, scheduler, scaler, device)

    samples: list[dict[str, float]] = []
    t0 = time.perf_counter()

    def record(engine: Engine) -> None:
        samples.append(
            {
                "iteration": engine.state.iteration,
                "rss_mib": rss_mib(),
                "seconds": time.perf_counter() - t0,
                "loss": float(engine.state.output["loss"]),
            }
        )

    @trainer.on(Events.EPOCH_STARTED)
    def _plan(engine: Engine) -> None:
        sampler.set_epoch(engine.state.epoch - 1)
        loader.dataset.set_epoch(engine.state.epoch - 1)

    saver = checkpointer(
        work / "checkpoints",
        {
            "model": unwrap(model),
            "optimizer": optimizer,
            "scheduler": scheduler,
            "trainer": trainer,
        },
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, saver)

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), record)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=sample_every), record)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=iterations), lambda e: e.terminate())
    trainer.run(loader, max_epochs=epochs, epoch_length=sampler.steps_per_epoch)
    if not samples or samples[-1]["iteration"] != trainer.state.iteration:
        record(trainer)
    reader.close()
    return samples


def verdict(
    samples: list[dict[str, float]],
    iterations: int,
    warmup: float,
    max_growth_mib: float,
    max_growth_pct: float,
) -> dict[str, Any]:
    """Growth after warm-up (see the module docstring) and PASS/FAIL."""
    warm_end = warmup * iterations
    after = [s for s in samples if s["iteration"] >= warm_end]
    if len(after) < 2:
        raise SystemExit("too few samples after warm-up: raise --iterations or --sample-every")
    baseline = after[0]["rss_mib"]
    final = float(np.median([s["rss_mib"] for s in after[-3:]]))
    growth = final - baseline
    pct = 100.0 * growth / baseline
    it = np.array([s["iteration"] for s in after], dtype=np.float64)
    rss = np.array([s["rss_mib"] for s in after], dtype=np.float64)
    slope = float(np.polyfit(it, rss, 1)[0] * 1000.0) if len(after) >= 3 else float("nan")
    ok = growth < max_growth_mib and pct < max_growth_pct
    return {
        "iterations": iterations,
        "warmup_iterations": int(math.ceil(warm_end)),
        "rss_start_mib": samples[0]["rss_mib"],
        "rss_after_warmup_mib": baseline,
        "rss_final_mib": final,
        "rss_peak_after_warmup_mib": float(rss.max()),
        "growth_mib": growth,
        "growth_pct": pct,
        "slope_mib_per_1000_it": slope,
        "threshold": f"growth < {max_growth_mib:g} MiB and < {max_growth_pct:g} %",
        "pass": bool(ok),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--sample-every", type=int, default=25)
    parser.add_argument("--warmup", type=float, default=0.2, help="warm-up fraction")
    parser.add_argument("--max-growth-mib", type=float, default=20.0)
    parser.add_argument("--max-growth-pct", type=float, default=5.0)
    parser.add_argument("--images", type=int, default=96, help="synthetic store size")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--store", type=Path, default=None, help="use this store instead")
    parser.add_argument("--json", type=Path, default=None, help="write samples + verdict here")
    args = parser.parse_args(argv)
    if args.iterations < 10 or args.sample_every < 1:
        parser.error("--iterations must be >= 10 and --sample-every >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="dsod-soak-") as tmp:
        work = Path(tmp)
        store = args.store or synthetic_store(work / "soak.h5", args.images, 48, 2)
        samples = soak(
            store, work / "run", args.iterations, args.sample_every, 8, 48, args.num_workers
        )
    result = verdict(
        samples, args.iterations, args.warmup, args.max_growth_mib, args.max_growth_pct
    )

    print(f"{'iteration':>9} {'RSS MiB':>9} {'seconds':>8} {'loss':>8}")
    for s in samples:
        warm = "  (warm-up)" if s["iteration"] < result["warmup_iterations"] else ""
        print(
            f"{s['iteration']:>9d} {s['rss_mib']:>9.1f} {s['seconds']:>8.1f} "
            f"{s['loss']:>8.3f}{warm}"
        )
    print(
        f"\nRSS after warm-up ({result['warmup_iterations']} it): "
        f"{result['rss_after_warmup_mib']:.1f} MiB; final {result['rss_final_mib']:.1f} MiB; "
        f"peak after warm-up {result['rss_peak_after_warmup_mib']:.1f} MiB"
    )
    print(
        f"growth after warm-up: {result['growth_mib']:+.1f} MiB ({result['growth_pct']:+.2f} %); "
        f"slope {result['slope_mib_per_1000_it']:+.2f} MiB / 1000 it"
    )
    print(f"verdict: {'PASS' if result['pass'] else 'FAIL'} ({result['threshold']})")
    if args.json:
        write_json(args.json, {"samples": samples, "verdict": result}, indent=1)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
