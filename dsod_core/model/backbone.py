"""DSOD backbone: stem, dense blocks and transitions (docs/dsod.md §1).

The stem is post-activation (conv-BN-ReLU); everything after it is pre-activation
(BN-ReLU-conv). No conv has a bias. Every max pool rounds up (ceil mode), which is what turns
75 into 38 and keeps the source maps at 38/19/10/5/3/2 for a 300 px input.

The backbone returns two maps: source 1 (after dense block 2 and its 1×1 transition, before
the pool that leads to block 3) and the top map (after the last dense block and the last
transition, the "learned half" of source 2 in the dense structure). The last block is block 4,
or block 3 when ``block_layers`` has three entries: the paper's "without transition w/o
pooling" ablation, "only 3 dense blocks" (stem, block 1, transition 1 with pool, block 2,
its 1×1 transition = source 1, pool, block 3, last transition = the top map). It publishes
their channels as ``out_channels`` and their sizes for any input through ``output_sizes`` so
that the prediction layers and the head derive them instead of hard-coding the 300 px numbers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from dsod_core.model.config import DSODConfig
from dsod_core.model.norm import make_norm


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output side of a convolution (floor rounding, as PyTorch and Caffe do)."""
    return (size + 2 * padding - kernel) // stride + 1


def pool_out_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Output side of a ceil-mode max pool, including PyTorch's (and Caffe's) rule that the
    last window must start inside the input or the left padding."""
    out = math.ceil((size + 2 * padding - kernel) / stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def ceil_max_pool() -> nn.MaxPool2d:
    """The 2×2/2 max pool used everywhere after the stem; ceil mode keeps odd borders."""
    return nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)


@contextlib.contextmanager
def frozen_bn_statistics(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in training mode without its BNs' running statistics changing: they
    are put back afterwards (for a recomputation in backward, which must not count a batch
    twice)."""
    saved = [
        (m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


class PreActConv(nn.Sequential):
    """BN → ReLU → conv (no bias): the pre-activation unit used after the stem (the norm is
    ``norm``'s layer, ``dsod_core/model/norm.py``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        norm: str = "batch",
    ) -> None:
        super().__init__(
            make_norm(in_channels, norm),
            nn.ReLU(inplace=True),
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                bias=False,
            ),
        )
        self.out_channels = out_channels


def post_act_conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, norm: str = "batch"
) -> list[nn.Module]:
    """Conv (no bias) → BN → ReLU, the stem's post-activation unit."""
    return [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        ),
        make_norm(out_channels, norm),
        nn.ReLU(inplace=True),
    ]


class DSODStem(nn.Sequential):
    """3×3/2 → A, 3×3 → A, 3×3 → 2A, max 2×2/2 (ceil). 300 px → 2A × 75 × 75."""

    def __init__(self, in_channels: int, width: int, norm: str = "batch") -> None:
        super().__init__(
            *post_act_conv(in_channels, width, 3, 2, norm),
            *post_act_conv(width, width, 3, 1, norm),
            *post_act_conv(width, 2 * width, 3, 1, norm),
            ceil_max_pool(),
        )
        self.out_channels = 2 * width

    @staticmethod
    def output_size(size: int) -> int:
        return pool_out_size(conv_out_size(size, 3, 2, 1), 2, 2)


class DenseNetStem(nn.Sequential):
    """The "without stem" ablation: DenseNet's 7×7/2 → 2A, max 3×3/2 pad 1 (ceil)."""

    def __init__(self, in_channels: int, width: int, norm: str = "batch") -> None:
        super().__init__(
            *post_act_conv(in_channels, 2 * width, 7, 2, norm),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True),
        )
        self.out_channels = 2 * width

    @staticmethod
    def output_size(size: int) -> int:
        return pool_out_size(conv_out_size(size, 7, 2, 3), 3, 2, 1)


class DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv → B, BN-ReLU-3×3 conv → k; the caller concatenates.

    Takes the list of all earlier feature maps of the block (as torchvision's DenseNet does)
    so that, when ``memory_efficient`` is set, the whole layer (concatenation, BN, ReLU, 1×1
    conv, BN, ReLU, 3×3 conv) is recomputed in backward instead of kept: the concatenation is
    what makes a plain DenseNet need memory quadratic in depth, and the B-wide bottleneck
    activations are the next largest part.
    """

    def __init__(
        self,
        in_channels: int,
        bottleneck_width: int,
        growth_rate: int,
        memory_efficient: bool,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.norm1 = make_norm(in_channels, norm)
        self.conv1 = nn.Conv2d(in_channels, bottleneck_width, 1, bias=False)
        self.norm2 = make_norm(bottleneck_width, norm)
        self.conv2 = nn.Conv2d(bottleneck_width, growth_rate, 3, padding=1, bias=False)
        self.memory_efficient = memory_efficient

    def _bottleneck(self, features: list[Tensor]) -> Tensor:
        return self.conv1(F.relu(self.norm1(torch.cat(features, 1))))

    @staticmethod
    def _bn(norm: nn.Module, x: Tensor, recomputing: bool) -> Tensor:
        if not recomputing or not norm.training or not isinstance(norm, nn.BatchNorm2d):
            return norm(x)  # GroupNorm keeps no running statistics
        # The recomputation in backward must not move the running statistics a second time
        # (torchvision's DenseNet does): same op and saved tensors, but it updates throwaway
        # copies; in training mode the output uses batch statistics anyway.
        return F.batch_norm(
            x,
            norm.running_mean.clone() if norm.running_mean is not None else None,
            norm.running_var.clone() if norm.running_var is not None else None,
            norm.weight,
            norm.bias,
            training=True,
            momentum=0.1 if norm.momentum is None else norm.momentum,
            eps=norm.eps,
        )

    def _checkpointed_layer(self, features: list[Tensor]) -> Tensor:
        # The whole layer (concat-BN-ReLU-1x1 and BN-ReLU-3x3) is recomputed in backward:
        # only the block's inputs and the new k-channel map stay in memory.
        calls = [0]

        def layer(*feats: Tensor) -> Tensor:
            again = calls[0] > 0
            calls[0] += 1
            x = self.conv1(F.relu(self._bn(self.norm1, torch.cat(feats, 1), again)))
            return self.conv2(F.relu(self._bn(self.norm2, x, again)))

        return cp.checkpoint(layer, *features, use_reentrant=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        """features: maps [B, C_i, H, W] with sum C_i = in_channels → new map [B, k, H, W]."""
        if (
            self.memory_efficient
            and torch.is_grad_enabled()
            and any(f.requires_grad for f in features)
            and not torch.jit.is_tracing()
        ):
            return self._checkpointed_layer(features)
        return self.conv2(F.relu(self.norm2(self._bottleneck(features))))


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; output = concat[input, every new map], C + L·k channels."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        bottleneck_width: int,
        growth_rate: int,
        memory_efficient: bool,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(
                in_channels + i * growth_rate,
                bottleneck_width,
                growth_rate,
                memory_efficient,
                norm,
            )
            for i in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


def compressed(channels: int, theta: float) -> int:
    """θ·C rounded down, as the authors' generator does (``int(math.floor(C * times))``)."""
    return int(math.floor(channels * theta))


def _transition_wo_pool(
    channels: int, theta: float, enabled: bool, norm: str = "batch"
) -> tuple[nn.Module, int]:
    """The 1×1 transition without pooling (or nothing when disabled) and its output width."""
    if not enabled:
        return nn.Identity(), channels
    conv = PreActConv(channels, compressed(channels, theta), norm=norm)
    return conv, conv.out_channels


class DSODBackbone(nn.Module):
    """Stem, four (or three) dense blocks and the transitions between them (docs/dsod.md §1).

    ``forward(images [B, C_in, H, W]) -> (source1 [B, C1, H1, W1], top [B, C2, H2, W2])``;
    for DS/64-192-48-1 at 300 px: 800×38×38 and 256×19×19.
    """

    def __init__(self, config: DSODConfig, top_channels: int | None = None) -> None:
        """``top_channels``: width of the last transition; None compresses block 4 by θ."""
        super().__init__()
        c = config
        stem_cls = DSODStem if c.stem == "dsod" else DenseNetStem
        self.stem = stem_cls(c.in_channels, c.stem_channels, c.norm)

        def block(index: int, channels: int) -> DenseBlock:
            return DenseBlock(
                c.block_layers[index],
                channels,
                c.bottleneck_width,
                c.growth_rate,
                c.memory_efficient,
                c.norm,
            )

        self.block1 = block(0, self.stem.out_channels)
        trans1 = compressed(self.block1.out_channels, c.compression)
        self.transition1 = nn.Sequential(
            PreActConv(self.block1.out_channels, trans1, norm=c.norm), ceil_max_pool()
        )
        self.block2 = block(1, trans1)
        # With three blocks the 1×1 after block 2 is an ordinary transition (its pool is
        # pool3): it stays, and only the transitions without pooling go.
        three_blocks = len(c.block_layers) == 3
        self.transition2, source1_channels = _transition_wo_pool(
            self.block2.out_channels, c.compression, c.transition_wo_pool or three_blocks, c.norm
        )
        self.pool3 = ceil_max_pool()
        self.block3 = block(2, source1_channels)
        last: DenseBlock = self.block3
        # Three blocks (the paper's "only 3 dense blocks" ablation): no transition 3, no block 4.
        self.transition3: nn.Module | None = None
        self.block4: DenseBlock | None = None
        if len(c.block_layers) == 4:
            self.transition3, block4_in = _transition_wo_pool(
                self.block3.out_channels, c.compression, c.transition_wo_pool, c.norm
            )
            self.block4 = last = block(3, block4_in)
        # The last transition without pooling: the "learned half" (256) in the dense structure.
        # Named after block 4 in both depths, so four-block checkpoints keep their keys.
        if top_channels is None:
            top_channels = compressed(last.out_channels, c.compression)
        self.transition4 = PreActConv(last.out_channels, top_channels, norm=c.norm)
        self._out_channels = (source1_channels, top_channels)
        self.memory_efficient = c.memory_efficient
        self._stem_output_size = stem_cls.output_size

    @property
    def out_channels(self) -> tuple[int, int]:
        """Channels of (source 1, top map)."""
        return self._out_channels

    def output_sizes(self, input_size: int) -> tuple[int, int]:
        """Sides of (source 1, top map) for a square input of ``input_size`` px, computed
        from the layer arithmetic without running the network."""
        s = pool_out_size(self._stem_output_size(input_size), 2, 2)  # transition 1
        return s, pool_out_size(s, 2, 2)

    def _stem(self, images: Tensor) -> Tensor:
        if not (self.memory_efficient and torch.is_grad_enabled() and self.training):
            return self.stem(images)
        # The stem's full-resolution maps (conv outputs and ReLU outputs at half the input
        # side, the largest activations of the network) are recomputed in backward too: only
        # the stem's pooled output stays. The recomputation must not move the BN running
        # statistics a second time.
        calls = [0]

        def stem(x: Tensor) -> Tensor:
            calls[0] += 1
            if calls[0] == 1:
                return self.stem(x)
            with frozen_bn_statistics(self.stem):
                return self.stem(x)

        return cp.checkpoint(stem, images, use_reentrant=False)

    def high_res_size(self, input_size: int) -> int:
        """Side of dense block 1's output (stride 4 with either stem) for ``input_size``."""
        return self._stem_output_size(input_size)

    def features(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(block 1 output at stride 4, source 1, top map)``; ``forward`` drops the first."""
        early = self.block1(self._stem(images))
        source1 = self.transition2(self.block2(self.transition1(early)))
        x = self.block3(self.pool3(source1))
        if self.block4 is not None and self.transition3 is not None:
            x = self.block4(self.transition3(x))
        return early, source1, self.transition4(x)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        _, source1, top = self.features(images)
        return source1, top
