"""The ``spikereveal`` console script. argparse lives here and in ``spikereveal.commands`` only.

Each verb is a module in ``spikereveal.commands`` with ``register(subparsers)``; the module imports its
heavy dependencies inside its handler so that ``spikereveal --help`` needs neither torch nor TensorRT.

Bad input never ends in a traceback: SpikeRevealError (typed errors raised on purpose), a missing optional
package (torch, onnx, TensorRT, matplotlib, scikit-image) and an output path the OS refuses (a folder
under an existing file, no permission) all end in one message and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys

from spikereveal import __version__
from spikereveal.errors import MissingDependencyError, SpikeRevealError

# Verbs, in the order ``--help`` lists them. A verb appears here once it works end to end.
COMMAND_MODULES: tuple[str, ...] = (
    "demo", "simulate", "deblur", "serve", "replay", "worker", "keys", "train", "eval", "adapt", "import_weights",
    "interpolate_weights",
    "export", "build_engine", "calibrate", "bench",
)

#: optional packages -> the extra that installs them (``pip install 'spikereveal[EXTRA]'``)
OPTIONAL_PACKAGES = {"torch": "train", "onnx": "train", "tensorrt": "trt", "cuda": "trt", "matplotlib": "plot",
                     "skimage": "sim"}
_VERBOSE_HELP = "more log output (-vv: debug); also accepted after the verb"


class _VerbParser(argparse.ArgumentParser):
    """A verb's parser: also takes ``-v/--verbose`` after the verb (``spikereveal deblur ... -v``).

    Sub-verbs (``bench kernels``, ``train ldn``, ``calibrate time``) are of this class too: argparse creates
    nested subparsers with the class of their parent.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("-v", "--verbose", dest="verbose_after", action="count", default=argparse.SUPPRESS,
                          help=_VERBOSE_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikereveal",
        description="Live deblurring for hybrid spike-camera + RGB rigs.",
    )
    parser.add_argument("--version", action="version", version=f"spikereveal {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=_VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_VerbParser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"spikereveal.commands.{name}").register(subparsers)
    return parser


def _missing_package(exc: ModuleNotFoundError, command: str) -> MissingDependencyError | None:
    """A MissingDependencyError for an optional package that is not installed (None: not one of those)."""
    root = (exc.name or "").split(".")[0]
    extra = OPTIONAL_PACKAGES.get(root)
    return None if extra is None else MissingDependencyError(root, f"spikereveal {command}", extra)


def _output_problem(exc: OSError) -> str | None:
    """A message for an output path the OS refused (None: not such an error, let it surface)."""
    if exc.filename is None:
        return None
    if exc.errno in (errno.ENOSPC, errno.EROFS):  # a full disk, a read-only filesystem
        return f"{exc.filename}: {exc.strerror}; free disk space or choose an output path on a writable disk"
    if isinstance(exc, FileNotFoundError):  # a missing input, or an output folder that cannot be made there
        return (f"{exc.filename}: {exc.strerror}; check the path (an input that is not there, or an output folder "
                "that cannot be created there: choose another output path)")
    if not isinstance(exc, (NotADirectoryError, FileExistsError, IsADirectoryError, PermissionError)):
        return None
    if isinstance(exc, PermissionError):
        return f"{exc.filename}: {exc.strerror}; choose a path you may read and write, or change its permissions"
    return (f"{exc.filename}: {exc.strerror}; a file stands where a folder is needed (or the reverse): choose "
            "another output path")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = args.verbose + getattr(args, "verbose_after", 0)
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SpikeRevealError as exc:
        message = str(exc)
    except ModuleNotFoundError as exc:
        missing = _missing_package(exc, args.command)
        if missing is None:
            raise
        message = str(missing)
    except OSError as exc:
        message = _output_problem(exc)
        if message is None:
            raise
    except KeyboardInterrupt:
        print(f"spikereveal {args.command}: interrupted", file=sys.stderr)
        return 130
    print(f"spikereveal {args.command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
