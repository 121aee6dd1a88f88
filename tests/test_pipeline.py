"""`dvc repro` of a tiny configuration in a temporary git repository (CI-sized).

Checks the outputs, that a second `dvc repro` does nothing, that a library change makes
`dvc status` report the dependent stages, and the experiment workflow of docs/experiments.md:
two experiments, `dvc exp show` / `dvc metrics diff` with numbers on every side, `dvc plots
diff` writing an HTML page that needs no network, `dvc exp apply` and going back restoring
every stage's results.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(args, cwd, check=True):
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(cwd),
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def tiny_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(image_size=48, num_images=24, modalities=["rgb", "medical"])
    params["datasets"] = {
        k: v for k, v in params["datasets"].items() if k in ("rgb_demo", "medical_demo")
    }
    params["targets"] = ["medical_demo"]
    params["sources"] = ["rgb_demo"]
    params["seeds"] = [0, 1]
    params["train_fractions"] = [0.5, 1.0]
    tiny = dict(epochs=2, batch_size=4, eval_every=1, progress=False, warmup_steps=2)
    params["train"].update(tiny)
    params["pretrain"]["train"].update(tiny)
    params["model"]["input_size"] = 48
    params["evaluate"]["pictures"] = 2
    params["source_seeds"] = [0, 1]  # fine-tuned seed i starts from source seed i
    params["comparison"]["primary"]["target"] = "medical_demo"
    return params


def pipeline_repo(repo: Path, params: dict, message: str) -> subprocess.CompletedProcess:
    """``repo``: a git + DVC repository with this project's code, dvc.yaml and ``params``,
    committed; returns its first ``dvc repro``."""
    for name in ("dsod_core", "modalities", "pipelines"):
        shutil.copytree(
            ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run(["git", "config", "user.email", "ci@example.invalid"], repo)
    _run(["git", "config", "user.name", "ci"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["dvc", "config", "core.analytics", "false"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", message], repo)
    return _run(["dvc", "repro"], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pipeline")
    return repo, pipeline_repo(repo, tiny_params(), "tiny pipeline")


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def test_outputs(repo):
    """compare on a tiny two-seed, two-fraction run: the report format of docs/study.md."""
    import numpy as np

    from pipelines.evaluate import HEADLINE

    repo, first = repo
    assert "Running stage 'compare'" in first.stdout
    report = json.loads((repo / "reports/compare.json").read_text())
    assert set(report) == {"runs", "aggregates", "differences", "primary", "sources"}
    runs = report["runs"]
    keys = [(r["init"], r["source"], r["train_fraction"], r["seed"]) for r in runs]
    assert sorted(keys, key=str) == sorted(
        [
            (init, src, frac, seed)
            for init, src in (("scratch", None), ("finetuned", "rgb_demo"))
            for frac in (0.5, 1.0)
            for seed in (0, 1)
        ]
        # the compute-matched scratch arm at comparison.matched_fractions only
        + [("matched", "rgb_demo", 1.0, seed) for seed in (0, 1)],
        key=str,
    )
    for r in runs:
        assert r["dataset"] == "medical_demo" and r["modality"] == "medical"
        for key in ("map50", "coco_ap", "params", "train_seconds", "train_images"):
            assert _is_number(r[key]), (key, r)
        assert 0.0 <= r["map50"] <= 1.0 and r["params"] > 0 and r["train_images"] > 0
    # the two seeds are two trainings, not one result copied
    by_key = {k: r for k, r in zip(keys, runs, strict=True)}
    assert by_key[("scratch", None, 1.0, 0)]["loss"] != by_key[("scratch", None, 1.0, 1)]["loss"]
    assert len(report["aggregates"]) == 5
    for agg in report["aggregates"]:
        assert agg["n_seeds"] == 2
        values = [
            r["map50"]
            for r in runs
            if (r["init"], r["source"], r["train_fraction"])
            == (agg["init"], agg["source"], agg["train_fraction"])
        ]
        assert agg["map50_mean"] == pytest.approx(np.mean(values), abs=1e-4)
        assert agg["map50_std"] == pytest.approx(np.std(values, ddof=1), abs=1e-4)
    diffs = report["differences"]
    assert [(d["dataset"], d["source"], d["train_fraction"], d["against"]) for d in diffs] == [
        ("medical_demo", "rgb_demo", 0.5, "scratch"),
        ("medical_demo", "rgb_demo", 1.0, "scratch"),
        ("medical_demo", "rgb_demo", 1.0, "matched"),
    ]
    # the declared primary (params comparison.primary) alone is unadjusted
    assert [d["primary"] for d in diffs] == [False, False, True]
    assert diffs[2]["p_holm"] is None and diffs[0]["p_holm"] >= diffs[0]["p"]
    for d in diffs:
        assert d["n_seeds"] == 2 and d["n_units"] >= 1
        low, high = d["ci95"]
        assert low <= high
        alow, ahigh = d["ci_adjusted"]
        assert (alow, ahigh) == (low, high) if d["primary"] else alow <= low <= high <= ahigh
        other = ("scratch", None) if d["against"] == "scratch" else ("matched", "rgb_demo")
        paired = [
            by_key[("finetuned", "rgb_demo", d["train_fraction"], s)]["map50"]
            - by_key[(*other, d["train_fraction"], s)]["map50"]
            for s in (0, 1)
        ]
        # the bootstrap's point estimate is the paired difference on the whole test set
        assert d["diff_mean"] == pytest.approx(np.mean(paired), abs=1e-3)
        assert min(paired) - 1e-3 <= d["diff_mean"] <= max(paired) + 1e-3
    assert [(s["dataset"], s["seed"]) for s in report["sources"]] == [
        ("rgb_demo", 0),
        ("rgb_demo", 1),
    ]
    md = (repo / "reports/compare.md").read_text()
    for needle in (
        "## Primary comparison",
        "Fine-tuned − scratch",
        "Transfer matrix",
        "medical_demo",
        "95% CI",
        "Holm p",
        "image passes",
    ):
        assert needle in md, needle
    assert "](../results/plots/compare.png)" in md
    assert "](../results/plots/data_efficiency/medical_demo.png)" in md
    for png in ("compare.png", "data_efficiency/medical_demo.png"):
        assert (repo / "results/plots" / png).stat().st_size > 1000, png
    flat = json.loads((repo / "results/runs/medical_demo.json").read_text())
    assert (
        len(flat) == 10 and "scratch-f1.0/seed-0" in flat and "matched-rgb_demo-f1.0/seed-1" in flat
    )
    for rel, values in flat.items():
        assert list(values) == list(HEADLINE), values  # small and flat: no per-class detail
        assert all(_is_number(v) for v in values.values()), values
        run = repo / "reports/runs/medical_demo" / rel
        assert list((run / "pictures").glob("*.png")), rel
        detail = json.loads((run / "detail.json").read_text())
        assert {"map50", "coco_ap", "per_class_ap50", "seed", "train_fraction"} <= set(detail)
        assert values["map50"] == round(detail["map50"], 4)
        assert (run / "matches.npz").exists()
        png = repo / "results/plots/pr_curves/medical_demo" / (rel.replace("/", "_") + ".png")
        assert png.stat().st_size > 1000, png
    source = json.loads((repo / "results/runs/pretrain-rgb_demo.json").read_text())
    assert list(source) == ["seed-0", "seed-1"]  # one source model per source seed
    assert all(list(v) == list(HEADLINE) for v in source.values())
    summary = json.loads((repo / "results/summary.json").read_text())
    assert set(summary) == {"rgb_demo", "medical_demo"}
    assert set(summary["rgb_demo"]) == {"source"}
    med = summary["medical_demo"]
    assert set(med) == {
        "scratch",
        "matched_rgb_demo",
        "finetuned_from_rgb_demo",
        "difference_from_rgb_demo",
        "difference_matched_rgb_demo",
        "primary",
    }
    assert med["difference_from_rgb_demo"]["map50"] == pytest.approx(diffs[1]["diff_mean"])
    assert med["primary"]["map50"] == pytest.approx(diffs[2]["diff_mean"])
    assert all(_is_number(v) for part in med.values() for v in part.values() if v is not None)
    assert (repo / "results/plots/budget/medical_demo.png").stat().st_size > 1000
    compact = json.loads((repo / "results/comparison.json").read_text())
    assert compact["differences"] == diffs and compact["primary"] == report["primary"]
    for sub in ("val_map50", "train_loss"):
        charts = sorted(p.name for p in (repo / "results/plots" / sub).glob("*.png"))
        assert charts == ["medical_demo.png", "rgb_demo.png"], (sub, charts)
    scratch = repo / "reports/runs/medical_demo/scratch-f1.0/seed-0"
    assert "froc_cpm" in json.loads((scratch / "detail.json").read_text())
    assert (scratch / "world/predictions_3d.json").exists()


def _history(run: Path) -> dict:
    return json.loads((run / "history.json").read_text())


def test_budget_per_arm_is_image_passes_and_the_matched_arm_equals_fine_tuning(repo):
    """Equal compute (docs/study.md): every run records optimiser steps x global batch; a
    fine-tuned run is charged its paired source model's passes too; the matched scratch run
    of a seed is given exactly that total (rounded up to a whole step)."""
    import math

    repo, _ = repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    batch = params["train"]["batch_size"]
    models = repo / "models"
    for seed in (0, 1):
        scratch = _history(models / f"medical_demo/scratch-f1.0/seed-{seed}")
        assert scratch["budget"]["global_batch"] == batch
        assert scratch["budget"]["steps"] == scratch["steps"]  # no early stop: all planned
        assert scratch["budget"]["image_passes"] == scratch["steps"] * batch
        tuned_dir = models / f"medical_demo/finetuned-rgb_demo-f1.0/seed-{seed}"
        tuned = _history(tuned_dir)
        record = json.loads((tuned_dir / "config.json").read_text())["budget"]
        assert record["source_seed"] == seed  # seeds [0, 1] paired with source_seeds [0, 1]
        source = _history(models / f"pretrain/rgb_demo/seed-{seed}")
        assert record["source_image_passes"] == source["budget"]["image_passes"] > 0
        target = tuned["budget"]["image_passes"] + source["budget"]["image_passes"]
        matched_dir = models / f"medical_demo/matched-rgb_demo-f1.0/seed-{seed}"
        matched = _history(matched_dir)
        assert (
            json.loads((matched_dir / "config.json").read_text())["budget"]["target_image_passes"]
            == target
        )
        assert matched["budget"]["steps"] == math.ceil(target / batch)
        assert target <= matched["budget"]["image_passes"] < target + batch
    # the two source seeds are two trainings (the seed term carries the source's spread)
    w0 = _history(models / "pretrain/rgb_demo/seed-0")["history"]
    w1 = _history(models / "pretrain/rgb_demo/seed-1")["history"]
    assert [h["loss"] for h in w0] != [h["loss"] for h in w1]
    # the report charges each arm what it spent
    report = json.loads((repo / "reports/compare.json").read_text())
    for r in report["runs"]:
        if r["init"] == "finetuned":
            assert r["total_image_passes"] == r["image_passes"] + r["source_image_passes"]
        else:
            assert r["total_image_passes"] == r["image_passes"]
    matched = [d for d in report["differences"] if d["against"] == "matched"]
    assert matched and all(
        d["budget"]["finetuned"] <= d["budget"]["against"] < d["budget"]["finetuned"] + batch
        for d in matched
    )


def test_second_repro_does_nothing_and_status_clean(repo):
    repo, _ = repo
    again = _run(["dvc", "repro"], repo)
    assert "Running stage" not in again.stdout
    status = _run(["dvc", "status"], repo)
    assert "up to date" in status.stdout


def test_library_change_marks_dependent_stages(repo):
    repo, _ = repo
    loss = repo / "dsod_core/loss.py"
    original = loss.read_text()
    try:
        loss.write_text(original + "\n# a change\n")
        status = _run(["dvc", "status"], repo).stdout
        for stage in (
            "pretrain@rgb_demo:",
            "train_scratch@medical_demo-1.0:",
            "evaluate_source@rgb_demo:",
        ):
            assert stage in status, status
    finally:
        loss.write_text(original)
    assert "up to date" in _run(["dvc", "status"], repo).stdout


def test_stage_script_change_marks_evaluate_stages(repo):
    repo, _ = repo
    prepare = repo / "pipelines/prepare.py"
    original = prepare.read_text()
    try:
        prepare.write_text(original + "\n# a change\n")
        status = _run(["dvc", "status"], repo).stdout
        for stage in ("evaluate@medical_demo:", "evaluate_source@rgb_demo:", "prepare@rgb_demo:"):
            assert stage in status, status
        assert "pretrain@rgb_demo:" not in status  # training does not run prepare.py
    finally:
        prepare.write_text(original)
    assert "up to date" in _run(["dvc", "status"], repo).stdout


# Each stage's import closure, measured in a process forked, per distinct (module, adapters)
# pair, from one parent that has imported only third-party packages: the child starts from the
# parent's modules, in which no project file is loaded (checked), so a project file in its
# closure is one its own imports load, as in a fresh interpreter, without paying the torch import
# again for every stage (the matrix train and evaluate stages share a pair).
_CLOSURES = """
import importlib, json, os, sys
for name in ("torch", "numpy", "h5py", "ignite", "matplotlib", "PIL", "scipy", "yaml", "monai",
             "nibabel", "pydicom", "SimpleITK", "rasterio"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
files = lambda: [getattr(m, "__file__", None) for m in list(sys.modules.values())]
out = {"preloaded": files(), "closures": []}
for module, *adapters in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            for name in adapters:
                from modalities import get_adapter
                get_adapter(name)
            data = json.dumps(files()).encode()
            while data:
                data = data[os.write(write, data):]
        except BaseException:
            import traceback
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        sys.exit(f"closure of {module} {adapters} failed")
    out["closures"].append(json.loads(b"".join(chunks)))
print(json.dumps(out))
"""


def test_every_stage_depends_on_the_code_it_imports(repo):
    """The deps in dvc.yaml cover every project file a stage's script imports, plus, for the
    per-dataset stages, the adapter package of the dataset (a matrix evaluate stage reaches it
    through the prepare report, which it depends on)."""
    repo, _ = repo
    from dvc.repo import Repo

    params = yaml.safe_load((repo / "params.yaml").read_text())
    with Repo(str(repo)) as dvc_repo:
        stages = {
            s.name: (s.cmd.split()[2], [str(d.def_path) for d in s.deps])
            for s in dvc_repo.index.stages
            if getattr(s, "cmd", None)
        }
    assert len(stages) >= 8, stages
    pairs = {}
    for name, (module, _deps) in stages.items():
        kind, _, item = name.partition("@")
        assert module.startswith("pipelines."), (name, module)
        adapters = []
        if kind == "prepare":
            adapters = [params["datasets"][item]["modality"]]
        elif kind == "demo":
            adapters = [item]
        pairs[name] = (module, *adapters)
    distinct = sorted(set(pairs.values()))
    out = json.loads(_run([sys.executable, "-c", _CLOSURES, json.dumps(distinct)], repo).stdout)

    def ours(paths):
        files = {Path(f).resolve() for f in paths if f}
        return sorted(f for f in files if repo.resolve() in f.parents)

    assert ours(out["preloaded"]) == []  # the forked children start with no project file loaded
    closures = dict(zip(distinct, (ours(c) for c in out["closures"]), strict=True))
    for name, (_module, deps) in stages.items():
        kind, _, item = name.partition("@")
        closure = closures[pairs[name]]
        assert closure, name
        covered = [(repo / d).resolve() for d in deps]
        for f in closure:
            assert any(f == c or c in f.parents for c in covered), (name, str(f), deps)
        if kind in ("evaluate", "evaluate_source"):
            dataset = item
            assert f"data/prepared/{dataset}.report.json" in deps, (name, deps)


def test_typo_in_params_stops_before_any_output_is_removed(repo):
    repo, _ = repo
    original = (repo / "params.yaml").read_text()
    model = repo / "models/medical_demo/scratch-f1.0/seed-0/model.pt"
    before = model.read_bytes()
    try:
        for key, value, needle in (
            ("model", {"variant": "dsod_tinyy", "input_size": 48, "overrides": {}}, "dsod_tiny"),
            ("targets", ["medical_demo", "nope"], "'nope' is not in datasets"),
        ):
            params = yaml.safe_load(original)
            params[key] = value
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            proc = _run(["dvc", "repro"], repo, check=False)
            assert proc.returncode != 0
            text = proc.stdout + proc.stderr
            assert "params.yaml" in text and needle in text, text[-2000:]
            assert model.read_bytes() == before  # the trained model is untouched
    finally:
        (repo / "params.yaml").write_text(original)
    _run(["dvc", "checkout"], repo, check=False)
    assert model.read_bytes() == before


def _exp_metrics(shown: list) -> dict[str, dict]:
    """``dvc exp show --json`` -> {name or rev: summary metrics} for every row it lists."""
    found: dict[str, dict] = {}

    def walk(node):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and "metrics" in data:
                metrics = (data.get("metrics") or {}).get("results/summary.json", {})
                found[node.get("name") or node["rev"]] = metrics.get("data")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(shown)
    return found


def test_experiments_compare_and_restore(repo, tmp_path):
    """docs/experiments.md, as a new user runs it: commit the baseline with its metrics, run
    two experiments, compare them, apply one, go back."""
    repo, _ = repo
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "baseline results"], repo)
    tracked = set(_run(["git", "ls-files"], repo).stdout.split())
    assert {"dvc.lock", "results/summary.json", "results/runs/pretrain-rgb_demo.json"} <= tracked
    baseline = json.loads((repo / "results/summary.json").read_text())

    for name, setting in (
        ("one-epoch", "train.epochs=1"),
        ("medical-lr", "+datasets.medical_demo.train.lr=0.01"),
    ):
        proc = _run(["dvc", "exp", "run", "--temp", "-n", name, "-S", setting], repo)
        assert "Running stage 'train_scratch@medical_demo-1.0'" in proc.stdout, proc.stdout[-2000:]
        # Cheap experiments stay cheap: nothing the source model or the stores depend on
        # changed (a dataset's training overrides are not params of its prepare stage).
        assert "Running stage 'pretrain@" not in proc.stdout, proc.stdout[-2000:]
        assert "Running stage 'prepare@" not in proc.stdout, proc.stdout[-2000:]

    shown = json.loads(_run(["dvc", "exp", "show", "--no-pager", "--json"], repo).stdout)
    metrics = _exp_metrics(shown)
    for row in ("workspace", "one-epoch", "medical-lr"):
        med = metrics[row]["medical_demo"]
        for part in ("scratch", "finetuned_from_rgb_demo", "difference_from_rgb_demo"):
            assert _is_number(med[part]["map50"]), (row, med)
    assert metrics["workspace"] == baseline
    assert metrics["one-epoch"] != baseline  # one epoch instead of two changes the models
    assert metrics["one-epoch"]["rgb_demo"] == baseline["rgb_demo"]  # source not retrained
    columns = _run(["dvc", "exp", "show", "--no-pager", "--only-changed", "--csv"], repo)
    header = columns.stdout.splitlines()[0].split(",")
    assert len(header) <= 40, header

    # Apply an experiment: its params, lock, metrics and every output come back; nothing stale.
    _run(["dvc", "exp", "apply", "one-epoch"], repo)
    assert json.loads((repo / "results/summary.json").read_text()) == metrics["one-epoch"]
    assert "up to date" in _run(["dvc", "status"], repo).stdout
    diff = json.loads(_run(["dvc", "metrics", "diff", "--json"], repo).stdout)
    row = diff["results/summary.json"]["medical_demo.scratch.map50"]
    assert _is_number(row["old"]) and _is_number(row["new"]), row
    assert row["old"] == baseline["medical_demo"]["scratch"]["map50"]

    html_dir = tmp_path / "plots"
    _run(["dvc", "plots", "diff", "HEAD", "-o", str(html_dir)], repo)
    html = (html_dir / "index.html").read_text()
    assert "<script" not in html and "http" not in html  # opens with no network
    images = [i for i in (html_dir / "static").iterdir() if i.suffix == ".png"]
    for rev in ("HEAD", "workspace"):
        assert any(i.name.startswith(f"{rev}_results_plots_val_map50") for i in images), images

    # Back to the committed baseline: its results, and no stage stale.
    _run(["git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock", "results"], repo)
    _run(["dvc", "checkout"], repo)
    assert "up to date" in _run(["dvc", "status"], repo).stdout
    assert json.loads((repo / "results/summary.json").read_text()) == baseline


def test_interrupted_repro_then_repro_completes(repo):
    """Kill `dvc repro` inside a training stage; the next `dvc repro` completes and leaves
    `dvc status` clean (stage outputs are written atomically, so no half file is taken as
    done)."""
    import signal
    import time

    repo, _ = repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"]["train"]["epochs"] = 3  # retrains the source model
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(repo),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ckpt = repo / "models/pretrain/rgb_demo/seed-0/checkpoints"
    model = repo / "models/pretrain/rgb_demo/seed-0/model.pt"
    deadline = time.time() + 180

    def retraining() -> bool:  # the old outputs are gone and the new run has checkpointed
        return not model.exists() and any(ckpt.glob("ckpt_epoch*.pt"))

    while time.time() < deadline and not retraining():
        if proc.poll() is not None:
            pytest.fail(f"dvc repro ended before the kill: {proc.stdout.read()[-2000:]}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage command it runs
    proc.wait()
    assert not model.exists()
    status = _run(["dvc", "status"], repo).stdout
    assert "pretrain@rgb_demo:" in status
    _run(["dvc", "repro"], repo)
    assert "up to date" in _run(["dvc", "status"], repo).stdout
    assert model.exists()


def test_study_command_runs_variants_and_writes_the_report(repo):
    """`python -m pipelines.study` (docs/study.md, "Run the study"): one experiment per
    variant, each variant's report under the output folder, the Results section with the
    ablation table, the experiments listed by `dvc exp show`, params.yaml as it was."""
    repo, _ = repo
    study = {
        "name": "tinystudy",
        "set": {"seeds": [0], "train_fractions": [1.0]},
        "variants": {"bn": {}, "gn": {"model.overrides.norm": "group"}},
    }
    (repo / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    (repo / "docs").mkdir(exist_ok=True)
    (repo / "docs/study.md").write_text("# Study\n\nHand-written text stays.\n")
    before = (repo / "params.yaml").read_bytes()
    _run([sys.executable, "-m", "pipelines.study"], repo)
    assert (repo / "params.yaml").read_bytes() == before
    doc = (repo / "docs/study.md").read_text()
    assert doc.startswith("# Study\n\nHand-written text stays.\n")
    assert "### Ablation" in doc and "| medical_demo | scratch | – | 1 |" in doc
    reports = {}
    for variant in ("bn", "gn"):
        folder = repo / "docs/study" / variant
        run = json.loads((folder / "run.json").read_text())
        assert run["seconds"] > 0 and "cores" in run["machine"]
        reports[variant] = json.loads((folder / "compare.json").read_text())
        assert {(r["seed"], r["train_fraction"]) for r in reports[variant]["runs"]} == {(0, 1.0)}
        assert f"](study/{variant}/report.md)" in doc
        assert (folder / "data_efficiency/medical_demo.png").stat().st_size > 0
    loss = {v: [r["loss"] for r in rep["runs"]] for v, rep in reports.items()}
    assert loss["bn"] != loss["gn"]  # two trainings, not one report copied
    # the workspace holds the last variant's models: GroupNorm ones
    config = json.loads((repo / "models/medical_demo/scratch-f1.0/seed-0/config.json").read_text())
    assert config["model_overrides"]["norm"] == "group"
    shown = _run(["dvc", "exp", "show", "--no-pager", "--csv"], repo).stdout
    assert "tinystudy-bn" in shown and "tinystudy-gn" in shown
    # a second run rewrites the section in place instead of appending another
    _run([sys.executable, "-m", "pipelines.study", "--report-only"], repo)
    assert (repo / "docs/study.md").read_text().count("## Results") == 1
