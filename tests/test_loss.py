"""MultiBox loss against a per-image numpy/loop reference of SSD's MultiBoxLoss layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsod_core.boxes import default_boxes
from dsod_core.errors import DataError
from dsod_core.loss import MultiBoxLoss
from tests.box_reference import cxcywh_to_xyxy_np, encode_np, log_softmax_np, match_caffe

SIZE = (64, 80)  # (H, W): non-square on purpose, boxes are normalised per axis


def _priors() -> torch.Tensor:
    return default_boxes([4, 2, 1], 64, "generic")  # 84 priors


def _reference(loc, conf, targets, priors, ratio=3, min_neg=3, thr=0.5):
    """SSD MultiBox loss, one image at a time, in float64."""
    loc = loc.double().numpy()
    conf = conf.double().numpy()
    pri = priors.double().numpy()
    pri_xyxy = cxcywh_to_xyxy_np(pri)
    h, w = SIZE
    loc_sum = conf_sum = 0.0
    total_pos = 0
    for i, t in enumerate(targets):
        gt = t["boxes"].double().numpy() / np.array([w, h, w, h])
        lab = t["labels"].numpy()
        m = match_caffe(gt.astype(np.float32), pri_xyxy, thr)
        pos = [p for p, j in enumerate(m) if j >= 0]
        total_pos += len(pos)
        logp = log_softmax_np(conf[i])
        target_cls = np.array([lab[j] if j >= 0 else 0 for j in m])
        ce = -logp[np.arange(len(m)), target_cls]
        for p in pos:
            t_enc = encode_np(gt[m[p]][None], pri[p][None])[0]
            for d in range(4):
                x = abs(loc[i, p, d] - t_enc[d])
                loc_sum += 0.5 * x * x if x < 1 else x - 0.5
            conf_sum += ce[p]
        negs = sorted((ce[p] for p in range(len(m)) if m[p] < 0), reverse=True)
        num_neg = min(max(ratio * len(pos), min_neg), len(negs))
        conf_sum += sum(negs[:num_neg])
    denom = max(total_pos, 1)
    return loc_sum / denom, conf_sum / denom, total_pos


def _random_targets(rng, bsz, max_n, empty_every=0):
    h, w = SIZE
    targets = []
    for i in range(bsz):
        n = 0 if (empty_every and i % empty_every == 0) else int(rng.integers(1, max_n + 1))
        xy = rng.uniform(0, 0.7, (n, 2)) * [w, h]
        wh = rng.uniform(0.08, 0.6, (n, 2)) * [w, h]
        boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
                "labels": torch.tensor(rng.integers(1, 5, n), dtype=torch.int64),
            }
        )
    return targets


@pytest.mark.parametrize("seed", range(8))
def test_loss_matches_reference(seed):
    rng = np.random.default_rng(seed)
    priors = _priors()
    bsz, k1 = 4, 5
    loc = torch.from_numpy(rng.normal(0, 1.5, (bsz, len(priors), 4))).float()
    conf = torch.from_numpy(rng.normal(0, 2, (bsz, len(priors), k1))).float()
    targets = _random_targets(rng, bsz, 5, empty_every=3 if seed % 2 else 0)
    out = MultiBoxLoss(priors)(loc, conf, targets, SIZE)
    ref_loc, ref_conf, ref_pos = _reference(loc, conf, targets, priors)
    assert int(out["num_pos"]) == ref_pos > 0
    np.testing.assert_allclose(out["loc_loss"].item(), ref_loc, rtol=1e-5)
    np.testing.assert_allclose(out["conf_loss"].item(), ref_conf, rtol=1e-5)
    np.testing.assert_allclose(out["loss"].item(), ref_loc + ref_conf, rtol=1e-5)


def test_loss_weights_ratio_and_gradients_touch_only_mined_priors():
    rng = np.random.default_rng(11)
    priors = _priors()
    loc = torch.from_numpy(rng.normal(0, 1, (2, len(priors), 4))).float().requires_grad_()
    conf = torch.from_numpy(rng.normal(0, 1, (2, len(priors), 5))).float().requires_grad_()
    targets = _random_targets(rng, 2, 3)
    loss_fn = MultiBoxLoss(priors, neg_pos_ratio=2, loc_weight=0.5)
    out = loss_fn(loc, conf, targets, SIZE)
    ref_loc, ref_conf, n_pos = _reference(loc.detach(), conf.detach(), targets, priors, ratio=2)
    np.testing.assert_allclose(out["loss"].item(), ref_conf + 0.5 * ref_loc, rtol=1e-5)
    out["loss"].backward()
    touched_conf = (conf.grad.abs().sum(-1) > 0).sum().item()
    touched_loc = (loc.grad.abs().sum(-1) > 0).sum().item()
    assert touched_loc == n_pos
    # positives + 2 mined negatives per positive, counted per image
    per_img_pos = [(loc.grad[i].abs().sum(-1) > 0).sum().item() for i in range(2)]
    expected = sum(min(p + max(2 * p, 3), len(priors)) for p in per_img_pos)
    assert touched_conf == expected


def test_empty_images():
    priors = _priors()
    rng = np.random.default_rng(12)
    loc = torch.from_numpy(rng.normal(0, 1, (3, len(priors), 4))).float()
    conf = torch.from_numpy(rng.normal(0, 1, (3, len(priors), 4))).float().requires_grad_()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    targets = [empty] * 3
    out = MultiBoxLoss(priors)(loc, conf, targets, SIZE)
    assert int(out["num_pos"]) == 0
    assert out["loc_loss"].item() == 0.0
    assert torch.isfinite(out["loss"])
    # Rule: 3 hardest negatives per empty image, divided by max(num_pos, 1) = 1.
    ce = -torch.log_softmax(conf.detach().double(), -1)[..., 0]
    ref = ce.topk(3, dim=1).values.sum().item()
    np.testing.assert_allclose(out["conf_loss"].item(), ref, rtol=1e-6)
    out["loss"].backward()
    assert (conf.grad.abs().sum(-1) > 0).sum().item() == 9
    # Caffe's rule (no negatives without positives): exactly zero.
    out0 = MultiBoxLoss(priors, min_negatives_per_image=0)(loc, conf, targets, SIZE)
    assert out0["loss"].item() == 0.0


def test_degenerate_box_is_never_positive_and_loss_finite():
    priors = _priors()
    loc = torch.zeros(1, len(priors), 4)
    conf = torch.zeros(1, len(priors), 3)
    t = [{"boxes": torch.tensor([[10.0, 10.0, 10.0, 30.0]]), "labels": torch.tensor([1])}]
    out = MultiBoxLoss(priors)(loc, conf, t, SIZE)
    assert int(out["num_pos"]) == 0
    assert torch.isfinite(out["loss"])


def test_bad_labels_raise():
    priors = _priors()
    loc = torch.zeros(1, len(priors), 4)
    conf = torch.zeros(1, len(priors), 3)
    for bad in (0, 3):
        t = [{"boxes": torch.tensor([[1.0, 1.0, 30.0, 30.0]]), "labels": torch.tensor([bad])}]
        with pytest.raises(DataError):
            MultiBoxLoss(priors)(loc, conf, t, SIZE)
