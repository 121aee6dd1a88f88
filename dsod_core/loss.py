"""SSD's MultiBox loss with hard negative mining, as DSOD trains it (docs/dsod.md section 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsod_core.boxes.ops import box_iou, cxcywh_to_xyxy, encode, match_batch
from dsod_core.errors import DataError

CROWD_LABEL = -1
"""Training label of a crowd region (given by :class:`dsod_core.data.dataset.DetectionDataset`):
never a ground truth for matching; default boxes covering it are ignored by the loss."""


class MultiBoxLoss(nn.Module):
    """Smooth-L1 localisation + softmax cross-entropy with 3:1 hard negative mining.

    Per image, priors are matched to ground truths (:func:`dsod_core.boxes.match_batch`, SSD
    Caffe's bipartite + per-prediction rule at ``iou_threshold``). Positives get a Smooth-L1
    (beta 1) loss on their encoded offsets and a cross-entropy on their class. Among the
    non-positive priors (label 0 after matching) the ``neg_pos_ratio * num_pos`` with the largest
    background cross-entropy are the mined negatives. Both sums are divided by the number of
    positives in the whole batch (at least 1), Caffe's ``normalization: VALID``.

    Deviation, for images without positives: SSD mines ``3 * 0 = 0`` negatives there, so an
    all-empty batch gives a zero loss and teaches nothing (common with medical slices). Here
    every image mines at least ``min_negatives_per_image`` hard negatives (default 3, the count
    one positive would give); set it to 0 to reproduce Caffe exactly. The loss stays finite.

    Crowd regions (COCO ``iscrowd``; a target label of ``-1``,
    :data:`CROWD_LABEL`) are neither positives nor negatives:

    * a label -1 box is never a ground truth for matching (not in the bipartite step, not in
      the per-prediction step), so it makes no positive and takes no default box from a real
      object;
    * a default box that is not a positive and whose IoU with some crowd box of its image is
      ``>= iou_threshold`` is *ignored*: it gets no classification loss and is not a candidate
      for hard negative mining (nor counted in the ``num_neg <= P - num_pos`` cap);
    * a positive stays a positive, however much it overlaps a crowd region.

    An image holding only crowd boxes therefore has no positives; its
    ``min_negatives_per_image`` negatives are mined among the priors the crowd boxes do not
    cover. ``num_ignored`` in the output counts the ignored priors of the batch.

    Args:
        default_boxes: ``Tensor[P, 4]`` (cx, cy, w, h) normalised by the input size.
        neg_pos_ratio: mined negatives per positive.
        iou_threshold: matching threshold (IoU >= threshold is positive).
        variances: centre-size coding variances.
        loc_weight: weight of the localisation term (1 in DSOD).
        min_negatives_per_image: floor on mined negatives per image (see above).
    """

    def __init__(
        self,
        default_boxes: Tensor,
        neg_pos_ratio: int = 3,
        iou_threshold: float = 0.5,
        variances: tuple[float, float] = (0.1, 0.2),
        loc_weight: float = 1.0,
        min_negatives_per_image: int = 3,
    ):
        super().__init__()
        if default_boxes.ndim != 2 or default_boxes.shape[1] != 4:
            raise ValueError(f"default_boxes must be [P, 4], got {tuple(default_boxes.shape)}")
        # A buffer so .to(device) moves it; not persistent: checkpoints rebuild it from config.
        self.register_buffer("default_boxes", default_boxes.float(), persistent=False)
        self.neg_pos_ratio = int(neg_pos_ratio)
        self.iou_threshold = float(iou_threshold)
        self.variances = (float(variances[0]), float(variances[1]))
        self.loc_weight = float(loc_weight)
        self.min_negatives_per_image = int(min_negatives_per_image)

    def _targets(
        self, targets: list[dict[str, Tensor]], image_size: tuple[int, int], num_classes: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Pad the targets to ``[B, N, 4]`` normalised xyxy, labels ``[B, N]``, valid ``[B, N]``
        (crowd boxes, label -1, are included and valid; padding is not)."""
        dev = self.default_boxes.device
        h, w = image_size
        n = max((int(t["boxes"].shape[0]) for t in targets), default=0)
        bsz = len(targets)
        boxes = torch.zeros((bsz, n, 4), dtype=torch.float32, device=dev)
        labels = torch.zeros((bsz, n), dtype=torch.long, device=dev)
        valid = torch.zeros((bsz, n), dtype=torch.bool, device=dev)
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=dev)
        for i, t in enumerate(targets):
            b, lab = t["boxes"], t["labels"]
            k = int(b.shape[0])
            if b.ndim != 2 or b.shape[1] != 4 or lab.shape != (k,):
                raise DataError(
                    f"target {i}: boxes must be [N, 4] and labels [N], got "
                    f"{tuple(b.shape)} and {tuple(lab.shape)}"
                )
            boxes[i, :k] = b.to(device=dev, dtype=torch.float32) / scale
            labels[i, :k] = lab.to(device=dev, dtype=torch.long)
            valid[i, :k] = True
        if n > 0:
            bad = valid & (labels != CROWD_LABEL) & ((labels < 1) | (labels > num_classes))
            if bool(bad.any()):
                raise DataError(
                    f"labels must lie in 1..{num_classes} (or be {CROWD_LABEL} for a crowd "
                    f"region), got {labels[bad].tolist()}"
                )
        return boxes, labels, valid

    @torch.no_grad()
    def _match(
        self, gt_boxes: Tensor, gt_labels: Tensor, gt_valid: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Regression targets ``[B, P, 4]``, labels ``[B, P]`` (0 = background) and the priors
        ignored for covering a crowd region ``[B, P]`` of the padded targets."""
        crowd = gt_valid & (gt_labels == CROWD_LABEL)  # [B, N]
        matched, labels, _ = match_batch(
            gt_boxes, gt_labels, gt_valid & ~crowd, self.default_boxes, self.iou_threshold
        )
        loc_t = encode(matched, self.default_boxes, self.variances)  # [B, P, 4]
        pos = labels > 0  # [B, P]
        if bool(crowd.any()):
            priors_xyxy = cxcywh_to_xyxy(self.default_boxes)
            crowd_iou = box_iou(priors_xyxy, gt_boxes).masked_fill(~crowd[:, None, :], -1.0)
            ignored = ~pos & (crowd_iou.max(dim=2).values >= self.iou_threshold)  # [B, P]
        else:
            ignored = torch.zeros_like(pos)
        return loc_t, labels, ignored

    @torch.no_grad()
    def _hard_negatives(
        self, ce: Tensor, pos: Tensor, ignored: Tensor, num_pos_img: Tensor
    ) -> Tensor:
        """``[B, P]`` bool: the negatives of highest cross-entropy, ``neg_pos_ratio`` per
        positive (at least ``min_negatives_per_image``) in each image."""
        p = ce.shape[1]
        # Rank non-positives by their (background) cross-entropy; a double argsort gives
        # each prior's rank without a loop. Stable sort: ties go to the lower prior index
        # (the summed loss does not depend on how ties are broken).
        # Positives and crowd-ignored priors rank last and are never within num_neg.
        mining = ce.detach().masked_fill(pos | ignored, -float("inf"))
        order = torch.sort(mining, dim=1, descending=True, stable=True).indices
        rank = torch.argsort(order, dim=1)
        num_neg = (self.neg_pos_ratio * num_pos_img).clamp(min=self.min_negatives_per_image)
        num_neg = torch.minimum(num_neg, p - num_pos_img - ignored.sum(dim=1))
        return rank < num_neg[:, None]

    def forward(
        self,
        loc: Tensor,
        conf: Tensor,
        targets: list[dict[str, Tensor]],
        image_size: tuple[int, int],
    ) -> dict[str, Tensor]:
        """Compute the loss.

        Args:
            loc: ``Tensor[B, P, 4]`` predicted offsets.
            conf: ``Tensor[B, P, K+1]`` class logits, index 0 = background.
            targets: B dicts with ``boxes`` float ``[N, 4]`` xyxy in pixels of the model input
                and ``labels`` int64 ``[N]`` in 1..K, or -1 for a crowd region (see the class
                docstring). N may be 0; other keys are ignored, so VOC "difficult" boxes are
                positives as in the paper.
            image_size: ``(H, W)`` of the model input in pixels.

        Returns:
            dict with scalar tensors ``loss = conf_loss + loc_weight * loc_loss``, ``loc_loss``,
            ``conf_loss`` (each already divided by the positives), ``num_pos`` (int64, the
            number of positives in the batch, before clamping) and ``num_ignored`` (int64, the
            priors ignored for covering a crowd region).
        """
        bsz, p, _ = loc.shape
        if conf.shape[:2] != (bsz, p) or p != self.default_boxes.shape[0] or len(targets) != bsz:
            raise ValueError(
                f"loc {tuple(loc.shape)}, conf {tuple(conf.shape)}, {len(targets)} targets and "
                f"{self.default_boxes.shape[0]} default boxes do not agree"
            )
        num_classes = conf.shape[2] - 1
        loc_t, labels, ignored = self._match(*self._targets(targets, image_size, num_classes))
        pos = labels > 0  # [B, P]
        num_pos_img = pos.sum(dim=1)  # [B]
        num_pos = num_pos_img.sum()
        denom = num_pos.clamp(min=1).to(loc.dtype)

        loc_loss = F.smooth_l1_loss(loc[pos], loc_t[pos].to(loc.dtype), reduction="sum", beta=1.0)

        ce = F.cross_entropy(conf.reshape(-1, conf.shape[2]), labels.reshape(-1), reduction="none")
        ce = ce.reshape(bsz, p)
        neg = self._hard_negatives(ce, pos, ignored, num_pos_img)
        conf_loss = ce[pos | neg].sum()

        loc_loss = loc_loss / denom
        conf_loss = conf_loss / denom
        return {
            "loss": conf_loss + self.loc_weight * loc_loss,
            "loc_loss": loc_loss,
            "conf_loss": conf_loss,
            "num_pos": num_pos.detach(),
            "num_ignored": ignored.sum().detach(),
        }
