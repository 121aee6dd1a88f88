"""Inference on new images with a trained ``model.pt``: one :class:`Predictor` per model.

A :class:`Predictor` takes images as an adapter produces them (float32 ``[C, H, W]``, not yet
normalised, any size), normalises them with the model's own train-split statistics, resizes
them to the network input (the evaluation transform, exactly as the evaluate stage does),
runs one of five backends in batches and returns detections in pixels of the given image:

* ``eager``: the PyTorch model (CPU or CUDA);
* ``onnx``: the graph of :func:`dsod_core.export.export_onnx` run by ONNX Runtime (CPU);
* ``int8``: that graph statically quantised (:func:`dsod_core.export.quantize_onnx`),
  calibrated on the first images it is given (at least ``calibration_count``, default 16:
  the inputs being detected are the data the ranges should cover; no store is needed);
* ``openvino`` / ``openvino_int8``: the fp32 graph / the same int8 graph compiled by OpenVINO
  (:func:`dsod_core.runners.openvino_runner`), the fastest CPU paths where measured
  (``benchmarks/RESULTS.md``).

Decoding and class-wise NMS are :func:`dsod_core.postprocess.postprocess`, the same for every
backend. Everything the model needs is read from ``model.pt`` (``dsod_core.engine.weights``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dsod_core.data.transforms import build_eval_transform
from dsod_core.engine.evaluator import select_device
from dsod_core.engine.weights import load_trained_model
from dsod_core.errors import ConfigError
from dsod_core.operating_point import DEFAULT_SCORE_THRESHOLD, stored_threshold
from dsod_core.postprocess import postprocess

Backend = Literal["eager", "onnx", "int8", "openvino", "openvino_int8"]
BACKENDS: tuple[str, ...] = ("eager", "onnx", "int8", "openvino", "openvino_int8")


def threshold_choice(meta: dict[str, Any], given: float | None, fallback: float) -> dict[str, Any]:
    """The score threshold a model is run at: ``given`` (source ``option``), else the one its
    ``model.pt`` stores (source ``model``), else ``fallback`` (source ``default``), with a
    note saying how it was chosen or why the model has none."""
    if given is not None:
        note = "given explicitly"
        own = (meta.get("operating_point") or {}).get("threshold")
        if own is not None:
            note += f" (the model's own is {float(own):.4g})"
        return {"score_threshold": float(given), "source": "option", "note": note}
    value, source, note = stored_threshold(meta, fallback)
    return {"score_threshold": float(value), "source": source, "note": note}


class Predictor:
    """Detections of a trained model on un-normalised ``[C, H, W]`` images.

    Args:
        model_path: a run's ``model.pt``.
        backend: one of :data:`BACKENDS` (see the module docstring).
        device: ``auto``, ``cpu`` or ``cuda`` (eager only; the graph runtimes run on the CPU).
        score_threshold: keep detections scoring at least this; None (default): the
            threshold ``model.pt`` stores (:mod:`dsod_core.operating_point`, chosen on the
            validation split), else ``fallback_threshold``. :attr:`threshold` says which.
        nms_iou, max_detections: :func:`dsod_core.postprocess.postprocess`.
        threads: intra-op threads of ONNX Runtime (default: torch's).
        calibration_count: images the int8 backend calibrates on before its first batch.
        amp, cuda_graph: on CUDA only (eager backend): autocast in bfloat16 where the GPU
            supports it, else float16; replay one CUDA graph per batch size
            (:func:`dsod_core.runners.cuda_runner`).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        backend: str = "eager",
        device: str = "auto",
        score_threshold: float | None = None,
        fallback_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_iou: float = 0.45,
        max_detections: int = 200,
        threads: int | None = None,
        calibration_count: int = 16,
        amp: bool = False,
        cuda_graph: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend != "eager" and device == "cuda":
            raise ConfigError(f"backend {backend!r} runs on the CPU; use eager on CUDA")
        self.path = Path(model_path)
        self.backend = backend
        self.device = select_device(device if backend == "eager" else "cpu", "--device")
        if (amp or cuda_graph) and self.device.type != "cuda":
            raise ConfigError("--amp and --cuda-graph need the eager backend on a CUDA device")
        self.model, self.meta = load_trained_model(self.path, self.device)
        self.input_size = int(self.meta["input_size"])
        self.in_channels = int(self.meta["in_channels"])
        self.class_names: list[str] = list(self.meta["class_names"])
        self.channel_names: list[str] = list(self.meta["channel_names"])
        self.mean = self.meta["mean"].numpy().astype(np.float32)[:, None, None]
        self.std = self.meta["std"].numpy().astype(np.float32)[:, None, None]
        self.threshold = threshold_choice(self.meta, score_threshold, fallback_threshold)
        self.post = {
            "score_threshold": self.threshold["score_threshold"],
            "nms_iou": float(nms_iou),
            "max_detections": int(max_detections),
        }
        self.threads = threads
        self.calibration_count = max(1, int(calibration_count))
        self._transform = build_eval_transform(self.input_size)
        self._rng = np.random.default_rng(0)
        self._default_boxes = self.model.default_boxes.detach().cpu()
        self._runner = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._runner = self._first_runner(amp, cuda_graph)  # None: int8, built on calibration

    # --- backends ------------------------------------------------------------------------
    def _first_runner(self, amp: bool, cuda_graph: bool):
        if self.backend == "eager" and self.device.type == "cuda":
            from dsod_core.engine.trainer import amp_dtype
            from dsod_core.runners import cuda_runner

            # channels-last always; autocast (bf16 where the GPU has it, else fp16) and one
            # CUDA graph per batch size on request.
            return cuda_runner(
                self.model,
                dtype=amp_dtype(True, self.device) if amp else None,
                cuda_graph=cuda_graph,
            )
        if self.backend == "eager":
            from dsod_core.runners import eager_runner

            return eager_runner(self.model)
        if self.backend == "onnx":
            return self._onnx_runner()
        if self.backend == "openvino":
            from dsod_core.runners import openvino_runner

            return openvino_runner(self._graph(), threads=self.threads)
        return None

    def _graph(self) -> Path:
        from dsod_core.export import export_onnx

        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="dsod-detect-")
        path = Path(self._tmp.name) / "model.onnx"
        if not path.is_file():
            export_onnx(self.model, path, input_size=self.input_size, in_channels=self.in_channels)
        return path

    def _onnx_runner(self):
        from dsod_core.runners import onnx_runner

        return onnx_runner(self._graph(), threads=self.threads)

    def _int8_runner(self, calibration: np.ndarray):
        from dsod_core.export import quantize_onnx
        from dsod_core.runners import onnx_runner

        fp32 = self._graph()
        int8 = fp32.with_name("model.int8.onnx")
        quantize_onnx(fp32, int8, calibration)
        if self.backend == "openvino_int8":
            from dsod_core.runners import openvino_runner

            return openvino_runner(int8, threads=self.threads)
        return onnx_runner(int8, threads=self.threads)

    def close(self) -> None:
        """Remove the temporary ONNX graphs (also done when the object is collected)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # --- inference -----------------------------------------------------------------------
    def check_channels(self, channels: int, where: str | os.PathLike) -> None:
        """A clear error when an input gives another number of channels than the model."""
        from dsod_core.errors import DataError

        if channels != self.in_channels:
            raise DataError(
                f"gives {channels} channel(s), the model takes {self.in_channels} "
                f"({', '.join(self.channel_names)})",
                path=where,
            )

    @property
    def needs_calibration(self) -> bool:
        """True until an int8 backend has its ranges (:meth:`calibrate`, or the first batch)."""
        return self._runner is None

    def calibrate(self, images: Sequence[np.ndarray]) -> None:
        """Fix the int8 ranges on these images (un-normalised ``[C, H, W]``, as for a call)
        instead of on the first batch: a detect module passes images spread over its input
        (windows from the whole scene), whose ranges cover more than the first few do. A
        no-op for the other backends or once calibrated."""
        if self._runner is None and len(images):
            batch = np.stack([self.prepare(im)[0] for im in images[: self.calibration_count]])
            self._runner = self._int8_runner(batch)

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """One network input (normalised, resized) and the image's ``(H, W)``."""
        image = np.asarray(image, dtype=np.float32)
        item = {
            "image": ((image - self.mean) / self.std).astype(np.float32),
            "boxes": np.zeros((0, 4), dtype=np.float32),
            "labels": np.zeros(0, dtype=np.int64),
            "difficult": np.zeros(0, dtype=bool),
        }
        out = self._transform(item, self._rng)  # resize only: the generator is not drawn
        return np.asarray(out["image"], dtype=np.float32), (image.shape[1], image.shape[2])

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Detections of each image: ``boxes`` float32 ``[D, 4]`` xyxy in its pixels,
        ``scores`` float32 ``[D]``, ``labels`` int64 ``[D]`` (1..K), best first."""
        if not len(images):
            return []
        prepared = [self.prepare(im) for im in images]
        batch = np.stack([p[0] for p in prepared])
        if self._runner is None:  # int8: calibrate on the first images seen
            self._runner = self._int8_runner(batch[: self.calibration_count])
        tensor = torch.from_numpy(batch)
        if self.backend == "eager":
            tensor = tensor.to(self.device)
        loc, conf = self._runner(tensor)
        s = self.input_size
        dets = postprocess(
            loc.to(self.device),
            conf.to(self.device),
            self._default_boxes.to(self.device),
            image_size=(s, s),
            **self.post,
        )
        out = []
        for det, (_, (h, w)) in zip(dets, prepared):
            scale = torch.tensor([w / s, h / s, w / s, h / s], device=det["boxes"].device)
            out.append(
                {
                    "boxes": (det["boxes"] * scale).float().cpu().numpy(),
                    "scores": det["scores"].float().cpu().numpy(),
                    "labels": det["labels"].cpu().numpy().astype(np.int64),
                }
            )
        return out

    def describe(self) -> dict[str, Any]:
        """What the detections came from (recorded in every output file)."""
        return {
            "model": str(self.path),
            "backend": self.backend,
            "device": self.device.type,
            "variant": self.meta["variant"],
            "input_size": self.input_size,
            "classes": self.class_names,
            "channels": self.channel_names,
            **self.post,
            "threshold_source": self.threshold["source"],
            "threshold_note": self.threshold["note"],
        }

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order
        try:
            self.close()
        except Exception:
            pass
