"""Jetson power and energy per frame from ``tegrastats``, run as a separate logger process.

``tegrastats --interval MS`` prints one line per interval with the power rails as ``NAME cur/avg``:
``VDD_IN 4770mW/4770mW VDD_CPU_GPU_CV 641mW/641mW`` (JetPack 5/6) or ``POM_5V_IN 3000/3000``
(JetPack 4, no unit). :class:`PowerLogger` starts it, stamps every line with the host monotonic clock on
arrival and keeps the instantaneous readings; :func:`power_summary` turns the samples of a time span into
mean power per rail and energy per output frame. The board's input rail (``VDD_IN``, ``POM_5V_IN``,
``VIN_SYS_5V0``, first found) is the total; without one the rails are summed, and the summary says which.
jtop is not used (AGPL, needs a root service). Without tegrastats everything is absent-safe: the logger
reports itself unavailable and the summary is None.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from typing import Sequence

import numpy as np

from spikereveal.errors import ConfigError

logger = logging.getLogger(__name__)

TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")
DEFAULT_INTERVAL_MS = 100
_RAIL_WITH_UNIT = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*) (\d+)mW/(\d+)mW")
_RAIL_JETPACK4 = re.compile(r"\b(POM_[A-Z0-9_]+) (\d+)/(\d+)\b")


def parse_tegrastats_line(line: str) -> dict[str, int]:
    """Instantaneous power per rail in mW from one tegrastats line (empty when the line has none)."""
    rails = {name: int(current) for name, current, _ in _RAIL_WITH_UNIT.findall(line)}
    if not rails:
        rails = {name: int(current) for name, current, _ in _RAIL_JETPACK4.findall(line)}
    return rails


def total_rail(rails: Sequence[str]) -> str | None:
    """The rail that measures the whole module, or None (then the rails are summed)."""
    return next((name for name in TOTAL_RAILS if name in rails), None)


class PowerLogger:
    """``tegrastats`` in its own process; ``samples`` holds ``(t_ns, {rail: mW})`` as lines arrive.

    Use as a context manager around the measured run. ``command`` replaces the tegrastats command line
    (tests, or a wrapper that needs sudo); ``clock_ns`` stamps the lines (the pipeline's monotonic clock).
    """

    def __init__(self, interval_ms: int = DEFAULT_INTERVAL_MS, command: Sequence[str] | None = None,
                 clock_ns=time.monotonic_ns):
        if interval_ms < 1:
            raise ConfigError(f"interval_ms must be >= 1, got {interval_ms}")
        self.command = list(command) if command is not None else ["tegrastats", "--interval", str(int(interval_ms))]
        self.clock_ns = clock_ns
        self.samples: list[tuple[int, dict[str, int]]] = []
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return shutil.which(self.command[0]) is not None

    def start(self) -> bool:
        """Start logging; False (and a debug log line) when the tool is absent or cannot start."""
        if not self.available:
            logger.debug("%s not found: no power figures", self.command[0])
            return False
        try:
            self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                             text=True, bufsize=1)
        except OSError as exc:
            logger.warning("cannot start %s: %s", self.command[0], exc)
            return False
        self._reader = threading.Thread(target=self._read, args=(self._process.stdout,), name="power-logger",
                                        daemon=True)
        self._reader.start()
        return True

    def _read(self, stream) -> None:
        for line in stream:
            rails = parse_tegrastats_line(line)
            if rails:
                self.samples.append((self.clock_ns(), rails))

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for the logger process to end by itself (a finite ``command``) and its output to be read."""
        if self._process is not None:
            self._process.wait(timeout=timeout_s)
        if self._reader is not None:
            self._reader.join(timeout=timeout_s)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def __enter__(self) -> "PowerLogger":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def power_summary(samples: Sequence[tuple[int, dict]], *, start_ns: int | None = None, end_ns: int | None = None,
                  frames: int | None = None) -> dict | None:
    """Mean power over the samples within ``[start_ns, end_ns]`` and the energy per output frame.

    Energy = mean total power x (end - start) (the span of the samples when not given). None without samples.
    """
    chosen = [(t, rails) for t, rails in samples
              if (start_ns is None or t >= start_ns) and (end_ns is None or t <= end_ns)]
    if not chosen:
        return None
    names = sorted({name for _, rails in chosen for name in rails})
    mean_mw = {name: float(np.mean([rails[name] for _, rails in chosen if name in rails])) for name in names}
    total_name = total_rail(names)
    totals = [rails[total_name] if total_name else sum(rails.values()) for _, rails in chosen if
              not total_name or total_name in rails]
    mean_total_w = float(np.mean(totals)) / 1e3
    first = start_ns if start_ns is not None else chosen[0][0]
    last = end_ns if end_ns is not None else chosen[-1][0]
    span_s = max(0, last - first) / 1e9
    energy_j = mean_total_w * span_s
    return {
        "source": "tegrastats",
        "samples": len(chosen),
        "rails_mean_mw": mean_mw,
        "total_rail": total_name or "sum of rails",
        "mean_total_w": mean_total_w,
        "span_s": span_s,
        "energy_j": energy_j,
        "frames": frames,
        "energy_per_frame_mj": energy_j / frames * 1e3 if frames and span_s > 0 else None,
    }
