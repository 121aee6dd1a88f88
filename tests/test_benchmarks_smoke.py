"""The benchmark runner end to end on tiny sizes (``--quick``): every section runs (one module
per section, ``benchmarks/<name>.py``, driven by ``benchmarks/run.py``), and results.json /
RESULTS.md hold the issue's numbers; ``--only`` runs chosen sections."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = (
    "train_memory_ratio",
    "train_time_ratio",
    "infer_fp32_ceiling_fraction",
    "infer_lowp_latency_ratio",
    "infer_lowp_map_drop",
    "loader_to_train_ratio",
    "eval_time_ratio",
)


def test_quick_benchmark_run(tmp_path: Path) -> None:
    start = time.perf_counter()
    proc = subprocess.run(
        # One thread: on the shared 2-core machine two spin-waiting threads make the tiny
        # model's many small ops several times slower (see tests/test_export.py).
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60, elapsed

    results = json.loads((tmp_path / "results.json").read_text())
    for key in TOP_LEVEL:
        value = results[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)
    # Ratios of times, memories and rates are positive; the mAP drop is a difference.
    for key in TOP_LEVEL:
        if key != "infer_lowp_map_drop":
            assert results[key] > 0, key
    assert results["machine"]["threads"] >= 1 and results["machine"]["torch"]
    # Same scores from both evaluators (the comparison is at equal results).
    assert results["evaluation"]["stats_max_abs_diff"] < 1e-9
    # The fused and channels_last paths compute what eager does.
    diffs = results["inference"]["max_abs_diff_vs_eager"]
    assert diffs["eager"] == 0.0
    assert diffs["bn_folded"] < 1e-4 and diffs["eager_channels_last"] < 1e-4
    assert set(results["data_path"]) >= {"1", "4", "13"}
    # Store layouts: every native layout is smaller than the float32 one of its case.
    for case, layouts in results["store"].items():
        native = {k: v for k, v in layouts.items() if k.startswith("native")}
        assert native and all(0 < v["size_vs_today"] < 1 for v in native.values()), case

    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ("Training step", "Inference", "Data path", "Evaluation", "GPU", "Targets"):
        assert f"## {heading}" in text, heading
    assert "load average" in text and results["machine"]["cpu_model"] in text
    # The tables were printed as well as written.
    assert "## Targets" in proc.stdout


def test_only_runs_the_chosen_sections_and_writes_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--threads", "1",
         "--only", "evaluation", "gpu", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Evaluation" in proc.stdout and "## GPU" in proc.stdout
    assert "## Training" not in proc.stdout and "## Targets" not in proc.stdout
    assert not list(tmp_path.iterdir())


def test_sections_run_in_order_after_what_they_need() -> None:
    from benchmarks.run import SECTIONS, with_needs

    assert list(SECTIONS) == [
        "training", "inference", "data_path", "evaluation", "lowp_accuracy", "store", "gpu"
    ]  # fmt: skip
    assert with_needs(["lowp_accuracy"]) == ["inference", "lowp_accuracy"]
    assert with_needs(["evaluation", "data_path"]) == ["training", "data_path", "evaluation"]
    assert with_needs(list(SECTIONS)) == list(SECTIONS)


def test_naive_reference_is_the_same_network() -> None:
    """benchmarks/naive.py: the project's weights moved in give the project's outputs, in
    eval and in train mode, with the same parameter count."""
    import torch

    from benchmarks.naive import build_naive
    from dsod_core.model import build_model

    torch.manual_seed(0)
    model = build_model("dsod300_small", in_channels=2, num_classes=3, input_size=96)
    naive = build_naive(model)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(naive) == count(model)
    x = torch.randn(2, 2, 96, 96)
    for train in (False, True):
        model.train(train), naive.train(train)
        with torch.no_grad():
            for a, b in zip(model(x), naive(x)):
                torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    # and it really is the naive layout: each dense layer returns the running concatenation
    layer = naive.block1[0]
    out = layer(torch.randn(1, layer.norm1.num_features, 8, 8))
    assert out.shape[1] == layer.norm1.num_features + layer.conv2.out_channels
