"""TensorRT runner (GPU, Jetson): build from ONNX, cache the plan, run with execute_async_v3.

Written to the API that TensorRT 10.3 (JetPack 6) and 11.x share: a strongly typed network (precision
comes from the ONNX graph: an fp16 graph or Q/DQ nodes; TensorRT 11 has no FP16/INT8 builder flags), a
memory-pool limit, a timing cache serialized beside the engines, one static optimisation profile, and
name-based I/O with tensor addresses set once. Buffers and the stream come from cuda-python
(``cuda.bindings.runtime``; older ``cuda.cudart``) or, where only it exists, PyCUDA. The engine's real
layer tensor types are read with the engine inspector and checked against the requested precision.

Nothing here imports TensorRT at module import; ``engine_precision_problems``, ``tensor_dtypes_from_inspector``
and the cache key (``spikereveal.engines.cache``) are pure and tested without a GPU.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from spikereveal.engines.cache import EngineCache, EngineKey, check_precision_name, file_sha256
from spikereveal.engines.runners import (
    INPUT_NAMES,
    IO_DTYPE,
    OUTPUT_NAME,
    InputShape,
    Runner,
    RunnerError,
    RunnerOptions,
    onnx_gain_range,
)
from spikereveal.errors import ConfigError, MissingDependencyError, SpikeRevealError

logger = logging.getLogger(__name__)


class GpuUnavailableError(SpikeRevealError, RuntimeError):
    """TensorRT is installed but no usable CUDA device/driver is."""


class PrecisionMismatchError(SpikeRevealError, RuntimeError):
    """The built engine does not compute in the precision that was asked for."""


# -- pure precision logic ------------------------------------------------------------------------------
#: tokens TensorRT uses in the inspector's "Format/Datatype" strings -> our names
_DTYPE_TOKENS = (
    (re.compile(r"\b(fp32|float)\b", re.I), "fp32"),
    (re.compile(r"\b(fp16|half)\b", re.I), "fp16"),
    (re.compile(r"\bbf16\b", re.I), "bf16"),
    (re.compile(r"\bint8\b", re.I), "int8"),
    (re.compile(r"\bfp8\b", re.I), "fp8"),
    (re.compile(r"\bint4\b", re.I), "int4"),
    (re.compile(r"\bint32\b", re.I), "int32"),
    (re.compile(r"\bint64\b", re.I), "int64"),
    (re.compile(r"\bbool\b", re.I), "bool"),
)
_FLOATING_LOW = {"fp16", "bf16", "int8", "fp8", "int4"}  # reduced-precision compute types


def dtype_of_format(text: str) -> str | None:
    """Our dtype name in a TensorRT format string such as ``Row major linear FP16 format``."""
    for pattern, name in _DTYPE_TOKENS:
        if pattern.search(text):
            return name
    return None


def tensor_dtypes_from_inspector(info: str | Mapping) -> Counter:
    """Count the dtypes of every layer input/output in ``EngineInspector`` JSON (DETAILED verbosity)."""
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except ValueError as exc:
            raise RunnerError(f"the TensorRT engine inspector returned no JSON ({exc})") from exc
    counts: Counter = Counter()
    for layer in info.get("Layers", []):
        if not isinstance(layer, Mapping):
            continue  # LAYER_NAMES_ONLY verbosity: layers are bare strings
        for tensor in list(layer.get("Inputs", [])) + list(layer.get("Outputs", [])):
            dtype = dtype_of_format(str(tensor.get("Format/Datatype", "")))
            if dtype is not None:
                counts[dtype] += 1
    return counts


def engine_precision_problems(requested: str, io_dtypes: Mapping[str, str], layer_dtypes: Mapping[str, int]
                              ) -> list[str]:
    """Why an engine does not match ``requested``; empty when it does.

    Rules: I/O is uint8 at every precision (the deployed graph's edges, see ``engines.runners``). fp32: no
    reduced-precision layer tensor at all. fp16: some
    fp16 layer tensors, no int8. int8: some int8 layer tensors. Without layer detail nothing is verified,
    which is itself a problem (the engine must be built with DETAILED profiling verbosity).
    """
    check_precision_name(requested)
    problems = [f"I/O tensor {name!r} is {dtype}, expected uint8 (re-export the model with this version)"
                for name, dtype in sorted(io_dtypes.items()) if dtype != "uint8"]
    seen = {dtype for dtype, count in layer_dtypes.items() if count > 0}
    if not seen:
        problems.append("the engine reports no layer tensor types (build it with DETAILED profiling verbosity)")
        return problems
    low = sorted(seen & _FLOATING_LOW)
    if requested == "fp32" and low:
        problems.append(f"an fp32 engine must not compute in {', '.join(low)}")
    elif requested == "fp16":
        if "fp16" not in seen:
            problems.append("no layer runs in fp16: the ONNX graph is not an fp16 export "
                            "(TensorRT 11 ignores precision flags; export with --precision fp16)")
        if "int8" in seen:
            problems.append("the fp16 engine has int8 layers: the ONNX graph has Q/DQ nodes")
    elif requested == "int8" and "int8" not in seen:
        problems.append("no layer runs in int8: the ONNX graph has no Q/DQ nodes (export with --precision int8)")
    return problems


# -- environment ---------------------------------------------------------------------------------------
def _import_tensorrt():
    try:
        return importlib.import_module("tensorrt")
    except Exception as exc:  # ImportError, or OSError when libnvinfer is missing
        raise MissingDependencyError("tensorrt", "the TensorRT engine (--engine trt, build-engine)", "trt") from exc


_TRT_LOGGERS: dict = {}


def _trt_logger(trt):
    """One logger per process: TensorRT warns when builders and runtimes are given different ones."""
    if id(trt) not in _TRT_LOGGERS:
        _TRT_LOGGERS[id(trt)] = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGERS[id(trt)]


class _CudaRuntime:
    """The few CUDA runtime calls the runner needs, over cuda-python or PyCUDA."""

    def __init__(self):
        self.backend = None
        for module in ("cuda.bindings.runtime", "cuda.cudart"):
            try:
                self.cudart = importlib.import_module(module)
                self.backend = "cuda-python"
                break
            except Exception:
                continue
        if self.backend is None:
            try:
                self.driver = importlib.import_module("pycuda.driver")
                self.backend = "pycuda"
            except Exception as exc:
                raise MissingDependencyError("cuda-python", "the TensorRT engine's buffers and stream", "trt") from exc

    def _check(self, result, what: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = getattr(err, "name", str(err))
            raise GpuUnavailableError(f"CUDA {what} failed ({name}); check the NVIDIA driver and GPU")
        return values[0] if len(values) == 1 else tuple(values)

    def device_count(self) -> int:
        if self.backend == "pycuda":
            self.driver.init()
            return self.driver.Device.count()
        return int(self._check(self.cudart.cudaGetDeviceCount(), "cudaGetDeviceCount"))

    def select(self, device: int | None) -> int:
        if self.backend == "pycuda":
            self.driver.init()
            index = 0 if device is None else int(device)
            self._context = self.driver.Device(index).retain_primary_context()
            self._context.push()
            return index
        if device is not None:
            self._check(self.cudart.cudaSetDevice(int(device)), "cudaSetDevice")
        return int(self._check(self.cudart.cudaGetDevice(), "cudaGetDevice"))

    def device_identity(self, device: int) -> tuple[str, tuple[int, int]]:
        if self.backend == "pycuda":
            dev = self.driver.Device(device)
            return dev.name(), dev.compute_capability()
        props = self._check(self.cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return name.rstrip("\x00").strip(), (int(props.major), int(props.minor))

    def stream(self):
        if self.backend == "pycuda":
            stream = self.driver.Stream()
            return stream, stream.handle
        stream = self._check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        return stream, int(stream)

    def device_buffer(self, nbytes: int):
        if self.backend == "pycuda":
            buffer = self.driver.mem_alloc(nbytes)
            return buffer, int(buffer)
        pointer = self._check(self.cudart.cudaMalloc(nbytes), "cudaMalloc")
        return pointer, int(pointer)

    def host_buffer(self, shape: tuple[int, ...], dtype=IO_DTYPE) -> tuple[Any, np.ndarray]:
        """Pinned host memory as a numpy array of ``dtype``."""
        if self.backend == "pycuda":
            array = self.driver.pagelocked_empty(shape, dtype)
            return array, array
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        pointer = int(self._check(self.cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
        raw = (ctypes.c_byte * nbytes).from_address(pointer)
        return pointer, np.frombuffer(raw, dtype).reshape(shape)

    def copy_async(self, dst: int, src: int, nbytes: int, to_device: bool, stream) -> None:
        if self.backend == "pycuda":
            if to_device:
                self.driver.memcpy_htod_async(dst, src, stream)
            else:
                self.driver.memcpy_dtoh_async(dst, src, stream)
            return
        kind = (self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice if to_device
                else self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        self._check(self.cudart.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")

    def synchronize(self, stream) -> None:
        if self.backend == "pycuda":
            stream.synchronize()
        else:
            self._check(self.cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def capture_graph(self, stream, work) -> Any:
        """Record ``work()`` on ``stream`` into an instantiated CUDA graph (cuda-python only)."""
        if self.backend != "cuda-python":
            raise RunnerError("CUDA graphs need cuda-python (PyCUDA has no stream capture here)")
        rt = self.cudart
        self._check(rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal),
                    "cudaStreamBeginCapture")
        work()
        graph = self._check(rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        return self._check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch_graph(self, graph_exec, stream) -> None:
        self._check(self.cudart.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def free(self, device_buffers: Iterable, host_buffers: Iterable, stream) -> None:
        if self.backend == "pycuda":
            for buffer in device_buffers:
                buffer.free()
            if getattr(self, "_context", None) is not None:
                self._context.pop()
            return
        for pointer in device_buffers:
            self.cudart.cudaFree(pointer)
        for pointer in host_buffers:
            self.cudart.cudaFreeHost(pointer)
        if stream is not None:
            self.cudart.cudaStreamDestroy(stream)


def cuda_unavailable_reason() -> str | None:
    """None when a CUDA device is usable, else why not (no cuda-python/pycuda, no driver, no GPU)."""
    try:
        count = _CudaRuntime().device_count()
    except (MissingDependencyError, GpuUnavailableError) as exc:
        return str(exc)
    except Exception as exc:  # driver libraries can fail in many ways
        return f"CUDA is not usable here ({type(exc).__name__}: {exc})"
    return None if count > 0 else "no CUDA device is visible"


# -- build ---------------------------------------------------------------------------------------------
_TRT_DTYPE_NAMES = {"FLOAT": "fp32", "HALF": "fp16", "BF16": "bf16", "INT8": "int8", "FP8": "fp8", "INT4": "int4",
                    "INT32": "int32", "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}


def _trt_dtype_name(trt, dtype) -> str:
    for member, name in _TRT_DTYPE_NAMES.items():
        if getattr(trt.DataType, member, None) == dtype:  # members differ between 10.3 and 11.x
            return name
    return str(dtype)


def build_serialized_engine(onnx_path: str | Path, shape: InputShape, *, workspace_bytes: int = 1 << 30,
                            timing_cache_path: str | Path | None = None) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build a plan for ``shape`` (one static profile)."""
    trt = _import_tensorrt()
    trt_logger = _trt_logger(trt)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RunnerError(f"TensorRT cannot parse {onnx_path}:\n  " + "\n  ".join(errors or ["(no detail)"]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the precision check reads layer types
    timing_cache_path = Path(timing_cache_path) if timing_cache_path else None
    previous = timing_cache_path.read_bytes() if timing_cache_path and timing_cache_path.is_file() else b""
    timing_cache = config.create_timing_cache(previous)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    shapes = shape.as_dict()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name not in shapes:
            raise RunnerError(f"{onnx_path} has input {tensor.name!r}; expected {list(INPUT_NAMES)}")
        dims = shapes[tensor.name]
        profile.set_shape(tensor.name, dims, dims, dims)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RunnerError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    if timing_cache_path is not None:
        timing_cache_path.parent.mkdir(parents=True, exist_ok=True)
        timing_cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def engine_key_for(onnx_path, shape: InputShape, precision: str, device: int | None = None) -> EngineKey:
    trt = _import_tensorrt()
    cuda = _CudaRuntime()
    index = cuda.select(device)
    name, capability = cuda.device_identity(index)
    return EngineKey.create(file_sha256(onnx_path), trt.__version__, name, capability, precision, shape.as_dict())


def check_engine_precision(engine, precision: str) -> dict:
    """Inspect a deserialized engine; raise PrecisionMismatchError unless it computes in ``precision``."""
    trt = _import_tensorrt()
    io_dtypes = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        io_dtypes[name] = _trt_dtype_name(trt, engine.get_tensor_dtype(name))
    inspector = engine.create_engine_inspector()
    layer_dtypes = tensor_dtypes_from_inspector(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    problems = engine_precision_problems(precision, io_dtypes, layer_dtypes)
    if problems:
        raise PrecisionMismatchError(f"the TensorRT engine is not {precision}: " + "; ".join(problems))
    return {"io": io_dtypes, "layer_tensors": dict(layer_dtypes)}


def build_engine(onnx_path, out_path, shape: InputShape, precision: str = "fp32",
                 options: RunnerOptions | None = None) -> dict:
    """``spikereveal build-engine``: build (or take from the cache), check precision, write ``out_path``."""
    options = options or RunnerOptions()
    plan, info, _, _ = load_or_build_plan(onnx_path, shape, precision, options)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(plan)
    return info


def load_or_build_plan(onnx_path, shape: InputShape, precision: str, options: RunnerOptions):
    """The plan for (ONNX hash, TensorRT version, GPU, precision, shapes) from the cache, built when absent.

    Returns ``(plan bytes, info, deserialized engine, runtime)``; the engine's precision is checked first.
    """
    from spikereveal.engines.onnx_metadata import check_onnx_precision
    from spikereveal.engines.runners import read_export_metadata

    check_precision_name(precision)
    check_onnx_precision(read_export_metadata(onnx_path), precision, onnx_path)
    trt = _import_tensorrt()
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise GpuUnavailableError(f"the TensorRT engine needs an NVIDIA GPU: {reason}")
    key = engine_key_for(onnx_path, shape, precision, options.device)
    cache = EngineCache(Path(options.cache_dir) if options.cache_dir else None)
    plan = cache.load(key)
    built = plan is None
    if built:
        logger.info("building TensorRT %s engine for %s (cached as %s)", precision, onnx_path, cache.plan_path(key))
        plan = build_serialized_engine(onnx_path, shape, workspace_bytes=options.workspace_bytes,
                                       timing_cache_path=cache.timing_cache_path(key))
    runtime = trt.Runtime(_trt_logger(trt))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise RunnerError("TensorRT could not deserialize the engine plan"
                          + ("" if built else f"; delete the stale cache entry {cache.plan_path(key)}"))
    types = check_engine_precision(engine, precision)  # before caching: never cache a wrong engine
    info = {"key": key.to_dict(), "built": built, "tensor_types": types, "cache": str(cache.plan_path(key))}
    if built:
        cache.store(key, plan, info)
    return plan, info, engine, runtime


# -- runner ----------------------------------------------------------------------------------------------
class TrtRunner(Runner):
    """TensorRT on an NVIDIA GPU: pinned host buffers, one stream, addresses set once, optional CUDA graph."""

    name = "trt"

    def __init__(self, onnx_path, shape: InputShape, precision: str = "fp32", options: RunnerOptions | None = None):
        super().__init__(shape, precision, options)
        self.onnx_path = Path(onnx_path) if onnx_path is not None else None
        if self.onnx_path is None or not self.onnx_path.is_file():
            raise ConfigError(f"the TensorRT runner needs an existing ONNX export, got {onnx_path}")
        self._cuda = None
        self._graph = None
        self.info: dict = {}

    def _load(self) -> None:
        _import_tensorrt()  # a missing package is reported before a missing GPU
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise GpuUnavailableError(f"the TensorRT engine needs an NVIDIA GPU: {reason}")
        cuda = self._cuda = _CudaRuntime()
        cuda.select(self.options.device)
        _, self.info, self._engine, self._runtime = load_or_build_plan(self.onnx_path, self.shape, self.precision,
                                                                       self.options)
        from spikereveal.engines.runners import read_export_metadata

        self.firing_gain_range = onnx_gain_range(read_export_metadata(self.onnx_path))
        self._context = self._engine.create_execution_context()
        self._stream, self._stream_handle = cuda.stream()
        shapes = {**self.shape.as_dict(), OUTPUT_NAME: self.shape.sharp}
        self._device, self._host, self._host_arrays = {}, {}, {}
        for name, dims in shapes.items():
            nbytes = int(np.prod(dims)) * np.dtype(IO_DTYPE).itemsize
            self._device[name] = cuda.device_buffer(nbytes)
            self._host[name], self._host_arrays[name] = cuda.host_buffer(dims)
            if name in INPUT_NAMES and tuple(self._engine.get_tensor_shape(name)) != tuple(dims):
                self._context.set_input_shape(name, dims)
            self._context.set_tensor_address(name, self._device[name][1])  # once: buffers never move
        self.sharp = self._host_arrays[OUTPUT_NAME]
        if self.options.cuda_graph:
            self._enqueue()  # a first run outside capture lets TensorRT finish lazy setup
            cuda.synchronize(self._stream)
            self._graph = cuda.capture_graph(self._stream, self._enqueue)

    def _enqueue(self) -> None:
        cuda, stream = self._cuda, self._stream
        for name in INPUT_NAMES:
            host = self._host_arrays[name]
            cuda.copy_async(self._device[name][1], host.ctypes.data if cuda.backend != "pycuda" else host,
                            host.nbytes, True, stream)
        if not self._context.execute_async_v3(self._stream_handle):
            raise RunnerError("TensorRT execute_async_v3 failed")
        out = self._host_arrays[OUTPUT_NAME]
        cuda.copy_async(out.ctypes.data if cuda.backend != "pycuda" else out, self._device[OUTPUT_NAME][1],
                        out.nbytes, False, stream)

    def _infer(self, image: np.ndarray, spikes: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        for name, array in (("image", image), ("spikes", spikes)):
            host = self._host_arrays[name]
            if array is not host:
                np.copyto(host, array)
        if self._graph is not None:
            self._cuda.launch_graph(self._graph, self._stream)
        else:
            self._enqueue()
        self._cuda.synchronize(self._stream)
        if out is None:
            return self.sharp
        np.copyto(out, self.sharp)  # the captured graph copies into the pinned buffer; hand out a copy
        return out

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """The pinned input buffers: fill them in place and pass them to ``infer`` to skip a host copy."""
        return {name: self._host_arrays[name] for name in INPUT_NAMES}

    def describe(self) -> dict:
        info = super().describe()
        info.update(onnx=str(self.onnx_path), engine=self.info, cuda_graph=self.options.cuda_graph)
        return info

    def _close(self) -> None:
        self._graph = None
        self._context = None  # context, engine, runtime: released in this order
        self._engine = None
        self._runtime = None
        if self._cuda is not None:
            self._cuda.free([d[0] for d in self._device.values()],
                            [h for h in self._host.values()] if self._cuda.backend != "pycuda" else [],
                            self._stream if self._cuda.backend != "pycuda" else None)
        self._device, self._host, self._host_arrays = {}, {}, {}
