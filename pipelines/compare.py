"""Stage `compare`: scratch vs fine-tuned per target, source, train fraction and seed.

``python -m pipelines.compare --runs-dir reports/runs --out reports/compare --summary
results/summary.json --plots results/plots`` (paths from ``dvc.yaml``). Reads every run the
params call for (``targets`` x (scratch + ``sources`` + ``checkpoints``) x ``train_fractions``
x ``seeds``, and each project source model) from the evaluate stages' folders and writes:

- ``reports/compare.json``: an object with ``runs`` (one row per trained run and seed),
  ``aggregates`` (mean and std over seeds per dataset, init, source and fraction),
  ``differences`` (fine-tuned − scratch per dataset, source and fraction: the mean over
  seeds and a 95% paired cluster-bootstrap interval over the test set's source units and the
  seeds, ``dsod_core.metrics.bootstrap``) and ``sources`` (the source models on their own
  test sets). The format is documented in docs/study.md.
- ``reports/compare.md``: the same as tables, the target x source matrix and a sentence per
  difference saying whether its interval contains 0 or, when a seed of either arm learnt
  nothing (``dsod_core.diagnostics.collapse_check``), which arm did not learn and what was
  measured (never "no difference is shown").
- the summary metric file (small enough for ``dvc exp show``): per target the full-data
  scratch and fine-tuned means and their difference with its interval.
- images under ``--plots``: ``data_efficiency/<dataset>.png`` (mAP@0.5 against the number of
  training images, mean ± std over seeds), ``compare.png`` and ``val_map50/<dataset>.png``,
  ``train_loss/<dataset>.png`` (the first seed's full-data runs against epoch).

The report itself is :mod:`dsod_core.report.compare`; this script finds the runs' folders.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dsod_core.report.compare import (
    REPLICATES,
    build_report,
    load_run_row,
    markdown,
    plot_report,
    results_file,
    summary,
)
from pipelines._common import load_params, stage_main, write_atomic, write_json
from pipelines.params import arms, comparison_section, run_name, study_axes, validate_params


def collect(params: dict[str, Any], runs_dir: Path) -> tuple[list[dict], list[dict]]:
    """(source rows, target rows): every run the params call for, one row per seed (the
    source models one per source seed)."""
    axes = study_axes(params)
    sources = [
        load_run_row(runs_dir / "pretrain" / s / f"seed-{k}", init="pretrain", source=None, seed=k)
        for s in axes["sources"]
        for k in axes["source_seeds"]
    ]
    rows = []
    for dataset in params["targets"]:
        for init, source, raw in arms(params, axes):
            for seed in axes["seeds"]:
                folder = runs_dir / dataset / run_name(init, source, raw) / f"seed-{seed}"
                rows.append(
                    load_run_row(
                        folder, init=init, source=source, seed=seed, train_fraction=float(raw)
                    )
                )
    return sources, rows


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs-dir", required=True, help="reports/runs (the evaluate outputs)")
    parser.add_argument("--out", required=True, help="output prefix, e.g. reports/compare")
    parser.add_argument("--summary", help="the summary metric file (results/summary.json)")
    parser.add_argument("--plots", help="folder of the images (results/plots)")
    parser.add_argument(
        "--results", help="the compact git-tracked report the README is generated from"
    )
    parser.add_argument("--replicates", type=int, default=REPLICATES, help="bootstrap replicates")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    validate_params(params, args.params, datasets=[])
    sources, rows = collect(params, Path(args.runs_dir))
    section = comparison_section(params, args.params)
    report = build_report(
        sources,
        rows,
        args.replicates,
        primary=None if section is None else asdict(section.primary),
        level=0.95 if section is None else section.level,
    )
    out = Path(args.out)
    plots = Path(args.plots) if args.plots else out.parent / "plots"
    # The epoch charts show the first seed's full-data runs beside the source models.
    pictures = plot_report(report, sources, rows, plots, seed=study_axes(params)["seeds"][0])
    rel = {k: Path(os.path.relpath(v, out.parent)).as_posix() for k, v in pictures.items()}
    write_json(f"{out}.json", report)
    md = markdown(report, rel)
    write_atomic(f"{out}.md", md)
    write_json(args.summary or f"{out}.summary.json", summary(report))
    if args.results:
        write_json(args.results, results_file(report))
    print(md.split("\n## Source models")[0])
    return 0


if __name__ == "__main__":
    main()
