"""Parameter and default-box counts of every registered variant, beside the paper's figures.

Run ``python -m dsod_core.model.summary`` for a table or ``--json`` for a JSON list of
``{"variant", "params", "num_priors", "paper_params"}``. Counts are learnable parameters
(``requires_grad``: conv weights, BN affine, L2-norm scales) for 21 classes (K = 20), 3 input
channels and each variant's own input size (300 px for the paper's models). ``--high-res``
builds every variant with the stride-4 source (``high_res_source``, docs/small_objects.md):
the extra parameters and default boxes it adds (the paper's figure is not comparable then).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import torch

from dsod_core.model.registry import build_model, get_variant, list_variants


def count_learnable(model: torch.nn.Module) -> int:
    """Number of scalar parameters that receive gradients (BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def summarize(
    variants: Sequence[str] | None = None,
    *,
    in_channels: int = 3,
    num_classes: int = 20,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """One row per variant: ``variant``, ``params``, ``num_priors``, ``paper_params`` (or
    None), plus ``notation``, ``input_size``, ``source_sizes``, ``source_channels``,
    ``description``. ``overrides``: ``DSODConfig`` fields over every variant's (e.g.
    ``high_res_source=True``)."""
    rows = []
    for name in variants if variants is not None else list_variants():
        variant = get_variant(name)
        # Only shapes are needed: the meta device skips allocation and initialisation work.
        with torch.device("meta"):
            model = build_model(name, in_channels=in_channels, num_classes=num_classes, **overrides)
        rows.append(
            {
                "variant": name,
                "params": count_learnable(model),
                "num_priors": model.num_priors,
                "paper_params": None if variant.paper_params is None else int(variant.paper_params),
                "notation": model.config.notation(),
                "prediction": model.config.prediction,
                "input_size": model.config.input_size,
                "source_sizes": list(model.source_sizes),
                "source_channels": list(model.source_channels),
                "description": variant.description,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width text table of ``summarize`` rows; parameters in millions."""
    header = (
        f"{'variant':36s} {'backbone':16s} {'pred':5s} {'size':>4s} {'params':>8s} "
        f"{'paper':>6s} {'diff':>7s} {'priors':>6s}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        paper = r["paper_params"]
        paper_s = "-" if paper is None else f"{paper / 1e6:.1f}M"
        diff_s = "-" if paper is None else f"{100.0 * (r['params'] - paper) / paper:+.1f}%"
        lines.append(
            f"{r['variant']:36s} {r['notation']:16s} {r['prediction']:5s} {r['input_size']:4d} "
            f"{r['params'] / 1e6:7.3f}M {paper_s:>6s} {diff_s:>7s} {r['num_priors']:6d}"
        )
    lines.append("params: learnable weights for 21 classes (K=20), 3 input channels.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list instead")
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=20, help="K, background excluded")
    parser.add_argument(
        "--high-res", action="store_true", help="with the stride-4 source (high_res_source)"
    )
    parser.add_argument("variants", nargs="*", help="variant names (default: all)")
    args = parser.parse_args(argv)
    extra = {"high_res_source": True} if args.high_res else {}
    rows = summarize(
        args.variants or None,
        in_channels=args.in_channels,
        num_classes=args.num_classes,
        **extra,
    )
    if args.json:
        keys = ("variant", "params", "num_priors", "paper_params")
        json.dump([{k: r[k] for k in keys} for r in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
