"""Write the README's Results from the committed report: ``python -m pipelines.docs_results``.

Reads ``results/comparison.json`` (the compare stage's compact report, tracked in git) and
rewrites the block between the README's result markers (:mod:`dsod_core.report.claims`): the
table of every target, source and fraction with each arm's budget, the differences with their
intervals (the primary's own, every other one adjusted) and three sentences on what the
comparison can and cannot claim. ``--check`` exits 1 when the README is not what the report
gives (the test suite runs it), so no figure in the README is copied by hand. The study's page
(docs/study.md) is written the same way by ``python -m pipelines.study --report-only``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dsod_core.errors import DataError
from dsod_core.report.claims import BEGIN, END, readme_section
from dsod_core.report.study import splice_section
from pipelines._common import stage_main, write_atomic


def rendered(readme: str, report_path: Path) -> str:
    """The README text with its Results block written from the report at ``report_path``."""
    try:
        report = json.loads(report_path.read_text())
    except FileNotFoundError:
        raise DataError("no comparison report (run `make repro` first)", path=report_path) from None
    return splice_section(readme, readme_section(report), BEGIN, END)


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--report", default="results/comparison.json")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text()
    new = rendered(text, Path(args.report))
    if args.check:
        if new != text:
            print(
                f"{readme}: Results differ from {args.report}; run python -m pipelines.docs_results"
            )
            return 1
        print(f"{readme}: Results match {args.report}")
        return 0
    write_atomic(readme, new)
    print(f"{readme}: Results written from {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
