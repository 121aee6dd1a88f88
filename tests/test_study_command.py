"""The study command's parts that need no training (pipelines/study.py): the study file's
checks, the -S overrides DVC receives, the params they produce, and the Results section
(assembled by dsod_core.report.study from the variants' files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dsod_core.errors import ConfigError
from dsod_core.report.study import BEGIN
from pipelines import study as st
from pipelines._common import load_params

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_projects_study_file_is_valid_for_every_variant():
    study = st.load_study(ROOT / "study.yaml")
    params = load_params(ROOT / "params.yaml")
    assert list(study["variants"]) == ["batch_norm", "group_norm"]
    for v in study["variants"]:
        candidate = st.apply_settings(params, st.settings_of(study, v))
        st.validate_params(candidate, "study", datasets=[])
        axes = st.study_axes(candidate)
        assert len(axes["seeds"]) >= 3 and len(axes["train_fractions"]) >= 3
        # each fine-tuned seed from its own source model (source variance in the intervals)
        assert axes["source_seeds"] == axes["seeds"]
    gn = st.apply_settings(params, st.settings_of(study, "group_norm"))
    assert gn["model"]["overrides"]["norm"] == "group"
    assert params["model"]["overrides"] == {}  # the original is not changed


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"variants": {}}, "variants must be a non-empty mapping"),
        ({"variants": {"a": {"model": {"norm": "group"}}}}, "name nested keys with dots"),
        ({"variants": {"a b": {}}}, "a variant name is a word"),
        ({"name": "x/y", "variants": {"a": {}}}, "name must be a word"),
        ({"set": [1], "variants": {"a": {}}}, "set must be a mapping"),
    ],
)
def test_bad_study_files_name_the_problem(tmp_path, doc, message):
    path = _write(tmp_path, doc)
    with pytest.raises(ConfigError, match=message) as info:
        st.load_study(path)
    assert str(path) in str(info.value)


def test_overrides_are_hydra_add_or_override_with_json_values():
    args = st.overrides({"seeds": [0, 1], "sources": ["a", "b"], "model.overrides.norm": "group"})
    assert args == [
        "-S",
        "++seeds=[0,1]",
        "-S",
        '++sources=["a","b"]',
        "-S",
        '++model.overrides.norm="group"',
    ]


def test_apply_settings_refuses_a_key_below_a_value():
    with pytest.raises(ConfigError, match="'seed' is not a mapping"):
        st.apply_settings({"seed": 0}, {"seed.x": 1})


def test_dry_run_validates_before_running(tmp_path, capsys):
    bad = _write(tmp_path, {"variants": {"a": {"seeds": [0, 0]}}})
    with pytest.raises(SystemExit) as info:
        st.main(["--study", str(bad), "--params", str(ROOT / "params.yaml"), "--dry-run"])
    assert info.value.code == 1
    assert "seeds has repeats" in capsys.readouterr().err
    good = _write(tmp_path, {"set": {"seeds": [3]}, "variants": {"a": {}, "b": {"seed": 2}}})
    with pytest.raises(SystemExit) as info:
        st.main(["--study", str(good), "--params", str(ROOT / "params.yaml"), "--dry-run"])
    assert info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "dvc exp run -n study-a -S ++seeds=[3]",
        "dvc exp run -n study-b -S ++seeds=[3] -S ++seed=2",
    ]


def _terms(diff: float) -> dict:
    return {"diff": diff, "test_se": 0.04, "test_df": 6, "seed_se": 0.02, "seed_df": 1}


def _report(diff: float, scratch: float) -> dict:
    agg = [
        {"dataset": "d", "init": "scratch", "source": None, "train_fraction": 1.0,
         "train_images": 10, "n_seeds": 2, "map50_mean": scratch, "map50_std": 0.01},
        {"dataset": "d", "init": "finetuned", "source": "s", "train_fraction": 1.0,
         "train_images": 10, "n_seeds": 2, "map50_mean": scratch + diff, "map50_std": 0.02},
    ]  # fmt: skip
    differences = [
        {"dataset": "d", "source": "s", "train_fraction": 1.0, "against": "scratch",
         "n_seeds": 2, "n_units": 7, "diff_mean": diff, "ci95": [diff - 0.1, diff + 0.1],
         "level": 0.95, "terms": _terms(diff), "self_transfer": False,
         "budget": {"finetuned": 300.0, "against": 100.0, "finetuned_source": 200.0},
         "statement": "words"},
    ]  # fmt: skip
    primary = {"target": "d", "source": "s", "fraction": 1.0, "against": "scratch"}
    return {"runs": [], "aggregates": agg, "differences": differences, "primary": primary,
            "sources": []}  # fmt: skip


def test_results_section_tables_and_in_place_rewrite(tmp_path):
    out = tmp_path / "docs/study"
    for v, (diff, scratch) in {"bn": (0.05, 0.6), "gn": (-0.02, 0.7)}.items():
        (out / v / "data_efficiency").mkdir(parents=True)
        (out / v / "compare.json").write_text(json.dumps(_report(diff, scratch)))
        run = {"seconds": 120.0, "date": "2026-01-01T00:00:00", "machine": "cpu, 2 cores",
               "settings": {"seeds": [0, 1]}}  # fmt: skip
        (out / v / "run.json").write_text(json.dumps(run))
    section = st.results_section(out, ["bn", "gn"], tmp_path / "docs")
    from dsod_core.metrics.bootstrap import interval_at, p_value

    # one table of every variant's comparisons: the first variant's declared primary keeps its
    # own interval; the other variant's is adjusted over the whole study (m = 1 here)
    p_bn, p_gn = p_value(_terms(0.05)), p_value(_terms(-0.02))
    assert (
        f"| bn | d | s | 1 | scratch | 300 / 100 | 2 | 7 | +0.050 | [-0.050, +0.150] "
        f"| {p_bn:.3f} | primary |" in section
    )
    low, high = interval_at(_terms(-0.02), 0.95)
    assert (
        f"| gn | d | s | 1 | scratch | 300 / 100 | 2 | 7 | -0.020 | [{low:+.3f}, {high:+.3f}]* "
        f"| {p_gn:.3f} | {p_gn:.3f} |" in section
    )
    assert "The declared primary comparison, fine-tuned from s against scratch on d" in section
    assert "| d | scratch | – | 1 | 0.600 ± 0.010 | 0.700 ± 0.010 |" in section
    assert "bn 2 min, gn 2 min (4 min in all" in section
    doc = tmp_path / "docs/study.md"
    doc.write_text("# Page\n\ntext\n")
    st.write_section(doc, section)
    st.write_section(doc, section)
    text = doc.read_text()
    assert text.startswith("# Page\n\ntext\n") and text.count(BEGIN) == 1
    # a report written before the interval terms existed is refused, not shown half-right
    old = _report(0.05, 0.6)
    del old["differences"][0]["terms"]
    (out / "gn" / "compare.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="gn report predates"):
        st.results_section(out, ["bn", "gn"], tmp_path / "docs")
