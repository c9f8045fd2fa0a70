"""One small runner interface over ONNX Runtime, PyTorch eager and TensorRT (Polygraphy-like).

A runner holds one loaded network (the deployed graph, ``engines.ldn.ExposureLDN``) for one static
geometry: the exposure's ``image`` (1, H, W, 3) uint8 BGR and ``spikes`` (K, S, H/4, W/4) uint8 levels
(``SPIKE_LEVEL`` = one spike) in, ``sharp`` (K, H, W, 3) uint8 BGR out (K = output frames per exposure,
S = spike frames per window). ``load()`` builds/loads and warms it up; ``infer(image, spikes)`` runs one
exposure and returns the runner's preallocated ``sharp`` array, which the next call overwrites (copy it to
keep it), or writes into ``out=`` when given. The host moves uint8 only: the float conversions, the
clipping and the rounding happen inside the graph. Runners are context managers
(``with create_runner(...) as runner:`` loads and closes).

Backends are looked up by name in ``RUNNERS`` and imported lazily, so this module imports neither
onnxruntime, torch nor TensorRT; a missing backend raises one MissingDependencyError.
"""

from __future__ import annotations

import abc
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from spikereveal.engines.cache import check_precision_name
from spikereveal.errors import ConfigError, FormatError, MissingDependencyError, SpikeRevealError
from spikereveal.kernels.extract import SPIKE_LEVEL
from spikereveal.kernels.timing import LDN_SPIKE_WINDOW
from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE

logger = logging.getLogger(__name__)

INPUT_NAMES = ("image", "spikes")
OUTPUT_NAME = "sharp"
#: dtype of every input and output of a deployed graph
IO_DTYPE = np.uint8


@dataclass(frozen=True)
class InputShape:
    """Static geometry of one exposure window: K frames of an H x W image, S spike frames each.

    The deployed graph's tensors: ``image`` (1, H, W, 3), ``spikes`` (K, S, H/4, W/4), ``sharp``
    (K, H, W, 3), all uint8.
    """

    k: int  # sharp frames per exposure: the graph's batch axis
    height: int
    width: int
    spike_frames: int = LDN_SPIKE_WINDOW

    def __post_init__(self):
        for name in ("k", "height", "width", "spike_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.height % SPIKE_TO_IMAGE_SCALE or self.width % SPIKE_TO_IMAGE_SCALE:
            raise ConfigError(
                f"image height and width must be multiples of {SPIKE_TO_IMAGE_SCALE} (spikes are a quarter of the "
                f"image), got {self.height}x{self.width}"
            )

    @property
    def image(self) -> tuple[int, int, int, int]:
        return (1, self.height, self.width, 3)

    @property
    def spikes(self) -> tuple[int, int, int, int]:
        return (self.k, self.spike_frames, self.height // SPIKE_TO_IMAGE_SCALE, self.width // SPIKE_TO_IMAGE_SCALE)

    @property
    def sharp(self) -> tuple[int, int, int, int]:
        return (self.k, self.height, self.width, 3)

    def as_dict(self) -> dict[str, tuple[int, ...]]:
        return {"image": self.image, "spikes": self.spikes}


@dataclass(frozen=True)
class TritonOptions:
    """Where the ``triton`` engine sends exposures and how it copes with a slow or absent server
    (``engines.triton``). ``url``: the server's gRPC ``HOST:PORT``; ``model``: the model name in its repository."""

    url: str
    model: str = "spikereveal_ldn"  # engines.triton_repo.DEFAULT_TRITON_MODEL
    request_timeout_s: float = 5.0  # deadline of one attempt
    retries: int = 2  # further attempts after a timeout or an unreachable server (not after a rejection)
    backoff_s: float = 0.05  # first wait before a retry; doubles up to max_backoff_s
    max_backoff_s: float = 1.0
    connect_timeout_s: float = 30.0  # load(): how long to wait for the server and the model to be ready
    max_in_flight: int = 2  # outstanding requests per runner

    def __post_init__(self):
        if not isinstance(self.url, str) or not self.url.strip():
            raise ConfigError("the triton engine needs --triton-url HOST:PORT (the server's gRPC port, 8001 by default)")
        if "://" in self.url:
            raise ConfigError(f"--triton-url takes HOST:PORT for gRPC, without a scheme; got {self.url!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("--triton-model must be a model name of the Triton repository")
        for name in ("request_timeout_s", "backoff_s", "max_backoff_s", "connect_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
                raise ConfigError(f"triton {name} must be a finite number of seconds > 0, got {value!r}")
        for name, low in (("retries", 0), ("max_in_flight", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"triton {name} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class RunnerOptions:
    """Backend-independent runner settings. ``threads=None``: all cores but one (leave room for ingest)."""

    threads: int | None = None
    warmup_runs: int = 1
    cache_dir: str | None = None  # TensorRT engine cache; None: the user cache directory
    workspace_bytes: int = 1 << 30  # TensorRT builder memory-pool limit
    cuda_graph: bool = False  # TensorRT: replay copies + execution as one CUDA graph
    device: int | None = None  # CUDA device ordinal; None: the current device
    triton: TritonOptions | None = None  # the triton engine's server, model and retry policy

    def __post_init__(self):
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer or None, got {self.threads!r}")
        if self.warmup_runs < 0:
            raise ConfigError(f"warmup_runs must be >= 0, got {self.warmup_runs}")
        if self.workspace_bytes < (1 << 20):
            raise ConfigError(f"workspace_bytes must be at least 1 MiB, got {self.workspace_bytes}")

    def resolved_threads(self) -> int:
        if self.threads is not None:
            return int(self.threads)
        return max(1, (os.cpu_count() or 2) - 1)


class RunnerError(SpikeRevealError, RuntimeError):
    """A backend failed to load or run the network."""


class Runner(abc.ABC):
    """Load once, warm up, then ``infer`` exposure windows on preallocated buffers."""

    name: ClassVar[str]

    def __init__(self, shape: InputShape, precision: str = "fp32", options: RunnerOptions | None = None):
        self.shape = shape
        self.precision = check_precision_name(precision)
        self.options = options or RunnerOptions()
        self.loaded = False
        self.sharp: np.ndarray | None = None  # the preallocated output, filled by every infer()
        # (lo, hi) the model declares it was trained for (``spikereveal.kernels.sensor``), set by load(); None: none
        self.firing_gain_range: tuple[float, float] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Beyond its importable packages, why this backend cannot run here (e.g. no GPU); None: it can."""
        return None

    def load(self) -> "Runner":
        """Load the network and run ``options.warmup_runs`` inferences on zeros. Idempotent."""
        if self.loaded:
            return self
        self._load()
        self.loaded = True
        image = np.zeros(self.shape.image, IO_DTYPE)
        spikes = np.zeros(self.shape.spikes, IO_DTYPE)
        try:
            for _ in range(self.options.warmup_runs):
                self.infer(image, spikes)
        except BaseException:
            self.close()  # a failed warm-up leaves nothing loaded behind (sessions, engines, buffers)
            raise
        return self

    def close(self) -> None:
        if self.loaded:
            self._close()
        self.loaded = False

    def __enter__(self) -> "Runner":
        return self.load()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- inference -------------------------------------------------------------------------------------
    def infer(self, image: np.ndarray, spikes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """One exposure: ``image (1,H,W,3)``, ``spikes (K,S,H/4,W/4)`` uint8 -> ``sharp (K,H,W,3)`` uint8.

        Returns the runner's own output buffer, overwritten by the next call, or ``out`` (a C-contiguous
        uint8 array of the output's shape) filled with the result.
        """
        if not self.loaded:
            raise RunnerError(f"{self.name} runner: call load() (or use it as a context manager) before infer()")
        if out is not None and (not isinstance(out, np.ndarray) or out.shape != self.shape.sharp
                                or out.dtype != IO_DTYPE or not out.flags.c_contiguous or not out.flags.writeable):
            raise ConfigError(f"out must be a writeable C-contiguous uint8 array of shape {self.shape.sharp}, got "
                              f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
        return self._infer(self._check_input("image", image, self.shape.image),
                           self._check_input("spikes", spikes, self.shape.spikes), out)

    def _check_input(self, name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if not isinstance(array, np.ndarray):
            raise ConfigError(f"{name} must be a numpy array, got {type(array).__name__}")
        if array.shape != shape:
            raise ConfigError(f"{self.name} runner was loaded for {name} of shape {shape}, got {array.shape}")
        if array.dtype != IO_DTYPE:
            raise ConfigError(f"{name} must be uint8 (the image as the camera gives it; spikes as levels, "
                              f"{SPIKE_LEVEL} = one spike), got {array.dtype}")
        return np.ascontiguousarray(array)

    def describe(self) -> dict[str, Any]:
        """What a report needs to say about this runner."""
        return {"runner": self.name, "precision": self.precision, "shape": self.shape.as_dict()}

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, image: np.ndarray, spikes: np.ndarray, out: np.ndarray | None) -> np.ndarray: ...

    def _close(self) -> None:
        pass


def onnx_gain_range(metadata) -> tuple[float, float] | None:
    """The ``firing_gain_range`` an export's ``spikereveal.*`` metadata declares (None: none)."""
    from spikereveal.kernels.sensor import parse_gain_range

    return parse_gain_range(metadata.get("firing_gain_range"))


def _require_file(path, what: str) -> Path:
    if path is None:
        raise ConfigError(f"the {what} needs a model file; pass its path")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: model file {path} does not exist")
    return path


_NOT_ONNX = "is not a readable ONNX model"
_ONNX_HINT = ("--onnx needs an ONNX export written by 'spikereveal export' (or adapt's ldn.onnx); re-export it, or "
              "pass the checkpoint with --model instead")


def read_export_metadata(path) -> dict[str, str]:
    """:func:`spikereveal.engines.onnx_metadata.read_onnx_metadata` that turns every failure to parse the file into one
    FormatError naming it: without the ``onnx`` package the metadata is read through ONNX Runtime, whose own
    exception types (InvalidProtobuf, InvalidArgument, Fail ...) would otherwise surface as a traceback."""
    from spikereveal.engines.onnx_metadata import read_onnx_metadata

    try:
        return read_onnx_metadata(path)
    except FormatError as exc:
        if _NOT_ONNX not in str(exc):
            raise
        cause = exc.__cause__
        detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        raise FormatError(path, f"{_NOT_ONNX}{detail}; {_ONNX_HINT}") from cause
    except SpikeRevealError:
        raise
    except Exception as exc:  # noqa: BLE001 (ONNX Runtime raises its own types for a file that is not ONNX)
        raise FormatError(path, f"{_NOT_ONNX} ({type(exc).__name__}: {exc}); {_ONNX_HINT}") from exc


# -- ONNX Runtime (CPU) -------------------------------------------------------------------------------
class OrtRunner(Runner):
    """ONNX Runtime on CPU: explicit threads, no spinning, sequential, ORT_ENABLE_ALL, I/O binding."""

    name = "ort"

    def __init__(self, onnx_path, shape: InputShape, precision: str = "fp32",
                 options: RunnerOptions | None = None):
        super().__init__(shape, precision, options)
        self.onnx_path = _require_file(onnx_path, "ONNX Runtime runner")
        self._session = None
        self._binding = None

    def _load(self) -> None:
        ort = _import_backend("onnxruntime", "the ONNX Runtime runner", "dev")
        from spikereveal.engines.onnx_metadata import check_onnx_precision

        metadata = read_export_metadata(self.onnx_path)
        check_onnx_precision(metadata, self.precision, self.onnx_path)
        self.firing_gain_range = onnx_gain_range(metadata)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.resolved_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # busy-waiting threads steal the cores that ingest and the numba kernels need
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(self.onnx_path), sess_options=so,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            raise RunnerError(f"ONNX Runtime cannot load {self.onnx_path}: {exc}; {_ONNX_HINT}") from exc
        names = {i.name for i in self._session.get_inputs()}
        if names != set(INPUT_NAMES) or [o.name for o in self._session.get_outputs()] != [OUTPUT_NAME]:
            raise RunnerError(f"{self.onnx_path} is not a spikereveal LDN export: inputs {sorted(names)}, "
                              f"expected {list(INPUT_NAMES)} -> {OUTPUT_NAME!r}; re-export it")
        expected = self.shape.as_dict()
        for tensor in self._session.get_inputs():
            static = all(isinstance(d, int) for d in tensor.shape)
            if static and tuple(tensor.shape) != expected[tensor.name]:
                raise ConfigError(f"{self.onnx_path} is a static export with {tensor.name} {tuple(tensor.shape)}, "
                                  f"but {expected[tensor.name]} is needed; re-export it for this geometry "
                                  "(--k/--image-height/--image-width) or with --dynamic")
        self.sharp = np.zeros(self.shape.sharp, IO_DTYPE)
        self._binding = self._session.io_binding()
        self._bound_output = None
        self._ortvalue = ort.OrtValue

    def _infer(self, image: np.ndarray, spikes: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        # OrtValues over the caller's CPU arrays: no copy of the inputs; ORT writes straight into the output
        target = self.sharp if out is None else out
        if self._bound_output is not target:
            self._binding.bind_output(OUTPUT_NAME, "cpu", 0, IO_DTYPE, self.shape.sharp, target.ctypes.data)
            self._bound_output = target
        self._binding.bind_ortvalue_input("image", self._ortvalue.ortvalue_from_numpy(image))
        self._binding.bind_ortvalue_input("spikes", self._ortvalue.ortvalue_from_numpy(spikes))
        self._session.run_with_iobinding(self._binding)
        return target

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(onnx=str(self.onnx_path), threads=self.options.resolved_threads())
        return info

    def _close(self) -> None:
        self._binding = self._bound_output = None
        self._session = None


# -- PyTorch eager (the reference) ---------------------------------------------------------------------
class TorchRunner(Runner):
    """PyTorch eager on CPU, fp32: the reference the exports are compared against."""

    name = "torch"

    def __init__(self, model, shape: InputShape, precision: str = "fp32", options: RunnerOptions | None = None):
        """``model``: a loaded ``torch.nn.Module`` or the path of an LDN checkpoint."""
        super().__init__(shape, precision, options)
        if self.precision != "fp32":
            raise ConfigError("the torch runner is the fp32 reference; use --engine ort or trt for "
                              f"{self.precision}")
        self._model_source = model
        self._model = None

    def _load(self) -> None:
        torch = _import_backend("torch", "the PyTorch runner", "train")
        model = self._model_source
        if isinstance(model, (str, os.PathLike)):
            from spikereveal.engines.checkpoint import load_checkpoint

            from spikereveal.engines.checkpoint import declared_gain_range

            model, meta = load_checkpoint(_require_file(model, "PyTorch runner"), expected_kind="ldn")
            self.firing_gain_range = declared_gain_range(meta)
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"the torch runner needs an nn.Module or a checkpoint path, got {type(model).__name__}")
        from spikereveal.engines.ldn import ExposureLDN

        # process-wide in torch; set always so that torch and ort compare at the same thread count
        torch.set_num_threads(self.options.resolved_threads())
        self._model = ExposureLDN(model.eval().float()).eval()
        self._torch = torch
        self.sharp = np.zeros(self.shape.sharp, IO_DTYPE)

    def _infer(self, image: np.ndarray, spikes: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        torch = self._torch
        target = self.sharp if out is None else out
        with torch.inference_mode():
            torch.from_numpy(target).copy_(self._model(torch.from_numpy(image), torch.from_numpy(spikes)))
        return target

    def _close(self) -> None:
        self._model = None


# -- registry -------------------------------------------------------------------------------------------
#: name -> "module:Class"; imported on first use so optional backends cost nothing until asked for.
RUNNERS: dict[str, str] = {
    "ort": "spikereveal.engines.runners:OrtRunner",
    "torch": "spikereveal.engines.runners:TorchRunner",
    "trt": "spikereveal.engines.trt:TrtRunner",
    "triton": "spikereveal.engines.triton:TritonRunner",
}

#: what each backend needs installed: (module, pip extra)
RUNNER_DEPENDENCIES: dict[str, tuple[tuple[str, str], ...]] = {
    "ort": (("onnxruntime", "dev"),),
    "torch": (("torch", "train"),),
    "trt": (("tensorrt", "trt"),),
    "triton": (("tritonclient.grpc", "triton"),),
}


def _import_backend(module: str, feature: str, extra: str):
    try:
        return importlib.import_module(module)
    except Exception as exc:  # TensorRT raises OSError-like errors when its libraries are missing
        raise MissingDependencyError(module, feature, extra) from exc


def runner_class(name: str) -> type[Runner]:
    """The Runner subclass registered as ``name``; raises ConfigError for unknown names."""
    if name not in RUNNERS:
        raise ConfigError(f"unknown engine {name!r}; choose one of {sorted(RUNNERS)}")
    module_name, class_name = RUNNERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def runner_unavailable_reason(name: str) -> str | None:
    """None when ``name`` can run here, else why not (missing package, no GPU)."""
    if name not in RUNNERS:
        return f"unknown engine {name!r}"
    for module, extra in RUNNER_DEPENDENCIES[name]:
        try:
            importlib.import_module(module)
        except Exception as exc:
            return f"{module} is not importable ({type(exc).__name__}: {exc}); pip install 'spikereveal[{extra}]'"
    return runner_class(name).unavailable_reason()  # the backend module, imported through the registry


def available_runners() -> list[str]:
    return [name for name in RUNNERS if runner_unavailable_reason(name) is None]


def create_runner(name: str, shape: InputShape, *, onnx_path=None, model=None, precision: str = "fp32",
                  options: RunnerOptions | None = None) -> Runner:
    """Make (not load) a runner: ``ort``/``trt`` take ``onnx_path``, ``torch`` takes ``model``, ``triton``
    neither (the server holds the model; ``options.triton`` says where)."""
    cls = runner_class(name)
    if name == "triton":
        return cls(shape, precision, options)
    if name == "torch":
        return cls(model, shape, precision, options)
    return cls(onnx_path, shape, precision, options)
