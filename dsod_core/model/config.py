"""The DSOD configuration: every architectural knob of DS/A-B-k-θ in one dataclass.

Defaults are DSOD300, DS/64-192-48-1 with the dense prediction structure (docs/dsod.md §1-2).
``in_channels`` and ``num_classes`` have no defaults: nothing here assumes RGB or VOC.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from dsod_core.boxes.priors import check_dsod300_input_size
from dsod_core.errors import ConfigError
from dsod_core.model.norm import NORMS

STEMS = ("dsod", "densenet")
PREDICTIONS = ("dense", "plain")
PRIOR_LAYOUTS = ("auto", "dsod300", "generic")
PRIOR_DATASETS = ("voc", "coco")

# Six source maps is what the head, the default boxes and the paper all assume.
NUM_SOURCES = 6


@dataclass(frozen=True)
class DSODConfig:
    """Architecture of one DSOD detector.

    Attributes:
        in_channels: channels of the input image (1 for depth, 13 for Sentinel-2, ...).
        num_classes: K object classes, background excluded; ``conf`` has K + 1 columns.
        input_size: side of the square input in pixels; fixes the source-map sizes and
            the default boxes.
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
        prior_layout: ``"auto"`` (default) is exactly the paper's default boxes at 300 px and
            the same layout scaled to the input size elsewhere (sizes as the same fractions of
            the image, steps image / map so every centre lies inside it); ``"dsod300"`` the
            paper's boxes (absolute steps and sizes, the 2×2 quirk), 300 px inputs only;
            ``"generic"`` derives them from the map sizes at any size, 300 included
            (``dsod_core/boxes/priors.py`` defines all three).
        prior_dataset: ``"voc"`` or ``"coco"`` min/max box sizes.
    """

    in_channels: int
    num_classes: int
    input_size: int = 300
    stem_channels: int = 64
    bottleneck_width: int = 192
    growth_rate: int = 48
    compression: float = 1.0
    block_layers: tuple[int, ...] = (6, 8, 8, 8)
    stem: str = "dsod"
    transition_wo_pool: bool = True
    prediction: str = "dense"
    learned_half_channels: int = 256
    extra_channels: tuple[int, int, int, int] = (256, 128, 128, 128)
    memory_efficient: bool = False
    norm: str = "batch"
    prior_layout: str = "auto"
    prior_dataset: str = "voc"

    def __post_init__(self) -> None:
        # Lists from YAML become tuples so the config stays hashable and comparable.
        object.__setattr__(self, "block_layers", tuple(self.block_layers))
        object.__setattr__(self, "extra_channels", tuple(self.extra_channels))
        self._validate()

    def _validate(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")

        for name in (
            "in_channels",
            "num_classes",
            "input_size",
            "stem_channels",
            "bottleneck_width",
            "growth_rate",
            "learned_half_channels",
        ):
            positive_int(name)
        if isinstance(self.compression, bool) or not isinstance(self.compression, int | float):
            raise ConfigError(f"model.compression must be a number, got {self.compression!r}")
        if not 0.0 < float(self.compression) <= 1.0:
            raise ConfigError(f"model.compression must lie in (0, 1], got {self.compression}")
        for name, lengths in (("block_layers", (3, 4)), ("extra_channels", (NUM_SOURCES - 2,))):
            value = getattr(self, name)
            if len(value) not in lengths or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value
            ):
                count = " or ".join(str(n) for n in lengths)
                raise ConfigError(
                    f"model.{name} must be {count} positive integers, got {list(value)!r}"
                )
        for name, allowed in (
            ("stem", STEMS),
            ("prediction", PREDICTIONS),
            ("prior_layout", PRIOR_LAYOUTS),
            ("prior_dataset", PRIOR_DATASETS),
            ("norm", NORMS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"model.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        for name in ("transition_wo_pool", "memory_efficient"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model.{name} must be true or false")
        if len(self.block_layers) == 3 and self.transition_wo_pool:
            raise ConfigError(
                f"model.block_layers {list(self.block_layers)} has three dense blocks, which "
                "leaves no transition without pooling (the paper's 3-block ablation): set "
                "model.transition_wo_pool to false"
            )
        # Below 32 px the stem and transition 1 already leave a 1×1 map for source 1.
        if self.input_size < 32:
            raise ConfigError(f"model.input_size must be at least 32 px, got {self.input_size}")
        check_dsod300_input_size(self.prior_layout, self.input_size)

    def notation(self) -> str:
        """The paper's DS/A-B-k-θ name of this backbone, e.g. ``DS/64-192-48-1``."""
        theta = f"{self.compression:g}"
        return f"DS/{self.stem_channels}-{self.bottleneck_width}-{self.growth_rate}-{theta}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of primitives (lists for tuples), safe for checkpoints and YAML."""
        out = asdict(self)
        out["block_layers"] = list(self.block_layers)
        out["extra_channels"] = list(self.extra_channels)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DSODConfig:
        """Build from a params/checkpoint dict; unknown keys raise ``ConfigError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        missing = [n for n in ("in_channels", "num_classes") if n not in values]
        if missing:
            raise ConfigError(f"model config lacks {missing}")
        return cls(**values)
