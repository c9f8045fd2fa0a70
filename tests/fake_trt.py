"""A recording stand-in for TensorRT (10.3/11 Python API) and cuda-python's runtime bindings (12.x and 13.x).

No GPU: "device" and "pinned" memory are numpy buffers at real addresses, copies are ``ctypes.memmove``,
and the engine's execution writes ``sharp[k] = image[0] + spikes[k, 0, 0, 0]`` (mod 256) from the tensor
addresses set on the context, so a wrong address or a missing copy gives a wrong output. Stream capture
records copies and executions into a graph that a launch replays, with the addresses of capture time.

Every call is logged in ``FakeStack.calls`` as a tuple of labels (``stream0``, ``event3``, ``H2D``...).
Every create (streams, events, device and pinned allocations, graphs, graph execs, TensorRT runtime,
engine and context) is counted; ``fail_at=N`` makes the N-th create (0-based) fail as the real call would
(an error code, or None from TensorRT). ``leaks()`` lists what is still alive; ``errors`` lists misuse
(double frees, use of freed memory, ``int()`` on a handle under cuda-bindings 13).

Install with :func:`install` (``monkeypatch.setitem(sys.modules, ...)``); ``flavour="13"``: only
``cuda.bindings.runtime`` and ``cuda.bindings.utils.get_cuda_native_handle``, no ``cuda.cudart``, and
``int(handle)`` is an error; ``flavour="12"``: only the legacy ``cuda.cudart`` module, ``int(handle)``.
"""

from __future__ import annotations

import ctypes
import enum
import gc
import json
import sys
import types
import weakref
from collections import Counter

import numpy as np


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidResourceHandle = 400
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class Handle:
    """A CUDA object (stream, event, graph, graph exec) as cuda-python returns it."""

    def __init__(self, stack: "FakeStack", kind: str, label: str, address: int):
        self._stack, self.kind, self.label, self.address = stack, kind, label, address

    def __int__(self):
        if self._stack.flavour == "13":
            self._stack.errors.append(f"int() on {self.label}: deprecated in cuda-bindings 13, use "
                                      "cuda.bindings.utils.get_cuda_native_handle")
        return self.address

    def getPtr(self):  # the address of the wrapper's storage, not the handle (never what TensorRT wants)
        return id(self)

    def __repr__(self):
        return f"<{self.label}>"


SUCCESS = cudaError_t.cudaSuccess


class FakeStack:
    """One fake GPU with its CUDA runtime module and TensorRT module."""

    def __init__(self, flavour: str = "13", devices: int = 1, fail_at: int | None = None,
                 fail_calls: tuple[str, ...] = (), dynamic: bool = False, layer_format: str = "Row major linear FP32",
                 trt_version: str = "10.3.0"):
        self.flavour, self.devices, self.fail_at, self.fail_calls = flavour, devices, fail_at, set(fail_calls)
        self.dynamic, self.layer_format = dynamic, layer_format
        self.calls: list[tuple] = []
        self.errors: list[str] = []
        self.creates = 0  # every create attempted, in order
        self.created: list[str] = []  # the kind of every create attempted
        self.live: dict[int, Handle | tuple] = {}  # address -> live CUDA resource
        self.memory: dict[int, tuple[str, np.ndarray, str]] = {}  # address -> (kind, buffer, label)
        self.trt_objects: list[tuple[str, weakref.ref]] = []
        self.streams: dict[int, Handle] = {}
        self.capturing: dict[int, list] = {}  # stream address -> ops recorded
        self.serial = Counter()
        self.runtime = self._runtime_module()
        self.trt = self._trt_module(trt_version)

    # -- bookkeeping -------------------------------------------------------------------------------------
    def _create_ok(self, kind: str) -> bool:
        index = self.creates
        self.creates += 1
        self.created.append(kind)
        return index != self.fail_at

    def _handle(self, kind: str) -> Handle:
        label = f"{kind}{self.serial[kind]}"
        self.serial[kind] += 1
        handle = Handle(self, kind, label, 0x10000 + 0x10 * self.creates)
        self.live[handle.address] = handle
        return handle

    def _release(self, handle, kind: str) -> cudaError_t:
        address = handle.address if isinstance(handle, Handle) else handle
        entry = self.live.pop(address, None)
        if entry is None or (isinstance(entry, Handle) and entry.kind != kind):
            self.errors.append(f"destroy of {handle!r} as {kind}: not a live {kind}")
            return cudaError_t.cudaErrorInvalidResourceHandle
        return SUCCESS

    def _label(self, obj) -> str:
        return obj.label if isinstance(obj, Handle) else str(obj)

    def _region(self, address: int, nbytes: int, kinds: tuple[str, ...], what: str) -> bool:
        for start, (kind, buffer, label) in self.memory.items():
            if start <= address and address + nbytes <= start + buffer.nbytes:
                if start not in self.live:
                    self.errors.append(f"{what}: {label} was freed")
                    return False
                if kind not in kinds:
                    self.errors.append(f"{what}: {label} is {kind} memory, expected {kinds}")
                    return False
                return True
        self.errors.append(f"{what}: {address:#x} is not in any allocation")
        return False

    def memory_label(self, address: int) -> str:
        for start, (_, buffer, label) in self.memory.items():
            if start <= address < start + buffer.nbytes:
                return label
        return hex(address)

    def leaks(self) -> list[str]:
        """CUDA resources and TensorRT objects still alive (collects garbage first)."""
        gc.collect()
        alive = [self._label(h) if isinstance(h, Handle) else h[0] for h in self.live.values()]
        alive += [kind for kind, ref in self.trt_objects if ref() is not None]
        return sorted(alive)

    def calls_named(self, *names) -> list[tuple]:
        return [call for call in self.calls if call[0] in names]

    def _enqueue(self, stream, op, call) -> None:
        self.calls.append(call)
        address = stream.address if isinstance(stream, Handle) else int(stream)
        if address in self.capturing:
            self.capturing[address].append(op)
        else:
            op()

    # -- the CUDA runtime module -------------------------------------------------------------------------
    def _runtime_module(self) -> types.ModuleType:
        stack = self
        rt = types.ModuleType("fake_cudart")
        rt.cudaError_t, rt.cudaMemcpyKind, rt.cudaStreamCaptureMode = cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode
        rt.cudaStreamNonBlocking, rt.cudaEventDisableTiming = 1, 2

        def call(name, *args):
            stack.calls.append((name, *(stack._label(a) for a in args)))
            return name not in stack.fail_calls

        def cudaGetDeviceCount():
            call("cudaGetDeviceCount")
            return (SUCCESS, stack.devices) if stack.devices else (cudaError_t.cudaErrorNoDevice, 0)

        def cudaSetDevice(device):
            call("cudaSetDevice", device)
            return (SUCCESS,)

        def cudaGetDevice():
            return SUCCESS, 0

        def cudaGetDeviceProperties(device):
            return SUCCESS, types.SimpleNamespace(name=b"Fake GPU\x00\x00", major=8, minor=7)

        def cudaStreamCreateWithFlags(flags):
            call("cudaStreamCreateWithFlags", flags)
            if not stack._create_ok("stream"):
                return cudaError_t.cudaErrorMemoryAllocation, None
            handle = stack._handle("stream")
            stack.streams[handle.address] = handle
            return SUCCESS, handle

        def cudaStreamCreate():
            call("cudaStreamCreate")  # blocking: the runner must not use it
            return cudaStreamCreateWithFlags(0)

        def cudaStreamDestroy(stream):
            call("cudaStreamDestroy", stream)
            return (stack._release(stream, "stream"),)

        def cudaStreamSynchronize(stream):
            call("cudaStreamSynchronize", stream)
            return (SUCCESS,)

        def make_event(name, flags):
            call(name, *(() if flags is None else (flags,)))
            if not stack._create_ok("event"):
                return cudaError_t.cudaErrorMemoryAllocation, None
            handle = stack._handle("event")
            handle.timing = not (flags or 0) & rt.cudaEventDisableTiming
            handle.recorded = False
            return SUCCESS, handle

        rt.cudaEventCreate = lambda: make_event("cudaEventCreate", None)
        rt.cudaEventCreateWithFlags = lambda flags: make_event("cudaEventCreateWithFlags", flags)

        def cudaEventDestroy(event):
            call("cudaEventDestroy", event)
            return (stack._release(event, "event"),)

        def cudaEventRecord(event, stream):
            if not call("cudaEventRecord", event, stream):
                return (cudaError_t.cudaErrorInvalidValue,)
            event.recorded = True
            return (SUCCESS,)

        def cudaStreamWaitEvent(stream, event, flags):
            call("cudaStreamWaitEvent", stream, event)
            return (SUCCESS,)

        def cudaEventSynchronize(event):
            call("cudaEventSynchronize", event)
            return (SUCCESS,)

        def cudaEventElapsedTime(start, end):
            stack.calls.append(("cudaEventElapsedTime", start.label, end.label))
            if not (start.timing and end.timing and start.recorded and end.recorded):
                stack.errors.append(f"elapsed time between {start.label} and {end.label}: not timing events or "
                                    "not recorded")
                return cudaError_t.cudaErrorInvalidResourceHandle, 0.0
            return SUCCESS, 0.25

        def allocate(name, kind, nbytes):
            call(name, nbytes)
            if not stack._create_ok(kind):
                return cudaError_t.cudaErrorMemoryAllocation, 0
            buffer = np.zeros(max(int(nbytes), 1), np.uint8)
            address = buffer.ctypes.data
            label = f"{kind}{stack.serial[kind]}"
            stack.serial[kind] += 1
            stack.memory[address] = (kind, buffer, label)
            stack.live[address] = (label, kind)
            return SUCCESS, address

        def release_memory(name, kind, address):
            call(name, stack.memory_label(address))
            entry = stack.live.get(address)
            if not isinstance(entry, tuple) or entry[1] != kind:
                stack.errors.append(f"{name}({address:#x}): not a live {kind} allocation")
                return (cudaError_t.cudaErrorInvalidValue,)
            del stack.live[address]
            return (SUCCESS,)

        rt.cudaMalloc = lambda nbytes: allocate("cudaMalloc", "device", nbytes)
        rt.cudaMallocHost = lambda nbytes: allocate("cudaMallocHost", "pinned", nbytes)
        rt.cudaFree = lambda address: release_memory("cudaFree", "device", address)
        rt.cudaFreeHost = lambda address: release_memory("cudaFreeHost", "pinned", address)

        def cudaMemcpyAsync(dst, src, nbytes, kind, stream):
            to_device = kind == cudaMemcpyKind.cudaMemcpyHostToDevice
            direction = "H2D" if to_device else "D2H"
            ok = (stack._region(src, nbytes, ("pinned",) if to_device else ("device",), f"{direction} source")
                  and stack._region(dst, nbytes, ("device",) if to_device else ("pinned",), f"{direction} target"))
            call_tuple = ("cudaMemcpyAsync", direction, stack.memory_label(dst), stream.label)
            if not ok:
                stack.calls.append(call_tuple)
                return (cudaError_t.cudaErrorInvalidValue,)
            stack._enqueue(stream, lambda: ctypes.memmove(dst, src, nbytes), call_tuple)
            return (SUCCESS,)

        def cudaStreamBeginCapture(stream, mode):
            call("cudaStreamBeginCapture", stream, cudaStreamCaptureMode(mode).name)
            if "cudaStreamBeginCapture" in stack.fail_calls:
                return (cudaError_t.cudaErrorInvalidValue,)
            stack.capturing[stream.address] = []
            return (SUCCESS,)

        def cudaStreamEndCapture(stream):
            call("cudaStreamEndCapture", stream)
            ops = stack.capturing.pop(stream.address, None)
            if ops is None:
                return cudaError_t.cudaErrorInvalidValue, None
            if not stack._create_ok("graph"):
                return cudaError_t.cudaErrorStreamCaptureInvalidated, None
            graph = stack._handle("graph")
            graph.ops = ops
            return SUCCESS, graph

        def cudaGraphInstantiate(graph, flags):
            call("cudaGraphInstantiate", graph)
            if not stack._create_ok("graphExec"):
                return cudaError_t.cudaErrorMemoryAllocation, None
            graph_exec = stack._handle("graphExec")
            graph_exec.ops = list(graph.ops)
            return SUCCESS, graph_exec

        def cudaGraphLaunch(graph_exec, stream):
            call("cudaGraphLaunch", graph_exec, stream)
            if graph_exec.address not in stack.live:
                stack.errors.append(f"launch of destroyed {graph_exec.label}")
                return (cudaError_t.cudaErrorInvalidResourceHandle,)
            for op in graph_exec.ops:
                op()
            return (SUCCESS,)

        def cudaGraphDestroy(graph):
            call("cudaGraphDestroy", graph)
            return (stack._release(graph, "graph"),)

        def cudaGraphExecDestroy(graph_exec):
            call("cudaGraphExecDestroy", graph_exec)
            return (stack._release(graph_exec, "graphExec"),)

        for name, value in list(locals().items()):
            if name.startswith("cuda") and callable(value):
                setattr(rt, name, value)
        return rt

    def native_handle(self, obj) -> int:
        """``cuda.bindings.utils.get_cuda_native_handle`` of cuda-bindings 12.9.1+/13.x."""
        self.calls.append(("get_cuda_native_handle", self._label(obj)))
        return obj.address

    def modules(self) -> dict[str, types.ModuleType | None]:
        """The ``sys.modules`` entries of this flavour (None: that import fails)."""
        cuda = types.ModuleType("cuda")
        cuda.__path__ = []
        if self.flavour == "13":
            bindings = types.ModuleType("cuda.bindings")
            bindings.__path__ = []
            utils = types.ModuleType("cuda.bindings.utils")
            utils.get_cuda_native_handle = self.native_handle
            bindings.runtime, bindings.utils = self.runtime, utils
            return {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": self.runtime,
                    "cuda.bindings.utils": utils, "cuda.cudart": None, "tensorrt": self.trt}
        if self.flavour == "12":
            cuda.cudart = self.runtime
            return {"cuda": cuda, "cuda.cudart": self.runtime, "cuda.bindings": None,
                    "cuda.bindings.runtime": None, "cuda.bindings.utils": None, "tensorrt": self.trt}
        raise ValueError(f"unknown flavour {self.flavour!r}")

    # -- the TensorRT module -----------------------------------------------------------------------------
    def _trt_module(self, version: str):
        stack = self

        trt = types.ModuleType("tensorrt")
        trt.__version__ = version

        class Logger:
            WARNING = 2

            def __init__(self, level):
                self.level = level

        class DataType:
            FLOAT, HALF, INT8, INT32, BOOL, UINT8 = "float", "half", "int8", "int32", "bool", "uint8"

        trt.Logger, trt.DataType = Logger, DataType
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=2)
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed")
        trt.LayerInformationFormat = types.SimpleNamespace(JSON="json")

        def track(kind, obj):
            stack.trt_objects.append((kind, weakref.ref(obj)))
            return obj

        class Network:
            num_inputs = 2

            def get_input(self, i):
                return types.SimpleNamespace(name=("image", "spikes")[i])

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, low, opt, high):
                stack.calls.append(("profile.set_shape", name, tuple(low), tuple(opt), tuple(high)))
                self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

        class Config:
            profiling_verbosity = None

            def __init__(self):
                self.profiles = []

            def set_memory_pool_limit(self, pool, size):
                pass

            def create_timing_cache(self, data):
                return "timing-cache"

            def set_timing_cache(self, cache, ignore_mismatch):
                pass

            def get_timing_cache(self):
                return types.SimpleNamespace(serialize=lambda: b"timing-bytes")

            def add_optimization_profile(self, profile):
                self.profiles.append(profile.shapes)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                stack.calls.append(("build_serialized_network",))
                profile = {name: [list(dims) for dims in shapes] for name, shapes in config.profiles[0].items()}
                return json.dumps({"profile": profile}).encode()

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                return True

        class Context:
            def __init__(self, engine):
                self.engine = engine
                self.shapes = {name: engine.get_tensor_shape(name) for name in ("image", "spikes")}
                self.addresses = {}

            def set_input_shape(self, name, dims):
                stack.calls.append(("set_input_shape", name, tuple(dims)))
                low, _, high = self.engine.profile[name]
                if not all(lo <= d <= hi for lo, d, hi in zip(low, dims, high)):
                    return False
                self.shapes[name] = tuple(dims)
                return True

            def get_tensor_shape(self, name):
                if name != "sharp":
                    return self.shapes[name]
                image, spikes = self.shapes["image"], self.shapes["spikes"]
                return (spikes[0], image[1], image[2], 3)

            def set_tensor_address(self, name, address):
                stack.calls.append(("set_tensor_address", name, stack.memory_label(address)))
                self.addresses[name] = address
                return True

            def set_input_consumed_event(self, event):
                if not isinstance(event, int):
                    stack.errors.append(f"set_input_consumed_event takes the native handle, got {event!r}")
                stack.calls.append(("set_input_consumed_event", stack.live[event].label if event in stack.live
                                    else event))
                return True

            def execute_async_v3(self, stream_handle):
                if not isinstance(stream_handle, int) or stream_handle not in stack.streams:
                    stack.errors.append(f"execute_async_v3 needs a live stream's native handle, got {stream_handle!r}")
                    return False
                if "execute_async_v3" in stack.fail_calls:
                    stack.calls.append(("execute_async_v3", "failed"))
                    return False
                addresses = dict(self.addresses)  # what a captured graph keeps
                image_shape, spikes_shape = self.shapes["image"], self.shapes["spikes"]
                sharp_shape = self.get_tensor_shape("sharp")

                def run():
                    sizes = {"image": image_shape, "spikes": spikes_shape, "sharp": sharp_shape}
                    arrays = {}
                    for name, shape in sizes.items():
                        nbytes = int(np.prod(shape))
                        if not stack._region(addresses[name], nbytes, ("device",), f"execute {name}"):
                            return
                        raw = (ctypes.c_ubyte * nbytes).from_address(addresses[name])
                        arrays[name] = np.frombuffer(raw, np.uint8).reshape(shape)
                    shift = arrays["spikes"][:, 0, 0, 0].astype(np.uint16)[:, None, None, None]
                    arrays["sharp"][...] = ((arrays["image"].astype(np.uint16) + shift) % 256).astype(np.uint8)

                stream = stack.streams[stream_handle]
                stack._enqueue(stream, run, ("execute_async_v3", stream.label,
                                             tuple(stack.memory_label(addresses.get(n, 0))
                                                   for n in ("image", "spikes", "sharp"))))
                return True

        class Engine:
            num_io_tensors = 3

            def __init__(self, plan):
                self.profile = {name: tuple(tuple(d) for d in dims)
                                for name, dims in json.loads(bytes(plan).decode())["profile"].items()}

            def get_tensor_name(self, i):
                return ("image", "spikes", "sharp")[i]

            def get_tensor_dtype(self, name):
                return DataType.UINT8

            def get_tensor_shape(self, name):
                _, opt, _ = self.profile[name]
                return tuple(-1 for _ in opt) if stack.dynamic else opt

            def create_execution_context(self):
                stack.calls.append(("create_execution_context",))
                if not stack._create_ok("trt.IExecutionContext"):
                    return None
                return track("trt.IExecutionContext", Context(self))

            def create_engine_inspector(self):
                layer = {"Name": "conv", "Inputs": [{"Format/Datatype": stack.layer_format}],
                         "Outputs": [{"Format/Datatype": stack.layer_format}]}
                return types.SimpleNamespace(get_engine_information=lambda fmt: json.dumps({"Layers": [layer]}))

        class Runtime:
            def __init__(self, logger):
                stack.calls.append(("trt.Runtime",))
                if not stack._create_ok("trt.Runtime"):
                    raise RuntimeError("fake TensorRT: Runtime could not be created")
                track("trt.Runtime", self)

            def deserialize_cuda_engine(self, plan):
                stack.calls.append(("deserialize_cuda_engine",))
                if not stack._create_ok("trt.ICudaEngine"):
                    return None
                return track("trt.ICudaEngine", Engine(plan))

        trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
        return trt


def install(monkeypatch, stack: FakeStack, metadata: dict | None = None) -> FakeStack:
    """Put ``stack``'s modules in ``sys.modules`` and make the ONNX metadata read succeed."""
    import spikereveal.engines.onnx_metadata as onnx_metadata
    import spikereveal.engines.trt as trt_module

    for name, module in stack.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(trt_module, "_TRT_LOGGERS", {})  # never leak a fake logger to a real TensorRT
    meta = {"precision": "fp32", "firing_gain_range": "[0.5, 2.0]"} if metadata is None else metadata
    monkeypatch.setattr(onnx_metadata, "read_onnx_metadata", lambda path: dict(meta))
    return stack
