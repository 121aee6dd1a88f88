"""The README's Results are generated from the committed report, never copied by hand
(dsod_core.report.claims, python -m pipelines.docs_results)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dsod_core.report.claims import BEGIN, END, claims, readme_section

ROOT = Path(__file__).resolve().parents[1]


def _d(dataset, against, mean, ci, adjusted, primary=False, seeds=2, units=12):
    return {"dataset": dataset, "source": "rgb", "train_fraction": 1.0, "against": against,
            "diff_mean": mean, "ci95": list(ci), "ci_adjusted": list(adjusted),
            "primary": primary, "level": 0.95, "n_seeds": seeds, "n_units": units,
            "p": 0.01, "p_holm": None if primary else 0.03,
            "budget": {"finetuned": 9408.0, "finetuned_source": 6720.0,
                       "against": 9416.0}}  # fmt: skip


def test_claims_name_the_primary_the_adjusted_survivors_and_the_resolution():
    report = {
        "differences": [
            _d("ct", "matched", 0.12, (0.02, 0.22), (0.02, 0.22), primary=True),
            _d("ct", "scratch", 0.2, (0.1, 0.3), (0.05, 0.35)),  # survives adjustment
            _d("depth", "scratch", -0.1, (-0.2, -0.01), (-0.3, 0.1)),  # only unadjusted
        ]
    }
    first, second, third = claims(report)
    assert first.startswith("The declared primary comparison, fine-tuned from rgb against "
                            "compute-matched scratch on ct at train fraction 1 (fine-tuned "
                            "9,408 (source 6,720 + own 2,688) vs matched scratch 9,416 image "
                            "passes), gives +0.120 mAP@0.5 (95% CI +0.020 to +0.220")  # fmt: skip
    assert first.endswith("fine-tuned is better.")
    # the depth row's unadjusted interval excludes 0, its adjusted one does not: not claimed
    assert "Of the other 2 comparisons, 1 excludes 0" in second
    assert (
        "ct from rgb at train fraction 1 against scratch (+0.200, fine-tuned is better)" in second
    )
    assert "depth" not in second
    # median half-width of the unadjusted intervals: 0.1, 0.1, 0.095 -> 0.100
    assert "median half-width of 0.100 mAP@0.5" in third and "2 seeds and 12–12 test units" in third
    none = {"differences": [_d("ct", "scratch", 0.0, (-0.1, 0.1), (-0.2, 0.2))]}
    assert "No primary comparison was declared" in claims(none)[0]
    assert "None of the other 1 comparisons excludes 0" in claims(none)[1]
    section = readme_section({**report, "aggregates": []})
    assert section.startswith(BEGIN) and section.endswith(END)


def test_the_committed_readme_results_are_generated_from_the_committed_report():
    """Edit a figure in the README's Results by hand and this fails: the block must be what
    `python -m pipelines.docs_results` writes from results/comparison.json."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.docs_results", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docs_results_writes_and_checks(tmp_path):
    import json

    readme = tmp_path / "README.md"
    readme.write_text(f"# P\n\n{BEGIN}\nold figures\n{END}\n\nafter\n")
    report = tmp_path / "comparison.json"
    report.write_text(json.dumps({"aggregates": [], "differences": [
        _d("ct", "matched", 0.12, (0.02, 0.22), (0.02, 0.22), primary=True)]}))  # fmt: skip
    args = [sys.executable, "-m", "pipelines.docs_results", "--readme", str(readme)]
    args += ["--report", str(report)]
    check = subprocess.run([*args, "--check"], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 1 and "differ" in check.stdout
    subprocess.run(args, cwd=ROOT, check=True, capture_output=True)
    text = readme.read_text()
    assert "old figures" not in text and text.endswith("\n\nafter\n")
    assert "+0.120 [+0.020, +0.220] (primary)" in text
    assert subprocess.run([*args, "--check"], cwd=ROOT, capture_output=True).returncode == 0
    missing = subprocess.run(
        [*args[:-1], str(tmp_path / "none.json")], cwd=ROOT, capture_output=True, text=True
    )
    assert missing.returncode == 1 and "none.json" in missing.stderr
