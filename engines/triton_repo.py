"""A Triton Inference Server model repository for the student (``spikereveal export --triton-repo DIR``).

Layout (Triton's): ``DIR/<model>/config.pbtxt`` and ``DIR/<model>/<version>/model.onnx`` (``onnxruntime``
backend) or ``.../<version>/model.plan`` (``tensorrt_plan``: the plan is built on the target by
``spikereveal build-engine``; the ONNX it is built from is written beside it). The config declares the
deployed graph's uint8 I/O (``engines.runners``: ``image`` (1,H,W,3), ``spikes`` (K,S,H/4,W/4), ``sharp``
(K,H,W,3); -1 where the export is dynamic).

Batching. ``max_batch_size: 0``: one request is one exposure, and its K sharp frames are already the graph's
batch (the first axis of ``spikes`` and ``sharp``). Triton's dynamic batcher could only merge requests along
an extra leading axis that every input and output shares; the deployed graph has none (``image`` has one
row per exposure, ``spikes`` K), so merging exposures would need a second export with an exposure axis, and
it would buy little: at the rig geometries one exposure (7 frames of 1600x1000 at rsb) already fills a GPU,
while waiting to form a batch (``max_queue_delay_microseconds``) adds latency to every exposure. So there are
no preferred sizes and no queue delay. Concurrency comes from instances instead: ``instance_group`` puts
``instances_per_gpu`` copies on every GPU (or on the CPU), and Triton spreads the rigs' exposures over them.

Queue policy. The ``dynamic_batching`` block is kept for its queue, which Triton also applies with
``max_batch_size: 0`` (the scheduler then never merges requests): at most ``max_queue_size`` exposures
wait, and one that waited ``queue_timeout_us`` is rejected (``timeout_action: REJECT``). That is serve's own
drop policy one hop further: a late exposure is not worth inferring; the rig's ``TritonRunner`` counts such a
rejection (``rejected``) and the exposure as failed, and never retries it.

The ``parameters`` map carries the export's ``spikereveal.*`` metadata (precision, checkpoint sha256, K, the
trained firing-gain range), so the rig's runner checks what the server holds and keeps its firing-gain check.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from spikereveal.engines.runners import INPUT_NAMES, OUTPUT_NAME
from spikereveal.errors import ConfigError, FormatError
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE

__all__ = ["TRITON_BACKENDS", "DEFAULT_TRITON_MODEL", "TritonRepoConfig", "config_pbtxt", "write_triton_repository",
           "parse_config_pbtxt", "model_dims_from_metadata"]

logger = logging.getLogger(__name__)

#: backend name -> (config line, the file Triton loads from a version folder)
TRITON_BACKENDS = {
    "onnxruntime": ('backend: "onnxruntime"', "model.onnx"),
    "tensorrt_plan": ('platform: "tensorrt_plan"', "model.plan"),
}
DEFAULT_TRITON_MODEL = "spikereveal_ldn"
CONFIG_FILE = "config.pbtxt"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class TritonRepoConfig:
    """What the repository's ``config.pbtxt`` says beyond the graph's I/O.

    ``gpus``: None puts ``instances_per_gpu`` instances on every GPU the server sees (``KIND_GPU`` without a
    list); a tuple names the GPUs; an empty tuple means CPU instances (``KIND_CPU``; onnxruntime only).
    """

    backend: str = "onnxruntime"
    model: str = DEFAULT_TRITON_MODEL
    version: int = 1
    gpus: tuple[int, ...] | None = None
    instances_per_gpu: int = 1
    max_queue_size: int = 8  # exposures waiting at the server; beyond it a request is rejected
    queue_timeout_us: int = 1_000_000  # an exposure waiting longer is rejected (live: it is stale)

    def __post_init__(self):
        if self.backend not in TRITON_BACKENDS:
            raise ConfigError(f"Triton backend must be one of {sorted(TRITON_BACKENDS)}, got {self.backend!r}")
        if not isinstance(self.model, str) or not _NAME.match(self.model):
            raise ConfigError(f"Triton model name must be letters, digits, '_', '.' or '-', got {self.model!r}")
        for name in ("version", "instances_per_gpu", "max_queue_size", "queue_timeout_us"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Triton {name} must be a positive integer, got {value!r}")
        if self.gpus is not None:
            gpus = tuple(self.gpus)
            if any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
                raise ConfigError(f"Triton GPUs must be distinct device ordinals >= 0, got {self.gpus!r}")
            object.__setattr__(self, "gpus", gpus)
            if not gpus and self.backend == "tensorrt_plan":
                raise ConfigError("a tensorrt_plan model runs on GPUs only; give --triton-gpus all or a list")

    @property
    def model_file(self) -> str:
        return TRITON_BACKENDS[self.backend][1]


def model_dims_from_metadata(metadata: Mapping[str, str]) -> dict[str, list[int]]:
    """The I/O dims of an export from its ``spikereveal.*`` metadata (-1 for dynamic axes)."""
    def value(key):
        raw = metadata.get(key)
        if raw is None:
            raise ConfigError(f"the ONNX file has no spikereveal '{key}' metadata; re-export it with this version")
        return -1 if raw == "dynamic" else int(raw)

    k, height, width = value("batch"), value("height"), value("width")
    spike_frames = int(metadata.get("spike_window", 21))
    quarter = (lambda n: -1 if n < 0 else n // SPIKE_TO_IMAGE_SCALE)
    return {
        "image": [1, height, width, 3],
        "spikes": [k, spike_frames, quarter(height), quarter(width)],
        "sharp": [k, height, width, 3],
    }


def _tensor(name: str, dims: list[int]) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: TYPE_UINT8\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'


def _quote(text: str) -> str:
    return json.dumps(str(text))  # a JSON string is a valid protobuf text-format string


def config_pbtxt(config: TritonRepoConfig, dims: Mapping[str, list[int]], metadata: Mapping[str, str]) -> str:
    """The ``config.pbtxt`` text of ``config`` for I/O ``dims`` and the export's ``metadata``."""
    backend_line, model_file = TRITON_BACKENDS[config.backend]
    if config.gpus == ():
        group = f"  {{\n    count: {config.instances_per_gpu}\n    kind: KIND_CPU\n  }}"
    elif config.gpus is None:
        group = f"  {{\n    count: {config.instances_per_gpu}\n    kind: KIND_GPU\n  }}"
    else:
        group = ",\n".join(f"  {{\n    count: {config.instances_per_gpu}\n    kind: KIND_GPU\n    gpus: [ {gpu} ]\n  }}"
                           for gpu in config.gpus)
    parameters = ",\n".join(
        f"  {{\n    key: {_quote(key)}\n    value: {{ string_value: {_quote(value)} }}\n  }}"
        for key, value in sorted(metadata.items()))
    lines = [
        "# written by spikereveal export --triton-repo: one request = one exposure (K frames = the graph's batch)",
        f'name: "{config.model}"',
        backend_line,
        "max_batch_size: 0",
        f'default_model_filename: "{model_file}"',
        "version_policy: { latest: { num_versions: 1 } }",
        "input [\n" + ",\n".join(_tensor(name, dims[name]) for name in INPUT_NAMES) + "\n]",
        "output [\n" + _tensor(OUTPUT_NAME, dims[OUTPUT_NAME]) + "\n]",
        "instance_group [\n" + group + "\n]",
        "# the queue only (max_batch_size 0: requests are never merged); stale exposures are rejected, not run",
        "dynamic_batching {\n  default_queue_policy {\n    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {config.queue_timeout_us}\n    allow_timeout_override: false\n"
        f"    max_queue_size: {config.max_queue_size}\n  }}\n}}",
    ]
    if parameters:
        lines.append("parameters [\n" + parameters + "\n]")
    return "\n".join(lines) + "\n"


def parse_config_pbtxt(path_or_text) -> Any:
    """Parse a ``config.pbtxt`` into Triton's own ``ModelConfig`` message (``tritonclient``'s copy of
    ``model_config.proto``): unknown fields, wrong types and bad enum names are a FormatError."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        from spikereveal.errors import MissingDependencyError

        raise MissingDependencyError("tritonclient", "checking a Triton model configuration", "triton") from exc
    path = None
    text = path_or_text
    if isinstance(path_or_text, Path):
        path, text = path_or_text, path_or_text.read_text(encoding="utf-8")
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise FormatError(path or CONFIG_FILE, f"is not a valid Triton model configuration: {exc}") from None


def write_triton_repository(onnx_path, repo_dir, config: TritonRepoConfig) -> dict[str, Path]:
    """Write ``config.pbtxt`` for the export ``onnx_path`` (already in place, or copied to
    ``<repo>/<model>/<version>/model.onnx``); returns the written paths. Other versions in the folder stay
    (Triton serves the newest: ``version_policy latest 1``); a version folder that already holds the model
    file is refused."""
    import shutil

    from spikereveal.engines.onnx_metadata import METADATA_PREFIX
    from spikereveal.engines.runners import read_export_metadata

    onnx_path = Path(onnx_path)
    metadata = read_export_metadata(onnx_path)
    dims = model_dims_from_metadata(metadata)
    model_dir = Path(repo_dir) / config.model
    version_dir = model_dir / str(config.version)
    target_onnx = version_dir / "model.onnx"
    if onnx_path.resolve() != target_onnx.resolve():
        if target_onnx.exists():
            raise ConfigError(f"{target_onnx} exists; choose another --triton-version or remove it")
        version_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_path, target_onnx)
    params = {METADATA_PREFIX + key: value for key, value in metadata.items() if key in _CARRIED_METADATA}
    text = config_pbtxt(config, dims, params)
    config_path = model_dir / CONFIG_FILE
    config_path.write_text(text, encoding="utf-8")
    written = {"config": config_path, "onnx": target_onnx}
    if config.backend == "tensorrt_plan":
        written["plan"] = version_dir / "model.plan"  # not written here: built on the target
    try:  # the file must parse as Triton's ModelConfig; without tritonclient the tests check it instead
        parse_config_pbtxt(config_path)
    except ImportError:
        logger.info("tritonclient is not installed: %s not parsed back", config_path)
    return written


#: the export metadata a Triton model carries in its ``parameters`` (read back by the rig's TritonRunner)
_CARRIED_METADATA = ("format", "version", "precision", "source_sha256", "batch", "height", "width", "spike_window",
                     "color_order", "firing_gain_range")
