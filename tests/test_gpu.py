"""GPU options: AMP (bf16 / fp16 + GradScaler), channels-last, torch.compile with its fallback,
CUDA-graph inference, evaluation on the GPU, and the GPU benchmark script.

The CUDA tests skip where no GPU is present (CI has none); the CPU-side logic of each option
(the dtype choice, the config check, the compile fallback, the benchmark script) runs
everywhere."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from dsod_core.engine import TrainConfig, train
from dsod_core.engine.trainer import CompiledForward, amp_dtype
from dsod_core.errors import ConfigError
from dsod_core.model import build_model
from tests.synthetic import write_synthetic_store

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ------------------------------------------------------------------ everywhere


def test_amp_setting_is_checked_and_is_float32_off_cuda():
    cpu = torch.device("cpu")
    for setting in (True, False, "auto", "bf16", "fp16", "off"):
        TrainConfig(amp=setting).validate()
        assert amp_dtype(setting, cpu) is None
    with pytest.raises(ConfigError, match="train.amp"):
        TrainConfig(amp="fp8").validate()
    with pytest.raises(ConfigError, match="train.compile"):
        TrainConfig(compile="yes").validate()


def test_compiled_forward_falls_back_to_eager_once():
    module = torch.nn.Linear(3, 2)
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("no C compiler here")

    forward = CompiledForward(module, compiled=broken)
    x = torch.randn(4, 3)
    with pytest.warns(UserWarning, match="torch.compile failed, running eager"):
        out = forward(x)
    torch.testing.assert_close(out, module(x))
    assert forward.failed and "no C compiler" in forward.failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second compile attempt
        forward(x)
    assert len(calls) == 1


def test_gpu_benchmark_script_runs_on_cpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "results.json").read_text())["gpu"]
    assert data["smoke"] is True
    modes = data["training"]["modes"]
    assert {"fp32", "channels_last", "channels_last_compile"} <= set(modes)
    assert all(m["images_per_s"] > 0 for m in modes.values())
    assert data["voc_estimate"]["one_gpu_hours"] > data["voc_estimate"]["eight_gpus_linear_hours"]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- gpu:begin -->" in text and "## GPU" in text
    # Writing again replaces the section (and keeps the rest of the file).
    from benchmarks.gpu import write_outputs

    write_outputs(data, tmp_path)
    again = (tmp_path / "RESULTS.md").read_text()
    assert again.count("<!-- gpu:begin -->") == 1 and again.startswith("# DSOD benchmarks")


def test_gpu_benchmark_refuses_without_cuda_or_smoke():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


# ------------------------------------------------------------------ CUDA only


@cuda
@pytest.mark.parametrize(
    ("amp", "compile"), [("bf16", False), ("fp16", False), (True, True), (False, False)]
)
def test_cuda_training_options(tmp_path, amp, compile):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bfloat16")
    store = write_synthetic_store(tmp_path / "s.h5", n=48, size=48)
    hist = train(
        TrainConfig(
            store=str(store),
            out_dir=str(tmp_path / "run"),
            input_size=48,
            batch_size=8,
            epochs=2,
            device="cuda",
            amp=amp,
            compile=compile,
            channels_last=True,
            progress=False,
            dvclive=False,
        )
    )
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist["history"])
    # The saved model is the plain module (no compiled-wrapper key prefix).
    weights = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in weights["model"])


@cuda
def test_cuda_forward_matches_cpu():
    torch.manual_seed(0)
    model = build_model("dsod_tiny", in_channels=4, num_classes=3, input_size=64).eval()
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        loc_cpu, conf_cpu = model(x)
        loc_gpu, conf_gpu = model.cuda()(x.cuda())
    torch.testing.assert_close(loc_gpu.cpu(), loc_cpu, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conf_gpu.cpu(), conf_cpu, atol=1e-4, rtol=1e-4)


@cuda
@pytest.mark.parametrize(
    "options",
    [
        {"dtype": None, "channels_last": False},
        {"dtype": None, "channels_last": True},
        {"dtype": torch.float16},
        {"dtype": "bf16"},
        {"dtype": torch.float16, "compile": True},
        {"dtype": None, "cuda_graph": True},
        {"dtype": torch.float16, "cuda_graph": True},
    ],
)
def test_cuda_inference_paths_give_eager_fp32_detections(options):
    import copy

    from dsod_core.postprocess import postprocess
    from dsod_core.runners import cuda_runner

    if options.get("dtype") == "bf16":
        if not torch.cuda.is_bf16_supported():
            pytest.skip("GPU without bfloat16")
        options = {**options, "dtype": torch.bfloat16}
    torch.manual_seed(0)
    model = build_model("dsod_tiny", in_channels=2, num_classes=3, input_size=64).eval()
    x = torch.randn(1, 2, 64, 64)
    with torch.no_grad():
        ref_loc, ref_conf = model(x)
    runner = cuda_runner(copy.deepcopy(model).cuda(), **options)
    for _ in range(2):  # a CUDA graph is captured on the first call and replayed after
        loc, conf = runner(x)
    low = options.get("dtype") is not None
    tol = {"atol": 5e-2, "rtol": 5e-2} if low else {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(loc.cpu(), ref_loc, **tol)
    torch.testing.assert_close(conf.cpu(), ref_conf, **tol)
    boxes = model.default_boxes
    ref = postprocess(ref_loc, ref_conf, boxes, image_size=(64, 64), score_threshold=0.05)[0]
    got = postprocess(loc.cpu(), conf.cpu(), boxes, image_size=(64, 64), score_threshold=0.05)[0]
    if not low:
        torch.testing.assert_close(got["boxes"], ref["boxes"], atol=1e-3, rtol=1e-4)


@cuda
def test_evaluation_on_gpu_matches_cpu(tmp_path):
    from dsod_core.data.store import StoreReader
    from dsod_core.engine.evaluator import create_evaluator, eval_loader

    store = write_synthetic_store(tmp_path / "s.h5", n=24, size=48)
    reader = StoreReader(store)
    torch.manual_seed(0)
    model = build_model("dsod_tiny", in_channels=2, num_classes=2, input_size=48).eval()
    results = []
    for device in ("cpu", "cuda"):
        evaluator = create_evaluator(model.to(device), torch.device(device))
        evaluator.run(eval_loader(reader, "train", 48, 8))
        results.append(evaluator.state.predictions)
    for a, b in zip(*results):
        assert a["index"] == b["index"]
        n = min(len(a["scores"]), len(b["scores"]), 20)
        torch.testing.assert_close(
            torch.from_numpy(b["scores"][:n]), torch.from_numpy(a["scores"][:n]), atol=1e-4, rtol=0
        )
