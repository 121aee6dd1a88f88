"""SSD300's VGG16 trunk and extra layers (Liu et al., 2016; the Caffe SSD layout), the paper's
Table 4 baselines (``model.backbone: vgg16``; docs/dsod.md §8).

Trunk: VGG16 conv1_1 .. conv5_3 (3×3 convs with bias, ReLU; 2×2/2 max pools, pool3 in ceil
mode so that 75 becomes 38), pool5 3×3/1 pad 1, fc6 as a 3×3 conv of dilation 6 → 1024 and
fc7 as a 1×1 conv → 1024 (the "reduced fc" layers). ``features`` keeps torchvision's
``vgg16().features`` indices (conv at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), so an
ImageNet checkpoint maps onto it by name (:mod:`dsod_core.backbone_init`). Its two outputs are
conv4_3 (source 1, 512 × 38 × 38 at 300 px) and fc7 (the top map, 1024 × 19 × 19).

Extra layers (``SSDExtras``, the plain structure): conv8_1 1×1 → 256, conv8_2 3×3/2 → 512,
conv9_1 → 128, conv9_2 3×3/2 → 256, conv10_1 → 128, conv10_2 3×3 valid → 256, conv11_1 → 128,
conv11_2 3×3 valid → 256, each with bias and ReLU: maps 10, 5, 3, 1 at 300 px. The two valid
convs need a 5×5 map after conv9_2, so this structure needs an input of at least
:data:`SSD_MIN_INPUT_SIZE` (268) px; the dense structure (DSOD's, on the same trunk) works at
any size from 32 px.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dsod_core.model.backbone import conv_out_size, pool_out_size

# torchvision's vgg16 "D" configuration without the last pool: "M" a 2×2/2 floor pool,
# "C" the ceil-mode pool3 of SSD.
_VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)
# Indices of the 13 convs in ``features`` (the same as in torchvision's ``vgg16().features``).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# ``features[:CONV4_3_END]`` ends with conv4_3's ReLU: source 1.
CONV4_3_END = 23
# (stride, padding) of conv8_2, conv9_2, conv10_2 and conv11_2.
SSD300_EXTRA_STRIDES = ((2, 1), (2, 1), (1, 0), (1, 0))
SSD_MIN_INPUT_SIZE = 268
FC6_CHANNELS = FC7_CHANNELS = 1024
FC6_DILATION = 6


def vgg16_output_sizes(input_size: int) -> tuple[int, int]:
    """Sides of (conv4_3, fc7) for a square input: pool1, pool2 floor, pool3 ceil, pool4
    floor; the 3×3 convs, pool5 and the dilated fc6 keep the side."""
    side = input_size // 2 // 2
    side = pool_out_size(side, 2, 2)
    return side, side // 2


def ssd_extras_sizes(top_size: int) -> list[int]:
    """Sides of conv8_2 .. conv11_2 from fc7's side (a value below 1: no output)."""
    sizes = [top_size]
    for stride, padding in SSD300_EXTRA_STRIDES:
        sizes.append(conv_out_size(sizes[-1], 3, stride, padding))
    return sizes[1:]


class VGG16Backbone(nn.Module):
    """VGG16 trunk of SSD300 for ``in_channels``-channel images.

    ``forward(images [B, C, H, W]) -> (conv4_3 [B, 512, H1, W1], fc7 [B, 1024, H2, W2])``,
    38 and 19 at 300 px; ``out_channels`` and ``output_sizes`` as ``DSODBackbone``'s.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in _VGG16_LAYERS:
            if v in ("M", "C"):
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=v == "C"))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.pool5 = nn.MaxPool2d(3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(channels, FC6_CHANNELS, 3, padding=FC6_DILATION, dilation=FC6_DILATION)
        self.fc7 = nn.Conv2d(FC6_CHANNELS, FC7_CHANNELS, 1)
        self._out_channels = (channels, FC7_CHANNELS)

    @property
    def out_channels(self) -> tuple[int, int]:
        """Channels of (conv4_3, fc7): (512, 1024)."""
        return self._out_channels

    def output_sizes(self, input_size: int) -> tuple[int, int]:
        """Sides of (conv4_3, fc7) for a square input of ``input_size`` px."""
        return vgg16_output_sizes(input_size)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        source1 = self.features[:CONV4_3_END](images)
        x = self.features[CONV4_3_END:](source1)
        x = F.relu(self.fc6(self.pool5(x)), inplace=True)
        return source1, F.relu(self.fc7(x), inplace=True)


class SSDExtras(nn.Module):
    """SSD300's extra layers on fc7 (the plain structure of the VGG16 variants).

    Source 1 is conv4_3, source 2 fc7; each later source is 1×1 → n, ReLU, 3×3 → 2n, ReLU of
    the previous one (conv bias on, no norm), strides and paddings of
    :data:`SSD300_EXTRA_STRIDES`. ``extra_channels`` gives n: (256, 128, 128, 128) in SSD300.
    """

    def __init__(self, in_channels: tuple[int, int], extra_channels: tuple[int, ...]) -> None:
        super().__init__()
        channels = list(in_channels)
        scales = []
        for width, (stride, padding) in zip(extra_channels, SSD300_EXTRA_STRIDES, strict=True):
            scales.append(
                nn.Sequential(
                    nn.Conv2d(channels[-1], width, 1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(width, 2 * width, 3, stride=stride, padding=padding),
                    nn.ReLU(inplace=True),
                )
            )
            channels.append(2 * width)
        self.scales = nn.ModuleList(scales)
        self.source_channels: tuple[int, ...] = tuple(channels)

    def map_sizes(self, source1_size: int, top_size: int) -> list[int]:
        """Sides of all six source maps given the trunk's two."""
        return [source1_size, top_size, *ssd_extras_sizes(top_size)]

    def forward(self, source1: Tensor, top: Tensor) -> list[Tensor]:
        sources = [source1, top]
        for scale in self.scales:
            sources.append(scale(sources[-1]))
        return sources
