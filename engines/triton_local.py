"""A Triton Inference Server on loopback, for tests and ``bench pipeline --engine triton``.

The ``nvidia-pytriton`` wheel bundles the ``tritonserver`` binary with its Python backend (no ONNX Runtime or
TensorRT backend). :func:`loopback_repository` turns a repository written by ``spikereveal export
--triton-repo`` into one the bundled server can run: the same ``config.pbtxt`` (I/O, queue policy, versions)
with ``backend: "python"``, CPU instances, and a ``model.py`` that runs the version's ``model.onnx`` with ONNX
Runtime exactly as the ``ort`` runner does (same session options). :class:`LocalTritonServer` starts the
binary on free ports and stops it. Nothing imports ``pytriton`` (its package only ships the files).

The Python backend's stub embeds ``libpython3.X.so``: the interpreter running this must be built with
``--enable-shared`` (:func:`loopback_unavailable_reason` says so otherwise). The stub's library directory goes
first on ``LD_LIBRARY_PATH`` so that the stub loads this interpreter's libpython, not a system one of another
patch release, and this interpreter's ``bin`` first on ``PATH`` so that it finds this environment's packages.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import weakref
from pathlib import Path

from spikereveal.errors import ConfigError, SpikeRevealError

__all__ = ["loopback_unavailable_reason", "loopback_repository", "LocalTritonServer", "TritonServerError"]

logger = logging.getLogger(__name__)


class TritonServerError(SpikeRevealError, RuntimeError):
    """The loopback Triton server could not be started."""


_MODEL_PY = '''"""Loopback Triton model written by spikereveal.engines.triton_local: model.onnx through ONNX Runtime."""
import json
import os

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        threads = int(config.get("parameters", {}).get("spikereveal.loopback_threads", {}).get("string_value", "1"))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        so = ort.SessionOptions()  # as spikereveal.engines.runners.OrtRunner
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            spikes = pb_utils.get_input_tensor_by_name(request, "spikes").as_numpy()
            (sharp,) = self.session.run(["sharp"], {"image": image, "spikes": spikes})
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("sharp", sharp)]))
        return responses
'''


def _pytriton_dir() -> Path | None:
    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _python_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def loopback_unavailable_reason() -> str | None:
    """None when a loopback Triton can start here, else why not."""
    if sys.platform != "linux":
        return "the bundled tritonserver is a Linux binary"
    root = _pytriton_dir()
    if root is None:
        return "nvidia-pytriton (which bundles tritonserver) is not installed: pip install 'spikereveal[triton-server]'"
    if not (root / "tritonserver" / "bin" / "tritonserver").is_file():
        return f"{root} holds no tritonserver binary"
    if not (root / "tritonserver" / "python_backend_stubs" / _python_version()).is_dir():
        return f"nvidia-pytriton has no Python backend stub for Python {_python_version()}"
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return ("this Python is not built with --enable-shared: the Python backend's stub needs "
                f"libpython{_python_version()}.so")
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        # measured: with numpy 2 the bundled stub answers every request with an empty tensor (nvidia-pytriton
        # pins numpy<2 for it)
        return (f"the bundled Python backend needs numpy < 2 (nvidia-pytriton's pin), this is numpy {numpy.__version__}; "
                "pip install 'nvidia-pytriton' after the other packages (it downgrades numpy)")
    if importlib.util.find_spec("tritonclient") is None:
        return "tritonclient is not installed: pip install 'spikereveal[triton]'"
    return None


def loopback_repository(repo_dir, out_dir, threads: int = 1) -> Path:
    """A copy of the Triton repository ``repo_dir`` that the bundled server runs: each model's config with
    ``backend: "python"``, CPU instances (as many as its instance groups asked for, per group) and
    ``spikereveal.loopback_threads``; a ``model.py`` beside every version's ``model.onnx``."""
    from google.protobuf import text_format

    from spikereveal.engines.triton_repo import CONFIG_FILE, parse_config_pbtxt

    repo_dir, out_dir = Path(repo_dir), Path(out_dir)
    models = sorted(p.parent for p in repo_dir.glob(f"*/{CONFIG_FILE}"))
    if not models:
        raise ConfigError(f"{repo_dir} holds no <model>/{CONFIG_FILE}; write one with 'spikereveal export --triton-repo'")
    for model_dir in models:
        config = parse_config_pbtxt(model_dir / CONFIG_FILE)
        count = max(1, sum(group.count or 1 for group in config.instance_group[:1]))
        config.ClearField("platform")
        config.backend = "python"
        config.default_model_filename = "model.py"
        del config.instance_group[:]
        group = config.instance_group.add()
        group.count, group.kind = count, group.KIND_CPU
        config.parameters["spikereveal.loopback_threads"].string_value = str(int(threads))
        target = out_dir / model_dir.name
        target.mkdir(parents=True, exist_ok=True)
        (target / CONFIG_FILE).write_text(text_format.MessageToString(config), encoding="utf-8")
        for version in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
            if (version / "model.onnx").is_file():
                (target / version.name).mkdir(exist_ok=True)
                shutil.copyfile(version / "model.onnx", target / version.name / "model.onnx")
                (target / version.name / "model.py").write_text(_MODEL_PY, encoding="utf-8")
    return out_dir


def _kill_group(pid: int) -> None:
    """SIGKILL the server's process group (the server and its Python-backend stubs), if still there."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalTritonServer:
    """The bundled ``tritonserver`` on loopback over ``repository`` (a :func:`loopback_repository`).

    ``start()`` waits until the server is ready (at most ``start_timeout_s``); ``stop()`` sends SIGINT, then
    kills it after ``stop_timeout_s``. ``url`` is the gRPC ``127.0.0.1:PORT``. ``grpc_port`` None: a free port.
    """

    def __init__(self, repository, grpc_port: int | None = None, start_timeout_s: float = 120.0,
                 stop_timeout_s: float = 10.0, log_path=None):
        reason = loopback_unavailable_reason()
        if reason is not None:
            raise TritonServerError(f"cannot start a loopback Triton: {reason}")
        self.repository = Path(repository)
        self.grpc_port = grpc_port or free_port()
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._workdir = Path(tempfile.mkdtemp(prefix="spikereveal-triton-"))
        self.log_path = Path(log_path) if log_path else self._workdir / "tritonserver.log"
        self._process: subprocess.Popen | None = None
        self._server_dir = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _prepare(self) -> Path:
        if self._server_dir is None:
            root = _pytriton_dir()
            server = self._workdir / "tritonserver"
            shutil.copytree(root / "tritonserver", server, ignore=shutil.ignore_patterns("python_backend_stubs"))
            stub = root / "tritonserver" / "python_backend_stubs" / _python_version() / "triton_python_backend_stub"
            shutil.copy(stub, server / "backends" / "python" / "triton_python_backend_stub")
            self._server_dir = server
        return self._server_dir

    def start(self) -> "LocalTritonServer":
        server = self._prepare()
        env = dict(os.environ)
        libs = [sysconfig.get_config_var("LIBDIR"), str(_pytriton_dir().parent / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        http_port = free_port()
        command = [str(server / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                   f"--backend-directory={server / 'backends'}", f"--grpc-port={self.grpc_port}",
                   f"--http-port={http_port}", "--allow-metrics=false", "--grpc-address=127.0.0.1",
                   "--http-address=127.0.0.1", "--exit-timeout-secs=5"]
        self._log = open(self.log_path, "ab")
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        # never left behind: a server whose owner is not closed (interrupted run, lost object) dies with it
        self._finalizer = weakref.finalize(self, _kill_group, self._process.pid)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + self.start_timeout_s
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise TritonServerError(f"tritonserver exited with code {self._process.returncode}: "
                                            f"{self.log_tail()}")
                try:
                    if client.is_server_ready(client_timeout=1.0):
                        return
                except Exception:  # noqa: BLE001 (not listening yet)
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        self.stop()
        raise TritonServerError(f"tritonserver was not ready after {self.start_timeout_s:g} s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning("tritonserver did not stop within %g s of SIGINT; killing it", self.stop_timeout_s)
            _kill_group(process.pid)  # its own session: the server and any stub still alive
            process.wait()
            self._finalizer.detach()
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> "LocalTritonServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()
