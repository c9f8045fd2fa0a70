"""argparse value types shared by the verbs: each rejects bad input with a message that shows a valid one."""

from __future__ import annotations

import argparse


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


def int_pair(layout: str, example: str, minimum: int = 1):
    """An ``AxB`` argument type, e.g. ``int_pair("HxW", "250x400")``; both numbers must be >= ``minimum``."""

    def parse(text: str) -> tuple[int, int]:
        try:
            first, second = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {layout}, e.g. {example}, got {text!r}") from None
        if first < minimum or second < minimum:
            raise argparse.ArgumentTypeError(f"both numbers of {layout} must be >= {minimum}, got {text!r}")
        return first, second

    return parse
