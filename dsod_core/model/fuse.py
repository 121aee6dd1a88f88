"""Inference copy of a DSOD with BatchNorm folded into the convolution before it.

In eval mode a BN is a per-channel affine ``y = s * x + t`` with ``s = γ / sqrt(var + ε)`` and
``t = β - s * mean``. When a conv's output feeds *only* that BN, ``BN(conv(x))`` equals a conv
with weights ``s * W`` and bias ``s * b + t``: the fold is exact (up to float rounding). It is
not exact anywhere else:

- pre-activation BN → ReLU → conv: the ReLU between them is not affine, so BN cannot move into
  the following conv;
- a BN on a dense block's concatenation: every channel of it was produced by a conv whose
  output is also read, un-normalised or with other statistics, by the later layers of the
  block (and by the block output), so it cannot move into that producing conv either.

DSOD has no BN that feeds a conv directly (every BN → conv passes through a ReLU), so what is
folded is exactly every conv whose output only a BN reads:

- the stem's three conv → BN pairs (post-activation; the DenseNet stem's one);
- in every dense layer, the 1×1 bottleneck conv into the next BN (``conv1`` → ``norm2``);
- in every two-unit ``PreActConv → PreActConv`` chain (the learned half of each dense scale,
  each plain-prediction scale), the first conv into the second unit's BN;
- the head's localisation and classification conv → BN pairs.

For DSOD300 that is 3 + 30 + 4 + 12 = 49 of its 92 BNs; the other 43 (pre-activation, on
concatenations or after a pool) stay as they are.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dsod_core.model.backbone import DenseLayer, PreActConv


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.running_mean is not None
        and conv.out_channels == bn.num_features
    )


def _fold_sequential(seq: nn.Sequential) -> int:
    """Fold the conv → BN pairs between consecutive children of ``seq``; returns how many."""
    count = 0
    children = list(seq.children())
    for i in range(len(children) - 1):
        first, second = children[i], children[i + 1]
        if _foldable(first, second):
            seq[i] = fuse_conv_bn_eval(first, second)
            seq[i + 1] = nn.Identity()
            count += 1
        elif isinstance(first, PreActConv) and isinstance(second, PreActConv):
            # PreActConv = (BN, ReLU, conv): the first unit's conv feeds the second's BN only.
            if _foldable(first[2], second[0]):
                first[2] = fuse_conv_bn_eval(first[2], second[0])
                second[0] = nn.Identity()
                count += 1
    return count


def fuse_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` (a ``DSOD``) with every exactly foldable BN folded.

    The input model is not changed. The copy computes the same ``(loc [B, P, 4], conf [B, P,
    K+1])`` as ``model.eval()`` up to float rounding (about 1e-6 relative in float32), with the
    folded BNs replaced by ``nn.Identity`` and their convs given a bias. It is for inference
    only: its parameters have ``requires_grad`` off, and training it would no longer train
    the folded BNs' statistics. ``model.fused_bn_count`` on the copy says how many BNs were
    folded (see the module docstring for which).
    """
    fused = copy.deepcopy(model).eval()
    count = 0
    for module in list(fused.modules()):
        if isinstance(module, DenseLayer) and _foldable(module.conv1, module.norm2):
            module.conv1 = fuse_conv_bn_eval(module.conv1, module.norm2)
            module.norm2 = nn.Identity()
            count += 1
        elif isinstance(module, nn.Sequential) and not isinstance(module, PreActConv):
            count += _fold_sequential(module)
    for p in fused.parameters():
        p.requires_grad_(False)
    fused.fused_bn_count = count
    return fused
