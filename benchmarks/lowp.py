"""Reduced-precision accuracy benchmark: a model trained on a synthetic store, fp32 against
int8 (ONNX Runtime, OpenVINO) and bf16 on its test split (VOC07 mAP@0.5 points); the chosen
reduced-precision path is the fastest at batch 1 within the mAP limit."""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, TARGET_LOWP_MAP_DROP, Plan, Report, markdown_table, write_json

CACHE = ROOT / "benchmarks" / ".cache"


def lowp_model(plan: Plan, tmp: Path, retrain: bool) -> tuple[Path, Path, str]:
    """The trained model of the accuracy section: ``plan.lowp_variant`` trained here on a
    synthetic 2-channel store (tests/synthetic.py: squares and discs on noise) long enough
    that its mAP is well above zero. The full plan's ``dsod300`` run takes minutes on a CPU,
    so it is kept in ``benchmarks/.cache/`` (keyed by the plan's sizes) and reused until
    ``--retrain``; the store is regenerated (deterministic) when missing."""
    from dsod_core.engine import TrainConfig, train
    from tests.synthetic import write_synthetic_store

    key = (
        f"{plan.lowp_variant}_{plan.lowp_size}px_{plan.lowp_images}img_{plan.lowp_epochs}ep"
        f"_lr{plan.lowp_lr:g}_b{plan.lowp_batch}"
    )
    base = (CACHE if plan.name == "full" else tmp) / f"lowp_{key}"
    store = base / "store.h5"
    weights = base / "run" / "model.pt"
    info = base / "trained.json"
    if not store.is_file():
        base.mkdir(parents=True, exist_ok=True)
        write_synthetic_store(
            store, n=plan.lowp_images, size=plan.lowp_size, seed=7, splits=(0.65, 0.05)
        )
    if retrain or not weights.is_file() or not info.is_file():
        start = time.perf_counter()
        train(
            TrainConfig(
                store=str(store),
                out_dir=str(base / "run"),
                variant=plan.lowp_variant,
                input_size=plan.lowp_size,
                batch_size=plan.lowp_batch,
                epochs=plan.lowp_epochs,
                lr=plan.lowp_lr,
                warmup_steps=10,
                progress=False,
                dvclive=False,
                eval_every=0,
                model_overrides={"memory_efficient": plan.lowp_variant == "dsod300"},
                augmentation={"zoom_out": False, "crop": False, "flip": True},
            )
        )
        write_json(info, {"train_seconds": time.perf_counter() - start, "key": key})
    trained = json.loads(info.read_text())
    source = (
        f"{plan.lowp_variant} at {plan.lowp_size} px trained for {plan.lowp_epochs} epochs "
        f"(batch {plan.lowp_batch}, lr {plan.lowp_lr:g}; {trained['train_seconds']:.0f} s on "
        f"this machine{'' if plan.name != 'full' else ', cached in benchmarks/.cache/'}) on a "
        f"synthetic 2-channel store of {plan.lowp_images} images from tests/synthetic.py"
    )
    return weights, store, source


def _check_paths(
    model: Any,
    meta: dict[str, Any],
    store: Path,
    tmp: Path,
    threads: int,
    latency: dict[str, dict[str, float]],
) -> dict[str, dict[str, float]]:
    """:func:`dsod_core.export.check_reduced_precision` of every reduced-precision path
    timed in the inference section, against the eager fp32 model, on the test split."""
    from dsod_core.export import (
        calibration_images,
        check_reduced_precision,
        export_onnx,
        quantize_onnx,
    )
    from dsod_core.runners import eager_runner, onnx_runner, openvino_runner

    size = int(meta["input_size"])
    channels = int(meta["in_channels"])
    fp32_path = export_onnx(model, tmp / "lowp_fp32.onnx", input_size=size, in_channels=channels)
    calib = calibration_images(store, size, count=32)
    int8_path = quantize_onnx(fp32_path, tmp / "lowp_int8.onnx", calib)
    reference = eager_runner(model)
    candidates = {
        "onnx_int8": lambda: onnx_runner(int8_path, threads),
        "openvino_int8": lambda: openvino_runner(int8_path, threads),
        "bf16": lambda: eager_runner(copy.deepcopy(model), bf16=True),
    }
    if "bf16" not in latency:  # not timed on this CPU (emulated bf16)
        candidates.pop("bf16")
    if "openvino_int8" not in latency:  # not convertible (the tiny --quick model)
        candidates.pop("openvino_int8")
    checks = {}
    for name, make in candidates.items():
        checks[name] = check_reduced_precision(
            reference, make(), store, "test", model.default_boxes, size, max_map_drop=100.0
        )
        print(f"  {name}: mAP drop {checks[name]['map50_drop']:+.2f} points", flush=True)
    return checks


def _lowp_section(
    report: Report,
    checks: dict[str, dict[str, float]],
    latency: dict[str, dict[str, float]],
    out: dict[str, Any],
) -> None:
    chosen, source = out["chosen_lowp_path"], out["model"]
    rows = [
        [
            name,
            c["map50_reference"],
            c["map50_candidate"],
            c["map50_drop"],
            c["coco_ap_reference"],
            c["coco_ap_candidate"],
            c["max_abs_conf_diff"],
            latency.get(name, {}).get("1", float("nan")) * 1e3,
        ]
        for name, c in checks.items()
    ]
    report.section(
        "Reduced-precision accuracy (test split)",
        markdown_table(
            [
                "path",
                "fp32 mAP@0.5",
                "low-p mAP@0.5",
                "drop (points)",
                "fp32 COCO AP",
                "low-p COCO AP",
                "max |Δ logit|",
                "b1 ms / image (inference section)",
            ],
            rows,
        )
        + f"\n\nModel: {source}. {out['test_images']} test images; int8 calibrated on 32 "
        "training images of the same store. VOC07 11-point mAP@0.5 in points (0–100); a "
        f"positive drop is a loss. Chosen path: **{chosen}**, the fastest at batch 1 "
        + (
            f"within {TARGET_LOWP_MAP_DROP:g} point of fp32."
            if out["chosen_within_limit"]
            else f"(no path stayed within {TARGET_LOWP_MAP_DROP:g} point)."
        ),
    )


def bench_lowp_accuracy(
    plan: Plan,
    threads: int,
    tmp: Path,
    report: Report,
    latency: dict[str, dict[str, float]],
    retrain: bool = False,
) -> dict[str, Any]:
    """fp32 against every reduced-precision path on one trained model; the chosen path is
    the fastest at batch 1 (``latency``, from the inference section) whose mAP@0.5 stays
    within ``TARGET_LOWP_MAP_DROP`` points of fp32."""
    from dsod_core.data.store import StoreReader
    from dsod_core.engine import load_trained_model

    weights, store, source = lowp_model(plan, tmp, retrain)
    model, meta = load_trained_model(weights)
    checks = _check_paths(model, meta, store, tmp, threads, latency)
    test_images = len(StoreReader(store).split_indices("test"))
    within = [n for n in checks if checks[n]["map50_drop"] <= TARGET_LOWP_MAP_DROP and n in latency]
    ranked = sorted(within or list(checks), key=lambda n: latency.get(n, {}).get("1", math.inf))
    chosen = ranked[0]
    out = {
        "model": source,
        "test_images": test_images,
        "checks": checks,
        "chosen_lowp_path": chosen,
        "chosen_within_limit": chosen in within,
        "infer_lowp_map_drop": checks[chosen]["map50_drop"],
    }
    _lowp_section(report, checks, latency, out)
    return out
