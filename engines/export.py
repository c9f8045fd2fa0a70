"""Export the LDN student to ONNX at fp32, fp16 or int8 (SPEC §3, §8).

Every export is the deployed graph ``engines.ldn.ExposureLDN``: inputs ``image`` (1,H,W,3) BGR and
``spikes`` (K,S,H/4,W/4) levels (``SPIKE_LEVEL`` = one spike), output ``sharp`` (K,H,W,3) BGR, all uint8
whatever the precision; the conversions to and from float, the clipping and the rounding are in the
graph. fp16 is a float16 graph inside those uint8 edges; int8 is a static Q/DQ graph calibrated on real
exposure windows, the form TensorRT 11 (which has no INT8 builder flag) and ONNX Runtime both run; a
firing-gain student's gain and its scaling of the first spike conv, and the output conversion, stay float
(``_float_nodes``), so an int8 export calibrated on one sensor holds on another.
The file carries ``spikereveal.*`` metadata: network config, spike window, colour order, precision, the
source checkpoint's sha256 and the spikereveal version; ``read_onnx_metadata`` reads it back.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from spikereveal import __version__
from spikereveal.engines.cache import PRECISIONS, check_precision_name, file_sha256
from spikereveal.engines.onnx_metadata import (
    METADATA_PREFIX,
    _article,
    check_onnx_precision,
    onnx_graph_precision,
    read_onnx_metadata,
)
from spikereveal.engines.runners import INPUT_NAMES, IO_DTYPE, OUTPUT_NAME, SPIKE_LEVEL, InputShape
from spikereveal.errors import ConfigError, require
from spikereveal.kernels.timing import DEFAULT_K
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
#: shape used to trace a dynamic export (any multiple of 4 works)
_TRACE_SHAPE = (1, 64, 96)
DEFAULT_MODEL_RESOURCE = "models/ldn_default.pt"
DEFAULT_ONNX_RESOURCE = "models/ldn_default.onnx"
#: the shipped students by the name ``--model NAME`` takes: checkpoint and its fp32 export (dynamic shapes)
SHIPPED_MODELS = {
    "default": (DEFAULT_MODEL_RESOURCE, DEFAULT_ONNX_RESOURCE),
    "lite": ("models/ldn_lite.pt", "models/ldn_lite.onnx"),
}
#: the shipped teacher nets (package data beside the default student)
SHIPPED_TEACHER_RESOURCES = {"bsn": "models/bsn_default.pt", "sr": "models/sr_default.pt"}


@dataclass(frozen=True)
class ExportConfig:
    """What to export: precision, and either one static geometry (K, H, W) or dynamic axes."""

    precision: str = "fp32"
    k: int = DEFAULT_K  # sharp frames per exposure (the graph's batch axis; metadata key "batch")
    height: int | None = None
    width: int | None = None
    dynamic: bool = False
    opset: int = DEFAULT_OPSET
    calibration_windows: int = 16  # int8: how many exposure windows calibrate the activation ranges
    subpixel_decoder: bool = True  # export transposed convs as Conv + DepthToSpace (exact; faster on ORT)

    def __post_init__(self):
        check_precision_name(self.precision)
        if self.dynamic:
            if self.height is not None or self.width is not None:
                raise ConfigError("give either --image-height/--image-width (static shapes) or --dynamic, not both")
        elif self.height is None or self.width is None:
            raise ConfigError(
                "a static export needs --image-height and --image-width (4x the spike sensor, e.g. 720 1280 "
                "for gopro, 1000 1600 for rsb), or pass --dynamic"
            )
        else:
            InputShape(self.k, self.height, self.width)  # validates multiples of 4
        if isinstance(self.k, bool) or self.k < 1:
            raise ConfigError(f"k (sharp frames per exposure) must be >= 1, got {self.k}")
        if self.opset < 13:
            raise ConfigError(f"opset must be >= 13 (Q/DQ per-channel needs it), got {self.opset}")
        if self.calibration_windows < 1:
            raise ConfigError(f"calibration_windows must be >= 1, got {self.calibration_windows}")


# -- model location ------------------------------------------------------------------------------------
def _package_file(resource_name: str) -> Path | None:
    try:
        resource = importlib.resources.files("spikereveal").joinpath(resource_name)
    except (ModuleNotFoundError, TypeError):
        return None
    path = Path(str(resource))
    return path if path.is_file() else None


def default_model_path() -> Path | None:
    """The shipped default LDN checkpoint (package data ``spikereveal/models/ldn_default.pt``), if any."""
    return _package_file(DEFAULT_MODEL_RESOURCE)


def default_onnx_path() -> Path | None:
    """The shipped fp32 ONNX export of the default checkpoint (dynamic shapes), if any: lets ONNX Runtime run
    the default model on a machine without torch (the deployed service)."""
    return _package_file(DEFAULT_ONNX_RESOURCE)


def shipped_teacher_path(kind: str) -> Path | None:
    """The shipped teacher net ``kind`` ("bsn" or "sr"), if installed."""
    return _package_file(SHIPPED_TEACHER_RESOURCES[kind])


def shipped_model_path(name: str) -> Path | None:
    """The shipped student ``name`` (a key of ``SHIPPED_MODELS``), if installed."""
    return _package_file(SHIPPED_MODELS[name][0])


def shipped_onnx_for(checkpoint: str | os.PathLike) -> Path | None:
    """The shipped fp32 export (dynamic shapes) of ``checkpoint`` when it is a shipped student, else None."""
    try:
        resolved = Path(checkpoint).resolve()
    except OSError:
        return None
    for model_resource, onnx_resource in SHIPPED_MODELS.values():
        shipped = _package_file(model_resource)
        if shipped is not None and shipped.resolve() == resolved:
            return _package_file(onnx_resource)
    return None


def _named_model(model: str | os.PathLike) -> str | None:
    """The shipped model's name when ``model`` is one and no file of that name exists here (a folder does not count)."""
    text = os.fspath(model)
    return text if text in SHIPPED_MODELS and not Path(text).is_file() else None


def resolve_model_path(model: str | os.PathLike | None, option: str = "--model") -> Path:
    """``model``: a checkpoint path (must exist), a shipped model's name (``SHIPPED_MODELS``: "default", "lite";
    an existing file of that very name wins), or None for the shipped default. ConfigError saying what to pass
    (with ``option``, the command-line option the user gave it with)."""
    name = None if model is None else _named_model(model)
    if name is not None:
        path = shipped_model_path(name)
        if path is None:
            raise ConfigError(
                f"the shipped model {name!r} is not installed (spikereveal/{SHIPPED_MODELS[name][0]}); pass an LDN "
                f"checkpoint with {option} CKPT, or one of the installed names: "
                f"{', '.join(n for n in SHIPPED_MODELS if shipped_model_path(n) is not None) or 'none'}")
        return path
    if model is not None:
        path = Path(model)
        if not path.is_file():
            raise ConfigError(f"model checkpoint {path} does not exist; pass an LDN checkpoint with {option}, or a "
                              f"shipped model's name ({', '.join(SHIPPED_MODELS)})")
        return path
    path = default_model_path()
    if path is None:
        raise ConfigError(
            "no default model is installed (spikereveal/models/ldn_default.pt); pass an LDN checkpoint with "
            "--model CKPT (train one with 'spikereveal train ldn' or convert the official weights with "
            "'spikereveal import-weights')"
        )
    return path


# -- metadata ------------------------------------------------------------------------------------------
def build_metadata(network_config: Mapping[str, Any], precision: str, source_sha256: str,
                   config: ExportConfig, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    spike_frames = int(network_config.get("spike_frames", 21))
    values: dict[str, Any] = {
        "format": "spikereveal-ldn-onnx",
        "version": __version__,
        "network": "ldn",
        "network_config": json.dumps(dict(network_config), sort_keys=True),
        "spike_window": spike_frames,
        "spike_scale": SPIKE_TO_IMAGE_SCALE,
        "color_order": "bgr",
        "io": "uint8: image (1,H,W,3), spikes (K,S,H/4,W/4), sharp (K,H,W,3)",
        "spike_level": SPIKE_LEVEL,
        "precision": precision,
        "source_sha256": source_sha256,
        "batch": "dynamic" if config.dynamic else config.k,
        "height": "dynamic" if config.dynamic else config.height,
        "width": "dynamic" if config.dynamic else config.width,
        "inputs": ",".join(INPUT_NAMES),
        "outputs": OUTPUT_NAME,
    }
    values.update(extra or {})
    return {METADATA_PREFIX + key: str(value) for key, value in values.items()}


# -- export ----------------------------------------------------------------------------------------------
def _export_fp32(model, out_path: Path, config: ExportConfig) -> None:
    torch = require("torch", "ONNX export", "train")
    from spikereveal.engines.ldn import ExposureLDN

    spike_frames = int(getattr(getattr(model, "config", None), "spike_frames", 21))
    batch, height, width = _TRACE_SHAPE if config.dynamic else (config.k, config.height, config.width)
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, height, width, 3), generator=generator, dtype=torch.uint8)
    spikes = (torch.rand(batch, spike_frames, height // SPIKE_TO_IMAGE_SCALE, width // SPIKE_TO_IMAGE_SCALE,
                         generator=generator) < 0.2).to(torch.uint8) * SPIKE_LEVEL
    dynamic_axes = None
    if config.dynamic:
        dynamic_axes = {
            "image": {1: "height", 2: "width"},
            "spikes": {0: "batch", 2: "spike_height", 3: "spike_width"},
            "sharp": {0: "batch", 1: "height", 2: "width"},
        }
    model = ExposureLDN(model.eval().float()).eval()
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in torch >= 2.9 but needs no onnxscript and gives the plain
        # Conv/Relu graph every runtime (TensorRT 10.3 included) handles
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        # the firing gain's constants (gray weights, the gain's dtype) are the same on every call: tracing them is right
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model, (image, spikes), str(out_path), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes, opset_version=config.opset, do_constant_folding=True, dynamo=False,
        )


def _to_fp16(model_proto):
    """float16 graph inside the uint8 edges (the converter turns the edge Casts to float16)."""
    try:  # the standalone package, when installed, is the upstream of onnxruntime's copy
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    converted = convert_float_to_float16(model_proto, keep_io_types=True)
    # the converter appends the I/O Casts at the end of the node list; the checker wants producers first
    _sort_nodes_topologically(converted.graph)
    return converted


def _sort_nodes_topologically(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (stable otherwise)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ConfigError("the fp16 graph has a cycle or an input nobody produces; cannot export it")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


class WindowCalibrationReader:
    """onnxruntime CalibrationDataReader over exposure windows: ``(image, spikes)`` uint8 pairs or
    ``{"image", "spikes"}`` dicts (e.g. ``spikereveal.engines.int8_data.ldn_calibration_windows``).

    ``shape``: refuse windows of another geometry with a clear error (a static export calibrates on its own).
    """

    def __init__(self, windows: Iterable, limit: int | None = None, shape: InputShape | None = None):
        self._windows = iter(windows)
        self._left = limit
        self._shape = shape
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._left is not None and self._left <= 0:
            return None
        try:
            item = next(self._windows)
        except StopIteration:
            return None
        image, spikes = (item["image"], item["spikes"]) if isinstance(item, Mapping) else item
        if self._shape is not None and (image.shape, spikes.shape) != (self._shape.image, self._shape.spikes):
            raise ConfigError(
                f"a calibration window has image {image.shape} and spikes {spikes.shape} but the export's geometry "
                f"is {self._shape.image} / {self._shape.spikes}; calibrate on recordings of the export's geometry "
                "and --k (or export with --dynamic)")
        if image.dtype != IO_DTYPE or spikes.dtype != IO_DTYPE:
            raise ConfigError(f"calibration windows must be uint8 (image, spike levels), got {image.dtype} and "
                              f"{spikes.dtype}")
        if self._left is not None:
            self._left -= 1
        self.count += 1
        return {"image": np.ascontiguousarray(image), "spikes": np.ascontiguousarray(spikes)}

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


#: the first spike conv's weight as the exporter names it (``LDN.spike_enc[0]``; a parameter keeps its name)
_SPIKE_CONV_WEIGHT = "ldn.spike_enc.0.weight"
#: the layers where the float output path begins (walking back from ``sharp``, the float nodes stop here)
_OUTPUT_PRODUCERS = frozenset({"Conv", "ConvTranspose", "DepthToSpace"})


def _float_nodes(graph, firing_gain: bool) -> list[str]:
    """The nodes an int8 export keeps in float: (1) with ``firing_gain``, the exposure's gain (its reductions,
    clamps and reciprocal) and where it scales the first spike conv's output (``LDN.encode_scaled_spikes``: the
    Mul by ``1 / gain`` and the bias Add), since a range calibrated on one sensor's gain would clip another's;
    (2) the output conversion after the last conv (the head's sum, clip to [0, 1], x 255, rounding, cast),
    whose 8-bit steps would otherwise add to the quantisation of the last conv (one output level is 1/255)."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep: dict[str, None] = {}

    def keep_upstream(tensors: list[str], stop_ops: frozenset = frozenset()) -> None:
        """Keep every node ``tensors`` depend on, up to (not including) nodes of ``stop_ops``."""
        stack = list(tensors)
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.op_type not in stop_ops and node.name not in keep:
                keep[node.name] = None
                stack.extend(node.input)

    if firing_gain:
        convs = [n for n in graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] == _SPIKE_CONV_WEIGHT]
        scale = consumers.get(convs[0].output[0], []) if len(convs) == 1 else []
        bias = consumers.get(scale[0].output[0], []) if len(scale) == 1 else []
        if len(convs) != 1 or len(convs[0].input) > 2 or [n.op_type for n in scale] != ["Mul"] \
                or [n.op_type for n in bias] != ["Add"]:
            raise ConfigError("int8 export: the firing-gain student's graph does not have the expected first spike "
                              "conv -> Mul(1 / gain) -> Add(bias); this is a bug in the exporter, export fp32 or fp16")
        keep[scale[0].name] = keep[bias[0].name] = None
        keep_upstream([name for name in scale[0].input if name != convs[0].output[0]])  # the gain
    keep_upstream([out.name for out in graph.output], _OUTPUT_PRODUCERS)
    return list(keep)


def _quantize_int8(fp32_path: Path, out_path: Path, windows: Iterable, limit: int, shape: InputShape | None,
                   firing_gain: bool = False) -> int:
    quantization = require("onnxruntime.quantization", "int8 export", "dev")
    reader = WindowCalibrationReader(windows, limit, shape)
    with tempfile.TemporaryDirectory(prefix="spikereveal-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:  # shape inference + graph cleanup that the quantizer recommends
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # pre-processing is an optimisation: fall back to the raw export
            logger.info("quantization pre-processing skipped: %s", exc)
            prepared = fp32_path
        onnx = require("onnx", "int8 export", "train")
        float_nodes = _float_nodes(onnx.load(str(prepared)).graph, firing_gain)
        quantization.quantize_static(
            str(prepared), str(out_path), reader,
            quant_format=quantization.QuantFormat.QDQ,
            activation_type=quantization.QuantType.QInt8,
            weight_type=quantization.QuantType.QInt8,
            per_channel=True,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            nodes_to_exclude=float_nodes,
            # symmetric activations: what TensorRT's explicit-quantization path expects
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
    if reader.count == 0:
        raise ConfigError("int8 calibration got no windows: the calibration recordings hold no exposure with a "
                          "complete spike window")
    return reader.count


def export_ldn(model, out_path: str | os.PathLike, config: ExportConfig, *, source_sha256: str = "",
               calibration: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
               extra_metadata: Mapping[str, Any] | None = None) -> Path:
    """Export an LDN ``nn.Module`` to ``out_path`` at ``config.precision``; returns the path.

    ``calibration`` (int8 only): an iterable of ``(image, spikes)`` uint8 windows (pairs or dicts) of the
    export's geometry; the first ``config.calibration_windows`` are used.
    """
    onnx = require("onnx", "ONNX export", "train")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if config.precision == "int8" and calibration is None:
        raise ConfigError("an int8 export needs calibration data: pass --calib with one or more recordings")
    network_config = model.config.to_dict() if hasattr(model, "config") else {}
    extra = dict(extra_metadata or {})
    if config.subpixel_decoder:
        from spikereveal.engines.subpixel import rewrite_transposed_convs

        model, rewritten = rewrite_transposed_convs(model)
        extra["subpixel_decoder_layers"] = rewritten
    with tempfile.TemporaryDirectory(prefix="spikereveal-export-") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        _export_fp32(model, fp32_path, config)
        if config.precision == "fp32":
            proto = onnx.load(str(fp32_path))
        elif config.precision == "fp16":
            proto = _to_fp16(onnx.load(str(fp32_path)))
        else:
            int8_path = Path(tmp) / "int8.onnx"
            shape = None if config.dynamic else InputShape(config.k, config.height, config.width,
                                                           int(network_config.get("spike_frames", 21)))
            firing_gain = network_config.get("spike_norm", "none") != "none"
            extra["calibration_windows"] = _quantize_int8(fp32_path, int8_path, calibration,
                                                          config.calibration_windows, shape, firing_gain)
            proto = onnx.load(str(int8_path))
    actual = onnx_graph_precision(proto)
    if actual != config.precision:
        raise ConfigError(f"the {config.precision} export came out as {_article(actual)} {actual} graph; this is a bug in the "
                          "exporter or its converter version")
    del proto.metadata_props[:]
    for key, value in build_metadata(network_config, config.precision, source_sha256, config, extra).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "spikereveal", __version__
    onnx.checker.check_model(proto, full_check=True)
    partial = out_path.with_name(out_path.name + ".partial")
    onnx.save(proto, str(partial))
    os.replace(partial, out_path)
    return out_path


def export_checkpoint(checkpoint: str | os.PathLike | None, out_path: str | os.PathLike, config: ExportConfig,
                      calib_recordings: Sequence[str | os.PathLike] = (),
                      calib_cache: str | os.PathLike | None = None) -> Path:
    """Load an LDN checkpoint (None: the shipped default) and export it.

    int8 calibrates on up to ``config.calibration_windows`` real windows cut evenly from the recordings by
    ``spikereveal.engines.int8_data`` (rig calibration applied; cached in ``calib_cache`` when given).
    """
    from spikereveal.engines.checkpoint import load_checkpoint

    checkpoint = resolve_model_path(checkpoint)
    model, meta = load_checkpoint(checkpoint, expected_kind="ldn")
    calibration = None
    if config.precision == "int8":
        if not calib_recordings:
            raise ConfigError("an int8 export needs calibration data: pass --calib with one or more recordings")
        from spikereveal.engines.int8_data import ldn_calibration_windows

        calibration = ldn_calibration_windows(
            [Path(p) for p in calib_recordings], k=config.k, max_windows=config.calibration_windows,
            cache_path=calib_cache, spike_window=model.config.spike_frames)
    elif calib_recordings:
        logger.warning("--calib is only used by int8 exports; ignored for %s", config.precision)
    extra = {"source_checkpoint": Path(checkpoint).name}
    gain_range = (meta.get("training") or {}).get("firing_gain_range")
    if gain_range:  # the sensors the model was trained for: the out-of-domain alarm (kernels.sensor)
        extra["firing_gain_range"] = json.dumps([float(g) for g in gain_range])
    return export_ldn(model, out_path, config, source_sha256=file_sha256(checkpoint), calibration=calibration,
                      extra_metadata=extra)


__all__ = [
    "PRECISIONS", "ExportConfig", "WindowCalibrationReader", "build_metadata", "check_onnx_precision",
    "default_model_path", "export_checkpoint", "export_ldn", "onnx_graph_precision", "read_onnx_metadata",
    "resolve_model_path",
]
