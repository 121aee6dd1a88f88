"""ONNX export of a DSOD detector and its parity check against PyTorch.

The graph holds the network only: input ``images [B, C, S, S]`` float32, outputs ``loc
[B, P, 4]`` and ``conf [B, P, K+1]`` (raw head outputs, logits), with a dynamic batch axis.
Decoding and NMS stay outside so that any runtime can use its own. The default boxes are not in
the graph: rebuild them from the model config (``dsod_core.boxes.priors``).

The legacy TorchScript-based exporter (``dynamo=False``) is used. Measured with torch 2.13 and
onnxscript 0.7: the dynamo exporter does produce a correct graph, but takes ~20 s for
``dsod_tiny`` (legacy: a few seconds) and its down-conversion to opset 17 fails inside
``onnx.version_converter`` (it falls back to opset 18 after printing a traceback). The legacy
path prints a deprecation warning; switch when it is removed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsod_core.errors import ConfigError, ProjectError


class ExportError(ProjectError):
    """The exported graph is missing, unreadable, or disagrees with the PyTorch model."""


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_size: int,
    in_channels: int,
    opset: int = 17,
) -> Path:
    """Write ``model`` (a ``DSOD``) to ``path`` as ONNX, atomically; returns the path.

    The model is exported in eval mode (BN uses running statistics) and restored to its
    previous mode afterwards. ``input_size`` is the square side in pixels, ``in_channels`` C.
    Inputs/outputs: ``images [batch, C, S, S]`` → ``loc [batch, P, 4]``, ``conf [batch, P,
    K+1]``; ``batch`` is dynamic.
    """
    path = Path(path)
    if input_size < 1 or in_channels < 1:
        raise ConfigError(f"export needs positive input_size and in_channels, got "
                          f"{input_size}, {in_channels}", path=path)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(model.parameters())
    # Batch 2 while tracing so that no size-1 batch dimension gets specialised away.
    example = torch.zeros(2, in_channels, input_size, input_size, dtype=param.dtype)
    was_training = model.training
    model.eval()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                (example.to(param.device),),
                tmp,
                input_names=["images"],
                output_names=["loc", "conf"],
                dynamic_axes={"images": {0: "batch"}, "loc": {0: "batch"}, "conf": {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; an exported model is meant to be shared
        os.replace(tmp, path)
    finally:
        model.train(was_training)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_onnx_parity(
    model: nn.Module,
    path: str | os.PathLike,
    atol: float = 1e-4,
    *,
    batch_size: int = 1,
    seed: int = 0,
) -> float:
    """Run the ONNX graph at ``path`` with onnxruntime (CPU) and ``model`` in eval mode on the
    same random batch; return the largest absolute difference over ``loc`` and ``conf``.

    Raises ``ExportError`` if the graph cannot be loaded, the shapes differ, or the difference
    exceeds ``atol``. The default batch of 1 differs from the export's 2, which exercises the
    dynamic axis.
    """
    import onnxruntime as ort

    path = Path(path)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise ExportError(f"onnxruntime cannot load the graph: {err}", path=path) from err
    (inp,) = session.get_inputs()
    channels, height, width = inp.shape[1:]
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, channels, height, width, generator=generator)
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        with torch.no_grad():
            expected = model(images.to(device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
    got = session.run(["loc", "conf"], {inp.name: images.numpy()})
    worst = 0.0
    for name, ref, out in zip(("loc", "conf"), expected, got):
        ref_np = ref.detach().cpu().float().numpy()
        if ref_np.shape != out.shape:
            raise ExportError(
                f"{name} shape {list(out.shape)} differs from PyTorch {list(ref_np.shape)}",
                path=path,
            )
        worst = max(worst, float(np.max(np.abs(ref_np - out))))
    if not worst <= atol:
        raise ExportError(f"ONNX output differs from PyTorch by {worst:.3g} > {atol}", path=path)
    return worst
