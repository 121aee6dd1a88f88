"""The DSOD configuration: every architectural knob of DS/A-B-k-θ in one dataclass.

Defaults are DSOD300, DS/64-192-48-1 with the dense prediction structure (docs/dsod.md §1-2).
``in_channels`` and ``num_classes`` have no defaults: nothing here assumes RGB or VOC.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from dsod_core.boxes.priors import check_dsod300_input_size
from dsod_core.errors import ConfigError
from dsod_core.model.norm import NORMS
from dsod_core.params import Params, param

Backbone = Literal["dsod", "vgg16"]
Stem = Literal["dsod", "densenet"]
Prediction = Literal["dense", "plain"]
PriorLayout = Literal["auto", "dsod300", "generic"]
PriorDataset = Literal["voc", "coco"]
BACKBONES = typing.get_args(Backbone)
STEMS = typing.get_args(Stem)
PREDICTIONS = typing.get_args(Prediction)
PRIOR_LAYOUTS = typing.get_args(PriorLayout)
PRIOR_DATASETS = typing.get_args(PriorDataset)

# Six source maps is what the head, the default boxes and the paper all assume.
NUM_SOURCES = 6
# Below 32 px the stem and transition 1 already leave a 1x1 map for source 1.
MIN_INPUT_SIZE = 32


@dataclass(frozen=True)
class DSODConfig(Params):
    """Architecture of one DSOD detector.

    Attributes:
        in_channels: channels of the input image (1 for depth, 13 for Sentinel-2, ...).
        num_classes: K object classes, background excluded; ``conf`` has K + 1 columns.
        input_size: side of the square input in pixels; fixes the source-map sizes and
            the default boxes.
        backbone: ``"dsod"`` (the DenseNet backbone below, every DSOD variant) or ``"vgg16"``
            (SSD300's VGG16 trunk with its reduced fc6/fc7, ``dsod_core/model/vgg.py``, the
            paper's SSD300 baselines). With ``vgg16`` the DenseNet fields (stem, widths,
            blocks, ``memory_efficient``) are not used; ``prediction`` ``plain`` is SSD300's
            extra layers and head (bias, no norm, L2 norm on conv4_3 only; input_size >= 268)
            and ``dense`` DSOD's dense structure on conv4_3 and fc7 with the same head.
        stem_channels: A, width of the first stem conv (the stem ends with 2A channels).
        bottleneck_width: B, output width of each dense layer's 1×1 conv.
        growth_rate: k, channels each dense layer adds.
        compression: θ in (0, 1], the width factor of the compressing transitions.
        block_layers: dense layers in each dense block: four blocks (DSOD), or three for the
            paper's "without transition w/o pooling" ablation ("only 3 dense blocks": block 3
            feeds the last transition directly; needs ``transition_wo_pool=False``).
        stem: ``"dsod"`` (3×3/2 → A, 3×3 → A, 3×3 → 2A, max 2×2/2) or ``"densenet"``
            (7×7/2 → 2A, max 3×3/2), the "without stem" ablation.
        transition_wo_pool: with four blocks, keep the 1×1 transitions without pooling after
            blocks 2 and 3; without them block 2 feeds source 1 directly and blocks 3 and 4 run
            back to back (not a configuration of the paper). Three blocks have no transition
            without pooling (the 1×1 after block 2 stays, as the transition before the pool
            that leads to block 3) and require false.
        prediction: ``"dense"`` (DSOD) or ``"plain"`` (SSD-style) prediction structure.
        learned_half_channels: width of the last backbone transition, the "learned half"
            of source 2 in the dense structure (256).
        extra_channels: n for sources 3..6 (256, 128, 128, 128); each of those sources
            has 2n channels in both structures.
        memory_efficient: recompute each dense layer's concat-BN-ReLU-1×1 in backward
            (gradient checkpointing) instead of storing it.
        norm: ``"batch"`` (the paper's BatchNorm), ``"group"`` (GroupNorm, independent of
            the batch size) or ``"sync_batch"`` (BatchNorm synchronised across processes)
            in every conv unit of backbone, prediction layers and head
            (``dsod_core/model/norm.py``).
        prior_layout: ``"auto"`` (default) is exactly the paper's default boxes at 300 px
            (SSD300's with the VGG16 extra layers' 1x1 last map) and
            the same layout scaled to the input size elsewhere (sizes as the same fractions of
            the image, steps image / map so every centre lies inside it); ``"dsod300"`` the
            paper's boxes (absolute steps and sizes, the 2×2 quirk), 300 px inputs only;
            ``"generic"`` derives them from the map sizes at any size, 300 included
            (``dsod_core/boxes/priors.py`` defines all three).
        prior_dataset: ``"voc"`` or ``"coco"`` min/max box sizes.
        prior_min_sizes, prior_max_sizes: fitted default-box sizes, fractions of the input
            side, one per source map (six, seven with ``high_res_source``); null keeps the
            layout's. Written by the train stage when ``model.prior_fit`` is on
            (``dsod_core/boxes/coverage.py``) and stored in ``model.pt``, so the model
            rebuilds the same boxes.
        prior_ratios: fitted aspect ratios (>= 1) that replace 2 and 3 on every map (the
            number of ratios of each map, and so the head, stays the same); null: 2 and 3.
        high_res_source: add a stride-4 source map (dense block 1's output, before the
            first pooling transition) with its own 1x1 conv, prediction layer and default
            boxes, for objects of a few pixels (docs/small_objects.md). Its head layers come
            after the six others, so the six keep their names and transfer.
        high_res_channels: width of the stride-4 source's 1x1 conv.
    """

    section: ClassVar[str] = "model"
    validate_on_init: ClassVar[bool] = True  # DSODConfig(...) is validated wherever it is built

    in_channels: int = param(doc="channels of the input image", min=1)
    num_classes: int = param(doc="K object classes, background excluded", min=1)
    input_size: int = param(300, "side of the square input in pixels", min=MIN_INPUT_SIZE)
    backbone: Backbone = param("dsod", "dsod (DenseNet, DSOD) or vgg16 (SSD300's VGG16 trunk)")
    stem_channels: int = param(64, "A, width of the first stem conv", min=1)
    bottleneck_width: int = param(192, "B, output width of each dense layer's 1x1 conv", min=1)
    growth_rate: int = param(48, "k, channels each dense layer adds", min=1)
    compression: float = param(
        1.0, "theta, width factor of the compressing transitions", min=0, max=1, min_exclusive=True
    )
    block_layers: tuple[int, ...] = param(
        (6, 8, 8, 8), "dense layers of each dense block (3 or 4 blocks)", min=1
    )
    stem: Stem = param("dsod", "dsod (3 convs + max pool) or densenet (7x7 conv + max pool)")
    transition_wo_pool: bool = param(True, "1x1 transitions without pooling after blocks 2, 3")
    prediction: Prediction = param("dense", "dense (DSOD) or plain (SSD-style) prediction")
    learned_half_channels: int = param(256, "width of the learned half of source 2", min=1)
    extra_channels: tuple[int, int, int, int] = param(
        (256, 128, 128, 128), "n of sources 3..6 (each has 2n channels)", min=1
    )
    memory_efficient: bool = param(False, "recompute dense layers in backward (checkpointing)")
    norm: str = param("batch", "norm layer of every conv unit", choices=NORMS)
    prior_layout: PriorLayout = param("auto", "default boxes: auto, dsod300 or generic")
    prior_dataset: PriorDataset = param("voc", "min/max box sizes of voc or coco")
    prior_min_sizes: tuple[float, ...] | None = param(
        None, "fitted min box sizes per source map, fractions of the input (null: layout's)", min=0
    )
    prior_max_sizes: tuple[float, ...] | None = param(
        None, "fitted max box sizes per source map, fractions of the input (null: layout's)", min=0
    )
    prior_ratios: tuple[float, ...] | None = param(
        None, "fitted aspect ratios (>= 1) replacing 2 and 3 (null: 2 and 3)", min=1
    )
    high_res_source: bool = param(False, "add a stride-4 source (dense block 1) for tiny objects")
    high_res_channels: int = param(128, "width of the stride-4 source's 1x1 conv", min=1)

    def check(self) -> None:
        if len(self.block_layers) not in (3, 4):
            self.fail(
                "block_layers",
                f"must be 3 or 4 positive integers, got {list(self.block_layers)!r}",
            )
        if len(self.block_layers) == 3 and self.transition_wo_pool:
            raise ConfigError(
                f"model.block_layers {list(self.block_layers)} has three dense blocks, which "
                "leaves no transition without pooling (the paper's 3-block ablation): set "
                "model.transition_wo_pool to false"
            )
        check_dsod300_input_size(self.prior_layout, self.input_size)
        self._check_fitted_priors()
        if self.backbone == "vgg16":
            self._check_vgg16()

    def _check_vgg16(self) -> None:
        # Imported here: the VGG module builds on backbone.py, which imports this one.
        from dsod_core.model.vgg import SSD_MIN_INPUT_SIZE, ssd_extras_sizes, vgg16_output_sizes

        if self.high_res_source:
            self.fail("high_res_source", "is a DSOD backbone option; backbone 'vgg16' has none")
        top = vgg16_output_sizes(self.input_size)[1]
        if self.prediction == "plain" and min(ssd_extras_sizes(top)) < 1:
            self.fail(
                "input_size",
                f"{self.input_size} is too small for backbone 'vgg16' with SSD300's extra layers "
                f"(prediction 'plain': conv10_2 and conv11_2 are valid 3x3 convs), which need "
                f">= {SSD_MIN_INPUT_SIZE} px; use prediction 'dense' below that",
            )

    @property
    def num_sources(self) -> int:
        """Source maps of the detector: six, seven with ``high_res_source``."""
        return NUM_SOURCES + int(self.high_res_source)

    def _check_fitted_priors(self) -> None:
        for name in ("prior_min_sizes", "prior_max_sizes"):
            sizes = getattr(self, name)
            if sizes is not None and (len(sizes) != self.num_sources or min(sizes) <= 0):
                self.fail(
                    name,
                    f"needs {self.num_sources} positive fractions (one per source map), got "
                    f"{list(sizes)}",
                )
        if (self.prior_min_sizes is None) != (self.prior_max_sizes is None):
            self.fail("prior_max_sizes", "is set together with prior_min_sizes, or neither")
        if self.prior_min_sizes is not None and any(
            hi < lo for lo, hi in zip(self.prior_min_sizes, self.prior_max_sizes or ())
        ):
            self.fail("prior_max_sizes", "must be >= prior_min_sizes map by map")
        if self.prior_ratios is not None and len(self.prior_ratios) != 2:
            self.fail("prior_ratios", f"needs 2 values, got {list(self.prior_ratios)}")

    def notation(self) -> str:
        """The paper's DS/A-B-k-θ name of this backbone, e.g. ``DS/64-192-48-1``; ``VGG16``
        for the VGG16 trunk."""
        if self.backbone == "vgg16":
            return "VGG16"
        theta = f"{self.compression:g}"
        return f"DS/{self.stem_channels}-{self.bottleneck_width}-{self.growth_rate}-{theta}"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DSODConfig:
        """Build from a params/checkpoint dict; unknown keys raise ``ConfigError``."""
        return cls.parse(values)
