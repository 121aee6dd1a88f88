"""Batching of transformed detection items (see :mod:`dsod_core.data.transforms`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dsod_core.errors import DataError

_TARGET_KEYS = ("boxes", "labels", "difficult")
_RESERVED = ("images", "targets")


def detection_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of items into a batch.

    Args:
        items: dicts with ``image`` float32 ``[C, H, W]`` (same C, H, W for all, i.e. after
            :class:`~dsod_core.data.transforms.Resize`), ``boxes`` float32 ``[N, 4]`` xyxy pixels,
            ``labels`` int64 ``[N]`` (1..K, or -1 for a crowd region:
            :data:`~dsod_core.loss.CROWD_LABEL`, passed on unchanged for the loss to
            ignore), optional ``difficult`` bool ``[N]`` (False when missing), and any other
            keys (``index``, ``sample_id``, ...), the same keys in every item.

    Returns:
        ``{"images": float32 [B, C, H, W], "targets": [{"boxes": float32 [N_i, 4],
        "labels": int64 [N_i], "difficult": bool [N_i]}, ...], <other key>: [value_i, ...]}``.
    """
    if len(items) == 0:
        raise DataError("cannot collate an empty batch")
    keys = set(items[0])
    for i, item in enumerate(items):
        if set(item) != keys:
            raise DataError(
                f"batch items have different keys: item 0 {sorted(keys)}, item {i} {sorted(item)}"
            )
    clash = keys.intersection(_RESERVED)
    if clash:
        raise DataError(f"item keys {sorted(clash)} clash with the batch's own keys")

    shapes = {tuple(np.shape(item["image"])) for item in items}
    if len(shapes) != 1:
        raise DataError(f"images of one batch differ in shape: {sorted(shapes)}; resize first")
    images = torch.from_numpy(np.stack([np.asarray(it["image"], dtype=np.float32) for it in items]))

    targets = []
    for item in items:
        boxes = torch.as_tensor(np.asarray(item["boxes"], dtype=np.float32).reshape(-1, 4))
        labels = torch.as_tensor(np.asarray(item["labels"], dtype=np.int64).reshape(-1))
        difficult = item.get("difficult")
        if difficult is None:
            difficult = np.zeros(len(labels), dtype=bool)
        difficult = torch.as_tensor(np.asarray(difficult, dtype=bool).reshape(-1))
        if not (len(boxes) == len(labels) == len(difficult)):
            raise DataError(
                f"boxes/labels/difficult disagree: {len(boxes)}/{len(labels)}/{len(difficult)}"
            )
        targets.append({"boxes": boxes, "labels": labels, "difficult": difficult})

    batch: dict[str, Any] = {"images": images, "targets": targets}
    for key in sorted(keys - {"image", *_TARGET_KEYS}):
        batch[key] = [item[key] for item in items]
    return batch
