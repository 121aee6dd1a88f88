"""Stage `demo@<modality>`: write the embedded demo data of one modality in its native format.

Output: ``--out`` (``data/demo/<modality>/`` in ``dvc.yaml``) with the files and
``demo_params.json`` (the adapter params that read them), written into a temporary folder and
renamed into place.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from modalities import get_adapter
from pipelines._common import load_params, stage_main, write_json
from pipelines.params import demo_section, validate_params


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("modality")
    parser.add_argument("--out", required=True, help="the folder to write (data/demo/<modality>)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    validate_params(params, args.params, datasets=[])
    demo = demo_section(params, args.params)
    adapter = get_adapter(args.modality)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        sizes = demo.get("num_images_per_modality", {}) or {}
        adapter_params = adapter.write_demo(
            tmp,
            num_images=int(sizes.get(args.modality, demo["num_images"])),
            image_size=int(demo["image_size"]),
            seed=int(params.get("seed", 0)),
        )
        write_json(tmp / "demo_params.json", adapter_params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"demo {args.modality}: wrote {out}")
    return 0


if __name__ == "__main__":
    main()
