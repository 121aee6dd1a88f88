"""Building blocks of the scratch-vs-fine-tuned study: the paired cluster bootstrap and nested
unit-grouped training subsets."""

from __future__ import annotations

import numpy as np
import pytest

from dsod_core.data.subsets import nested_unit_subsets
from dsod_core.metrics.bootstrap import describe, paired_bootstrap


def _mean_of(values):
    values = np.asarray(values, dtype=np.float64)
    return lambda positions: float(values[positions].mean())


def test_identical_and_shifted_detectors_have_exact_intervals():
    rng = np.random.default_rng(0)
    a = rng.normal(size=60)
    units = np.repeat(np.arange(20), 3)
    same = paired_bootstrap(units, _mean_of(a), _mean_of(a), replicates=200)
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0] and same["contains_zero"]
    shifted = paired_bootstrap(units, _mean_of(a), _mean_of(a + 0.1), replicates=200)
    assert shifted["diff"] == pytest.approx(0.1)
    assert shifted["ci"] == pytest.approx([0.1, 0.1])
    assert not shifted["contains_zero"] and "fine-tuned is better" in describe(shifted)
    assert shifted["n_units"] == 20


def test_interval_matches_the_normal_theory_answer():
    # 400 independent units with paired differences N(0.05, 0.2): the 95% interval of the mean
    # difference is mean ± 1.96 · sd / sqrt(400) (to within bootstrap noise).
    rng = np.random.default_rng(1)
    a = rng.normal(size=400)
    d = rng.normal(0.05, 0.2, size=400)
    res = paired_bootstrap(np.arange(400), _mean_of(a), _mean_of(a + d), replicates=4000)
    half = 1.96 * d.std(ddof=1) / np.sqrt(400)
    assert res["diff"] == pytest.approx(d.mean())
    assert res["ci"][0] == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert res["ci"][1] == pytest.approx(d.mean() + half, abs=0.15 * half)


def test_units_not_images_are_the_resampling_level():
    # Each unit holds 10 identical images: resampling units gives the interval of one image
    # per unit; treating the 10 copies as independent would shrink it by about sqrt(10).
    rng = np.random.default_rng(2)
    per_unit = rng.normal(0.0, 1.0, size=50)
    a = np.zeros(500)
    b = np.repeat(per_unit, 10)
    grouped = paired_bootstrap(np.repeat(np.arange(50), 10), _mean_of(a), _mean_of(b), seed=3)
    one_each = paired_bootstrap(np.arange(50), _mean_of(np.zeros(50)), _mean_of(per_unit), seed=3)
    naive = paired_bootstrap(np.arange(500), _mean_of(a), _mean_of(b), seed=3)
    assert grouped["ci"] == pytest.approx(one_each["ci"])
    width = lambda r: r["ci"][1] - r["ci"][0]  # noqa: E731
    assert width(naive) < 0.5 * width(grouped)
    assert grouped["contains_zero"] and "contains 0" in describe(grouped)


def test_nested_unit_subsets():
    units = [f"vol{v}" for v in range(10) for _ in range(7)]  # 10 volumes of 7 slices
    subsets = nested_unit_subsets(units, [0.25, 0.5, 1.0], seed=4)
    small, half, full = subsets[0.25], subsets[0.5], subsets[1.0]
    assert set(small) <= set(half) <= set(full) and len(full) == 70
    for subset, volumes in ((small, 3), (half, 5)):  # ceil(0.25 * 10) = 3 volumes
        chosen = {units[i] for i in subset}
        assert len(chosen) == volumes and len(subset) == 7 * volumes  # whole volumes only
    again = nested_unit_subsets(units, [0.5], seed=4)[0.5]
    assert np.array_equal(again, half)
    other = nested_unit_subsets(units, [0.5], seed=5)[0.5]
    assert not np.array_equal(other, half)
    with pytest.raises(ValueError, match="train fractions"):
        nested_unit_subsets(units, [0.0])


def _random_detection_set(rng, n_images, num_classes=2):
    gts, dets = [], []
    for _ in range(n_images):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 40, size=(n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 20, size=(n, 2))], axis=1)
        labels = rng.integers(1, num_classes + 1, size=n)
        gts.append({"boxes": boxes, "labels": labels, "difficult": rng.random(n) < 0.15})
        # Detections: jittered copies of some ground truths (hits or near misses) + clutter.
        keep = rng.random(n) < 0.8
        jitter = boxes[keep] + rng.normal(0, 3, size=(int(keep.sum()), 4))
        m = int(rng.integers(0, 4))
        cxy = rng.uniform(0, 40, size=(m, 2))
        clutter = np.concatenate([cxy, cxy + 10], axis=1)
        d_boxes = np.concatenate([jitter, clutter])
        d_labels = np.concatenate([labels[keep], rng.integers(1, num_classes + 1, size=m)])
        dets.append({"boxes": d_boxes, "labels": d_labels, "scores": rng.random(len(d_boxes))})
    return gts, dets


def test_resampled_voc_equals_scoring_the_multiset_again():
    from dsod_core.metrics.voc import ResampledVOC, evaluate_voc

    rng = np.random.default_rng(3)
    gts, dets = _random_detection_set(rng, 30)
    fast = ResampledVOC(gts, dets, 2)
    assert fast.map(np.ones(30)) == pytest.approx(evaluate_voc(gts, dets, 2)["map"], abs=1e-12)
    for _ in range(5):
        positions = rng.integers(0, 30, size=30)
        weights = np.bincount(positions, minlength=30)
        again = evaluate_voc([gts[i] for i in positions], [dets[i] for i in positions], 2)
        # Distinct random scores: no ties, so the weighted pass is exact.
        assert fast.map(weights) == pytest.approx(again["map"], abs=1e-12)
    with pytest.raises(ValueError, match="30 weights"):
        fast.map(np.ones(29))
    # The saved table (the evaluate stage's matches.npz) gives the same values.
    from dsod_core.metrics.voc import match_detections

    saved = ResampledVOC.from_matches(match_detections(gts, dets, 2))
    assert saved.map(weights) == fast.map(weights)


def test_seeds_are_paired_and_resampled():
    rng = np.random.default_rng(1)
    a = rng.normal(size=40)
    units = np.repeat(np.arange(20), 2)
    # Seed 0 shifts by 0.1, seed 1 by 0.3: the difference is their mean and every replicate
    # (the mean over 2 seeds drawn with replacement) lies in [0.1, 0.3].
    result = paired_bootstrap(
        units,
        [_mean_of(a), _mean_of(a)],
        [_mean_of(a + 0.1), _mean_of(a + 0.3)],
        replicates=400,
    )
    assert result["diff"] == pytest.approx(0.2)
    assert result["seed_diffs"] == pytest.approx([0.1, 0.3])
    assert result["n_seeds"] == 2
    low, high = result["ci"]
    assert 0.1 - 1e-12 <= low < 0.2 < high <= 0.3 + 1e-12
    # Seed spread makes the interval wider than a single seed's (which is a point here).
    with pytest.raises(ValueError, match="paired seeds"):
        paired_bootstrap(units, [_mean_of(a)], [_mean_of(a), _mean_of(a)])


# The report library (dsod_core.report.compare): exact output on tiny known inputs.


def _agg(dataset, init, source, mean, std, coco=None, fraction=1.0, images=10.0, seeds=2):
    return {"dataset": dataset, "modality": "m", "init": init, "source": source,
            "train_fraction": fraction, "train_images": images, "n_seeds": seeds,
            "map50_mean": mean, "map50_std": std, "coco_ap_mean": coco,
            "coco_ap_std": None}  # fmt: skip


def _diff(
    dataset,
    source,
    fraction,
    mean,
    low,
    high,
    self_transfer=False,
    against="scratch",
    primary=False,
    adjusted=None,
    p=0.2,
    p_holm=0.4,
    budget=(300.0, 100.0, 200.0),
):
    return {"dataset": dataset, "source": source, "train_fraction": fraction, "n_seeds": 2,
            "n_units": 7, "diff_mean": mean, "ci95": [low, high], "level": 0.95,
            "against": against, "primary": primary, "p": p,
            "p_holm": None if primary else p_holm,
            "ci_adjusted": list(adjusted or (low - 0.1, high + 0.1)),
            "budget": {"finetuned": budget[0], "against": budget[1],
                       "finetuned_source": budget[2]},
            "self_transfer": self_transfer, "statement": "S."}  # fmt: skip


def test_format_helpers_and_group_key():
    from dsod_core.report.compare import fmt_mean_std, group_key

    assert fmt_mean_std(0.5124, 0.0344) == "0.512 ± 0.034"
    assert fmt_mean_std(0.5, None) == "0.500"  # one seed: no spread
    assert fmt_mean_std(None, None) == "–"
    row = {"dataset": "ct", "init": "finetuned", "source": "rgb", "train_fraction": 0.5, "x": 1}
    assert group_key(row) == ("ct", "finetuned", "rgb", 0.5)


def test_aggregate_means_and_sample_std_over_seeds():
    from dsod_core.report.compare import aggregate

    def run(init, seed, map50, images):
        return {"dataset": "ct", "modality": "medical", "init": init, "source": None,
                "train_fraction": 1.0, "seed": seed, "map50": map50, "coco_ap": None,
                "train_images": images}  # fmt: skip

    rows = [run("scratch", 0, 0.5, 10), run("scratch", 1, 0.6, 12), run("pretrain", 0, 0.25, 8)]
    assert aggregate(rows) == [
        {"dataset": "ct", "modality": "medical", "init": "scratch", "source": None,
         "train_fraction": 1.0, "train_images": 11.0, "n_seeds": 2, "channels": None,
         "map50_mean": 0.55, "map50_std": 0.0707, "coco_ap_mean": None, "coco_ap_std": None,
         "image_passes_mean": None},
        {"dataset": "ct", "modality": "medical", "init": "pretrain", "source": None,
         "train_fraction": 1.0, "train_images": 8, "n_seeds": 1, "channels": None,
         "map50_mean": 0.25, "map50_std": None, "coco_ap_mean": None, "coco_ap_std": None,
         "image_passes_mean": None},
    ]  # fmt: skip


def test_transfer_matrix_of_known_differences():
    from dsod_core.report.compare import transfer_matrix

    differences = [
        _diff("ct", "rgb", 0.5, 0.3, 0.1, 0.5),  # not the largest fraction: not shown
        _diff("ct", "rgb", 1.0, 0.05, -0.02, 0.125, primary=True),
        _diff("ct", "depth", 1.0, -0.1, -0.2, 0.0, adjusted=(-0.3, 0.1)),
        _diff("depth", "depth", 1.0, 0.0, -0.01, 0.01, self_transfer=True),
    ]
    # the primary's own interval; every other one adjusted (marked *)
    assert transfer_matrix(differences) == (
        1.0,
        [
            "| target \\ source | rgb | depth |",
            "|---|---|---|",
            "| ct | +0.050 [-0.020, +0.125] | -0.100 [-0.300, +0.100]* |",
            "| depth | – | +0.000 [-0.110, +0.110]* (self) |",
        ],
    )
    # where the matched arm ran at the largest fraction, the matrix shows that comparison; a
    # source without one (an ImageNet checkpoint) keeps its scratch comparison, marked
    matched = [*differences, _diff("ct", "rgb", 1.0, -0.2, -0.4, 0.0, against="matched")]
    assert transfer_matrix(matched)[1][2] == (
        "| ct | -0.200 [-0.500, +0.100]* | -0.100 [-0.300, +0.100]* (vs scratch) |"
    )
    assert (
        transfer_matrix(matched)[1][3]
        == "| depth | – | +0.000 [-0.110, +0.110]* (self) (vs scratch) |"
    )
    assert transfer_matrix([]) == (None, ["| target \\ source |  |", "|---|"])


def test_markdown_of_a_tiny_report():
    from dsod_core.report.compare import markdown

    report = {
        "primary": {"target": "ct", "source": "rgb", "fraction": 1.0, "against": "matched"},
        "aggregates": [
            _agg("ct", "scratch", None, 0.5, 0.01, coco=0.25),
            _agg("ct", "matched", "rgb", 0.55, 0.02),
            _agg("ct", "finetuned", "rgb", 0.6, None, images=None, seeds=1),
        ],
        "differences": [
            _diff("ct", "rgb", 1.0, 0.1, -0.05, 0.2),
            _diff("ct", "rgb", 1.0, 0.05, -0.1, 0.2, against="matched", primary=True,
                  budget=(300.0, 304.0, 200.0)),
        ],
        "sources": [
            {"dataset": "rgb", "modality": "rgb", "map50": 0.8, "coco_ap": None, "seed": 0,
             "image_passes": 200, "train_seconds": 12.4},
        ],
    }  # fmt: skip
    expected = """# Scratch vs fine-tuned

VOC07 11-point mAP@0.5 and COCO AP@[.5:.95] on each target's test split, mean ± std over \
the training seeds. `finetuned` starts from a source model (first conv adapted to the \
channel count, new class head); `train fraction` is a nested subset of the train split \
drawn by whole independence units; `matched` is scratch trained for the image passes of \
source pretraining + fine-tuning. Intervals: a paired cluster bootstrap over the test \
set's independence units combined with a t term over the seeds (docs/study.md).

## Primary comparison

Declared in params before the runs: fine-tuned from rgb against compute-matched scratch on \
ct at train fraction 1.

- S.
- Budget: fine-tuned 300 (source 200 + own 100) vs matched scratch 304 image passes.

## Runs (mean over seeds)

| dataset | init | source | train fraction | train images | image passes | seeds | mAP@0.5 \
| COCO AP |
|---|---|---|---|---|---|---|---|---|
| ct | scratch | – | 1 | 10 | – | 2 | 0.500 ± 0.010 | 0.250 |
| ct | matched | rgb | 1 | 10 | – | 2 | 0.550 ± 0.020 | – |
| ct | finetuned | rgb | 1 | – | – | 1 | 0.600 | – |

## Fine-tuned − scratch arms (mAP@0.5)

`against`: `scratch` trains the target as long as fine-tuning does (fine-tuned also had \
the source's compute); `matched scratch` gets the same total image passes, source \
pretraining included. Every comparison but the primary is adjusted for multiplicity: Holm \
p and a Bonferroni 95% interval (marked *).

| dataset | source | fraction | against | image passes (fine-tuned / other) | seeds | \
units | difference | 95% CI | p | Holm p | adjusted CI |
|---|---|---|---|---|---|---|---|---|---|---|---|
| ct | rgb | 1 | scratch | 300 / 100 | 2 | 7 | +0.100 | [-0.050, +0.200] | 0.200 | 0.400 | \
[-0.150, +0.300]* |
| ct | rgb | 1 | matched scratch | 300 / 304 | 2 | 7 | +0.050 | [-0.100, +0.200] | 0.200 | \
– | primary |

- ct, fraction 1, against scratch: S.
- ct, fraction 1, against matched scratch: S.

## Transfer matrix (train fraction 1; fine-tuned − matched scratch mAP@0.5; * adjusted)

| target \\ source | rgb |
|---|---|
| ct | +0.050 [-0.100, +0.200] |

## Source models on their own test sets

| dataset | source seed | modality | mAP@0.5 | COCO AP | image passes | train s |
|---|---|---|---|---|---|---|
| rgb | 0 | rgb | 0.800 | – | 200 | 12 |

## Data efficiency and compute

![ct](plots/ct.png)
"""
    assert markdown(report, {"ct": "plots/ct.png"}) == expected


def test_summary_is_flat_at_the_largest_fraction():
    from dsod_core.report.compare import summary

    report = {
        "aggregates": [
            _agg("ct", "scratch", None, 0.4, None, fraction=0.5),
            _agg("ct", "scratch", None, 0.5, 0.01, coco=0.25),
            _agg("ct", "matched", "rgb", 0.55, 0.03),
            _agg("ct", "finetuned", "rgb", 0.6, 0.02),
        ],
        "differences": [
            _diff("ct", "rgb", 0.5, 0.3, 0.1, 0.5),
            _diff("ct", "rgb", 1.0, 0.1, -0.05, 0.2, adjusted=(-0.15, 0.3)),
            _diff("ct", "rgb", 1.0, 0.05, -0.1, 0.2, against="matched", primary=True),
        ],
        # two source seeds: their mean
        "sources": [
            {"dataset": "rgb", "map50": 0.812345, "coco_ap": None},
            {"dataset": "rgb", "map50": 0.8, "coco_ap": None},
        ],
    }
    primary = {"map50": 0.05, "ci_low": -0.1, "ci_high": 0.2, "p": 0.2}
    assert summary(report) == {
        "rgb": {"source": {"map50": 0.8062, "coco_ap": None, "source_seeds": 2}},
        "ct": {
            "scratch": {"map50": 0.5, "map50_std": 0.01, "coco_ap": 0.25, "image_passes": None},
            "matched_rgb": {"map50": 0.55, "map50_std": 0.03, "coco_ap": None,
                            "image_passes": None},
            "finetuned_from_rgb": {"map50": 0.6, "map50_std": 0.02, "coco_ap": None,
                                   "image_passes": None},
            "difference_from_rgb": {"map50": 0.1, "ci_low": -0.05, "ci_high": 0.2, "p": 0.2,
                                    "p_holm": 0.4, "ci_low_adjusted": -0.15,
                                    "ci_high_adjusted": 0.3},
            "difference_matched_rgb": primary,
            "primary": primary,
        },
    }  # fmt: skip


def test_splice_section_replaces_between_markers_or_appends():
    from dsod_core.report.study import BEGIN, END, splice_section

    section = f"{BEGIN}\nnew\n{END}"
    assert splice_section("# Page\n\ntext\n\n\n", section) == f"# Page\n\ntext\n\n{section}\n"
    old = f"# Page\n\n{BEGIN}\nold\n{END}\n\nafter\n"
    assert splice_section(old, section) == f"# Page\n\n{section}\n\nafter\n"
    assert splice_section("", section) == f"\n\n{section}\n"


# The run's record (dsod_core.engine.provenance): written by train, read by evaluate.


def test_run_provenance_round_trip_keeps_the_config_json_format(tmp_path):
    import json

    from dsod_core.engine.config import TrainConfig
    from dsod_core.engine.provenance import RUN_CONFIG, RunProvenance
    from dsod_core.errors import CheckpointError
    from dsod_core.io import write_json

    config = TrainConfig(seed=3, train_fraction=0.5, store="s.h5", out_dir="models/x")
    record = RunProvenance.of_training(config, "ct", "finetuned", "rgb", 40, 6)
    assert (record.seed, record.train_fraction) == (3, 0.5)
    path = record.write(tmp_path)
    assert path == tmp_path / RUN_CONFIG == tmp_path / "config.json"
    # The file as the train stage has always written it: the settings, then the record.
    old = tmp_path / "old.json"
    write_json(
        old,
        {**config.to_dict(), "dataset": "ct", "init": "finetuned", "source": "rgb",
         "train_images": 40, "train_units": 6, "budget": {}},
    )  # fmt: skip
    assert path.read_bytes() == old.read_bytes()
    again = RunProvenance.read(tmp_path)
    assert again == record and again.to_dict() == json.loads(path.read_text())
    # A minimal record (what tests and hand-made runs write) reads with defaults.
    (tmp_path / RUN_CONFIG).write_text(json.dumps({"dataset": "ct", "init": "scratch"}))
    bare = RunProvenance.read(tmp_path)
    assert (bare.source, bare.seed, bare.train_fraction, bare.train_images) == (
        None, None, 1.0, None
    )  # fmt: skip
    (tmp_path / RUN_CONFIG).write_text(json.dumps({"dataset": "ct"}))
    with pytest.raises(CheckpointError, match="no 'init'"):
        RunProvenance.read(tmp_path)
    with pytest.raises(CheckpointError, match="no config.json"):
        RunProvenance.read(tmp_path / "nothing")
