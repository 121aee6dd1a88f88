"""The normalisation layer of every conv unit: ``model.norm`` (docs/training.md).

* ``batch``: BatchNorm, the paper's (DSOD trains at 4 images per GPU, batch 128 overall);
* ``group``: GroupNorm (Wu & He, 2018), independent of the batch: He et al., "Rethinking
  ImageNet Pre-training" (2019), train detectors from scratch with it at small batches;
* ``sync_batch``: BatchNorm whose statistics are computed over the images of all processes
  (``torch.nn.SyncBatchNorm``): built as BatchNorm, converted by the trainer when it runs
  distributed (a single process computes the same statistics either way).

The head keeps a norm after each prediction conv in every mode (ScratchDet, 2019, found BN in
the head helps scratch training; DSOD's Caffe head has it too).
"""

from __future__ import annotations

from torch import nn

NORMS = ("batch", "group", "sync_batch")
MAX_GROUPS = 32  # Wu & He's default


def group_count(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """Groups for ``channels``: the largest divisor of ``channels`` not above ``max_groups``
    that leaves at least two channels per group (32 for DSOD's wide maps; 24 for a
    48-channel map, 16 for 32, 6 for a head conv of 4 boxes x 3 outputs). Two channels at
    least: a one-channel group on DSOD's 1x1 source maps would hold a single value, which
    GroupNorm cannot normalise."""
    top = min(max_groups, channels // 2)
    return max((g for g in range(1, top + 1) if channels % g == 0), default=1)


def make_norm(channels: int, kind: str = "batch", eps: float = 1e-5) -> nn.Module:
    """The norm layer over ``channels`` for ``kind`` (one of :data:`NORMS`)."""
    if kind in ("batch", "sync_batch"):
        return nn.BatchNorm2d(channels, eps=eps)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels, eps=eps)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")


def is_norm(module: nn.Module) -> bool:
    """A norm layer that :func:`make_norm` builds (for initialisation and parameter groups)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm | nn.GroupNorm)
