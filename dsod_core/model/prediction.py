"""Prediction structures: from the backbone's two maps to the six source maps (docs/dsod.md §2).

Dense (DSOD): every later scale concatenates a *learned* half (bottleneck + 3×3/2 conv of the
previous scale) with a *pooled* half (2×2/2 max pool of the previous scale + 1×1 conv), so each
scale sees the earlier ones directly. Plain (SSD): every later scale is the bottleneck of the
previous one alone. In both, sources 3..6 have 2n channels for n in ``extra_channels``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dsod_core.model.backbone import PreActConv, ceil_max_pool, conv_out_size, pool_out_size


def _halve(size: int) -> int:
    # A ceil-mode 2×2/2 pool and a 3×3/2 pad-1 conv give the same side, ceil(size / 2);
    # the assertion keeps the two branches of a dense scale concatenable.
    pooled, strided = pool_out_size(size, 2, 2), conv_out_size(size, 3, 2, 1)
    assert pooled == strided, (size, pooled, strided)
    return pooled


class DenseScale(nn.Module):
    """One later scale of the dense structure: concat[pool → BN-ReLU-1×1 → n,
    BN-ReLU-1×1 → n → BN-ReLU-3×3/2 → n]; [B, C, H, W] → [B, 2n, ceil(H/2), ceil(W/2)]."""

    def __init__(self, in_channels: int, width: int, norm: str = "batch") -> None:
        super().__init__()
        self.pooled = nn.Sequential(ceil_max_pool(), PreActConv(in_channels, width, norm=norm))
        self.learned = nn.Sequential(
            PreActConv(in_channels, width, norm=norm),
            PreActConv(width, width, kernel_size=3, stride=2, norm=norm),
        )
        self.out_channels = 2 * width

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.pooled(x), self.learned(x)], 1)


class DensePrediction(nn.Module):
    """The DSOD dense prediction structure.

    Source 1 is the backbone's first map; source 2 = concat[top map (the backbone's learned
    half), max-pool of source 1 → BN-ReLU-1×1 → ``learned_half``]; sources 3..6 are
    ``DenseScale`` s. DS/64-192-48-1 at 300 px: 800/512/512/256/256/256 channels at
    38/19/10/5/3/2.
    """

    def __init__(
        self,
        in_channels: tuple[int, int],
        learned_half: int,
        extra_channels: tuple[int, ...],
        norm: str = "batch",
    ) -> None:
        super().__init__()
        source1, top = in_channels
        self.source2_pooled = nn.Sequential(
            ceil_max_pool(), PreActConv(source1, learned_half, norm=norm)
        )
        channels = [source1, top + learned_half]
        scales = []
        for width in extra_channels:
            scales.append(DenseScale(channels[-1], width, norm))
            channels.append(scales[-1].out_channels)
        self.scales = nn.ModuleList(scales)
        self.source_channels: tuple[int, ...] = tuple(channels)

    def map_sizes(self, source1_size: int, top_size: int) -> list[int]:
        """Sides of all source maps given the backbone's two."""
        return source_sizes(source1_size, top_size, len(self.scales))

    def forward(self, source1: Tensor, top: Tensor) -> list[Tensor]:
        sources = [source1, torch.cat([top, self.source2_pooled(source1)], 1)]
        for scale in self.scales:
            sources.append(scale(sources[-1]))
        return sources


class PlainPrediction(nn.Module):
    """The plain (SSD) structure: source 2 is the backbone's top map; each later source is
    BN-ReLU-1×1 → n then BN-ReLU-3×3/2 → 2n of the previous source only."""

    def __init__(
        self, in_channels: tuple[int, int], extra_channels: tuple[int, ...], norm: str = "batch"
    ) -> None:
        super().__init__()
        channels = list(in_channels)
        scales = []
        for width in extra_channels:
            scales.append(
                nn.Sequential(
                    PreActConv(channels[-1], width, norm=norm),
                    PreActConv(width, 2 * width, kernel_size=3, stride=2, norm=norm),
                )
            )
            channels.append(2 * width)
        self.scales = nn.ModuleList(scales)
        self.source_channels: tuple[int, ...] = tuple(channels)

    def map_sizes(self, source1_size: int, top_size: int) -> list[int]:
        """Sides of all source maps given the backbone's two."""
        return source_sizes(source1_size, top_size, len(self.scales))

    def forward(self, source1: Tensor, top: Tensor) -> list[Tensor]:
        sources = [source1, top]
        for scale in self.scales:
            sources.append(scale(sources[-1]))
        return sources


def source_sizes(source1_size: int, top_size: int, num_extra: int) -> list[int]:
    """Sides of all source maps given the backbone's two (same rule for both structures)."""
    sizes = [source1_size, top_size]
    for _ in range(num_extra):
        sizes.append(_halve(sizes[-1]))
    return sizes
