"""Default boxes, IoU, box coding, matching and NMS against plain reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dsod_core.boxes import (
    batched_nms,
    box_iou,
    boxes_per_location,
    cxcywh_to_xyxy,
    decode,
    default_boxes,
    encode,
    greedy_nms_mask,
    match,
    match_batch,
    nms,
    xyxy_to_cxcywh,
)
from dsod_core.errors import ConfigError
from tests.box_reference import (
    cxcywh_to_xyxy_np,
    greedy_nms,
    iou_matrix,
    match_caffe,
    prior_box_caffe,
)

DSOD300_MAPS = [38, 19, 10, 5, 3, 2]


# ---------------------------------------------------------------- default boxes


@pytest.mark.parametrize(
    "dataset,mins,maxs",
    [
        ("voc", [30, 60, 111, 162, 213, 264], [60, 111, 162, 213, 264, 315]),
        ("coco", [21, 45, 99, 153, 207, 261], [45, 99, 153, 207, 261, 315]),
    ],
)
def test_dsod300_matches_caffe_prior_box(dataset, mins, maxs):
    got = default_boxes(DSOD300_MAPS, 300, "dsod300", dataset)
    ratios = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    steps = [8, 16, 32, 64, 100, 300]
    ref = []
    for f, mn, mx, r, st in zip(DSOD300_MAPS, mins, maxs, ratios, steps):
        ref += prior_box_caffe(f, 300, mn, mx, r, st)
    assert got.shape == (8744, 4)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), np.array(ref), rtol=1e-6, atol=1e-7)


def test_dsod300_hand_checked_values_and_quirk():
    b = default_boxes(DSOD300_MAPS, 300, "dsod300") * 300  # pixels
    s2 = math.sqrt(2.0)
    expected_first = [
        [4, 4, 30, 30],
        [4, 4, math.sqrt(30 * 60), math.sqrt(30 * 60)],
        [4, 4, 30 * s2, 30 / s2],
        [4, 4, 30 / s2, 30 * s2],
        [12, 4, 30, 30],  # next column of the same row
    ]
    np.testing.assert_allclose(b[:5].numpy(), np.array(expected_first), rtol=1e-5)
    assert boxes_per_location() == [4, 6, 6, 6, 4, 4]
    counts = [f * f * a for f, a in zip(DSOD300_MAPS, boxes_per_location())]
    assert sum(counts) == 8744
    # Second map starts after 38*38*4 boxes: centre (8, 8), min size 60, ratios 2, 3.
    start = counts[0]
    np.testing.assert_allclose(
        b[start + 4].numpy(), [8, 8, 60 * math.sqrt(3), 60 / math.sqrt(3)], rtol=1e-5
    )
    # Step-300 quirk on the 2x2 map: centres at 150 and 450 px, three of four outside.
    last = b[-16:].reshape(4, 4, 4)[:, 0, :2]
    np.testing.assert_allclose(
        last.numpy(), [[150, 150], [450, 150], [150, 450], [450, 450]], rtol=1e-6
    )
    outside = ((last > 300).any(dim=1)).sum().item()
    assert outside == 3
    # No clipping: the largest boxes extend beyond the image.
    assert (cxcywh_to_xyxy(b) < 0).any() and (cxcywh_to_xyxy(b) > 300).any()


@pytest.mark.parametrize(
    "maps,size",
    [
        ([38, 19, 10, 5, 3, 2], 300),
        ([40, 20, 10, 5, 3, 1], 320),
        ([16, 8, 4], 128),
        ([7], 64),
        ([64, 32, 16, 8, 4, 2, 1], 512),
    ],
)
def test_generic_layout_centres_inside_and_counts(maps, size):
    b = default_boxes(maps, size, "generic")
    per_loc = boxes_per_location("generic", len(maps))
    assert b.shape[0] == sum(f * f * a for f, a in zip(maps, per_loc))
    assert (b[:, :2] > 0).all() and (b[:, :2] < 1).all()
    # Centres are the pixel-grid centres of each map: (i + 0.5) / f.
    i0 = 0
    for f, a in zip(maps, per_loc):
        blk = b[i0 : i0 + f * f * a].reshape(f, f, a, 4)
        np.testing.assert_allclose(blk[0, :, 0, 0].numpy(), (np.arange(f) + 0.5) / f, rtol=1e-6)
        np.testing.assert_allclose(blk[:, 0, 0, 1].numpy(), (np.arange(f) + 0.5) / f, rtol=1e-6)
        i0 += f * f * a


def test_generic_sizes_follow_spec_fractions():
    # With six maps the generic sizes are the spec's fractions of 300.
    b = default_boxes([10, 8, 6, 4, 2, 1], 200, "generic")
    per_loc = boxes_per_location("generic", 6)
    mins = [30, 60, 111, 162, 213, 264]
    maxs = [60, 111, 162, 213, 264, 315]
    i0 = 0
    for f, a, mn, mx in zip([10, 8, 6, 4, 2, 1], per_loc, mins, maxs):
        np.testing.assert_allclose(b[i0, 2:].numpy(), [mn / 300, mn / 300], rtol=1e-6)
        np.testing.assert_allclose(b[i0 + 1, 2].item(), math.sqrt(mn * mx) / 300, rtol=1e-6)
        i0 += f * f * a
    # With three maps: interpolated at 0, 2, 4, 6 of the 7 break points.
    b3 = default_boxes([4, 2, 1], 100, "generic")
    knots = [30 / 300, 111 / 300, 213 / 300, 315 / 300]
    i0 = 0
    for k, (f, a) in enumerate(zip([4, 2, 1], boxes_per_location("generic", 3))):
        np.testing.assert_allclose(b3[i0, 2].item(), knots[k], rtol=1e-6)
        np.testing.assert_allclose(
            b3[i0 + 1, 2].item(), math.sqrt(knots[k] * knots[k + 1]), rtol=1e-6
        )
        i0 += f * f * a


def _network_maps(size: int) -> list[int]:
    """Source-map sides of the DSOD network at ``size`` px, from the spec's layer arithmetic
    (3×3/2 pad 1 conv, then ceil-mode 2×2/2 pools: stem, transition 1, and five halvings)."""
    s = math.ceil(((size - 1) // 2 + 1) / 2)  # stem
    maps = [math.ceil(s / 2)]  # transition 1: source 1
    for _ in range(5):
        maps.append(math.ceil(maps[-1] / 2))
    return maps


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_auto_layout_is_dsod300_bit_for_bit_at_300(dataset):
    auto = default_boxes(DSOD300_MAPS, 300, "auto", dataset)
    assert auto.shape == (8744, 4)
    assert torch.equal(auto, default_boxes(DSOD300_MAPS, 300, "dsod300", dataset))
    assert torch.equal(default_boxes(DSOD300_MAPS, 300, dataset=dataset), auto)  # the default
    assert boxes_per_location("auto") == boxes_per_location("dsod300") == [4, 6, 6, 6, 4, 4]
    # Elsewhere it is the generic layout (the same sizes as fractions, steps image / map).
    maps = _network_maps(128)
    torch.testing.assert_close(
        default_boxes(maps, 128, "auto", dataset),
        default_boxes(maps, 128, "generic", dataset),
        rtol=0,
        atol=0,
    )


# The largest box of every layout with the spec's six maps: the aspect-2 box of the last map,
# side 264·√2 px at 300, and the sqrt(264·315) square, area 264·315 px² at 300.
LARGEST_SIDE = 264 * math.sqrt(2.0) / 300  # 1.2445
LARGEST_SQUARE = math.sqrt(264 * 315) / 300  # 0.9613
LARGEST_AREA = 264 * 315 / 300**2  # 0.924


@pytest.mark.parametrize("size", [64, 96, 128, 300, 512])
def test_auto_layout_fits_the_image_at_any_size(size):
    maps = _network_maps(size)
    if size == 300:
        assert maps == DSOD300_MAPS
    b = default_boxes(maps, size)  # the default layout, "auto"
    per_loc = boxes_per_location("auto", 6)
    assert per_loc == [4, 6, 6, 6, 4, 4]
    assert b.shape[0] == sum(f * f * a for f, a in zip(maps, per_loc))
    # Box sizes are the same fractions of the image at every input size; no box exceeds the
    # image area; the squares of sqrt(min·max) stay within the spec's max size, 315/300 = 1.05.
    np.testing.assert_allclose(b[:, 2:].max().item(), LARGEST_SIDE, rtol=1e-6)
    np.testing.assert_allclose((b[:, 2] * b[:, 3]).max().item(), LARGEST_AREA, rtol=1e-6)
    squares = b[:, 2] == b[:, 3]
    np.testing.assert_allclose(b[squares, 2].max().item(), LARGEST_SQUARE, rtol=1e-6)
    assert b[squares, 2].max() <= 1.05
    np.testing.assert_allclose(b[squares, 2].min().item(), 30 / 300, rtol=1e-6)
    centres = b[:, :2]
    assert (centres > 0).all()
    if size != 300:
        assert (centres < 1).all()
        return
    # At 300 "auto" is dsod300, whose steps do not tile 300 px: centres of the 38x38 map's last
    # row/column lie on the border (37.5 * 8 = 300 px), the 10x10 map's at 9.5 * 32 = 304 px,
    # and three of the 2x2 map's four centres outside (step 300, the documented quirk).
    counts = [f * f * a for f, a in zip(maps, per_loc)]
    starts = np.cumsum([0] + counts)
    on_border = (centres == 1.0).any(dim=1)
    outside = (centres > 1.0).any(dim=1)
    expected_border = torch.zeros(len(b), dtype=torch.bool)
    expected_border[starts[0] : starts[1]] = (b[: counts[0], :2] * 300).round().eq(300).any(dim=1)
    assert int(expected_border.sum()) == (2 * 38 - 1) * 4
    assert torch.equal(on_border, expected_border)
    third = b[starts[2] : starts[3]].reshape(10, 10, 6, 4)
    np.testing.assert_allclose(third[9, 9, 0, :2].numpy(), [304 / 300, 304 / 300], rtol=1e-6)
    sixth = b[starts[5] :].reshape(2, 2, 4, 4)
    np.testing.assert_allclose(
        sixth[:, :, 0, :2].reshape(4, 2).numpy() * 300,
        [[150, 150], [450, 150], [150, 450], [450, 450]],
        rtol=1e-6,
    )
    expected_outside = torch.zeros(len(b), dtype=torch.bool)
    expected_outside[starts[2] : starts[3]] = (third[..., :2] > 1).any(-1).reshape(-1)
    expected_outside[starts[5] :] = (sixth[..., :2] > 1).any(-1).reshape(-1)
    assert int(expected_outside[starts[2] : starts[3]].sum()) == (2 * 10 - 1) * 6
    assert int(expected_outside[starts[5] :].sum()) == 3 * 4
    assert torch.equal(outside, expected_outside)


def test_dsod300_layout_refuses_other_input_sizes():
    # Its absolute 300-px sizes would give a smallest box of 30/96 of the image at 96 px and
    # a largest of 3.9 times it; "auto" is the layout for those sizes.
    for size in (64, 96, 128, 512):
        with pytest.raises(ConfigError, match=r"prior_layout 'dsod300'.*input_size.*'auto'"):
            default_boxes(_network_maps(size), size, "dsod300")
    # The generic layout stays available at every size, 300 included.
    generic = default_boxes(DSOD300_MAPS, 300, "generic")
    assert generic.shape == (8744, 4)
    assert not torch.equal(generic, default_boxes(DSOD300_MAPS, 300, "dsod300"))
    assert (generic[:, :2] < 1).all()


def test_prior_config_errors():
    with pytest.raises(ConfigError):
        boxes_per_location("ssd512")
    with pytest.raises(ConfigError):
        boxes_per_location("dsod300", 5)
    with pytest.raises(ConfigError):
        default_boxes([38, 19, 10, 5, 3], 300, "dsod300")
    # "auto" with other maps than DSOD300's is the generic layout, even at 300 px.
    torch.testing.assert_close(
        default_boxes([38, 19, 10, 5, 3], 300, "auto"),
        default_boxes([38, 19, 10, 5, 3], 300, "generic"),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ConfigError):
        default_boxes(DSOD300_MAPS, 300, "dsod300", "kitti")
    with pytest.raises(ConfigError):
        default_boxes([4, 0], 300, "generic")


# ---------------------------------------------------------------- IoU and coding


def _random_xyxy(rng, n, scale=1.0, degenerate=0.0):
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(0.01 * scale, 0.5 * scale, (n, 2))
    wh[rng.random(n) < degenerate, rng.integers(0, 2)] = 0.0
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_box_iou_matches_loop_reference():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = _random_xyxy(rng, int(rng.integers(0, 12)), 10.0, degenerate=0.2)
        b = _random_xyxy(rng, int(rng.integers(0, 12)), 10.0, degenerate=0.2)
        got = box_iou(torch.from_numpy(a), torch.from_numpy(b))
        assert got.shape == (len(a), len(b))
        np.testing.assert_allclose(got.numpy(), iou_matrix(a, b), rtol=1e-5, atol=1e-6)
    # Identical boxes: 1; touching boxes: 0; two degenerate boxes: 0, not NaN.
    t = torch.tensor([[0.0, 0, 2, 2], [2, 0, 4, 2], [1, 1, 1, 1]])
    got = box_iou(t, t)
    np.testing.assert_allclose(got.numpy(), [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_box_format_round_trip():
    rng = np.random.default_rng(2)
    b = torch.from_numpy(_random_xyxy(rng, 50))
    c = xyxy_to_cxcywh(b)
    np.testing.assert_allclose(c[:, 2].numpy(), (b[:, 2] - b[:, 0]).numpy(), rtol=1e-6)
    torch.testing.assert_close(cxcywh_to_xyxy(c), b, rtol=1e-6, atol=1e-6)


def test_encode_formula_and_round_trip():
    rng = np.random.default_rng(3)
    priors = torch.from_numpy(
        np.concatenate([rng.uniform(0, 1, (40, 2)), rng.uniform(0.05, 0.9, (40, 2))], 1)
    ).float()
    gt = torch.from_numpy(_random_xyxy(rng, 40))
    enc = encode(gt, priors, (0.1, 0.2))
    g = gt.double().numpy()
    p = priors.double().numpy()
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    ref = np.stack(
        [
            ((g[:, 0] + g[:, 2]) / 2 - p[:, 0]) / (0.1 * p[:, 2]),
            ((g[:, 1] + g[:, 3]) / 2 - p[:, 1]) / (0.1 * p[:, 3]),
            np.log(gw / p[:, 2]) / 0.2,
            np.log(gh / p[:, 3]) / 0.2,
        ],
        1,
    )
    np.testing.assert_allclose(enc.numpy(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(decode(enc, priors), gt, rtol=1e-5, atol=1e-5)
    # Batched decode with leading dims, and zeros decode to the priors themselves.
    batched = decode(torch.zeros(3, 40, 4), priors)
    torch.testing.assert_close(batched[1], cxcywh_to_xyxy(priors))


# ---------------------------------------------------------------- matching


def _random_priors(rng, p):
    c = rng.uniform(0, 1, (p, 2))
    wh = rng.uniform(0.05, 0.6, (p, 2))
    return np.concatenate([c, wh], 1).astype(np.float32)


def _check_match(gt, labels, priors, thr=0.5):
    ref = match_caffe(gt, cxcywh_to_xyxy_np(priors), thr)
    mb, ml = match(torch.from_numpy(gt), torch.from_numpy(labels), torch.from_numpy(priors), thr)
    ref_labels = np.array([labels[j] if j >= 0 else 0 for j in ref], dtype=np.int64)
    np.testing.assert_array_equal(ml.numpy(), ref_labels)
    pri_xyxy = cxcywh_to_xyxy_np(priors)
    ref_boxes = np.array([gt[j] if j >= 0 else pri_xyxy[i] for i, j in enumerate(ref)])
    np.testing.assert_allclose(mb.numpy(), ref_boxes.reshape(-1, 4), rtol=1e-6, atol=1e-6)
    return ref


def test_match_matches_caffe_reference_random():
    rng = np.random.default_rng(4)
    total_pos = 0
    for case in range(60):
        p = int(rng.integers(1, 60))
        n = int(rng.integers(0, 8))
        priors = _random_priors(rng, p)
        gt = _random_xyxy(rng, n, 1.0, degenerate=0.15 if case % 3 == 0 else 0.0)
        labels = rng.integers(1, 6, n).astype(np.int64)
        if case % 4 == 1 and n >= 2:
            gt[1] = gt[0]  # duplicate ground truths: a tie in every IoU
        if case % 5 == 2 and p >= 3:
            priors[2] = priors[0]  # duplicate priors
        ref = _check_match(gt, labels, priors)
        total_pos += sum(j >= 0 for j in ref)
    assert total_pos > 50  # the random cases do exercise positives


def test_match_bipartite_resolves_conflicts_greedily():
    # Two ground truths both prefer prior 0; the pair of highest IoU wins it, the other gt gets
    # its next best prior.
    priors = np.array(
        [[0.5, 0.5, 0.4, 0.4], [0.3, 0.5, 0.4, 0.4], [0.9, 0.9, 0.1, 0.1]], np.float32
    )
    gt = np.array([[0.3, 0.3, 0.7, 0.7], [0.25, 0.3, 0.6, 0.7]], np.float32)
    labels = np.array([3, 5], np.int64)
    ref = _check_match(gt, labels, priors)
    assert ref[0] == 0 and ref[1] == 1 and ref[2] == -1


def test_match_empty_and_threshold_boundary():
    # Binary fractions so the IoU below is exactly 0.5 in float32.
    priors = torch.tensor([[0.5, 0.5, 0.25, 0.25], [0.5, 0.5, 0.5, 0.25]])
    boxes, labels = match(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), priors)
    assert labels.tolist() == [0, 0]
    torch.testing.assert_close(boxes, cxcywh_to_xyxy(priors))
    # gt == prior 1 (IoU 1 via bipartite); prior 0 has IoU exactly 0.5 with it -> positive (>=).
    gt = cxcywh_to_xyxy(priors[1:2])
    _, labels = match(gt, torch.tensor([7]), priors)
    assert labels.tolist() == [7, 7]
    _, labels = match(gt, torch.tensor([7]), priors, iou_threshold=0.51)
    assert labels.tolist() == [0, 7]


def test_match_batch_equals_per_image_match():
    rng = np.random.default_rng(5)
    priors = torch.from_numpy(_random_priors(rng, 80))
    ns = [3, 0, 6, 1]
    gts = [torch.from_numpy(_random_xyxy(rng, n)) for n in ns]
    labs = [torch.from_numpy(rng.integers(1, 4, n)) for n in ns]
    nmax = max(ns)
    pb = torch.zeros(len(ns), nmax, 4)
    pl = torch.zeros(len(ns), nmax, dtype=torch.long)
    pv = torch.zeros(len(ns), nmax, dtype=torch.bool)
    for i, n in enumerate(ns):
        # Padding rows hold a box overlapping everything: they must still be ignored.
        pb[i] = torch.tensor([0.0, 0.0, 1.0, 1.0])
        pb[i, :n], pl[i, :n], pv[i, :n] = gts[i], labs[i], True
    boxes, labels, idx = match_batch(pb, pl, pv, priors)
    for i in range(len(ns)):
        b1, l1 = match(gts[i], labs[i], priors)
        torch.testing.assert_close(boxes[i], b1)
        assert torch.equal(labels[i], l1)
        if ns[i]:
            assert int(idx[i].max()) < ns[i]
        else:
            assert bool((idx[i] == -1).all())


# ---------------------------------------------------------------- NMS


def _random_nms_case(rng, n, tie_scores=False, dup=False):
    boxes = _random_xyxy(rng, n, 10.0)
    if dup and n >= 4:
        boxes[rng.integers(0, n, n // 3)] = boxes[0]
    if tie_scores:
        scores = rng.integers(0, 4, n).astype(np.float32)
    else:
        scores = rng.random(n).astype(np.float32)
    return boxes, scores


def test_nms_equals_greedy_reference_on_random_cases():
    rng = np.random.default_rng(6)
    for case in range(300):
        n = int(rng.integers(0, 40))
        boxes, scores = _random_nms_case(rng, n, tie_scores=case % 3 == 0, dup=case % 4 == 0)
        thr = float(rng.choice([0.0, 0.3, 0.45, 0.7]))
        got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr)
        assert got.dtype == torch.int64
        assert got.tolist() == greedy_nms(boxes, scores, thr), f"case {case}"


def test_nms_across_blocks_equals_reference():
    # More boxes than one 256-box block, with ties: the across-block path of the public API.
    rng = np.random.default_rng(9)
    boxes, scores = _random_nms_case(rng, 600, tie_scores=True, dup=True)
    scores = scores + rng.integers(0, 3, 600).astype(np.float32) * 0.25
    got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.45)
    assert got.tolist() == greedy_nms(boxes, scores, 0.45)


def test_nms_edge_cases():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    same = torch.tensor([[0.0, 0, 1, 1]] * 5)
    assert nms(same, torch.tensor([0.1, 0.9, 0.9, 0.3, 0.9]), 0.5).tolist() == [1]
    # Identical boxes never suppress at threshold 1 (IoU is not > 1): all kept, by score.
    assert nms(same, torch.tensor([0.1, 0.9, 0.8, 0.3, 0.7]), 1.0).tolist() == [1, 2, 4, 3, 0]
    # A chain: 0 suppresses 1, so 2 (overlapping only 1) survives.
    chain = torch.tensor([[0.0, 0, 2, 1], [1.0, 0, 3, 1], [2.0, 0, 4, 1]])
    assert nms(chain, torch.tensor([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]


def test_greedy_nms_mask_blocks_and_leading_dims():
    # Small blocks exercise the across-block suppression path; leading dims are independent.
    rng = np.random.default_rng(7)
    k, n = 4, 70
    boxes = np.stack([_random_xyxy(rng, n, 6.0) for _ in range(k)])
    valid = rng.random((k, n)) < 0.8
    ref = np.zeros((k, n), dtype=bool)
    for c in range(k):
        idx = np.flatnonzero(valid[c])
        # Scores decreasing with position: the sorted-input contract of greedy_nms_mask.
        kept = greedy_nms(boxes[c, idx], -idx.astype(np.float64), 0.4)
        ref[c, idx[kept]] = True
    for block in (1, 3, 16, 256):
        got = greedy_nms_mask(
            torch.from_numpy(boxes), torch.from_numpy(valid), 0.4, block_size=block
        )
        np.testing.assert_array_equal(got.numpy(), ref)


def test_batched_nms_equals_per_class_reference():
    rng = np.random.default_rng(8)
    for case in range(100):
        n = int(rng.integers(0, 50))
        boxes, scores = _random_nms_case(rng, n, tie_scores=case % 2 == 0, dup=case % 3 == 0)
        if case % 2:
            idxs = rng.integers(0, 3, n)
        else:  # unbalanced classes with sparse ids: exercises the flat same-class-mask path
            idxs = rng.choice([0, 7, 1000], n, p=[0.9, 0.05, 0.05])
        kept = []
        for c in np.unique(idxs):
            members = np.flatnonzero(idxs == c)
            kept += [members[i] for i in greedy_nms(boxes[members], scores[members], 0.5)]
        ref = sorted(kept, key=lambda i: (-float(scores[i]), i))
        got = batched_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs), 0.5
        )
        assert got.tolist() == [int(i) for i in ref], f"case {case}"
