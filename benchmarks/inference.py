"""Inference benchmark: per-image latency and GFLOP/s of every CPU path (eager, channels-last,
BN-folded, ONNX Runtime and OpenVINO in fp32 and int8, bf16, ``torch.compile``) on a
random-weight model, against the measured matrix-multiply ceiling.

Latency does not depend on the weights. ``torch.compile`` runs in a subprocess and is
skipped, with the reason, when compiling and the first pass take longer than
``compile_guard_s``. FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass
(a multiply-add counts 2); achieved GFLOP/s = FLOPs per image ÷ latency per image; the
ceiling is a square float32 ``torch.mm`` on the same threads.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    FP32_PATHS,
    LOWP_PATHS,
    Plan,
    Report,
    markdown_table,
    native_bf16,
    plan_model,
    run_worker,
    timed,
)


def measure_matmul(plan: Plan) -> float:
    """Float32 GFLOP/s of a square ``torch.mm``: the best of several passes, since the
    ceiling is what the machine can reach (other processes only ever slow a pass down)."""
    n = plan.mm_size
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = timed(lambda: torch.mm(a, b), 8, 2, 15.0)
    return 2 * n**3 / min(times) / 1e9


def count_flops(model: torch.nn.Module, plan: Plan) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, plan.in_channels, plan.input_size, plan.input_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def compile_worker(plan: Plan) -> None:
    """torch.compile (inductor, weights frozen as constants) latency; prints JSON lines."""
    import torch._inductor.config as inductor_config

    # Freezing turns weights into constants, which lets inductor fold them and pre-pack the
    # convolution weights once: the documented setting for CPU inference.
    inductor_config.freezing = True
    model = plan_model(plan).eval()
    compiled = torch.compile(model)
    size = plan.input_size
    start = time.perf_counter()
    with torch.inference_mode():
        x = torch.randn(1, plan.in_channels, size, size)
        compiled(x)
        print(json.dumps({"compile_s": time.perf_counter() - start}), flush=True)
        for batch in plan.infer_batches:
            x = torch.randn(batch, plan.in_channels, size, size)
            times = timed(
                lambda: compiled(x),  # noqa: B023 - called before x changes
                plan.infer_reps if batch == 1 else 2,
                1,
                plan.infer_max_seconds,
            )
            print(json.dumps({"batch": batch, "times_s": times}), flush=True)


def _calibration_store(plan: Plan, tmp: Path) -> Path:
    from tests.synthetic import write_synthetic_store

    return write_synthetic_store(
        tmp / "calibration.h5",
        n=max(2 * plan.calib_count, 8),
        size=plan.input_size,
        channels=plan.in_channels,
        seed=5,
        splits=(0.8, 0.1),
    )


def _make_runners(
    plan: Plan, model: torch.nn.Module, threads: int, tmp: Path
) -> tuple[dict[str, Callable], dict[str, float], str]:
    """Every path's runner, the setup times (ONNX export, int8 quantisation) and the notes
    on the paths left out (OpenVINO on the tiny model, bf16 on CPUs without it)."""
    from dsod_core.export import ExportError, calibration_images, export_onnx, quantize_onnx
    from dsod_core.model.fuse import fuse_bn
    from dsod_core.runners import eager_runner, onnx_runner, openvino_runner

    size = plan.input_size
    setup: dict[str, float] = {}
    runners: dict[str, Callable] = {}
    if plan.variant == "dsod300":
        from benchmarks.naive import build_naive

        runners["naive_eager"] = eager_runner(build_naive(model))
    runners["eager"] = eager_runner(model)
    runners["eager_channels_last"] = eager_runner(copy.deepcopy(model), channels_last=True)
    runners["bn_folded"] = eager_runner(fuse_bn(model))
    start = time.perf_counter()
    fp32_path = export_onnx(
        model, tmp / "model.onnx", input_size=size, in_channels=plan.in_channels
    )
    setup["onnx_export_s"] = time.perf_counter() - start
    runners["onnx_fp32"] = onnx_runner(fp32_path, threads)
    openvino_note = ""
    try:
        runners["openvino_fp32"] = openvino_runner(fp32_path, threads)
    except ExportError as err:  # the tiny --quick model: see openvino_runner
        openvino_note = f"OpenVINO paths skipped: {err.reason}. "
    start = time.perf_counter()
    calib = calibration_images(_calibration_store(plan, tmp), size, count=plan.calib_count)
    int8_path = quantize_onnx(fp32_path, tmp / "model_int8.onnx", calib)
    setup["int8_quantize_s"] = time.perf_counter() - start
    setup["int8_calibration_images"] = len(calib)
    runners["onnx_int8"] = onnx_runner(int8_path, threads)
    if not openvino_note:
        runners["openvino_int8"] = openvino_runner(int8_path, threads)
    bf16_note = ""
    if native_bf16() or plan.name == "quick":
        runners["bf16"] = eager_runner(model, bf16=True)
    else:  # emulated bf16 took ~50x fp32 on an AVX2 CPU: minutes for nothing
        bf16_note = "bf16 not timed: this CPU has no native bf16 (AVX-512 BF16 / AMX). "
    return runners, setup, openvino_note + bf16_note


def _time_runners(
    plan: Plan, runners: dict[str, Callable], inputs: dict[int, torch.Tensor]
) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """Per path: median seconds per image at each batch size, and the largest |Δ| of its
    outputs from eager's at batch 1."""
    latency: dict[str, dict[int, float]] = {}
    max_diff: dict[str, float] = {}
    reference = runners["eager"](inputs[1])
    for name, runner in runners.items():
        latency[name] = {}
        for batch in plan.infer_batches:
            x = inputs[batch]
            # Batch 1 warms the path up (graph/primitive creation); larger batches reuse it.
            times = timed(
                lambda: runner(x),  # noqa: B023 - called before x changes
                plan.infer_reps if batch == 1 else 2,
                1 if batch == 1 else 0,
                plan.infer_max_seconds,
            )
            latency[name][batch] = statistics.median(times) / batch
        max_diff[name] = float(
            max((a - b).abs().max() for a, b in zip(runner(inputs[1]), reference))
        )
        print(f"  {name}: " + ", ".join(f"b{b} {v:.4f} s/img" for b, v in latency[name].items()))
    return latency, max_diff


def _time_compiled(
    plan: Plan,
    threads: int,
    tmp: Path,
    latency: dict[str, dict[int, float]],
    setup: dict[str, float],
) -> str:
    """``torch.compile`` in a worker process; its latencies join ``latency`` (and its
    compile time ``setup``) when it compiled within ``compile_guard_s``. Returns the note."""
    if plan.compile_guard_s <= 0:
        return "not tried (--quick)"
    # A fresh inductor cache: the compile time is that of a first compile, not a cache hit.
    cache = tmp / "inductor_cache"
    lines, error = run_worker(
        ["--worker", "compile", "--plan", plan.name, "--threads", str(threads)],
        timeout=plan.compile_guard_s + 8 * 3 * max(latency["eager"].values()) + 30,
        env={"TORCHINDUCTOR_CACHE_DIR": str(cache)},
    )
    compiled = next((ln["compile_s"] for ln in lines if "compile_s" in ln), None)
    if compiled is None or compiled > plan.compile_guard_s:
        return (
            f"skipped: compile + first pass took > {plan.compile_guard_s:.0f} s"
            if compiled is None and error and "timed out" in error
            else f"skipped: {error or f'compile took {compiled:.0f} s'}"
        )
    setup["torch_compile_s"] = compiled
    latency["torch_compile"] = {
        ln["batch"]: statistics.median(ln["times_s"]) / ln["batch"] for ln in lines if "batch" in ln
    }
    compile_note = f"compiled in {compiled:.0f} s (inductor, freezing on, empty cache)"
    if error:
        compile_note += f"; {error} before every batch was timed"
    return compile_note


def _latency_table(
    plan: Plan,
    latency: dict[str, dict[int, float]],
    max_diff: dict[str, float],
    flops: float,
    base_name: str,
) -> str:
    eager = latency[base_name]
    rows = []
    for name, lat in latency.items():
        row = [name]
        for batch in plan.infer_batches:
            value = lat.get(batch, float("nan"))
            row += [value * 1e3, flops / value / 1e9 if value == value else float("nan")]
        row += [eager[1] / lat.get(1, float("nan")), max_diff.get(name, float("nan"))]
        rows.append(row)
    header = ["path"]
    for batch in plan.infer_batches:
        header += [f"b{batch} ms / image", f"b{batch} GFLOP/s"]
    header += [f"speed-up vs {base_name} (b1)", "max |Δ| vs eager"]
    return markdown_table(header, rows)


def _fastest(
    latency: dict[str, dict[int, float]], flops: float, mm_gflops: float, base_name: str
) -> dict[str, Any]:
    """The fastest fp32 path (any batch) and reduced-precision path (batch 1) and their
    ratios to the ceiling and to the reference path."""
    eager = latency[base_name]
    fp32_best = min(
        ((p, b, v) for p in FP32_PATHS if p in latency for b, v in latency[p].items()),
        key=lambda t: t[2],
    )
    # Latency is a batch-1 figure: the reduced-precision path is chosen, and compared, there.
    lowp_best = min(
        ((p, 1, latency[p][1]) for p in LOWP_PATHS if 1 in latency.get(p, {})),
        key=lambda t: t[2],
    )
    return {
        "fastest_fp32": {"path": fp32_best[0], "batch": fp32_best[1]},
        "fastest_lowp": {"path": lowp_best[0], "batch": lowp_best[1]},
        "infer_fp32_ceiling_fraction": flops / fp32_best[2] / 1e9 / mm_gflops,
        "reference_path": base_name,
        "infer_lowp_latency_ratio": latency[lowp_best[0]][1] / eager[1],
        "infer_lowp_latency_ratio_by_batch": {
            str(b): latency[lowp_best[0]][b] / eager[b] for b in eager
        },
        "latency_ratio_vs_reference": {
            k: {str(b): v / eager[b] for b, v in d.items() if b in eager}
            for k, d in latency.items()
        },
    }


def _inference_notes(plan: Plan, threads: int, out: dict[str, Any], notes: str) -> str:
    """The text under the latency table."""
    flops, mm_gflops, setup = out["flops_per_image"], out["matmul_gflops"], out["setup"]
    fp32_path, fp32_batch = out["fastest_fp32"]["path"], out["fastest_fp32"]["batch"]
    fp32_latency = out["latency_s_per_image"][fp32_path][str(fp32_batch)]
    return (
        f"\n\nFLOPs: {flops / 1e9:.2f} GFLOP per image (FlopCounterMode; multiply-add = 2). "
        f"Measured matrix-multiply ceiling: {mm_gflops:.1f} GFLOP/s "
        f"(float32 torch.mm {plan.mm_size}², {threads} threads, best of 8).\n"
        f"Fastest fp32 path: {fp32_path} at batch {fp32_batch}: "
        f"{flops / fp32_latency / 1e9:.1f} GFLOP/s = "
        f"{out['infer_fp32_ceiling_fraction']:.0%} of the ceiling.\n"
        f"Fastest reduced-precision path: {out['fastest_lowp']['path']} "
        f"({out['infer_lowp_latency_ratio']:.2f}× {out['reference_path']} fp32 latency at "
        "batch 1; "
        + ", ".join(
            f"batch {b}: {v:.2f}×" for b, v in out["infer_lowp_latency_ratio_by_batch"].items()
        )
        + ").\n"
        + notes
        + f"torch.compile: {out['torch_compile']}. ONNX export {setup['onnx_export_s']:.1f} s; "
        f"int8 quantisation (QDQ, per-channel, u8 activations / s8 weights, "
        f"{setup['int8_calibration_images']} calibration images from a synthetic training "
        f"store) {setup['int8_quantize_s']:.1f} s. "
        f"max |Δ| is over loc and conf at batch 1 (random weights, so it is only a sanity "
        "figure; accuracy is judged in the reduced-precision accuracy section)."
    )


def bench_inference(
    plan: Plan, threads: int, tmp: Path, mm_gflops: float, report: Report
) -> dict[str, Any]:
    """Every inference path's latency on a random-weight ``plan.variant``."""

    model = plan_model(plan).eval()
    flops = count_flops(model, plan)
    size = plan.input_size
    inputs = {b: torch.randn(b, plan.in_channels, size, size) for b in plan.infer_batches}
    runners, setup, notes = _make_runners(plan, model, threads, tmp)
    latency, max_diff = _time_runners(plan, runners, inputs)
    compile_note = _time_compiled(plan, threads, tmp, latency, setup)
    # The side-by-side reference: the naive model (benchmarks/naive.py) where the variant
    # has one, else the project's eager model.
    base_name = "naive_eager" if "naive_eager" in latency else "eager"
    out = {
        "flops_per_image": flops,
        "gflop_per_image": flops / 1e9,
        "matmul_gflops": mm_gflops,
        "latency_s_per_image": {k: {str(b): v for b, v in d.items()} for k, d in latency.items()},
        "gflops": {k: {str(b): flops / v / 1e9 for b, v in d.items()} for k, d in latency.items()},
        "max_abs_diff_vs_eager": max_diff,
        "setup": setup,
        "torch_compile": compile_note,
        **_fastest(latency, flops, mm_gflops, base_name),
    }
    report.section(
        f"Inference: {plan.variant}, {size} px, {plan.in_channels} channels, CPU, "
        f"{threads} threads",
        _latency_table(plan, latency, max_diff, flops, base_name)
        + _inference_notes(plan, threads, out, notes),
    )
    return out
