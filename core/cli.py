"""The ``spikereveal`` console script. argparse lives here and in ``spikereveal.commands`` only.

Each verb is a module in ``spikereveal.commands`` with ``register(subparsers)``; the module imports its
heavy dependencies inside its handler so that ``spikereveal --help`` needs neither torch nor TensorRT.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from spikereveal import __version__
from spikereveal.errors import SpikeRevealError

# Verbs, in the order ``--help`` lists them. A verb appears here once it works end to end.
COMMAND_MODULES: tuple[str, ...] = (
    "demo", "simulate", "deblur", "serve", "replay", "worker", "train", "eval", "adapt", "import_weights", "export",
    "build_engine", "calibrate", "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikereveal",
        description="Live deblurring for hybrid spike-camera + RGB rigs.",
    )
    parser.add_argument("--version", action="version", version=f"spikereveal {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"spikereveal.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SpikeRevealError as exc:
        print(f"spikereveal {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spikereveal {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
