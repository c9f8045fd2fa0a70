"""What a benchmark ran on: CPU, GPU, versions, engine, and on Jetson the power mode and clocks.

Every probe is absent-safe: a missing tool, file or package gives ``None`` (or leaves the key out for
Jetson-only keys), never an exception. Versions come from package metadata, so collecting them imports
neither torch nor onnxruntime. External tools run with a short timeout.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("numpy", "numba", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "pyzmq",
                      "opencv-python-headless")
_TOOL_TIMEOUT_S = 5.0


def _run_tool(*command: str) -> str | None:
    """stdout of a command, or None when it is absent, fails or times out."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("%s failed: %s", command[0], exc)
        return None
    if done.returncode != 0:
        logger.debug("%s exited with %d: %s", command[0], done.returncode, done.stderr.strip())
        return None
    return done.stdout.strip()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # a broken installation must not break a report
        return None


def gpus() -> list[dict] | None:
    """One dict per NVIDIA GPU from nvidia-smi (name, driver, memory); None without nvidia-smi."""
    out = _run_tool("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    if out is None:
        return None
    found = []
    for line in out.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if parts and parts[0]:
            found.append({"name": parts[0], "driver": parts[1] if len(parts) > 1 else None,
                          "memory": parts[2] if len(parts) > 2 else None})
    return found


def jetson_info() -> dict | None:
    """Jetson (L4T) release, nvpmodel power mode and jetson_clocks state; None when not on a Jetson."""
    release_file = Path("/etc/nv_tegra_release")
    if not release_file.exists() and shutil.which("nvpmodel") is None:
        return None
    info: dict = {}
    try:
        info["l4t_release"] = release_file.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError):
        info["l4t_release"] = None
    try:
        info["model"] = Path("/proc/device-tree/model").read_text(encoding="utf-8").strip("\x00\n ")
    except OSError:
        info["model"] = None
    power = _run_tool("nvpmodel", "-q")
    info["power_mode"] = " ".join(power.split()) if power else None  # "NV Power Mode: MAXN 0"
    clocks = _run_tool("jetson_clocks", "--show")  # needs root; None otherwise
    info["jetson_clocks"] = clocks
    return info


def collect_environment(*, engine: str | None = None, precision: str | None = None,
                        precision_verified: bool | None = None, ort_threads: int | None = None,
                        transfers_included: bool | None = None, extra: dict | None = None) -> dict:
    """The environment block of a report. ``precision`` is the engine's *real* precision (read from the
    built engine/graph, not the requested one); ``precision_verified`` says whether it was checked."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    from spikereveal import __version__

    environment = {
        "spikereveal": __version__,
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cores": os.cpu_count(),
        "cores_available": affinity,
        "load_average_1m": load,
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in VERSIONED_PACKAGES},
        "gpus": gpus(),
        "engine": engine,
        "engine_precision": precision,
        "engine_precision_verified": precision_verified,
        "ort_threads": ort_threads,
        "transfers_included": transfers_included,
    }
    jetson = jetson_info()
    if jetson is not None:
        environment["jetson"] = jetson
    environment.update(extra or {})
    return environment
