"""ONNX export of a DSOD detector, its parity check against PyTorch, int8 quantisation and the
accuracy check of reduced-precision paths.

The graph holds the network only: input ``images [B, C, S, S]`` float32, outputs ``loc
[B, P, 4]`` and ``conf [B, P, K+1]`` (raw head outputs, logits), with a dynamic batch axis.
Decoding and NMS stay outside so that any runtime can use its own. The default boxes are not in
the graph: rebuild them from the model config (``dsod_core.boxes.priors``).

The legacy TorchScript-based exporter (``dynamo=False``) is used. Measured with torch 2.13 and
onnxscript 0.7: the dynamo exporter does produce a correct graph, but takes ~20 s for
``dsod_tiny`` (legacy: a few seconds) and its down-conversion to opset 17 fails inside
``onnx.version_converter`` (it falls back to opset 18 after printing a traceback). The legacy
path prints a deprecation warning; switch when it is removed.

Reduced precision (the fast CPU inference paths; ``benchmarks/RESULTS.md`` has their figures):

- int8: :func:`quantize_onnx` quantises an exported graph statically with ONNX Runtime,
  calibrated on training-store images (:func:`calibration_images`); run it with
  :func:`dsod_core.runners.onnx_runner` or :func:`dsod_core.runners.openvino_runner`.
- bf16: :func:`dsod_core.runners.eager_runner` with ``bf16=True`` (``torch.autocast`` on the
  CPU); only faster than fp32 on CPUs with native bf16 (AVX-512 BF16 or AMX).
- :func:`check_reduced_precision` scores a reduced-precision runner against its fp32
  reference on a store split and fails when mAP drops by more than a limit.

The runners of every inference path are in :mod:`dsod_core.runners`; the BN-folded eager model
is :func:`dsod_core.model.fuse.fuse_bn`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from torch import nn

from dsod_core.data.store import StoreReader
from dsod_core.errors import ConfigError, DataError, ProjectError
from dsod_core.io import atomic_path, write_with

if TYPE_CHECKING:
    from dsod_core.runners import Runner


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
    try:
        with atomic_path(path, suffix=".onnx") as tmp, torch.no_grad():
            torch.onnx.export(
                model,
                (example.to(param.device),),
                str(tmp),
                input_names=["images"],
                output_names=["loc", "conf"],
                dynamic_axes={"images": {0: "batch"}, "loc": {0: "batch"}, "conf": {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        model.train(was_training)
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


# --------------------------------------------------------------------------------------------
# reduced precision: int8 ONNX (static quantisation) and bf16 eager, with an accuracy check
# --------------------------------------------------------------------------------------------
def calibration_images(
    store: str | os.PathLike | StoreReader,
    input_size: int,
    *,
    split: str = "train",
    count: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """``count`` images of ``split`` as the model sees them at inference: normalised with the
    store's train statistics and resized to ``input_size`` (the evaluation transform).

    Returns float32 ``[N, C, S, S]``, N = min(count, split size), drawn without replacement
    with ``seed``. Raises ``DataError`` when the split is empty.
    """
    from dsod_core.data.dataset import DetectionDataset
    from dsod_core.data.transforms import build_eval_transform

    reader = store if isinstance(store, StoreReader) else StoreReader(store)
    dataset = DetectionDataset(reader, split, build_eval_transform(input_size))
    if len(dataset) == 0:
        raise DataError(f"split {split!r} is empty: no calibration images", path=reader.path)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset), size=min(count, len(dataset)), replace=False)
    return np.stack([dataset[int(i)]["image"] for i in sorted(picks)]).astype(np.float32)


class _ImageBatches:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over an array: ``get_next`` (feed dict
    or None), ``__len__`` and ``set_range`` (used by its strided calibration)."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int) -> None:
        self._feeds = [
            {input_name: np.ascontiguousarray(images[i : i + batch_size])}
            for i in range(0, len(images), batch_size)
        ]
        self._pending = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._pending = iter(self._feeds[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._pending, None)


def cpu_has_int8_dot_product() -> bool:
    """Whether this CPU multiplies u8 x s8 without 16-bit saturation: x86 VNNI (AVX-512 or
    AVX) or AMX, or any ARM CPU (its dot-product instructions widen to 32 bits). On plain
    AVX2 (``vpmaddubsw``) pairs of u8 x s8 products are summed into a saturating int16."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False  # unknown: assume the saturating path (reduce_range is safe everywhere)
    flags = set(text.split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def quantize_onnx(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration_images: np.ndarray,
    *,
    per_channel: bool = True,
    calibration_batch: int = 1,
    reduce_range: bool | None = None,
) -> Path:
    """Static int8 quantisation of an exported DSOD graph with ONNX Runtime; returns out_path.

    ``calibration_images``: float32 ``[N, C, S, S]`` as the model receives them (normalised,
    resized), e.g. from :func:`calibration_images` on the training store; their activation
    ranges (min/max) fix the int8 scales. The graph is first pre-processed (shape inference,
    ONNX Runtime's graph optimisations, which fold the conv → BN pairs), then quantised in QDQ
    format: uint8 activations, int8 weights, per output channel when ``per_channel``. ONNX
    Runtime runs the QDQ groups as int8 kernels (VNNI where the CPU has it); ops without an
    int8 kernel (the pre-activation BNs, the L2 norms, softmax-free head reshapes) stay float
    between DequantizeLinear and QuantizeLinear. The file is written atomically.

    ``reduce_range``: 7-bit weights, so that two u8 x s7 products cannot saturate the int16
    accumulator of AVX2's ``vpmaddubsw``. None (default) decides for this CPU: on where it has
    no VNNI/AMX (:func:`cpu_has_int8_dot_product`). A graph quantised without it is accurate
    only on CPUs with VNNI: quantise on the machine that runs it (``dsod detect`` does).
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    images = np.asarray(calibration_images, dtype=np.float32)
    input_name = _calibration_input(fp32_path, images)
    if reduce_range is None:
        # VNNI (and the ARM dot-product instructions) take u8 × s8 without the saturation
        # that makes ``reduce_range`` necessary on plain AVX2 (see the docstring).
        reduce_range = not cpu_has_int8_dot_product()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as tmp:
        quantized = Path(tmp) / "quantized.onnx"
        _quantize_qdq(
            fp32_path,
            quantized,
            _ImageBatches(input_name, images, calibration_batch),
            per_channel=per_channel,
            reduce_range=bool(reduce_range),
        )
        write_with(out_path, lambda dst: Path(quantized).replace(dst), suffix=".onnx")
    return out_path


def _calibration_input(fp32_path: Path, images: np.ndarray) -> str:
    """The graph's input name, once ``images`` are known to fit it (``[N, C, S, S]``, N > 0,
    the graph's C, S, S); raises ``ConfigError`` / ``ExportError`` otherwise."""
    if images.ndim != 4 or len(images) == 0:
        raise ConfigError(
            f"calibration_images must be a non-empty [N, C, S, S] array, got {images.shape}"
        )
    if not fp32_path.is_file():
        raise ExportError("fp32 ONNX graph not found", path=fp32_path)
    graph_input = onnx.load(str(fp32_path), load_external_data=False).graph.input[0]
    want = [d.dim_value for d in graph_input.type.tensor_type.shape.dim[1:]]
    if list(images.shape[1:]) != want:
        raise ConfigError(
            f"calibration images are {list(images.shape[1:])}, the graph takes {want}",
            path=fp32_path,
        )
    return graph_input.name


def _quantize_qdq(
    fp32_path: Path,
    quantized: Path,
    batches: _ImageBatches,
    *,
    per_channel: bool,
    reduce_range: bool,
) -> None:
    """ONNX Runtime's pre-processing, then static QDQ quantisation calibrated on ``batches``
    (min/max), written to ``quantized`` (the pre-processed graph lies beside it)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = quantized.with_name("prepared.onnx")
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
    quantize_static(
        str(prepared),
        str(quantized),
        batches,
        quant_format=QuantFormat.QDQ,
        # Every op ONNX Runtime can run in int8 except BatchNormalization: the BNs left
        # after folding (pre-activation, before a ReLU) would get int8 γ/β, and on a
        # trained dsod_tiny that alone took the largest logit error from 0.25 to 1.2
        # (of a 6.3 range); as float ops they cost little time.
        op_types_to_quantize=[op for op in QDQRegistry if op != "BatchNormalization"],
        per_channel=per_channel,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        # Merge min/max after every batch instead of holding every activation of every
        # calibration image (hundreds of MB per DSOD300 image). Not
        # ``CalibMaxIntermediateOutputs``: onnxruntime 1.32 drops the collected outputs
        # without merging them when that limit is reached ("No data is collected").
        extra_options={"CalibStridedMinMax": 1},
    )


def detect_split(
    runner: Runner,
    store: str | os.PathLike | StoreReader,
    split: str,
    default_boxes: torch.Tensor,
    input_size: int,
    *,
    batch_size: int = 8,
    postprocess_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Detections of ``runner`` on every image of ``split``, as the evaluator makes them: one
    dict per image with ``index`` (store index), ``boxes`` float32 ``[D, 4]`` in pixels of the
    stored image, ``scores`` ``[D]``, ``labels`` int64 ``[D]``."""
    from dsod_core.engine.evaluator import eval_loader
    from dsod_core.postprocess import postprocess

    reader = store if isinstance(store, StoreReader) else StoreReader(store)
    predictions = []
    for batch in eval_loader(reader, split, input_size, batch_size):
        images = batch["images"]
        loc, conf = runner(images)
        h, w = images.shape[-2:]
        dets = postprocess(
            loc, conf, default_boxes, image_size=(int(h), int(w)), **(postprocess_kwargs or {})
        )
        for det, index, (oh, ow) in zip(dets, batch["index"], batch["orig_size"]):
            scale = torch.tensor([ow / w, oh / h, ow / w, oh / h])
            predictions.append(
                {
                    "index": int(index),
                    "boxes": (det["boxes"] * scale).float().numpy(),
                    "scores": det["scores"].float().numpy(),
                    "labels": det["labels"].numpy().astype(np.int64),
                }
            )
    return predictions


def check_reduced_precision(
    reference: Runner,
    candidate: Runner,
    store: str | os.PathLike | StoreReader,
    split: str,
    default_boxes: torch.Tensor,
    input_size: int,
    *,
    max_map_drop: float = 1.0,
    batch_size: int = 8,
) -> dict[str, float]:
    """Accuracy check of a reduced-precision path against its fp32 reference on a store split.

    Both runners detect every image of ``split``; each is scored with the project's metrics
    (VOC07 mAP@0.5, in points: 0-100, and COCO AP). Returns ``map50_reference``,
    ``map50_candidate``, ``map50_drop`` (reference − candidate, points), ``coco_ap_reference``,
    ``coco_ap_candidate`` and ``max_abs_conf_diff`` (largest |Δ| of the class logits over the
    split). Raises ``ExportError`` when the drop exceeds ``max_map_drop`` points.
    """
    from dsod_core.engine.evaluator import score_predictions

    reader = store if isinstance(store, StoreReader) else StoreReader(store)
    scores = {}
    for key, runner in (("reference", reference), ("candidate", candidate)):
        preds = detect_split(
            runner, reader, split, default_boxes, input_size, batch_size=batch_size
        )
        scores[key] = score_predictions(reader, preds)
    worst = 0.0
    for batch in _first_batches(reader, split, input_size, batch_size):
        worst = max(worst, float((reference(batch)[1] - candidate(batch)[1]).abs().max()))
    out = {
        "map50_reference": 100.0 * (scores["reference"]["map50"] or 0.0),
        "map50_candidate": 100.0 * (scores["candidate"]["map50"] or 0.0),
        "coco_ap_reference": 100.0 * (scores["reference"].get("coco_ap") or 0.0),
        "coco_ap_candidate": 100.0 * (scores["candidate"].get("coco_ap") or 0.0),
        "max_abs_conf_diff": worst,
    }
    out["map50_drop"] = out["map50_reference"] - out["map50_candidate"]
    if out["map50_drop"] > max_map_drop:
        raise ExportError(
            f"reduced precision loses {out['map50_drop']:.2f} mAP points on split {split!r} "
            f"(limit {max_map_drop})",
            path=reader.path,
        )
    return out


def _first_batches(reader: StoreReader, split: str, input_size: int, batch_size: int):
    from dsod_core.engine.evaluator import eval_loader

    for i, batch in enumerate(eval_loader(reader, split, input_size, batch_size)):
        if i == 2:  # the logit comparison is a sanity figure; two batches are enough
            return
        yield batch["images"]
