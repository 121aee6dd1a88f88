"""Initialise a model from a source checkpoint of another channel count and class set.

Rule for the first convolution (the only layer whose shape depends on the input channels):
the source filters ``[O, C_src, k, k]`` are averaged over their input channels, tiled to the
target's ``C`` channels and scaled by ``C_src / C``, so a constant input produces the same
pre-activation as in the source model (timm's ``adapt_input_conv`` uses the same idea).
Every other tensor is copied when its name and shape match, except the classification head
(``head.conf.*``: the class convolutions and their BatchNorm): it is copied only when the source
was trained on the same class names in the same order. Otherwise it keeps its fresh
initialisation even when the shapes happen to match (an RGB circle/square/triangle classifier
says nothing about a depth box/cylinder/sphere one). The returned report names which tensors
were copied, adapted and re-initialised; the trainer saves it in ``model.pt``.
"""

from __future__ import annotations

import torch
from torch import nn

from dsod_core.errors import CheckpointError


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Map conv weights ``[O, C_src, kh, kw]`` to ``[O, in_channels, kh, kw]`` (see module doc)."""
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D conv weight, got shape {tuple(weight.shape)}")
    c_src = weight.shape[1]
    if c_src == in_channels:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (c_src / in_channels)


CLASS_HEAD_PREFIX = "head.conf."


def load_transferred(
    model: nn.Module,
    source_state: dict[str, torch.Tensor],
    source: str = "source weights",
    same_classes: bool = False,
) -> dict[str, list[str]]:
    """Load ``source_state`` into ``model`` following the module's rule.

    ``same_classes``: the source's class names equal the target's (same order); only then is
    the classification head copied.

    Returns ``{"copied": [...], "adapted": [...], "reinitialised": [...]}`` tensor names.
    """
    target = model.state_dict()
    first_conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    first_key = f"{first_conv}.weight" if first_conv is not None else None
    report: dict[str, list[str]] = {"copied": [], "adapted": [], "reinitialised": []}
    new_state = {}
    for name, tensor in target.items():
        src = source_state.get(name)
        if src is None or (name.startswith(CLASS_HEAD_PREFIX) and not same_classes):
            report["reinitialised"].append(name)
            new_state[name] = tensor
        elif name == first_key and src.shape[1] != tensor.shape[1]:
            if src.shape[0] != tensor.shape[0] or src.shape[2:] != tensor.shape[2:]:
                raise CheckpointError(
                    f"first conv {tuple(src.shape)} cannot be adapted to {tuple(tensor.shape)}",
                    path=source,
                )
            new_state[name] = adapt_input_conv(src.to(tensor.dtype), tensor.shape[1])
            report["adapted"].append(name)
        elif src.shape == tensor.shape:
            new_state[name] = src.to(tensor.dtype)
            report["copied"].append(name)
        else:
            report["reinitialised"].append(name)
            new_state[name] = tensor
    if not report["copied"]:
        raise CheckpointError("no tensor of the source matches this model", path=source)
    model.load_state_dict(new_state)
    return report
