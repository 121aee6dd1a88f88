"""MultiBox loss against a per-image numpy/loop reference of SSD's MultiBoxLoss layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsod_core.boxes import default_boxes, match
from dsod_core.errors import DataError
from dsod_core.loss import MultiBoxLoss
from tests.box_reference import (
    cxcywh_to_xyxy_np,
    encode_np,
    iou_matrix,
    log_softmax_np,
    match_caffe,
)

SIZE = (64, 80)  # (H, W): non-square on purpose, boxes are normalised per axis


def _priors() -> torch.Tensor:
    return default_boxes([4, 2, 1], 64, "generic")  # 84 priors


def _reference(loc, conf, targets, priors, ratio=3, min_neg=3, thr=0.5):
    """SSD MultiBox loss, one image at a time, in float64.

    Label -1 boxes (crowd) are left out of matching; a non-positive prior with IoU >= thr with
    one of them is ignored: no loss, not a mining candidate."""
    loc = loc.double().numpy()
    conf = conf.double().numpy()
    pri = priors.double().numpy()
    pri_xyxy = cxcywh_to_xyxy_np(pri)
    h, w = SIZE
    loc_sum = conf_sum = 0.0
    total_pos = 0
    for i, t in enumerate(targets):
        gt_all = t["boxes"].double().numpy() / np.array([w, h, w, h])
        lab_all = t["labels"].numpy()
        is_crowd = lab_all == -1
        gt, lab = gt_all[~is_crowd], lab_all[~is_crowd]
        m = match_caffe(gt.astype(np.float32), pri_xyxy, thr)
        pos = [p for p, j in enumerate(m) if j >= 0]
        ignored = np.zeros(len(m), dtype=bool)
        if is_crowd.any():
            ov = iou_matrix(pri_xyxy.astype(np.float32), gt_all[is_crowd].astype(np.float32))
            ignored = (ov.max(axis=1) >= thr) & (np.array(m) < 0)
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
        negs = sorted((ce[p] for p in range(len(m)) if m[p] < 0 and not ignored[p]), reverse=True)
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
    for bad in (0, 3, -2):
        t = [{"boxes": torch.tensor([[1.0, 1.0, 30.0, 30.0]]), "labels": torch.tensor([bad])}]
        with pytest.raises(DataError):
            MultiBoxLoss(priors)(loc, conf, t, SIZE)
    t = [{"boxes": torch.tensor([[1.0, 1.0, 30.0, 30.0]]), "labels": torch.tensor([-1])}]
    assert torch.isfinite(MultiBoxLoss(priors)(loc, conf, t, SIZE)["loss"])  # crowd: accepted


# --- crowd regions (label -1): neither positives nor negatives ------------------------------


def _prior_px(priors: torch.Tensor, j: int) -> list[float]:
    """Prior ``j`` as xyxy pixels of the SIZE input."""
    h, w = SIZE
    return (cxcywh_to_xyxy_np(priors[j : j + 1].double().numpy())[0] * [w, h, w, h]).tolist()


def _ignored_priors(priors, crowd_px, pos_mask, thr=0.5):
    """Independent rule: non-positive priors with IoU >= thr with a crowd box."""
    h, w = SIZE
    pri = cxcywh_to_xyxy_np(priors.double().numpy()).astype(np.float32)
    crowd = (np.asarray(crowd_px, np.float64) / [w, h, w, h]).astype(np.float32)
    return (iou_matrix(pri, crowd).max(axis=1) >= thr) & ~pos_mask


@pytest.mark.parametrize("seed", range(6))
def test_loss_with_crowd_boxes_matches_reference(seed):
    rng = np.random.default_rng(100 + seed)
    priors = _priors()
    bsz = 4
    loc = torch.from_numpy(rng.normal(0, 1.5, (bsz, len(priors), 4))).float()
    conf = torch.from_numpy(rng.normal(0, 2, (bsz, len(priors), 5))).float()
    targets = _random_targets(rng, bsz, 6)
    for t in targets:  # about a third of the boxes become crowd regions
        crowd = torch.from_numpy(rng.random(len(t["labels"])) < 0.35)
        t["labels"] = torch.where(crowd, -1, t["labels"])
    # one image holds only crowd regions, one of them exactly a prior (so it covers one)
    targets[1] = {
        "boxes": torch.cat([targets[1]["boxes"], torch.tensor([_prior_px(priors, 40)])]),
        "labels": torch.full((len(targets[1]["labels"]) + 1,), -1),
    }
    out = MultiBoxLoss(priors)(loc, conf, targets, SIZE)
    ref_loc, ref_conf, ref_pos = _reference(loc, conf, targets, priors)
    assert int(out["num_pos"]) == ref_pos
    assert int(out["num_ignored"]) > 0
    np.testing.assert_allclose(out["loc_loss"].item(), ref_loc, rtol=1e-5)
    np.testing.assert_allclose(out["conf_loss"].item(), ref_conf, rtol=1e-5)


def test_prior_on_a_crowd_box_is_neither_positive_nor_negative():
    rng = np.random.default_rng(21)
    priors = _priors()
    j = 30  # a crowd box that is exactly prior j
    crowd_px = _prior_px(priors, j)
    real = torch.tensor([[44.0, 30.0, 78.0, 62.0]])  # far from prior j
    assert iou_matrix(np.array([crowd_px]), real.numpy())[0, 0] == 0.0
    base = {"boxes": real, "labels": torch.tensor([2])}
    with_crowd = {
        "boxes": torch.cat([real, torch.tensor([crowd_px])]),
        "labels": torch.tensor([2, -1]),
    }
    loc = torch.from_numpy(rng.normal(0, 1, (1, len(priors), 4))).float()
    conf = torch.from_numpy(rng.normal(0, 1, (1, len(priors), 3))).float()
    conf[0, j] = torch.tensor([-8.0, 8.0, 0.0])  # prior j: by far the hardest "negative"
    loss_fn = MultiBoxLoss(priors)

    plain = loss_fn(loc, conf, [base], SIZE)
    conf_g = conf.clone().requires_grad_()
    crowd = loss_fn(loc, conf_g, [with_crowd], SIZE)
    # the crowd box makes no positive, and prior j (IoU 1 with it) is not a positive
    assert int(crowd["num_pos"]) == int(plain["num_pos"]) > 0
    _, labels_plain = match(
        real / torch.tensor([80.0, 64.0, 80.0, 64.0]), torch.tensor([2]), priors
    )
    assert labels_plain[j] == 0
    # without the crowd box prior j is mined (background CE ~16); with it, it is not
    pos_mask = labels_plain.numpy() > 0
    ignored = _ignored_priors(priors, [crowd_px], pos_mask)
    assert ignored[j] and int(crowd["num_ignored"]) == int(ignored.sum())
    assert crowd["conf_loss"].item() < plain["conf_loss"].item() - 1.0
    # ... exactly as if the ignored priors were confidently background (so never mined)
    conf_bg = conf.clone()
    conf_bg[0, torch.from_numpy(ignored)] = torch.tensor([30.0, -30.0, -30.0])
    expect = loss_fn(loc, conf_bg, [base], SIZE)
    np.testing.assert_allclose(crowd["loss"].item(), expect["loss"].item(), rtol=1e-6)
    crowd["loss"].backward()
    assert conf_g.grad[0, torch.from_numpy(ignored)].abs().sum().item() == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_crowd_box_covering_only_positives_or_ignored_priors_changes_nothing(seed):
    """Adding a crowd box whose IoU >= 0.5 priors are all positives already (a copy of a real
    box: every prior with IoU >= 0.5 with it is matched), or all ignored already (a copy of a
    crowd box), leaves the loss and the number of positives exactly as they were."""
    rng = np.random.default_rng(300 + seed)
    priors = _priors()
    loc = torch.from_numpy(rng.normal(0, 1, (3, len(priors), 4))).float()
    conf = torch.from_numpy(rng.normal(0, 2, (3, len(priors), 5))).float()
    targets = _random_targets(rng, 3, 4)
    targets[2]["labels"][0] = -1  # image 2 already holds a crowd box
    loss_fn = MultiBoxLoss(priors)
    before = loss_fn(loc, conf, targets, SIZE)
    added = []
    for i, t in enumerate(targets):
        k = 1 if i == 2 and len(t["labels"]) > 1 else 0
        copy_of = 0 if i == 2 else k  # image 2: a copy of its crowd box; others: of a real box
        added.append(
            {
                "boxes": torch.cat([t["boxes"], t["boxes"][copy_of : copy_of + 1]]),
                "labels": torch.cat([t["labels"], torch.tensor([-1])]),
            }
        )
    after = loss_fn(loc, conf, added, SIZE)
    assert int(after["num_pos"]) == int(before["num_pos"]) > 0
    assert int(after["num_ignored"]) == int(before["num_ignored"])
    for key in ("loss", "loc_loss", "conf_loss"):
        np.testing.assert_allclose(after[key].item(), before[key].item(), rtol=1e-6)


def test_image_with_only_crowd_boxes_mines_outside_them():
    rng = np.random.default_rng(41)
    priors = _priors()
    crowd_px = [_prior_px(priors, 5), _prior_px(priors, 70)]
    t = [{"boxes": torch.tensor(crowd_px), "labels": torch.tensor([-1, -1])}]
    loc = torch.from_numpy(rng.normal(0, 1, (1, len(priors), 4))).float()
    conf = torch.from_numpy(rng.normal(0, 1, (1, len(priors), 3))).float()
    ignored = _ignored_priors(priors, crowd_px, np.zeros(len(priors), bool))
    assert ignored[5] and ignored[70]
    conf[0, torch.from_numpy(ignored)] = torch.tensor([-6.0, 6.0, 6.0])  # hardest if mined
    out = MultiBoxLoss(priors)(loc, conf, t, SIZE)
    assert int(out["num_pos"]) == 0 and out["loc_loss"].item() == 0.0
    assert int(out["num_ignored"]) == int(ignored.sum())
    ce = -log_softmax_np(conf[0].double().numpy())[:, 0]
    ref = np.sort(ce[~ignored])[::-1][:3].sum()  # min_negatives_per_image = 3, outside crowd
    np.testing.assert_allclose(out["conf_loss"].item(), ref, rtol=1e-6)
    # only covered priors (keep just those): nothing is left to mine, the loss is 0, finite
    sel = torch.from_numpy(ignored)
    out2 = MultiBoxLoss(priors[sel])(loc[:, sel], conf[:, sel], t, SIZE)
    assert int(out2["num_pos"]) == 0 and out2["loss"].item() == 0.0
