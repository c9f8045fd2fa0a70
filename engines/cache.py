"""Content-addressed caches for engines: TensorRT plans keyed by everything that makes a plan invalid.

A TensorRT engine is tied to the exact ONNX graph, the TensorRT version, the GPU architecture, the
precision it was built for and its (static) input shapes (SPEC §8). The key holds all five; the cache file
name is a digest of the key, and a JSON sidecar stores the key in clear so a human can see what a plan is.
Pure Python: no TensorRT import, so the key logic is testable anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from spikereveal.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "int8")
_HASH_CHUNK_BYTES = 1 << 20


def check_precision_name(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_shapes(shapes: Mapping[str, tuple[int, ...]]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    normalised = []
    for name, shape in sorted(dict(shapes).items()):
        dims = tuple(int(d) for d in shape)
        if not dims or any(d <= 0 for d in dims):
            raise ConfigError(f"engine input {name!r} needs a static positive shape, got {tuple(shape)}")
        normalised.append((str(name), dims))
    if not normalised:
        raise ConfigError("an engine cache key needs at least one input shape")
    return tuple(normalised)


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized TensorRT plan depends on."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    shapes: tuple[tuple[str, tuple[int, ...]], ...]

    def __post_init__(self):
        if len(self.onnx_sha256) != 64 or any(c not in "0123456789abcdef" for c in self.onnx_sha256):
            raise ConfigError(f"onnx_sha256 must be 64 lowercase hex digits, got {self.onnx_sha256!r}")
        if not self.tensorrt_version:
            raise ConfigError("an engine cache key needs the TensorRT version")
        if not self.gpu_name:
            raise ConfigError("an engine cache key needs the GPU name")
        major, minor = self.compute_capability
        object.__setattr__(self, "compute_capability", (int(major), int(minor)))
        check_precision_name(self.precision)
        object.__setattr__(self, "shapes", _normalise_shapes(dict(self.shapes)))

    @classmethod
    def create(
        cls,
        onnx_sha256: str,
        tensorrt_version: str,
        gpu_name: str,
        compute_capability: tuple[int, int],
        precision: str,
        shapes: Mapping[str, tuple[int, ...]],
    ) -> "EngineKey":
        return cls(onnx_sha256, tensorrt_version, gpu_name.strip(), tuple(compute_capability), precision,
                   _normalise_shapes(shapes))

    def to_dict(self) -> dict:
        values = asdict(self)
        values["compute_capability"] = list(self.compute_capability)
        values["shapes"] = {name: list(dims) for name, dims in self.shapes}
        return values

    def digest(self) -> str:
        """Stable hex digest of the key (independent of dict order and Python version)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def file_stem(self) -> str:
        """Readable file name: precision, GPU architecture, TensorRT version, then the key digest."""
        major, minor = self.compute_capability
        version = "".join(c if c.isalnum() or c == "." else "_" for c in self.tensorrt_version)
        return f"ldn_{self.precision}_sm{major}{minor}_trt{version}_{self.digest()[:16]}"


def default_cache_dir() -> Path:
    """``$SPIKEREVEAL_CACHE`` or ``$XDG_CACHE_HOME/spikereveal`` or ``~/.cache/spikereveal``."""
    explicit = os.environ.get("SPIKEREVEAL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spikereveal"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class EngineCache:
    """A directory of ``<stem>.plan`` files with ``<stem>.json`` sidecars, plus per-GPU timing caches."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir() / "engines"

    def plan_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.file_stem()}.plan"

    def timing_cache_path(self, key: EngineKey) -> Path:
        """Timing caches depend on TensorRT version and GPU only, so models share them."""
        major, minor = key.compute_capability
        gpu = "".join(c if c.isalnum() else "_" for c in key.gpu_name)
        return self.root / f"timing_{gpu}_sm{major}{minor}_trt{key.tensorrt_version}.cache"

    def load(self, key: EngineKey) -> bytes | None:
        """The cached plan, or None when absent or its sidecar names a different key (digest collision)."""
        plan, sidecar = self.plan_path(key), self.plan_path(key).with_suffix(".json")
        if not plan.is_file() or not sidecar.is_file():
            return None
        try:
            stored = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if stored.get("key") != key.to_dict():
            return None
        return plan.read_bytes()

    def store(self, key: EngineKey, plan: bytes, info: Mapping | None = None) -> Path:
        path = self.plan_path(key)
        _atomic_write(path, bytes(plan))
        sidecar = {"key": key.to_dict(), "info": dict(info or {})}
        _atomic_write(path.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True).encode())
        return path
