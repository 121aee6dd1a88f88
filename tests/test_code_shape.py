"""Code shape: no function or method in the packages is longer than ``MAX_LINES``.

A function counts from its ``def`` line to its last line (decorators excluded). A long one is
accepted only with its reason in a comment ``# long: <reason>`` on the line directly above
the ``def`` (above the decorators, if any) or on the ``def`` line itself; everything else
should be split into smaller units.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dsod_core", "modalities", "pipelines")
MAX_LINES = 60
REASON = re.compile(r"#\s*long:\s*\S")


def _has_reason(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    candidates = [lines[node.lineno - 1]]  # the def line
    if first >= 2:
        candidates.append(lines[first - 2])  # the line directly above (decorators included)
    if node.lineno != first and node.lineno >= 2:
        candidates.append(lines[node.lineno - 2])  # between the decorators and the def
    return any(REASON.search(line) for line in candidates)


def long_functions(root: Path = ROOT) -> list[str]:
    """``path:line name (N lines)`` for every over-long function without a reason comment."""
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            lines = text.splitlines()
            for node in ast.walk(ast.parse(text, filename=str(path))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                length = node.end_lineno - node.lineno + 1
                if length > MAX_LINES and not _has_reason(lines, node):
                    rel = path.relative_to(root)
                    found.append(f"{rel}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_long_functions() -> None:
    found = long_functions()
    assert not found, (
        f"{len(found)} function(s) longer than {MAX_LINES} lines; split them, or put "
        "'# long: <reason>' on the line above the def:\n" + "\n".join(found)
    )


def test_reason_comment_is_honoured(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    pkg = tmp_path / "dsod_core"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        f"def short():\n    pass\n\n\ndef too_long():\n{body}\n\n\n"
        f"# long: a table, one line per entry\n@staticmethod\ndef excused():\n{body}\n\n\n"
        f"def excused_inline():  # long: a table\n{body}\n"
    )
    for name in PACKAGES[1:]:
        (tmp_path / name).mkdir()
    assert long_functions(tmp_path) == [f"dsod_core/a.py:5 too_long ({MAX_LINES + 1} lines)"]
