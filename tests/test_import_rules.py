"""The layering of the packages, read from the source (``ast``, nothing is imported):

- ``dsod_core`` (the library) imports neither ``modalities`` nor ``pipelines``;
- ``modalities`` (the adapters) import none of ``dsod_core.engine``, ``dsod_core.inference``,
  ``dsod_core.export``, ``dsod_core.runners`` or ``pipelines``;
- a stage script in ``pipelines/`` (every module but the shared :data:`SHARED` ones) imports no
  other stage script.

Every import statement counts, also one inside a function or under ``TYPE_CHECKING``, and so
does ``importlib.import_module("...")`` with a literal name. Each test lists every offender.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dsod_core", "modalities", "pipelines")
SHARED = {"_common", "params", "cli", "__init__"}  # pipelines/ modules that are not stages
FORBIDDEN = {
    "dsod_core": ("modalities", "pipelines"),
    "modalities": (
        "dsod_core.engine",
        "dsod_core.inference",
        "dsod_core.export",
        "dsod_core.runners",
        "pipelines",
    ),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything ``path`` imports. ``from a.b import c`` gives
    ``a.b`` and ``a.b.c`` (``c`` may be a module); relative imports are made absolute."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                prefix = ".".join(base)
                name = f"{prefix}.{node.module}" if node.module else prefix
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{name}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if called in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                if isinstance(arg.value, str):
                    yield node.lineno, arg.value


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def sources(package: str, root: Path = ROOT) -> list[Path]:
    return sorted(p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)


def forbidden_imports(package: str, root: Path = ROOT) -> list[str]:
    """``path:line: imports NAME`` for every import of a name ``package`` must not use."""
    found = []
    for path in sources(package, root):
        seen = set()
        for line, name in sorted(imported_names(path, root)):
            hit = next((p for p in FORBIDDEN[package] if _within(name, p)), None)
            if hit and (line, hit) not in seen:
                seen.add((line, hit))
                rel = path.relative_to(root).as_posix()
                found.append(f"{rel}:{line}: imports {hit} ({name})")
    return found


def stage_cross_imports(root: Path = ROOT) -> list[str]:
    """``path:line: imports pipelines.X`` for every stage script importing another one."""
    stages = {p.stem for p in (root / "pipelines").glob("*.py") if p.stem not in SHARED}
    found = []
    for path in sources("pipelines", root):
        if path.stem not in stages:
            continue
        seen = set()
        for line, name in sorted(imported_names(path, root)):
            parts = name.split(".")
            if len(parts) >= 2 and parts[0] == "pipelines" and parts[1] in stages:
                if parts[1] != path.stem and (line, parts[1]) not in seen:
                    seen.add((line, parts[1]))
                    rel = path.relative_to(root).as_posix()
                    found.append(f"{rel}:{line}: imports stage script pipelines.{parts[1]}")
    return found


def _report(rule: str, offenders: list[str]) -> str:
    return f"{len(offenders)} import(s) break the rule: {rule}\n  " + "\n  ".join(offenders)


@pytest.mark.parametrize("package", ["dsod_core", "modalities"])
def test_package_imports_stay_in_their_layer(package):
    offenders = forbidden_imports(package)
    rule = f"{package} never imports {', '.join(FORBIDDEN[package])}"
    assert not offenders, _report(rule, offenders)


def test_stage_scripts_do_not_import_each_other():
    offenders = stage_cross_imports()
    rule = f"a stage script in pipelines/ imports no other (shared modules: {sorted(SHARED)})"
    assert not offenders, _report(rule, offenders)


def test_the_scanner_sees_every_kind_of_import(tmp_path):
    """The checks above would pass vacuously if the scanner missed imports."""
    pkg = tmp_path / "modalities" / "x"
    pkg.mkdir(parents=True)
    (tmp_path / "modalities" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .. import base\n")
    (pkg / "a.py").write_text(
        "import dsod_core.engine.config\n"
        "from dsod_core import inference, io\n"
        "from dsod_core.metrics import voc\n"
        "def f():\n"
        "    from pipelines.params import study_axes\n"
        "    import importlib\n"
        "    return importlib.import_module('dsod_core.export')\n"
    )
    assert forbidden_imports("modalities", tmp_path) == [
        "modalities/x/a.py:1: imports dsod_core.engine (dsod_core.engine.config)",
        "modalities/x/a.py:2: imports dsod_core.inference (dsod_core.inference)",
        "modalities/x/a.py:5: imports pipelines (pipelines.params)",
        "modalities/x/a.py:7: imports dsod_core.export (dsod_core.export)",
    ]
    assert (1, "modalities.base") in set(imported_names(pkg / "__init__.py", tmp_path))
    stages = tmp_path / "pipelines"
    stages.mkdir()
    for name, text in {
        "__init__.py": "",
        "_common.py": "",
        "params.py": "",
        "cli.py": "from pipelines.train import main\n",  # shared: may import stages
        "train.py": "from pipelines._common import x\nfrom pipelines.params import y\n",
        "compare.py": "from pipelines import train\nfrom .evaluate import run\n",
        "evaluate.py": "import pipelines.evaluate\n",  # itself: fine
    }.items():
        (stages / name).write_text(text)
    assert stage_cross_imports(tmp_path) == [
        "pipelines/compare.py:1: imports stage script pipelines.train",
        "pipelines/compare.py:2: imports stage script pipelines.evaluate",
    ]
    # the project's own sources are found and parsed
    assert any(n == "pipelines.params" for _, n in imported_names(ROOT / "pipelines/train.py"))
