"""Runners: one callable ``images [B, C, S, S] -> (loc, conf)`` per inference path.

Every runner takes the network input (normalised, resized: the evaluation transform) and
returns the raw head outputs as float32 tensors, so that decoding and NMS
(:func:`dsod_core.postprocess.postprocess`) are the same whichever path computed them:

- :func:`eager_runner`: the PyTorch model on the CPU, optionally in bf16 (``torch.autocast``;
  only faster than fp32 on CPUs with native bf16, AVX-512 BF16 or AMX) or channels-last;
- :func:`cuda_runner`: the PyTorch model on a CUDA device, with autocast, channels-last,
  ``torch.compile`` and CUDA graphs on request;
- :func:`onnx_runner`: an ONNX graph (:func:`dsod_core.export.export_onnx`, or its int8
  version from :func:`dsod_core.export.quantize_onnx`) run by ONNX Runtime on the CPU;
- :func:`openvino_runner`: the same graphs compiled by OpenVINO for the CPU.

``benchmarks/RESULTS.md`` has their figures; :func:`dsod_core.export.check_reduced_precision`
scores a reduced-precision runner against its fp32 reference.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from dsod_core.errors import ConfigError
from dsod_core.export import ExportError

Runner = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def onnx_runner(path: str | os.PathLike, threads: int | None = None) -> Runner:
    """A callable ``images [B, C, S, S] -> (loc, conf)`` (float32 tensors) over an ONNX graph
    run by ONNX Runtime's CPU provider with all graph optimisations and ``threads`` intra-op
    threads (default: torch's thread count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise ExportError(f"onnxruntime cannot load the graph: {err}", path=path) from err
    name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feed = {name: images.detach().float().contiguous().cpu().numpy()}
        loc, conf = session.run(["loc", "conf"], feed)
        return torch.from_numpy(loc), torch.from_numpy(conf)

    return run


def _read_openvino_model(core: Any, path: str | os.PathLike) -> Any:
    """``core.read_model(path)``; a graph OpenVINO refuses raises ``ExportError`` with why."""
    try:
        return core.read_model(str(path))
    except Exception as err:  # OpenVINO raises its own untyped errors
        text = str(err)
        if "larger than the data shape" in text:
            # OpenVINO's MaxPool shape check refuses a 2x2 ceil-mode pool over a 1x1 map,
            # which PyTorch and ONNX Runtime define (the map passes through); DSOD gets one
            # when the input is so small that two source maps are 1x1.
            reason = (
                "OpenVINO refuses a 2x2 max pool over a 1x1 map, which this model's input "
                "size gives (two 1x1 source maps); use the onnx backend or a larger input"
            )
        else:
            reason = "OpenVINO cannot read the graph: " + " ".join(text.split())[:300]
        raise ExportError(reason, path=path) from err


def openvino_runner(path: str | os.PathLike, threads: int | None = None) -> Runner:
    """A callable ``images [B, C, S, S] -> (loc, conf)`` over an ONNX graph (the fp32 export,
    or the int8 QDQ graph of :func:`dsod_core.export.quantize_onnx`) compiled by OpenVINO for
    the CPU.

    OpenVINO reads the QDQ pairs of the int8 graph as fake-quantize ops and runs the
    convolutions between them with int8 kernels (VNNI / AMX where the CPU has them). The
    precision hint is pinned to f32 so that on CPUs with native bf16 the fp32 graph is not
    silently run in bf16. The graph is compiled once per batch size (static shapes are
    OpenVINO's fast path) with the latency hint and ``threads`` inference threads (default:
    torch's thread count); compiled models are kept for reuse.
    """
    try:
        import openvino as ov
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ExportError("the openvino backend needs the openvino package") from err

    core = ov.Core()
    model = _read_openvino_model(core, path)
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
        "INFERENCE_PRECISION_HINT": "f32",
    }
    input_name = model.inputs[0].get_any_name()
    compiled: dict[int, Any] = {}

    def request(batch: int):
        if batch not in compiled:
            shaped = model.clone()
            dims = [d.get_length() for d in model.inputs[0].get_partial_shape()[1:]]
            shaped.reshape({input_name: [batch, *dims]})
            compiled[batch] = core.compile_model(shaped, "CPU", config).create_infer_request()
        return compiled[batch]

    def run(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feed = np.ascontiguousarray(images.detach().float().cpu().numpy())
        infer = request(feed.shape[0])
        result = infer.infer({input_name: feed})
        outputs = {k.get_any_name(): v for k, v in result.items()}
        return torch.from_numpy(outputs["loc"].copy()), torch.from_numpy(outputs["conf"].copy())

    return run


def eager_runner(model: nn.Module, *, bf16: bool = False, channels_last: bool = False) -> Runner:
    """A callable ``images [B, C, S, S] -> (loc, conf)`` over ``model`` in eval mode (the
    caller's mode is left as it is at call time: this sets eval for good).

    ``bf16``: run under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (convolutions in
    bfloat16, BN/normalisation in float32); outputs are returned as float32. ``channels_last``:
    convert the model and each input to the channels-last memory format.
    """
    model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loc, conf = model(images)
        return loc.float(), conf.float()

    return run


def _cuda_autocast(
    forward: Callable[[torch.Tensor], Any], dtype: torch.dtype | None, cache_enabled: bool
) -> Runner:
    """``forward`` under CUDA autocast in ``dtype`` (None: float32), outputs as float32."""

    def plain(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(
            "cuda",
            dtype=dtype or torch.float32,
            enabled=dtype is not None,
            cache_enabled=cache_enabled,
        ):
            loc, conf = forward(images)
        return loc.float(), conf.float()

    return plain


def _capture_cuda_graph(plain: Runner, example: torch.Tensor):
    """One CUDA graph of ``plain`` on a static copy of ``example``, captured after three
    warm-up calls on a side stream; returns (graph, static input, static outputs)."""
    static = example.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            plain(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = plain(static)
    return graph, static, outputs


def _cuda_graph_replay(plain: Runner) -> Runner:
    """``plain`` replayed from one captured CUDA graph per input shape: inputs are copied
    into the graph's static input, outputs cloned out."""
    graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, tuple[torch.Tensor, ...]]] = {}

    def replay(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = tuple(images.shape)
        if key not in graphs:
            graphs[key] = _capture_cuda_graph(plain, images)
        graph, static, outputs = graphs[key]
        static.copy_(images)
        graph.replay()
        return outputs[0].clone(), outputs[1].clone()

    return replay


def cuda_runner(
    model: nn.Module,
    *,
    dtype: torch.dtype | None = None,
    channels_last: bool = True,
    compile: bool = False,
    cuda_graph: bool = False,
) -> Runner:
    """A callable ``images [B, C, S, S] -> (loc, conf)`` (float32) over ``model`` on its CUDA
    device, in eval mode.

    ``dtype``: autocast dtype (``torch.bfloat16`` / ``torch.float16``; None: float32).
    ``channels_last``: NHWC tensors (the layout cuDNN's tensor-core kernels want).
    ``compile``: ``torch.compile`` the forward (eager when compiling fails, with a warning:
    :class:`dsod_core.engine.trainer.CompiledForward`). ``cuda_graph``: capture one CUDA
    graph per batch size and replay it (a batch-1 call is otherwise dominated by the launch
    overhead of DSOD's hundreds of small kernels); inputs are copied into the graph's static
    input, outputs cloned out. Graphs are captured after three warm-up calls on a side
    stream, as the CUDA-graph documentation prescribes.
    """
    from dsod_core.engine.trainer import CompiledForward

    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ConfigError(f"cuda_runner needs a model on a CUDA device, not {device}")
    model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = CompiledForward(model) if compile else model
    # Autocast's weight-cast cache must be off while a CUDA graph is captured.
    plain = _cuda_autocast(forward, dtype, cache_enabled=not cuda_graph)
    body = _cuda_graph_replay(plain) if cuda_graph else plain

    @torch.inference_mode()
    def run(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(device, non_blocking=True).float()
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return body(images)

    return run
