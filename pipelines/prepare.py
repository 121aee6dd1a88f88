"""Stage `prepare@<dataset>`: adapter -> HDF5 store (``data/prepared/<dataset>.h5``).

Samples stream from the adapter into the store (never all in memory). With
``prepare.on_error: skip`` a bad sample is skipped and listed with its reason in
``data/prepared/<dataset>.report.json``; with ``error`` (default) the first bad sample stops
the stage with a one-line message and no store is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dsod_core.data.store import StoreWriter
from dsod_core.errors import ConfigError, DataError
from modalities import get_adapter
from pipelines._common import load_params, stage_main, write_json
from pipelines.params import dataset_entry, prepare_section


def adapter_for(entry: dict[str, Any], source: str = "params.yaml"):
    """Instantiate a dataset's adapter; demo roots contribute their ``demo_params.json``.
    Configuration errors without a file of their own are attributed to ``source``."""
    root = Path(entry["root"])
    if not root.exists():
        raise DataError("dataset root does not exist", path=root)
    adapter_params: dict[str, Any] = {}
    demo_params = root / "demo_params.json"
    if demo_params.is_file():
        adapter_params.update(json.loads(demo_params.read_text()))
    adapter_params.update(entry.get("adapter") or {})
    try:
        return get_adapter(entry["modality"])(root, adapter_params), adapter_params
    except ConfigError as exc:
        if exc.path is None:
            raise ConfigError(exc.reason, path=source) from exc
        raise


def prepare(
    name: str,
    entry: dict[str, Any],
    out: Path,
    on_error: str = "error",
    compression: str | None = "gzip",
    source: str = "params.yaml",
) -> dict[str, Any]:
    adapter, adapter_params = adapter_for(entry, source)
    refs = adapter.discover()
    if not refs:
        raise DataError("the adapter found no data", path=entry["root"])
    skipped: list[dict[str, str]] = []
    counts = {"train": 0, "val": 0, "test": 0}
    with StoreWriter(
        out,
        modality=entry["modality"],
        class_names=adapter.class_names,
        channel_names=adapter.channel_names,
        params={"dataset": name, **entry, "adapter": adapter_params},
        compression=compression,
    ) as writer:
        # disable=None: no progress bar when stderr is not a terminal, so an error stays one line.
        for ref in tqdm(refs, desc=f"prepare {name}", unit="file", disable=None):
            if on_error == "error":
                # Stream: a raster's chips or a volume's slices never sit in memory together.
                for s in adapter.read(ref):
                    writer.add(s)
                    counts[s.split] += 1
                continue
            try:
                # Skip mode: read one unit fully first so a bad file adds nothing.
                samples = list(adapter.read(ref))
                for s in samples:
                    s.validate(len(adapter.channel_names), len(adapter.class_names))
            except DataError as exc:
                skipped.append({"ref": ref.ref_id, "reason": str(exc)})
                continue
            for s in samples:
                writer.add(s)
                counts[s.split] += 1
    report = {
        "dataset": name,
        "modality": entry["modality"],
        "samples": counts,
        "classes": adapter.class_names,
        "channels": adapter.channel_names,
        "skipped": skipped,
    }
    write_json(out.with_suffix(".report.json"), report)
    return report


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-dir", default="data/prepared")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    entry = dataset_entry(params, args.dataset, args.params)
    sec = prepare_section(params, args.params)
    report = prepare(
        args.dataset,
        entry,
        Path(args.out_dir) / f"{args.dataset}.h5",
        on_error=sec.get("on_error", "error"),
        compression=sec.get("compression", "gzip"),
        source=args.params,
    )
    print(f"prepare {args.dataset}: {report['samples']} samples, {len(report['skipped'])} skipped")
    return 0


if __name__ == "__main__":
    main()
