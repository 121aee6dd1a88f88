"""The benchmark suite: training memory/time, inference paths, FLOPs, data path,
evaluation, GPU.

``python -m benchmarks.run [--quick] [--out DIR] [--threads N] [--only SECTION ...]`` (from the
repository root; ``make bench``) prints every table and writes ``DIR/results.json`` and
``DIR/RESULTS.md`` (default ``benchmarks/``). ``--quick`` runs the same code on tiny sizes
(``dsod_tiny`` at 64 px, small stores, 200 images to score) in well under a minute: a smoke
test, not figures. ``--only`` runs the named sections (and those they need: the data path
needs the training figures, the accuracy section the inference latencies) and prints their
tables without writing anything.

One module per section: :mod:`benchmarks.training`, :mod:`benchmarks.inference`,
:mod:`benchmarks.loader`, :mod:`benchmarks.evaluation`, :mod:`benchmarks.lowp`,
:mod:`benchmarks.gpu_throughput`; the targets table is :mod:`benchmarks.targets`, the shared
sizes and helpers :mod:`benchmarks.common`.

Method, the same for every section: one process per machine, ``--threads`` intra-op threads
everywhere (torch and ONNX Runtime; default: all cores), warm-up passes first, then the
median of a few timed passes (fewer where one pass is long: each measurement stops adding
passes after ``infer_max_seconds``).

- Training step: ``dsod300`` at 300 px, batch 4, SGD + ``MultiBoxLoss`` on a fixed synthetic
  batch, plain and memory-efficient dense layers, each in a fresh subprocess so that the peak
  resident set (``ru_maxrss``) belongs to that mode alone. Memory = peak RSS − RSS after the
  model, optimiser and batch exist (activations, gradients, momentum). The workers run with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc returns every large block to the system when
  it is freed: RSS then follows the memory in use instead of the allocator's high-water mark.
- Inference: random-weight ``dsod300`` (latency does not depend on the weights), batch 1 and
  8, per-image latency. ``torch.compile`` runs in a subprocess and is skipped, with the reason,
  when compiling and the first pass take longer than ``compile_guard_s``.
- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass (a multiply-add
  counts 2); achieved GFLOP/s = FLOPs per image ÷ latency per image; the ceiling is a square
  float32 ``torch.mm`` on the same threads.
- Data path: the training loader (``DetectionDataset`` + the default training augmentation
  + ``detection_collate``, one process) over synthetic stores of 1, 4 and 13 channels.
- Evaluation: COCO scoring of synthetic detections through ``evaluate_coco`` with each backend.
- Reduced-precision accuracy: ``dsod_tiny`` trained on a synthetic store, fp32 against int8
  ONNX and bf16 on its test split (VOC07 mAP@0.5 points).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    FULL,
    QUICK,
    ROOT,
    Plan,
    Report,
    machine_info,
    markdown_table,
    write_json,
    write_text,
)

# The headline figures of results.json (top level), each from its section.
HEADLINE = (
    "train_memory_ratio",
    "train_time_ratio",
    "infer_fp32_ceiling_fraction",
    "infer_lowp_latency_ratio",
    "infer_lowp_map_drop",
    "loader_to_train_ratio",
    "eval_time_ratio",
)


@dataclass
class Context:
    """What the sections of one run share; ``results`` fills up section by section."""

    plan: Plan
    threads: int
    tmp: Path
    report: Report
    retrain: bool = False
    results: dict[str, Any] = field(default_factory=dict)


def _training(c: Context) -> dict[str, Any]:
    from benchmarks.training import bench_training

    return bench_training(c.plan, c.threads, c.report)


def _inference(c: Context) -> dict[str, Any]:
    from benchmarks.inference import bench_inference, measure_matmul

    mm = measure_matmul(c.plan)
    return bench_inference(c.plan, c.threads, c.tmp, mm, c.report)


def _data_path(c: Context) -> dict[str, Any]:
    from benchmarks.loader import bench_loader

    train_ips = c.results["training"]["plain"]["images_per_s"]
    return bench_loader(c.plan, c.tmp, train_ips, c.report)


def _evaluation(c: Context) -> dict[str, Any]:
    from benchmarks.evaluation import bench_eval

    return bench_eval(c.plan, c.report)


def _lowp_accuracy(c: Context) -> dict[str, Any]:
    from benchmarks.lowp import bench_lowp_accuracy

    latency = c.results["inference"]["latency_s_per_image"]
    return bench_lowp_accuracy(c.plan, c.threads, c.tmp, c.report, latency, c.retrain)


def _store(c: Context) -> dict[str, Any]:
    from benchmarks.store import bench_store

    quick = c.plan.name == "quick"
    return bench_store(c.tmp, c.report, 3 if quick else 40, reps=1 if quick else 3)


def _gpu(c: Context) -> dict[str, Any]:
    from benchmarks.gpu_throughput import bench_gpu

    return bench_gpu(c.plan, c.report)


@dataclass(frozen=True)
class Section:
    run: Callable[[Context], dict[str, Any]]
    progress: str | None  # the line printed before it starts (None: nothing)
    needs: tuple[str, ...] = ()


# In run order; the key is the section's key in results.json.
SECTIONS: dict[str, Section] = {
    "training": Section(_training, "training"),
    "inference": Section(_inference, "matmul + inference"),
    "data_path": Section(_data_path, "data path", needs=("training",)),
    "evaluation": Section(_evaluation, "evaluation"),
    "lowp_accuracy": Section(_lowp_accuracy, "reduced-precision accuracy", needs=("inference",)),
    "store": Section(_store, "store layouts"),
    "gpu": Section(_gpu, None),
}


def with_needs(names: list[str]) -> list[str]:
    """``names`` and the sections they need, in run order."""
    wanted = set(names)
    for name in reversed(list(SECTIONS)):
        if name in wanted:
            wanted.update(SECTIONS[name].needs)
    return [name for name in SECTIONS if name in wanted]


def run_sections(context: Context, names: list[str], started: float) -> dict[str, Any]:
    """Run ``names`` (in run order) into ``context.results``; returns it."""
    for name in names:
        section = SECTIONS[name]
        if section.progress:
            print(f"[{time.perf_counter() - started:5.0f} s] {section.progress}", flush=True)
        context.results[name] = section.run(context)
    return context.results


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The top-level figures of results.json, from a run of every section."""
    return {
        "train_memory_ratio": results["training"]["train_memory_ratio"],
        "train_time_ratio": results["training"]["train_time_ratio"],
        "infer_fp32_ceiling_fraction": results["inference"]["infer_fp32_ceiling_fraction"],
        # The chosen reduced-precision path: the fastest within the mAP limit.
        "infer_lowp_latency_ratio": results["inference"]["latency_ratio_vs_reference"][
            results["lowp_accuracy"]["chosen_lowp_path"]
        ]["1"],
        "infer_lowp_map_drop": results["lowp_accuracy"]["infer_lowp_map_drop"],
        "loader_to_train_ratio": results["data_path"]["loader_to_train_ratio"],
        "eval_time_ratio": results["evaluation"]["eval_time_ratio"],
    }


def machine_table(machine: dict[str, Any], threads: int) -> str:
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in machine["cpu_flags"].items())
    return markdown_table(
        ["machine", ""],
        [
            ["CPU", machine["cpu_model"]],
            ["logical CPUs / threads used", f"{machine['logical_cpus']} / {threads}"],
            ["CPU features", flags],
            ["platform", machine["platform"]],
            [
                "Python / torch / onnxruntime",
                f"{machine['python']} / {machine['torch']} / {machine['onnxruntime']}",
            ],
            [
                "load average (1/5/15 min) at start",
                " / ".join(f"{v:.2f}" for v in machine["load_average_start"]),
            ],
            [
                "load average at end",
                " / ".join(f"{v:.2f}" for v in machine["load_average_end"]),
            ],
            ["whole run", f"{machine['total_seconds']:.0f} s"],
        ],
    )


def results_markdown(plan: Plan, results: dict[str, Any], report: Report, threads: int) -> str:
    """RESULTS.md: the machine, the targets (the report's last section), the headline
    figures, then every section in run order."""
    machine = results["machine"]
    quick = plan.name == "quick"
    head = (
        "# DSOD benchmarks\n\n"
        + (
            "**Quick smoke run (`--quick`): tiny sizes, not the issue's figures.**\n\n"
            if quick
            else ""
        )  # fmt: skip
        + f"Run {machine['date_utc']} with `python -m benchmarks.run"
        + (" --quick" if quick else "")
        + "`.\n\n"
        + machine_table(machine, threads)
        + "\n\nThe machine is shared: a load average above the thread count means other "
        "processes competed for the cores during the run and every time is inflated.\n\n"
    )
    top = markdown_table(["results.json key", "value"], [[k, results[k]] for k in HEADLINE])
    return head + report.parts[-1] + "\n" + top + "\n\n" + "\n".join(report.parts[:-1])


def run_all(plan: Plan, out_dir: Path, threads: int, retrain: bool = False) -> dict[str, Any]:
    """Every section, the targets; writes ``out_dir``/results.json and RESULTS.md."""
    from benchmarks.targets import targets_table

    torch.set_num_threads(threads)
    started = time.perf_counter()
    machine = machine_info(threads)
    report = Report()
    results: dict[str, Any] = {"plan": asdict(plan), "machine": machine}
    with tempfile.TemporaryDirectory(prefix="dsod_bench_") as tmp_name:
        context = Context(plan, threads, Path(tmp_name), report, retrain, results)
        run_sections(context, list(SECTIONS), started)
    results.update(headline(results))
    machine["load_average_end"] = list(os.getloadavg())
    machine["total_seconds"] = time.perf_counter() - started
    report.section("Targets", targets_table(results, machine["cpu_flags"]))
    text = results_markdown(plan, results, report, threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", results)
    write_text(out_dir / "RESULTS.md", text)
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'RESULTS.md'} "
          f"in {machine['total_seconds']:.0f} s")  # fmt: skip
    return results


def run_only(plan: Plan, names: list[str], threads: int, retrain: bool = False) -> dict:
    """The named sections and those they need; their tables are printed, nothing written."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dsod_bench_") as tmp_name:
        context = Context(plan, threads, Path(tmp_name), Report(), retrain)
        return run_sections(context, with_needs(names), started)


def run_worker_command(args: argparse.Namespace) -> None:
    """A subprocess worker of the training or the torch.compile measurement."""
    plan = QUICK if args.plan == "quick" else FULL
    if args.worker == "train":
        from benchmarks.training import train_worker

        print(json.dumps(train_worker(plan, args.mode)), flush=True)
    else:
        from benchmarks.inference import compile_worker

        compile_worker(plan)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SECTIONS),
        metavar="SECTION",
        help=f"run these sections only ({', '.join(SECTIONS)}) and the ones they need; "
        "prints their tables, writes nothing",
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train the accuracy section's model again instead of reusing benchmarks/.cache/",
    )
    parser.add_argument(
        "--lowp-only",
        action="store_true",
        help="only train (or find) the accuracy section's model, then stop",
    )
    parser.add_argument("--worker", choices=["train", "compile"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="plain", help=argparse.SUPPRESS)
    parser.add_argument("--plan", default="full", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The legacy ONNX exporter and the quantiser are chatty; the tables are the output.
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    plan = QUICK if args.quick else FULL
    if args.worker:
        run_worker_command(args)
    elif args.lowp_only:
        from benchmarks.lowp import lowp_model

        with tempfile.TemporaryDirectory(prefix="dsod_bench_") as tmp:
            print(lowp_model(plan, Path(tmp), args.retrain)[2])
    elif args.only:
        run_only(plan, args.only, args.threads, args.retrain)
    else:
        run_all(plan, args.out, args.threads, args.retrain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
