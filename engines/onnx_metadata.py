"""The ``spikereveal.*`` metadata of an ONNX export, and the precision a graph really computes in.

Read by the runners (ort, trt), ``export`` and ``serve`` without loading the export machinery.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

from spikereveal.errors import ConfigError, FormatError, require

__all__ = ["METADATA_PREFIX", "read_onnx_metadata", "onnx_graph_precision", "check_onnx_precision"]

logger = logging.getLogger(__name__)

METADATA_PREFIX = "spikereveal."


def _strip_prefix(props: Mapping[str, str]) -> dict[str, str]:
    return {key[len(METADATA_PREFIX):]: value for key, value in props.items() if key.startswith(METADATA_PREFIX)}


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``spikereveal.*`` metadata of an export (prefix removed). Needs only onnxruntime."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ONNX file {path} does not exist")
    try:
        import onnx  # lighter than a session when available

        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
    except ImportError:
        ort = require("onnxruntime", "reading ONNX metadata", "dev")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        props = dict(session.get_modelmeta().custom_metadata_map)
    except Exception as exc:  # onnx raises DecodeError & co for a file that is not ONNX
        raise FormatError(path, f"is not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    return _strip_prefix(props)


def onnx_graph_precision(model) -> str:
    """The precision a graph really computes in: int8 if it has Q/DQ nodes, fp16 if float16 weights, else fp32."""
    onnx = require("onnx", "inspecting ONNX graphs", "train")
    ops = {node.op_type for node in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger"}:
        return "int8"
    float16 = onnx.TensorProto.FLOAT16
    if any(init.data_type == float16 for init in model.graph.initializer):
        return "fp16"
    if any(node.op_type == "Cast" and any(a.name == "to" and a.i == float16 for a in node.attribute)
           for node in model.graph.node):
        return "fp16"
    return "fp32"


def check_onnx_precision(metadata: Mapping[str, str], precision: str, path) -> None:
    """Refuse to run an export as a precision it was not exported at (metadata check, no graph load)."""
    stated = metadata.get("precision")
    if stated is None:
        logger.warning("%s has no spikereveal precision metadata; trusting the caller's %s", path, precision)
        return
    if stated != precision:
        raise ConfigError(f"{path} is {_article(stated)} {stated} export but {precision} was asked for; "
                          f"export it with --precision {precision} or ask for {stated}")


def _article(word: str) -> str:
    """ "an" before a vowel sound (an int8 / an fp16 export), "a" otherwise."""
    return "an" if word[:1].lower() in "aeiof" else "a"
