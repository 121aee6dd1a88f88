"""Precision/recall curve figures (matplotlib Agg, no pyplot global state)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_pr_curves"]


def plot_pr_curves(
    result: Mapping[str, Any], class_names: Sequence[str], path: str | os.PathLike
) -> Path:
    """Write the per-class PR curves of :func:`evaluate_voc`'s result as a PNG, atomically.

    Args:
        result: ``evaluate_voc`` output (``precision``, ``recall``, ``ap`` lists of K).
        class_names: K names, class c at index c-1.
        path: destination ``.png``; written through a temp file in the same folder.

    Returns:
        The path written. Classes without ground truth (AP NaN) are left out of the plot.
    """
    # Figure + FigureCanvasAgg instead of pyplot: no global backend switch, no figure leak.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    precisions, recalls, aps = result["precision"], result["recall"], result["ap"]
    if not (len(precisions) == len(recalls) == len(aps) == len(class_names)):
        raise ValueError(f"{len(class_names)} class names for {len(aps)} classes in the result")
    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, prec, rec, ap in zip(class_names, precisions, recalls, aps):
        if ap is None or math.isnan(ap):
            continue
        rec = np.asarray(rec, dtype=np.float64)
        prec = np.asarray(prec, dtype=np.float64)
        ax.plot(rec, prec, linewidth=1.2, label=f"{name} ({ap:.3f})")
    mean_ap = result.get("map", float("nan"))
    ax.set_title(f"Precision / recall per class, mAP {mean_ap:.4f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize="small", ncol=2 if len(aps) > 10 else 1)
    fig.tight_layout()

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
