"""What the prepare stage tells about real data: background samples (no box) per split, skips
grouped by reason (in the closing line, the one-line failures and the JSON report), and
progress output that never redraws a bar where stderr is not a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dsod_core.detection import DetectRun, ProgressLines, progress, progress_bar, progress_mode
from dsod_core.errors import ConfigError, DataError
from pipelines.prepare import main, prepare, reason_kind, reasons_text, summary_line
from tests.test_reliability import DATASET, full_params, rgb_tree, voc_xml

MALFORMED = "<annotation><object><name>circle"


def _tree(tmp_path: Path, n: int = 8) -> tuple[Path, dict]:
    root = tmp_path / "data"
    entry = rgb_tree(root, n=n)
    entry["root"] = str(root)
    return root, entry


def _run(tmp_path: Path, entry: dict, on_error: str = "skip") -> dict:
    out = tmp_path / "out"
    return prepare(DATASET, entry, out / "d.h5", out / "d.report.json", on_error=on_error)


def test_background_samples_counted_per_split(tmp_path: Path, monkeypatch, capsys) -> None:
    root, entry = _tree(tmp_path)
    for i in (1, 2, 5, 6):  # no object: background-only images
        (root / f"Annotations/im{i}.xml").write_text(voc_xml(f"im{i}.png", []))
    # im5, im6 and im7 form the val split: one image with boxes, two without.
    (root / "ImageSets/Main/train.txt").write_text("\n".join(f"im{i}" for i in range(5)) + "\n")
    (root / "ImageSets/Main/val.txt").write_text("im5\nim6\nim7\n")
    entry["adapter"]["val_sets"] = ["val"]
    report = _run(tmp_path, entry, on_error="error")
    assert report["samples"] == {"train": 5, "val": 3, "test": 0}
    assert report["background"] == {"train": 2, "val": 2, "test": 0}
    saved = json.loads((tmp_path / "out/d.report.json").read_text())
    assert saved["background"] == report["background"]
    assert saved["skipped_by_reason"] == []
    assert sum(g["count"] for g in saved["warnings_by_reason"]) == len(saved["warnings"])
    line = summary_line(report)
    assert "8 samples (train / val / test 5 / 3 / 0), of them background 2 / 2 / 0" in line
    assert f"0 unit(s) skipped; {len(report['warnings'])} warning(s)" in line

    # The stage's own closing line, as a pipeline log shows it.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full_params(entry)))
    with pytest.raises(SystemExit) as code:
        main([DATASET, "--out", "o/d.h5", "--report", "o/d.report.json"])
    out, err = capsys.readouterr()
    assert code.value.code == 0 and err == ""
    assert out.strip().splitlines() == [
        summary_line(json.loads(Path("o/d.report.json").read_text()))
    ]


def _bad_units(root: Path) -> None:
    """Three kinds of bad unit: two malformed XML files (found while listing), two images
    that do not exist (listing) and one box outside its image (reading)."""
    for i in (1, 4):
        (root / f"Annotations/im{i}.xml").write_text(MALFORMED)
    for i in (2, 6):
        (root / f"JPEGImages/im{i}.png").unlink()
    (root / "Annotations/im5.xml").write_text(voc_xml("im5.png", [("circle", [20, 5, 45, 12])]))


def test_skips_grouped_by_reason(tmp_path: Path) -> None:
    root, entry = _tree(tmp_path)
    _bad_units(root)
    (root / "Annotations/im7.xml").write_text(MALFORMED)  # three malformed now
    report = _run(tmp_path, entry)
    assert report["samples"]["train"] == 2  # im0, im3
    groups = report["skipped_by_reason"]
    assert [g["count"] for g in groups] == [3, 2, 1], groups
    assert groups[0]["reason"].startswith("malformed VOC XML")
    assert groups[0]["first_file"].endswith("im1.xml")
    assert "im1" not in groups[0]["reason"]  # the reason without its file
    assert groups[2]["reason"].startswith("box [19.0, 4.0, 45.0, 12.0]")
    assert sum(g["count"] for g in groups) == len(report["skipped"]) == 6
    line = summary_line(report)
    assert "6 unit(s) skipped (3 x " in line and "im1.xml: sample im1: malformed VOC XML" in line
    assert "; 2 x " in line and "; 1 more reason(s) in the report)" in line
    assert "lies outside" not in line  # the third reason is only in the report


def test_no_data_names_the_commonest_reasons(tmp_path: Path) -> None:
    root, entry = _tree(tmp_path, n=6)
    for i in range(6):  # every unit bad while listing: the adapter finds nothing
        if i % 3:
            (root / f"Annotations/im{i}.xml").write_text(MALFORMED)
        else:
            (root / f"JPEGImages/im{i}.png").unlink()
    with pytest.raises(DataError) as err:
        _run(tmp_path, entry)
    message = str(err.value)
    assert "the adapter found no data; 6 unit(s) skipped (4 x " in message, message
    assert "im1.xml: sample im1: malformed VOC XML" in message
    assert "; 2 x " in message and "im0" in message and "\n" not in message
    failed = json.loads((tmp_path / "out/d.failed.json").read_text())
    assert [g["count"] for g in failed["skipped_by_reason"]] == [4, 2]


def test_nothing_written_names_the_reasons(tmp_path: Path) -> None:
    root, entry = _tree(tmp_path, n=3)
    for i in range(3):  # found while reading: every box outside its image
        (root / f"Annotations/im{i}.xml").write_text(
            voc_xml(f"im{i}.png", [("circle", [20, 5, 45 + i, 12])])
        )
    with pytest.raises(DataError) as err:
        _run(tmp_path, entry)
    message = str(err.value)
    assert "no samples were written; 3 unit(s) skipped (3 x " in message, message
    assert "im0.xml: sample im0: box [19.0, 4.0, 45.0, 12.0]" in message


def test_reason_kind_removes_the_file_and_numbers() -> None:
    a = {
        "file": "/d/A/im3.xml",
        "sample": "im3",
        "reason": "/d/A/im3.xml: sample im3: box 3 of im3",
    }
    b = {"file": "/d/A/x9.xml", "sample": "x9", "reason": "/d/A/x9.xml: sample x9: box 12 of x9"}
    c = {"file": "/d/A/x9.xml", "sample": "x9", "reason": "/d/A/x9.xml: unknown class 'dog'"}
    assert reason_kind(a) == reason_kind(b) == "box N of <file>"
    assert reason_kind(c) != reason_kind(a)
    short = [  # one-letter stems: only whole words are the file's
        {"file": f"/r/{x}.tif", "sample": None, "reason": f"/r/{x}.tif: cannot read {x}.tif band"}
        for x in "abn"
    ]
    assert {reason_kind(e) for e in short} == {"cannot read <file> band"}
    warning = {"file": "w.tif", "sample": None, "reason": "label outside the raster"}
    assert reasons_text([a, c, b, warning], shown=1) == (
        "(2 x /d/A/im3.xml: sample im3: box 3 of im3; 2 more reason(s) in the report)"
    )
    assert reasons_text([warning]) == "(1 x w.tif: label outside the raster)"


# --- progress -----------------------------------------------------------------------------------
def test_no_redraws_without_a_terminal(capsys, monkeypatch) -> None:
    monkeypatch.delenv("DSOD_PROGRESS", raising=False)
    assert progress_mode() == "lines"  # capsys: stderr is not a terminal
    assert isinstance(progress_bar(10, "detect x", "image", DetectRun(Path("o"))), ProgressLines)
    for _ in progress(range(200), desc="prepare d", unit="unit"):
        pass
    bar = progress(total=50, desc="detect x", unit="image")
    bar.update(50)
    bar.close()
    out, err = capsys.readouterr()
    assert "\r" not in out + err and err == ""
    assert out == ""  # a loop shorter than the interval prints nothing

    # Forced bars draw on stderr with carriage returns: the check above can fail.
    monkeypatch.setenv("DSOD_PROGRESS", "1")
    for _ in progress(range(3), desc="forced", unit="unit"):
        pass
    assert "\r" in capsys.readouterr().err
    monkeypatch.setenv("DSOD_PROGRESS", "0")
    assert progress_mode() == "off" and progress_mode(requested=True) == "off"
    monkeypatch.setenv("DSOD_PROGRESS", "yes")
    with pytest.raises(ConfigError, match="DSOD_PROGRESS must be 1, 0 or lines"):
        progress_mode()
    monkeypatch.delenv("DSOD_PROGRESS")
    assert progress_mode(requested=False) == "off"


def test_plain_lines_at_each_tenth(capsys) -> None:
    ticks = iter(range(0, 10_000, 3))  # every update: 3 seconds later
    lines = ProgressLines(range(100), desc="prepare d", unit="unit", clock=lambda: next(ticks))
    assert sum(1 for _ in lines) == 100
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 10, out  # 10 %, 20 %, ... 100 %: one line each at most
    assert out[0].startswith("prepare d: 10/100 unit (10%, ") and out[-1].startswith(
        "prepare d: 100/100 unit (100%, 300 s)"
    )
    ticks = iter(range(0, 10_000, 4))
    unknown = ProgressLines(desc="detect v", unit="slice", clock=lambda: next(ticks))
    for _ in range(10):
        unknown.update(2)
    assert capsys.readouterr().out.splitlines() == [
        "detect v: 6 slice (12 s)",
        "detect v: 12 slice (24 s)",
        "detect v: 18 slice (36 s)",
    ]
