"""A plain DSOD300, written the way public reimplementations write it: the reference that the
benchmark's side-by-side table measures the project's paths against.

What makes it "naive" (and typical): every dense layer concatenates its new map onto the
running tensor (``x = torch.cat([x, out], 1)``), so each layer keeps its own, ever wider copy
of the block's features for backward; ReLUs are not in place; nothing is recomputed, fused or
folded. The network is otherwise the project's ``dsod300`` (docs/dsod.md): the same layers in
the same order, so :func:`copy_weights` moves a project model's weights into it and the two
give the same outputs (``tests/test_benchmarks_smoke.py`` checks this), which is what makes the
timings comparable.

It is kept here, outside ``dsod_core``, on purpose: nothing in the project uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _bn_relu_conv(cin: int, cout: int, k: int = 1, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(),
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
    )


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(2, 2, ceil_mode=True)


class NaiveDenseLayer(nn.Module):
    def __init__(self, cin: int, bottleneck: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bottleneck, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck)
        self.conv2 = nn.Conv2d(bottleneck, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return torch.cat([x, out], 1)


def _block(layers: int, cin: int, bottleneck: int, growth: int) -> tuple[nn.Sequential, int]:
    mods = [NaiveDenseLayer(cin + i * growth, bottleneck, growth) for i in range(layers)]
    return nn.Sequential(*mods), cin + layers * growth


class NaiveDSOD(nn.Module):
    """DSOD with the dense prediction structure, from a project ``DSODConfig`` (four dense
    blocks, DSOD stem, dense prediction: the ``dsod300`` layout)."""

    def __init__(self, config) -> None:
        super().__init__()
        c = config
        if c.stem != "dsod" or len(c.block_layers) != 4 or c.prediction != "dense":
            raise ValueError("the naive reference covers the dsod300 layout only")
        w = c.stem_channels
        self.stem = nn.Sequential(
            nn.Conv2d(c.in_channels, w, 3, 2, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, 1, 1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, 1, 1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            _pool(),
        )
        b, k, theta = c.bottleneck_width, c.growth_rate, c.compression
        self.block1, ch = _block(c.block_layers[0], 2 * w, b, k)
        t1 = int(ch * theta)
        self.transition1 = nn.Sequential(_bn_relu_conv(ch, t1), _pool())
        self.block2, ch = _block(c.block_layers[1], t1, b, k)
        s1 = int(ch * theta)
        self.transition2 = _bn_relu_conv(ch, s1)
        self.pool3 = _pool()
        self.block3, ch = _block(c.block_layers[2], s1, b, k)
        t3 = int(ch * theta)
        self.transition3 = _bn_relu_conv(ch, t3)
        self.block4, ch = _block(c.block_layers[3], t3, b, k)
        half = c.learned_half_channels
        self.transition4 = _bn_relu_conv(ch, half)
        self.source2_pooled = nn.Sequential(_pool(), _bn_relu_conv(s1, half))
        channels = [s1, 2 * half]
        self.scales = nn.ModuleList()
        for width in c.extra_channels:
            self.scales.append(
                nn.ModuleDict(
                    {
                        "pooled": nn.Sequential(_pool(), _bn_relu_conv(channels[-1], width)),
                        "learned": nn.Sequential(
                            _bn_relu_conv(channels[-1], width), _bn_relu_conv(width, width, 3, 2)
                        ),
                    }
                )
            )
            channels.append(2 * width)
        from dsod_core.boxes.priors import boxes_per_location

        anchors = boxes_per_location(c.prior_layout, len(channels))
        self.num_outputs = c.num_classes + 1
        self.scale = nn.ParameterList(nn.Parameter(torch.full((ch,), 20.0)) for ch in channels)
        self.loc = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, a * 4, 3, padding=1, bias=False), nn.BatchNorm2d(a * 4))
            for ch, a in zip(channels, anchors)
        )
        self.conf = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(ch, a * self.num_outputs, 3, padding=1, bias=False),
                nn.BatchNorm2d(a * self.num_outputs, eps=1e-3),
            )
            for ch, a in zip(channels, anchors)
        )
        for m in self.loc:
            m[1].eps = 1e-3

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.transition1(self.block1(self.stem(x)))
        source1 = self.transition2(self.block2(x))
        x = self.block4(self.transition3(self.block3(self.pool3(source1))))
        top = self.transition4(x)
        sources = [source1, torch.cat([top, self.source2_pooled(source1)], 1)]
        for scale in self.scales:
            prev = sources[-1]
            sources.append(torch.cat([scale["pooled"](prev), scale["learned"](prev)], 1))
        locs, confs = [], []
        for s, g, loc, conf in zip(sources, self.scale, self.loc, self.conf):
            s = F.normalize(s, dim=1, eps=1e-10) * g.view(1, -1, 1, 1)
            n = s.shape[0]
            locs.append(loc(s).permute(0, 2, 3, 1).reshape(n, -1, 4))
            confs.append(conf(s).permute(0, 2, 3, 1).reshape(n, -1, self.num_outputs))
        return torch.cat(locs, 1), torch.cat(confs, 1)


def _ordered_tensors(model: nn.Module, naive: bool) -> list[Tensor]:
    """Parameters and buffers in layer order. The two models register the same layers in
    different orders in two places (the head's L2 scales; source 2's pooled half), so the
    project's are listed in the naive model's order."""
    sd = model.state_dict()
    if naive:
        return list(sd.values())
    keys = list(sd)
    backbone = [k for k in keys if k.startswith("backbone.")]
    src2 = [k for k in keys if k.startswith("prediction.source2_pooled.")]
    scales = [k for k in keys if k.startswith("prediction.scales.")]
    norms = [k for k in keys if k.startswith("head.norms.")]
    rest = [k for k in keys if k.startswith(("head.loc.", "head.conf."))]
    ordered = backbone + src2 + scales + norms + rest
    if len(ordered) != len(keys):
        raise ValueError("unexpected state-dict layout of the project model")
    return [sd[k] for k in ordered]


@torch.no_grad()
def copy_weights(project_model: nn.Module, naive: NaiveDSOD) -> NaiveDSOD:
    """Give ``naive`` the project model's weights and BN statistics (same shapes, same order)."""
    src = _ordered_tensors(project_model, naive=False)
    dst = _ordered_tensors(naive, naive=True)
    if len(src) != len(dst):
        raise ValueError(f"{len(src)} project tensors but {len(dst)} in the naive model")
    for a, b in zip(src, dst):
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
        b.copy_(a)
    return naive


def build_naive(project_model: nn.Module) -> NaiveDSOD:
    """A naive DSOD with the architecture and weights of a project ``dsod300`` model."""
    return copy_weights(project_model, NaiveDSOD(project_model.config))
