"""The study as one command: ``make study`` (``python -m pipelines.study``).

Reads ``study.yaml``: ``set`` (params applied to every variant) and ``variants`` (one DVC
experiment each, the ablation). For each variant, in order, it removes an experiment of
the same name and runs ``dvc exp run -n <name>-<variant> -S ++key=value ...`` (the whole
pipeline with those params; stages whose inputs did not change are not run again), then
copies the experiment's ``reports/compare.json`` and data-efficiency plots into
``docs/study/<variant>/`` with a ``report.md`` and ``run.json`` (settings, command, wall time,
machine), and finally rewrites the "Results" section of ``docs/study.md`` from every variant
in ``docs/study/``: the differences with their intervals, the transfer matrix, the curves and
the ablation table. params.yaml is restored when the study ends (or fails); the experiments
stay listed in ``dvc exp show``.

Every variant's params are validated before the first experiment starts, so a typo in
study.yaml fails in a second, not after an hour. ``--dry-run`` prints the commands;
``--report-only`` rebuilds docs/study.md from docs/study/ without training.

The reports and the Results section are :mod:`dsod_core.report`; this script runs the
experiments and moves their files.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from dsod_core.errors import ConfigError, ProjectError
from dsod_core.report import study as page
from dsod_core.report.compare import markdown
from pipelines._common import load_params, stage_main, write_atomic, write_json
from pipelines.params import study_axes, validate_params

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def load_study(path: str | Path) -> dict[str, Any]:
    """``study.yaml``, checked: ``name``, ``set`` and ordered ``variants`` of dotted-key
    settings whose values are scalars or lists of scalars."""
    doc = load_params(path, what="study file")
    name = doc.get("name", "study")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"name must be a word of letters, digits, - and _, got {name!r}", path)
    common = doc.get("set") or {}
    variants = doc.get("variants")
    if not isinstance(common, dict):
        raise ConfigError("set must be a mapping of params keys to values", path=path)
    if not isinstance(variants, dict) or not variants:
        raise ConfigError("variants must be a non-empty mapping of name -> settings", path=path)
    for label, settings in [("set", common)] + [
        (f"variants.{k}", v if v is not None else {}) for k, v in variants.items()
    ]:
        if label != "set" and not _NAME.match(label.split(".", 1)[1]):
            raise ConfigError(
                f"{label}: a variant name is a word of letters, digits, - and _", path
            )
        if not isinstance(settings, dict):
            raise ConfigError(f"{label} must be a mapping of params keys to values", path=path)
        for key, value in settings.items():
            ok = _scalar(value) or (isinstance(value, list) and all(map(_scalar, value)))
            if not isinstance(key, str) or not ok:
                raise ConfigError(
                    f"{label}.{key}: values are scalars or lists of scalars (name nested keys "
                    "with dots, e.g. model.overrides.norm)",
                    path=path,
                )
    return {
        "name": name,
        "set": common,
        "variants": {k: dict(v or {}) for k, v in variants.items()},
    }


def settings_of(study: dict[str, Any], variant: str) -> dict[str, Any]:
    """The params a variant runs with: ``set``, then the variant's own keys."""
    return {**study["set"], **study["variants"][variant]}


def apply_settings(params: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` with each dotted key set (as ``dvc exp run -S ++key=value``)."""
    out = copy.deepcopy(params)
    for key, value in settings.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part!r} is not a mapping in params.yaml")
            node = child
        node[leaf] = copy.deepcopy(value)
    return out


def overrides(settings: dict[str, Any]) -> list[str]:
    """``-S`` arguments in Hydra's override grammar (``++``: add or override); JSON literals
    are valid Hydra values for scalars and lists."""
    out = []
    for key, value in settings.items():
        out += ["-S", f"++{key}={json.dumps(value, separators=(',', ':'))}"]
    return out


def _machine() -> str:
    """The CPU model, core count, OS and torch version: a figure names its machine."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "?"
    return (
        f"{model}, {os.cpu_count()} cores, {platform.system()}, "
        f"Python {platform.python_version()}, torch {torch}"
    )


def collect_variant(variant: str, out_dir: Path, record: dict[str, Any]) -> None:
    """Copy the workspace's study outputs (after the variant's experiment) into
    ``out_dir/variant``: compare.json, the data-efficiency plots, report.md, run.json."""
    folder = out_dir / variant
    tmp = out_dir / f".{variant}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data_efficiency").mkdir(parents=True)
    report_path = Path("reports/compare.json")
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as exc:
        raise ProjectError(
            f"no readable report after the experiment ({exc})", path=report_path
        ) from exc
    pictures = {}
    for png in sorted(Path("results/plots/data_efficiency").glob("*.png")):
        shutil.copy2(png, tmp / "data_efficiency" / png.name)
        pictures[png.stem] = f"data_efficiency/{png.name}"
    write_json(tmp / "compare.json", report)
    write_atomic(tmp / "report.md", markdown(report, pictures))
    write_json(tmp / "run.json", record)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def results_section(out_dir: Path, variants: list[str], doc_dir: Path) -> str:
    """The markdown of docs/study.md's Results section from ``out_dir/<variant>/``
    (:func:`dsod_core.report.study.results_section`)."""
    found = [v for v in variants if (out_dir / v / "run.json").exists()]
    if not found:
        raise ProjectError("no study results yet; run python -m pipelines.study", path=out_dir)
    runs = {v: json.loads((out_dir / v / "run.json").read_text()) for v in found}
    reports = {v: json.loads((out_dir / v / "compare.json").read_text()) for v in found}
    pictures = [p.name for p in sorted((out_dir / found[0] / "data_efficiency").glob("*.png"))]
    link = Path(os.path.relpath(out_dir, doc_dir)).as_posix()
    return page.results_section(runs, reports, pictures, link)


def write_section(doc: Path, section: str) -> None:
    """Replace the text between the markers in ``doc`` (append it when there are none)."""
    text = doc.read_text() if doc.exists() else ""
    write_atomic(doc, page.splice_section(text, section))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--study", default="study.yaml", help="the study file")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="docs/study", help="folder of the variants' results")
    parser.add_argument("--doc", default="docs/study.md", help="page whose Results it rewrites")
    parser.add_argument("--only", action="append", help="run this variant only (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--report-only", action="store_true", help="rewrite --doc only")
    return parser


@stage_main
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    study = load_study(args.study)
    variants = list(study["variants"])
    chosen = args.only or variants
    unknown = [v for v in chosen if v not in study["variants"]]
    if unknown:
        raise ConfigError(
            f"no variant {unknown[0]!r} (variants: {', '.join(variants)})", args.study
        )
    params_path = Path(args.params)
    params = load_params(params_path)
    commands = {}
    for v in chosen:  # every variant checked before anything runs
        candidate = apply_settings(params, settings_of(study, v))
        validate_params(candidate, f"{args.params} with {args.study} variant {v}", datasets=[])
        study_axes(candidate, f"{args.params} with {args.study} variant {v}")
        # Not `-f`: for `dvc exp run` it also means "reproduce even if nothing changed",
        # which would re-run every stage; an experiment of the same name is removed instead.
        commands[v] = ["dvc", "exp", "run", "-n", f"{study['name']}-{v}"]
        commands[v] += overrides(settings_of(study, v))
    out_dir, doc = Path(args.out), Path(args.doc)
    if args.dry_run:
        for v in chosen:
            print(" ".join(commands[v]))
        return 0
    if not args.report_only:
        if shutil.which("dvc") is None:
            raise ProjectError("dvc is not on PATH (run through make study)")
        original = params_path.read_bytes()
        try:
            for v in chosen:
                print(f"study: variant {v}: {' '.join(commands[v])}", flush=True)
                start = time.perf_counter()
                # A rerun replaces the experiment of the same name (absent: nothing to do).
                subprocess.run(
                    ["dvc", "exp", "remove", f"{study['name']}-{v}"],
                    check=False,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                code = subprocess.run(commands[v], check=False).returncode
                seconds = time.perf_counter() - start
                if code != 0:
                    raise ProjectError(f"variant {v}: dvc exp run exited with {code}")
                record = {
                    "variant": v,
                    "settings": settings_of(study, v),
                    "command": " ".join(commands[v]),
                    "seconds": round(seconds, 1),
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "machine": _machine(),
                }
                collect_variant(v, out_dir, record)
                print(f"study: variant {v} done in {page.minutes(seconds)}", flush=True)
        finally:
            params_path.write_bytes(original)  # the user's params, not the last variant's
    write_section(doc, results_section(out_dir, variants, doc.parent))
    print(f"study: wrote {doc} and {out_dir}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    main()
