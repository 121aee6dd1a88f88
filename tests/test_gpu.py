"""CUDA paths (AMP, channels_last). Skipped where no GPU is present (CI has none)."""

import pytest
import torch

from dsod_core.engine import TrainConfig, train
from dsod_core.model import build_model
from tests.synthetic import write_synthetic_store

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_amp_channels_last_training_runs(tmp_path):
    store = write_synthetic_store(tmp_path / "s.h5", n=48, size=48)
    hist = train(
        TrainConfig(
            store=str(store),
            out_dir=str(tmp_path / "run"),
            input_size=48,
            batch_size=8,
            epochs=2,
            device="cuda",
            amp=True,
            channels_last=True,
            progress=False,
            dvclive=False,
        )
    )
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist["history"])


def test_cuda_forward_matches_cpu():
    torch.manual_seed(0)
    model = build_model("dsod_tiny", in_channels=4, num_classes=3, input_size=64).eval()
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        loc_cpu, conf_cpu = model(x)
        loc_gpu, conf_gpu = model.cuda()(x.cuda())
    torch.testing.assert_close(loc_gpu.cpu(), loc_cpu, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conf_gpu.cpu(), conf_cpu, atol=1e-4, rtol=1e-4)
