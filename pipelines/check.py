"""Stage `check`: validate the whole ``params.yaml`` before any other stage runs.

``dvc repro`` removes a stage's previous outputs just before running it; every stage depends on
this one's output, so a typo (an unknown variant, a target that is not a dataset, a misspelt
adapter param) stops the pipeline here, before any trained model or store is removed. The
output records only that the file was valid, so it is identical from one valid params file to
the next and re-runs nothing downstream by itself.
"""

from __future__ import annotations

import argparse

from pipelines._common import load_params, stage_main, write_json
from pipelines.params import validate_params


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="the marker file to write")
    args = parser.parse_args(argv)
    validate_params(load_params(args.params), args.params)
    write_json(args.out, {"params": "valid"})
    print(f"check: {args.params} is valid")
    return 0


if __name__ == "__main__":
    main()
