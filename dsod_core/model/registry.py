"""Named DSOD variants: small data entries that all go through one builder.

A variant is a set of ``DSODConfig`` field values plus the paper's parameter figure (learnable
weights for 21 classes at 300 px, docs/dsod.md §8), so the summary tool can put our count
beside it. ``in_channels`` and ``num_classes`` are never part of a variant: the caller says
them.

Names of the Table 3 ablation rows read ``ds_<A>_<B>_<k>_<θ>_<prediction>``, with θ = 0.5
written ``05``; ``nostem`` is the DenseNet stem, ``nowop`` is the paper's "without transition
w/o pooling" row: only three dense blocks (6, 8, 8), so no transition without pooling.

Every variant uses the ``auto`` default-box layout (the paper's boxes at 300 px, the same
layout scaled to the input size at any other size).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from dsod_core.errors import ConfigError
from dsod_core.model.config import DSODConfig
from dsod_core.model.detector import DSOD


@dataclass(frozen=True)
class Variant:
    """One named architecture: config overrides, the paper's figure and a one-line note."""

    name: str
    config: MappingProxyType
    paper_params: float | None = None
    description: str = ""
    # Input size used by the summary tool and by ``build_model`` when none is given.
    input_size: int = 300


_VARIANTS: dict[str, Variant] = {}
_CONFIG_FIELDS = {f.name for f in fields(DSODConfig)} - {"in_channels", "num_classes"}


def register_variant(
    name: str,
    *,
    paper_params: float | None = None,
    description: str = "",
    **config: Any,
) -> Variant:
    """Register a named variant made of ``DSODConfig`` field values.

    ``paper_params`` is the paper's learnable-parameter figure (e.g. ``14.8e6``) or None.
    Raises ``ConfigError`` on a duplicate name, an unknown field or an invalid combination
    (the values are checked by building a config once).
    """
    if name in _VARIANTS:
        raise ConfigError(f"model variant {name!r} is already registered")
    unknown = sorted(set(config) - _CONFIG_FIELDS)
    if unknown:
        raise ConfigError(f"variant {name!r}: unknown config fields {unknown}")
    DSODConfig(in_channels=1, num_classes=1, **config)  # validate now, not at first use
    variant = Variant(
        name=name,
        config=MappingProxyType(dict(config)),
        paper_params=paper_params,
        description=description,
        input_size=int(config.get("input_size", 300)),
    )
    _VARIANTS[name] = variant
    return variant


def list_variants() -> list[str]:
    """Names of all registered variants, in registration order."""
    return list(_VARIANTS)


def get_variant(name: str) -> Variant:
    """The registered ``Variant`` called ``name``; ``ConfigError`` listing the known ones."""
    try:
        return _VARIANTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model variant {name!r}; known: {', '.join(_VARIANTS)}"
        ) from None


def variant_config(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: int | None = None,
    **overrides: Any,
) -> DSODConfig:
    """The ``DSODConfig`` of a variant with the caller's channels, classes and overrides."""
    variant = get_variant(name)
    values = dict(variant.config)
    unknown = sorted(set(overrides) - _CONFIG_FIELDS)
    if unknown:
        raise ConfigError(f"unknown model config keys {unknown} for variant {name!r}")
    values.update(overrides)
    if input_size is not None:
        values["input_size"] = input_size
    return DSODConfig(in_channels=in_channels, num_classes=num_classes, **values)


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: int | None = None,
    **overrides: Any,
) -> DSOD:
    """Build the DSOD variant ``name`` for ``in_channels``-channel images and K=``num_classes``.

    ``input_size`` defaults to the variant's (300 for the paper's models); ``overrides`` are
    further ``DSODConfig`` fields (e.g. ``memory_efficient=True``, ``prior_layout="generic"``).
    """
    config = variant_config(
        name,
        in_channels=in_channels,
        num_classes=num_classes,
        input_size=input_size,
        **overrides,
    )
    return DSOD(config)


# --- the paper's models (docs/dsod.md §8); DSODConfig defaults are DSOD300 DS/64-192-48-1 ---
register_variant(
    "dsod300", paper_params=14.8e6, description="DSOD300 DS/64-192-48-1, dense prediction"
)
register_variant(
    "dsod300_plain",
    paper_params=18.2e6,
    description="DS/64-192-48-1, plain (SSD) prediction",
    prediction="plain",
)
register_variant(
    "dsod300_small",
    paper_params=5.9e6,
    description="DS/64-64-16-1, dense prediction (the paper's smallest DSOD300)",
    bottleneck_width=64,
    growth_rate=16,
)

# --- the other rows of the paper's Table 3 ablation, all plain prediction. The ablation adds
# one change per row and the stem comes second to last, so the rows before it use the DenseNet
# stem ("nostem"); DS/64-12-16-1 and DS/64-36-48-1 are listed with the stem.
_TABLE3 = (
    ("ds_32_12_16_05_plain_nowop_nostem", 4.1e6,
     "DS/32-12-16-0.5 plain, 3 dense blocks (no transition w/o pooling), DenseNet stem",
     dict(stem="densenet", stem_channels=32, bottleneck_width=12, growth_rate=16,
          compression=0.5, block_layers=(6, 8, 8), transition_wo_pool=False)),
    ("ds_32_12_16_05_plain_nostem", 4.2e6, "DS/32-12-16-0.5 plain, DenseNet stem",
     dict(stem="densenet", stem_channels=32, bottleneck_width=12, growth_rate=16,
          compression=0.5)),
    ("ds_32_12_16_1_plain_nostem", 5.5e6, "DS/32-12-16-1 plain, DenseNet stem",
     dict(stem="densenet", stem_channels=32, bottleneck_width=12, growth_rate=16)),
    ("ds_32_64_16_1_plain_nostem", 6.1e6, "DS/32-64-16-1 plain, DenseNet stem",
     dict(stem="densenet", stem_channels=32, bottleneck_width=64, growth_rate=16)),
    ("ds_64_64_16_1_plain_nostem", 6.3e6, "DS/64-64-16-1 plain, DenseNet stem",
     dict(stem="densenet", stem_channels=64, bottleneck_width=64, growth_rate=16)),
    ("ds_64_192_48_1_plain_nostem", 18.0e6, "DS/64-192-48-1 plain, DenseNet stem",
     dict(stem="densenet")),
    ("ds_64_12_16_1_plain", 5.2e6, "DS/64-12-16-1 plain",
     dict(stem_channels=64, bottleneck_width=12, growth_rate=16)),
    ("ds_64_36_48_1_plain", 12.5e6, "DS/64-36-48-1 plain",
     dict(stem_channels=64, bottleneck_width=36, growth_rate=48)),
)  # fmt: skip
for _name, _params, _description, _config in _TABLE3:
    register_variant(
        _name, paper_params=_params, description=_description, prediction="plain", **_config
    )

# --- the paper's Table 4 SSD300 baselines: VGG16 trunk (dsod_core/model/vgg.py). The same
# network is the "pre-trained" row (75.8 mAP, backbone from an ImageNet checkpoint,
# dsod_core/backbone_init.py) and the "SSD300S" from-scratch row (69.6); 26.3M both. ---
register_variant(
    "ssd300_vgg16",
    paper_params=26.3e6,
    description="SSD300 VGG16, Caffe SSD extra layers and head (plain), input >= 268 px",
    backbone="vgg16",
    prediction="plain",
)
register_variant(
    "ssd300_vgg16_dense",
    paper_params=None,
    description=(
        "VGG16 trunk with DSOD's dense prediction structure (the paper's SSD300S dense row; "
        "its parameter figure is not recorded here)"
    ),
    backbone="vgg16",
    prediction="dense",
)

# --- not from the paper: small enough for CPU demos and tests (64-128 px inputs) ---
register_variant(
    "dsod_tiny",
    paper_params=None,
    description="DS/16-32-16-1, blocks 2-2-2-2, narrow dense prediction, for CPU demos",
    input_size=96,
    stem_channels=16,
    bottleneck_width=32,
    growth_rate=16,
    block_layers=(2, 2, 2, 2),
    learned_half_channels=64,
    extra_channels=(64, 32, 32, 32),
)
