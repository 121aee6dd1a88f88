"""The benchmark runner end to end on tiny sizes (``--quick``): every section runs, and
results.json / RESULTS.md hold the issue's numbers."""

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

    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ("Training step", "Inference", "Data path", "Evaluation", "GPU", "Targets"):
        assert f"## {heading}" in text, heading
    assert "load average" in text and results["machine"]["cpu_model"] in text
    # The tables were printed as well as written.
    assert "## Targets" in proc.stdout
