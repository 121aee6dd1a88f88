"""Reading and checking ``params.yaml``: the whole file, before any stage touches an output.

The file is declared with the project's params mechanism (:mod:`dsod_core.params`), one params
class per section: :class:`ParamsFile` (the top level: ``seed``, ``seeds``,
``train_fractions``, ``sources``, ``targets`` and the sections), :class:`DemoSection`,
:class:`DatasetEntry` (each of ``datasets``; its ``adapter`` mapping is checked by the
adapter's own ``Params`` class), :class:`PrepareSection`, :class:`ModelSection` (``overrides``
checked by ``DSODConfig``), :class:`PretrainSection` and :class:`EvaluateSection`. Training
params (``pretrain.train``, ``train``, ``finetune``, ``datasets.<name>.train`` /
``.finetune``) are partial ``TrainConfig`` mappings, each checked on its own (so the message
names the layer the key is in) and then merged into the ``TrainConfig`` of every run.

:func:`validate_params` is called first by every stage script (and by the ``check`` stage that
``dvc.yaml`` runs before all others, so that ``dvc repro`` stops on a typo before DVC removes
any stage's previous outputs). It refuses unknown keys (with a "did you mean"), wrong types,
values out of range, unknown model variants, ``targets`` or ``sources`` not in ``datasets``,
unknown modalities, adapter params their adapter does not accept, and a dataset ``code`` path
that is not the code of its adapter. Every message is one line, starts with the params file
and names the dotted key (``params.yaml: train.eval_every must be an integer >= 0, got
'often'``).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from dsod_core.engine.config import NOT_OVERRIDES, TrainConfig
from dsod_core.errors import ConfigError, DataError
from dsod_core.model.config import MIN_INPUT_SIZE, DSODConfig
from dsod_core.operating_point import OperatingPointParams
from dsod_core.params import ParamError, Params, param

INITS = ("scratch", "finetuned")

# Set by the pipeline (paths from dvc.yaml, the `model` section, the top-level `seed`, the
# --resume flag), never by a training section.
PIPELINE_KEYS = {
    "store",
    "out_dir",
    "variant",
    "input_size",
    "init_weights",
    "model_overrides",
    "seed",
    "train_fraction",
    "resume",
    "init_format",
}


# --- the sections ---------------------------------------------------------------------------
@dataclass
class DemoSection(Params):
    """``demo``: the synthetic data of stage ``demo@<modality>``."""

    section: ClassVar[str] = "demo"

    image_size: int = param(doc="side of one demo sample in pixels", min=1)
    num_images: int = param(doc="samples to aim for per modality", min=1)
    num_images_per_modality: dict[str, int] | None = param(
        None, "per-modality override of num_images, e.g. {medical: 300}", min=1
    )
    modalities: list[str] | None = param(
        None, "the modalities whose demo data stage demo writes", min_len=1
    )


@dataclass
class TilingSection(Params):
    """``datasets.<name>.tiling``: cut every image (or slice) into overlapping square tiles
    at prepare time; evaluation and ``dsod detect`` merge the tiles' detections back into
    whole frames (docs/training.md, "Tiling")."""

    section: ClassVar[str] = "datasets.<name>.tiling"

    tile_size: int = param(doc="side of one tile in input pixels", min=8)
    overlap: int = param(doc="pixels shared by neighbouring tiles (> the largest object)", min=0)
    min_visible: float = param(
        0.5, "a box cut by a tile is an object there when this share of it shows", min=0, max=1
    )
    keep_empty: float = param(
        0.25, "share of the train split's tiles without boxes kept (stable hash)", min=0, max=1
    )
    merge_iou: float = param(0.45, "NMS threshold of the tile merge", min=0, max=1)

    def check(self) -> None:
        if self.overlap >= self.tile_size:
            self.fail("overlap", f"must be < tile_size ({self.tile_size}), got {self.overlap}")


#: Modalities that cut their inputs themselves (their adapter's chip_size/overlap).
SELF_TILED = ("multispectral",)


@dataclass
class DatasetEntry(Params):
    """One entry of ``datasets``: where the data is and how to read it."""

    section: ClassVar[str] = "datasets.<name>"

    modality: str = param(doc="a name from the modality registry", min_len=1)
    root: str = param(doc="the dataset folder", min_len=1)
    code: str = param(doc="the adapter's code (a DVC dependency of prepare)", min_len=1)
    adapter: dict[str, Any] = param(
        doc="adapter params (the adapter's Params class), over demo_params.json when present",
        expect="a mapping ({} for the adapter's defaults)",
    )
    description: str | None = param(None, "a line about the dataset")
    train: dict[str, Any] | None = param(None, "this dataset's overrides of the training params")
    finetune: dict[str, Any] | None = param(
        None, "this dataset's overrides for fine-tuned runs (over train)"
    )
    tiling: TilingSection | None = param(
        None, "cut images into tiles {tile_size, overlap} (null: whole images)"
    )
    input_size: int | None = param(
        None,
        "this dataset's square network input in pixels, for every stage (null: model.input_size)",
        min=MIN_INPUT_SIZE,
    )

    def check(self) -> None:
        if self.tiling is not None and self.modality in SELF_TILED:
            self.fail("tiling", "multispectral rasters are cut by the adapter's chip_size/overlap")


@dataclass
class PrepareSection(Params):
    """``prepare``: the error policy and compression of stage ``prepare@<dataset>``."""

    section: ClassVar[str] = "prepare"

    on_error: Literal["error", "skip"] = param(
        "error", "error: stop at the first bad unit; skip: leave it out and report it"
    )
    compression: Literal["gzip"] | None = param("gzip", "HDF5 image compression (null: none)")
    straddle: Literal["error", "warn"] = param(
        "error",
        "an independence unit (patient, scene, sequence) with samples in two splits: "
        "error refuses the store, warn keeps it with a warning per unit",
    )


@dataclass
class ModelSection(Params):
    """``model``: the variant every training stage builds."""

    section: ClassVar[str] = "model"

    variant: str = param(doc="a registered model variant", min_len=1)
    input_size: int = param(doc="square network input in pixels", min=MIN_INPUT_SIZE)
    overrides: dict[str, Any] | None = param(
        None, "DSODConfig fields over the variant's, e.g. {norm: group}", schema=DSODConfig
    )
    prior_fit: bool = param(
        False, "fit default-box sizes and aspect ratios to each run's training boxes (model.pt)"
    )
    min_coverage: float = param(
        0.2,
        "prepare warns when fewer training boxes have a default box at IoU >= 0.5",
        min=0,
        max=1,
    )

    def check(self) -> None:
        from dsod_core.model import list_variants

        known = list_variants()
        if self.variant not in known:
            close = difflib.get_close_matches(self.variant, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            detail = f"{self.variant!r} is not a known variant{hint} (known: {', '.join(known)})"
            raise ParamError(("variant",), "value", detail)
        fixed = [k for k in NOT_OVERRIDES if k in (self.overrides or {})]
        if fixed:
            self.fail("overrides", f"{fixed} are set by the data and model.input_size")


@dataclass
class PretrainSection(Params):
    """``pretrain``: the source models' own training params."""

    section: ClassVar[str] = "pretrain"

    train: dict[str, Any] = param(
        doc="TrainConfig fields of the source models",
        min_len=1,
        expect="a non-empty mapping: the source model's own training params (it is not "
        "merged with `train`)",
    )


@dataclass
class EvaluateSection(Params):
    """``evaluate``: stage ``evaluate@<run>``."""

    section: ClassVar[str] = "evaluate"

    split: Literal["train", "val", "test"] = param("test", "the split scored")
    score_threshold: float = param(0.01, "least class score kept", min=0, max=1)
    nms_iou: float = param(0.45, "NMS suppresses boxes overlapping more than this", min=0, max=1)
    max_detections: int = param(200, "detections kept per image", min=1)
    pictures: int = param(4, "test images drawn with predicted and true boxes", min=0)
    batch_size: int = param(16, "images per inference batch", min=1)
    device: Literal["auto", "cpu", "cuda"] = param("auto", "auto: the GPU when there is one")
    operating_point: OperatingPointParams = param(
        default_factory=OperatingPointParams,
        doc="the score threshold stored in model.pt, chosen on val by the train stages "
        "({rule: f1} or {rule: precision|recall, target: 0.9}; docs/detect.md)",
    )


@dataclass
class CheckpointEntry(Params):
    """One entry of ``checkpoints``: an ImageNet VGG16 checkpoint file the user has, a source
    of fine-tuned runs beside the project's source models (docs/compare_imagenet.md)."""

    section: ClassVar[str] = "checkpoints.<name>"

    path: str = param(
        doc="the checkpoint file (in the repository or an absolute path; a DVC dependency)",
        min_len=1,
    )
    format: Literal["torchvision", "timm"] = param(
        doc="torchvision: vgg16-397923af.pth; timm: vgg16.tv_in1k model.safetensors (or .pth)"
    )
    image_passes: int = param(
        doc="the compute that made the checkpoint, charged to its fine-tuned arm, e.g. "
        "90 epochs x 1,281,167 images = 115305030",
        min=0,
    )
    note: str | None = param(None, "where the file and the image_passes figure come from")


@dataclass
class PrimaryComparison(Params):
    """``comparison.primary``: the one comparison declared before the results are seen; it
    alone is reported unadjusted (docs/study.md, "Multiplicity")."""

    section: ClassVar[str] = "comparison.primary"

    target: str = param(doc="a dataset in targets", min_len=1)
    source: str = param(doc="a dataset in sources or a name in checkpoints", min_len=1)
    fraction: float = param(1.0, "a value of train_fractions", min=0, max=1, min_exclusive=True)
    against: Literal["matched", "scratch"] = param(
        "matched",
        "the scratch arm fine-tuning is compared with: matched (the same total image passes, "
        "source pretraining included; project sources only) or scratch (the same "
        "target-training budget)",
    )


@dataclass
class ComparisonSection(Params):
    """``comparison``: the compare stage's declared primary comparison, the train fractions
    that get a compute-matched scratch arm, and the intervals' level."""

    section: ClassVar[str] = "comparison"

    primary: PrimaryComparison = param(doc="the declared primary comparison")
    matched_fractions: list[float] = param(
        default_factory=lambda: [1.0],
        doc="train fractions with a compute-matched scratch arm of each project source "
        "(each in train_fractions; checkpoints get none)",
        min=0,
        max=1,
        min_exclusive=True,
        min_len=1,
    )
    level: float = param(0.95, "coverage of every interval", min=0.5, max=0.999)


@dataclass(kw_only=True)
class ParamsFile(Params):
    """The whole ``params.yaml``."""

    seed: int = param(0, "the demo data's seed and the source models' training seed", min=0)
    seeds: list[int] | None = param(
        None, "training seeds of every target run (null: [seed])", min=0, min_len=1
    )
    train_fractions: list[float] = param(
        default_factory=lambda: [1.0],
        doc="nested subsets of each target's train split",
        min=0,
        max=1,
        min_exclusive=True,
        min_len=1,
    )
    source_seeds: list[int] | None = param(
        None,
        "training seeds of the source models (null: [seed]); fine-tuned seed i starts from "
        "source seed i mod len(source_seeds)",
        min=0,
        min_len=1,
    )
    sources: list[str] = param(
        doc="datasets whose source model fine-tuned runs start from ([]: only checkpoints)",
        expect="a list of datasets (the source models of fine-tuning; an ImageNet checkpoint "
        "file is a source named in `checkpoints:`, docs/compare_imagenet.md)",
    )
    checkpoints: dict[str, CheckpointEntry] = param(
        default_factory=dict,
        doc="name -> an ImageNet VGG16 checkpoint file: a source of fine-tuned runs of every "
        "target (model.variant with backbone vgg16; {}: none)",
    )
    demo: DemoSection = param(doc="synthetic data of every modality")
    datasets: dict[str, DatasetEntry] = param(doc="name -> dataset entry", min_len=1)
    prepare: PrepareSection = param(doc="the prepare stage")
    model: ModelSection = param(doc="the model of every training stage")
    pretrain: PretrainSection = param(doc="the source models")
    targets: list[str] = param(doc="datasets compared scratch vs fine-tuned", min_len=1)
    train: dict[str, Any] | None = param(None, "training params of every target run")
    finetune: dict[str, Any] | None = param(None, "overrides of train for fine-tuned runs")
    evaluate: EvaluateSection = param(doc="the evaluate stage")
    comparison: ComparisonSection | None = param(
        None, "the compare stage (null: no primary comparison declared, every one adjusted)"
    )

    def check(self) -> None:
        _check_lists(vars(self), self.datasets)
        if not self.sources and not self.checkpoints:
            self.fail(
                "sources",
                "is empty and so is checkpoints: fine-tuned runs need a source (a dataset, or "
                "an ImageNet checkpoint in checkpoints)",
            )
        clash = sorted(set(self.checkpoints) & set(self.datasets))
        if clash:
            self.fail(
                "checkpoints",
                f"{clash} are dataset names too; a checkpoint source needs a name of its own "
                "(its reference is models/pretrain/<name>/)",
            )
        _check_comparison(self)


def _check_comparison(f: ParamsFile) -> None:
    """The primary comparison names a target, a source and a trained fraction (a matched one
    when it is against the matched arm); matched fractions are trained fractions."""
    c = f.comparison
    if c is None:
        return
    fractions = [float(x) for x in f.train_fractions]
    for x in c.matched_fractions:
        if float(x) not in fractions:
            raise ParamError(
                ("comparison", "matched_fractions"), "check", f"{x!r} is not in train_fractions"
            )
    p = c.primary
    for key, value, allowed in (
        ("target", p.target, f.targets),
        ("source", p.source, [*f.sources, *f.checkpoints]),
        ("fraction", float(p.fraction), fractions),
    ):
        if value not in allowed:
            raise ParamError(
                ("comparison", "primary", key), "check", f"{value!r} is not in {list(allowed)}"
            )
    if p.against == "matched" and p.source in f.checkpoints:
        raise ParamError(
            ("comparison", "primary", "against"),
            "check",
            f"checkpoint source {p.source!r} has no compute-matched scratch arm "
            "(docs/compare_imagenet.md); set against: scratch",
        )
    if p.against == "matched" and float(p.fraction) not in [float(x) for x in c.matched_fractions]:
        raise ParamError(
            ("comparison", "primary", "fraction"),
            "check",
            f"{p.fraction!r} has no matched arm (add it to comparison.matched_fractions)",
        )


def _check_lists(values: Mapping[str, Any], datasets: Mapping[str, Any]) -> None:
    """No repeats in ``seeds``, ``train_fractions``, ``sources`` and ``targets``; every source
    and target is a dataset."""
    for name in ("seeds", "source_seeds", "train_fractions", "sources", "targets"):
        items = values.get(name)
        if items is not None and len(set(items)) != len(items):
            raise ParamError((name,), "value", f"has repeats: {items!r}")
    for name in ("sources", "targets"):
        for dataset in values.get(name) or []:
            if dataset not in datasets:
                known = ", ".join(datasets)
                raise ParamError((name,), "check", f"{dataset!r} is not in datasets ({known})")


AXES = ("seed", "seeds", "source_seeds", "train_fractions", "sources", "checkpoints")


# --- the public functions the stages use ------------------------------------------------------
def _given(sec: Params, values: Mapping[str, Any]) -> dict[str, Any]:
    """The keys the file gives, converted (absent keys stay absent: stages apply defaults)."""
    return {k: getattr(sec, k) for k in values}


def _section(params: Mapping[str, Any], name: str, source: str) -> tuple[Any, Any]:
    """``(parsed, given)`` of the top-level key ``name`` (checked as :class:`ParamsFile`
    declares it)."""
    if not isinstance(params, Mapping) or name not in params:
        raise ParamError((name,), "missing", "must be a mapping; it is missing").located(
            ParamsFile, "", source
        )
    parsed = ParamsFile.check_values({name: params[name]}, owner="", source=source)
    return parsed[name], params[name]


def study_axes(params: dict[str, Any], source: str = "params.yaml") -> dict[str, list]:
    """``seeds``, ``train_fractions`` and ``sources``, checked: the axes every target run is
    trained over (docs/study.md)."""
    values = {k: params[k] for k in AXES if k in params}
    try:
        axes = ParamsFile._convert(values, partial=True)
        if "sources" not in axes:
            detail = "must be a non-empty list of datasets (the source models); it is missing"
            raise ParamError(("sources",), "missing", detail)
        _check_lists(axes, params.get("datasets") or {})
    except ParamError as exc:
        raise exc.located(ParamsFile, "", source) from None
    seeds = axes.get("seeds") or [axes.get("seed", 0)]
    source_seeds = axes.get("source_seeds") or [axes.get("seed", 0)]
    fractions = axes.get("train_fractions", [1.0])
    return {
        "seeds": seeds,
        "source_seeds": source_seeds,
        "train_fractions": fractions,
        "sources": axes["sources"],
        "checkpoints": list(axes.get("checkpoints") or {}),
    }


def run_name(init: str, source: str | None, fraction: Any) -> str:
    """The run folder under models/<dataset>/ (as dvc.yaml names it: the fraction as written
    in params.yaml)."""
    return f"scratch-f{fraction}" if init == "scratch" else f"{init}-{source}-f{fraction}"


def arms(params: dict[str, Any], axes: dict[str, list]) -> list[tuple[str, str | None, Any]]:
    """(init, source, fraction as written) of every run folder of a target: scratch and every
    source's fine-tuned run at each fraction (the project sources', then the ImageNet
    ``checkpoints``'), the matched arm of each project source at ``comparison
    .matched_fractions`` (a checkpoint source has none: docs/compare_imagenet.md)."""
    section = comparison_section(params)
    matched = [float(f) for f in section.matched_fractions] if section else []
    out = []
    for raw in params.get("train_fractions", [1.0]):
        out.append(("scratch", None, raw))
        out += [("finetuned", s, raw) for s in [*axes["sources"], *axes["checkpoints"]]]
        if float(raw) in matched:
            out += [("matched", s, raw) for s in axes["sources"]]
    return out


def source_seed_for(axes: Mapping[str, list], seed: int) -> int:
    """The source seed a fine-tuned (or matched) run of training seed ``seed`` is paired with:
    ``source_seeds[i % len(source_seeds)]`` for the ``i``-th of ``seeds``, so the seed
    differences of the study carry source-model variance as well (docs/study.md)."""
    seeds, sources = list(axes["seeds"]), list(axes["source_seeds"])
    i = seeds.index(seed) if seed in seeds else int(seed)
    return int(sources[i % len(sources)])


def comparison_section(
    params: dict[str, Any], source: str = "params.yaml"
) -> ComparisonSection | None:
    """The ``comparison`` section, parsed (every default applied); None when absent."""
    if "comparison" not in params:
        return None
    return _section(params, "comparison", source)[0]


def demo_section(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    return _given(*_section(params, "demo", source))


def prepare_section(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    return _given(*_section(params, "prepare", source))


def evaluate_section(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    return _given(*_section(params, "evaluate", source))


def model_section(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    return _given(*_section(params, "model", source))


def dataset_entry(params: dict[str, Any], name: str, source: str = "params.yaml") -> dict:
    """The raw entry ``datasets.<name>``, checked by :class:`DatasetEntry`."""
    datasets = params.get("datasets")
    if not isinstance(datasets, dict) or name not in datasets:
        known = sorted(datasets) if isinstance(datasets, dict) else []
        raise ConfigError(f"unknown dataset {name!r}; datasets in params: {known}", path=source)
    ParamsFile.check_values({"datasets": {name: datasets[name]}}, owner="", source=source)
    return datasets[name]


def merged_adapter_params(entry: dict[str, Any]) -> dict[str, Any]:
    """A dataset's adapter params: ``demo_params.json`` of a demo root (when there is one),
    overridden by the entry's ``adapter`` mapping."""
    values: dict[str, Any] = {}
    demo_params = Path(entry["root"]) / "demo_params.json"
    if demo_params.is_file():
        try:
            values.update(json.loads(demo_params.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"not valid JSON ({exc})", path=demo_params) from None
    values.update(entry.get("adapter") or {})
    return values


def dataset_tiling(entry: dict[str, Any], source: str = "params.yaml") -> dict[str, Any] | None:
    """A dataset's ``tiling`` with its defaults filled (:class:`TilingSection`), or None (whole
    images): what the prepare stage cuts by and records in the store's params."""
    raw = entry.get("tiling")
    if raw is None:
        return None
    return TilingSection.parse(raw, owner="datasets.<name>.tiling", source=source).to_dict()


def dataset_input_size(params: Mapping[str, Any], dataset: str) -> int:
    """The network input side of ``dataset``'s runs: ``datasets.<name>.input_size``, else
    ``model.input_size`` (docs/small_objects.md)."""
    entry = (params.get("datasets") or {}).get(dataset) or {}
    own = entry.get("input_size") if isinstance(entry, Mapping) else None
    return int(own if own is not None else (params.get("model") or {}).get("input_size", 64))


def coverage_settings(params: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """Keyword arguments of :func:`dsod_core.model.fit.store_coverage` for ``dataset``'s
    runs: the model, its input size, the prior fit and the warning threshold."""
    model = params.get("model") or {}
    return {
        "variant": model.get("variant", "dsod_tiny"),
        "input_size": dataset_input_size(params, dataset),
        "overrides": dict(model.get("overrides") or {}),
        "prior_fit": bool(model.get("prior_fit", False)),
        "min_coverage": float(model.get("min_coverage", 0.2)),
    }


def prepare_settings(params: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """What ``prepare@<dataset>`` reads from params.yaml besides the entry's ``modality``,
    ``root``, ``code`` and ``adapter`` (its DVC params): the resolved ``tiling`` and the
    settings of the default-box coverage report. The check stage writes it to
    ``data/prepare_settings/<dataset>.json``, a DVC dependency of that prepare stage: optional
    keys cannot be DVC params (a key absent from params.yaml fails `dvc repro`), and the whole
    entry would make a dataset's training overrides re-run its prepare."""
    entry = (params.get("datasets") or {}).get(dataset) or {}
    return {"tiling": dataset_tiling(entry), "coverage": coverage_settings(params, dataset)}


def check_dataset(name: str, entry: dict[str, Any], source: str = "params.yaml") -> None:
    """The modality resolves, its adapter accepts the params, ``code`` is the adapter's code."""
    from modalities.registry import adapter_code, get_adapter

    try:
        cls = get_adapter(entry["modality"])
    except ConfigError as exc:
        raise ConfigError(f"datasets.{name}.modality: {exc.reason}", path=source) from None
    values = merged_adapter_params(entry)
    try:
        # Before the demo stage has written a demo root, only keys and types can be checked.
        cls.Params.parse(values, owner=cls.name, cross_check=Path(entry["root"]).exists())
    except ConfigError as exc:
        raise ConfigError(f"datasets.{name}.adapter: {exc.reason}", path=source) from None
    expected = adapter_code(entry["modality"])
    declared = Path(os.path.abspath(entry["code"]))
    if declared.resolve() != expected:
        try:
            shown = expected.relative_to(Path.cwd().resolve())
        except ValueError:
            shown = expected
        raise ConfigError(
            f"datasets.{name}.code is {entry['code']!r} but the {entry['modality']!r} adapter's "
            f"code is {str(shown)!r}; set it so DVC re-runs prepare when that code changes",
            path=source,
        )


def validate_params(
    params: dict[str, Any], source: str = "params.yaml", datasets: list[str] | None = None
) -> None:
    """Check the whole params file (see the module docstring); raise ``ConfigError``.

    ``datasets`` names the datasets whose adapters are resolved and whose adapter params are
    checked by their adapter (None: all). A stage passes only the datasets it reads, so that
    it imports only the adapter code it depends on; the ``check`` stage passes None.
    """
    from dsod_core.model.registry import variant_config

    parsed = ParamsFile.parse(params, owner="", source=source)
    for name, entry in params["datasets"].items():
        if datasets is None or name in datasets:
            check_dataset(name, entry, source)
    model = parsed.model
    try:  # the rules of the whole DSODConfig (three blocks, input size of the prior layout)
        built = variant_config(
            model.variant,
            in_channels=1,
            num_classes=1,
            input_size=model.input_size,
            **dict(model.overrides or {}),
        )
    except ConfigError as exc:
        raise ConfigError(f"model: {exc.reason}", path=source) from None
    check_checkpoints(parsed.checkpoints, model.variant, built.backbone, source)
    for name, layer in training_layers(params):
        check_train_layer(name, layer, source)
    # Paths come from dvc.yaml at run time; only the params are checked here.
    for dataset in params["sources"]:
        build_config(params, dataset, "pretrain", Path("<out-dir>"), "<store>", source=source)
    for dataset in params["targets"]:
        for init in INITS:
            build_config(params, dataset, init, Path("<out-dir>"), "<store>", source=source)


def check_checkpoints(
    checkpoints: Mapping[str, CheckpointEntry], variant: str, backbone: str, source: str
) -> None:
    """Checkpoint sources need a model with a VGG16 trunk and a file that is there (its
    layout is checked by the reference stage, ``pipelines.train NAME --init checkpoint``)."""
    if checkpoints and backbone != "vgg16":
        raise ConfigError(
            f"checkpoints {sorted(checkpoints)} are ImageNet VGG16 checkpoints: they need a "
            f"model.variant with backbone vgg16 (ssd300_vgg16, ssd300_vgg16_dense), "
            f"model.variant is {variant!r} (backbone {backbone!r})",
            path=source,
        )
    for name, entry in checkpoints.items():
        if not Path(entry.path).is_file():
            raise ConfigError(
                f"checkpoints.{name}.path: no file {entry.path!r} (download it on a connected "
                "machine and put it there: docs/compare_imagenet.md)",
                path=source,
            )


def checkpoint_entry(
    params: Mapping[str, Any], name: str, source: str = "params.yaml"
) -> CheckpointEntry:
    """The entry ``checkpoints.<name>``, parsed; one line naming the known ones otherwise."""
    raw = params.get("checkpoints") or {}
    if not isinstance(raw, Mapping) or name not in raw:
        known = sorted(raw) if isinstance(raw, Mapping) else []
        detail = f"unknown checkpoint {name!r}; checkpoints in params: {known}"
        raise ConfigError(detail, path=source)
    return _section(params, "checkpoints", source)[0][name]


# --- training params --------------------------------------------------------------------------
def training_layers(params: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Every mapping of training params in the file, by its dotted key."""
    layers = [
        ("pretrain.train", (params.get("pretrain") or {}).get("train")),
        ("train", params.get("train")),
        ("finetune", params.get("finetune")),
    ]
    for name, entry in (params.get("datasets") or {}).items():
        for key in ("train", "finetune"):
            layers.append((f"datasets.{name}.{key}", (entry or {}).get(key)))
    return layers


def check_train_layer(name: str, layer: Any, source: str = "params.yaml") -> dict[str, Any]:
    """One mapping of training params: TrainConfig's keys (without those the pipeline sets),
    types and ranges, the message naming the key in this mapping (``train.lr``,
    ``datasets.<name>.train.augmentation.crop``). Returns the keys given, converted."""
    if layer is None:
        return {}
    if not isinstance(layer, Mapping):
        raise ConfigError(f"{name} must be a mapping, got {layer!r}", path=source)
    own = {k: v for k, v in layer.items() if k not in PIPELINE_KEYS}
    try:  # the defaults complete the layer: its own rules (augmentation pairs, ...) are checked
        converted = _given(TrainConfig.parse(own), own)
    except ParamError as exc:  # named as the file names it: a dotted key under `name`
        accepted = [k for k in exc.accepted if k not in PIPELINE_KEYS]
        raise ParamError(
            exc.key,
            exc.kind,
            exc.detail,
            hint=exc.hint,
            accepted=accepted,
            unknown=exc.unknown,
            cls=Params,
            owner=name,
            path=source,
        ) from None
    overlap = sorted(PIPELINE_KEYS & set(layer))
    if overlap:
        raise ConfigError(f"{name}: keys {overlap} are set by the pipeline", path=source)
    return converted


def merge_train(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``override`` on top; a mapping value (``augmentation``, ``postprocess``)
    merges key by key, so an override can change one augmentation setting alone."""
    out = dict(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def train_params(params: dict[str, Any], dataset: str, init: str, source: str) -> dict[str, Any]:
    """The training params of one run, before the pipeline adds paths and the model.

    ``pretrain``: ``pretrain.train`` alone (the source model's own params). ``scratch``:
    ``train`` < ``datasets.<dataset>.train``. ``finetuned``: ``train`` < ``finetune`` <
    ``datasets.<dataset>.train`` < ``datasets.<dataset>.finetune``. ``matched`` (the
    compute-matched scratch arm): scratch's params; the train stage sets its length.
    """
    if init == "matched":
        init = "scratch"
    if init == "pretrain":
        layers = [("pretrain.train", (params.get("pretrain") or {}).get("train"))]
    elif init in INITS:
        entry = (params.get("datasets") or {}).get(dataset) or {}
        layers = [("train", params.get("train")), (f"datasets.{dataset}.train", entry.get("train"))]
        if init == "finetuned":
            layers.insert(1, ("finetune", params.get("finetune")))
            layers.append((f"datasets.{dataset}.finetune", entry.get("finetune")))
    else:
        raise ConfigError(f"init must be 'scratch' or 'finetuned', got {init!r}", path=source)
    merged: dict[str, Any] = {}
    for name, layer in layers:
        check_train_layer(name, layer, source)
        merged = merge_train(merged, layer)
    return merged


def build_config(
    params: dict[str, Any],
    dataset: str,
    init: str,
    out_dir: Path,
    store: str | Path,
    init_weights: str | Path | None = None,
    source: str = "params.yaml",
    seed: int | None = None,
    train_fraction: float = 1.0,
) -> TrainConfig:
    """The ``TrainConfig`` of one run: :func:`train_params`, the model section and the paths.
    ``seed``: the run's training seed (default: the top-level ``seed``, which the source
    models use). A message names the sections the run's params came from."""
    model = params.get("model") or {}
    values = train_params(params, dataset, init, source)
    where = "pretrain.train" if init == "pretrain" else f"training params of {dataset}-{init}"
    try:
        return TrainConfig.from_dict(
            {
                **values,
                "store": str(store),
                "out_dir": str(out_dir),
                "variant": model.get("variant", "dsod_tiny"),
                "input_size": dataset_input_size(params, dataset),
                "model_overrides": dict(model.get("overrides") or {}),
                "init_weights": str(init_weights) if init == "finetuned" and init_weights else None,
                "seed": params.get("seed", 0) if seed is None else seed,
                "train_fraction": train_fraction,
            },
            source=source,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.reason}", path=source) from None
