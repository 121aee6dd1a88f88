"""postprocess against a loop reference of SSD Caffe's DetectionOutput."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsod_core.boxes import default_boxes
from dsod_core.postprocess import postprocess
from tests.box_reference import greedy_nms, log_softmax_np

SIZE = (48, 64)  # (H, W)


def _decode_np(loc, pri, var=(0.1, 0.2)):
    cx = pri[:, 0] + loc[:, 0] * var[0] * pri[:, 2]
    cy = pri[:, 1] + loc[:, 1] * var[0] * pri[:, 3]
    w = pri[:, 2] * np.exp(loc[:, 2] * var[1])
    h = pri[:, 3] * np.exp(loc[:, 3] * var[1])
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def _reference(loc, conf, priors, thr, top_k, nms_iou, max_det):
    h, w = SIZE
    scale = np.array([w, h, w, h])
    out = []
    for b in range(loc.shape[0]):
        boxes = np.clip(_decode_np(loc[b], priors) * scale, 0, scale)
        scores = np.exp(log_softmax_np(conf[b]))
        dets = []  # (score, class, boxes) in class-major, score-rank-minor order
        for c in range(1, conf.shape[2]):
            cand = [p for p in range(len(priors)) if scores[p, c] >= thr]
            cand = sorted(cand, key=lambda p: -scores[p, c])[:top_k]  # stable: prior order
            kept = greedy_nms(boxes[cand], scores[cand, c], nms_iou)
            dets += [(scores[cand[i], c], c, boxes[cand[i]]) for i in kept]
        dets = sorted(dets, key=lambda d: -d[0])[:max_det]
        out.append(dets)
    return out


@pytest.mark.parametrize(
    "thr,top_k,nms_iou,max_det", [(0.01, 400, 0.45, 200), (0.2, 5, 0.3, 7), (0.0, 20, 0.6, 1000)]
)
def test_postprocess_matches_reference(thr, top_k, nms_iou, max_det):
    rng = np.random.default_rng(int(thr * 100) + top_k)
    priors = default_boxes([6, 3, 1], 48, "generic")
    bsz, k1 = 3, 4
    loc = rng.normal(0, 1, (bsz, len(priors), 4)).astype(np.float32)
    conf = rng.normal(0, 2.5, (bsz, len(priors), k1)).astype(np.float32)
    conf[:, 10:20] = conf[:, 5:6]  # identical rows: score ties inside a class
    got = postprocess(
        torch.from_numpy(loc),
        torch.from_numpy(conf),
        priors,
        SIZE,
        score_threshold=thr,
        pre_nms_top_k=top_k,
        nms_iou=nms_iou,
        max_detections=max_det,
    )
    # Reference in float64: identical conf rows tie exactly in both; other near-ties between
    # float32 and float64 are vanishingly unlikely with these seeds.
    ref = _reference(
        loc.astype(np.float64),
        conf.astype(np.float64),
        priors.double().numpy(),
        thr,
        top_k,
        nms_iou,
        max_det,
    )
    total = 0
    for g, r in zip(got, ref):
        assert g["boxes"].dtype == torch.float32 and g["labels"].dtype == torch.int64
        assert len(g["scores"]) == len(r) <= max_det
        total += len(r)
        if r:
            np.testing.assert_allclose(g["scores"].numpy(), [d[0] for d in r], rtol=1e-5)
            np.testing.assert_array_equal(g["labels"].numpy(), [d[1] for d in r])
            np.testing.assert_allclose(
                g["boxes"].numpy(), np.stack([d[2] for d in r]), rtol=1e-4, atol=1e-3
            )
    assert total > 0


def test_postprocess_pixel_coordinates_and_clipping():
    # One prior in the middle; zero offsets decode to the prior itself, in input pixels.
    priors = torch.tensor([[0.5, 0.5, 0.5, 0.25], [0.9, 0.9, 0.5, 0.5]])
    loc = torch.zeros(1, 2, 4)
    conf = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]])
    (det,) = postprocess(loc, conf, priors, SIZE)
    h, w = SIZE
    by_label = {int(lbl): b for lbl, b in zip(det["labels"], det["boxes"])}
    torch.testing.assert_close(
        by_label[1], torch.tensor([0.25 * w, 0.375 * h, 0.75 * w, 0.625 * h])
    )
    # The second prior sticks out of the image: clipped to (W, H).
    torch.testing.assert_close(by_label[2], torch.tensor([0.65 * w, 0.65 * h, w, h]))
    (raw,) = postprocess(loc, conf, priors, SIZE, clip=False)
    assert raw["boxes"][:, 2:].max().item() > w


def test_postprocess_nothing_above_threshold():
    priors = default_boxes([2], 16, "generic")
    conf = torch.zeros(2, len(priors), 3)
    conf[..., 0] = 20.0  # background certain
    dets = postprocess(torch.zeros(2, len(priors), 4), conf, priors, (16, 16))
    assert len(dets) == 2
    for d in dets:
        assert d["boxes"].shape == (0, 4) and d["scores"].shape == (0,)
        assert d["labels"].shape == (0,)


def test_postprocess_score_threshold_is_inclusive():
    # Zero logits over 4 columns give every class a score of exactly 0.25.
    priors = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.1, 0.1]])
    conf = torch.zeros(1, 2, 4)
    (det,) = postprocess(torch.zeros(1, 2, 4), conf, priors, SIZE, score_threshold=0.25)
    assert len(det["scores"]) == 6 and bool((det["scores"] == 0.25).all())
    # Equal scores: class-major, then prior order.
    assert det["labels"].tolist() == [1, 1, 2, 2, 3, 3]
    (det,) = postprocess(torch.zeros(1, 2, 4), conf, priors, SIZE, score_threshold=0.2501)
    assert len(det["scores"]) == 0
