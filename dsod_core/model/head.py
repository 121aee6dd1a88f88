"""Detection head (docs/dsod.md §2): per source, L2 norm with a learnable per-channel scale,
then 3×3 localisation and classification convs, each followed by BN and no ReLU.

The ``ssd`` style is Caffe SSD300's head, for the VGG16 variants: L2 norm on the first source
(conv4_3) only, and 3×3 convs with a bias and no norm (Caffe ``xavier`` weights, zero bias)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsod_core.model.norm import make_norm

L2_SCALE_INIT = 20.0
HEAD_BN_EPS = 1e-3
HEAD_INIT_STD = 0.01
HeadStyle = Literal["dsod", "ssd"]


class L2Norm(nn.Module):
    """Unit L2 norm over channels at every location, times a learnable per-channel scale.

    SSD's ``Normalize`` layer with ``across_spatial=False, channel_shared=False``; DSOD puts
    one on **all six** sources so that scales of very different magnitude meet the head on an
    equal footing. [B, C, H, W] → [B, C, H, W].
    """

    def __init__(self, channels: int, init_scale: float = L2_SCALE_INIT, eps: float = 1e-10):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init_scale)))
        self.eps = eps
        self.init_scale = float(init_scale)

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.init_scale)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, p=2.0, dim=1, eps=self.eps) * self.weight.view(1, -1, 1, 1)


def _conv_bn(
    in_channels: int, out_channels: int, norm: str = "batch", style: HeadStyle = "dsod"
) -> nn.Sequential:
    if style == "ssd":  # Caffe SSD: conv with bias, no norm (same module names as below)
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1))
    # The head's BN has eps 1e-3 (the authors' ConvBNLayer), not PyTorch's 1e-5.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        make_norm(out_channels, norm, eps=HEAD_BN_EPS),
    )


class DSODHead(nn.Module):
    """Localisation and classification predictions for every source map.

    ``forward(sources)`` with ``sources[i]`` of shape [B, C_i, H_i, W_i] returns
    ``loc [B, P, 4]`` (box offsets in the coder's units) and ``conf [B, P, K+1]`` (logits,
    column 0 = background), P = Σ H_i·W_i·A_i. Rows are ordered source by source, then row-major
    over locations, then over the A_i boxes of a location: the order of the default boxes.
    ``style``: ``"dsod"`` (L2 norm on every source, conv + BN) or ``"ssd"`` (module doc).
    """

    def __init__(
        self,
        source_channels: Sequence[int],
        boxes_per_location: Sequence[int],
        num_classes: int,
        norm: str = "batch",
        style: HeadStyle = "dsod",
    ) -> None:
        super().__init__()
        if len(source_channels) != len(boxes_per_location):
            raise ValueError(
                f"{len(source_channels)} sources but {len(boxes_per_location)} box counts"
            )
        self.num_outputs = num_classes + 1
        self.style = style
        self.norms = nn.ModuleList(
            L2Norm(c) if style == "dsod" or i == 0 else nn.Identity()
            for i, c in enumerate(source_channels)
        )
        self.loc = nn.ModuleList(
            _conv_bn(c, a * 4, norm, style) for c, a in zip(source_channels, boxes_per_location)
        )
        self.conf = nn.ModuleList(
            _conv_bn(c, a * self.num_outputs, norm, style)
            for c, a in zip(source_channels, boxes_per_location)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for branch in (*self.loc, *self.conf):
            conv = branch[0]
            if self.style == "ssd":  # Caffe SSD's head: xavier (variance 1 / fan_in), bias 0
                bound = math.sqrt(3.0 / conv.weight[0].numel())
                nn.init.uniform_(conv.weight, -bound, bound)
                nn.init.zeros_(conv.bias)
                continue
            nn.init.normal_(conv.weight, mean=0.0, std=HEAD_INIT_STD)
            branch[1].reset_parameters()
        for norm in self.norms:
            if isinstance(norm, L2Norm):
                norm.reset_parameters()

    def forward(self, sources: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        locs, confs = [], []
        for x, norm, loc, conf in zip(sources, self.norms, self.loc, self.conf):
            x = norm(x)
            batch = x.shape[0]
            # [B, A·4, H, W] → [B, H, W, A·4] → [B, H·W·A, 4]: location-major, as the priors.
            locs.append(loc(x).permute(0, 2, 3, 1).reshape(batch, -1, 4))
            confs.append(conf(x).permute(0, 2, 3, 1).reshape(batch, -1, self.num_outputs))
        return torch.cat(locs, 1), torch.cat(confs, 1)
