"""``dsod detect``: a trained model on new files, in their native formats, outputs in the world.

``dsod detect --model models/RUN/model.pt --out DIR INPUT [INPUT ...]`` (also ``python -m
pipelines.detect``). ``model.pt`` carries what is needed: the modality, the adapter params its
store was prepared with, channel and class names, normalisation and input size; no
``params.yaml`` is read. ``--adapter-params FILE`` (YAML or JSON mapping) overrides adapter
params where a new input differs (another band order, another HU window, ...).

Per modality (``docs/detect.md``): multispectral scenes are run window by window
(``DIR/<stem>.geojson`` in the raster CRS, ``--wgs84`` for an RFC 7946 copy); medical volumes
slice by slice with 3D linking (``DIR/<stem>.json``, MONAI-style, world mm;
``--volume-mask`` for a NIfTI of the candidates); depth frames with each object's distance
(``DIR/<stem>.json``); RGB images as COCO results (``DIR/<stem>.json``). ``--labels`` scores
the merged detections against the input's labels (``DIR/<stem>.eval.json``). Every output is
written atomically; an error stops with one line naming the file, and outputs already
written for earlier inputs stay as they are.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from dsod_core.detection import DetectResult, DetectRun
from dsod_core.errors import ConfigError, DataError
from dsod_core.inference import BACKENDS, Predictor
from dsod_core.io import write_json
from dsod_core.operating_point import DEFAULT_SCORE_THRESHOLD
from modalities import get_adapter
from modalities.registry import available as list_modalities
from pipelines._common import load_params, stage_main


def input_kind(path: Path) -> str | None:
    """The modality whose formats claim an input (``ModalityAdapter.claims``, from each
    modality's format table); when none does (a damaged file), the one whose file-name
    suffixes (``output_suffixes``) the name ends with. None when none or several do."""
    names = list_modalities()
    kinds = [name for name in names if get_adapter(name).claims(path)]
    if not kinds and path.is_file():
        lower = path.name.lower()
        kinds = [n for n in names if lower.endswith(tuple(get_adapter(n).output_suffixes))]
    return kinds[0] if len(kinds) == 1 else None


def load_overrides(path: str | None) -> dict[str, Any]:
    """``--adapter-params``: a YAML (or JSON) mapping of adapter params."""
    return load_params(path, "adapter params file") if path else {}


def build_adapter(predictor: Predictor, overrides: dict[str, Any], root: Path, source: str):
    """The model's adapter with the params its store was prepared with, ``overrides`` on top."""
    meta = predictor.meta
    modality = str(meta.get("modality", ""))
    stored = meta.get("adapter_params")
    if stored is None and not overrides:
        raise ConfigError(
            "model.pt records no adapter params (written before `dsod detect` existed): "
            "retrain it, or pass the adapter params of its data with --adapter-params",
            path=predictor.path,
        )
    cls = get_adapter(modality)
    values = {**(stored or {}), **overrides}
    try:
        params = cls.Params.parse(values, owner=cls.name, source=source)
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=exc.path or source) from None
    return cls(root, params)


def check_input(path: Path, modality: str, model: Path) -> None:
    """Refuse a missing input and one whose format belongs to another modality. A DICOM
    series may be named ``folder#<SeriesInstanceUID>`` (the folder must exist)."""
    folder, sep, _ = str(path).partition("#")
    if sep and not path.exists():
        if not Path(folder).is_dir():
            raise DataError("input not found (no folder before '#')", path=path)
        return
    if not path.exists():
        raise DataError("input not found", path=path)
    kind = input_kind(path)
    if kind is not None and kind != modality and not get_adapter(modality).accepts(path):
        raise DataError(
            f"looks like a {kind} input, but the model {model} is a {modality} detector",
            path=path,
        )


def modality_options(cls, args: argparse.Namespace):
    """The adapter's ``DetectParams`` from the flags given (None where it declares none).
    A flag of another modality's options is refused, naming the flag."""
    own = set()
    values: dict[str, Any] = {}
    if cls.DetectParams is not None:
        own = {r["name"] for r in cls.DetectParams.describe()}
    for name in option_fields():
        value = getattr(args, name, None)
        if value is None or value is False:
            continue
        if name not in own:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} does not apply to a {cls.name} model")
        values[name] = value
    if cls.DetectParams is None:
        return None
    return cls.DetectParams.parse(values, owner=f"{cls.name} detect", source="dsod detect")


def option_fields() -> dict[str, dict[str, Any]]:
    """Every modality's detect options by name (first declaration wins): name -> describe
    row with the modalities that declare it."""
    out: dict[str, dict[str, Any]] = {}
    for modality in list_modalities():
        params = get_adapter(modality).DetectParams
        for row in params.describe() if params is not None else []:
            entry = out.setdefault(row["name"], {**row, "modalities": []})
            entry["modalities"].append(modality)
    return out


def run(args: argparse.Namespace) -> list[DetectResult]:
    predictor = Predictor(
        args.model,
        backend=args.backend,
        device=args.device,
        score_threshold=args.score_threshold,
        fallback_threshold=DEFAULT_SCORE_THRESHOLD,
        nms_iou=args.nms_iou,
        max_detections=args.max_detections,
        threads=args.threads,
        amp=args.amp,
        cuda_graph=args.cuda_graph,
    )
    modality = str(predictor.meta.get("modality", ""))
    cls = get_adapter(modality)
    inputs = [Path(p) for p in args.inputs]
    for path in inputs:
        check_input(path, modality, predictor.path)
    stems: dict[str, Path] = {}
    for path in inputs:
        stem = cls.output_stem(Path(str(path).partition("#")[0]) if "#" in str(path) else path)
        if stem in stems and path.is_file():
            raise ConfigError(
                f"inputs {stems[stem]} and {path} would both write {stem}.*: detect them "
                "into different --out folders"
            )
        stems[stem] = path
    overrides = load_overrides(args.adapter_params)
    source = args.adapter_params or str(predictor.path)
    detect_run = DetectRun(
        out_dir=Path(args.out),
        batch_size=args.batch_size,
        labels=Path(args.labels) if args.labels else None,
        progress=not args.no_progress,
        modality=modality_options(cls, args),
    )
    if detect_run.labels is not None and len(inputs) != 1:
        raise ConfigError("--labels scores one input: give one INPUT with it")
    detect_run.out_dir.mkdir(parents=True, exist_ok=True)
    print(threshold_line(predictor))
    results = []
    try:
        for path in inputs:
            real = Path(str(path).partition("#")[0])
            root = real if real.is_dir() else real.parent
            adapter = build_adapter(predictor, overrides, root, source)
            started = time.perf_counter()
            for result in adapter.detect(path, predictor, detect_run):
                result.seconds = time.perf_counter() - started
                results.append(result)
                print(summary_line(result))
                started = time.perf_counter()
    finally:
        predictor.close()
    write_summary(detect_run.out_dir, predictor, results)
    return results


def threshold_line(predictor: Predictor) -> str:
    """Which score threshold the run uses and where it came from (one line)."""
    t = predictor.threshold
    where = {"model": "stored in model.pt", "option": "--score-threshold", "default": "default"}
    return f"score threshold {t['score_threshold']:.4g} ({where[t['source']]}: {t['note']})"


def write_summary(out_dir: Path, predictor: Predictor, results: list[DetectResult]) -> Path:
    """``DIR/detect_summary.json``: the model, the threshold and its origin, and per input
    the files written and the detection count (what the stdout lines say)."""
    rows = [
        {
            "input": str(r.input),
            "outputs": [str(p) for p in r.outputs],
            "detections": r.detections,
            "units": r.units,
            "skipped": r.skipped,
        }
        for r in results
    ]
    summary = {"model": predictor.describe(), "threshold": predictor.threshold, "inputs": rows}
    return write_json(out_dir / "detect_summary.json", summary)


def summary_line(r: DetectResult) -> str:
    line = (
        f"detect {r.input}: {r.detections} detections from {r.units} units"
        + (f" ({r.skipped} all no-data, skipped)" if r.skipped else "")
        + f" in {r.seconds:.1f} s -> {', '.join(str(p) for p in r.outputs)}"
    )
    if r.evaluation:
        shown = {k: v for k, v in r.evaluation.items() if isinstance(v, (int, float))}
        line += "\n  scene-level: " + json.dumps(shown)
    return line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsod detect",
        description="Run a trained DSOD model on new files (docs/detect.md).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders")
    parser.add_argument("--model", required=True, help="a run's model.pt")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--adapter-params", help="YAML/JSON mapping overriding the model's adapter params"
    )
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="keep detections scoring at least this (default: the threshold model.pt stores, "
        f"chosen on the validation split; {DEFAULT_SCORE_THRESHOLD} for a model without one)",
    )
    parser.add_argument("--nms-iou", type=float, default=0.45, help="per-image NMS IoU")
    parser.add_argument("--max-detections", type=int, default=200, help="per network input")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="eager",
        help="eager (PyTorch), onnx (ONNX Runtime), int8 (ONNX Runtime int8), openvino, "
        "openvino_int8 (OpenVINO fp32 / int8); the graph backends run on the CPU",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--amp",
        action="store_true",
        help="CUDA: autocast (bfloat16 where supported, else float16)",
    )
    parser.add_argument(
        "--cuda-graph", action="store_true", help="CUDA: replay one CUDA graph per batch size"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="network inputs per batch")
    parser.add_argument(
        "--threads", type=int, help="ONNX Runtime / OpenVINO threads (default: torch's)"
    )
    # Options that belong to a modality are declared by its adapter (DetectParams).
    for name, row in option_fields().items():
        flag = "--" + name.replace("_", "-")
        where = ", ".join(row["modalities"])
        if row["type"].startswith("bool"):
            parser.add_argument(flag, action="store_true", help=f"{where}: {row['doc']}")
        else:
            parser.add_argument(flag, help=f"{where}: {row['doc']}")
    parser.add_argument(
        "--labels", help="the input's labels: score the scene/volume detections against them"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


@stage_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.score_threshold is not None and not 0.0 <= args.score_threshold <= 1.0:
        raise ConfigError(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    run(args)
    return 0


if __name__ == "__main__":
    main()
