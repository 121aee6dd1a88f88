"""Stage `env`: record the software environment the pipeline runs in (reports/env.json)."""

from __future__ import annotations

import platform
from importlib.metadata import version

import torch

from pipelines._common import stage_main, write_json

PACKAGES = ["torch", "monai", "pytorch-ignite", "dvc", "h5py", "nibabel", "rasterio", "numpy"]


@stage_main
def main(argv: list[str] | None = None) -> int:
    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "packages": {p: version(p) for p in PACKAGES},
    }
    write_json("reports/env.json", info)
    return 0


if __name__ == "__main__":
    main()
