"""argparse value types shared by the verbs: each rejects bad input with a message that shows a valid one."""

from __future__ import annotations

import argparse


#: the --engine names of every verb: the keys of ``spikereveal.engines.runners.RUNNERS`` (a test keeps them equal;
#: spelled out so that building the parser imports no engine code)
ENGINE_CHOICES = ("ort", "torch", "trt", "triton")


def add_triton_arguments(parser) -> None:
    """``--triton-url``/``--triton-model``: where ``--engine triton`` sends each exposure."""
    parser.add_argument("--triton-url", metavar="HOST:PORT", default=None,
                        help="--engine triton: the Triton server's gRPC address, e.g. triton.lab:8001")
    parser.add_argument("--triton-model", metavar="NAME", default=None,
                        help="--engine triton: the model name in the server's repository (default spikereveal_ldn)")


def triton_options(args):
    """The TritonOptions of ``--triton-url``/``--triton-model`` (None when no URL is given)."""
    if getattr(args, "triton_url", None) is None:
        if getattr(args, "triton_model", None) is not None:
            from spikereveal.errors import ConfigError

            raise ConfigError("--triton-model needs --triton-url HOST:PORT")
        return None
    from spikereveal.engines.runners import TritonOptions

    kwargs = {"model": args.triton_model} if args.triton_model else {}
    return TritonOptions(url=args.triton_url, **kwargs)


def add_k_argument(parser, what: str, *aliases: str, use_default: bool = True) -> None:
    """``--k``: sharp frames per exposure, default ``DEFAULT_K`` (``use_default=False``: None, the config
    file's value applies); ``aliases``: older spellings kept working (e.g. ``--batch``)."""
    from spikereveal.kernels.timing import DEFAULT_K

    parser.add_argument("--k", *aliases, dest="k", type=positive_int, default=DEFAULT_K if use_default else None,
                        metavar="K", help=f"{what} (default {DEFAULT_K})")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def speed_factor(text: str) -> float:
    """A factor of real time, > 0; ``inf`` means as fast as possible."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a factor of real time such as 1, 5 or inf, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"speed must be > 0 (inf: as fast as possible), got {text!r}")
    return value


def parse_int_pair(text: str) -> tuple[int, int]:
    """``"250x400"`` -> ``(250, 400)``: the one parser of ``AxB`` text (ValueError when it is not one)."""
    first, second = (int(v) for v in text.lower().split("x"))
    return first, second


def int_pair(layout: str, example: str, minimum: int = 1):
    """An ``AxB`` argument type, e.g. ``int_pair("HxW", "250x400")``; both numbers must be >= ``minimum``."""

    def parse(text: str) -> tuple[int, int]:
        try:
            first, second = parse_int_pair(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {layout}, e.g. {example}, got {text!r}") from None
        if first < minimum or second < minimum:
            raise argparse.ArgumentTypeError(f"both numbers of {layout} must be >= {minimum}, got {text!r}")
        return first, second

    return parse


def preset_or_grid(text: str) -> str | tuple[int, int]:
    """A simulator preset's name, or ``HxW`` of the network grid as an ``(height, width)`` pair."""
    if "x" not in text.lower() or not text.lower().replace("x", "").isdigit():
        return text
    return int_pair("HxW", "64x96")(text)


def output_problem(path, kind: str) -> str | None:
    """Why ``path`` cannot become an output ``kind`` (``"dir"``, ``"file"`` or ``"any"``: either), or None when
    nothing in the way can be seen before writing: a file where the folder (or one of its parent folders)
    must be, or a folder where the file must be."""
    from pathlib import Path

    path = Path(path)
    if kind == "dir" and path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    if kind == "file" and path.is_dir():
        return f"{path} is a folder; give a file name"
    for parent in path.parents:  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, so {path} cannot be created inside it"
            break
    return None


def _output(kind: str, convert):
    def parse(text: str):
        problem = output_problem(text, kind)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{problem}; choose another path")
        return convert(text)

    parse.__name__ = {"dir": "output folder", "file": "output file"}.get(kind, "output path")
    return parse


def _as_path(text: str):
    from pathlib import Path

    return Path(text)


#: argparse types of output paths, checked before any work starts (``--out`` under an existing file fails at
#: once, not after a long run); the ``_text`` variants keep the value a str
output_dir = _output("dir", _as_path)
output_file = _output("file", _as_path)
output_dir_text = _output("dir", str)
output_file_text = _output("file", str)
output_path = _output("any", _as_path)
