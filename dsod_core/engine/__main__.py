"""Train from a JSON/YAML config file: ``python -m dsod_core.engine CONFIG``.

Multi-GPU on one node: ``torchrun --nproc_per_node 4 -m dsod_core.engine cfg.yaml`` with
``backend: nccl`` in the config (Ignite reads torchrun's environment). Several nodes: add
``--nnodes N --node_rank R --master_addr HOST --master_port PORT`` to torchrun on each node.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from dsod_core.engine.config import TrainConfig
from dsod_core.engine.trainer import train
from dsod_core.errors import ConfigError, ProjectError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsod_core.engine", description=__doc__)
    parser.add_argument("config", type=Path, help="YAML/JSON file with TrainConfig fields")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    args = parser.parse_args(argv)
    try:
        try:
            data = yaml.safe_load(args.config.read_text())
        except (OSError, yaml.YAMLError) as exc:
            first = " ".join(str(exc).split())[:300]
            raise ConfigError(f"cannot read config ({first})", path=args.config) from exc
        if not isinstance(data, dict):
            raise ConfigError("config must be a mapping", path=args.config)
        if args.resume:
            data["resume"] = True
        train(TrainConfig.from_dict(data, source=str(args.config)))
    except ProjectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
