"""The ``dsod`` console command (``[project.scripts]`` in ``pyproject.toml``).

``dsod detect ...`` is ``python -m pipelines.detect ...``. This module imports nothing heavy
so that ``dsod --help`` and a mistyped subcommand answer at once; the subcommand's module
(torch, MONAI, the adapters) is imported only when it runs.
"""

from __future__ import annotations

import sys

USAGE = (
    "usage: dsod detect --model MODEL.pt --out DIR INPUT [INPUT ...]\n\n"
    "subcommands:\n  detect    run a trained model on new files (dsod detect -h)"
)


def main() -> None:
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    if argv[0] != "detect":
        print(f"error: unknown subcommand {argv[0]!r} (known: detect)", file=sys.stderr)
        sys.exit(2)
    from pipelines.detect import main as detect

    detect(argv[1:])


if __name__ == "__main__":
    main()
