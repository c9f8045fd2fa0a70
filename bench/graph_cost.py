"""Multiply-accumulates and parameters counted from an ONNX graph (``bench engines``, issue 18).

Counted, not hand-written: ONNX shape inference gives every tensor's shape in a static export, and each
``Conv``, ``ConvTranspose``, ``MatMul`` and ``Gemm`` node contributes

- Conv: ``N * C_out * H_out * W_out * (C_in / groups) * kH * kW`` (output elements times the taps each sums),
- ConvTranspose: ``N * C_in * H_in * W_in * (C_out / groups) * kH * kW`` (each input element scattered over
  the kernel),
- MatMul: output elements times the shared dimension; Gemm: ``M * N * K``.

Element-wise ops, pooling, sigmoids and the uint8 conversions are not counted (they are a small fraction of
the LDN's work, and not multiply-adds). Parameters are the elements of the initializers (weights and biases,
through a ``DequantizeLinear`` in a Q/DQ graph) that these nodes read, and the per-channel biases ``(1, C, 1, 1)``
an ``Add`` adds (a firing-gain student's first spike conv adds its bias after the gain scaling). The deployed graph is per exposure: its
batch is K for the spike branch and 1 for the blurry frame's encoder, so ``macs_per_frame = macs / K`` counts
that encoder once per exposure, as it runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from spikereveal.errors import ConfigError, require

COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass(frozen=True)
class GraphCost:
    """What :func:`count_graph_cost` counted: total multiply-adds, parameters, and the split by op type."""

    macs: int
    params: int
    macs_by_op: Mapping[str, int] = field(default_factory=dict)
    nodes: int = 0  # counted nodes

    def per_frame(self, k: int) -> float:
        return self.macs / k


def _product(values) -> int:
    result = 1
    for value in values:
        result *= int(value)
    return result


def _static_shape(shapes: Mapping[str, tuple], name: str, node) -> tuple[int, ...]:
    shape = shapes.get(name)
    if shape is None or any(not isinstance(dim, int) or dim < 1 for dim in shape):
        raise ConfigError(
            f"cannot count the cost of {node.op_type} node {node.name or node.output[0]!r}: the shape of {name!r} is "
            f"{shape if shape is not None else 'unknown'}; count a static export (export without --dynamic, or "
            "bench engines, which exports at each geometry)")
    return shape


def count_graph_cost(model) -> GraphCost:
    """Count an ONNX model (a path or a loaded ``ModelProto``) with static shapes; ConfigError otherwise."""
    onnx = require("onnx", "counting an ONNX graph's multiply-adds", "train")
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    shapes: dict[str, tuple] = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in dims)
    initializers = {init.name: tuple(init.dims) for init in graph.initializer}
    shapes.update(initializers)
    # Q/DQ graphs: a weight reaches its Conv through DequantizeLinear; follow it back to the initializer
    dequantized = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    for node in graph.node:  # constants folded into Constant nodes count like initializers
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    initializers[node.output[0]] = tuple(attribute.t.dims)
                    shapes[node.output[0]] = tuple(attribute.t.dims)

    def parameter_source(name: str) -> str | None:
        source = dequantized.get(name, name)
        return source if source in initializers else None

    macs_by_op: dict[str, int] = {}
    counted_params: set[str] = set()
    nodes = 0
    for node in graph.node:
        if node.op_type == "Add":  # a conv bias added after a scaling (LDN.encode_scaled_spikes)
            counted_params.update(source for source in map(parameter_source, node.input)
                                  if source is not None and len(initializers[source]) == 4
                                  and initializers[source][0] == initializers[source][2] == initializers[source][3] == 1)
        if node.op_type not in COUNTED_OPS:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        output = _static_shape(shapes, node.output[0], node)
        if node.op_type == "Conv":
            weight = _static_shape(shapes, node.input[1], node)  # (C_out, C_in / groups, kH, kW)
            macs = _product(output) * _product(weight[1:])
        elif node.op_type == "ConvTranspose":
            data = _static_shape(shapes, node.input[0], node)  # (N, C_in, H, W)
            weight = _static_shape(shapes, node.input[1], node)  # (C_in, C_out / groups, kH, kW)
            macs = _product(data) * _product(weight[1:])
        elif node.op_type == "MatMul":
            left = _static_shape(shapes, node.input[0], node)
            macs = _product(output) * left[-1]
        else:  # Gemm: A (M, K) or its transpose
            left = _static_shape(shapes, node.input[0], node)
            shared = left[0] if attributes.get("transA", 0) else left[-1]
            macs = _product(output) * shared
        macs_by_op[node.op_type] = macs_by_op.get(node.op_type, 0) + int(macs)
        nodes += 1
        for name in node.input[1:]:
            source = parameter_source(name)
            if source is not None:
                counted_params.add(source)
    params = sum(_product(initializers[name]) for name in counted_params)
    return GraphCost(macs=sum(macs_by_op.values()), params=int(params), macs_by_op=macs_by_op, nodes=nodes)


__all__ = ["COUNTED_OPS", "GraphCost", "count_graph_cost"]
