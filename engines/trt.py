"""TensorRT runner (GPU, Jetson): build from ONNX, cache the plan, run with execute_async_v3.

Written to the API that TensorRT 10.3 (JetPack 6) and 11.x share: a strongly typed network (precision
comes from the ONNX graph: an fp16 graph or Q/DQ nodes; TensorRT 11 has no FP16/INT8 builder flags), a
memory-pool limit, a timing cache serialized beside the engines, one static optimisation profile, and
name-based I/O. The engine's real layer tensor types are read with the engine inspector and checked
against the requested precision.

CUDA comes from cuda-python's runtime bindings, 12.x and 13.x: ``cuda.bindings.runtime`` (cuda-bindings
12.6.1+), else the legacy ``cuda.cudart`` module (12.x only; removed in 13.0). Handles are passed to
TensorRT through ``cuda.bindings.utils.get_cuda_native_handle`` where it exists (``int(obj)`` is deprecated
from cuda-bindings 12.9.1/13.0). Streams are non-blocking; pinned host buffers and double-buffered inputs
and outputs let the copy of exposure n+1 overlap the inference of exposure n (TensorRT's input-consumed
event orders the reuse of a slot's inputs); every CUDA resource and TensorRT object is released on
``close()`` and when ``load()`` fails part way. Not yet run on hardware by this project: the runtime path
is tested against a recording stand-in of TensorRT and CUDA (``tests/fake_trt.py``), and
``spikereveal bench device-check`` is the first check to run on a GPU or Jetson.

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
from typing import Any, Mapping

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


class CudaCallError(RunnerError):
    """A CUDA runtime call failed while the runner was loading, running or closing."""


#: where the CUDA runtime bindings live: cuda-bindings 12.6.1+ and 13.x, then the legacy module of cuda-python 12.x
#: (``cuda.cudart``, removed in 13.0). PyCUDA is not used: JetPack images ship neither it nor cuda-python, and
#: cuda-python is a binary wheel where PyCUDA compiles against the CUDA toolkit on install.
CUDART_MODULES = ("cuda.bindings.runtime", "cuda.cudart")


def _import_cudart():
    """``(module, its name)`` of the CUDA runtime bindings; one MissingDependencyError when none imports."""
    for name in CUDART_MODULES:
        try:
            return importlib.import_module(name), name
        except Exception:  # ImportError, or a broken install raising something else
            continue
    raise MissingDependencyError("cuda-python", "the TensorRT engine's buffers and stream", "trt")


def cuda_bindings_version() -> str | None:
    """The installed cuda-bindings (or cuda-python 12.x) version, None when neither is there."""
    from importlib import metadata

    for distribution in ("cuda-bindings", "cuda-python"):
        try:
            return f"{distribution} {metadata.version(distribution)}"
        except Exception:
            continue
    return None


def _native_handle(obj) -> int:
    """The address a CUDA object (stream, event, graph exec) wraps, as TensorRT's Python API wants it.

    cuda-bindings 12.9.1+/13.x: ``cuda.bindings.utils.get_cuda_native_handle`` (``int(obj)`` is deprecated
    there and subject to removal); older 12.x: ``int(obj)``. Plain ints (device pointers, the ``_v2``
    bindings' handles) pass through. Not ``obj.getPtr()``: that is the address of the wrapper's storage,
    a pointer to the handle, not the handle.
    """
    if obj is None:
        return 0
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    try:
        utils = importlib.import_module("cuda.bindings.utils")
        getter = utils.get_cuda_native_handle
    except Exception:
        return int(obj)
    return int(getter(obj))


class _CudaRuntime:
    """The CUDA runtime calls the runner needs, over cuda-python's runtime bindings (12.x and 13.x)."""

    def __init__(self):
        self.rt, self.module = _import_cudart()

    def _check(self, result, what: str, error=CudaCallError):
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            name = getattr(err, "name", str(err))
            hint = "; check the NVIDIA driver and GPU" if error is GpuUnavailableError else ""
            raise error(f"CUDA {what} failed ({name}){hint}")
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    # -- device ------------------------------------------------------------------------------------------
    def device_count(self) -> int:
        return int(self._check(self.rt.cudaGetDeviceCount(), "cudaGetDeviceCount", GpuUnavailableError))

    def select(self, device: int | None) -> int:
        if device is not None:
            self._check(self.rt.cudaSetDevice(int(device)), "cudaSetDevice", GpuUnavailableError)
        return int(self._check(self.rt.cudaGetDevice(), "cudaGetDevice", GpuUnavailableError))

    def device_identity(self, device: int) -> tuple[str, tuple[int, int]]:
        props = self._check(self.rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties", GpuUnavailableError)
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return name.rstrip("\x00").strip(), (int(props.major), int(props.minor))

    # -- streams and events --------------------------------------------------------------------------------
    def create_stream(self):
        """A non-blocking stream: no implicit synchronisation with the legacy default stream."""
        return self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking),
                           "cudaStreamCreateWithFlags")

    def destroy_stream(self, stream) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def synchronize(self, stream) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def create_event(self, timing: bool):
        if timing:
            return self._check(self.rt.cudaEventCreate(), "cudaEventCreate")
        return self._check(self.rt.cudaEventCreateWithFlags(self.rt.cudaEventDisableTiming),
                           "cudaEventCreateWithFlags")

    def destroy_event(self, event) -> None:
        self._check(self.rt.cudaEventDestroy(event), "cudaEventDestroy")

    def record(self, event, stream) -> None:
        self._check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def wait_event(self, stream, event) -> None:
        self._check(self.rt.cudaStreamWaitEvent(stream, event, 0), "cudaStreamWaitEvent")

    def event_synchronize(self, event) -> None:
        self._check(self.rt.cudaEventSynchronize(event), "cudaEventSynchronize")

    def elapsed_ms(self, start, end) -> float:
        return float(self._check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    # -- memory ----------------------------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(int(nbytes)), "cudaMalloc"))

    def free(self, pointer: int) -> None:
        self._check(self.rt.cudaFree(pointer), "cudaFree")

    def malloc_host(self, nbytes: int) -> int:
        """Page-locked host memory (the DMA engines copy it asynchronously; pageable memory is staged)."""
        return int(self._check(self.rt.cudaMallocHost(int(nbytes)), "cudaMallocHost"))

    def free_host(self, pointer: int) -> None:
        self._check(self.rt.cudaFreeHost(pointer), "cudaFreeHost")

    @staticmethod
    def host_array(pointer: int, shape: tuple[int, ...], dtype=IO_DTYPE) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = (ctypes.c_byte * nbytes).from_address(pointer)
        return np.frombuffer(raw, dtype).reshape(shape)

    def copy_async(self, dst: int, src: int, nbytes: int, to_device: bool, stream) -> None:
        kind = (self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice if to_device
                else self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        self._check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream), "cudaMemcpyAsync")

    # -- CUDA graphs ---------------------------------------------------------------------------------------
    def begin_capture(self, stream) -> None:
        # thread-local: other threads of the process (ingest, publish) may call CUDA meanwhile
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream):
        return self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")

    def instantiate(self, graph):
        return self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self, graph_exec, stream) -> None:
        self._check(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph) -> None:
        self._check(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def destroy_graph_exec(self, graph_exec) -> None:
        self._check(self.rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")


class ResourceLedger:
    """Every resource a runner created, with how to release it; released newest first.

    ``add`` right after each successful create, so a failure anywhere in ``load()`` releases exactly what
    exists. ``release_all`` keeps going past a failing release and returns what failed.
    """

    def __init__(self):
        self._items: list[tuple[str, Any, Any]] = []

    def add(self, kind: str, handle, release):
        self._items.append((kind, handle, release))
        return handle

    def release_all(self) -> list[str]:
        problems = []
        while self._items:
            kind, handle, release = self._items.pop()
            try:
                release(handle)
            except Exception as exc:  # keep releasing the rest
                problems.append(f"{kind}: {type(exc).__name__}: {exc}")
        return problems

    def counts(self) -> Counter:
        return Counter(kind for kind, _, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)


def cuda_unavailable_reason() -> str | None:
    """None when a CUDA device is usable, else why not (no cuda-python, no driver, no GPU)."""
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
    try:
        runtime = trt.Runtime(_trt_logger(trt))
    except Exception as exc:  # TensorRT raises plain RuntimeError/TypeError here (no driver, out of memory)
        raise RunnerError(f"TensorRT could not create a runtime ({type(exc).__name__}: {exc})") from exc
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
#: exposures in flight at once: inputs and outputs are double-buffered
SLOTS = 2
#: per slot, the events that time the copies and the compute (``cudaEventElapsedTime`` needs timing events)
_TIMING_EVENTS = ("h2d_start", "h2d_done", "compute_start", "compute_done", "d2h_done")


def trtexec_command(plan_path, shape: InputShape, cuda_graph: bool = False) -> str:
    """The ``trtexec`` line that times the same plan at the same shapes, for a cross-check.

    trtexec prints H2D, GPU compute and D2H separately; whether its "Latency" includes the copies depends
    on its version and ``--noDataTransfers`` (TensorRT 11's trtexec leaves them out by default), so compare
    its GPU compute with ``compute_ms`` here.
    """
    shapes = ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shape.as_dict().items())
    parts = ["trtexec", f"--loadEngine={plan_path}", f"--shapes={shapes}"]
    if cuda_graph:
        parts.append("--useCudaGraph")
    return " ".join(parts)


class _Slot:
    """One exposure in flight: device and pinned host buffers for every tensor, and its events."""

    def __init__(self, index: int):
        self.index = index
        self.device: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}
        self.events: dict[str, Any] = {}
        self.consumed_handle = 0  # the input-consumed event as TensorRT takes it
        self.graph_exec = None
        self.ticket: int | None = None  # the exposure in flight here; None: free


class TrtRunner(Runner):
    """TensorRT on an NVIDIA GPU: pinned double-buffered I/O, a copy and a compute stream, optional CUDA graphs.

    Each of the :data:`SLOTS` slots has its own device and pinned host buffers and events. ``submit`` copies
    an exposure into a free slot's pinned inputs and enqueues host->device copies on the copy stream, then
    ``execute_async_v3`` and the device->host copy of the output on the compute stream; ``wait`` returns
    its output. So the copy of exposure n+1 runs while exposure n computes. Before copying into a slot's
    device inputs, the copy stream waits on that slot's input-consumed event, which TensorRT records
    (``set_input_consumed_event``) as soon as the slot's previous exposure has read them. ``infer`` (the
    Runner protocol) is submit + wait on slot 0. Both streams are non-blocking. Per exposure, CUDA events
    time the copies and the compute separately (``last_timings_ms``).

    With ``options.cuda_graph`` each slot's copies + execution run as one captured CUDA graph on the compute
    stream (no copy/compute overlap, less launch overhead; only the GPU total is timed).

    Every TensorRT object and CUDA resource is recorded in a :class:`ResourceLedger` as it is created and
    released, newest first, on ``close()`` and when ``load()`` fails part way.
    """

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return cuda_unavailable_reason()

    name = "trt"

    def __init__(self, onnx_path, shape: InputShape, precision: str = "fp32", options: RunnerOptions | None = None):
        super().__init__(shape, precision, options)
        self.onnx_path = Path(onnx_path) if onnx_path is not None else None
        if self.onnx_path is None or not self.onnx_path.is_file():
            raise ConfigError(f"the TensorRT runner needs an existing ONNX export, got {onnx_path}")
        self._cuda: _CudaRuntime | None = None
        self._ledger = ResourceLedger()
        self._runtime = self._engine = self._context = None
        self._compute_stream = self._copy_stream = None
        self._compute_handle = 0
        self._slots: list[_Slot] = []
        self._next_ticket = 0
        self.info: dict = {}
        #: the last finished exposure's GPU times in ms: h2d, compute, d2h, gpu_total (None where not measured)
        self.last_timings_ms: dict[str, float | None] = {}
        #: releases that failed at the last close (logged too); empty when all went well
        self.release_problems: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------------------
    def load(self) -> "TrtRunner":
        try:
            return super().load()
        except BaseException:
            self.close()  # the warm-up failed after _load succeeded: release everything
            raise

    def _load(self) -> None:
        _import_tensorrt()  # a missing package is reported before a missing GPU
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise GpuUnavailableError(f"the TensorRT engine needs an NVIDIA GPU: {reason}")
        try:
            self._create()
        except BaseException:
            self._release()
            raise

    def _keep(self, attribute: str, obj, kind: str) -> None:
        """Hold a TensorRT object; releasing it drops the reference (TensorRT 10's Python API has no destroy)."""
        setattr(self, attribute, obj)
        self._ledger.add(kind, attribute, lambda name: setattr(self, name, None))

    def _create(self) -> None:
        from spikereveal.engines.runners import read_export_metadata

        cuda = self._cuda = _CudaRuntime()
        ledger = self._ledger
        cuda.select(self.options.device)
        built = load_or_build_plan(self.onnx_path, self.shape, self.precision, self.options)
        self.info = built[1]
        self._keep("_runtime", built[3], "trt.Runtime")
        self._keep("_engine", built[2], "trt.ICudaEngine")
        del built  # no local reference may outlive a failed load (a traceback keeps the frame)
        self.firing_gain_range = onnx_gain_range(read_export_metadata(self.onnx_path))
        context = self._engine.create_execution_context()
        if context is None:
            raise RunnerError("TensorRT could not create an execution context (out of GPU memory?)")
        self._keep("_context", context, "trt.IExecutionContext")
        del context
        shapes = {**self.shape.as_dict(), OUTPUT_NAME: self.shape.sharp}
        for name in INPUT_NAMES:
            dims = shapes[name]
            if tuple(self._engine.get_tensor_shape(name)) != tuple(dims):  # a dynamic engine
                if not self._context.set_input_shape(name, dims):
                    raise RunnerError(f"the TensorRT engine does not accept {name} of shape {dims}; rebuild it")
        produced = tuple(self._context.get_tensor_shape(OUTPUT_NAME))
        if produced != tuple(shapes[OUTPUT_NAME]):
            raise RunnerError(f"the TensorRT engine gives {OUTPUT_NAME} of shape {produced}, expected "
                              f"{shapes[OUTPUT_NAME]}; rebuild it from this export")
        self._compute_stream = ledger.add("cudaStream", cuda.create_stream(), cuda.destroy_stream)
        self._copy_stream = ledger.add("cudaStream", cuda.create_stream(), cuda.destroy_stream)
        self._compute_handle = _native_handle(self._compute_stream)
        for index in range(SLOTS):
            slot = _Slot(index)
            self._slots.append(slot)
            for name, dims in shapes.items():
                nbytes = int(np.prod(dims)) * np.dtype(IO_DTYPE).itemsize
                slot.device[name] = ledger.add("cudaMalloc", cuda.malloc(nbytes), cuda.free)
                pinned = ledger.add("cudaMallocHost", cuda.malloc_host(nbytes), cuda.free_host)
                slot.host[name] = cuda.host_array(pinned, dims)
            for event in _TIMING_EVENTS:
                slot.events[event] = ledger.add("cudaEvent", cuda.create_event(timing=True), cuda.destroy_event)
            slot.events["consumed"] = ledger.add("cudaEvent", cuda.create_event(timing=False), cuda.destroy_event)
            slot.consumed_handle = _native_handle(slot.events["consumed"])
        self.sharp = self._slots[0].host[OUTPUT_NAME]
        if self.options.cuda_graph:
            for slot in self._slots:
                self._bind(slot)
                self._enqueue_serial(slot)  # a first run outside capture lets TensorRT finish lazy setup
                cuda.synchronize(self._compute_stream)
                slot.graph_exec = self._capture(slot)

    def _capture(self, slot: _Slot):
        """The slot's copies + execution recorded on the compute stream into an instantiated CUDA graph."""
        cuda, stream = self._cuda, self._compute_stream
        cuda.begin_capture(stream)
        try:
            self._enqueue_serial(slot)
        except BaseException:
            try:  # leave capture mode; drop the partial graph
                partial = cuda.end_capture(stream)
                if partial is not None:
                    cuda.destroy_graph(partial)
            except Exception as exc:
                logger.debug("ending a failed capture: %s", exc)
            raise
        graph = self._ledger.add("cudaGraph", cuda.end_capture(stream), cuda.destroy_graph)
        return self._ledger.add("cudaGraphExec", cuda.instantiate(graph), cuda.destroy_graph_exec)

    def _close(self) -> None:
        self._release()

    def _release(self) -> None:
        """Wait for work in flight, then release everything in the ledger, newest first."""
        cuda = self._cuda
        for stream in (self._copy_stream, self._compute_stream):
            if stream is not None and cuda is not None:
                try:
                    cuda.synchronize(stream)
                except Exception as exc:
                    logger.warning("TensorRT runner: synchronising before release failed: %s", exc)
        self.release_problems = self._ledger.release_all()
        for problem in self.release_problems:
            logger.warning("TensorRT runner: releasing %s failed", problem)
        self._slots = []
        self.sharp = None
        self._compute_stream = self._copy_stream = None
        self._compute_handle = 0
        self._next_ticket = 0
        self._cuda = None

    # -- enqueue ---------------------------------------------------------------------------------------
    def _bind(self, slot: _Slot) -> None:
        for name, pointer in slot.device.items():
            if not self._context.set_tensor_address(name, pointer):
                raise RunnerError(f"TensorRT refused the address of {name!r}")

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._compute_handle):
            raise RunnerError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def _enqueue_serial(self, slot: _Slot) -> None:
        """Copies in, execution, copy out, all on the compute stream (the graph's body)."""
        cuda, stream = self._cuda, self._compute_stream
        for name in INPUT_NAMES:
            host = slot.host[name]
            cuda.copy_async(slot.device[name], host.ctypes.data, host.nbytes, True, stream)
        self._execute()
        out = slot.host[OUTPUT_NAME]
        cuda.copy_async(out.ctypes.data, slot.device[OUTPUT_NAME], out.nbytes, False, stream)

    def _enqueue_overlapped(self, slot: _Slot) -> None:
        """Copies in on the copy stream, execution and copy out on the compute stream, ordered by events."""
        cuda, events = self._cuda, slot.events
        copy, compute = self._copy_stream, self._compute_stream
        cuda.wait_event(copy, events["consumed"])  # TensorRT has read this slot's inputs of the last exposure
        cuda.record(events["h2d_start"], copy)
        for name in INPUT_NAMES:
            host = slot.host[name]
            cuda.copy_async(slot.device[name], host.ctypes.data, host.nbytes, True, copy)
        cuda.record(events["h2d_done"], copy)
        cuda.wait_event(compute, events["h2d_done"])
        self._bind(slot)
        if not self._context.set_input_consumed_event(slot.consumed_handle):
            raise RunnerError("TensorRT refused the input-consumed event")
        cuda.record(events["compute_start"], compute)
        self._execute()
        cuda.record(events["compute_done"], compute)
        out = slot.host[OUTPUT_NAME]
        cuda.copy_async(out.ctypes.data, slot.device[OUTPUT_NAME], out.nbytes, False, compute)
        cuda.record(events["d2h_done"], compute)

    def _start(self, slot: _Slot, image: np.ndarray, spikes: np.ndarray) -> None:
        for name, array in (("image", image), ("spikes", spikes)):
            host = slot.host[name]
            if array is not host:
                np.copyto(host, array)  # the slot is free: its last copy to the device has finished
        if slot.graph_exec is not None:
            cuda, events = self._cuda, slot.events
            cuda.record(events["compute_start"], self._compute_stream)
            cuda.launch(slot.graph_exec, self._compute_stream)
            cuda.record(events["d2h_done"], self._compute_stream)
        else:
            self._enqueue_overlapped(slot)

    def _finish(self, slot: _Slot, out: np.ndarray | None) -> np.ndarray:
        cuda, events = self._cuda, slot.events
        cuda.event_synchronize(events["d2h_done"])
        if slot.graph_exec is not None:
            self.last_timings_ms = {"h2d": None, "compute": None, "d2h": None,
                                    "gpu_total": cuda.elapsed_ms(events["compute_start"], events["d2h_done"])}
        else:
            self.last_timings_ms = {
                "h2d": cuda.elapsed_ms(events["h2d_start"], events["h2d_done"]),
                "compute": cuda.elapsed_ms(events["compute_start"], events["compute_done"]),
                "d2h": cuda.elapsed_ms(events["compute_done"], events["d2h_done"]),
                "gpu_total": cuda.elapsed_ms(events["h2d_start"], events["d2h_done"]),
            }
        result = slot.host[OUTPUT_NAME]
        if out is None:
            return result
        np.copyto(out, result)
        return out

    # -- inference -------------------------------------------------------------------------------------
    def _infer(self, image: np.ndarray, spikes: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        if any(slot.ticket is not None for slot in self._slots):
            raise RunnerError("infer() while exposures from submit() are in flight: wait() for them first")
        slot = self._slots[0]
        self._start(slot, image, spikes)
        return self._finish(slot, out)

    def submit(self, image: np.ndarray, spikes: np.ndarray) -> int:
        """Start one exposure without waiting for it; returns the ticket to ``wait`` for.

        Up to :data:`SLOTS` exposures may be in flight; wait for them in the order they were submitted.
        """
        if not self.loaded:
            raise RunnerError("trt runner: call load() before submit()")
        image = self._check_input("image", image, self.shape.image)
        spikes = self._check_input("spikes", spikes, self.shape.spikes)
        ticket = self._next_ticket
        slot = self._slots[ticket % SLOTS]
        if slot.ticket is not None:
            raise RunnerError(f"{SLOTS} exposures are in flight: wait() for exposure {slot.ticket} first")
        self._start(slot, image, spikes)
        slot.ticket = ticket
        self._next_ticket += 1
        return ticket

    def wait(self, ticket: int, out: np.ndarray | None = None) -> np.ndarray:
        """The output of ``submit``'s ``ticket``: its slot's pinned buffer (valid until that slot is used
        again, :data:`SLOTS` submits later) or ``out`` filled with it."""
        if not self.loaded or not self._slots:
            raise RunnerError("trt runner: nothing is in flight (not loaded)")
        slot = self._slots[ticket % SLOTS]
        if slot.ticket != ticket:
            raise RunnerError(f"exposure {ticket} is not in flight")
        if out is not None and (not isinstance(out, np.ndarray) or out.shape != self.shape.sharp
                                or out.dtype != IO_DTYPE or not out.flags.c_contiguous or not out.flags.writeable):
            raise ConfigError(f"out must be a writeable C-contiguous uint8 array of shape {self.shape.sharp}")
        try:
            return self._finish(slot, out)
        finally:
            slot.ticket = None

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """The pinned input buffers ``infer`` uses: fill them in place and pass them to skip a host copy."""
        return {name: self._slots[0].host[name] for name in INPUT_NAMES}

    def next_inputs(self) -> dict[str, np.ndarray]:
        """The pinned input buffers the next ``submit`` uses (free only when its slot is not in flight)."""
        slot = self._slots[self._next_ticket % SLOTS]
        return {name: slot.host[name] for name in INPUT_NAMES}

    def trtexec_command(self) -> str:
        return trtexec_command(self.info.get("cache", "ENGINE.plan"), self.shape, self.options.cuda_graph)

    def describe(self) -> dict:
        info = super().describe()
        info.update(onnx=str(self.onnx_path), engine=self.info, cuda_graph=self.options.cuda_graph,
                    cuda_bindings=cuda_bindings_version(), cuda_module=self._cuda.module if self._cuda else None,
                    slots=SLOTS, streams="copy + compute, non-blocking", transfers_included=True,
                    trtexec=self.trtexec_command() if self.info else None)
        return info
