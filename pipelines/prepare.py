"""Stage `prepare@<dataset>`: adapter -> HDF5 store, and a report of what was read and skipped.

``python -m pipelines.prepare DATASET --out data/prepared/DATASET.h5 --report
data/prepared/DATASET.report.json`` (paths come from ``dvc.yaml``).

One error policy: the adapter raises :class:`DataError` naming file, sample and reason, and
``prepare.on_error`` alone decides. ``error`` (default): the first bad unit stops the stage
with a one-line message and no store is written (a previous store stays as it was). ``skip``:
the bad unit (an image, a volume, a raster) is left out whole — samples it had already added
are removed from the store — and listed with file and reason in the report. Adapter warnings
land in the report in both modes. Samples stream from the adapter into the store (never all
in memory).
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dsod_core.data.sample import Sample
from dsod_core.data.store import StoreWriter
from dsod_core.detection import progress
from dsod_core.errors import ConfigError, DataError, ProjectError
from dsod_core.io import write_json
from dsod_core.tiling import FRAMES_UNIT, frame_record, tile_sample
from modalities import PrepareLog, SampleRef, get_adapter
from modalities.base import split_hash
from modalities.registry import adapter_code, adapter_version
from pipelines._common import load_params, stage_main
from pipelines.params import (
    dataset_entry,
    dataset_tiling,
    merged_adapter_params,
    prepare_section,
    validate_params,
)


def adapter_for(entry: dict[str, Any], source: str = "params.yaml", log: PrepareLog | None = None):
    """The dataset's adapter exactly as the prepare stage builds it; demo roots contribute
    their ``demo_params.json``. Configuration errors without a file of their own are
    attributed to ``source``. Returns ``(adapter, merged adapter params)``."""
    root = Path(entry["root"])
    if not root.exists():
        raise DataError("dataset root does not exist", path=root)
    adapter_params = merged_adapter_params(entry)
    cls = get_adapter(entry["modality"])
    try:
        params = cls.Params.parse(adapter_params, owner=cls.name, source=source)
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=exc.path or source) from None
    return cls(root, params, log=log), params.to_dict()


def code_fingerprint(modality: str) -> dict[str, Any]:
    """Where the adapter's code is, its sha256 over all its ``.py`` files, and the version of
    the distribution that provides it: recorded in the report, so that a stage depending on
    the report re-runs when the adapter changes."""
    path = adapter_code(modality)
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(path.parent).as_posix().encode())
        digest.update(f.read_bytes())
    try:  # relative inside the project, so the report is the same in every clone
        shown = path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        shown = str(path)
    return {
        "name": modality,
        "code": shown,
        "code_sha256": digest.hexdigest(),
        "version": adapter_version(modality),
    }


def _unit_file(ref: SampleRef) -> str:
    paths = ref.paths or {}
    main = paths.get("image") or paths.get("raster") or paths.get("volume")
    if main is None and paths:
        main = next(iter(paths.values()))
    return str(main) if main is not None else ref.ref_id


def _own_text(entry: dict[str, Any]) -> str:
    """A skip's or warning's reason without the ``<file>: `` and ``sample <id>: `` that
    :class:`DataError` puts in front."""
    text = str(entry.get("reason") or "")
    for prefix in (entry.get("file"), entry.get("sample") and f"sample {entry['sample']}"):
        if prefix and text.startswith(f"{prefix}: "):
            text = text[len(prefix) + 2 :]
    return text


def reason_kind(entry: dict[str, Any]) -> str:
    """What makes two skips "the same reason": the reason with the file's own parts (its
    path, name and stem where the text repeats them) and every number replaced, so that
    ``im3.xml: sample im3: box [19.0, 4.0, 45.0, 12.0] lies outside the 32x24 image`` and the
    same fault of another file group together."""
    text = _own_text(entry)
    file = entry.get("file")
    if file:  # whole words only: the stem "a" of a.tif is not the "a" of "cannot read"
        for part in sorted({file, Path(file).name, Path(file).stem} - {""}, key=len, reverse=True):
            text = re.sub(rf"(?<!\w){re.escape(part)}(?!\w)", "<file>", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)


def _ranked(entries: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """``(count, first entry)`` of each :func:`reason_kind`, most frequent first (ties in the
    order met)."""
    groups: dict[str, list[Any]] = {}
    for entry in entries:
        groups.setdefault(reason_kind(entry), [0, entry])[0] += 1
    return sorted(((n, first) for n, first in groups.values()), key=lambda g: -g[0])


def by_reason(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Skips (or warnings) grouped by :func:`reason_kind`, most frequent first:
    ``{"reason", "count", "first_file"}``, ``reason`` the first one's text without its file."""
    return [
        {"reason": _own_text(first), "count": n, "first_file": first.get("file")}
        for n, first in _ranked(entries)
    ]


def reasons_text(entries: list[dict[str, Any]], shown: int = 2) -> str:
    """``(1020 x VOC/Annotations/x.xml: object 'target' has no <bndbox>; 4 x ...; 2 more
    reason(s) in the report)``: the ``shown`` most frequent reasons, each with its count and
    the full message of its first file."""
    ranked = _ranked(entries)
    parts = []
    for n, first in ranked[:shown]:
        own, file = _own_text(first), first.get("file")
        message = str(first.get("reason"))
        if own == message and file:  # a warning: its file is not in its text
            message = f"{file}: {message}"
        parts.append(f"{n} x {message}")
    if len(ranked) > shown:
        parts.append(f"{len(ranked) - shown} more reason(s) in the report")
    return f"({'; '.join(parts)})"


def _as_data_error(exc: Exception, ref: SampleRef) -> DataError:
    """An adapter bug or an unforeseen library error on a bad file still names the file."""
    if isinstance(exc, DataError):
        return exc
    reason = " ".join(str(exc).split()) or "no message"
    return DataError(f"unreadable ({type(exc).__name__}: {reason})", path=_unit_file(ref))


def _discover(adapter: Any, entry: dict[str, Any], log: PrepareLog) -> list[SampleRef]:
    """The adapter's units; an adapter error that names no file names the dataset root."""
    try:
        refs = adapter.discover()
    except ProjectError:
        raise
    except Exception as exc:  # an adapter that failed to name the file
        raise DataError(
            f"listing the dataset failed ({type(exc).__name__}: {exc})", path=entry["root"]
        ) from exc
    if not refs:
        found = ""
        if log.skipped:
            found = f"; {len(log.skipped)} unit(s) skipped {reasons_text(log.skipped)}"
        raise DataError(f"the adapter found no data{found}", path=entry["root"])
    return refs


def _cut(
    samples: Iterable[Sample],
    tiling: dict[str, Any] | None,
    frames: dict[str, Any],
    tally: dict[str, int],
) -> Iterator[Sample]:
    """The samples as they go into the store: as read, or (a tiled dataset) each cut into
    tiles by :func:`dsod_core.tiling.tile_sample`, its whole-frame ground truth put into
    ``frames`` (:func:`dsod_core.tiling.frame_record`). A train tile without boxes is kept
    when ``split_hash("empty-tile:<tile id>") < keep_empty`` (a stable draw); val and test
    keep every tile, so that false positives on background are scored. ``tally`` counts the
    tiles, the empty ones kept and those dropped."""
    if tiling is None:
        yield from samples
        return
    size, overlap = tiling["tile_size"], tiling["overlap"]
    for sample in samples:
        frames[sample.sample_id] = frame_record(sample)
        for tile in tile_sample(sample, size, overlap, tiling["min_visible"]):
            tally["tiles"] += 1
            if len(tile.boxes) == 0:
                drawn = split_hash(f"empty-tile:{tile.sample_id}")
                if tile.split == "train" and drawn >= tiling["keep_empty"]:
                    tally["empty tiles dropped (train)"] += 1
                    continue
                tally["empty tiles kept"] += 1
            yield tile


def _write_units(
    writer: StoreWriter,
    adapter: Any,
    refs: list[SampleRef],
    log: PrepareLog,
    name: str,
    on_error: str,
    tiling: dict[str, Any] | None = None,
) -> tuple[dict[str, int], dict[str, int]]:
    """Stream every unit's samples into the store (a failing unit is rolled back whole and
    skipped, or stops the stage, by ``on_error``), record each kept unit's world-level
    ground truth and the adapter's state; returns the samples and the background samples
    (no box: negatives) per split. With ``tiling`` the samples are tiles (:func:`_cut`) and
    the frames' ground truth goes to ``/units`` under ``dsod_core.tiling.FRAMES_UNIT``."""
    counts = {"train": 0, "val": 0, "test": 0}
    background = dict(counts)
    units: dict[str, set[str]] = {}  # independence unit -> the splits its samples are in
    if tiling is not None:
        keys = ("tile_size", "overlap")
        writer.units[FRAMES_UNIT] = {**{k: tiling[k] for k in keys}, "frames": {}}
    # A bar on a terminal only: elsewhere plain lines on stdout, so an error stays one line.
    for ref in progress(refs, desc=f"prepare {name}", unit="unit"):
        mark = writer.mark()
        added = {"train": 0, "val": 0, "test": 0}
        empty = dict(added)
        frames: dict[str, Any] = {}
        tally = dict.fromkeys(("tiles", "empty tiles kept", "empty tiles dropped (train)"), 0)
        seen: set[tuple[str, str]] = set()
        try:  # streamed: chips/slices/tiles never all in memory
            for s in _cut(adapter.read(ref), tiling, frames, tally):
                writer.add(s)
                seen.add((s.unit, s.split))
                added[s.split] += 1
                empty[s.split] += len(s.boxes) == 0
        except Exception as exc:
            err = _as_data_error(exc, ref)
            if on_error != "skip":
                if err is exc:
                    raise
                raise err from exc
            writer.rollback(mark)
            log.record_skip(err, _unit_file(ref), unit=ref.ref_id)
            continue
        for unit, split in seen:
            units.setdefault(unit, set()).add(split)
        for k, v in added.items():
            counts[k] += v
            background[k] += empty[k]
        writer.units[ref.ref_id] = adapter.unit_record(ref)
        if tiling is not None:
            writer.units[FRAMES_UNIT]["frames"].update(frames)
            for k, v in tally.items():
                log.counts[k] = log.counts.get(k, 0) + v
    writer.adapter_state = adapter.state()
    return counts, background, units


def unit_counts(units: dict[str, set[str]]) -> dict[str, Any]:
    """The report's ``units``: independence units (patients, scenes, sequences, else files)
    per split, and those whose samples lie in more than one split (``straddling``)."""
    per = {s: sum(1 for v in units.values() if s in v) for s in ("train", "val", "test")}
    straddling = sorted(u for u, v in units.items() if len(v) > 1)
    return {
        **per,
        "total": len(units),
        "straddling": len(straddling),
        "straddling_units": straddling[:20],
    }


def check_straddle(units: dict[str, set[str]], log: PrepareLog, out: Path, mode: str) -> None:
    """Refuse (``prepare.straddle: error``) or warn about units in two splits: their samples
    would let the model see a test patient, scene or sequence in training."""
    order = ("train", "val", "test")
    bad = {u: sorted(v, key=order.index) for u, v in units.items() if len(v) > 1}
    if not bad:
        return
    first, splits = next(iter(sorted(bad.items())))
    text = (
        f"{len(bad)} independence unit(s) have samples in more than one split, e.g. "
        f"{first!r} in {' and '.join(splits)} (a patient, scene or sequence must lie in one "
        "split: set the adapter's group_by or fix the split lists"
    )
    if mode == "error":
        raise DataError(text + "; prepare.straddle: warn keeps the store)", path=out)
    for unit, splits in sorted(bad.items()):
        log.warn(f"unit {unit!r} has samples in {' and '.join(splits)}", path=unit)


def _check_written(counts: dict[str, int], log: PrepareLog, out: Path, root: str) -> None:
    """Refuse a store with no samples, naming the commonest reasons units were skipped; warn
    about a store with no training samples."""
    if sum(counts.values()) == 0:
        why = f"; {len(log.skipped)} unit(s) skipped {reasons_text(log.skipped)}"
        raise DataError(f"no samples were written{why if log.skipped else ''}", path=out)
    if counts["train"] == 0:
        log.warn(
            f"no training samples ({counts['val']} val, {counts['test']} test): an "
            "evaluation-only store, to score a trained model "
            "(`python -m pipelines.evaluate --dataset ...`); it cannot be trained on",
            path=root,
        )


def _finish(report: dict[str, Any], log: PrepareLog, status: str, **extra: Any) -> dict:
    """The report with the outcome, the skips and warnings (each also grouped by reason) and
    the adapters' named counts (background images, quirks met)."""
    report.update(
        status=status,
        skipped=log.skipped,
        skipped_by_reason=by_reason(log.skipped),
        warnings=log.warnings,
        warnings_by_reason=by_reason(log.warnings),
        counts=dict(sorted(log.counts.items())),
        **extra,
    )
    return report


def _written(
    writer: StoreWriter,
    adapter: Any,
    counts: dict[str, int],
    background: dict[str, int],
    units: dict[str, set[str]],
) -> dict[str, Any]:
    """The report's fields of a written store: samples, background samples and independence
    units per split, how the pixels were stored, classes and channels."""
    return {
        "samples": counts,
        "background": background,
        "units": unit_counts(units),
        "storage": {
            "float32_fallbacks": writer.native_fallbacks,  # samples not stored natively
            "first_fallback": writer.fallback_reason,
        },
        "classes": adapter.class_names,
        "channels": adapter.channel_names,
    }


def prepare(
    name: str,
    entry: dict[str, Any],
    out: Path,
    report_path: Path,
    on_error: str = "error",
    compression: str | None = "gzip",
    source: str = "params.yaml",
    straddle: str = "error",
) -> dict[str, Any]:
    log = PrepareLog(on_error=on_error)
    adapter, adapter_params = adapter_for(entry, source, log)
    tiling = dataset_tiling(entry, source)
    resolved = {"tiling": tiling} if tiling is not None else {}  # absent: as before tiling
    failure_path = report_path.with_name(report_path.name.replace(".report.json", ".failed.json"))
    report: dict[str, Any] = {
        "dataset": name,
        "modality": entry["modality"],
        "on_error": on_error,
        "adapter": code_fingerprint(entry["modality"]),
        "adapter_params": adapter_params,
        **resolved,
    }

    def finish(status: str, **extra: Any) -> dict[str, Any]:
        return _finish(report, log, status, **extra)

    try:
        refs = _discover(adapter, entry, log)
        with StoreWriter(
            out,
            modality=entry["modality"],
            class_names=adapter.class_names,
            channel_names=adapter.channel_names,
            params={"dataset": name, **entry, "adapter": adapter_params, **resolved},
            compression=compression,
            allow_no_train=True,  # a test-only dataset scores a trained model on new data
        ) as writer:
            counts, background, units = _write_units(
                writer, adapter, refs, log, name, on_error, tiling
            )
            _check_written(counts, log, out, entry["root"])
            check_straddle(units, log, out, straddle)
    except ProjectError as exc:
        if on_error == "skip" or log.skipped or log.warnings:
            write_json(failure_path, finish("failed", error=str(exc)))
        raise
    failure_path.unlink(missing_ok=True)
    finish("ok", **_written(writer, adapter, counts, background, units))
    write_json(report_path, report)
    return report


def summary_line(report: dict[str, Any]) -> str:
    """The stage's closing line: samples and background samples (no box) per split, then the
    skips and warnings, each with its commonest reasons."""
    samples, background = report["samples"], report["background"]
    line = (
        f"prepare {report['dataset']}: {sum(samples.values())} samples (train / val / test "
        f"{' / '.join(str(samples[s]) for s in samples)}), of them background "
        f"{' / '.join(str(background[s]) for s in samples)}"
    )
    units = report.get("units")
    if units:
        line += f"; units {' / '.join(str(units[s]) for s in samples)}"
    for key, what in (("skipped", "unit(s) skipped"), ("warnings", "warning(s)")):
        entries = report[key]
        line += f"; {len(entries)} {what}"
        if entries:
            line += f" {reasons_text(entries)}"
    return line


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="the store to write (.h5)")
    parser.add_argument("--report", required=True, help="the report to write (.json)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    validate_params(params, args.params, datasets=[args.dataset])
    entry = dataset_entry(params, args.dataset, args.params)
    sec = prepare_section(params, args.params)
    report = prepare(
        args.dataset,
        entry,
        Path(args.out),
        Path(args.report),
        on_error=sec.get("on_error", "error"),
        compression=sec.get("compression", "gzip"),
        source=args.params,
        straddle=sec.get("straddle", "error"),
    )
    print(summary_line(report))
    # Default boxes vs the training boxes (docs/small_objects.md): a warning before training.
    from dsod_core.model.fit import attach_coverage
    from pipelines.params import coverage_settings

    warning = attach_coverage(args.report, args.out, **coverage_settings(params, args.dataset))
    if warning:
        print(f"prepare {args.dataset}: warning: {warning}")
    return 0


if __name__ == "__main__":
    main()
