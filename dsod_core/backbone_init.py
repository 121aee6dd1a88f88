"""Initialise the VGG16 trunk of an SSD300 variant from a local ImageNet checkpoint.

Nothing is downloaded: the user points at a file they have, in one of two layouts.

* ``torchvision``: the state dict of ``torchvision.models.vgg16`` (``vgg16-397923af.pth``):
  ``features.{0,2,5,...,28}.weight/bias`` (13 convs) and ``classifier.{0,3,6}.weight/bias``
  (fc6 ``[4096, 25088]``, fc7 ``[4096, 4096]``, the 1000-class fc8). Read with
  ``torch.load(weights_only=True)``: a file that pickles Python objects is refused.
* ``timm``: timm's ``vgg16.tv_in1k`` (``model.safetensors``, read by ``safetensors`` without
  pickle; a ``.pth``/``.bin`` state dict is read as above): the same ``features.*`` keys,
  ``pre_logits.fc1.weight`` ``[4096, 512, 7, 7]``, ``pre_logits.fc2.weight``
  ``[4096, 4096, 1, 1]`` and the classifier ``head.fc.*``.

:data:`KEY_MAP` is the mapping table: for each layout, source key → model parameter →
conversion. The 26 conv tensors are copied unchanged (``features.N`` is ``backbone.features.N``
of :class:`dsod_core.model.vgg.VGG16Backbone`), except the first conv's weight, adapted to the
model's input channels by :func:`dsod_core.transfer.adapt_input_conv` (the rule used when
fine-tuning from a project model). fc6 and fc7 become SSD's "reduced fc" convolutions by
decimation, as Caffe SSD's ``VGG_ILSVRC_16_layers_fc_reduced`` and the PyTorch SSD tutorial's
``load_pretrained_base`` / ``decimate`` (sgrvinod/a-PyTorch-Tutorial-to-Object-Detection,
``model.py``, MIT licence) derive them: fc6 ``[4096, 25088]`` viewed as ``[4096, 512, 7, 7]``,
every 4th output and the taps 0, 3, 6 of both spatial axes → ``[1024, 512, 3, 3]``, applied
with dilation 6; fc7 every 4th output and input → ``[1024, 1024, 1, 1]``; both biases every
4th. The classifier (fc8 / ``head.fc``) has no counterpart and is reported ``unused``; the
extra layers, head and L2-norm scale keep their fresh initialisation (``reinitialised``).

ImageNet mean/std normalisation is not applied: the project normalises every channel by its
store's statistics, so the ImageNet filters see dataset-normalised inputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from dsod_core.engine.checkpoint import load_checkpoint
from dsod_core.errors import CheckpointError, ConfigError
from dsod_core.model.vgg import FC7_CHANNELS, VGG16_CONV_INDICES
from dsod_core.transfer import adapt_input_conv

Format = Literal["torchvision", "timm"]
FORMATS = ("torchvision", "timm")
FC_DECIMATION = 4  # 4096 → 1024 outputs (and fc7 inputs)
FC6_TAPS = (0, 3, 6)  # of the 7×7 fc6 window, spaced like a 3×3 kernel of dilation 3 (×2)
_IMAGENET_FC = 4096
WRAPPERS = ("state_dict", "model")
PREFIXES = ("module.", "_orig_mod.")
_VGG16_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def _conv_rows() -> list[tuple[str, str, str]]:
    rows = []
    for index in VGG16_CONV_INDICES:
        for kind in ("weight", "bias"):
            conversion = "adapt" if (index, kind) == (0, "weight") else "copy"
            rows.append(
                (f"features.{index}.{kind}", f"backbone.features.{index}.{kind}", conversion)
            )
    return rows


# (source key, model parameter, conversion): "copy" (same tensor), "adapt" (first conv, to the
# model's input channels), "fc6"/"fc7" (decimated reduced fc weights), "every4" (bias).
KEY_MAP: dict[str, tuple[tuple[str, str, str], ...]] = {
    "torchvision": (
        *_conv_rows(),
        ("classifier.0.weight", "backbone.fc6.weight", "fc6"),
        ("classifier.0.bias", "backbone.fc6.bias", "every4"),
        ("classifier.3.weight", "backbone.fc7.weight", "fc7"),
        ("classifier.3.bias", "backbone.fc7.bias", "every4"),
    ),
    "timm": (
        *_conv_rows(),
        ("pre_logits.fc1.weight", "backbone.fc6.weight", "fc6"),
        ("pre_logits.fc1.bias", "backbone.fc6.bias", "every4"),
        ("pre_logits.fc2.weight", "backbone.fc7.weight", "fc7"),
        ("pre_logits.fc2.bias", "backbone.fc7.bias", "every4"),
    ),
}


def expected_shapes(fmt: Format) -> dict[str, tuple[int, ...]]:
    """The shape of every mapped source key of an ImageNet VGG16 in layout ``fmt`` (3 input
    channels; :func:`load_backbone_checkpoint` accepts any count on the first conv)."""
    shapes: dict[str, tuple[int, ...]] = {}
    channels = 3
    for index, width in zip(VGG16_CONV_INDICES, _VGG16_WIDTHS, strict=True):
        shapes[f"features.{index}.weight"] = (width, channels, 3, 3)
        shapes[f"features.{index}.bias"] = (width,)
        channels = width
    fc = _IMAGENET_FC
    if fmt == "torchvision":
        fc_shapes = {"fc6": (fc, channels * 7 * 7), "fc7": (fc, fc)}
    else:
        fc_shapes = {"fc6": (fc, channels, 7, 7), "fc7": (fc, fc, 1, 1)}
    for source, _, conversion in KEY_MAP[fmt]:
        if conversion in fc_shapes:
            shapes[source] = fc_shapes[conversion]
        elif conversion == "every4":
            shapes[source] = (fc,)
    return shapes


def decimate_fc6(weight: torch.Tensor) -> torch.Tensor:
    """fc6 ``[4096, 25088]`` (or timm's ``[4096, 512, 7, 7]``) → ``[1024, 512, 3, 3]``."""
    w = weight.reshape(_IMAGENET_FC, -1, 7, 7)
    taps = torch.tensor(FC6_TAPS)
    return w[::FC_DECIMATION].index_select(2, taps).index_select(3, taps).contiguous()


def decimate_fc7(weight: torch.Tensor) -> torch.Tensor:
    """fc7 ``[4096, 4096]`` (or ``[4096, 4096, 1, 1]``) → ``[1024, 1024, 1, 1]``."""
    w = weight.reshape(_IMAGENET_FC, _IMAGENET_FC)
    return w[::FC_DECIMATION, ::FC_DECIMATION].reshape(FC7_CHANNELS, FC7_CHANNELS, 1, 1).clone()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of ``path``: safetensors (no pickle) by its ``.safetensors`` suffix, else a
    ``torch.save`` state dict loaded with ``weights_only=True``. A ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper is opened and a ``module.`` / ``_orig_mod.`` prefix on every
    key (a model saved under DistributedDataParallel / torch.compile) is removed, as timm's
    checkpoint loader does. ``CheckpointError`` naming the file otherwise."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError("checkpoint not found", path=path)
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError as exc:
            reason = "reading a .safetensors file needs the safetensors package (pip install)"
            raise CheckpointError(reason, path=path) from exc

        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            first = " ".join(str(exc).split()) or type(exc).__name__
            reason = f"corrupt or unreadable safetensors file ({first})"
            raise CheckpointError(reason, path=path) from exc
    state = load_checkpoint(path)
    for wrapper in WRAPPERS:  # a training checkpoint around the state dict
        inner = state.get(wrapper)
        if isinstance(inner, dict):
            state = inner
            break
    for prefix in PREFIXES:  # DistributedDataParallel / torch.compile wrap every key
        if state and all(str(k).startswith(prefix) for k in state):
            state = {str(k)[len(prefix) :]: v for k, v in state.items()}
    bad = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(
            f"expected a state dict of tensors, found non-tensor entries {bad[:3]}", path=path
        )
    return state


def _check_source(state: dict[str, torch.Tensor], fmt: Format, path: Path) -> None:
    """Every mapped key present with the ImageNet VGG16 shape, or one line saying what is not."""
    shapes = expected_shapes(fmt)
    missing = [k for k in shapes if k not in state]
    if missing:
        other = next(
            (f for f in FORMATS if f != fmt and all(row[0] in state for row in KEY_MAP[f])), None
        )
        hint = f"; the file has the {other} layout: set format {other}" if other else ""
        if any(str(k).endswith("running_mean") for k in state):
            hint += (
                "; it holds BatchNorm statistics (a vgg16_bn?): SSD300's trunk is the plain "
                "VGG16, use the vgg16 file without BatchNorm"
            )
        found = ", ".join(sorted(state)[:3]) or "no tensors"
        raise CheckpointError(
            f"not a {fmt} ImageNet VGG16 checkpoint: {len(missing)} of its {len(shapes)} keys "
            f"are missing (first {missing[0]}; the file has {found}, ...){hint}",
            path=path,
        )
    for key, shape in shapes.items():
        got = tuple(state[key].shape)
        fits = got == shape or (key == "features.0.weight" and got[:1] + got[2:] == (64, 3, 3))
        if not fits:
            raise CheckpointError(
                f"{key} has shape {list(got)}, a {fmt} ImageNet VGG16 has {list(shape)}",
                path=path,
            )


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ConfigError(
            f"backbone checkpoint format must be one of {list(FORMATS)}, got {format!r}"
        )


def _read_checked(path: Path, format: Format) -> dict[str, torch.Tensor]:
    """The tensors of ``path``, checked as an ImageNet VGG16 in layout ``format``."""
    _check_format(format)
    state = read_state_dict(path)
    _check_source(state, format, path)
    return state


def check_backbone_checkpoint(path: str | os.PathLike, format: Format) -> dict[str, object]:
    """Read the file at ``path`` and check it is an ImageNet VGG16 in layout ``format`` (every
    mapped key, every shape; any first-conv channel count), without a model: what the
    pipeline's checkpoint reference records. Returns ``tensors`` (the file's count),
    ``in_channels`` (of its first conv) and ``unused`` (keys with no counterpart). Raises
    ``CheckpointError`` naming the file, ``ConfigError`` on an unknown ``format``."""
    path = Path(path)
    state = _read_checked(path, format)
    used = {source for source, _, _ in KEY_MAP[format]}
    return {
        "tensors": len(state),
        "in_channels": int(state["features.0.weight"].shape[1]),
        "unused": sorted(k for k in state if k not in used),
    }


def _convert(tensor: torch.Tensor, conversion: str, target: torch.Tensor) -> torch.Tensor:
    if conversion == "adapt":
        return adapt_input_conv(tensor, target.shape[1])
    if conversion == "fc6":
        return decimate_fc6(tensor)
    if conversion == "fc7":
        return decimate_fc7(tensor)
    if conversion == "every4":
        return tensor[::FC_DECIMATION].clone()
    return tensor.clone()


def load_backbone_checkpoint(
    model: nn.Module, path: str | os.PathLike, format: Format = "torchvision"
) -> dict[str, list[str]]:
    """Initialise ``model``'s VGG16 trunk (a ``vgg16`` backbone variant) from the ImageNet
    checkpoint at ``path`` in layout ``format`` (module doc; :data:`KEY_MAP`).

    Returns the transfer report: ``copied`` (model tensors taken unchanged), ``adapted`` (the
    first conv when the channel count differs, and the decimated fc6/fc7), ``reinitialised``
    (model tensors the file does not provide: extra layers, head, L2-norm scale) and
    ``unused`` (file keys with no counterpart: the ImageNet classifier). Raises
    ``CheckpointError`` naming the file when it does not fit (wrong layout, missing key, wrong
    shape, pickled objects) or the model has no VGG16 backbone; ``ConfigError`` on an unknown
    ``format``.
    """
    path = Path(path)
    _check_format(format)
    backbone = getattr(getattr(model, "config", None), "backbone", None)
    if backbone != "vgg16":
        raise CheckpointError(
            f"an ImageNet VGG16 checkpoint initialises a model with backbone 'vgg16' "
            f"(ssd300_vgg16, ssd300_vgg16_dense); this model's backbone is {backbone!r}",
            path=path,
        )
    state = _read_checked(path, format)
    target = model.state_dict()
    report: dict[str, list[str]] = {"copied": [], "adapted": [], "reinitialised": [], "unused": []}
    new_state = dict(target)
    for source, name, conversion in KEY_MAP[format]:
        value = _convert(state[source].to(target[name].dtype), conversion, target[name])
        if value.shape != target[name].shape:  # the table and the model disagree: a bug
            raise CheckpointError(
                f"{source} converts to {list(value.shape)}, {name} is {list(target[name].shape)}",
                path=path,
            )
        changed = conversion != "copy" and not (
            conversion == "adapt" and state[source].shape[1] == target[name].shape[1]
        )
        report["adapted" if changed else "copied"].append(name)
        new_state[name] = value
    mapped = {name for _, name, _ in KEY_MAP[format]}
    report["reinitialised"] = [k for k in target if k not in mapped]
    used = {source for source, _, _ in KEY_MAP[format]}
    report["unused"] = sorted(k for k in state if k not in used)
    model.load_state_dict(new_state)
    return report
