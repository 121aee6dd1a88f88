"""The DSOD detector: backbone → prediction structure → head, plus its default boxes."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from dsod_core.boxes.priors import PriorMap, boxes_of_maps, boxes_per_location, prior_maps
from dsod_core.errors import ConfigError
from dsod_core.model.backbone import DSODBackbone, PreActConv
from dsod_core.model.config import NUM_SOURCES, DSODConfig
from dsod_core.model.head import DSODHead
from dsod_core.model.norm import is_norm
from dsod_core.model.prediction import DensePrediction, PlainPrediction
from dsod_core.model.vgg import SSDExtras, VGG16Backbone


def init_backbone_conv(conv: nn.Conv2d) -> None:
    """Caffe's ``xavier`` filler, which the authors use on every backbone and prediction conv.

    Caffe's default (``variance_norm: FAN_IN``) draws U(-a, a) with a = sqrt(3 / fan_in), i.e.
    variance 1 / fan_in; PyTorch's ``xavier_uniform_`` averages fan-in and fan-out instead, so
    it is not used here.
    """
    fan_in = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
    bound = math.sqrt(3.0 / fan_in)
    nn.init.uniform_(conv.weight, -bound, bound)


def model_prior_maps(config: DSODConfig, sizes: tuple[int, ...]) -> list[PriorMap]:
    """The :class:`PriorMap` of every source map of a detector with ``config`` whose source
    maps have sides ``sizes`` (six, then the stride-4 one with ``high_res_source``).

    The six are :func:`dsod_core.boxes.priors.prior_maps` of the layout (with the fitted
    sizes and ratios when the config has them). The stride-4 map has steps ``1 / side``, one
    aspect ratio (2, or the first fitted one) and, unless fitted, min size half of source 1's
    and max size source 1's min size (0.05 and 0.1 of the input with VOC sizes).
    """
    mins, maxs = config.prior_min_sizes, config.prior_max_sizes
    six = prior_maps(
        list(sizes[:NUM_SOURCES]),
        config.input_size,
        layout=config.prior_layout,
        dataset=config.prior_dataset,
        min_sizes=None if mins is None else mins[:NUM_SOURCES],
        max_sizes=None if maxs is None else maxs[:NUM_SOURCES],
        ratios=config.prior_ratios,
    )
    if not config.high_res_source:
        return six
    side = int(sizes[NUM_SOURCES])
    ratio = 2.0 if config.prior_ratios is None else float(config.prior_ratios[0])
    lo, hi = (six[0].min_size / 2, six[0].min_size) if mins is None else (mins[-1], maxs[-1])
    return [*six, PriorMap(side, 1.0 / side, float(lo), float(hi), (ratio,))]


def build_trunk(config: DSODConfig) -> tuple[nn.Module, nn.Module]:
    """The backbone and the prediction structure of ``config``.

    Both backbones give (source 1, top map) with ``out_channels`` and ``output_sizes``; every
    prediction structure turns them into the six sources (``source_channels``, ``map_sizes``).
    """
    dense = config.prediction == "dense"
    if config.backbone == "vgg16":
        vgg = VGG16Backbone(config.in_channels)
        if not dense:
            return vgg, SSDExtras(vgg.out_channels, config.extra_channels)
        structure = DensePrediction(
            vgg.out_channels, config.learned_half_channels, config.extra_channels, config.norm
        )
        return vgg, structure
    # Dense: the last transition is the 256-wide learned half of source 2. Plain: it
    # compresses by θ like the other transitions and is source 2 itself.
    backbone = DSODBackbone(config, config.learned_half_channels if dense else None)
    if dense:
        prediction: nn.Module = DensePrediction(
            backbone.out_channels,
            config.learned_half_channels,
            config.extra_channels,
            config.norm,
        )
    else:
        prediction = PlainPrediction(backbone.out_channels, config.extra_channels, config.norm)
    return backbone, prediction


class DSOD(nn.Module):
    """DSOD object detector for images of any channel count.

    ``forward(images [B, C, S, S]) -> (loc [B, P, 4], conf [B, P, K+1])``: raw head outputs,
    box offsets in centre-size coding (variances 0.1/0.2 applied by the coder) and class
    logits with column 0 the background. ``default_boxes`` [P, 4] (cx, cy, w, h, normalised to
    [0, 1]) is a non-persistent buffer derived from the config, so checkpoints hold only
    weights. C = ``config.in_channels``, S = ``config.input_size``; other sizes run but the
    default boxes only fit S. ``config.backbone`` ``vgg16`` builds the paper's SSD300 baselines
    with the same interface (:func:`build_trunk`, ``dsod_core/model/vgg.py``).
    """

    default_boxes: Tensor

    def __init__(self, config: DSODConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone, self.prediction = build_trunk(config)
        self._source_channels: tuple[int, ...] = tuple(self.prediction.source_channels)
        self._source_sizes = tuple(
            self.prediction.map_sizes(*self.backbone.output_sizes(config.input_size))
        )
        self.boxes_per_location = tuple(boxes_per_location(config.prior_layout, NUM_SOURCES))
        # The stride-4 source (config.high_res_source) comes after the six, in the head's
        # lists and in the default boxes, so the six keep their parameter names.
        self.high_res: nn.Module | None = None
        if config.high_res_source:
            early = self.backbone.block1.out_channels
            self.high_res = PreActConv(early, config.high_res_channels, norm=config.norm)
            self._source_channels += (config.high_res_channels,)
            self._source_sizes += (self.backbone.high_res_size(config.input_size),)
            self.boxes_per_location += (4,)
        self.head = DSODHead(
            self._source_channels,
            self.boxes_per_location,
            config.num_classes,
            config.norm,
            style="ssd" if config.backbone == "vgg16" else "dsod",
        )
        self.prior_maps: tuple[PriorMap, ...] = tuple(model_prior_maps(config, self._source_sizes))
        self.register_buffer("default_boxes", boxes_of_maps(self.prior_maps), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier (Caffe) on backbone and prediction convs (bias 0 where there is one, in the
        VGG16 variants), BN to (1, 0), head N(0, 0.01) (SSD's head: xavier, bias 0)."""
        for module in (self.backbone, self.prediction, self.high_res or nn.Identity()):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    init_backbone_conv(m)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif is_norm(m):
                    m.reset_parameters()
        self.head.reset_parameters()

    @property
    def source_channels(self) -> tuple[int, ...]:
        """Channels of the six source maps (800, 512, 512, 256, 256, 256 for DSOD300)."""
        return self._source_channels

    @property
    def source_sizes(self) -> tuple[int, ...]:
        """Sides of the six source maps at ``config.input_size`` (38, 19, 10, 5, 3, 2 at 300)."""
        return self._source_sizes

    @property
    def num_priors(self) -> int:
        """P, the number of default boxes (8,744 for DSOD300 at 300 px)."""
        return int(self.default_boxes.shape[0])

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, C, H, W] float → (loc [B, P, 4], conf [B, P, K+1])."""
        # Skipped while tracing (ONNX export), where the shape is symbolic.
        if not torch.jit.is_tracing() and (
            images.dim() != 4 or images.shape[1] != self.config.in_channels
        ):
            raise ConfigError(
                f"DSOD expects images [B, {self.config.in_channels}, H, W], "
                f"got {list(images.shape)}"
            )
        if self.high_res is None:
            source1, top = self.backbone(images)
            return self.head(self.prediction(source1, top))
        early, source1, top = self.backbone.features(images)
        sources = list(self.prediction(source1, top))
        sources.append(self.high_res(early))
        return self.head(sources)

    @torch.no_grad()
    def detect(self, images: Tensor, **postprocess_kwargs: Any) -> list[dict[str, Tensor]]:
        """Detections per image in input-pixel coordinates.

        Runs ``forward`` and ``dsod_core.postprocess.postprocess`` (softmax, per-class top-k
        and NMS). Put the model in eval mode first: BN in training mode would use the batch's
        statistics. Returns one dict per image with ``boxes`` [N, 4] xyxy px, ``scores`` [N],
        ``labels`` [N] int64 in 1..K.
        """
        from dsod_core.postprocess import postprocess  # the postprocess layer sits above model

        loc, conf = self(images)
        height, width = images.shape[-2:]
        return postprocess(
            loc,
            conf,
            self.default_boxes,
            image_size=(int(height), int(width)),
            **postprocess_kwargs,
        )
