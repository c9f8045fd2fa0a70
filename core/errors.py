"""Typed errors for bad user input. Each message says what is wrong and how to fix it."""

from __future__ import annotations

import os


class SpikeRevealError(Exception):
    """Base class of every error spikereveal raises on purpose (the CLI prints these without a traceback)."""


class ConfigError(SpikeRevealError, ValueError):
    """A setting or argument has an invalid value."""


class MissingDependencyError(SpikeRevealError, ImportError):
    """An optional dependency needed by the requested feature is not installed."""

    def __init__(self, package: str, feature: str, extra: str):
        self.package = package
        super().__init__(
            f"{feature} needs '{package}', which is not installed; "
            f"install it with: pip install 'spikereveal[{extra}]'"
        )


class FormatError(SpikeRevealError, ValueError):
    """A file does not follow the format it claims; names the file and, where known, the line."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path = os.fspath(path)
        self.line = line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class BenchmarkError(SpikeRevealError):
    """A benchmark measured less than it was asked to (nothing, or fewer exposures): it says what was
    missing, the counters that explain why, and what to change."""


class RecordingError(FormatError):
    """A recording directory violates the recording contract (SPEC §5)."""


def require(package: str, feature: str, extra: str):
    """Import an optional dependency or raise one clear MissingDependencyError."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise MissingDependencyError(package, feature, extra) from exc
